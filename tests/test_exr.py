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


def test_truncated_exr_gives_one_clean_line(tmp_path, capfd):
    """OpenEXR's own diagnostics (written by C to stdout and stderr) never reach the user."""
    rng = np.random.default_rng(3)
    good = tmp_path / "good.exr"
    write_exr(good, rng.random((64, 128, 3)).astype(np.float32))
    data = good.read_bytes()
    capfd.readouterr()
    for n in (400, 2000, len(data) // 2, len(data) - 100):
        trunc = tmp_path / f"trunc{n}.exr"
        trunc.write_bytes(data[:n])
        with pytest.raises(ExrError, match=f"trunc{n}.exr: unreadable EXR, damaged or truncated"):
            read_exr(trunc)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    print("still printed")  # the descriptors are back
    assert capfd.readouterr().out == "still printed\n"
    np.testing.assert_array_equal(read_exr(good).shape, (64, 128, 3))


def test_prepare_cli_prints_one_line_for_a_truncated_exr(tmp_path):
    import subprocess
    import sys

    src = tmp_path / "src"
    src.mkdir()
    write_exr(src / "good.exr", np.ones((8, 16, 3), np.float32))
    big = tmp_path / "big.exr"
    write_exr(big, np.random.default_rng(4).random((64, 128, 3)).astype(np.float32))
    (src / "bad.exr").write_bytes(big.read_bytes()[:2000])
    res = subprocess.run([sys.executable, "-m", "opama_tools.cli", "prepare", str(src), str(tmp_path / "out"),
                          "--workers", "1"], capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "COLUMNS": "200"})
    assert res.returncode == 1, res.stdout + res.stderr
    text = res.stdout + res.stderr
    assert "EXR_ERR" not in text and "Warning" not in text, text
    lines = [ln for ln in text.splitlines() if "bad.exr" in ln]
    assert len(lines) == 1 and "unreadable EXR, damaged or truncated" in lines[0], text
