"""`opama eval` on 360° videos (issue #22): pairing of GEN/NAME/pano.mkv with REF/NAME.mkv, the
per-frame image metrics, flicker, warping error under a known rotation, input-border continuity,
a frame-count mismatch (that pair failed, exit 1, the others scored) and bad inputs (one line, exit 2).

Videos are written by opama_tools.videos, losslessly (FFV1 in Matroska) where the values are checked exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from test_metrics_helpers import no_weights_env, synthetic_pano8, write_pngs

from opama_tools.cli import app
from opama_tools.eval import registry
from opama_tools.eval.evaluate import EvalOptions
from opama_tools.eval.metrics import temporal as T
from opama_tools.eval.run import run_eval
from opama_tools.eval.video import has_video_outputs, list_videos
from opama_tools.videos import read_frames

runner = CliRunner()
H, W = 16, 32


def write_video(path: Path, frames: list[np.ndarray], lossless: bool = True) -> Path:
    """Frames (uint8 ``(H, W, 3)``) as FFV1 Matroska (``lossless``, path ``.mkv``) or H.264 MP4, 10 fps."""
    from opama_tools.videos import VideoWriter

    path.parent.mkdir(parents=True, exist_ok=True)
    with VideoWriter(path, 10, lossless=lossless) as w:
        for f in frames:
            w.append(np.ascontiguousarray(f))
    return path


def write_clip(gen: Path, name: str, frames: list[np.ndarray], masks: np.ndarray | None = None,
               meta: dict | None = None) -> Path:
    """``gen/name/pano.mkv`` + ``input_masks.npy`` + ``meta.json`` (kind video), as a video job writes them."""
    folder = gen / name
    write_video(folder / "pano.mkv", frames)
    if masks is not None:
        np.save(folder / "input_masks.npy", masks)
    (folder / "meta.json").write_text(json.dumps({"kind": "video", "method": "test", **(meta or {})}))
    return folder


def _opts(**kw) -> EvalOptions:
    return EvalOptions(**{"bootstrap": 20, **kw})


def _flat(value: int, n: int = 4) -> list[np.ndarray]:
    return [np.full((H, W, 3), value, np.uint8) for _ in range(n)]


def test_reader_is_exact_on_lossless_video(tmp_path):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for _ in range(3)]
    got = list(read_frames(write_video(tmp_path / "a.mkv", frames)))
    assert len(got) == 3 and all((a == b).all() for a, b in zip(frames, got))


def test_flicker_static_zero_flickering_hand_value_and_frame_metrics(tmp_path):
    """Clip ``still``: output = reference, static -> flicker 0, PSNR capped, border 1.0. Clip ``flick``: the
    generated region alternates 100/140 while the input footprint (60) moves 2 columns a frame; only
    pixels outside both frames' masks count, so flicker = 40/255 exactly; its reference alternates
    120/126 on those pixels -> 6/255."""
    gen, ref = tmp_path / "gen", tmp_path / "ref"
    n = 4
    tex = synthetic_pano8(3, H)
    still_masks = np.zeros((n, H, W), bool)
    still_masks[:, 4:12, 10:20] = True
    write_clip(gen, "still", [tex] * n, still_masks)
    write_video(ref / "still.mkv", [tex] * n)

    masks = np.zeros((n, H, W), bool)
    frames, refs = [], []
    for t in range(n):
        masks[t, 5:11, 4 + 2 * t: 12 + 2 * t] = True
        f = np.full((H, W, 3), 140 if t % 2 else 100, np.uint8)
        f[masks[t]] = 60
        r = np.full((H, W, 3), 126 if t % 2 else 120, np.uint8)
        r[masks[t]] = 60
        frames.append(f)
        refs.append(r)
    write_clip(gen, "flick", frames, masks)
    write_video(ref / "flick.mkv", refs)

    s = run_eval(gen, ref, tmp_path / "rep", _opts())
    assert s.exit_code == 0 and s.done == 2 and not s.result.failed
    per = pd.read_csv(tmp_path / "rep" / "per_image.csv").set_index("image")
    assert per.loc["still", "frames"] == n and per.loc["flick", "frames"] == n
    assert per.loc["still", "flicker"] == 0.0 and per.loc["still", "flicker_ref"] == 0.0
    assert per.loc["still", "psnr"] == 100.0 and per.loc["still", "gen_psnr"] == 100.0
    assert per.loc["still", "border"] == pytest.approx(1.0, abs=1e-12)
    assert per.loc["flick", "flicker"] == pytest.approx(40 / 255, rel=1e-12)
    assert per.loc["flick", "flicker_ref"] == pytest.approx(6 / 255, rel=1e-12)
    # border: inside 60, outside 100/140 vs the reference's 120/126 (plus one level each)
    want = np.mean([(40 + 1) / (60 + 1), (80 + 1) / (66 + 1)] * 2)
    assert per.loc["flick", "border"] == pytest.approx(want, rel=1e-9)
    # the summary pools the 2 x 3 frame pairs and resamples clips
    rows = {m.key: m for m in s.result.metrics}
    assert rows["flicker"].value == pytest.approx(20 / 255, rel=1e-12) and rows["flicker"].n == 6
    assert rows["flicker"].ci_method == "bootstrap over 2 clips (frames pooled)"
    assert rows["flicker"].ci_low <= rows["flicker"].value <= rows["flicker"].ci_high
    assert rows["psnr"].n == 2 * n and rows["flicker"].group == "temporal"
    for m in s.result.metrics:  # every row declared in the registry, direction and group from there
        d = registry.lookup(m.key)
        assert d is not None and (m.better, m.group, m.label) == (d.better, d.group, d.label)
    pf = pd.read_csv(tmp_path / "rep" / "per_frame.csv")
    assert len(pf) == 2 * n and pf[pf.frame == 0]["flicker"].isna().all()
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "videos: 2 clips, 8 frames" in md and "flicker (generated)" in md and "![samples](samples.png)" in md
    assert {p.name for p in s.written} >= {"per_frame.csv", "samples.png", "per_image.png", "metrics.json"}
    rec = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert rec["config"]["kind"] == "video" and rec["scored"]["method"] == "test"


def test_warp_error_identity_vs_known_yaw_rotation(tmp_path):
    """Both videos turn: every frame is the previous one rolled k columns to the right. Without the
    rotation the warping error is large; with ``video.rotations`` (yaw -k·360/W per frame) it is 0,
    for the output and the reference."""
    gen, ref = tmp_path / "gen", tmp_path / "ref"
    n, k, w = 4, 2, 64
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, (32, w, 3), dtype=np.uint8)
    cols = np.arange(w)
    smooth = np.broadcast_to((128 + 60 * np.sin(2 * np.pi * cols / w))[None, :, None], (32, w, 3))
    smooth = np.ascontiguousarray(smooth.round().astype(np.uint8))
    mask = np.zeros((32, w), bool)
    mask[12:20, 28:36] = True
    g = [np.roll(noise, k * t, axis=1) for t in range(n)]
    r = [np.roll(smooth, k * t, axis=1) for t in range(n)]
    masks = np.stack([np.roll(mask, k * t, axis=1) for t in range(n)])
    rot = [[-k * t * 360.0 / w, 0.0] for t in range(n)]
    write_clip(gen, "turned", g, masks, {"video": {"frames": n, "rotations": rot}})
    write_clip(gen, "fixed", g, masks)
    for name in ("turned", "fixed"):
        write_video(ref / f"{name}.mkv", r)

    s = run_eval(gen, ref, tmp_path / "rep", _opts(metrics=("warp",)))
    assert s.exit_code == 0 and s.done == 2
    per = pd.read_csv(tmp_path / "rep" / "per_image.csv").set_index("image")
    assert per.loc["turned", "warp_error"] < 1e-12 and per.loc["turned", "warp_error_ref"] < 1e-12
    assert per.loc["fixed", "warp_error"] > 0.05  # uniform noise against its shifted self: ~2 var = 1/6
    assert per.loc["fixed", "warp_error_ref"] <= T.STATIC_THRESHOLD ** 2
    assert [m.key for m in s.result.metrics] == ["warp_error", "warp_error_ref"]

    # the general (resampling) warp agrees with the exact roll, and pitch round-trips to the identity
    import torch

    x = torch.from_numpy(noise.astype(np.float64)).permute(2, 0, 1)[None]
    y = T._remap(x, (0.0, 0.0, 0.0), (-k * 360.0 / w, 0.0, 0.0), "bilinear")[0].permute(1, 2, 0).numpy()
    assert np.abs(y - np.roll(noise, k, axis=1)).max() < 1e-6
    assert T.warp_frame(noise, (5.0, 10.0, 0.0), (5.0, 10.0, 0.0)) is noise


def test_warp_frame_follows_rotate_equi():
    """Frames rendered by ``rotate_equi`` at two camera rotations (yaw, pitch and roll): warping the first
    with both rotations gives the second up to resampling; the swapped rotations or no warp do not."""
    import torch

    from opama_model.spherical import equirect_directions, rotate_equi

    d = equirect_directions(64, 128, dtype=torch.float64).numpy()
    world = np.stack([0.5 + 0.4 * d[..., 0], 0.5 + 0.4 * d[..., 1] * d[..., 2], 0.5 + 0.3 * d[..., 2]], -1) * 255

    def render(a):
        return rotate_equi(torch.from_numpy(world).permute(2, 0, 1)[None], *a)[0].permute(1, 2, 0).numpy()

    a0, a1 = (10.0, 5.0, 0.0), (20.0, 15.0, 3.0)
    f0, f1 = render(a0), render(a1)
    err = lambda x: float(np.abs(x - f1).mean() / 255)  # noqa: E731
    assert err(T.warp_frame(f0, a0, a1)) < 1e-3  # bilinear resampling twice on a smooth image: ~1e-4
    assert err(T.warp_frame(f0, a1, a0)) > 0.03 and err(f0) > 0.03


def test_border_continuity_hand_value():
    m = np.zeros((H, W), bool)
    m[4:12, 8:16] = True
    gen = np.full((H, W, 3), 160, np.uint8)
    ref = np.full((H, W, 3), 130, np.uint8)
    gen[m] = ref[m] = 100
    assert T.border_difference(gen, m) == pytest.approx(60 / 255, rel=1e-12)
    assert T.border_continuity(gen, ref, m) == pytest.approx(61 / 31, rel=1e-12)
    assert T.border_continuity(ref, ref, m) == 1.0
    assert np.isnan(T.border_continuity(gen, ref, np.zeros((H, W), bool)))
    # the border wraps across the ±180° seam: a mask touching column 0 has pairs with column W-1
    m2 = np.zeros((H, W), bool)
    m2[:, :4] = True
    x = np.zeros((H, W, 3), np.uint8)
    x[:, -1] = 255
    assert T.border_difference(x, m2) == pytest.approx(0.5, rel=1e-12)  # (W-1,0) pair: 1; (3,4) pair: 0


def test_frame_count_mismatch_fails_that_pair_only(tmp_path, monkeypatch):
    no_weights_env(monkeypatch, tmp_path)
    gen, ref, out = tmp_path / "gen", tmp_path / "ref", tmp_path / "rep"
    write_clip(gen, "a", _flat(90))
    write_clip(gen, "b", _flat(90))
    write_video(ref / "a.mkv", _flat(100))
    write_video(ref / "b.mp4", _flat(100, 5), lossless=False)
    res = runner.invoke(app, ["eval", str(gen), str(ref), "--metrics", "flicker,seam", "--bootstrap", "20",
                              "--out", str(out)])
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    line = [ln for ln in res.output.splitlines() if ln.startswith("failed:")]
    assert len(line) == 1 and str(gen / "b" / "pano.mkv") in line[0] and str(ref / "b.mp4") in line[0]
    assert "4 frames" in line[0] and "has 5" in line[0]
    assert "1 done, 0 skipped, 1 failed" in res.output
    per = pd.read_csv(out / "per_image.csv")
    assert per["image"].tolist() == ["a"]
    rec = json.loads((out / "metrics.json").read_text())
    assert [f["path"] for f in rec["failed"]] == [str(gen / "b" / "pano.mkv")]


def test_undecodable_reference_fails_that_pair(tmp_path):
    gen, ref = tmp_path / "gen", tmp_path / "ref"
    write_clip(gen, "a", _flat(90))
    write_clip(gen, "b", _flat(90))
    write_video(ref / "a.mkv", _flat(100))
    (ref / "b.mp4").write_text("not a video")
    s = run_eval(gen, ref, tmp_path / "rep", _opts(metrics=("flicker",)))
    assert s.done == 1 and s.exit_code == 1
    (path, reason), = s.result.failed
    assert path == str(ref / "b.mp4") and reason.startswith("cannot decode the video") and "\n" not in reason


def test_size_mismatch_fails_unless_resize(tmp_path):
    gen, ref = tmp_path / "gen", tmp_path / "ref"
    write_clip(gen, "a", _flat(90))
    write_video(ref / "a.mkv", [np.full((2 * H, 2 * W, 3), 90, np.uint8)] * 4)
    s = run_eval(gen, ref, tmp_path / "rep", _opts(metrics=("flicker", "psnr")))
    (path, reason), = s.result.failed
    assert s.exit_code == 1 and path == str(gen / "a" / "pano.mkv") and f"{2 * H}x{2 * W}" in reason
    assert "--resize" in reason
    s = run_eval(gen, ref, tmp_path / "rep2", _opts(metrics=("flicker", "psnr"), resize=True))
    assert s.exit_code == 0 and s.result.config["resized"] == ["a"]
    assert {m.key: m.value for m in s.result.metrics}["psnr"] == 100.0  # flat 90 resampled is still 90


def test_rerun_is_skipped_until_a_video_changes(tmp_path):
    gen, ref, out = tmp_path / "gen", tmp_path / "ref", tmp_path / "rep"
    write_clip(gen, "a", _flat(90))
    write_video(ref / "a.mkv", _flat(100))
    opts = _opts(metrics=("flicker",))
    assert not run_eval(gen, ref, out, opts).skipped
    assert run_eval(gen, ref, out, opts).skipped
    (out / "per_frame.csv").unlink()
    assert not run_eval(gen, ref, out, opts).skipped
    write_video(ref / "a.mkv", _flat(101))  # other reference bytes: redone
    assert not run_eval(gen, ref, out, opts).skipped
    np.save(gen / "a" / "input_masks.npy", np.zeros((4, H, W), bool))  # a mask file appears: redone
    again = run_eval(gen, ref, out, opts)
    assert not again.skipped and again.exit_code == 0


def test_image_outputs_with_a_look_around_stay_images(tmp_path):
    write_pngs(tmp_path / "gen" / "p0", {"pano.png": synthetic_pano8(0, H)})
    write_video(tmp_path / "gen" / "p0" / "pano.mp4", _flat(10), lossless=False)  # image job's --video
    write_video(tmp_path / "vid" / "c" / "pano.mp4", _flat(10), lossless=False)
    write_video(tmp_path / "vid" / "c" / "pano.mkv", _flat(10))
    write_video(tmp_path / "vid" / "c" / "look.mp4", _flat(10), lossless=False)
    assert not has_video_outputs(tmp_path / "gen")
    assert list_videos(tmp_path / "vid") == {"c": tmp_path / "vid" / "c" / "pano.mkv"}


@pytest.mark.parametrize("case,culprit", [
    ("masks_dtype", "input_masks.npy: expected a (T, H, W) bool array"),
    ("masks_pickle", "input_masks.npy: cannot read it as a NumPy array without pickle"),
    ("rotations", "meta.json: video.rotations must be"),
    ("video_metric_on_images", "--metrics flicker: temporal metrics need videos"),
    ("learned_only", "--metrics fid: no requested metric is computed for videos"),
    ("nothing_pairs", "nothing to evaluate (1 generated and 1 reference videos"),
])
def test_bad_inputs_one_line_exit_2(tmp_path, monkeypatch, case, culprit):
    no_weights_env(monkeypatch, tmp_path)
    gen, ref, out = tmp_path / "gen", tmp_path / "ref", tmp_path / "rep"
    metrics = "flicker"
    folder = write_clip(gen, "a", _flat(90))
    write_video(ref / ("other.mkv" if case == "nothing_pairs" else "a.mkv"), _flat(100))
    if case == "masks_dtype":
        np.save(folder / "input_masks.npy", np.zeros((4, H, W), np.uint8))
    elif case == "masks_pickle":
        np.save(folder / "input_masks.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif case == "rotations":
        (folder / "meta.json").write_text(json.dumps({"kind": "video", "video": {"rotations": [[0, "x"]]}}))
    elif case == "video_metric_on_images":
        gen, ref = tmp_path / "gi", tmp_path / "ri"
        write_pngs(gen, {"p.png": synthetic_pano8(0, H)})
        write_pngs(ref, {"p.png": synthetic_pano8(1, H)})
    elif case == "learned_only":
        metrics = "fid"
    res = runner.invoke(app, ["eval", str(gen), str(ref), "--metrics", metrics, "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and culprit in lines[0], res.output
    assert not out.exists()
