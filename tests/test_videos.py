"""opama_tools.videos: probing, reading and writing video files, trajectory CSVs, mask frames."""

import subprocess

import numpy as np
import pytest
from PIL import Image

from opama_model.fileio import current_umask
from opama_tools.videos import (
    VideoWriter,
    is_video_path,
    probe_video,
    read_frames,
    read_mask_frames,
    read_trajectory,
    write_trajectory,
)


def _ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _smooth_frames(n=10, hw=(32, 64)):
    """Moving smooth colour waves (what synthetic panoramas look like to a codec)."""
    yy, xx = np.mgrid[0 : hw[0], 0 : hw[1]]
    return [np.stack([128 + 90 * np.sin(xx / 7 + t / 3), 128 + 80 * np.cos(yy / 6 - t / 4),
                      128 + 60 * np.sin((xx + yy) / 11 + t / 5)], -1).round().astype(np.uint8) for t in range(n)]


def _one_line(e: pytest.ExceptionInfo, name) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(name)), msg
    return msg


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def h264(tmp_path_factory):
    """A 10-frame H.264 MP4 at 12 fps and its source frames."""
    path = tmp_path_factory.mktemp("h264") / "clip.mp4"
    frames = _smooth_frames()
    with VideoWriter(path, 12) as w:
        for f in frames:
            w.append(f)
    return path, frames


def test_is_video_path():
    assert is_video_path("a/b.MP4") and is_video_path("x.mkv") and is_video_path("x.webm")
    assert not is_video_path("x.png") and not is_video_path("mp4") and not is_video_path("x.mp4.txt")


def test_h264_round_trip(h264):
    path, frames = h264
    info = probe_video(path)
    assert (info.frames, info.fps, info.height, info.width, info.codec) == (10, 12.0, 32, 64, "h264")
    back = list(read_frames(path))
    assert len(back) == 10 and all(b.dtype == np.uint8 and b.shape == (32, 64, 3) for b in back)
    # CRF 18 with 4:2:0 chroma: ~2 levels on these strongly coloured waves; a frame off by one
    # (or another frame order) is > 20 levels away.
    err = [np.abs(a.astype(int) - b).mean() for a, b in zip(frames, back)]
    assert max(err) < 3.0, err
    assert np.abs(frames[0].astype(int) - back[1]).mean() > 5 * max(err)
    data = path.read_bytes()
    assert data[4:8] == b"ftyp" and data.index(b"moov") < data.index(b"mdat")  # +faststart: browsers stream it
    assert (path.stat().st_mode & 0o777) == 0o666 & ~current_umask()
    assert _leftovers(path.parent) == []


def test_read_resized_and_stopped_early(h264):
    path, _ = h264
    small = read_frames(path, size=(16, 32))
    first = next(small)
    small.close()  # stopping early ends the ffmpeg child
    assert first.shape == (16, 32, 3)
    # resized after the conversion to RGB, by area: Pillow's box filter on the full-size frame
    full = next(read_frames(path))
    box = np.asarray(Image.fromarray(full).resize((32, 16), Image.BOX)).astype(int)
    assert np.abs(first - box).mean() < 1.0
    assert len(list(read_frames(path, size=(16, 24)))) == 10


def test_lossless_round_trip_bit_exact_odd_size(tmp_path):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (33, 65, 3), dtype=np.uint8) for _ in range(4)]  # noise, odd H and W
    path = tmp_path / "exact.mkv"
    with VideoWriter(path, 29.97, lossless=True) as w:
        for f in frames:
            w.append(f)
    info = probe_video(path)
    assert (info.frames, info.height, info.width, info.codec) == (4, 33, 65, "ffv1")
    assert info.fps == pytest.approx(30000 / 1001)
    back = list(read_frames(path))
    assert len(back) == 4 and all(np.array_equal(a, b) for a, b in zip(frames, back))


def test_h264_needs_even_sizes(tmp_path):
    path = tmp_path / "odd.mp4"
    with pytest.raises(ValueError) as e:
        with VideoWriter(path, 10) as w:
            w.append(np.zeros((65, 130, 3), np.uint8))  # a 65x130 panorama
    assert "even" in _one_line(e, path)
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    path = tmp_path / "out.mp4"
    path.write_bytes(b"the previous output")
    with pytest.raises(RuntimeError, match="boom"):
        with VideoWriter(path, 10) as w:
            for f in _smooth_frames(3):
                w.append(f)
            raise RuntimeError("boom")
    assert path.read_bytes() == b"the previous output"
    assert _leftovers(tmp_path) == []
    with pytest.raises(ValueError, match="no frames"):
        with VideoWriter(tmp_path / "empty.mp4", 10):
            pass
    with pytest.raises(ValueError, match="the first was 32x64"):
        with VideoWriter(tmp_path / "sizes.mkv", 10, lossless=True) as w:
            w.append(np.zeros((32, 64, 3), np.uint8))
            w.append(np.zeros((32, 66, 3), np.uint8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]
    with pytest.raises(ValueError, match="fps"):
        VideoWriter(tmp_path / "x.mp4", 0)
    with pytest.raises(ValueError, match="written as .mkv"):
        VideoWriter(tmp_path / "x.mp4", 10, lossless=True)
    with pytest.raises(ValueError, match="written as .mp4"):
        VideoWriter(tmp_path / "x.mkv", 10)


def test_rotated_phone_clip_comes_out_upright(tmp_path):
    """A clip with a 90° display matrix (as phones record portrait video) reads back turned."""
    frame = np.zeros((24, 40, 3), np.uint8)
    frame[:12, :20] = (250, 20, 20)  # red top-left quadrant
    frame[12:, 20:] = (20, 20, 250)  # blue bottom-right
    plain, rotated = tmp_path / "plain.mp4", tmp_path / "rotated.mp4"
    with VideoWriter(plain, 10) as w:
        for _ in range(3):
            w.append(frame)
    subprocess.run([_ffmpeg(), "-v", "error", "-display_rotation", "90", "-i", str(plain), "-c", "copy", str(rotated)],
                   check=True)
    info = probe_video(rotated)
    assert (info.height, info.width, info.rotation, info.frames) == (40, 24, 90.0, 3)
    got = next(read_frames(rotated))
    stored = next(read_frames(plain))  # the same coded pixels, without the display matrix
    upright = np.rot90(stored, 1)  # 90° counter-clockwise, as the display matrix says
    assert got.shape == upright.shape
    # 4:2:0 chroma of the sharp colour edges is resampled after the turn: a few levels at the edges only.
    assert np.abs(got.astype(int) - upright).mean() < 2
    assert np.abs(got.astype(int) - np.rot90(stored, -1)).mean() > 30


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, h264):
    d = tmp_path_factory.mktemp("bad")
    (d / "notes.mp4").write_text("frame,yaw\nthis is text, not a video\n")
    Image.new("RGB", (8, 8), (1, 2, 3)).save(d / "photo.png")
    (d / "photo.mp4").write_bytes((d / "photo.png").read_bytes())
    (d / "empty.mov").write_bytes(b"")
    (d / "random.mkv").write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    big = d / "big.mp4"
    rng = np.random.default_rng(2)
    with VideoWriter(big, 10) as w:  # noise frames: large, so the cut lands inside the frame data
        for _ in range(8):
            w.append(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    data = big.read_bytes()
    (d / "truncated.mp4").write_bytes(data[: int(len(data) * 0.6)])
    subprocess.run([_ffmpeg(), "-v", "error", "-f", "lavfi", "-i", "sine=duration=0.2", "-c:a", "aac",
                    str(d / "audio.mp4")], check=True)
    return d


@pytest.mark.parametrize("name, words", [
    ("notes.mp4", "not a video (a text file)"),
    ("photo.mp4", "not a video (a png image)"),
    ("photo.png", "not a video"),
    ("empty.mov", "empty file"),
    ("random.mkv", "not a readable video"),
    ("truncated.mp4", "truncated"),
    ("audio.mp4", "no video stream"),
    ("missing.mp4", "no such file"),
])
def test_bad_video_files_one_line(bad_files, name, words):
    path = bad_files / name
    with pytest.raises(ValueError) as e:
        probe_video(path)
    assert words in _one_line(e, path)


def test_truncated_file_fails_while_reading(bad_files):
    path = bad_files / "truncated.mp4"
    with pytest.raises(ValueError) as e:
        for _ in read_frames(path):
            pass
    assert "truncated" in _one_line(e, path)
    with pytest.raises(ValueError) as e:
        read_frames(bad_files / "notes.mp4")  # refused when called, before any frame
    _one_line(e, bad_files / "notes.mp4")


# ----------------------------------------------------------------------------- trajectories
def _traj(tmp_path, text, name="traj.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_trajectory_interpolates_and_holds(tmp_path):
    p = _traj(tmp_path, "frame,yaw,pitch,fov\n2,10,0,90\n6,30,-20,70\n")
    got = read_trajectory(p, 9)
    assert got[:3] == [(10.0, 0.0, 90.0)] * 3  # held before the first listed frame
    assert got[4] == pytest.approx((20.0, -10.0, 80.0))
    assert got[5] == pytest.approx((25.0, -15.0, 75.0))
    assert got[6:] == [(30.0, -20.0, 70.0)] * 3  # held after the last
    # columns in any order, names in any case, blank lines skipped; every frame listed
    p2 = _traj(tmp_path, "FOV, Yaw ,pitch,frame\n\n90,5,1,0\n91,6,2,1\n", "t2.csv")
    assert read_trajectory(p2, 2) == [(5.0, 1.0, 90.0), (6.0, 2.0, 91.0)]


def test_trajectory_yaw_takes_the_short_way_round(tmp_path):
    p = _traj(tmp_path, "frame,yaw,pitch,fov\n0,170,0,90\n4,-170,0,90\n")
    yaws = [d[0] for d in read_trajectory(p, 5)]
    assert yaws == pytest.approx([170, 175, -180, -175, -170])  # through 180, 20 degrees, not 340
    p = _traj(tmp_path, "frame,yaw,pitch,fov\n0,-150,0,90\n2,330,0,90\n", "t3.csv")  # 330 = -30
    assert [d[0] for d in read_trajectory(p, 3)] == pytest.approx([-150, -90, -30])


def test_trajectory_written_reads_back(tmp_path):
    dirs = [(0.1 * k - 179.95, 3.0, 90.0) for k in range(5)]
    p = write_trajectory(tmp_path / "w.csv", dirs)
    np.testing.assert_allclose(read_trajectory(p, 5), dirs, rtol=0, atol=1e-9)


@pytest.mark.parametrize("text, where, words", [
    ("", None, "empty file"),
    ("frame,yaw,pitch\n0,1,2\n", "line 1", "header"),
    ("frame,yaw,pitch,fov\n", None, "no rows"),
    ("frame,yaw,pitch,fov\n0,0,0,90\n1.5,0,0,90\n", "line 3", "not an integer"),
    ("frame,yaw,pitch,fov\n0,0,0,90\n12,0,0,90\n", "line 3", "outside the clip's frames 0..9"),
    ("frame,yaw,pitch,fov\n3,0,0,90\n3,0,0,90\n", "line 3", "frames must increase"),
    ("frame,yaw,pitch,fov\n0,left,0,90\n", "line 2", "yaw 'left' is not a number"),
    ("frame,yaw,pitch,fov\n0,0,95,90\n", "line 2", "pitch must be within [-90, 90]"),
    ("frame,yaw,pitch,fov\n0,400,0,90\n", "line 2", "yaw must be within"),
    ("frame,yaw,pitch,fov\n0,0,0,0\n", "line 2", "fov must be within (0, 180)"),
    ("frame,yaw,pitch,fov\n0,nan,0,90\n", "line 2", "finite"),
    ("frame,yaw,pitch,fov\n0,0,0\n", "line 2", "3 fields, the header has 4"),
])
def test_trajectory_errors_one_line(tmp_path, text, where, words):
    p = _traj(tmp_path, text)
    with pytest.raises(ValueError) as e:
        read_trajectory(p, 10)
    msg = _one_line(e, p)
    assert words in msg and (where is None or f": {where}: " in msg), msg


def test_trajectory_unreadable_files(tmp_path):
    p = tmp_path / "bin.csv"
    p.write_bytes(b"frame,yaw\xff\xfe")
    with pytest.raises(ValueError) as e:
        read_trajectory(p, 3)
    assert "not UTF-8" in _one_line(e, p)
    with pytest.raises(ValueError) as e:
        read_trajectory(tmp_path / "none.csv", 3)
    assert "no such file" in _one_line(e, tmp_path / "none.csv")


# ----------------------------------------------------------------------------- masks
def test_mask_from_png_same_every_frame_resized_nearest(tmp_path):
    m = np.zeros((20, 40), np.uint8)
    m[5:10, 8:20] = 255
    m[0, 0] = 127  # below the threshold
    m[0, 39] = 128  # at it: white
    p = tmp_path / "mask.png"
    Image.fromarray(m).save(p)
    masks = list(read_mask_frames(p, 3, (40, 80)))
    expected = np.kron(m >= 128, np.ones((2, 2), bool))  # nearest, x2
    assert len(masks) == 3 and all(k.dtype == bool and np.array_equal(k, expected) for k in masks)
    assert np.array_equal(next(read_mask_frames(p, 1, (20, 40))), m >= 128)


def test_mask_from_mp4_per_frame(tmp_path):
    frames, expected = [], []
    for k in range(6):
        f = np.zeros((32, 64, 3), np.uint8)
        f[8:24, 8 * k : 8 * k + 16] = 255  # a white square moving right, codec-block aligned
        frames.append(f)
        expected.append(f[..., 0] >= 128)
    p = tmp_path / "mask.mp4"
    with VideoWriter(p, 10) as w:
        for f in frames:
            w.append(f)
    masks = list(read_mask_frames(p, 5, (32, 64)))  # a longer mask video: its first 5 frames
    assert len(masks) == 5
    for got, exp in zip(masks, expected):
        assert got.shape == (32, 64) and got.dtype == bool
        assert (got != exp).mean() < 0.01  # H.264 may blur an edge pixel; the threshold at 128 keeps the rest
    half = list(read_mask_frames(p, 5, (16, 32)))
    assert half[2].shape == (16, 32) and (half[2] != expected[2][1::2, 1::2]).mean() < 0.01  # nearest: odd rows/cols
    with pytest.raises(ValueError) as e:
        read_mask_frames(p, 7, (32, 64))
    assert "6 frames, fewer than the clip's 7" in _one_line(e, p)


def test_mask_bad_files_one_line(tmp_path):
    p = tmp_path / "mask.png"
    p.write_text("not an image")
    with pytest.raises(ValueError) as e:
        read_mask_frames(p, 2, (8, 16))
    _one_line(e, p)
    with pytest.raises(ValueError) as e:
        read_mask_frames(tmp_path / "gone.png", 2, (8, 16))
    assert "no such file" in _one_line(e, tmp_path / "gone.png")
