"""360° video (``opama_model.video_pipeline.outpaint_video``): the temporal method beside independent
per-frame panoramas (same model, same seed every frame), in one run.

Clips (NFoV photos, fov 90, cut from a smooth synthetic world panorama, the camera panning
``--pan`` degrees per frame): ``static`` (no motion at all), ``inside`` (a red block moving inside
the view, 2 degrees per frame relative to the camera), ``cross`` (the block crossing the input's
right border). Printed per clip and method: generated-region flicker (mean absolute
frame-to-frame change, 8-bit levels, over pixels outside both frames' input masks), UNet passes
per frame and the mean/max pass ratio after the first frame, keyframes, seconds per frame (frame
0 and the mean of the others), and the flicker ratio independent / temporal.

Tiny preset with random weights by default; ``--model DIR`` a trained model folder (e.g. the demo's
``runs/opama/model``). A random VAE does not reconstruct its input, so on random weights every
regenerated pixel changes by tens of levels while a same-seed panorama barely depends on its
input: use a trained model for the flicker comparison.

Example: python benchmarks/bench_video.py --threads 1 --model OUT/runs/opama/model --height 128
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_video_pipeline import world_photo  # noqa: E402 (the tests' synthetic world: the same clips)


def flicker(results) -> float:
    vals = []
    for a, b in zip(results, results[1:]):
        gen = ~a.input_mask & ~b.input_mask
        vals.append(np.abs(a.image.astype(np.int16) - b.image.astype(np.int16))[gen].mean())
    return float(np.mean(vals))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="trained model folder (default: tiny preset, random weights)")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--height", type=int, default=64, help="canvas height (width = 2 x height)")
    ap.add_argument("--pan", type=float, default=3.0, help="camera yaw step per frame, degrees")
    ap.add_argument("--procedure", default="fast")
    ap.add_argument("--clips", default="static,inside,cross")
    ap.add_argument("--keyframe-every", type=int, default=None,
                    help="TemporalSettings.keyframe_every (default: its default)")
    ap.add_argument("--strength", type=float, default=None, help="TemporalSettings.strength (default: its default)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from opama_model.pipeline import OPaMaPipeline
    from opama_model.presets import build_components
    from opama_model.video_pipeline import TemporalSettings, outpaint_video, summarise_video

    if args.model:
        from opama_model.model_dir import load_model_dir

        comps = load_model_dir(args.model)
    else:
        comps = build_components("tiny")
    pipe = OPaMaPipeline.from_components(comps)
    pipe.set_progress_bar_config(disable=True)
    size = pipe.view_size
    print(f"machine: {platform.machine()} {platform.processor() or ''}, torch threads {args.threads}, "
          f"model {args.model or 'tiny (random)'}, canvas {args.height}x{2 * args.height}, {args.frames} frames")
    out = {}
    for clip in args.clips.split(","):
        dirs = [(args.pan * t, 0.0, 90.0) for t in range(args.frames)]
        obj = {"static": lambda t: None, "inside": lambda t: -20 + (args.pan + 2) * t,
               "cross": lambda t: 30 + (args.pan + 2) * t}[clip]
        frames = [world_photo(0.0 if clip == "static" else d[0], obj(t), size) for t, d in enumerate(dirs)]
        if clip == "static":
            dirs = [(0.0, 0.0, 90.0)] * args.frames
        row = {}
        knobs = {k: v for k, v in (("keyframe_every", args.keyframe_every), ("strength", args.strength))
                 if v is not None}
        for name, ts in (("temporal", TemporalSettings(**knobs)), ("independent", TemporalSettings(independent=True))):
            t0 = time.perf_counter()
            res = list(outpaint_video(pipe, frames, dirs, "a room", height=args.height, width=2 * args.height,
                                      procedure=args.procedure, temporal=ts))
            wall = time.perf_counter() - t0
            s = summarise_video([r.info() for r in res], ts)
            secs = [r.seconds["total"] for r in res]
            row[name] = dict(flicker=flicker(res), unet_passes_per_frame=s["unet_passes_per_frame"],
                             mean_pass_ratio_after_first=s["mean_pass_ratio_after_first"],
                             max_pass_ratio_after_first=s["max_pass_ratio_after_first"], keyframes=s["keyframes"],
                             seconds_frame0=secs[0], seconds_per_later_frame=float(np.mean(secs[1:])), wall=wall)
            r = row[name]
            print(f"{clip:7s} {name:12s} flicker {r['flicker']:.4f}  passes {r['unet_passes_per_frame']}  "
                  f"ratio mean {r['mean_pass_ratio_after_first']:.4f} max {r['max_pass_ratio_after_first']:.4f}  "
                  f"keyframes {r['keyframes']}  s/frame0 {secs[0]:.2f}  "
                  f"s/later frame {r['seconds_per_later_frame']:.3f}",
                  flush=True)
        ft, fi = row["temporal"]["flicker"], row["independent"]["flicker"]
        row["flicker_ratio_independent_over_temporal"] = fi / ft if ft > 0 else None
        print(f"{clip:7s} flicker independent / temporal: " + (f"{fi / ft:.1f}x" if ft > 0 else "temporal 0"))
        out[clip] = row
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(args=vars(args), clips=out), f, indent=1)


if __name__ == "__main__":
    main()
