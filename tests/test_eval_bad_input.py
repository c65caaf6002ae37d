"""`opama eval` with a user's mistakes: for each, a non-zero exit, one line naming the culprit,
no traceback, and no report folder left behind. Also 16-bit and grey PNGs read right."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest
from typer.testing import CliRunner

from test_metrics_helpers import no_weights_env, synthetic_pano8, write_pngs

from opama_tools.cli import app

runner = CliRunner()
H = 32


@pytest.fixture()
def folders(tmp_path, monkeypatch):
    no_weights_env(monkeypatch, tmp_path)
    imgs = {f"p{k}.png": synthetic_pano8(k, H) for k in range(2)}
    write_pngs(tmp_path / "gen", imgs)
    write_pngs(tmp_path / "ref", imgs)
    return tmp_path


def _run(args, env=None):
    res = runner.invoke(app, ["eval", *map(str, args)], env={"COLUMNS": "300", **(env or {})})
    return res


def _assert_user_error(res, culprit: str, out=None, code: int = 2):
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1, res.output
    assert culprit in lines[0], (culprit, lines[0])
    if out is not None:
        assert not out.exists() or out.is_file(), f"{out} left behind"


def test_output_path_is_a_file(folders):
    f = folders / "taken"
    f.write_text("x")
    _assert_user_error(_run([folders / "gen", folders / "ref", "--metrics", "seam", "--out", f]), "taken")
    assert f.read_text() == "x"
    _assert_user_error(_run([folders / "gen", folders / "ref", "--metrics", "seam", "--out", f / "sub"]), "taken")


def test_broken_caption_line_names_file_and_line(folders):
    caps = folders / "caps.jsonl"
    caps.write_text('{"image": "p0.png", "caption": "a room"}\n{"image": "p1.png", "caption": \n')
    out = folders / "rep"
    _assert_user_error(_run([folders / "gen", folders / "ref", "--captions", caps, "--metrics", "clip,seam",
                             "--out", out]), f"{caps}:2", out)
    caps.write_bytes(b'{"image": "p0.png", "caption": "\xff\xfe"}\n')
    _assert_user_error(_run([folders / "gen", folders / "ref", "--captions", caps, "--metrics", "clip,seam",
                             "--out", out]), str(caps), out)


@pytest.mark.parametrize("flag,value", [("--input-size", "0"), ("--input-fov", "200"), ("--input-fov", "0"),
                                        ("--input-fov", "nan"), ("--faces", "5"), ("--face-size", "0"),
                                        ("--bootstrap", "-1"), ("--faed-height", "100"), ("--metrics", "fid,bogus")])
def test_invalid_numbers_and_names(folders, flag, value):
    out = folders / "rep"
    _assert_user_error(_run([folders / "gen", folders / "ref", flag, value, "--out", out]), flag, out)


@pytest.mark.parametrize("device", ["gpu7", "cuda:99", "tpu"])
def test_unknown_device(folders, device):
    out = folders / "rep"
    _assert_user_error(_run([folders / "gen", folders / "ref", "--device", device, "--out", out]), "--device", out)


def test_model_folder_with_config_but_no_weights(folders):
    clip = folders / "clip-no-weights"
    clip.mkdir()
    (clip / "config.json").write_text(json.dumps({"model_type": "clip"}))
    caps = folders / "caps.jsonl"
    caps.write_text('{"image": "p0.png", "caption": "a room"}\n')
    out = folders / "rep"
    _assert_user_error(_run([folders / "gen", folders / "ref", "--captions", caps, "--clip-weights", clip,
                             "--metrics", "clip,seam", "--out", out]), f"--clip-weights {clip}", out)
    bad = folders / "faed.ckpt"
    bad.write_bytes(b"not a checkpoint")
    _assert_user_error(_run([folders / "gen", folders / "ref", "--faed-weights", bad, "--metrics", "faed",
                             "--out", out]), "--faed-weights", out)


def test_empty_and_unpairable_folders(folders):
    empty = folders / "empty"
    empty.mkdir()
    out = folders / "rep"
    _assert_user_error(_run([empty, folders / "ref", "--out", out]), "nothing to evaluate", out)
    write_pngs(folders / "other", {"q.png": synthetic_pano8(5, H)})
    _assert_user_error(_run([folders / "other", folders / "ref", "--out", out]), "none with the same name", out)


def test_mismatched_sizes_name_the_file(folders):
    write_pngs(folders / "small", {"p0.png": synthetic_pano8(0, H // 2), "p1.png": synthetic_pano8(1, H)})
    out = folders / "rep"
    _assert_user_error(_run([folders / "small", folders / "ref", "--metrics", "seam", "--out", out]),
                       str(folders / "small" / "p0.png"), out)


def test_broken_meta_json(folders):
    write_pngs(folders / "nested" / "p0", {"pano.png": synthetic_pano8(0, H)})
    (folders / "nested" / "p0" / "meta.json").write_text("{broken")
    out = folders / "rep"
    _assert_user_error(_run([folders / "nested", folders / "ref", "--metrics", "seam", "--out", out]),
                       "meta.json", out)


def _png16(path, a: np.ndarray) -> None:
    """Minimal 16-bit PNG writer (Pillow cannot write 16-bit RGB): grey (H, W) or RGB (H, W, 3)."""
    a = a if a.ndim == 3 else a[..., None]
    h, w, c = a.shape
    raw = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(h))

    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, {1: 0, 3: 2}[c], 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_16bit_and_grey_pngs_read_right(tmp_path):
    from opama_tools.eval.evaluate import load_image

    a8 = synthetic_pano8(3, H)
    _png16(tmp_path / "rgb16.png", a8.astype(np.uint16) * 257)  # v * 257 = exact 16-bit of 8-bit v
    assert np.array_equal(load_image(tmp_path / "rgb16.png"), a8)
    g16 = (np.arange(H * 2 * H).reshape(H, 2 * H) * 37 % 65536).astype(np.uint16)
    _png16(tmp_path / "grey16.png", g16)
    got = load_image(tmp_path / "grey16.png")
    assert got.shape == (H, 2 * H, 3) and got.dtype == np.uint8
    assert np.array_equal(got[..., 0], np.round(g16 / 65535 * 255).astype(np.uint8))
    assert np.array_equal(got[..., 0], got[..., 2])
    write_pngs(tmp_path / "g8", {"grey8.png": a8[..., 0]})
    assert np.array_equal(load_image(tmp_path / "g8" / "grey8.png"), np.repeat(a8[..., :1], 3, axis=-1))


def test_16bit_generated_against_8bit_reference_scores_perfect(folders):
    for k in range(2):
        _png16(folders / "gen16" / f"p{k}.png", synthetic_pano8(k, H).astype(np.uint16) * 257)
    out = folders / "rep"
    res = _run([folders / "gen16", folders / "ref", "--metrics", "psnr", "--out", out, "--bootstrap", "10",
                "--input-size", "64"])
    assert res.exit_code == 0, res.output
    m = {x["label"]: x for x in json.loads((out / "metrics.json").read_text())["metrics"]}
    assert m["PSNR (input region, dB)"]["value"] == 100.0


def test_unwritable_output_folder(folders):
    import os

    if os.geteuid() == 0:
        pytest.skip("root ignores folder permissions (needs an unprivileged user)")
    locked = folders / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        _assert_user_error(_run([folders / "gen", folders / "ref", "--metrics", "seam", "--out", locked / "rep"]),
                           "not writable", locked / "rep")
    finally:
        locked.chmod(0o700)


def test_interrupted_report_write_is_not_taken_for_done(folders, monkeypatch):
    """metrics.json (the "done" marker) is written last: a failure before it leaves no marker."""
    out = folders / "rep"
    args = [folders / "gen", folders / "ref", "--metrics", "seam", "--out", out, "--bootstrap", "5"]
    assert _run(args).exit_code == 0 and (out / "metrics.json").is_file()
    import opama_tools.eval.report as report

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "_plots", boom)
    write_pngs(folders / "gen", {"p0.png": synthetic_pano8(9, H)})  # inputs changed: recompute
    res = _run(args)
    assert res.exit_code == 2 and "No space left" in res.output and "Traceback" not in res.output
    assert not (out / "metrics.json").exists()
    monkeypatch.undo()
    res = _run(args)
    assert res.exit_code == 0 and "already holds" not in res.output and (out / "metrics.json").is_file()


def test_unwritable_output_folder_reported_without_permissions(folders, monkeypatch):
    """The same check as above, with the permission answer forced (works as root too)."""
    import os

    real = os.access
    locked = folders / "locked2"
    locked.mkdir()
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if str(p) == str(locked) else real(p, mode, *a, **k))
    _assert_user_error(_run([folders / "gen", folders / "ref", "--metrics", "seam", "--out", locked / "rep"]),
                       f"{locked} is not writable", locked / "rep")
