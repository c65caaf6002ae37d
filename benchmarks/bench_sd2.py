"""The sd2 model at its real size: per-stage seconds and memory of one generated view, the projected
whole panorama under ``fast``, ``reference`` and ``aog``, before/after ``fast``'s reuses.

One process, one model (sd2 with random weights unless both SD-2 folders are found locally, or
``--random-weights``):

1. **Plan**: one input photo at (0, 0, 90) on the canvas (2048x4096; ``--quick``: 1024x2048), the
   AOG-21 schedule plus completion views (:func:`opama_model.pipeline.plan_views`); how many
   cube faces change between consecutive generated views (from the known mask: a face's pixels
   change only where new pixels become known), i.e. what ``fast``'s face reuse saves.
2. **Stages of one view** (the first generated view), each timed alone (best of ``--repeat``,
   after ``--warmup`` untimed runs; CUDA synchronised): cut, CLIP image encoding of 7 images
   ("before") and of the view + the mean number of changed faces through the face cache
   ("after"), GMA of 7 images (the cache's first call: the same ops as ``GMA.forward``) and
   through the cache with the changed faces only, VCR, VAE encode/decode, UNet pass at batch 1
   and 2 (batched guidance), paste. Peak memory per stage: CUDA ``max_memory_allocated``; CPU the
   process's peak resident set after the stage.
3. **Projection** (stated as such): whole panorama = text encoding + generated views x per-view
   seconds + cut/paste of the views without unknown pixels; per view = overhead + UNet rows of
   the procedure (guided evaluations batched or separate per ``batched_cfg``). ``fast`` before
   (recompute everything) and after (reuse on), the ratio reference / fast and its bound
   (reference rows / fast rows: with zero overhead the ratio cannot exceed it unless a batch-2
   pass costs less than two batch-1 passes).
4. ``--panorama PROC [PROC ...]``: one real panorama per procedure (wall seconds), CUDA advised; with
   ``fast`` and ``reference`` their measured ratio.
5. ``--train``: one training step, with and without gradient checkpointing, via
   ``benchmarks/bench_sd2_train.py``'s ``measure_train_step`` (the training side's benchmark).

Examples::

    flock /tmp/sd2.lock python benchmarks/bench_sd2.py --threads 2 --json /tmp/sd2.json
    python benchmarks/bench_sd2.py --device cuda --dtype fp16 --panorama fast reference
    python benchmarks/bench_sd2.py --preset tiny --quick     # seconds, a dry run of the script
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import machine_info  # noqa: E402

PROCS = ("reference", "aog", "fast")


def _rss_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Stages:
    """Times and peak memory per stage (best of ``repeat`` after ``warmup``)."""

    def __init__(self, device: torch.device, repeat: int, warmup: int) -> None:
        self.cuda = device.type == "cuda"
        self.repeat, self.warmup = repeat, warmup
        self.rows: dict[str, dict] = {}

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def __call__(self, name: str, fn, *, repeat: int | None = None, warmup: int | None = None):
        for _ in range(self.warmup if warmup is None else warmup):
            fn()
        best, out = float("inf"), None
        if self.cuda:
            self.sync()
            torch.cuda.reset_peak_memory_stats()
        for _ in range(repeat or self.repeat):
            self.sync()
            t0 = time.perf_counter()
            out = fn()
            self.sync()
            best = min(best, time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated() / 2**20 if self.cuda else _rss_peak_mb()
        self.rows[name] = dict(seconds=best, peak_mb=peak)
        print(f"  {name:<22} {best:>9.3f} s   peak {peak:>9.0f} MB", flush=True)
        return out

    def s(self, name: str) -> float:
        return self.rows[name]["seconds"]


def input_photo(size: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 8, 8, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)[0].clamp(-1, 1)


def face_changes(steps, known0: torch.Tensor, fov: float, size: int) -> list[list[int]]:
    """Changed cube faces (indices, F R B L U D) at each generated view since the previous
    generated view (the first: all 6), simulated on the known mask as the loop pastes."""
    from opama_model.pipeline import _view_cover
    from opama_model.spherical import equi_to_cube

    known = known0.clone()
    prev, out = None, []
    for st in steps:
        if st.generate:
            faces = equi_to_cube(known.float(), size, mode="nearest")[0]  # (6, 1, S, S)
            out.append([i for i in range(6) if prev is None or not torch.equal(faces[i], prev[i])])
            prev = faces
        known = known | (_view_cover(st.yaw, st.pitch, fov, size, tuple(known.shape[-2:]), known.device) & ~known)
    return out


@torch.inference_mode()
def measure_inference(a, pipe, device) -> dict:
    from opama_model.canvas import cut_view
    from opama_model.gma import GMA
    from opama_model.pipeline import FaceCache, make_scheduler, paste_inputs, plan_views
    from opama_model.spherical import pers_to_equi
    from opama_model.views import AOG21

    size = pipe.view_size
    hh = (2 if a.quick else 4) * size
    hw = (hh, 2 * hh)
    fov = 90.0
    photo = input_photo(size)
    canvas, known = paste_inputs([photo], [(0.0, 0.0, 90.0)], hw, device=device)
    t0 = time.perf_counter()
    steps, _ = plan_views(known, AOG21, fov, size)
    plan_s = time.perf_counter() - t0
    gen = [s for s in steps if s.generate]
    sets = face_changes(steps, known, fov, size)
    changes = [len(c) for c in sets]
    mean_changed = sum(changes) / len(changes)
    m = min(6, max(0, round(sum(changes[1:]) / max(1, len(changes) - 1))))  # typical view after the first
    print(f"\n## Plan: canvas {hw[0]}x{hw[1]}, view {size} px, {len(steps)} views, {len(gen)} generated; "
          f"changed faces per generated view: {sets} (mean {mean_changed:.2f}; after the first "
          f"view typically {m}) [plan {plan_s:.1f} s]", flush=True)

    st = Stages(device, a.repeat, a.warmup)
    print(f"\n## Stages of one generated view ({pipe.unet.dtype}, {device})", flush=True)
    step = gen[0]
    text = st("encode_text", lambda: pipe._encode_text("a bright living room with a large window"))
    inp = st("cut", lambda: cut_view(canvas, known, step.yaw, step.pitch, fov, size))
    clip = inp.clip_images.flatten(0, 1)
    cache = FaceCache()
    if True:
        embeds = st("clip_7", lambda: pipe._encode_images(clip).view(1, 7, -1))
        cache.clip_embeds(inp.faces, inp.view, pipe._encode_images)  # prime (untimed)

        def clip_after():
            stale = inp.faces.clone()
            stale[:, :m] = stale[:, :m] + 1  # the first m faces differ from the cached ones
            cache._clip_in = stale
            return cache.clip_embeds(inp.faces, inp.view, pipe._encode_images)

        st(f"clip_1+{m}", clip_after)
        vcr, local = pipe.conditioner._branches()
        images = inp.gma_images.float()
        is_gma = isinstance(local, GMA)
        gcache = FaceCache()
        if is_gma:
            residuals = st("gma_7", lambda: FaceCache().gma_residuals(local, images))
            gcache.gma_residuals(local, images)  # prime (untimed)

            # after: the cost depends on which faces changed (the cross-image stages keep the faces
            # before the first changed one): each sampled view's own changed set, all views on CUDA
            later = list(range(1, len(sets)))
            k = len(later) if (device.type == "cuda" or a.gma_samples <= 0) else min(a.gma_samples, len(later))
            pick = sorted({later[round(i * (len(later) - 1) / max(1, k - 1))] for i in range(k)}) if later else []
            per = {}
            for v in pick:
                def gma_after(v=v):
                    stale = images[:, :6].clone()
                    stale[:, sets[v]] = stale[:, sets[v]] + 1
                    gcache._gma_in = stale
                    return gcache.gma_residuals(local, images)

                name = f"gma_view{v}_" + "".join(map(str, sets[v]))
                st(name, gma_after, repeat=1, warmup=0)  # warmed up by gma_7; many views on CUDA
                per[v] = st.s(name)
            t_later = sum(per.values()) / len(per) if per else st.s("gma_7")
            st.rows["gma_after"] = dict(seconds=(st.s("gma_7") + t_later * len(later)) / len(sets),
                                        peak_mb=st.rows["gma_7"]["peak_mb"], sampled_views=pick,
                                        note="mean per generated view: the first view full, the others the "
                                             "mean of the sampled views' own changed faces")
            print(f"  gma_after (mean/view)  {st.s('gma_after'):>9.3f} s   from views {pick}", flush=True)
        else:
            residuals = st("gma_7", lambda: list(local(images)))
            st.rows["gma_after"] = dict(st.rows["gma_7"])
        tokens = st("vcr", lambda: vcr(embeds, text))
        masked = st("vae_encode", lambda: pipe._vae_encode(inp.masked_image))
        lat_mask = torch.nn.functional.interpolate(inp.unknown, size=masked.shape[-2:])
        sched = make_scheduler("dpm++2m", pipe.scheduler.config)
        sched.set_timesteps(25, device=device)
        t = sched.timesteps[0]
        lat = torch.randn(masked.shape, generator=torch.Generator().manual_seed(0)).to(device)
        x = torch.cat((lat, lat_mask, masked), dim=1)
        dt = pipe.unet.dtype
        tok, res = tokens.to(dt), [r.to(dt) for r in residuals]
        st("unet_b1", lambda: pipe._unet(x, t, tok, res))
        from opama_model.conditioner import pad_tokens

        null_p, null_m = pad_tokens(pipe.conditioner.null_condition(1).to(dt), tok.shape[1])
        both_tok = torch.cat((tok, null_p))
        both_mask = torch.cat((torch.ones_like(null_m), null_m))
        both_res = [torch.cat((r, r)) for r in res]
        x2 = torch.cat((x, x))
        st("unet_b2", lambda: pipe._unet(x2, t, both_tok, both_res, both_mask))
        decoded = st("vae_decode", lambda: pipe._vae_decode(lat))
        st("paste", lambda: pers_to_equi(decoded.unsqueeze(1), step.yaw, step.pitch, fov, hw, feather=0.0))

    res = dict(canvas=list(hw), view_size=size, views=len(steps), generated=len(gen), face_changes=changes,
               changed_faces=sets, typical_changed=m, stages=st.rows, device_type=device.type)
    res.update(project(res, pipe.scheduler.config))
    return res


def _after_cost(t_full: float, t_m: float, m: int, changes: list[int]) -> float:
    """Mean seconds per generated view of a reused stage: ``t_full`` (all 7 images) at the first view
    and wherever all 6 faces changed, else linear between ``t_m`` (view + ``m`` faces, measured) and
    ``t_full`` in the number of changed faces (exact at ``m`` and 6)."""
    out = []
    for c in changes:
        if m >= 6 or c == m:
            out.append(t_m if c == m else t_full)
        else:
            out.append(t_m + (t_full - t_m) * (c - m) / (6 - m))
    return sum(out) / len(out)


def project(r: dict, scheduler_config) -> dict:
    """Projected whole-panorama seconds per procedure from the stage table ``r["stages"]`` (see the
    module docstring), printed and returned."""
    from opama_model.pipeline import PROCEDURES, _guided_steps, make_scheduler, resolve_batched_cfg

    def s(name: str) -> float:
        return r["stages"][name]["seconds"]

    m, changes, n_gen = r["typical_changed"], r["face_changes"], r["generated"]
    before = dict(cut=s("cut"), clip=s("clip_7"), gma=s("gma_7"), vcr=s("vcr"), vae_encode=s("vae_encode"),
                  vae_decode=s("vae_decode"), paste=s("paste"))
    after = dict(before, clip=_after_cost(s("clip_7"), s(f"clip_1+{m}"), m, changes),
                 gma=s("gma_after"))
    n_skip = r["views"] - n_gen
    proj = {}
    for name in PROCS:
        proc = PROCEDURES[name]
        sch = make_scheduler(proc.scheduler, scheduler_config)
        sch.set_timesteps(proc.steps)
        n = len(sch.timesteps)
        guided = _guided_steps(n, proc.guidance, proc.guidance_fraction)
        variants = {"": (resolve_batched_cfg(proc.batched_cfg, r["device_type"]), proc.reuse_faces)}
        if name == "fast":
            variants = {"before": (variants[""][0], False), "after": variants[""],
                        "after_batched": (True, True), "after_separate": (False, True)}
        for tag, (batched, reuse) in variants.items():
            unet = guided * (s("unet_b2") if batched else 2 * s("unet_b1")) + (n - guided) * s("unet_b1")
            over = after if reuse else before
            per_view = unet + sum(over.values())
            total = s("encode_text") + n_gen * per_view + n_skip * (s("cut") + s("paste"))
            rows = n_gen * (2 * guided + (n - guided))
            key = f"{name}_{tag}" if tag else name
            proj[key] = dict(procedure=name, evals=n, guided=guided, batched_cfg=batched, reuse_faces=reuse,
                             unet_s_per_view=unet, overhead_s_per_view=sum(over.values()), per_view_s=per_view,
                             panorama_s=total, unet_rows=rows)
    ref, fast = proj["reference"], proj["fast_after"]
    bound = ref["unet_rows"] / fast["unet_rows"]
    print(f"\n## Per-stage seconds per generated view, fast before (recompute) / after (reuse; mean over the "
          f"{n_gen} views, changed faces {changes})")
    print(f"{'stage':<12} {'before s':>10} {'after s':>10}")
    for k in before:
        print(f"{k:<12} {before[k]:>10.3f} {after[k]:>10.3f}")
    print(f"{'unet':<12} {proj['fast_before']['unet_s_per_view']:>10.3f} {fast['unet_s_per_view']:>10.3f}")
    print(f"{'total':<12} {proj['fast_before']['per_view_s']:>10.3f} {fast['per_view_s']:>10.3f}")
    print(f"\n## Projected whole panorama ({n_gen} generated views x per-view seconds + text + "
          f"{n_skip} paste-only views; PROJECTED from single passes, not run)")
    print(f"{'procedure':<22} {'evals':>5} {'guided':>6} {'batched':>7} {'reuse':>5} {'UNet s/view':>11} "
          f"{'other s/view':>12} {'panorama s':>11} {'UNet rows':>9}")
    for k, x in proj.items():
        print(f"{k:<22} {x['evals']:>5} {x['guided']:>6} {str(x['batched_cfg']):>7} {str(x['reuse_faces']):>5} "
              f"{x['unet_s_per_view']:>11.2f} {x['overhead_s_per_view']:>12.2f} {x['panorama_s']:>11.1f} "
              f"{x['unet_rows']:>9}")
    ratio = ref["panorama_s"] / fast["panorama_s"]
    ratio_before = ref["panorama_s"] / proj["fast_before"]["panorama_s"]
    b1, b2 = s("unet_b1"), s("unet_b2")
    print(f"\nreference / fast (projected): {ratio:.2f}x after reuse, {ratio_before:.2f}x before "
          f"(bound with zero overhead and separate CFG: {bound:.2f}x = {ref['unet_rows']}/{fast['unet_rows']} rows; "
          f"batch-2 pass {b2:.3f} s vs 2 x batch-1 {2 * b1:.3f} s: batched {'faster' if b2 < 2 * b1 else 'slower'})",
          flush=True)
    free = training_free(r, proj, before, after)
    return dict(before=before, after=after, projection=proj, ratio_reference_over_fast=ratio,
                ratio_before=ratio_before, rows_bound=bound, training_free=free)


CONDITIONER_STAGES = ("clip", "gma", "vcr")
"""Per-view stages of OPa-Ma that the training-free method (an SD inpainting checkpoint in the same
loop, ``opama outpaint --model CHECKPOINT``: no conditioner, no CLIP image encoding) does not run."""


def training_free(r: dict, proj: dict, before: dict, after: dict) -> dict:
    """Per-view and panorama seconds of the training-free method beside OPa-Ma, from the same
    measured stages (the conditioner's share of the cost), printed and returned.

    The training-free view runs the same UNet passes (77 text tokens instead of 84; batched guidance
    needs no padding), the VAE, the cut and the paste; its cut is the measured full cut (views, cube
    faces, GMA images), an upper bound of what it does (it cuts the view only).
    """
    out = {}
    print("\n## Training-free (SD inpainting checkpoint, no conditioner) vs OPa-Ma, per generated view "
          "(same measured stages; PROJECTED)")
    print(f"{'procedure':<16} {'OPa-Ma s/view':>13} {'free s/view':>11} {'conditioner s':>13} {'share':>6} "
          f"{'OPa-Ma pano s':>13} {'free pano s':>11}")
    n_gen, n_skip = r["generated"], r["views"] - r["generated"]
    for key in ("reference", "fast_after"):
        x = proj[key]
        stages = after if x["reuse_faces"] else before
        cond = sum(stages[k] for k in CONDITIONER_STAGES)
        free_view = x["per_view_s"] - cond
        free_pano = x["panorama_s"] - n_gen * cond
        out[key] = dict(opama_s_per_view=x["per_view_s"], free_s_per_view=free_view, conditioner_s_per_view=cond,
                        conditioner_share=cond / x["per_view_s"], opama_panorama_s=x["panorama_s"],
                        free_panorama_s=free_pano, paste_only_views=n_skip)
        print(f"{key:<16} {x['per_view_s']:>13.3f} {free_view:>11.3f} {cond:>13.3f} {cond / x['per_view_s']:>6.1%} "
              f"{x['panorama_s']:>13.1f} {free_pano:>11.1f}")
    return out


def run_panorama(a, pipe, device, procedure: str) -> dict:
    """One real panorama with ``procedure`` (after a one-view warm-up): wall seconds, UNet calls, peak memory."""
    size = pipe.view_size
    hh = (2 if a.quick else 4) * size
    photo = input_photo(size)
    pipe([photo], prompt="warm up", procedure=procedure, num_inference_steps=1, schedule=((0.0, 25.0),),
         height=size, width=2 * size, output_type="np")
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = pipe([photo], prompt="a bright living room with a large window", procedure=procedure, seed=0,
               height=hh, width=2 * hh, output_type="np")
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    i = out.info
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else _rss_peak_mb()
    r = dict(procedure=procedure, wall_s=wall, canvas=i["size"], generated_views=i["generated_views"],
             unet_passes=i["unet_passes"], unet_rows=i["unet_rows"], batched_cfg=i["batched_cfg"],
             reuse_faces=i["reuse_faces"], faces_reused=i["faces_reused"], seconds=i["seconds"], peak_mb=peak)
    print(f"\n## Real panorama ({procedure}, {i['size'][0]}x{i['size'][1]}, {i['dtype']}): {wall:.1f} s wall, "
          f"{i['generated_views']} generated views, {i['unet_passes']} UNet calls ({i['unet_rows']} rows), "
          f"peak {peak:.0f} MB; stages {i['seconds']}", flush=True)
    return r


def run_train(a) -> dict:
    here = Path(__file__).resolve().parent
    if not (here / "bench_sd2_train.py").is_file():
        msg = "--train: benchmarks/bench_sd2_train.py (the training side's measure_train_step) is not in this tree"
        print(msg, flush=True)
        return dict(error=msg)
    import inspect

    from bench_sd2_train import measure_train_step

    # pass what its signature takes (the training side owns it): preset, device, dtype, batch size,
    # checkpointing, quick, under the usual names
    params = inspect.signature(measure_train_step).parameters
    out = {}
    for ckpt in (False, True):
        key = f"checkpointing={ckpt}"
        view = 512 if a.preset == "sd2" else 64
        offer = dict(preset=a.preset, device=a.device, dtype=a.dtype, batch_size=a.batch, batch=a.batch,
                     gradient_checkpointing=ckpt, checkpointing=ckpt, quick=a.quick, threads=a.threads or 0,
                     mixed_precision={"fp32": "no"}.get(a.dtype, a.dtype), random_weights=True,
                     canvas=(2 * view, 4 * view) if a.quick else None)
        kw = {k: v for k, v in offer.items() if k in params}
        try:
            r = measure_train_step(**kw)
        except Exception as e:  # one failure must not lose the other measurement
            r = dict(error=f"{type(e).__name__}: {e}")
        out[key] = r
        print(f"train step ({key}, batch {a.batch}): {r}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="sd2", choices=["sd2", "tiny"], help="tiny: a seconds-long dry run")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--random-weights", action="store_true", help="random weights even if the SD-2 folders exist")
    ap.add_argument("--quick", action="store_true", help="canvas 2 x 4 views (1024x2048 for sd2) instead of 4 x 8")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--repeat", type=int, default=1, help="timed runs per stage (best kept)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed runs per stage (default 1 on CUDA, 0 on CPU)")
    ap.add_argument("--gma-samples", type=int, default=3,
                    help="on CPU: views whose face reuse in the GMA is timed (0: all; CUDA: always all)")
    ap.add_argument("--panorama", choices=PROCS, nargs="+", default=[],
                    help="also run one real panorama with each of these procedures, in this process "
                         "(with fast and reference: their measured ratio)")
    ap.add_argument("--no-stages", action="store_true", help="skip the per-stage measurement")
    ap.add_argument("--train", action="store_true", help="one training step with/without checkpointing")
    ap.add_argument("--batch", type=int, default=1, help="--train batch size")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--from-json", help="recompute and print the projection from a --json file (no model)")
    a = ap.parse_args()
    if a.from_json:
        from opama_model.presets import load_config

        old = json.loads(Path(a.from_json).read_text())
        print(old.get("machine", ""))
        old["inference"].setdefault("device_type", torch.device(old["args"]["device"]).type)
        project(old["inference"], load_config(old["args"]["preset"], "scheduler"))
        return
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    if a.warmup is None:
        a.warmup = 1 if device.type == "cuda" else 0
    print(machine_info(("diffusers", "transformers"), gpu=device.type == "cuda"), flush=True)
    res: dict = dict(args=vars(a), machine=machine_info(("diffusers", "transformers"), gpu=device.type == "cuda"))

    def dump():
        if a.json:
            Path(a.json).parent.mkdir(parents=True, exist_ok=True)
            Path(a.json).write_text(json.dumps(res, indent=1, default=str))

    if not a.no_stages or a.panorama:
        from opama_model.weights import MODEL_COMPONENTS as COMPS, locate
        from opama_tools.outpaint.runner import load_model

        real = a.preset == "sd2" and not a.random_weights and all(locate(c)[0] is not None for c in COMPS)
        t0 = time.perf_counter()
        model = load_model(preset=a.preset, random_weights=not real, device=a.device, dtype=a.dtype)
        pipe = model.pipeline
        res["weights"] = "real" if real else "random"
        res["build_s"] = time.perf_counter() - t0
        print(f"built {a.preset} ({res['weights']} weights) in {res['build_s']:.1f} s; peak RSS "
              f"{_rss_peak_mb():.0f} MB", flush=True)
        if not a.no_stages:
            res["inference"] = measure_inference(a, pipe, device)
            dump()
        for proc in a.panorama:
            res.setdefault("panoramas", {})[proc] = run_panorama(a, pipe, device, proc)
            dump()
        real = res.get("panoramas", {})
        if "fast" in real and "reference" in real:
            res["real_ratio_reference_over_fast"] = real["reference"]["wall_s"] / real["fast"]["wall_s"]
            print(f"\n## Real panoramas, same process: reference / fast = "
                  f"{real['reference']['wall_s']:.1f} / {real['fast']['wall_s']:.1f} s = "
                  f"{res['real_ratio_reference_over_fast']:.2f}x (MEASURED, one run each)", flush=True)
        del pipe, model
    if a.train:
        res["train"] = run_train(a)
    dump()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
