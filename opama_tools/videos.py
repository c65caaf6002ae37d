"""Video files for every stage: the one video reader and writer, trajectory CSVs and mask frames.

Frames are ``uint8`` ``(H, W, 3)`` RGB numpy arrays, sizes ``(H, W)`` height first, angles in
degrees (yaw right, pitch up, fov horizontal), as everywhere in opama. Decoding and encoding run
the ffmpeg binary that ``imageio-ffmpeg`` bundles (``imageio_ffmpeg.get_ffmpeg_exe()``, which
honours ``IMAGEIO_FFMPEG_EXE``) in a child process, raw RGB frames through a pipe.

* :func:`probe_video` -> :class:`VideoInfo`: the exact frame count (every frame is decoded once,
  so a truncated or damaged file is found here, before any work), fps, the upright size.
* :func:`read_frames`: the frames, upright (ffmpeg's autorotate applies a phone's display matrix /
  rotate tag), optionally resized.
* :class:`VideoWriter`: H.264 ``yuv420p`` MP4 with ``+faststart`` (plays in browsers), or with
  ``lossless=True`` FFV1 ``bgr0`` in Matroska (reads back bit-exact); written atomically.
* :func:`read_trajectory`: a ``frame,yaw,pitch,fov`` CSV -> one direction per frame.
* :func:`read_mask_frames`: a mask image or mask video -> one bool ``(H, W)`` mask per frame.

Bad input raises ``ValueError`` with one line that starts with the file name.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

__all__ = [
    "VIDEO_SUFFIXES",
    "IMAGE_SUFFIXES",
    "VideoInfo",
    "is_video_path",
    "probe_video",
    "read_frames",
    "VideoWriter",
    "read_trajectory",
    "write_trajectory",
    "read_mask_frames",
]

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
"""File name suffixes (lower case) that :func:`is_video_path` takes for videos."""
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
"""Suffixes of mask images (:func:`read_mask_frames`); anything else that is not a video is tried as an image too."""

TRAJECTORY_COLUMNS = ("frame", "yaw", "pitch", "fov")

_H264_CRF = 18  # visually lossless for 8-bit content; ~1-2 levels mean error on smooth synthetic frames
_NOT_VIDEO_FORMATS = re.compile(r"^(image2|\w+_pipe|tty|apng)$")  # still-image / text demuxers of ffmpeg


def _name(path: str | os.PathLike) -> str:
    from opama_tools.io import printable_path

    return printable_path(path)


def is_video_path(path: str | os.PathLike) -> bool:
    """True when the file name ends with one of :data:`VIDEO_SUFFIXES` (any case); the file is not opened."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` found: ``frames`` (exact, decoded), ``fps`` (frames per second),
    ``height`` x ``width`` in pixels as :func:`read_frames` returns them (upright: a 90° display
    rotation swaps the stored sizes). ``rotation``: the display rotation in degrees
    (counter-clockwise, as ffmpeg prints it; 0 when none). ``codec``: ffmpeg's codec name."""

    frames: int
    fps: float
    height: int
    width: int
    rotation: float = 0.0
    codec: str = ""

    @property
    def hw(self) -> tuple[int, int]:
        return self.height, self.width

    @property
    def seconds(self) -> float:
        return self.frames / self.fps if self.fps > 0 else 0.0


# ----------------------------------------------------------------------------- ffmpeg
def _ffmpeg() -> str:
    try:
        import imageio_ffmpeg
    except ImportError:  # pragma: no cover - a dependency of opama
        raise RuntimeError("video files need imageio-ffmpeg (pip install imageio-ffmpeg)") from None
    return imageio_ffmpeg.get_ffmpeg_exe()


def _url(path: str | os.PathLike) -> str:
    """The ffmpeg URL of a local file: ``file:`` keeps names that start with ``-`` or hold ``:``
    from being read as options or protocols."""
    return "file:" + os.fspath(Path(path).absolute())


def _first_error(text: str) -> str:
    """The most telling line of ffmpeg's stderr, without the ``[demuxer @ 0x...]`` prefixes."""
    lines = [re.sub(r"^(\[[^\]]*\]\s*)+", "", ln).strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    for key in ("moov atom not found", "partial file", "Invalid data found", "EBML header parsing failed",
                "Invalid NAL unit", "Error"):
        for ln in lines:
            if key.lower() in ln.lower():
                return ln
    return lines[0] if lines else "ffmpeg failed"


def _looks_like_text(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    if not head or b"\0" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 4:  # not just a character cut at the end of the sample
            return False
    return True


@dataclass(frozen=True)
class _Header:
    format: str
    codec: str
    stored_wh: tuple[int, int]
    fps: float
    rotation: float
    duration: float | None

    @property
    def hw(self) -> tuple[int, int]:
        """Upright ``(H, W)``: a display rotation of ±90° swaps the stored sizes."""
        w, h = self.stored_wh
        q = self.rotation / 90.0
        quarter = abs(q - round(q)) < 0.1 and round(q) % 2 == 1
        return (w, h) if quarter else (h, w)


def _check_file(path: Path) -> None:
    name = _name(path)
    if not path.exists():
        raise ValueError(f"{name}: no such file")
    if path.is_dir():
        raise ValueError(f"{name}: a folder, not a video file")
    if not os.access(path, os.R_OK):
        raise ValueError(f"{name}: cannot read the file (permission denied)")
    if path.stat().st_size == 0:
        raise ValueError(f"{name}: not a video (empty file)")


def _snap_fps(fps: float) -> float:
    """ffmpeg prints ``29.97``: NTSC rates come back as ``30000/1001`` exactly."""
    if fps <= 0:
        return fps
    n = round(fps * 1.001)
    if abs(fps - round(fps)) > 1e-6 and abs(fps - n / 1.001) < 0.006:
        return n / 1.001
    return fps


def _header(path: Path) -> _Header:
    """Parse ffmpeg's description of ``path``'s first video stream (nothing decoded).

    Raises ``ValueError`` (one line naming the file): not a video, no video stream, unreadable.
    """
    _check_file(path)
    name = _name(path)
    r = subprocess.run([_ffmpeg(), "-hide_banner", "-nostdin", "-i", _url(path)],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    text = r.stderr.decode("utf-8", errors="replace")
    m_in = re.search(r"^Input #0, ([^,\n]+(?:,[^,\n ]+)*), from ", text, re.M)
    if m_in is None:
        if _looks_like_text(path):
            raise ValueError(f"{name}: not a video (a text file)")
        why = _first_error(text)
        if "moov atom not found" in why:
            raise ValueError(f"{name}: unreadable or truncated video ({why}: not an MP4/MOV file, "
                             "or its recording was cut off)")
        raise ValueError(f"{name}: not a readable video ({why})")
    fmt = m_in.group(1).strip()
    streams = [ln for ln in text.splitlines() if re.match(r"\s*Stream #0:\d+.*: Video: ", ln)]
    if _NOT_VIDEO_FORMATS.match(fmt) or any(f.endswith("_pipe") for f in fmt.split(",")):
        if fmt == "tty" or _looks_like_text(path):
            raise ValueError(f"{name}: not a video (a text file)")
        kind = fmt.split("_pipe")[0] if "_pipe" in fmt else "still"
        raise ValueError(f"{name}: not a video (a {kind} image)")
    video = [ln for ln in streams if "(attached pic)" not in ln]
    if not video:
        raise ValueError(f"{name}: no video stream (an audio or data file?)")
    line = video[0]
    after = line.split(" Video: ", 1)[1]
    codec = after.split()[0].strip(",")
    m_wh = re.search(r"[ ,](\d+)x(\d+)[ ,\[]", after + " ")
    if m_wh is None:
        raise ValueError(f"{name}: unreadable video (no frame size in its first video stream)")
    wh = (int(m_wh.group(1)), int(m_wh.group(2)))
    fps = 0.0
    for unit in ("fps", "tbr"):
        m = re.search(r"([\d.]+)(k?) " + unit + r"\b", after)
        if m:
            fps = float(m.group(1)) * (1000.0 if m.group(2) else 1.0)
            break
    # The side data of the stream (lines below it until the next "Stream #" line).
    idx = text.find(line)
    rest = text[idx + len(line):]
    nxt = re.search(r"^\s*Stream #", rest, re.M)
    block = rest[: nxt.start()] if nxt else rest
    rotation = 0.0
    m_rot = re.search(r"display ?matrix: rotation of (-?[\d.]+) degrees", block, re.I)
    if m_rot:
        rotation = float(m_rot.group(1))
    else:
        m_tag = re.search(r"^\s*rotate\s*:\s*(-?\d+)", block, re.M)  # old ffmpeg prints the tag
        if m_tag:
            rotation = -float(m_tag.group(1))
    duration = None
    m_d = re.search(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)", text)
    if m_d:
        duration = int(m_d.group(1)) * 3600 + int(m_d.group(2)) * 60 + float(m_d.group(3))
    return _Header(fmt, codec, wh, _snap_fps(fps), rotation, duration)


def _decode_problem(stderr: str, returncode: int) -> str | None:
    """Why a decoding run failed (one line), or None when it went through cleanly."""
    errors = [ln for ln in stderr.splitlines() if ln.strip()]
    if returncode != 0 or errors:
        why = _first_error(stderr) if errors else f"ffmpeg exited with status {returncode}"
        if "partial file" in why or "moov atom" in why:
            return f"truncated video ({why}: the file ends before its last frame)"
        return f"unreadable or damaged video ({why})"
    return None


# The first video stream that is not cover art ("V"), every decoded frame once, nothing else.
_DECODE = ["-fps_mode", "passthrough", "-an", "-sn", "-dn"]


_PROBED: dict[tuple, "VideoInfo"] = {}
""":func:`probe_video` results by (resolved path, inode, size, mtime_ns): a job that checks a clip
before loading its model and again per row decodes it once."""


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Frame count (exact: every frame is decoded once, as :func:`read_frames` would), fps and the
    upright ``height`` x ``width`` of the first video stream of ``path``. The result is kept for the
    same unchanged file (same inode, size and modification time).

    Raises:
        ValueError: one line naming the file: not a video (an image, a text or an empty file),
            no video stream, unreadable or truncated (decoding errors, data cut off), zero frames.
    """
    path = Path(path)
    try:
        st = path.stat()
        key = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    except OSError:
        key = None
    if key is not None and key in _PROBED:
        return _PROBED[key]
    info = _probe(path)
    if key is not None:
        if len(_PROBED) >= 256:
            _PROBED.clear()
        _PROBED[key] = info
    return info


def _probe(path: Path) -> VideoInfo:
    head = _header(path)
    name = _name(path)
    with tempfile.TemporaryFile() as err:
        r = subprocess.run([_ffmpeg(), "-hide_banner", "-nostdin", "-v", "error", "-i", _url(path), "-map", "0:V:0",
                            *_DECODE, "-f", "null", "-progress", "pipe:1", "-nostats", "-"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
        err.seek(0)
        stderr = err.read().decode("utf-8", errors="replace")
    problem = _decode_problem(stderr, r.returncode)
    if problem:
        raise ValueError(f"{name}: {problem}")
    counts = re.findall(rb"^frame=(\d+)", r.stdout, re.M)
    frames = int(counts[-1]) if counts else 0
    if frames == 0:
        raise ValueError(f"{name}: no frames (the video stream is empty)")
    fps = head.fps
    if fps <= 0 and head.duration:
        fps = frames / head.duration
    return VideoInfo(frames=frames, fps=fps, height=head.hw[0], width=head.hw[1], rotation=head.rotation,
                     codec=head.codec)


# ----------------------------------------------------------------------------- reading
def _check_hw(size, what: str = "size") -> tuple[int, int]:
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be (height, width) in pixels, got {size!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"{what} must be at least 1x1 pixels (HxW), got {h}x{w}")
    return h, w


def read_frames(path: str | os.PathLike, *, size: tuple[int, int] | None = None) -> Iterator[np.ndarray]:
    """The frames of ``path``'s first video stream in order: ``uint8`` ``(H, W, 3)`` RGB, upright
    (the display rotation of phone videos applied by ffmpeg's autorotate), every decoded frame
    once (no frame-rate conversion).

    ``size``: ``(H, W)`` to resize to (area averaging when shrinking, bicubic when enlarging),
    after the rotation; None keeps the upright size of :func:`probe_video`.

    The file is checked when this is called (``ValueError``: not a video, no video stream);
    decoding errors (a damaged or truncated file) raise ``ValueError`` once the frames before
    them were yielded: call :func:`probe_video` first to refuse such a file before any work.
    """
    path = Path(path)
    head = _header(path)
    hw = head.hw if size is None else _check_hw(size)
    cmd = [_ffmpeg(), "-hide_banner", "-nostdin", "-v", "error", "-autorotate", "-i", _url(path), "-map", "0:V:0",
           *_DECODE]
    # To RGB at the stored size first (accurate rounding and full-resolution chroma keep H.264 colours
    # within ~1 level; swscale's fast path is ~2 levels off), then any resize in RGB.
    chain = "scale=flags=bicubic+accurate_rnd+full_chroma_int,format=rgb24"
    if hw != head.hw:
        flags = "area" if hw[0] <= head.hw[0] and hw[1] <= head.hw[1] else "bicubic"
        chain += f",scale={hw[1]}:{hw[0]}:flags={flags}+accurate_rnd"
    cmd += ["-vf", chain, "-pix_fmt", "rgb24", "-f", "rawvideo", "pipe:1"]
    return _frames(cmd, hw, _name(path))


def _frames(cmd: list[str], hw: tuple[int, int], name: str) -> Iterator[np.ndarray]:
    h, w = hw
    nbytes = h * w * 3
    err = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
    finished = False
    try:
        while True:
            buf = proc.stdout.read(nbytes)
            if not buf:
                break
            if len(buf) < nbytes:
                proc.wait()
                err.seek(0)
                problem = _decode_problem(err.read().decode("utf-8", errors="replace"), proc.returncode)
                raise ValueError(f"{name}: {problem or 'the last frame is incomplete'}")
            yield np.frombuffer(buf, dtype=np.uint8).reshape(h, w, 3).copy()
        proc.wait()
        finished = True
        err.seek(0)
        problem = _decode_problem(err.read().decode("utf-8", errors="replace"), proc.returncode)
        if problem:
            raise ValueError(f"{name}: {problem}")
    finally:
        if not finished and proc.poll() is None:
            proc.kill()  # the caller stopped early (or an error): no ffmpeg left behind
        proc.stdout.close()
        proc.wait()
        err.close()


# ----------------------------------------------------------------------------- writing
class VideoWriter:
    """Write ``uint8`` ``(H, W, 3)`` RGB frames to a video file, atomically.

    ``with VideoWriter("out.mp4", fps=30) as w: w.append(frame)``. The frames go to a hidden
    temp file beside ``path`` (:func:`opama_model.fileio.atomic_path`), renamed onto ``path`` when
    the block ends without an error (mode ``0o666 & ~umask``, as every output); on an error, or
    with no frame appended (``ValueError``), the temp file is removed and ``path`` is untouched.

    * default: H.264 (libx264, CRF 18), ``yuv420p``, BT.709 colours, ``+faststart``: an MP4 that
      browsers play. 4:2:0 chroma needs even sizes: an odd height or width raises ``ValueError``
      on the first frame (a panorama ``H x 2H`` with an odd ``H``, e.g. 65x130, cannot be written
      as H.264; use an even height or ``lossless``).
    * ``lossless=True``: FFV1 (``bgr0``, every frame intra) in Matroska, any size; the frames read
      back bit-exact through :func:`read_frames`.

    ``path`` must end with ``.mkv`` for lossless, ``.mp4`` / ``.m4v`` / ``.mov`` for H.264 (``ValueError``).

    ``fps``: frames per second (> 0; NTSC rates such as 29.97 are stored as ``30000/1001``).
    """

    def __init__(self, path: str | os.PathLike, fps: float, *, lossless: bool = False) -> None:
        try:
            fps = float(fps)
        except (TypeError, ValueError):
            raise ValueError(f"fps must be a number, got {fps!r}") from None
        if not math.isfinite(fps) or fps <= 0 or fps > 1000:
            raise ValueError(f"fps must be within (0, 1000] frames per second, got {fps:g}")
        self.path = Path(path)
        self.fps = fps
        self.lossless = bool(lossless)
        want = (".mkv",) if self.lossless else (".mp4", ".m4v", ".mov")
        if self.path.suffix.lower() not in want:
            what = "a lossless (FFV1) video" if self.lossless else "an H.264 video"
            raise ValueError(f"{_name(self.path)}: {what} is written as {' or '.join(want)}, "
                             f"not {self.path.suffix or 'a name without a suffix'}")
        self.frames = 0
        self.hw: tuple[int, int] | None = None
        self._ctx = None
        self._tmp: Path | None = None
        self._proc: subprocess.Popen | None = None
        self._err = None

    # -- context
    def __enter__(self) -> "VideoWriter":
        from opama_model.fileio import atomic_path

        self._ctx = atomic_path(self.path)
        self._tmp = self._ctx.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        ctx, self._ctx = self._ctx, None
        if ctx is None:
            return False
        if exc_type is None:
            try:
                self._finish()
            except BaseException as e:  # noqa: BLE001 - the temp file goes, the error propagates
                self._kill()
                if not ctx.__exit__(type(e), e, e.__traceback__):
                    raise
                return False
            return bool(ctx.__exit__(None, None, None))
        self._kill()
        return bool(ctx.__exit__(exc_type, exc, tb))

    # -- frames
    def append(self, frame: np.ndarray) -> None:
        """Add one ``uint8`` ``(H, W, 3)`` RGB frame (every frame the size of the first)."""
        if self._ctx is None:
            raise RuntimeError("VideoWriter.append outside its with block")
        a = np.asarray(frame)
        if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
            raise ValueError(f"{_name(self.path)}: frames must be uint8 (H, W, 3) RGB, got {a.dtype} {a.shape}")
        hw = (int(a.shape[0]), int(a.shape[1]))
        if self.hw is None:
            self._start(hw)
        elif hw != self.hw:
            raise ValueError(f"{_name(self.path)}: frame {self.frames} is {hw[0]}x{hw[1]}, the first was "
                             f"{self.hw[0]}x{self.hw[1]} (HxW)")
        try:
            self._proc.stdin.write(np.ascontiguousarray(a).tobytes())
        except (BrokenPipeError, OSError):
            raise RuntimeError(f"{_name(self.path)}: ffmpeg stopped while writing frame {self.frames} "
                               f"({self._stderr()})") from None
        self.frames += 1

    write = append

    def _start(self, hw: tuple[int, int]) -> None:
        h, w = hw
        if not self.lossless and (h % 2 or w % 2):
            raise ValueError(f"{_name(self.path)}: H.264 (yuv420p) needs an even height and width, got {h}x{w} "
                             "(HxW); use an even size or lossless=True")
        rate = Fraction(self.fps).limit_denominator(1001)
        cmd = [_ffmpeg(), "-hide_banner", "-nostdin", "-v", "error", "-y",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
               "-framerate", f"{rate.numerator}/{rate.denominator}", "-i", "pipe:0", "-an"]
        if self.lossless:
            cmd += ["-c:v", "ffv1", "-level", "3", "-g", "1", "-slicecrc", "1", "-pix_fmt", "bgr0", "-f", "matroska"]
        else:
            cmd += ["-vf", "scale=out_color_matrix=bt709:out_range=tv:flags=bicubic+accurate_rnd+full_chroma_int",
                    "-c:v", "libx264", "-preset", "medium", "-crf", str(_H264_CRF), "-pix_fmt", "yuv420p",
                    "-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709", "-color_range", "tv",
                    "-movflags", "+faststart", "-f", "mp4"]
        cmd.append(_url(self._tmp))
        self._err = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._err)
        self.hw = hw

    def _stderr(self) -> str:
        if self._err is None:
            return "no output"
        self._err.seek(0)
        return _first_error(self._err.read().decode("utf-8", errors="replace"))

    def _finish(self) -> None:
        if self._proc is None:
            raise ValueError(f"{_name(self.path)}: no frames to write")
        try:
            self._proc.stdin.close()
        except OSError:
            pass
        rc = self._proc.wait()
        if rc != 0:
            raise RuntimeError(f"{_name(self.path)}: ffmpeg failed writing the video ({self._stderr()})")
        self._close_err()

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        if self._proc is not None and self._proc.stdin is not None:
            try:
                self._proc.stdin.close()
            except OSError:
                pass
        self._close_err()

    def _close_err(self) -> None:
        if self._err is not None:
            self._err.close()
            self._err = None


# ----------------------------------------------------------------------------- trajectories
def _wrap180(a: float) -> float:
    """An angle in degrees wrapped to ``[-180, 180)``."""
    return (a + 180.0) % 360.0 - 180.0


def read_trajectory(path: str | os.PathLike, n_frames: int) -> list[tuple[float, float, float]]:
    """One ``(yaw, pitch, fov)`` per frame (degrees) from a trajectory CSV.

    The file: a header ``frame,yaw,pitch,fov`` (columns in any order, names in any case), then one
    row per listed frame: ``frame`` an integer ``0 <= frame < n_frames``, strictly increasing;
    ``yaw`` (positive turns right), ``pitch`` (positive looks up) and ``fov`` (horizontal) in
    degrees, within the ranges of :func:`opama_model.directions.check_direction`. Blank lines are
    skipped. Rows may list only some frames: between two listed frames every value is
    interpolated linearly; before the first listed frame the first row holds, after the last the
    last row holds. Yaw takes the short way round (from 170 to -170 it passes 180, 20 degrees,
    not 340; rows exactly 180 degrees apart turn left), and comes back wrapped to
    ``[-180, 180)``; to turn further, list a row at least every 179 degrees.

    Raises:
        ValueError: one line naming the file, the line and the problem.
    """
    from opama_model.directions import check_direction

    path = Path(path)
    name = _name(path)
    n_frames = int(n_frames)
    if n_frames < 1:
        raise ValueError(f"{name}: a trajectory needs at least one frame, got n_frames={n_frames}")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise ValueError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{name}: a folder, not a trajectory CSV file") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{name}: not a trajectory CSV (not UTF-8 text at byte {e.start})") from None
    except OSError as e:
        raise ValueError(f"{name}: cannot read ({e.strerror or e})") from None
    rows = [(i, r) for i, r in enumerate(csv.reader(io.StringIO(text, newline="")), 1)
            if any(c.strip() for c in r)]
    if not rows:
        raise ValueError(f"{name}: empty file (expected the header {','.join(TRAJECTORY_COLUMNS)} and rows)")
    hline, header = rows[0]
    cols = [c.strip().lower() for c in header]
    if sorted(cols) != sorted(TRAJECTORY_COLUMNS):
        raise ValueError(f"{name}: line {hline}: the header must name the columns "
                         f"{','.join(TRAJECTORY_COLUMNS)}, got {','.join(c.strip() for c in header)!r}")
    at = {c: cols.index(c) for c in TRAJECTORY_COLUMNS}
    keys: list[int] = []
    dirs: list[tuple[float, float, float]] = []
    for line, r in rows[1:]:
        if len(r) != len(cols):
            raise ValueError(f"{name}: line {line}: {len(r)} fields, the header has {len(cols)}")
        raw = {c: r[at[c]].strip() for c in TRAJECTORY_COLUMNS}
        try:
            frame = int(raw["frame"])
        except ValueError:
            raise ValueError(f"{name}: line {line}: frame {raw['frame']!r} is not an integer") from None
        if not 0 <= frame < n_frames:
            raise ValueError(f"{name}: line {line}: frame {frame} is outside the clip's frames 0..{n_frames - 1}")
        if keys and frame <= keys[-1]:
            raise ValueError(f"{name}: line {line}: frame {frame} after frame {keys[-1]} (frames must increase)")
        vals = []
        for c in ("yaw", "pitch", "fov"):
            try:
                vals.append(float(raw[c]))
            except ValueError:
                raise ValueError(f"{name}: line {line}: {c} {raw[c]!r} is not a number (degrees)") from None
        try:
            d = check_direction(vals)
        except ValueError as e:
            raise ValueError(f"{name}: line {line}: {e}") from None
        keys.append(frame)
        dirs.append(d)
    if not keys:
        raise ValueError(f"{name}: no rows after the header (at least one frame,yaw,pitch,fov row)")
    out: list[tuple[float, float, float]] = []
    j = 0
    for k in range(n_frames):
        while j + 1 < len(keys) and keys[j + 1] <= k:
            j += 1
        if k <= keys[0]:
            y, p, f = dirs[0]
        elif j + 1 >= len(keys):
            y, p, f = dirs[-1]
        else:
            t = (k - keys[j]) / (keys[j + 1] - keys[j])
            (y0, p0, f0), (y1, p1, f1) = dirs[j], dirs[j + 1]
            y = y0 + t * _wrap180(y1 - y0)
            p = p0 + t * (p1 - p0)
            f = f0 + t * (f1 - f0)
        out.append((_wrap180(y), float(p), float(f)))
    return out


def write_trajectory(path: str | os.PathLike, directions, frames=None) -> Path:
    """Write ``frame,yaw,pitch,fov`` rows (degrees) atomically: ``directions[i]`` at frame
    ``frames[i]`` (default ``0, 1, ...``). :func:`read_trajectory` reads it back."""
    from opama_model.fileio import atomic_write_text

    frames = range(len(directions)) if frames is None else frames
    lines = [",".join(TRAJECTORY_COLUMNS)]
    for k, (y, p, f) in zip(frames, directions):
        lines.append(f"{int(k)},{float(y)!r},{float(p)!r},{float(f)!r}")
    atomic_write_text(path, "\n".join(lines) + "\n")
    return Path(path)


# ----------------------------------------------------------------------------- masks
def _nearest(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of ``(h, w)`` to ``hw`` (pixel centres, as Pillow's NEAREST)."""
    h, w = mask.shape
    if (h, w) == hw:
        return mask
    rows = np.minimum(((np.arange(hw[0]) + 0.5) * h / hw[0]).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(hw[1]) + 0.5) * w / hw[1]).astype(np.int64), w - 1)
    return mask[rows[:, None], cols[None, :]]


def _white(rgb: np.ndarray) -> np.ndarray:
    """``(H, W)`` bool: the grey level (mean of R, G, B, 8-bit) is at least 128."""
    return rgb.astype(np.uint16).sum(axis=2) >= 3 * 128


def read_mask_frames(path: str | os.PathLike, n_frames: int, hw: tuple[int, int]) -> Iterator[np.ndarray]:
    """``n_frames`` bool ``(H, W)`` masks, True where white (to regenerate), from a mask file.

    * an image (PNG/JPEG, read by :func:`opama_tools.images.read_image`): the same mask every frame;
    * a video (:func:`is_video_path`): its frame ``k`` for frame ``k`` (it needs at least
      ``n_frames`` frames; later ones are ignored).

    A pixel is white when the mean of its R, G, B is at least 128 (of 255; alpha is ignored);
    masks of another size are resized nearest-neighbour to ``hw`` = ``(H, W)``. The file is
    checked (and a video probed) when this is called, so a bad mask is refused before any work.

    Raises:
        ValueError: one line naming the file and the problem.
    """
    from opama_tools.images import read_image, to_uint8

    path = Path(path)
    name = _name(path)
    hw = _check_hw(hw, "mask size")
    n_frames = int(n_frames)
    if n_frames < 1:
        raise ValueError(f"{name}: n_frames must be at least 1, got {n_frames}")
    if is_video_path(path):
        info = probe_video(path)
        if info.frames < n_frames:
            raise ValueError(f"{name}: the mask video has {info.frames} frames, fewer than the clip's {n_frames}")
        return _video_masks(path, n_frames, hw)
    if not path.exists():
        raise ValueError(f"{name}: no such file")
    try:
        img = read_image(path)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None
    mask = _nearest(_white(to_uint8(img.rgb)), hw)
    mask.setflags(write=False)
    return _repeat(mask, n_frames)


def _repeat(mask: np.ndarray, n: int) -> Iterator[np.ndarray]:
    for _ in range(n):
        yield mask


def _video_masks(path: Path, n: int, hw: tuple[int, int]) -> Iterator[np.ndarray]:
    frames = read_frames(path)
    try:
        for k, frame in enumerate(frames):
            if k >= n:
                break
            yield _nearest(_white(frame), hw)
    finally:
        frames.close()
