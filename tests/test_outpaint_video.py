"""``opama outpaint`` with a video input: outputs, exactness of the input pixels, resume, masked edits, bad input."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from opama_tools.cli import app
from opama_tools.videos import VideoWriter, probe_video, read_frames

runner = CliRunner()
# tiny preset, a 64x128 canvas, 1 step, a 2-view schedule: each full panorama takes a fraction of a second
FAST = ["--preset", "tiny", "--size", "64x128", "--steps", "1", "--views", "0,25;0,-25"]
N = 6

pytestmark = pytest.mark.usefixtures("one_thread_module")


def clip_frames(n=N, size=(48, 64), moving=True):
    """``n`` uint8 frames: a fixed random texture with a bright square moving right (or still)."""
    rng = np.random.RandomState(0)
    base = (rng.rand(*size, 3) * 200).astype(np.uint8)
    frames = []
    for k in range(n):
        f = base.copy()
        x = 4 + (6 * k if moving else 0)
        f[16:28, x:x + 10] = 250
        frames.append(f)
    return frames


def write_clip(path, frames, fps=10, lossless=True):
    with VideoWriter(path, fps, lossless=lossless) as w:
        for f in frames:
            w.append(f)
    return path


def paste(frame, direction, hw=(64, 128)):
    from opama_model.pipeline import paste_inputs, to_uint8

    canvas, known = paste_inputs([frame], [direction], hw)
    return to_uint8(canvas), known[0, 0].numpy()


def test_clip_to_video_outputs_exact_inputs_and_resume(tmp_path):
    clip = write_clip(tmp_path / "clip.mkv", clip_frames())
    out = tmp_path / "o"
    args = ["outpaint", *FAST, "--input", f"{clip}@20,0,90", "--prompt", "a room", "--out", str(out), "--lossless"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert f"{out / 'pano.mp4'} written" in res.output
    info = probe_video(out / "pano.mp4")
    assert (info.frames, info.height, info.width) == (N, 64, 128) and abs(info.fps - 10) < 1e-6
    masks = np.load(out / "input_masks.npy", allow_pickle=False)
    assert masks.shape == (N, 64, 128) and masks.dtype == np.bool_
    meta = json.loads((out / "meta.json").read_text())
    assert meta["kind"] == "video" and meta["video"]["frames"] == N and 0 in meta["video"]["keyframes"]
    passes = meta["video"]["unet_passes_per_frame"]
    assert len(passes) == N and passes[0] == meta["video"]["full_panorama_unet_passes"] > 0
    assert meta["video"]["unet_passes_total"] == sum(passes)
    assert "pano.mp4" in (out / "index.html").read_text()
    # every frame's input pixels are exactly that frame's photo as pasted (the lossless copy)
    decoded = list(read_frames(clip))
    for k, frame in enumerate(read_frames(out / "pano.mkv")):
        want, known = paste(decoded[k], (20.0, 0.0, 90.0))
        assert np.array_equal(known, masks[k])
        assert np.array_equal(frame[known], want[known]), k
    # re-run: done; a changed clip is redone
    stamp = (out / "pano.mp4").stat().st_mtime_ns
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and "already done" in res.output, res.output
    assert (out / "pano.mp4").stat().st_mtime_ns == stamp
    write_clip(clip, clip_frames(moving=False))
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and "written" in res.output


def test_trajectory_moves_the_input_footprint(tmp_path):
    clip = write_clip(tmp_path / "clip.mkv", clip_frames(moving=False))
    traj = tmp_path / "traj.csv"
    traj.write_text("frame,yaw,pitch,fov\n0,-30,0,90\n5,30,10,90\n")
    out = tmp_path / "o"
    res = runner.invoke(app, ["outpaint", *FAST, "--input", str(clip), "--trajectory", str(traj),
                              "--out", str(out), "--lossless"])
    assert res.exit_code == 0, res.output
    masks = np.load(out / "input_masks.npy", allow_pickle=False)
    meta = json.loads((out / "meta.json").read_text())
    for k in range(N):
        direction = (-30 + 12 * k, 2.0 * k, 90.0)
        assert meta["video"]["directions"][k] == pytest.approx(list(direction))
        assert np.array_equal(masks[k], paste(clip_frames()[0], direction)[1]), k
    # the footprint's centre column moves right frame by frame
    centres = [np.nonzero(m.any(axis=0))[0].mean() for m in masks]
    assert all(b > a for a, b in zip(centres, centres[1:]))


def test_masked_edit_keeps_unmasked_pixels(tmp_path):
    rng = np.random.RandomState(1)
    frames = [(rng.rand(64, 128, 3) * 255).astype(np.uint8) for _ in range(4)]
    video = write_clip(tmp_path / "pano.mkv", frames)
    mask = np.zeros((64, 128), np.uint8)
    mask[20:40, 50:80] = 255
    from PIL import Image

    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "o"
    res = runner.invoke(app, ["outpaint", *FAST, "--input", f"{video}@equirect", "--mask", str(tmp_path / "mask.png"),
                              "--prompt", "sky", "--out", str(out), "--lossless"])
    assert res.exit_code == 0, res.output
    keep = mask == 0
    got = list(read_frames(out / "pano.mkv"))
    assert len(got) == 4
    for k, (a, b) in enumerate(zip(got, read_frames(video))):
        assert np.array_equal(a[keep], b[keep]), k
    meta = json.loads((out / "meta.json").read_text())
    assert meta["mode"] == "video-edit" and meta["video"]["directions"] is None


@pytest.mark.parametrize("case", ["text-as-mp4", "truncated", "mask-without-equirect", "trajectory-with-image",
                                  "equirect-png", "equirect-no-mask", "bad-trajectory", "two-inputs", "cube"])
def test_bad_video_input_one_line_exit_2_nothing_written(tmp_path, case):
    clip = write_clip(tmp_path / "clip.mp4", clip_frames(), lossless=False)
    (tmp_path / "p.png").write_bytes(b"")
    from PIL import Image

    Image.fromarray(clip_frames()[0]).save(tmp_path / "p.png")
    traj = tmp_path / "t.csv"
    traj.write_text("frame,yaw,pitch,fov\n0,0,0,90\n")
    args = {
        "text-as-mp4": ["--input", str(_text(tmp_path / "x.mp4"))],
        "truncated": ["--input", str(_truncated(clip, tmp_path / "cut.mp4"))],
        "mask-without-equirect": ["--input", str(clip), "--mask", str(tmp_path / "p.png")],
        "trajectory-with-image": ["--input", str(tmp_path / "p.png"), "--trajectory", str(traj)],
        "equirect-png": ["--input", f"{tmp_path / 'p.png'}@equirect", "--mask", str(tmp_path / "p.png")],
        "equirect-no-mask": ["--input", f"{clip}@equirect"],
        "bad-trajectory": ["--input", str(clip), "--trajectory", str(_bad_traj(tmp_path / "bad.csv"))],
        "two-inputs": ["--input", str(clip), "--input", str(tmp_path / "p.png")],
        "cube": ["--input", str(clip), "--cube", "16"],
    }[case]
    out = tmp_path / "o"
    res = runner.invoke(app, ["outpaint", *FAST, *args, "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1, res.output
    assert not out.exists()


def _text(path):
    path.write_text("not a video\n")
    return path


def _truncated(src, path):
    data = src.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return path


def _bad_traj(path):
    path.write_text("frame,yaw,pitch,fov\n0,0,95,90\n")
    return path
