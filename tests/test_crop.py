"""``opama crop``: views, masks, cube faces, views.csv, batch behaviour."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from opama_model.spherical import equi_to_cube, equi_to_pers, view_coverage_mask
from opama_model.views import AOG21
from opama_tools.cli import app
from opama_tools.data.crop import CropSettings, run_crop
from opama_tools.data.synthetic import make_scene, render_equirect

runner = CliRunner()


@pytest.fixture(scope="module")
def pano8() -> np.ndarray:
    e = render_equirect(make_scene(1, "outdoor"), 32, 64, supersample=1)
    return (np.clip(e / (1 + e), 0, 1) * 255).round().astype(np.uint8)


@pytest.fixture()
def pano_dir(tmp_path, pano8):
    d = tmp_path / "panos"
    d.mkdir()
    iio.imwrite(d / "a.png", pano8)
    iio.imwrite(d / "b.png", (pano8[..., 1].astype(np.uint16) * 257))  # 16-bit grey
    return d


def _float(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img.astype(np.float32) / 255).permute(2, 0, 1)[None]


def test_crop_writes_views_masks_faces_and_csv(tmp_path, pano_dir, pano8):
    out = tmp_path / "out"
    res = runner.invoke(app, ["crop", str(pano_dir), str(out), "--views", "0,0;90,0;180,-30",
                              "--size", "16", "--fov", "100", "--cube", "8", "--masks"])
    assert res.exit_code == 0, res.output
    assert "2 done, 0 skipped, 0 failed" in res.output
    df = pd.read_csv(out / "views.csv", keep_default_na=False)
    assert list(df.columns[:7]) == ["image", "kind", "name", "index", "yaw", "pitch", "fov"]
    assert len(df) == 2 * (3 + 6)
    views = df[(df.image == "a.png") & (df.kind == "view")]
    assert views[["yaw", "pitch"]].values.tolist() == [[0, 0], [90, 0], [180, -30]]
    assert set(views.fov) == {100.0} and set(df[df.kind == "cube"].name) == set("FRBLUD")
    for p in list(df.path) + [m for m in df.mask_path if m]:
        assert (out / p).is_file(), p
    # pixels: the view is the equi_to_pers cut of the panorama, rounded to 8 bit
    ref = equi_to_pers(_float(pano8), [0, 90, 180], [0, 0, -30], 100, (16, 16))[0]
    for k in range(3):
        img = iio.imread(out / views.path.iloc[k])
        assert img.shape == (16, 16, 3) and img.dtype == np.uint8
        expected = (ref[k].permute(1, 2, 0).numpy() * 255).round()
        assert np.abs(img.astype(float) - expected).max() <= 1
    # masks: footprint on the panorama, 0/255
    m = iio.imread(out / views.mask_path.iloc[2])
    assert m.shape == (32, 64) and set(np.unique(m)) == {0, 255}
    cov = view_coverage_mask(180, -30, 100, (16, 16), (32, 64))[0, 0].numpy()
    assert np.array_equal(m == 255, cov == 1)
    assert m[:, 0].any() and m[:, -1].any() and not m[:, 32].any()  # around the seam, not the centre
    # cube faces
    faces = equi_to_cube(_float(pano8), 8)[0]
    f_u = iio.imread(out / "a" / "cube_U.png")
    assert np.abs(f_u.astype(float) - (faces[4].permute(1, 2, 0).numpy() * 255).round()).max() <= 1
    # 16-bit grey input: 3 equal channels in the 8-bit view
    vb = iio.imread(out / "b" / "view_00.png")
    assert vb.shape == (16, 16, 3) and np.array_equal(vb[..., 0], vb[..., 2])


def test_crop_reruns_skip_and_overwrite(tmp_path, pano_dir):
    out = tmp_path / "out"
    args = ["crop", str(pano_dir), str(out), "--views", "cube", "--size", "8"]
    assert runner.invoke(app, args).exit_code == 0
    first = (out / "a" / "view_03.png").stat().st_mtime_ns
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and "0 done, 2 skipped, 0 failed" in res.output
    assert (out / "a" / "view_03.png").stat().st_mtime_ns == first
    assert len(pd.read_csv(out / "views.csv")) == 12  # skipped panoramas stay in the table
    res = runner.invoke(app, args + ["--overwrite"])
    assert res.exit_code == 0 and "2 done, 0 skipped" in res.output
    # other settings are not "done": redone, and stale files of the old settings removed
    res = runner.invoke(app, ["crop", str(pano_dir), str(out), "--views", "0,0;45,0", "--size", "8"])
    assert "2 done, 0 skipped" in res.output
    assert sorted(p.name for p in (out / "a").glob("*.png")) == ["view_00.png", "view_01.png"]
    # a missing output makes the panorama pending again
    (out / "b" / "view_01.png").unlink()
    res = runner.invoke(app, ["crop", str(pano_dir), str(out), "--views", "0,0;45,0", "--size", "8"])
    assert "1 done, 1 skipped" in res.output


def test_crop_reports_bad_files_and_continues(tmp_path, pano_dir):
    (pano_dir / "broken.png").write_text("not a png")
    iio.imwrite(pano_dir / "square.png", np.zeros((16, 16, 3), np.uint8))
    out = tmp_path / "out"
    res = runner.invoke(app, ["crop", str(pano_dir), str(out), "--views", "ring8", "--size", "8"])
    assert res.exit_code == 1
    assert "2 done, 0 skipped, 2 failed" in res.output
    assert "broken.png" in res.output and "not a readable PNG/JPEG image" in res.output
    assert "square.png" in res.output and "not a 2:1" in res.output
    df = pd.read_csv(out / "views.csv")
    assert set(df.image) == {"a.png", "b.png"} and len(df) == 16
    assert not (out / "broken").exists()


def test_crop_named_set_aog21_library(tmp_path, pano_dir):
    res = run_crop(pano_dir, tmp_path / "o", CropSettings(views=AOG21, size=8))
    assert len(res.done) == 2 and not res.failed
    df = pd.read_csv(res.csv)
    a = df[df.image == "a.png"]
    assert list(zip(a.yaw, a.pitch)) == list(AOG21)


def test_crop_usage_errors(tmp_path, pano_dir):
    res = runner.invoke(app, ["crop", str(pano_dir), str(tmp_path / "o"), "--views", "0,0;95"])
    assert res.exit_code == 2 and "yaw,pitch" in res.output
    res = runner.invoke(app, ["crop", str(pano_dir), str(tmp_path / "o"), "--fov", "180"])
    assert res.exit_code == 2
    res = runner.invoke(app, ["crop", str(tmp_path / "missing"), str(tmp_path / "o")])
    assert res.exit_code == 2 and "not a folder" in res.output
    empty = tmp_path / "empty"
    empty.mkdir()
    res = runner.invoke(app, ["crop", str(empty), str(tmp_path / "o")])
    assert res.exit_code == 2 and "no panoramas" in res.output and not (tmp_path / "o").exists()
    res = runner.invoke(app, ["crop", "--help"])
    assert res.exit_code == 0 and "Example:" in res.output


def test_crop_is_recursive_and_mirrors_the_tree(tmp_path, pano_dir, pano8):
    (pano_dir / "sub" / "deep").mkdir(parents=True)
    iio.imwrite(pano_dir / "sub" / "deep" / "c.png", pano8)
    iio.imwrite(pano_dir / "sub" / "a.png", pano8)  # same stem as the top-level a.png, other folder
    (pano_dir / ".hidden").mkdir()
    iio.imwrite(pano_dir / ".hidden" / "h.png", pano8)
    out = pano_dir / "views_out"  # inside the source folder: never taken as input
    res = runner.invoke(app, ["crop", str(pano_dir), str(out), "--views", "0,0", "--size", "8"])
    assert res.exit_code == 0, res.output
    assert "4 done" in res.output
    df = pd.read_csv(out / "views.csv")
    assert sorted(df.image) == ["a.png", "b.png", "sub/a.png", "sub/deep/c.png"]
    assert sorted(df.path) == ["a/view_00.png", "b/view_00.png", "sub/a/view_00.png", "sub/deep/c/view_00.png"]
    assert all((out / p).is_file() for p in df.path)
    res = runner.invoke(app, ["crop", str(pano_dir), str(out), "--views", "0,0", "--size", "8"])
    assert "0 done, 4 skipped" in res.output


def test_crop_redoes_a_panorama_whose_content_changed(tmp_path, pano_dir, pano8):
    out = tmp_path / "out"
    args = ["crop", str(pano_dir), str(out), "--views", "0,0", "--size", "8"]
    assert runner.invoke(app, args).exit_code == 0
    old_view = iio.imread(out / "a" / "view_00.png")
    iio.imwrite(pano_dir / "a.png", 255 - pano8)  # same name, same settings, new content
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and "1 done, 1 skipped" in res.output, res.output
    new_view = iio.imread(out / "a" / "view_00.png")
    assert np.abs(new_view.astype(int) - (255 - old_view.astype(int))).max() <= 1


def test_crop_cleans_its_own_leftovers_and_keeps_other_files(tmp_path, pano_dir):
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    left_dir = out / ".a.k3j_x9ab.tmp"  # a panorama folder being written when a run was killed
    left_dir.mkdir()
    (left_dir / "view_00.png").write_bytes(b"partial")
    left_file = out / ".views.abcd1234.tmp.csv"
    left_file.write_text("partial")
    mine = [out / ".keep", out / "notes.tmp", out / ".a.short.tmp"]
    for p in mine:
        p.write_text("user file")
    res = runner.invoke(app, ["crop", str(pano_dir), str(out), "--views", "0,0", "--size", "8"])
    assert res.exit_code == 0, res.output
    assert not left_dir.exists() and not left_file.exists()
    assert all(p.exists() for p in mine)
    assert sorted(p.name for p in (out / "a").iterdir()) == ["crop.json", "view_00.png"]


def test_crop_outputs_follow_the_umask(tmp_path, pano_dir):
    import os

    old = os.umask(0o027)
    try:
        run_crop(pano_dir, tmp_path / "o", CropSettings(views=((0.0, 0.0),), size=8))
    finally:
        os.umask(old)
    assert (tmp_path / "o" / "views.csv").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "o" / "a" / "view_00.png").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "o" / "a").stat().st_mode & 0o777 == 0o750


def test_crop_skips_by_content_not_by_file_times(tmp_path, pano_dir, pano8):
    """The done record holds the source's content hash: a touched file is still done; new bytes
    with the old size and mtime are redone; settings given as ints or floats are the same."""
    import os

    from opama_tools.jobs import read_done, source_signature

    out = tmp_path / "out"
    st = CropSettings(views=((0, 0),), size=8)
    assert len(run_crop(pano_dir, out, st).done) == 2
    rec = read_done(out / "a" / "crop.json")
    assert rec["source"] == source_signature(pano_dir / "a.png") and rec["settings"] == st.key()
    assert rec["image"] == "a.png" and (rec["height"], rec["width"]) == (32, 64)
    os.utime(pano_dir / "a.png", ns=(5, 5))
    res = run_crop(pano_dir, out, CropSettings(views=((0.0, 0.0),), size=8, fov=90))
    assert (len(res.done), len(res.skipped)) == (0, 2)
    a = pano_dir / "a.png"
    size, times = a.stat().st_size, (a.stat().st_atime_ns, a.stat().st_mtime_ns)
    data = bytearray(a.read_bytes())
    data[-20] ^= 0xFF  # a byte of the IEND/IDAT area: same size, other content
    a.write_bytes(bytes(data))
    os.utime(a, ns=times)
    assert a.stat().st_size == size
    res = run_crop(pano_dir, out, st)
    assert [p.name for p in res.done] + [p.name for p, _ in res.failed] == ["a.png"]
