"""A zoo of broken inputs and options through prepare, caption, crop and demo --data-only.

For every case: a non-zero exit, a line naming the culprit, no Python traceback, and no
visible output that is partial or stale. Files that merely look odd (spaces in the name,
16-bit or grey PNGs) must work. Everything runs in-process (CliRunner) and takes seconds.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from typer.testing import CliRunner

from opama_tools.cli import app
from opama_tools.data.exr import write_exr
from opama_tools.io import printable_path

runner = CliRunner()
H, W = 8, 16
ROOT_IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def run(*args) -> tuple[int, str]:
    res = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "400"})
    out = res.output
    assert "Traceback" not in out, out
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise AssertionError(f"uncaught {type(res.exception).__name__}: {res.exception}\n{out}")
    return res.exit_code, out


def lines_naming(out: str, culprit: str) -> list[str]:
    return [line for line in out.splitlines() if culprit in line]


def assert_usage_error(code: int, out: str, culprit: str, *words: str) -> None:
    assert code == 2, out
    hits = lines_naming(out, culprit)
    assert hits, f"no line names {culprit!r}:\n{out}"
    assert any(all(w in h for w in words) for h in hits), (words, hits)
    assert "error:" in hits[0]


def png16(path: Path, a: np.ndarray) -> None:
    """A real 16-bit PNG (grey, grey+alpha, RGB or RGBA) written by hand (Pillow cannot write 16-bit RGB)."""
    if a.ndim == 2:
        a = a[..., None]
    h, w, c = a.shape
    kind = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    raw = b"".join(b"\x00" + a[i].astype(">u2").tobytes() for i in range(h))

    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, kind, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def bad_name(folder: Path, stem: str, suffix: str) -> Path:
    """A file name with bytes that are not UTF-8 (created through bytes)."""
    p = os.fsencode(folder) + b"/" + stem.encode() + b"\xff\xfe" + suffix.encode()
    return Path(os.fsdecode(p))


@pytest.fixture(scope="module")
def ldr() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.random((H, W, 3)) * 255).astype(np.uint8)


def write_bad_images(d: Path, ldr: np.ndarray) -> dict[str, str]:
    """Broken PNG/JPEG inputs → a word their failure line must contain."""
    d.mkdir(parents=True, exist_ok=True)
    iio.imwrite(d / "good.png", ldr)
    full = (d / "good.png").read_bytes()
    (d / "empty.png").write_bytes(b"")
    (d / "truncated.png").write_bytes(full[: len(full) // 2])
    (d / "text.png").write_text("not an image\n")
    (d / "fake.jpg").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    iio.imwrite(d / "square.png", ldr[:, :H])
    iio.imwrite(bad_name(d, "name", ".png"), ldr)
    return {"empty.png": "not a readable", "truncated.png": "cannot decode", "text.png": "not a readable",
            "fake.jpg": "", "square.png": "2:1", "name\\xff\\xfe.png": "not valid UTF-8"}


def write_odd_but_valid(d: Path, ldr: np.ndarray) -> list[str]:
    """Inputs that must work: spaces, 16-bit grey / RGB / grey+alpha, 8-bit grey, RGBA, palette."""
    d.mkdir(parents=True, exist_ok=True)
    iio.imwrite(d / "with space s.png", ldr)
    png16(d / "grey16.png", ldr[..., 0].astype(np.uint16) * 257)
    png16(d / "rgb16.png", ldr.astype(np.uint16) * 257)
    png16(d / "greyalpha16.png", np.stack([ldr[..., 0].astype(np.uint16) * 257, np.zeros((H, W), np.uint16)], -1))
    iio.imwrite(d / "grey8.png", ldr[..., 1])
    iio.imwrite(d / "rgba8.png", np.concatenate([ldr, np.zeros((H, W, 1), np.uint8)], -1))
    from PIL import Image

    Image.fromarray(ldr).convert("P").save(d / "palette.png")
    return ["with space s", "grey16", "rgb16", "greyalpha16", "grey8", "rgba8", "palette"]


# ----------------------------------------------------------------------------------------- prepare
def test_prepare_zoo(tmp_path, ldr):
    src, out = tmp_path / "src", tmp_path / "out"
    bad = write_bad_images(src, ldr)
    rng = np.random.default_rng(1)
    good_hdr = rng.lognormal(0, 1, (H, W, 3)).astype(np.float32)
    write_exr(src / "hdr.exr", good_hdr)
    (src / "empty_h.exr").write_bytes(b"")
    (src / "text_h.exr").write_text("not an exr")
    (src / "truncated_h.exr").write_bytes((src / "hdr.exr").read_bytes()[:60])
    write_exr(src / "all_nan.exr", np.full((H, W, 3), np.nan, np.float32))
    write_exr(src / "all_inf.exr", np.full((H, W, 3), np.inf, np.float32))
    mix = np.where(np.eye(H, W, dtype=bool)[..., None], np.nan, np.inf) * np.ones((H, W, 3))
    mix[0, 1, 0] = 1.0  # one finite channel does not make a finite pixel
    write_exr(src / "nan_inf_mix.exr", mix.astype(np.float32))
    write_exr(src / "square_h.exr", good_hdr[:, :H])
    bad.update({"empty_h.exr": "not an OpenEXR", "text_h.exr": "not an OpenEXR", "truncated_h.exr": "EXR",
                "all_nan.exr": "no finite pixel", "all_inf.exr": "no finite pixel",
                "nan_inf_mix.exr": "no finite pixel", "square_h.exr": "2:1"})
    odd = write_odd_but_valid(src / "odd", ldr)

    code, out_text = run("prepare", src, out, "--size", f"{H}x{W}", "--workers", "1")
    assert code == 1, out_text
    assert f"failed {len(bad)}" in out_text and f"done {2 + len(odd)}" in out_text
    for name, word in bad.items():
        hits = [h for h in lines_naming(out_text, name) if "failed" in h]
        assert len(hits) == 1 and word in hits[0], (name, hits)
        stem = name.rsplit(".", 1)[0]
        assert not list(out.glob(f"{stem}.png")), name  # no output for a failed input
    from opama_tools.data.prepare import read_manifest

    m = read_manifest(out / "manifest.csv").set_index("output")
    assert len(m) == len(bad) + 2 + len(odd) and (m["error"].str.count("\n") == 0).all()
    assert m.loc["name\\xff\\xfe.png", "status"] == "failed"  # recorded, not lost: the manifest is written
    # odd but valid: 16-bit scaled by 65535, grey expanded to RGB, alpha dropped
    for stem in odd:
        img = iio.imread(out / "odd" / f"{stem}.png")
        assert img.shape == (H, W, 3) and img.dtype == np.uint8, stem
    np.testing.assert_array_equal(iio.imread(out / "odd" / "grey16.png"), np.repeat(ldr[..., :1], 3, -1))
    np.testing.assert_array_equal(iio.imread(out / "odd" / "greyalpha16.png"), np.repeat(ldr[..., :1], 3, -1))
    np.testing.assert_array_equal(iio.imread(out / "odd" / "rgb16.png"), ldr)  # Pillow: 8-bit precision, right scale
    np.testing.assert_array_equal(iio.imread(out / "odd" / "rgba8.png"), ldr)
    np.testing.assert_array_equal(iio.imread(out / "odd" / "grey8.png"), np.repeat(ldr[..., 1:2], 3, -1))
    assert [p.name for p in out.rglob(".*")] == []  # no temp file, no journal left

    # a source that breaks after a good run: its old output is removed, not left as a stale result
    assert (out / "hdr.png").is_file()
    (src / "hdr.exr").write_text("broken now")
    code, out_text = run("prepare", src, out, "--size", f"{H}x{W}", "--workers", "1")
    assert code == 1 and not (out / "hdr.png").exists()
    assert read_manifest(out / "manifest.csv").set_index("output").loc["hdr.png", "status"] == "failed"


@pytest.mark.parametrize("opt,value,word", [
    ("--exposure", "nan", "finite"), ("--exposure", "inf", "finite"), ("--exposure", "-inf", "finite"),
    ("--size", "0x0", "1 pixel"), ("--size", "8x8", "2:1"), ("--size", "big", "HxW"), ("--size", "", "HxW"),
    ("--operator", "magic", "--operator"),
])
def test_prepare_bad_options(tmp_path, ldr, opt, value, word):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    iio.imwrite(src / "a.png", ldr)
    code, text = run("prepare", src, out, opt, value)
    assert code == 2 and word in text and "error:" in text, text
    assert not out.exists()


def test_prepare_bad_folders(tmp_path, ldr):
    src = tmp_path / "src"
    src.mkdir()
    code, text = run("prepare", src, tmp_path / "o")
    assert_usage_error(code, text, str(src), "no panoramas")
    assert not (tmp_path / "o").exists()
    code, text = run("prepare", tmp_path / "missing", tmp_path / "o")
    assert_usage_error(code, text, "missing", "not found")
    iio.imwrite(src / "a.png", ldr)
    afile = tmp_path / "afile"
    afile.write_text("x")
    code, text = run("prepare", src, afile)
    assert_usage_error(code, text, str(afile), "is an existing file")
    assert afile.read_text() == "x"
    code, text = run("prepare", src, afile / "sub")
    assert_usage_error(code, text, str(afile / "sub"), "a parent of it is a file")
    # a damaged manifest is named, not overwritten
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.csv").write_bytes(b"\x00\xff\xfe garbage\n\"unterminated")
    code, text = run("prepare", src, out, "--size", f"{H}x{W}", "--workers", "1")
    assert_usage_error(code, text, "manifest.csv", "manifest")
    assert (out / "manifest.csv").read_bytes().startswith(b"\x00\xff")


@pytest.mark.parametrize("cmd", ["prepare", "crop"])
def test_unwritable_output_folder(tmp_path, ldr, monkeypatch, cmd):
    src, out = tmp_path / "src", tmp_path / "ro"
    src.mkdir()
    iio.imwrite(src / "a.png", ldr)
    out.mkdir(mode=0o555)
    if ROOT_IS_ROOT:  # root ignores permission bits: the check itself must still see them
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == out and mode & os.W_OK else real(p, mode, **kw))
    try:
        code, text = run(cmd, src, out)
        assert_usage_error(code, text, str(out), "not writable")
        assert list(out.iterdir()) == []
    finally:
        out.chmod(0o755)


# ----------------------------------------------------------------------------------------- crop
def test_crop_zoo(tmp_path, ldr):
    src, out = tmp_path / "src", tmp_path / "out"
    bad = write_bad_images(src, ldr)
    odd = write_odd_but_valid(src / "odd", ldr)
    code, text = run("crop", src, out, "--views", "0,0", "--size", "4")
    assert code == 1, text
    assert f"{1 + len(odd)} done, 0 skipped, {len(bad)} failed" in text
    for name, word in bad.items():
        hits = [h for h in lines_naming(text, name) if "failed" in h]
        assert len(hits) == 1 and word in hits[0], (name, hits)
    stems = {p.name for p in out.iterdir() if p.is_dir()}
    assert stems == {"good", "odd"}  # nothing for the failed inputs
    for stem in odd:
        v = iio.imread(out / "odd" / stem / "view_00.png")
        assert v.shape == (4, 4, 3) and v.dtype == np.uint8
    assert not list(out.rglob(".*"))
    # a panorama that breaks after a good run: its old views are removed
    (src / "good.png").write_text("broken now")
    code, text = run("crop", src, out, "--views", "0,0", "--size", "4")
    assert code == 1 and not (out / "good").exists()


def test_crop_bad_options_and_folders(tmp_path, ldr):
    src = tmp_path / "src"
    src.mkdir()
    code, text = run("crop", src, tmp_path / "o")
    assert_usage_error(code, text, str(src), "no panoramas")
    iio.imwrite(src / "a.png", ldr)
    for opts, word in ((["--fov", "200"], "fov"), (["--fov", "nan"], "fov"), (["--views", "1,2,3"], "yaw,pitch"),
                       (["--views", "nope"], "views"), (["--cube", "1"], "cube")):
        code, text = run("crop", src, tmp_path / "o", *opts)
        assert code == 2 and word in text and "error:" in text, (opts, text)
    assert not (tmp_path / "o").exists()
    afile = tmp_path / "afile"
    afile.write_text("x")
    code, text = run("crop", src, afile)
    assert_usage_error(code, text, str(afile), "is an existing file")
    code, text = run("crop", src, afile / "sub")
    assert_usage_error(code, text, str(afile / "sub"), "a parent of it is a file")


# ----------------------------------------------------------------------------------------- caption
def _scenes(d: Path, names: list[str]) -> Path:
    from opama_tools.data.synthetic import make_scene

    recs = []
    for k, n in enumerate(names):
        sc = make_scene(k)
        recs.append({"image": n.replace(".png", ".exr"), "seed": k, "kind": sc.kind, "caption": sc.description,
                     "scene": sc.to_dict()})
    p = d / "scenes.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return p


def test_caption_zoo(tmp_path, ldr):
    src = tmp_path / "src"
    bad = write_bad_images(src, ldr)
    odd = write_odd_but_valid(src / "odd", ldr)
    bad.pop("name\\xff\\xfe.png")  # metadata captions need no decoding: the name is the only problem
    bad = {**bad, "name\\xff\\xfe.png": "not valid UTF-8"}
    names = ["good.png"] + [f"{s}.png" for s in odd]
    scenes = _scenes(tmp_path, names + ["empty.png", "truncated.png", "text.png", "square.png"])
    out = tmp_path / "caps.jsonl"
    code, text = run("caption", src, out, "--from-metadata", scenes, "--augment", "--stride", "180")
    assert code == 1, text
    assert "name\\xff\\xfe.png" in text and "not valid UTF-8" in text and "fake.jpg" in text
    recs = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert all(isinstance(r, dict) for r in recs)
    # a malformed scene record names the file and the image, never Python internals
    rec = json.loads(scenes.read_text().splitlines()[0])
    del rec["scene"]["kind"]
    scenes.write_text(json.dumps(rec) + "\n")
    code, text = run("caption", src, tmp_path / "c2.jsonl", "--from-metadata", scenes, "--augment")
    assert code == 1 and "__init__" not in text
    hit = [h for h in lines_naming(text, "good.png") if "failed" in h]
    assert hit and "scenes.jsonl" in hit[0] and "kind" in hit[0], text


@pytest.mark.parametrize("content,words", [
    ('{"image": "a.exr", "caption": "x"}\n{"image": "b.exr" "caption": 1}\n', ["line 2", "not valid JSON"]),
    (b'{"image": "a.exr"}\n\xff\xfe\n', ["not UTF-8"]),
    ('{"caption": "no image"}\n', ["line 1", "'image'"]),
    ('[1, 2]\n', ["line 1", "JSON object"]),
    ("", ["empty"]),
])
def test_caption_bad_scenes_file(tmp_path, ldr, content, words):
    src = tmp_path / "src"
    src.mkdir()
    iio.imwrite(src / "a.png", ldr)
    scenes = tmp_path / "scenes.jsonl"
    scenes.write_bytes(content if isinstance(content, bytes) else content.encode())
    code, text = run("caption", src, tmp_path / "o.jsonl", "--from-metadata", scenes)
    assert_usage_error(code, text, "scenes.jsonl", *words)
    assert not (tmp_path / "o.jsonl").exists()


def test_caption_bad_outputs_and_inputs(tmp_path, ldr):
    src = tmp_path / "src"
    src.mkdir()
    scenes = _scenes(tmp_path, ["a.png"])
    code, text = run("caption", src, tmp_path / "o.jsonl", "--from-metadata", scenes)
    assert_usage_error(code, text, str(src), "no panoramas")
    assert not (tmp_path / "o.jsonl").exists()
    iio.imwrite(src / "a.png", ldr)
    code, text = run("caption", src, tmp_path, "--from-metadata", scenes)
    assert_usage_error(code, text, str(tmp_path), "is an existing folder")
    afile = tmp_path / "afile"
    afile.write_text("x")
    code, text = run("caption", src, afile / "o.jsonl", "--from-metadata", scenes)
    assert_usage_error(code, text, str(afile), "is an existing file")
    # an existing OUT_JSONL that is not ours is named and left alone
    png_out = tmp_path / "picture.jsonl"
    png_out.write_bytes((src / "a.png").read_bytes())
    code, text = run("caption", src, png_out, "--from-metadata", scenes)
    assert_usage_error(code, text, "picture.jsonl", "not a captions JSONL")
    assert png_out.read_bytes() == (src / "a.png").read_bytes()
    other = tmp_path / "other.jsonl"
    other.write_text('{"image": "a.png", "caption": "x"}\nnot json at all\n{"image": "b.png", "caption": "y"}\n')
    code, text = run("caption", src, other, "--from-metadata", scenes)
    assert_usage_error(code, text, "other.jsonl", "line 2")
    for opts, word in ((["--stride", "0"], "stride"), (["--fov", "180"], "fov"), (["--pitch", "91"], "pitch")):
        code, text = run("caption", src, tmp_path / "o.jsonl", "--from-metadata", scenes, *opts)
        assert code == 2 and word in text, (opts, text)


def test_caption_model_folder_errors(tmp_path, ldr, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    iio.imwrite(src / "a.png", ldr)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "blip"}))
    code, text = run("caption", src, tmp_path / "o.jsonl", "--model", model, "--device", "gpu7")
    assert_usage_error(code, text, "--device", "gpu7")
    code, text = run("caption", src, tmp_path / "o.jsonl", "--model", model, "--device", "cpu")
    assert_usage_error(code, text, str(model), "cannot load the blip")
    (model / "config.json").write_text('{"model_type": "blip",\n "x": }')
    code, text = run("caption", src, tmp_path / "o.jsonl", "--model", model, "--device", "cpu")
    assert_usage_error(code, text, "config.json", "line 2")
    (model / "config.json").write_bytes(b"\xff\xfe{}")
    code, text = run("caption", src, tmp_path / "o.jsonl", "--model", model, "--device", "cpu")
    assert_usage_error(code, text, "config.json", "UTF-8")
    assert not (tmp_path / "o.jsonl").exists()


# ----------------------------------------------------------------------------------------- demo --data-only
def test_demo_data_only_errors(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    code, text = run("demo", "--data-only", afile, "-n", "1", "--height", "8")
    assert_usage_error(code, text, str(afile), "is an existing file")
    code, text = run("demo", "--data-only", afile / "sub", "-n", "1", "--height", "8")
    assert_usage_error(code, text, str(afile / "sub"), "a parent of it is a file")
    d = tmp_path / "d"
    d.mkdir()
    (d / "scenes.jsonl").write_text('{"image": "synth_0000.exr"}\n{broken\n')
    code, text = run("demo", "--data-only", d, "-n", "1", "--height", "8")
    assert_usage_error(code, text, "scenes.jsonl", "line 2")
    assert (d / "scenes.jsonl").read_text().endswith("{broken\n")
    code, text = run("demo", "--data-only", d, "--kind", "underwater")
    assert code == 2 and "--kind" in text
    code, text = run("demo", "--data-only", d, "-n", "0")
    assert code == 2 and "-n" in text


def test_printable_path_shows_undecodable_bytes():
    p = bad_name(Path("/x"), "a", ".png")
    assert printable_path(p) == "/x/a\\xff\\xfe.png"


def test_every_reader_scales_16_bit_and_expands_grey(tmp_path, ldr):
    """prepare, crop and caption read the same pixels from 8/16-bit, grey/RGB(A) PNGs."""
    from opama_tools.data import caption, crop, prepare

    odd = write_odd_but_valid(tmp_path, ldr)
    for stem in odd:
        p = tmp_path / f"{stem}.png"
        c8 = caption.read_panorama(p)  # uint8 for BLIP
        k = crop.read_panorama(p)  # uint8 or uint16, sampled at full precision
        f = prepare._load_ldr(p)  # uint8, or float in [0, 1] for 16-bit
        assert c8.shape == k.shape == f.shape == (H, W, 3) and c8.dtype == np.uint8, stem
        kf = k.astype(np.float64) / np.iinfo(k.dtype).max
        ff = f.astype(np.float64) / (255.0 if f.dtype == np.uint8 else 1.0)
        assert np.abs(kf - ff).max() < 1e-6 and np.abs(c8 / 255.0 - kf).max() <= 0.5 / 255 + 1e-9, stem
    g = crop.read_panorama(tmp_path / "grey16.png")
    assert g.dtype == np.uint16 and g.max() > 255  # not clipped to 8 bit
    np.testing.assert_array_equal(caption.read_panorama(tmp_path / "grey16.png"), np.repeat(ldr[..., :1], 3, -1))
