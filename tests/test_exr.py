import numpy as np
import pytest

from opama_tools.data.exr import ExrError, read_exr, write_exr
from opama_tools.data.synthetic import generate_dataset


def test_roundtrip_float32_exact(tmp_path):
    rng = np.random.default_rng(0)
    img = (rng.random((16, 32, 3)) * 5000).astype(np.float32)
    write_exr(tmp_path / "a.exr", img)
    np.testing.assert_array_equal(read_exr(tmp_path / "a.exr"), img)


def test_roundtrip_half_and_noncontiguous(tmp_path):
    rng = np.random.default_rng(1)
    base = (rng.random((8, 16, 4)) * 10).astype(np.float32)
    view = base[:, ::-1, :3]  # non-contiguous: must still be written correctly
    write_exr(tmp_path / "h.exr", view, half=True)
    back = read_exr(tmp_path / "h.exr")
    assert back.dtype == np.float32 and back.shape == (8, 16, 3)
    np.testing.assert_allclose(back, view, atol=1e-2, rtol=1e-3)


def test_rgba_and_luminance(tmp_path):
    rgba = np.random.default_rng(2).random((4, 8, 4)).astype(np.float32)
    write_exr(tmp_path / "rgba.exr", rgba)
    np.testing.assert_array_equal(read_exr(tmp_path / "rgba.exr"), rgba)
    y = np.arange(32, dtype=np.float32).reshape(4, 8)
    write_exr(tmp_path / "y.exr", y)
    out = read_exr(tmp_path / "y.exr")
    assert out.shape == (4, 8, 3)
    np.testing.assert_array_equal(out[..., 1], y)


def test_bad_files_name_the_file(tmp_path):
    p = tmp_path / "fake.exr"
    p.write_text("not an image")
    with pytest.raises(ExrError, match="fake.exr.*not an OpenEXR"):
        read_exr(p)
    good = tmp_path / "good.exr"
    write_exr(good, np.ones((32, 64, 3), np.float32))
    trunc = tmp_path / "trunc.exr"
    trunc.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ExrError, match="trunc.exr"):
        read_exr(trunc)


def test_generate_dataset_writes_exr_and_captions(tmp_path):
    paths = generate_dataset(tmp_path, n=2, height=16, seed=3)
    assert [p.name for p in paths] == ["synth_0003.exr", "synth_0004.exr"]
    img = read_exr(paths[0])
    assert img.shape == (16, 32, 3) and img.dtype == np.float32
    lines = (tmp_path / "scenes.jsonl").read_text().splitlines()
    assert len(lines) == 2 and '"caption"' in lines[0]
    # Re-running keeps the files (skip done) and the metadata.
    mtime = paths[0].stat().st_mtime_ns
    generate_dataset(tmp_path, n=2, height=16, seed=3)
    assert paths[0].stat().st_mtime_ns == mtime
    assert len((tmp_path / "scenes.jsonl").read_text().splitlines()) == 2
