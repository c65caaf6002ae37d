import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from opama_tools.data import prepare as pp
from opama_tools.cli import app
from opama_tools.data.exr import write_exr

runner = CliRunner()


# --------------------------------------------------------------------------- references
def ref_percentile_u8(x: np.ndarray) -> np.ndarray:
    """AOG-Net's operator, the plain numpy way, rounded to uint8."""
    xg = x.astype(np.float32) ** (1 / 2.4)
    alpha = 0.5 / (np.percentile(xg[xg > 0], 50) + 1e-10)
    return np.floor(np.clip(alpha * xg, 0, 1) * 255 + 0.5).astype(np.uint8)


def pil_resize_wrapped(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """Pillow's float Lanczos per channel on the image padded with wrapped columns (box = original)."""
    H, W, C = img.shape
    pad = int(math.ceil(3 * max(W / w, 1))) + 2
    padded = np.concatenate([img[:, -pad:], img, img[:, :pad]], axis=1)
    return np.stack(
        [np.asarray(Image.fromarray(np.ascontiguousarray(padded[..., c])).resize(
            (w, h), Image.Resampling.LANCZOS, box=(pad, 0, pad + W, H))) for c in range(C)], -1)


def assert_close_u8(got: np.ndarray, want: np.ndarray) -> None:
    """Equal up to float rounding at the .5 boundaries of the uint8 quantisation."""
    assert got.shape == want.shape and got.dtype == np.uint8
    d = np.abs(got.astype(int) - want.astype(int))
    assert d.max() <= 1 and (d == 0).mean() > 0.99, (d.max(), (d == 0).mean())


# --------------------------------------------------------------------------- resize
@pytest.mark.parametrize("shape,out", [((32, 64), (16, 32)), ((32, 64), (20, 40)), ((30, 60), (7, 14)),
                                      ((16, 32), (40, 80)), ((24, 48), (24, 48))])
def test_resize_matches_pillow_lanczos(shape, out):
    img = np.random.default_rng(sum(shape)).random((*shape, 3)).astype(np.float32)
    got = pp.resize_equirect(img, *out)
    assert got.shape == (*out, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, pil_resize_wrapped(img, *out), atol=2e-6)
    # rows use Pillow's own border rule (no wrap across the poles)
    rows_only = pp.resize_equirect(img, out[0], shape[1])
    pil_rows = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(img[..., c])).resize(
        (shape[1], out[0]), Image.Resampling.LANCZOS)) for c in range(3)], -1)
    np.testing.assert_allclose(rows_only, pil_rows, atol=2e-6)


def test_resize_is_seamless_across_180():
    rng = np.random.default_rng(3)
    img = rng.random((32, 64, 3)).astype(np.float32)
    small = pp.resize_equirect(img, 16, 32)
    for k in (2, 32, 50):  # rolling the panorama by k columns rolls the result by k/2: no seam anywhere
        np.testing.assert_allclose(pp.resize_equirect(np.roll(img, k, axis=1), 16, 32),
                                   np.roll(small, k // 2, axis=1), atol=2e-6)
    # without wrapping (plain Pillow) the edge columns would differ from the rolled interior
    plain = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(img[..., c])).resize(
        (32, 16), Image.Resampling.LANCZOS)) for c in range(3)], -1)
    assert np.abs(plain[:, 0] - small[:, 0]).max() > 1e-3


def test_parse_size():
    assert pp.parse_size("1024x2048") == (1024, 2048)
    assert pp.parse_size("native") is None and pp.parse_size("auto") == "auto"
    assert pp.parse_size(" 8X16 ") == (8, 16)
    for bad in ("1024x1024", "abc", "10x", "0x0", ""):
        with pytest.raises(ValueError):
            pp.parse_size(bad)


def test_to_uint8_rounds_half_up_and_clips():
    x = np.array([-0.1, 0.0, 0.5 / 255, 0.49 / 255, 0.5, 1.0, 1.2], np.float32)
    np.testing.assert_array_equal(pp.to_uint8(x), [0, 0, 1, 0, 128, 255, 255])


# --------------------------------------------------------------------------- batch on real files
def make_tree(root: Path) -> dict:
    """Real EXR / PNG / JPEG files of every kind the issue lists; returns the arrays written."""
    rng = np.random.default_rng(0)
    arrays = {}
    x = rng.lognormal(0, 1.5, (16, 32, 3)).astype(np.float32)
    x[0, :5] = 0  # zeros are left out of the median
    write_exr(root / "float_rgb.exr", x)
    arrays["float_rgb"] = x
    h = rng.lognormal(0, 1, (16, 32, 3)).astype(np.float32)
    write_exr(root / "sub" / "half_rgb.exr", h, half=True)
    arrays["half_rgb"] = h.astype(np.float16).astype(np.float32)
    rgba = rng.lognormal(0, 1, (16, 32, 4)).astype(np.float32)
    rgba[..., 3] = 1e6  # alpha must not enter the tonemap
    write_exr(root / "sub" / "rgba.exr", rgba)
    arrays["rgba"] = rgba[..., :3]
    y = rng.lognormal(0, 1, (16, 32)).astype(np.float32)
    write_exr(root / "y_lum.exr", y)
    arrays["y_lum"] = y
    b = rng.lognormal(0, 1, (16, 32, 3)).astype(np.float32)
    b[1, 1] = [np.nan, 0.5, 0.5]
    b[2, 2] = [np.inf, np.inf, np.inf]
    b[3, 3, 0] = -2.0
    b[4, 4, 2] = -np.inf
    write_exr(root / "sub" / "deep" / "bad_values.exr", b)
    arrays["bad_values"] = b
    (root / "broken").mkdir()
    trunc_src = root / "broken" / "_full.tmpexr"
    write_exr(trunc_src, rng.random((64, 128, 3)).astype(np.float32), compression="none")
    (root / "broken" / "truncated.exr").write_bytes(trunc_src.read_bytes()[:2000])
    trunc_src.unlink()
    (root / "broken" / "text.exr").write_text("this is a text file, not an EXR\n")
    write_exr(root / "square.exr", np.ones((16, 16, 3), np.float32))
    ldr = (rng.random((16, 32, 3)) * 255).astype(np.uint8)
    iio.imwrite(root / "photo.png", ldr)
    arrays["photo"] = ldr
    iio.imwrite(root / "photo2.jpg", ldr, quality=95)
    arrays["photo2"] = np.asarray(iio.imread(root / "photo2.jpg"))
    return arrays


def read_manifest(out: Path) -> pd.DataFrame:
    return pp.read_manifest(out / "manifest.csv").set_index("output")


def test_prepare_real_files_end_to_end(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    arrays = make_tree(src)
    res = runner.invoke(app, ["prepare", str(src), str(out), "--size", "native", "--workers", "1"])
    assert res.exit_code == 1, res.output
    assert "done 7 / skipped 0 / failed 3" in res.output
    m = read_manifest(out)
    assert len(m) == 10 and set(m["status"]) == {"done", "failed"}

    # valid files: expected values (the plain numpy operator on what was written)
    for name in ("float_rgb", "sub/half_rgb", "sub/rgba"):
        assert_close_u8(iio.imread(out / f"{name}.png"), ref_percentile_u8(arrays[name.split("/")[-1]]))
    y_png = iio.imread(out / "y_lum.png")
    assert (y_png[..., 0] == y_png[..., 1]).all() and (y_png[..., 0] == y_png[..., 2]).all()
    assert_close_u8(y_png[..., 0], ref_percentile_u8(arrays["y_lum"]))
    np.testing.assert_array_equal(iio.imread(out / "photo.png"), arrays["photo"])  # LDR at native size: as is
    np.testing.assert_array_equal(iio.imread(out / "photo2.png"), arrays["photo2"])
    assert m.loc["photo.png", "operator"] == "none"

    # bad values: repaired and counted (pixels), NaN -> 0, +Inf -> largest finite (saturates)
    row = m.loc["sub/deep/bad_values.png"]
    assert (row["status"], row["nan_pixels"], row["posinf_pixels"], row["negative_pixels"], row["repaired_pixels"]) \
        == ("done", 1, 1, 2, 4)
    fixed = arrays["bad_values"].copy()
    fixed[1, 1, 0] = 0
    fixed[3, 3, 0] = fixed[4, 4, 2] = 0
    fixed[2, 2] = np.nanmax(np.where(np.isfinite(fixed), fixed, np.nan))
    bad_png = iio.imread(out / "sub/deep/bad_values.png")
    assert_close_u8(bad_png, ref_percentile_u8(fixed))
    assert bad_png[1, 1, 0] == 0 and (bad_png[2, 2] == 255).all()
    assert m.loc["float_rgb.png", "repaired_pixels"] == 0
    assert '"alpha"' in m.loc["float_rgb.png", "params"] and m.loc["float_rgb.png", "operator"] == "percentile"
    assert (m.loc["float_rgb.png", "width"], m.loc["float_rgb.png", "height"]) == (32, 16)

    # bad files: listed with path and reason, no output written
    reasons = {"broken/truncated.png": "unreadable EXR", "broken/text.png": "not an OpenEXR file",
               "square.png": "not a 2:1"}
    for output, reason in reasons.items():
        assert m.loc[output, "status"] == "failed" and reason in m.loc[output, "error"]
        assert Path(m.loc[output, "source"]).name in m.loc[output, "error"]
        assert not (out / output).exists()
        assert reason in res.output

    # re-run: good outputs untouched, failures still reported, manifest rows kept
    good = sorted(p for p in out.rglob("*.png"))
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in good}
    res2 = runner.invoke(app, ["prepare", str(src), str(out), "--size", "native", "--workers", "1"])
    assert res2.exit_code == 1 and "done 0 / skipped 7 / failed 3" in res2.output
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in good} == before
    m2 = read_manifest(out)
    pd.testing.assert_frame_equal(m2.loc[m2["status"] == "done"], m.loc[m["status"] == "done"])

    # fix two inputs: their rows are replaced, the others kept; all good now except the truncated file
    write_exr(src / "broken" / "text.exr", np.full((8, 16, 3), 2.0, np.float32))
    res3 = runner.invoke(app, ["prepare", str(src), str(out), "--size", "native", "--workers", "1",
                               "--force-aspect"])
    assert res3.exit_code == 1 and "done 2 / skipped 7 / failed 1" in res3.output
    m3 = read_manifest(out)
    assert len(m3) == 10
    assert m3.loc["broken/text.png", "status"] == "done" and m3.loc["square.png", "status"] == "done"
    assert iio.imread(out / "square.png").shape == (16, 32, 3)  # --force-aspect: resized to 2:1
    assert (iio.imread(out / "broken/text.png") == 128).all()  # constant image -> median -> 0.5
    pd.testing.assert_series_equal(m3.loc["float_rgb.png"], m.loc["float_rgb.png"])

    # --overwrite redoes outputs
    os.utime(out / "float_rgb.png", ns=(1, 1))
    res4 = runner.invoke(app, ["prepare", str(src / "sub"), str(out / "sub_only"), "--size", "8x16",
                               "--operator", "aces", "--workers", "1"])
    assert res4.exit_code == 0, res4.output
    assert iio.imread(out / "sub_only" / "rgba.png").shape == (8, 16, 3)
    res5 = runner.invoke(app, ["prepare", str(src), str(out), "--size", "native", "--workers", "1",
                               "--overwrite", "--force-aspect"])
    assert res5.exit_code == 1 and "done 9 / skipped 0 / failed 1" in res5.output
    assert (out / "float_rgb.png").stat().st_mtime_ns > 1
    # the output folder inside the source folder was not taken as input
    assert "sub_only" not in " ".join(read_manifest(out)["source"])


def test_resized_output_and_operators(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    x = np.random.default_rng(1).lognormal(0, 1, (32, 64, 3)).astype(np.float32)
    write_exr(src / "p.exr", x)
    s = pp.prepare_dataset(src, out, pp.PrepareConfig(size=(16, 32)), workers=1)
    assert (s.done, s.skipped, s.failed, s.interrupted) == (1, 0, 0, None)
    xg = x ** (1 / 2.4)
    full = np.clip(0.5 / (np.percentile(xg[xg > 0], 50) + 1e-10) * xg, 0, 1)
    want = np.floor(np.clip(pil_resize_wrapped(full, 16, 32), 0, 1) * 255 + 0.5).astype(np.uint8)
    assert_close_u8(iio.imread(out / "p.png"), want)
    from opama_tools.data.tonemap import reinhard

    s = pp.prepare_dataset(src, out, pp.PrepareConfig(size=None, operator="reinhard", exposure=-1, overwrite=True),
                           workers=1)
    assert s.done == 1
    want = np.floor(reinhard(x * 0.5) * 255 + 0.5).astype(np.uint8)
    assert_close_u8(iio.imread(out / "p.png"), want)
    row = pd.read_csv(out / "manifest.csv").iloc[0]
    assert row["operator"] == "reinhard" and '"exposure_ev": -1.0' in row["params"]


def test_colliding_outputs_fail_the_second(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    write_exr(src / "a.exr", np.ones((8, 16, 3), np.float32))
    iio.imwrite(src / "a.png", np.zeros((8, 16, 3), np.uint8))
    s = pp.prepare_dataset(src, out, pp.PrepareConfig(size=None), workers=1)
    assert (s.done, s.failed) == (1, 1)
    assert "also the output of" in s.failures[0]["error"]


def test_killed_write_leaves_no_file(tmp_path, monkeypatch):
    """A write interrupted by SIGTERM (in-process path) removes its temp file; nothing appears."""
    def half_write(path, arr, **kw):
        Path(path).write_bytes(b"\x89PNG\r\n\x1a\n partial")
        raise pp.Terminated("SIGTERM")

    Image.fromarray(np.zeros((4, 8, 3), np.uint8)).save(tmp_path / "x.png")
    monkeypatch.setattr(iio, "imwrite", half_write)
    with pytest.raises(pp.Terminated):  # never swallowed as a per-file error
        pp.process_file(tmp_path / "x.png", tmp_path / "out" / "x.png", pp.PrepareConfig(size=None))
    assert list((tmp_path / "out").iterdir()) == []
    # an ordinary write error is a per-file failure, also without leftovers
    monkeypatch.setattr(iio, "imwrite", lambda path, arr, **kw: (_ for _ in ()).throw(OSError("disk full")))
    row = pp.process_file(tmp_path / "x.png", tmp_path / "out" / "x.png", pp.PrepareConfig(size=None))
    assert row["status"] == "failed" and "disk full" in row["error"]
    assert list((tmp_path / "out").iterdir()) == []


def test_sigterm_mid_run_then_rerun_completes(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    n = 24
    img = np.random.default_rng(2).lognormal(0, 1, (512, 1024, 3)).astype(np.float32)
    write_exr(src / "p00.exr", img, compression="none")
    for i in range(1, n):
        shutil.copyfile(src / "p00.exr", src / f"p{i:02d}.exr")
    (src / "zz_text.exr").write_text("not an exr")  # sorted last: a failure in the worker pool
    cmd = [sys.executable, "-m", "opama_tools.cli", "prepare", str(src), str(out), "--size", "256x512",
           "--workers", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if out.is_dir() and any(p.suffix == ".png" for p in out.iterdir()):
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, (stdout, stderr)
    assert "interrupted (SIGTERM)" in stderr

    files = [p for p in out.rglob("*") if p.is_file()]
    pngs = sorted(p for p in files if p.suffix == ".png")
    assert 1 <= len(pngs) < n, "the kill should land mid-way"
    # nothing but complete outputs and the manifest: no temp file, no half-written PNG
    assert sorted(p.name for p in files) == sorted([p.name for p in pngs] + ["manifest.csv"])
    assert all(p.name.startswith("p") and not p.name.startswith(".") for p in pngs)
    first = iio.imread(pngs[0])
    assert first.shape == (256, 512, 3)
    for p in pngs:
        np.testing.assert_array_equal(iio.imread(p), first)  # same input -> fully written, identical
    m = pd.read_csv(out / "manifest.csv")
    # every finished file is recorded, also those whose result never reached the main process
    # (the workers journal each result right after the rename)
    assert set(m.loc[m["status"] == "done", "output"]) == {p.name for p in pngs}

    before = {p: p.stat().st_mtime_ns for p in pngs}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert f"done {n - len(pngs)} / skipped {len(pngs)} / failed 1" in done.stdout
    pngs2 = sorted(out.glob("*.png"))
    assert len(pngs2) == n and not list(out.glob(".*"))
    assert {p: p.stat().st_mtime_ns for p in pngs} == before
    for p in pngs2:
        np.testing.assert_array_equal(iio.imread(p), first)
    m = pp.read_manifest(out / "manifest.csv").set_index("output")
    assert m.loc["zz_text.png", "status"] == "failed" and "not an OpenEXR file" in m.loc["zz_text.png", "error"]
    m = m.drop("zz_text.png")
    assert len(m) == n and set(m["status"]) <= {"done", "skipped"} and (m["status"] == "done").sum() >= n - len(pngs)


def test_mixed_half_float_and_layered_exr(tmp_path):
    import OpenEXR

    from opama_tools.data.exr import read_exr

    rng = np.random.default_rng(7)
    planes = [rng.random((8, 16)).astype(np.float32) * 4 for _ in range(3)]
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    mixed = {"R": planes[0].astype(np.float16), "G": planes[1], "B": planes[2]}
    with OpenEXR.File(header, mixed) as f:
        f.write(str(tmp_path / "mixed.exr"))
    got = read_exr(tmp_path / "mixed.exr")
    np.testing.assert_allclose(got, np.stack([planes[0].astype(np.float16).astype(np.float32), *planes[1:]], -1))
    layered = {f"diffuse.{c}": p for c, p in zip("RGB", planes)}
    with OpenEXR.File(header, layered) as f:
        f.write(str(tmp_path / "layered.exr"))
    np.testing.assert_array_equal(read_exr(tmp_path / "layered.exr"), np.stack(planes, -1))
    row = pp.process_file(tmp_path / "mixed.exr", tmp_path / "out" / "mixed.png", pp.PrepareConfig(size=None))
    assert row["status"] == "done"


def test_rerun_keys_on_source_content_and_settings(tmp_path):
    """A re-run skips a source only if it is unchanged (size + mtime) and done with the same settings."""
    src, out = tmp_path / "src", tmp_path / "out"
    rng = np.random.default_rng(5)
    write_exr(src / "a.exr", rng.lognormal(0, 1, (8, 16, 3)).astype(np.float32))
    write_exr(src / "b.exr", rng.lognormal(0, 1, (8, 16, 3)).astype(np.float32))
    cfg = pp.PrepareConfig(size=None)
    assert pp.prepare_dataset(src, out, cfg, workers=1).done == 2
    s = pp.prepare_dataset(src, out, cfg, workers=1)
    assert (s.done, s.skipped) == (0, 2)
    assert all(r["operator"] == "percentile" for r in s.rows)  # skipped rows keep their metadata
    old_a = iio.imread(out / "a.png")
    write_exr(src / "a.exr", np.full((8, 16, 3), 3.0, np.float32))  # new content, same name
    s = pp.prepare_dataset(src, out, cfg, workers=1)
    status = {Path(r["source"]).name: r["status"] for r in s.rows}
    assert status == {"a.exr": "done", "b.exr": "skipped"}
    assert not np.array_equal(iio.imread(out / "a.png"), old_a)
    s = pp.prepare_dataset(src, out, pp.PrepareConfig(size=None, operator="aces"), workers=1)
    assert s.done == 2  # other settings: redone
    s = pp.prepare_dataset(src, out, pp.PrepareConfig(size=None, operator="aces", exposure=1.0), workers=1)
    assert s.done == 2
    s = pp.prepare_dataset(src, out, pp.PrepareConfig(size=(4, 8), operator="aces", exposure=1.0), workers=1)
    assert s.done == 2
    # an output with no manifest row (e.g. copied in by hand) is not trusted
    (out / "manifest.csv").unlink()
    s = pp.prepare_dataset(src, out, pp.PrepareConfig(size=(4, 8), operator="aces", exposure=1.0), workers=1)
    assert s.done == 2
    m = pp.read_manifest(out / "manifest.csv")
    assert list(m["source_bytes"]) == [(src / n).stat().st_size for n in ("a.exr", "b.exr")]


def test_journal_recovers_rows_of_a_killed_run_and_temps_are_cleaned(tmp_path):
    """What a SIGKILLed run leaves (finished PNGs, their journal lines, a temp file) is folded in
    and cleaned by the next run: finished files come back as skipped with their metadata."""
    src, out = tmp_path / "src", tmp_path / "out"
    rng = np.random.default_rng(6)
    for n in ("a", "b", "c"):
        write_exr(src / f"{n}.exr", rng.lognormal(0, 1, (8, 16, 3)).astype(np.float32))
    cfg = pp.PrepareConfig(size=None)
    out.mkdir()
    journal = out / pp.JOURNAL_NAME
    row = pp.process_file(src / "a.exr", out / "a.png", cfg, "a.png", journal=journal)
    assert row["status"] == "done" and journal.is_file()
    bad = pp.process_file(tmp_path / "nope.exr", out / "nope.png", cfg, "nope.png", journal=journal)
    assert bad["status"] == "failed"
    (journal.open("ab")).write(b'{"source": "torn')  # a torn last line is ignored
    rows = pp.read_journal(journal)
    assert [r["status"] for r in rows] == ["done", "failed"]
    leftover = out / ".b.k3j_x9ab.tmp"
    leftover.write_bytes(b"\x89PNG partial")
    keep = out / ".b.not-ours.tmp"
    keep.write_text("someone else's")
    s = pp.prepare_dataset(src, out, cfg, workers=1)
    assert (s.done, s.skipped, s.failed) == (2, 1, 0)
    assert not leftover.exists() and keep.exists() and not journal.exists()
    m = pp.read_manifest(out / "manifest.csv").set_index("output")
    assert m.loc["a.png", "operator"] == "percentile" and '"alpha"' in m.loc["a.png", "params"]
    assert m.loc["a.png", "updated"] == row["updated"]  # the journaled row, not a re-made one


def test_outputs_follow_the_umask(tmp_path):
    from opama_tools.io import atomic_write_text

    src, out = tmp_path / "src", tmp_path / "out"
    write_exr(src / "a.exr", np.ones((8, 16, 3), np.float32))
    old = os.umask(0o027)
    try:
        pp.prepare_dataset(src, out, pp.PrepareConfig(size=None), workers=1)
        atomic_write_text(tmp_path / "t" / "x.txt", "x")
    finally:
        os.umask(old)
    for p in (out / "a.png", out / "manifest.csv", tmp_path / "t" / "x.txt"):
        assert p.stat().st_mode & 0o777 == 0o640, p
    assert (tmp_path / "t").stat().st_mode & 0o777 == 0o750
    os.umask(0o002)
    try:
        atomic_write_text(tmp_path / "y.txt", "y")
    finally:
        os.umask(old)
    assert (tmp_path / "y.txt").stat().st_mode & 0o777 == 0o664


def test_non_finite_sources_fail_and_exposure_must_be_finite(tmp_path):
    cfg = pp.PrepareConfig(size=None)
    for name, fill in (("nan", np.nan), ("inf", np.inf), ("neginf", -np.inf)):
        write_exr(tmp_path / f"{name}.exr", np.full((8, 16, 3), fill, np.float32))
        row = pp.process_file(tmp_path / f"{name}.exr", tmp_path / "o" / f"{name}.png", cfg)
        assert row["status"] == "failed" and "no finite pixel" in row["error"] and f"{name}.exr" in row["error"]
        assert not (tmp_path / "o" / f"{name}.png").exists()
    x = np.full((8, 16, 3), np.nan, np.float32)
    x[3, 5] = 2.0  # one finite pixel is enough: the rest is repaired and counted
    write_exr(tmp_path / "one.exr", x)
    row = pp.process_file(tmp_path / "one.exr", tmp_path / "o" / "one.png", cfg)
    assert row["status"] == "done" and row["nan_pixels"] == 8 * 16 - 1
    for bad in (float("nan"), float("inf"), -float("inf"), 100.0):
        with pytest.raises(ValueError, match="exposure"):
            pp.PrepareConfig(exposure=bad)


def test_sixteen_bit_and_grey_pngs_are_scaled_not_clipped(tmp_path):
    import struct
    import zlib

    def png16(path, a):
        h, w = a.shape[:2]
        c = 1 if a.ndim == 2 else a.shape[2]
        raw = b"".join(b"\x00" + a[i].astype(">u2").tobytes() for i in range(h))
        ck = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)  # noqa: E731
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + ck(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, {1: 0, 2: 4, 3: 2}[c], 0, 0, 0))
                         + ck(b"IDAT", zlib.compress(raw)) + ck(b"IEND", b""))

    g = (np.arange(8 * 16).reshape(8, 16) * 500).astype(np.uint16)
    png16(tmp_path / "g16.png", g)
    row = pp.process_file(tmp_path / "g16.png", tmp_path / "o" / "g16.png", pp.PrepareConfig(size=None))
    assert row["status"] == "done"
    got = iio.imread(tmp_path / "o" / "g16.png")
    want = np.floor(g.astype(np.float64) / 65535 * 255 + 0.5).astype(np.uint8)
    assert got.shape == (8, 16, 3) and np.abs(got[..., 1].astype(int) - want).max() <= 1
    assert got.max() > 200  # 16-bit values were scaled by 65535, not clipped at 255
    png16(tmp_path / "ga16.png", np.stack([g, np.zeros_like(g)], -1))  # grey + (transparent) alpha
    pp.process_file(tmp_path / "ga16.png", tmp_path / "o" / "ga16.png", pp.PrepareConfig(size=None))
    assert np.abs(iio.imread(tmp_path / "o" / "ga16.png")[..., 0].astype(int) - want).max() <= 1


def test_default_size_never_upsamples(tmp_path):
    """Default --size auto: the source size, at most 1024x2048; an explicit larger size still upsamples."""
    src, out = tmp_path / "src", tmp_path / "out"
    small = (np.random.default_rng(7).random((8, 16, 3)) * 255).astype(np.uint8)
    src.mkdir()
    iio.imwrite(src / "small.png", small)
    big = np.zeros((1030, 2060, 3), np.uint8)
    big[:, 1030:] = 200
    iio.imwrite(src / "big.png", big)
    res = runner.invoke(app, ["prepare", str(src), str(out), "--workers", "1"])
    assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(iio.imread(out / "small.png"), small)  # kept as is
    assert iio.imread(out / "big.png").shape == (1024, 2048, 3)  # larger: down to the cap
    assert pp.PrepareConfig().output_size(300, 600) == (300, 600)
    assert pp.PrepareConfig().output_size(300, 500) == (300, 600)  # --force-aspect: H x 2H
    assert pp.PrepareConfig().output_size(2048, 4096) == (1024, 2048)
    assert pp.PrepareConfig(size=None).output_size(2048, 4096) == (2048, 4096)
    res = runner.invoke(app, ["prepare", str(src), str(out), "--workers", "1", "--size", "16x32"])
    assert res.exit_code == 0 and "done 2 / skipped 0" in res.output, res.output
    assert iio.imread(out / "small.png").shape == (16, 32, 3)  # asked for: upsampled
    res = runner.invoke(app, ["prepare", "--help"], env={"COLUMNS": "200"})
    assert "1024x2048" in res.output and "never upsampled" in res.output


def test_rerun_keys_on_content_not_file_times(tmp_path):
    """The manifest keeps each source's content hash: touching a source keeps it done; new bytes
    with the old size and mtime are redone; an old manifest without the hash means redo."""
    src, out = tmp_path / "src", tmp_path / "out"
    write_exr(src / "a.exr", np.full((8, 16, 3), 1.0, np.float32), compression="none")
    cfg = pp.PrepareConfig(size=None)
    assert pp.prepare_dataset(src, out, cfg, workers=1).done == 1
    from opama_tools.jobs import source_signature

    m = pp.read_manifest(out / "manifest.csv")
    assert m.loc[0, "source_sha256"] == source_signature(src / "a.exr") and len(m.loc[0, "settings"]) == 16
    os.utime(src / "a.exr", ns=(3, 3))
    assert pp.prepare_dataset(src, out, cfg, workers=1).skipped == 1
    st = (src / "a.exr").stat()
    write_exr(src / "a.exr", np.full((8, 16, 3), 2.0, np.float32), compression="none")  # same size
    os.utime(src / "a.exr", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (src / "a.exr").stat().st_size == st.st_size
    s = pp.prepare_dataset(src, out, cfg, workers=1)
    assert (s.done, s.skipped) == (1, 0)
    df = pd.read_csv(out / "manifest.csv").drop(columns=["source_sha256", "settings"])
    df.to_csv(out / "manifest.csv", index=False)  # a manifest of an older version
    assert pp.prepare_dataset(src, out, cfg, workers=1).done == 1
