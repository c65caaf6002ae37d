"""``opama eval``: pair generated and reference panoramas, run the metrics, collect results.

Protocol (AOG-Net / OPa-Ma evaluation, see the facts file):

* panoramas are 8-bit PNG equirects, paired by relative path under GEN_DIR and REF_DIR;
* cube faces of ``face_size`` px (299) are cut with :func:`opama_model.spherical.equi_to_cube`
  and quantised to 8 bit (as the reference code saves them); the 4 side faces F R B L
  (``faces=6`` adds U D) form the image sets of FID / KID / IS and the pairs of LPIPS;
* OmniFID uses the U, D and side faces; FID-h the 8 horizontal 90° views;
* the CLIP score compares the panorama (and the mean over 8 horizontal NFoV views) with
  its reference caption; SC compares a caption of the generated panorama with it;
* weight-free: ``seam`` and ``pole`` of each generated (and reference) panorama, and
  PSNR / SSIM on the equirect pixels covered by the input view (yaw 0, pitch 0, fov 90,
  512x512 unless told otherwise) against the reference.

A metric whose network is missing is reported ``unavailable`` with what to place where;
the others still run. Learned metrics carry the network's name: ``FID[clip_vit_b_32]``.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from opama_tools.metrics.features import MetricUnavailable

__all__ = [
    "ALL_METRICS",
    "EvalOptions",
    "MetricResult",
    "EvalResult",
    "IMAGE_SUFFIXES",
    "pair_images",
    "load_image",
    "evaluate",
    "parse_metrics",
]

ALL_METRICS = ("fid", "kid", "is", "omnifid", "fidh", "clip", "lpips", "sc", "psnr", "ssim", "seam", "pole")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

# view index -> (yaw, pitch): 0-5 cube faces F R B L U D, 6-9 the diagonal horizontal views
_VIEWS = ((0, 0), (90, 0), (180, 0), (-90, 0), (0, 90), (0, -90), (45, 0), (135, 0), (-135, 0), (-45, 0))
_SIDES = (0, 1, 2, 3)
_HORIZONTAL8 = (0, 6, 1, 7, 2, 8, 3, 9)


def parse_metrics(spec: str | None) -> tuple[str, ...]:
    """``"fid,seam"`` -> ``("fid", "seam")``; ``None``/``"all"`` -> every metric. Unknown names raise ValueError."""
    if spec is None or spec.strip().lower() in ("", "all"):
        return ALL_METRICS
    names = []
    for raw in spec.split(","):
        n = raw.strip().lower().replace("-", "")
        n = {"fidh": "fidh", "clipscore": "clip", "inception": "is"}.get(n, n)
        if not n:
            continue
        if n not in ALL_METRICS:
            raise ValueError(f"unknown metric {raw.strip()!r}; known: {', '.join(ALL_METRICS)}")
        if n not in names:
            names.append(n)
    return tuple(names)


@dataclass
class EvalOptions:
    """Options of :func:`evaluate` (the CLI flags, one for one)."""

    metrics: tuple[str, ...] = ALL_METRICS
    faces: int = 4
    face_size: int = 299
    captions: str | None = None
    gen_captions: str | None = None
    inception_weights: str | None = None
    fid_clip_weights: str | None = None
    clip_weights: str | None = None
    lpips_weights: str | None = None
    sentence_model: str | None = None
    captioner: str | None = None
    device: str = "auto"
    input_yaw: float = 0.0
    input_pitch: float = 0.0
    input_fov: float = 90.0
    input_size: int = 512
    clip_views: int = 8
    kid_subsets: int = 100
    is_splits: int = 10
    bootstrap: int = 1000
    set_bootstrap: int = 50
    seed: int = 0


@dataclass
class MetricResult:
    """One row of the report table."""

    key: str
    label: str
    status: str  # ok | unavailable | failed
    value: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    ci_method: str = ""
    better: str = ""  # lower | higher | 1.0
    network: str | None = None
    n: int = 0
    detail: str = ""


@dataclass
class EvalResult:
    metrics: list[MetricResult]
    per_image: "object"  # pandas.DataFrame, one row per evaluated pair
    pairs: list[str]
    gen_only: list[str]
    ref_only: list[str]
    failed: list[tuple[str, str]]
    config: dict
    seconds: float = 0.0
    samples: list[str] = field(default_factory=list)

    @property
    def ran_any(self) -> bool:
        return any(m.status == "ok" for m in self.metrics)

    def to_json(self) -> dict:
        return {
            "metrics": [asdict(m) for m in self.metrics],
            "pairs": len(self.pairs),
            "gen_only": self.gen_only,
            "ref_only": self.ref_only,
            "failed": [{"path": p, "reason": r} for p, r in self.failed],
            "config": self.config,
            "seconds": self.seconds,
        }


def _list_images(root: Path) -> dict[str, Path]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."):
            out[p.relative_to(root).as_posix()] = p
    return out


def pair_images(gen_dir: str | Path, ref_dir: str | Path) -> tuple[list[str], list[str], list[str]]:
    """Relative paths present in both folders, only in GEN_DIR, only in REF_DIR (sorted)."""
    g, r = _list_images(Path(gen_dir)), _list_images(Path(ref_dir))
    both = sorted(set(g) & set(r))
    return both, sorted(set(g) - set(r)), sorted(set(r) - set(g))


def load_image(path: str | Path) -> np.ndarray:
    """8-bit RGB ``(H, W, 3)`` of an equirect image; ``ValueError`` unless W == 2 H."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        a = np.array(im.convert("RGB"), dtype=np.uint8)
    h, w = a.shape[:2]
    if w != 2 * h:
        raise ValueError(f"not a 2:1 equirect panorama ({w}x{h})")
    if h < 8:
        raise ValueError(f"too small ({w}x{h})")
    return a


def _to_tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).permute(2, 0, 1).unsqueeze(0).float() / 255.0


def _to_uint8_views(v: torch.Tensor) -> np.ndarray:
    """``(V, 3, h, w)`` floats in [0, 1] -> ``(V, h, w, 3)`` uint8 (as saving a PNG would)."""
    return (v.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def _cut_views(x: torch.Tensor, idx: list[int], size: int) -> np.ndarray:
    from opama_model.spherical import equi_to_pers

    yaws = [_VIEWS[i][0] for i in idx]
    pitches = [_VIEWS[i][1] for i in idx]
    v = equi_to_pers(x, yaws, pitches, 90.0, (size, size))[0]
    return _to_uint8_views(v)


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


_NEEDS_CAPTIONS = "needs the reference captions: pass --captions CAPTIONS.jsonl"


def _load_or_unavailable(unavailable: dict[str, str], key: str, load: Callable[[], object]):
    """``load()``, or None with the reason recorded as ``unavailable[key]`` when its network is missing."""
    try:
        return load()
    except MetricUnavailable as e:
        unavailable[key] = str(e)
        return None


def _mean_ci(values: np.ndarray, reps: int, seed: int) -> tuple[float, float, float, int]:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), float("nan"), 0
    mean = float(v.mean())
    if reps <= 0 or v.size < 2:
        return mean, float("nan"), float("nan"), int(v.size)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v.size, (reps, v.size))
    boots = v[idx].mean(axis=1)
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return mean, float(lo), float(hi), int(v.size)


def evaluate(
    gen_dir: str | Path,
    ref_dir: str | Path,
    options: EvalOptions | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> EvalResult:
    """Run the requested metrics over the paired panoramas of ``gen_dir`` and ``ref_dir``.

    ``progress(done, total, name)`` is called after each pair; ``log(msg)`` for notes.
    Returns an :class:`EvalResult`; never raises for a missing network or a bad image
    (they are reported in the result).
    """
    import pandas as pd

    from opama_tools.metrics import fid as F
    from opama_tools.metrics.panorama import (
        input_coverage_mask,
        masked_psnr,
        masked_ssim,
        pole_variance,
        resize_like,
        seam_score,
    )

    opt = options or EvalOptions()
    if opt.faces not in (4, 6):
        raise ValueError(f"faces must be 4 or 6, got {opt.faces}")
    say = log or (lambda m: None)
    t0 = time.perf_counter()
    device = _resolve_device(opt.device)
    want = set(opt.metrics)
    results: list[MetricResult] = []
    unavailable: dict[str, str] = {}

    pairs, gen_only, ref_only = pair_images(gen_dir, ref_dir)

    # ---- captions -------------------------------------------------------------
    from opama_tools.metrics.sc import read_captions

    ref_caps: dict[str, str] = {}
    gen_caps: dict[str, str] = {}
    if opt.captions:
        ref_caps = read_captions(opt.captions)
    if opt.gen_captions:
        gen_caps = read_captions(opt.gen_captions)

    # ---- networks (each may be unavailable) -----------------------------------
    feat_nets: list = []
    inception = None
    if want & {"fid", "kid", "is", "omnifid", "fidh"}:
        from opama_tools.metrics.features import load_fid_clip, load_inception

        for key, loader, explicit in (
            ("fid-clip", load_fid_clip, opt.fid_clip_weights),
            ("inception", load_inception, opt.inception_weights),
        ):
            net = _load_or_unavailable(unavailable, key, lambda: loader(explicit).to(device))
            if net is None:
                continue
            feat_nets.append(net)
            if key == "inception":
                inception = net
            say(f"{key}: {net.name} from {net.path}")
    lpips_net = None
    if "lpips" in want:
        from opama_tools.metrics.lpips import load_lpips

        lpips_net = _load_or_unavailable(unavailable, "lpips", lambda: load_lpips(opt.lpips_weights).to(device))
    clip_scorer = None
    if "clip" in want:
        if not opt.captions:
            unavailable["clip"] = _NEEDS_CAPTIONS
        else:
            from opama_tools.metrics.clip_score import load_clip_scorer

            clip_scorer = _load_or_unavailable(unavailable, "clip", lambda: load_clip_scorer(opt.clip_weights, device))
    sent_model = None
    captioner = None
    if "sc" in want:
        from opama_tools.metrics.sc import load_captioner, load_sentence_model

        if not opt.captions:
            unavailable["sc"] = _NEEDS_CAPTIONS
        else:
            sent_model = _load_or_unavailable(unavailable, "sc", lambda: load_sentence_model(opt.sentence_model, device))
            if sent_model is not None and not opt.gen_captions:
                try:
                    captioner = load_captioner(opt.captioner, device)
                except MetricUnavailable as e:
                    sent_model = None
                    unavailable["sc"] = (
                        "needs captions of the generated panoramas: pass --gen-captions GEN_CAPTIONS.jsonl "
                        f"(`opama caption GEN_DIR GEN_CAPTIONS.jsonl`), or a BLIP captioner: {e}"
                    )

    # ---- which views to cut -----------------------------------------------------
    sel_faces = list(range(6)) if opt.faces == 6 else list(_SIDES)
    views_needed: set[int] = set()
    if feat_nets and want & {"fid", "kid", "is"}:
        views_needed |= set(sel_faces)
    if feat_nets and "omnifid" in want:
        views_needed |= {0, 1, 2, 3, 4, 5}
    if feat_nets and "fidh" in want:
        views_needed |= set(_HORIZONTAL8)
    lpips_faces = sel_faces if lpips_net is not None else []
    cut = sorted(views_needed | set(lpips_faces))

    feats: dict[str, dict[str, dict[int, list[np.ndarray]]]] = {
        id(n): {"gen": {i: [] for i in cut}, "ref": {i: [] for i in cut}} for n in feat_nets
    }
    is_logits: list[torch.Tensor] = []
    clip_img: list[torch.Tensor] = []
    clip_views: list[torch.Tensor] = []
    rows: list[dict] = []
    failed: list[tuple[str, str]] = []
    masks: dict[tuple[int, int], torch.Tensor] = {}
    gdir, rdir = Path(gen_dir), Path(ref_dir)
    clip_yaws = [k * 360.0 / opt.clip_views for k in range(opt.clip_views)]

    for k, rel in enumerate(pairs):
        try:
            g8 = load_image(gdir / rel)
        except Exception as e:
            failed.append((str(gdir / rel), f"{type(e).__name__}: {e}"))
            if progress:
                progress(k + 1, len(pairs), rel)
            continue
        try:
            r8 = load_image(rdir / rel)
        except Exception as e:
            failed.append((str(rdir / rel), f"{type(e).__name__}: {e}"))
            if progress:
                progress(k + 1, len(pairs), rel)
            continue
        g = _to_tensor(g8)
        r = _to_tensor(r8)
        row: dict = {"image": rel}
        if "seam" in want:
            row["seam"] = float(seam_score(g)[0])
            row["seam_ref"] = float(seam_score(r)[0])
        if "pole" in want:
            row["pole"] = float(pole_variance(g)[0])
            row["pole_ref"] = float(pole_variance(r)[0])
        if want & {"psnr", "ssim"}:
            hw = tuple(g.shape[-2:])
            if hw not in masks:
                masks[hw] = input_coverage_mask(
                    hw[0], hw[1], opt.input_yaw, opt.input_pitch, opt.input_fov, (opt.input_size, opt.input_size)
                )
            rr = resize_like(r, hw)
            if "psnr" in want:
                row["psnr"] = float(masked_psnr(g, rr, masks[hw])[0])
            if "ssim" in want:
                row["ssim"] = float(masked_ssim(g, rr, masks[hw])[0])
        if cut:
            gv = _cut_views(g, cut, opt.face_size)
            rv = _cut_views(r, cut, opt.face_size)
            pos = {i: j for j, i in enumerate(cut)}
            for net in feat_nets:
                if not views_needed:
                    break
                vi = sorted(views_needed)
                fg = net.features(gv[[pos[i] for i in vi]])
                fr = net.features(rv[[pos[i] for i in vi]])
                for j, i in enumerate(vi):
                    feats[id(net)]["gen"][i].append(fg[j])
                    feats[id(net)]["ref"][i].append(fr[j])
            if inception is not None and "is" in want:
                is_logits.append(inception.is_logits(gv[[pos[i] for i in sel_faces]]))
            if lpips_net is not None:
                a = torch.from_numpy(gv[[pos[i] for i in lpips_faces]]).permute(0, 3, 1, 2).float() / 255
                b = torch.from_numpy(rv[[pos[i] for i in lpips_faces]]).permute(0, 3, 1, 2).float() / 255
                row[f"lpips[{lpips_net.name}]"] = float(lpips_net(a.to(device), b.to(device)).mean())
        if clip_scorer is not None:
            from opama_model.spherical import equi_to_pers

            clip_img.append(clip_scorer.image_embeds(g8[None]))
            views = _to_uint8_views(equi_to_pers(g, clip_yaws, 0.0, 90.0, (224, 224))[0])
            clip_views.append(clip_scorer.image_embeds(views))
        if captioner is not None:
            row["gen_caption"] = captioner.caption(g8[None])[0]
        elif gen_caps:
            row["gen_caption"] = gen_caps.get(rel)
        if ref_caps:
            row["ref_caption"] = ref_caps.get(rel)
        rows.append(row)
        if progress:
            progress(k + 1, len(pairs), rel)

    per_image = pd.DataFrame(rows)
    n_ok = len(rows)

    def add_unavailable(key: str, label: str, reason: str, better: str) -> None:
        results.append(MetricResult(key=key, label=label, status="unavailable", better=better, detail=reason))

    # ---- set metrics ------------------------------------------------------------
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for key, fam_label, better in (
            ("fid", "FID", "lower"),
            ("kid", "KID", "lower"),
            ("omnifid", "OmniFID", "lower"),
            ("fidh", "FID-h", "lower"),
        ):
            if key not in want:
                continue
            for net_key, canon in (("fid-clip", "clip_vit_b_32"), ("inception", "inception")):
                net = next((n for n in feat_nets if (n is inception) == (net_key == "inception")), None)
                if net is None:
                    add_unavailable(
                        f"{key}[{canon}]", f"{fam_label}[{canon}]", unavailable.get(net_key, "network not loaded"), better
                    )
                    continue
                st = feats[id(net)]
                label = f"{fam_label}[{net.name}]"
                mk = f"{key}[{net.name}]"
                if n_ok < 2:
                    results.append(MetricResult(mk, label, "failed", better=better, network=net.name, n=n_ok,
                                                detail="needs at least 2 evaluated pairs"))
                    continue

                def stack(side: str, idx: list[int], sel: np.ndarray | None = None) -> np.ndarray:
                    arr = np.stack([np.stack(st[side][i]) for i in idx], axis=1)  # (P, V, D)
                    if sel is not None:
                        arr = arr[sel]
                    return arr.reshape(-1, arr.shape[-1])

                try:
                    if key == "fid":
                        val = F.fid_fast(stack("gen", sel_faces), stack("ref", sel_faces))
                        lo, hi = F.bootstrap_set_metric(
                            lambda s: F.fid_fast(stack("gen", sel_faces, s), stack("ref", sel_faces, s)),
                            n_ok, opt.set_bootstrap, opt.seed)
                        ci = "bootstrap over panoramas"
                    elif key == "fidh":
                        h8 = list(_HORIZONTAL8)
                        val = F.fid_fast(stack("gen", h8), stack("ref", h8))
                        lo, hi = F.bootstrap_set_metric(
                            lambda s: F.fid_fast(stack("gen", h8, s), stack("ref", h8, s)), n_ok, opt.set_bootstrap, opt.seed)
                        ci = "bootstrap over panoramas"
                    elif key == "omnifid":
                        sides = list(_SIDES)

                        def omni(s=None):
                            fn = F.fid_fast
                            return float(np.mean([
                                fn(stack("gen", [4], s), stack("ref", [4], s)),
                                fn(stack("gen", [5], s), stack("ref", [5], s)),
                                fn(stack("gen", sides, s), stack("ref", sides, s)),
                            ]))

                        val = omni()
                        lo, hi = F.bootstrap_set_metric(omni, n_ok, opt.set_bootstrap, opt.seed)
                        ci = "bootstrap over panoramas"
                    else:  # kid
                        sub = F.kid_subsets(stack("gen", sel_faces), stack("ref", sel_faces), opt.kid_subsets, 1000, opt.seed)
                        val = float(sub.mean())
                        sd = float(sub.std())
                        lo, hi = val - sd, val + sd
                        ci = f"± std over {opt.kid_subsets} subsets"
                    results.append(MetricResult(mk, label, "ok", val, lo, hi, ci, better, net.name, n_ok))
                except Exception as e:  # numerical failure: report, keep going
                    results.append(MetricResult(mk, label, "failed", better=better, network=net.name, n=n_ok,
                                                detail=f"{type(e).__name__}: {e}"))
        if "is" in want:
            if inception is None:
                add_unavailable("is[inception]", "IS[inception]", unavailable.get("inception", "network not loaded"), "higher")
            elif not is_logits:
                results.append(MetricResult(f"is[{inception.name}]", f"IS[{inception.name}]", "failed",
                                            better="higher", detail="no image evaluated"))
            else:
                m, s = F.inception_score(torch.cat(is_logits), opt.is_splits, opt.seed)
                results.append(MetricResult(f"is[{inception.name}]", f"IS[{inception.name}]", "ok", m, m - s, m + s,
                                            f"± std over {opt.is_splits} splits", "higher", inception.name, n_ok))

    # ---- CLIP score, SC (text side) --------------------------------------------------
    if clip_scorer is not None and n_ok:
        caps = [ref_caps.get(r["image"]) for r in rows]
        have = [i for i, c in enumerate(caps) if c]
        whole = np.full(n_ok, np.nan)
        nfov = np.full(n_ok, np.nan)
        if have:
            from opama_tools.metrics.clip_score import clip_score_from_embeds

            txt = clip_scorer.text_embeds([caps[i] for i in have])
            img = torch.cat([clip_img[i] for i in have])
            whole[have] = clip_score_from_embeds(img, txt).numpy()
            for j, i in enumerate(have):
                v = clip_views[i]
                nfov[i] = float(clip_score_from_embeds(v, txt[j : j + 1].expand(v.shape[0], -1)).mean())
        per_image[f"clip[{clip_scorer.name}]"] = whole
        per_image[f"clip_nfov[{clip_scorer.name}]"] = nfov
        if len(have) < n_ok:
            say(f"clip: {n_ok - len(have)} panoramas have no caption in {opt.captions}")
    if sent_model is not None and n_ok:
        pairs_sc = [(i, r.get("gen_caption"), r.get("ref_caption")) for i, r in enumerate(rows)]
        ok = [(i, gc, rc) for i, gc, rc in pairs_sc if gc and rc]
        sc = np.full(n_ok, np.nan)
        if ok:
            from opama_tools.metrics.sc import sc_scores

            sc[[i for i, _, _ in ok]] = sc_scores(sent_model, [g for _, g, _ in ok], [r for _, _, r in ok])
        per_image[f"sc[{sent_model.name}]"] = sc
        if len(ok) < n_ok:
            say(f"sc: {n_ok - len(ok)} panoramas lack a generated or reference caption")

    # ---- per-image metrics -> table rows -----------------------------------------
    def per_image_metric(key: str, col: str, label: str, better: str, network: str | None, note: str = "") -> None:
        if col not in per_image.columns:
            results.append(MetricResult(key, label, "failed", better=better, network=network, detail="no image evaluated"))
            return
        m, lo, hi, n = _mean_ci(per_image[col].to_numpy(dtype=float), opt.bootstrap, opt.seed)
        if n == 0:
            results.append(MetricResult(key, label, "failed", better=better, network=network,
                                        detail="no value (missing captions?)"))
            return
        results.append(MetricResult(key, label, "ok", m, lo, hi, "bootstrap of the mean", better, network, n, note))

    if "lpips" in want:
        if lpips_net is None:
            add_unavailable("lpips[squeezenet1_1]", "LPIPS[squeezenet1_1]", unavailable.get("lpips", ""), "lower")
        else:
            per_image_metric(f"lpips[{lpips_net.name}]", f"lpips[{lpips_net.name}]", f"LPIPS[{lpips_net.name}]", "lower",
                             lpips_net.name, f"{len(lpips_faces)} cube faces of {opt.face_size} px")
    if "clip" in want:
        if clip_scorer is None:
            add_unavailable("clip[clip-vit-base-patch16]", "CLIP[clip-vit-base-patch16]", unavailable.get("clip", ""), "higher")
            add_unavailable("clip_nfov[clip-vit-base-patch16]", "CLIP-NFoV[clip-vit-base-patch16]", unavailable.get("clip", ""), "higher")
        else:
            nm = clip_scorer.name
            per_image_metric(f"clip[{nm}]", f"clip[{nm}]", f"CLIP[{nm}]", "higher", nm, "whole panorama (processor centre crop)")
            per_image_metric(f"clip_nfov[{nm}]", f"clip_nfov[{nm}]", f"CLIP-NFoV[{nm}]", "higher", nm,
                             f"mean over {opt.clip_views} horizontal 90° views")
    if "sc" in want:
        if sent_model is None:
            add_unavailable("sc", "SC", unavailable.get("sc", ""), "higher")
        else:
            src = f"captioner {captioner.name}" if captioner is not None else f"gen captions {opt.gen_captions}"
            per_image_metric(f"sc[{sent_model.name}]", f"sc[{sent_model.name}]", f"SC[{sent_model.name}]", "higher",
                             sent_model.name, src)
    if "psnr" in want:
        per_image_metric("psnr", "psnr", "PSNR (input region, dB)", "higher", None,
                         "masked to the input view; capped at 100 dB")
    if "ssim" in want:
        per_image_metric("ssim", "ssim", "SSIM (input region)", "higher", None, "masked to the input view")
    if "seam" in want:
        per_image_metric("seam", "seam", "seam", "1.0", None, "|col 0 - col W-1| / interior; 1.0 = seamless")
        per_image_metric("seam_ref", "seam_ref", "seam (reference)", "1.0", None, "same, on the reference panoramas")
    if "pole" in want:
        per_image_metric("pole", "pole", "pole variance", "lower", None, "variance along the top/bottom rows")
        per_image_metric("pole_ref", "pole_ref", "pole variance (reference)", "lower", None, "same, on the references")

    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(opt).items()}
    config.update({"gen_dir": str(gen_dir), "ref_dir": str(ref_dir), "device": device})
    res = EvalResult(results, per_image, pairs, gen_only, ref_only, failed, config, time.perf_counter() - t0)
    res.samples = [r["image"] for r in rows[: min(4, len(rows))]]
    return res
