"""``opama eval``: pair generated and reference panoramas, run the metrics, collect results.

Protocol (AOG-Net / OPa-Ma evaluation, see the facts file):

* panoramas are PNG/JPEG equirects (8-bit; 16-bit PNGs are reduced to 8 bit, grey ones
  expanded to RGB), paired by relative path: ``GEN_DIR/a/b.png`` with ``REF_DIR/a/b.png``,
  or, in the layout ``opama outpaint`` writes, ``GEN_DIR/a/b/pano.png`` (+ ``meta.json``)
  with ``REF_DIR/a/b.png``. Generated and reference sizes must match unless ``resize``
  is set (references are then resampled to the generated size, and the report says so);
* cube faces of ``face_size`` px (299) are cut with :func:`opama_model.spherical.equi_to_pers`
  and quantised to 8 bit (as the reference code saves them); the 4 side faces F R B L
  (``faces=6`` adds U D) form the image sets of FID / KID / IS and the pairs of LPIPS;
* OmniFID uses the U, D and side faces (side faces pooled per face, and, as a second row,
  averaged per panorama); FID-h the 8 horizontal 90° views; FAED PanFusion's autoencoder;
* the CLIP score compares the panorama (and the mean over 8 horizontal NFoV views) with
  its reference caption; SC compares a caption of the generated panorama with it;
* weight-free: ``seam``, ``DS`` and ``pole`` of each generated (and reference) panorama;
  PSNR / SSIM on the equirect pixels covered by the input view (yaw 0, pitch 0, fov 90,
  512x512 unless told otherwise) against the reference; and the **generated region**
  (every pixel outside that footprint): PSNR, SSIM, LPIPS (on the cube faces the input
  view does not touch) and colour / gradient histogram distances per latitude band.

A metric whose network is missing is reported ``unavailable`` with what to place where;
the others still run (when none of the requested metrics can, :func:`check_runnable` says which
files are missing). Learned metrics carry the network's name: ``FID[clip_vit_b_32]``. Each
metric's label, direction, group and networks are declared in :mod:`opama_tools.eval.registry`.

:func:`evaluate` reads top to bottom as its stages: :func:`collect_inputs` (pairing,
sizes, what was scored, the cache key), :func:`load_networks`, :func:`score_pairs`
(per-image metrics and the features of the set metrics), :func:`set_metrics`,
:func:`text_metrics`, :func:`summarise_per_image`. :func:`opama_tools.eval.run.run_eval` adds
validation, the skip of a finished run and the report files around it.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from opama_tools.eval import registry
from opama_tools.eval.metrics.features import MetricUnavailable
from opama_tools.images import format_hw

__all__ = [
    "ALL_METRICS",
    "mean_ci",
    "EvalOptions",
    "EvalInputError",
    "MetricResult",
    "EvalResult",
    "EvalInputs",
    "Pair",
    "IMAGE_SUFFIXES",
    "pair_images",
    "collect_inputs",
    "load_image",
    "resolve_device",
    "evaluate",
    "parse_metrics",
    "check_runnable",
    "weight_free_metrics",
]

ALL_METRICS = registry.OPTIONS  # the --metrics names (declared in opama_tools.eval.registry)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
LEARNED = registry.LEARNED

# view index -> (yaw, pitch): 0-5 cube faces F R B L U D, 6-9 the diagonal horizontal views
_VIEWS = ((0, 0), (90, 0), (180, 0), (-90, 0), (0, 90), (0, -90), (45, 0), (135, 0), (-135, 0), (-45, 0))
_SIDES = (0, 1, 2, 3)
_HORIZONTAL8 = (0, 6, 1, 7, 2, 8, 3, 9)
_NEEDS_CAPTIONS = "needs the reference captions: pass --captions CAPTIONS.jsonl"


class EvalInputError(ValueError):
    """A user's mistake in the inputs or options; the message names the file or option."""


def parse_metrics(spec: str | None) -> tuple[str, ...]:
    """``"fid,seam"`` -> ``("fid", "seam")``; ``None``/``"all"`` -> every metric (for videos also the
    temporal ones, :data:`registry.VIDEO_OPTIONS`). Unknown names raise ValueError."""
    if spec is None or spec.strip().lower() in ("", "all"):
        return ALL_METRICS
    known = ALL_METRICS + registry.VIDEO_OPTIONS
    names = []
    for raw in spec.split(","):
        n = raw.strip().lower().replace("-", "")
        n = registry.ALIASES.get(n, n)
        if not n:
            continue
        if n not in known:
            raise ValueError(f"--metrics: unknown metric {raw.strip()!r}; known: {', '.join(known)}")
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
    faed_weights: str | None = None
    sentence_model: str | None = None
    captioner: str | None = None
    device: str = "auto"
    input_yaw: float = 0.0
    input_pitch: float = 0.0
    input_fov: float = 90.0
    input_size: int = 512
    resize: bool = False
    faed_height: int = 512
    clip_views: int = 8
    kid_subsets: int = 100
    is_splits: int = 10
    bootstrap: int = 1000
    set_bootstrap: int = 50
    seed: int = 0

    def validate(self) -> None:
        """Raise :class:`EvalInputError` naming the flag of the first invalid value."""
        import math

        def bad(flag: str, rule: str, value) -> EvalInputError:
            return EvalInputError(f"{flag} must be {rule}, got {value}")

        if self.faces not in (4, 6):
            raise bad("--faces", "4 or 6", self.faces)
        if self.face_size < 16:
            raise bad("--face-size", "at least 16 pixels", self.face_size)
        if not (math.isfinite(self.input_fov) and 0 < self.input_fov < 180):
            raise bad("--input-fov", "between 0 and 180 degrees (exclusive)", self.input_fov)
        if self.input_size < 1:
            raise bad("--input-size", "a positive number of pixels", self.input_size)
        for flag, v in (("--input-yaw", self.input_yaw), ("--input-pitch", self.input_pitch)):
            if not math.isfinite(v):
                raise bad(flag, "finite", v)
        if abs(self.input_pitch) > 90:
            raise bad("--input-pitch", "within [-90, 90] degrees", self.input_pitch)
        if self.faed_height < 64 or self.faed_height % 32:
            raise bad("--faed-height", "a multiple of 32, at least 64", self.faed_height)
        for flag, v, lo in (("--clip-views", self.clip_views, 1), ("--kid-subsets", self.kid_subsets, 1),
                            ("--is-splits", self.is_splits, 1), ("--bootstrap", self.bootstrap, 0),
                            ("--set-bootstrap", self.set_bootstrap, 0), ("--seed", self.seed, 0)):
            if v < lo:
                raise bad(flag, f">= {lo}", v)
        for net in registry.NETWORKS.values():  # an explicit weight path must exist, used or not
            path = getattr(self, net.option)
            if path and not Path(path).expanduser().exists():
                raise EvalInputError(f"{net.flag} {path}: not found")
        resolve_device(self.device)


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
    group: str = ""  # input | generated | whole | seam | text


@dataclass
class Pair:
    """One generated panorama and its reference; ``meta`` is the outpainting ``meta.json`` (or {})."""

    rel: str
    gen: Path
    ref: Path
    meta: dict = field(default_factory=dict)


@dataclass
class EvalInputs:
    """Stage 1 (:func:`collect_inputs`): the pairs, what is unpaired, what was scored, and what
    identifies the run for the job layer: ``source`` (:func:`opama_tools.jobs.source_signature`
    of the input files) and ``settings`` (:func:`opama_tools.jobs.settings_key` of the options
    and the pairing)."""

    pairs: list[Pair]
    gen_only: list[str]
    ref_only: list[str]
    scored: dict
    source: str
    settings: str
    resized: list[str] = field(default_factory=list)
    ref_caps: dict[str, str] = field(default_factory=dict)
    gen_caps: dict[str, str] = field(default_factory=dict)


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
    samples: list[tuple[str, str, str]] = field(default_factory=list)  # (name, generated path, reference path)
    scored: dict = field(default_factory=dict)
    done: dict = field(default_factory=dict)  # the job layer's done fields {"source", "settings"} of the inputs
    per_frame: "object" = None  # videos: pandas.DataFrame, one row per frame (written as per_frame.csv)
    sample_frames: list = field(default_factory=list)  # videos: (title, input mask, generated, reference) frames

    @property
    def ran_any(self) -> bool:
        return any(m.status == "ok" for m in self.metrics)

    def to_json(self) -> dict:
        return {
            "scored": self.scored,
            "metrics": [asdict(m) for m in self.metrics],
            "pairs": len(self.pairs),
            "gen_only": self.gen_only,
            "ref_only": self.ref_only,
            "failed": [{"path": p, "reason": r} for p, r in self.failed],
            "config": self.config,
            "seconds": self.seconds,
            **self.done,
        }


# ---- stage 1: pairing and loading ------------------------------------------------------------


def visible_files(root: Path, suffixes) -> Iterator[tuple[Path, Path]]:
    """``(path, path relative to root)`` of the files under ``root`` whose suffix (lower case) is in
    ``suffixes``, in sorted order; files in hidden folders and hidden files are skipped."""
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or p.suffix.lower() not in suffixes or not p.is_file():
            continue
        yield p, rel


def _list_images(root: Path, generated: bool = False) -> dict[str, Path]:
    """``{pairing key: path}`` of the images under ``root`` (hidden files skipped).

    With ``generated``, ``a/b/pano.png`` counts as ``a/b.png`` (the outpaint layout); a
    flat ``a/b.png`` wins if both exist. The other images ``opama outpaint`` writes beside a
    ``pano.png`` (:func:`_outpaint_side_file`) are not panoramas and are left out.
    """
    out: dict[str, Path] = {}
    nested: dict[str, Path] = {}
    for p, rel in visible_files(root, IMAGE_SUFFIXES):
        if generated and len(rel.parts) > 1 and _outpaint_side_file(p):
            continue
        if generated and p.stem == "pano" and len(rel.parts) > 1:
            nested[rel.parent.as_posix() + p.suffix.lower()] = p
        else:
            out[rel.as_posix()] = p
    for k, p in nested.items():
        out.setdefault(k, p)
    return out


def _outpaint_side_file(p: Path) -> bool:
    """``p`` is ``input_mask.png`` or a cube face ``cube_F.png`` ... ``cube_D.png`` in a folder
    that holds a ``pano`` image: a side file of the outpaint layout, not a panorama."""
    stem = p.stem
    if stem != "input_mask" and not (stem.startswith("cube_") and stem[5:] in tuple("FRBLUD")):
        return False
    return any((p.parent / f"pano{suf}").is_file() for suf in IMAGE_SUFFIXES)


def _ref_lookup(refs: dict[str, Path], key: str) -> str | None:
    """Reference key for generated ``key``: the same path, or the same path with another image suffix."""
    if key in refs:
        return key
    stem = key.rsplit(".", 1)[0]
    for suf in IMAGE_SUFFIXES:
        if f"{stem}{suf}" in refs:
            return f"{stem}{suf}"
    return None


def pair_images(gen_dir: str | Path, ref_dir: str | Path) -> tuple[list[tuple[str, Path, Path]], list[str], list[str]]:
    """``([(key, generated path, reference path)], only in GEN_DIR, only in REF_DIR)``, sorted by key."""
    g = _list_images(Path(gen_dir), generated=True)
    r = _list_images(Path(ref_dir))
    pairs, used = [], set()
    for key in sorted(g):
        rk = _ref_lookup(r, key)
        if rk is None or rk in used:
            continue
        used.add(rk)
        pairs.append((rk, g[key], r[rk]))
    paired_gen = {str(gp) for _, gp, _ in pairs}
    gen_only = sorted(k for k, p in g.items() if str(p) not in paired_gen)
    return pairs, gen_only, sorted(set(r) - used)


def _image_size(path: Path) -> tuple[int, int] | None:
    """``(H, W)`` as the image reader decodes it (EXIF orientation applied), from the file header,
    or None if unreadable (stage 3 reports it)."""
    from opama_tools.images import image_hw

    try:
        return image_hw(path)
    except ValueError:
        return None


def _read_meta(gen_path: Path) -> dict:
    """The outpainting ``meta.json`` beside ``…/name/pano.png`` (or ``{}``)."""
    if gen_path.stem != "pano":
        return {}
    p = gen_path.parent / "meta.json"
    if not p.is_file():
        return {}
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EvalInputError(f"{p}: not valid JSON ({e})") from e
    return d if isinstance(d, dict) else {}


def _summarise_scored(metas: list[dict]) -> dict:
    """``{"method": ..., "model_id": ..., "procedure": ...}`` over the panoramas' meta.json (mixed values listed)."""
    out = {}
    for key in ("method", "model_id", "procedure"):
        vals = sorted({json.dumps(m[key], sort_keys=True) if not isinstance(m[key], str) else m[key]
                       for m in metas if m.get(key) not in (None, "")})
        if vals:
            out[key] = vals[0] if len(vals) == 1 else "mixed: " + ", ".join(vals)
    if metas:
        out["with_meta"] = sum(1 for m in metas if m)
    return out


def collect_inputs(gen_dir: str | Path, ref_dir: str | Path, opt: EvalOptions, method: str | None = None) -> EvalInputs:
    """Stage 1: pair the folders, read every ``meta.json`` and the caption files, check sizes, key the run.

    Raises :class:`EvalInputError` when nothing pairs, a ``meta.json`` or caption line is broken, or a
    generated panorama and its reference differ in size (unless ``opt.resize``);
    unreadable images are left to stage 3, which reports them per pair. The run's identity
    (the job layer's): ``source``, the content signature of every paired image, ``meta.json``,
    caption file and explicitly given weight file; ``settings``, the key of the options (except
    the device), the method, the folders and the pairing (paired, unpaired and unreadable
    names). The same source and settings compute the same report.
    """
    from opama_tools.jobs import settings_key, source_signature

    gen_dir, ref_dir = Path(gen_dir), Path(ref_dir)
    raw, gen_only, ref_only = pair_images(gen_dir, ref_dir)
    if not raw:
        n_gen = len(gen_only)
        what = "no images" if not n_gen and not ref_only else f"{n_gen} generated and {len(ref_only)} reference images, none with the same name"
        raise EvalInputError(f"{gen_dir} and {ref_dir}: nothing to evaluate ({what})")
    pairs, resized, files, names = [], [], [], []
    for rel, gp, rp in raw:
        gs, rs = _image_size(gp), _image_size(rp)
        if gs is not None and rs is not None and gs != rs:
            if not opt.resize:
                raise EvalInputError(
                    f"{gp}: {format_hw(*gs)} but its reference {rp} is {format_hw(*rs)} (HxW); pass --resize to resample "
                    "the references to the generated size (the report says so)")
            resized.append(rel)
        meta = _read_meta(gp)
        pairs.append(Pair(rel, gp, rp, meta))
        files += [gp, rp] + ([gp.parent / "meta.json"] if meta else [])
        names.append([rel, gp.relative_to(gen_dir).as_posix(), rp.relative_to(ref_dir).as_posix(), bool(meta)])
    caps = [_read_caption_file(opt.captions), _read_caption_file(opt.gen_captions)]
    scored = _summarise_scored([p.meta for p in pairs])
    if method:
        scored["method"] = method
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(opt).items() if k != "device"}
    given = ("captions", "gen_captions", *(n.option for n in registry.NETWORKS.values()))
    files += [Path(getattr(opt, f)).expanduser() for f in given if getattr(opt, f)]
    unreadable = [str(f) for f in files if not os.access(f, os.R_OK)]  # stage 3 reports unreadable images
    source = source_signature([f for f in files if str(f) not in unreadable])
    key = settings_key("eval", settings, {"pairs": names, "gen_only": gen_only, "ref_only": ref_only,
                                          "unreadable": unreadable, "method": method, "gen_dir": str(gen_dir),
                                          "ref_dir": str(ref_dir)})
    return EvalInputs(pairs, gen_only, ref_only, scored, source, key, resized, *caps)


def _read_caption_file(path: str | None) -> dict[str, str]:
    """``read_captions(path)`` (or {}), errors as :class:`EvalInputError` naming the file (and line)."""
    if not path:
        return {}
    from opama_tools.eval.metrics.sc import read_captions

    try:
        return read_captions(path)
    except ValueError as e:  # read_captions names the file and line
        if isinstance(e, UnicodeDecodeError):
            raise EvalInputError(f"{path}: not UTF-8 text (byte {e.start})") from None
        raise EvalInputError(_one_line(str(e))) from None
    except OSError as e:
        raise EvalInputError(f"{path}: cannot read ({e.strerror or e})") from None


def load_image(path: str | Path) -> np.ndarray:
    """8-bit RGB ``(H, W, 3)`` of an equirect image; ``ValueError`` unless W == 2 H.

    Read by :func:`opama_tools.images.read_ldr` (grey expanded, alpha dropped, EXIF orientation
    applied); 16-bit PNGs are scaled by 255/65535 and rounded.
    """
    from opama_tools.images import read_ldr, to_uint8

    a = to_uint8(read_ldr(path))
    h, w = a.shape[:2]
    if w != 2 * h:
        raise ValueError(f"not a 2:1 equirect panorama ({h}x{w} px, HxW)")
    if h < 8:
        raise ValueError(f"too small ({h}x{w} px, HxW)")
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


def resolve_device(device: str) -> str:
    """The device string :func:`opama_tools.devices.resolve_device` resolves ``device`` to
    (``auto`` = CUDA if present, else CPU); :class:`EvalInputError` (one line) otherwise."""
    from opama_tools.devices import resolve_device as resolve

    try:
        return str(resolve(device))
    except ValueError as e:
        raise EvalInputError(str(e)) from None


def mean_ci(values: np.ndarray, reps: int, seed: int) -> tuple[float, float, float, int]:
    """``(mean, lo, hi, n)`` of the finite ``values``: the mean and its 95% percentile-bootstrap
    interval (``reps`` resamples drawn with ``numpy.random.default_rng(seed)``; NaN bounds when
    ``reps <= 0`` or fewer than 2 values)."""
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


# ---- stage 2: networks (each may be unavailable) ----------------------------------------------


@dataclass
class Networks:
    """The loaded metric networks; ``unavailable[key]`` says why one is missing."""

    feat_nets: list = field(default_factory=list)
    inception: object = None
    lpips: object = None
    clip: object = None
    sentence: object = None
    captioner: object = None
    faed: object = None
    unavailable: dict = field(default_factory=dict)  # network key (registry.NETWORKS) -> reason

    def get(self, key: str):
        """The loaded network of registry key ``key`` (``fid-clip``, ``inception``, ``lpips`` ...), or None."""
        if key == "fid-clip":
            return next((n for n in self.feat_nets if n is not self.inception), None)
        return getattr(self, key)


def _one_line(msg: str, limit: int = 400) -> str:
    s = " ".join(str(msg).split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _load(nets: Networks, key: str, load: Callable[[], object], explicit: str | None, flag: str):
    """``load()``, or None with the reason in ``nets.unavailable[key]``.

    A path the user passed explicitly (``flag``) that cannot be loaded is a user error:
    :class:`EvalInputError` naming the flag and the file.
    """
    try:
        return load()
    except MetricUnavailable as e:
        if explicit:
            raise EvalInputError(_one_line(f"{flag} {explicit}: {e}")) from None
        nets.unavailable[key] = _one_line(str(e), 1000)
        return None


def load_networks(opt: EvalOptions, device: str, log: Callable[[str], None]) -> Networks:
    """Stage 2: load what the requested metrics need, from local files only."""
    need = registry.networks_for(opt.metrics)
    nets = Networks()
    if need & {"fid-clip", "inception"}:
        from opama_tools.eval.metrics.features import load_fid_clip, load_inception

        for key, loader, explicit, flag in (
            ("fid-clip", load_fid_clip, opt.fid_clip_weights, "--fid-clip-weights"),
            ("inception", load_inception, opt.inception_weights, "--inception-weights"),
        ):
            net = _load(nets, key, lambda: loader(explicit).to(device), explicit, flag)
            if net is None:
                continue
            nets.feat_nets.append(net)
            if key == "inception":
                nets.inception = net
            log(f"{key}: {net.name} from {net.path}")
    if "lpips" in need:
        from opama_tools.eval.metrics.lpips import load_lpips

        nets.lpips = _load(nets, "lpips", lambda: load_lpips(opt.lpips_weights).to(device), opt.lpips_weights,
                           "--lpips-weights")
    if "faed" in need:
        from opama_tools.eval.metrics.faed import load_faed

        nets.faed = _load(nets, "faed", lambda: load_faed(opt.faed_weights, opt.faed_height).to(device),
                          opt.faed_weights, "--faed-weights")
    if "clip" in need:
        if not opt.captions:
            nets.unavailable["clip"] = _NEEDS_CAPTIONS
        else:
            from opama_tools.eval.metrics.clip_score import load_clip_scorer

            nets.clip = _load(nets, "clip", lambda: load_clip_scorer(opt.clip_weights, device), opt.clip_weights,
                              "--clip-weights")
    if "sentence" in need:
        from opama_tools.eval.metrics.sc import load_captioner, load_sentence_model

        if not opt.captions:
            nets.unavailable["sentence"] = _NEEDS_CAPTIONS
        else:
            nets.sentence = _load(nets, "sentence", lambda: load_sentence_model(opt.sentence_model, device),
                                  opt.sentence_model, "--sentence-model")
            if nets.sentence is not None and not opt.gen_captions:
                try:
                    nets.captioner = load_captioner(opt.captioner, device)
                except MetricUnavailable as e:
                    if opt.captioner:
                        raise EvalInputError(_one_line(f"--captioner {opt.captioner}: {e}")) from None
                    nets.sentence = None
                    nets.unavailable["sentence"] = (
                        "needs captions of the generated panoramas: pass --gen-captions GEN_CAPTIONS.jsonl "
                        f"(`opama caption GEN_DIR GEN_CAPTIONS.jsonl`), or a BLIP captioner: {_one_line(str(e))}"
                    )
    return nets


def check_runnable(opt: EvalOptions, nets: Networks) -> None:
    """:class:`EvalInputError` when no requested metric can run with ``nets``: one line naming,
    per missing network, the files and where they are looked for (or the missing captions)."""
    wanted = registry.metrics_for(opt.metrics)
    if any(not m.learned or any(nets.get(n) is not None for n in m.networks) for m in wanted):
        return
    missing = {n: nets.unavailable.get(n, "network not loaded") for m in wanted for n in m.networks}
    why = "; ".join(f"{n}: {reason}" for n, reason in missing.items())
    raise EvalInputError(f"--metrics {','.join(opt.metrics)}: no requested metric can run here ({why}); "
                         "see `opama doctor`")


# ---- stage 3: per-image metrics and the features of the set metrics ---------------------------


@dataclass
class Scores:
    """What :func:`score_pairs` gathers: one row per evaluated pair and per-network features."""

    rows: list[dict] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    sel_faces: list[int] = field(default_factory=list)
    feat_views: list[int] = field(default_factory=list)
    feats: dict = field(default_factory=dict)  # id(net) -> {"gen"|"ref": {view: [features]}}
    is_logits: list = field(default_factory=list)
    clip_img: list = field(default_factory=list)
    clip_views: list = field(default_factory=list)
    faed: dict = field(default_factory=lambda: {"gen": [], "ref": []})
    lpips_faces: list[int] = field(default_factory=list)
    lpips_gen_faces: list[int] = field(default_factory=list)


def _face_coverage(mask: torch.Tensor, faces: list[int], size: int = 64) -> list[float]:
    """Fraction of each cube face's pixels inside the equirect ``mask`` (nearest sampling)."""
    from opama_model.spherical import equi_to_pers

    m = mask.float()[None, None].expand(1, 1, *mask.shape)
    v = equi_to_pers(m, [_VIEWS[i][0] for i in faces], [_VIEWS[i][1] for i in faces], 90.0, (size, size))[0]
    return [float((v[j] > 0.5).float().mean()) for j in range(len(faces))]


def weight_free_metrics(g: torch.Tensor, r: torch.Tensor, m_in: torch.Tensor | None, want: set[str]) -> dict:
    """The weight-free per-image columns of generated ``g`` against reference ``r`` (``(1, 3, H, W)`` in
    [0, 1]) for the ``--metrics`` names ``want``: ``seam``/``ds``/``pole`` (and their ``_ref``), and with
    the input mask ``m_in`` (``(H, W)`` bool, True = input view) ``psnr``/``ssim`` on it and the
    generated-region columns (``gen_psnr``, ``gen_ssim``, ``gen_colour``, ``gen_gradient``) outside it.
    Images call it once per pair, videos once per frame; the dict's order is the CSV's column order."""
    from opama_tools.eval.metrics.ds import discontinuity_score
    from opama_tools.eval.metrics.panorama import masked_psnr, masked_ssim, pole_variance, seam_score, ssim_means
    from opama_tools.eval.metrics.region import colour_distance, gradient_distance

    row: dict = {}
    if "seam" in want:
        row["seam"] = float(seam_score(g)[0])
        row["seam_ref"] = float(seam_score(r)[0])
    if "ds" in want:
        row["ds"] = float(discontinuity_score(g)[0])
        row["ds_ref"] = float(discontinuity_score(r)[0])
    if "pole" in want:
        row["pole"] = float(pole_variance(g)[0])
        row["pole_ref"] = float(pole_variance(r)[0])
    if m_in is None:
        return row
    if "psnr" in want:
        row["psnr"] = float(masked_psnr(g, r, m_in)[0])
    region = "region" in want and bool((~m_in).any())
    if region:
        m_gen = ~m_in
        row["gen_psnr"] = float(masked_psnr(g, r, m_gen)[0])
        if "ssim" in want:  # one full-image SSIM map for both regions
            s_in, s_gen = ssim_means(g, r, [m_in, m_gen])
            row["ssim"], row["gen_ssim"] = float(s_in[0]), float(s_gen[0])
        else:
            row["gen_ssim"] = float(ssim_means(g, r, [m_gen])[0][0])
    elif "ssim" in want:
        row["ssim"] = float(masked_ssim(g, r, m_in)[0])
    if region:
        row["gen_colour"] = float(colour_distance(g, r, m_gen)[0])
        row["gen_gradient"] = float(gradient_distance(g, r, m_gen)[0])
    return row


def score_pairs(inputs: EvalInputs, nets: Networks, opt: EvalOptions, device: str,
                ref_caps: dict[str, str], gen_caps: dict[str, str],
                progress: Callable[[int, int, str], None] | None = None) -> Scores:
    """Stage 3: load each pair once; per-image metrics into ``rows``, set-metric features aside."""
    from opama_tools.eval.metrics.panorama import input_coverage_mask, resize_like

    want = set(opt.metrics)
    sc = Scores(sel_faces=list(range(6)) if opt.faces == 6 else list(_SIDES))
    views: set[int] = set()
    if nets.feat_nets and want & {"fid", "kid", "is"}:
        views |= set(sc.sel_faces)
    if nets.feat_nets and "omnifid" in want:
        views |= {0, 1, 2, 3, 4, 5}
    if nets.feat_nets and "fidh" in want:
        views |= set(_HORIZONTAL8)
    sc.feat_views = sorted(views)
    if nets.lpips is not None and "lpips" in want:
        sc.lpips_faces = list(sc.sel_faces)
    cut = sorted(views | set(sc.sel_faces if nets.lpips is not None else []))
    sc.feats = {id(n): {"gen": {i: [] for i in sc.feat_views}, "ref": {i: [] for i in sc.feat_views}}
                for n in nets.feat_nets}
    masks: dict[tuple[int, int], torch.Tensor] = {}
    clip_yaws = [k * 360.0 / opt.clip_views for k in range(opt.clip_views)]
    need_masks = want & {"psnr", "ssim", "region"}

    for k, pair in enumerate(inputs.pairs):
        g8 = r8 = None
        try:
            g8 = load_image(pair.gen)
        except Exception as e:
            sc.failed.append((str(pair.gen), f"{type(e).__name__}: {e}"))
        try:
            r8 = load_image(pair.ref) if g8 is not None else None
        except Exception as e:
            sc.failed.append((str(pair.ref), f"{type(e).__name__}: {e}"))
        if g8 is None or r8 is None:
            if progress:
                progress(k + 1, len(inputs.pairs), pair.rel)
            continue
        g = _to_tensor(g8)
        r = _to_tensor(r8)
        if g.shape != r.shape:  # only with --resize (collect_inputs refuses otherwise)
            r = resize_like(r, tuple(g.shape[-2:]))
            r8 = _to_uint8_views(r)[0]
        row: dict = {"image": pair.rel}
        m_in = None
        if need_masks:
            hw = tuple(g.shape[-2:])
            if hw not in masks:
                masks[hw] = input_coverage_mask(
                    hw[0], hw[1], opt.input_yaw, opt.input_pitch, opt.input_fov, (opt.input_size, opt.input_size)
                )
                if nets.lpips is not None and "region" in want and not sc.lpips_gen_faces:
                    cov = _face_coverage(masks[hw], sc.sel_faces)
                    sc.lpips_gen_faces = [f for f, c in zip(sc.sel_faces, cov) if c < 0.01]
            m_in = masks[hw]
        row.update(weight_free_metrics(g, r, m_in, want))
        lp_cut = sorted(set(cut) | set(sc.lpips_gen_faces))
        if lp_cut:
            gv = _cut_views(g, lp_cut, opt.face_size)
            rv = _cut_views(r, lp_cut, opt.face_size)
            pos = {i: j for j, i in enumerate(lp_cut)}
            vi = sc.feat_views
            for net in nets.feat_nets if vi else []:
                fg = net.features(gv[[pos[i] for i in vi]])
                fr = net.features(rv[[pos[i] for i in vi]])
                for j, i in enumerate(vi):
                    sc.feats[id(net)]["gen"][i].append(fg[j])
                    sc.feats[id(net)]["ref"][i].append(fr[j])
            if nets.inception is not None and "is" in want:
                sc.is_logits.append(nets.inception.is_logits(gv[[pos[i] for i in sc.sel_faces]]))

            def lp(faces: list[int]) -> float:
                a = torch.from_numpy(gv[[pos[i] for i in faces]]).permute(0, 3, 1, 2).float() / 255
                b = torch.from_numpy(rv[[pos[i] for i in faces]]).permute(0, 3, 1, 2).float() / 255
                return float(nets.lpips(a.to(device), b.to(device)).mean())

            if sc.lpips_faces:
                row[f"lpips[{nets.lpips.name}]"] = lp(sc.lpips_faces)
            if sc.lpips_gen_faces:
                row[f"gen_lpips[{nets.lpips.name}]"] = lp(sc.lpips_gen_faces)
        if nets.faed is not None:
            sc.faed["gen"].append(nets.faed.features(g8[None])[0])
            sc.faed["ref"].append(nets.faed.features(r8[None])[0])
        if nets.clip is not None:
            from opama_model.spherical import equi_to_pers

            sc.clip_img.append(nets.clip.image_embeds(g8[None]))
            cv = _to_uint8_views(equi_to_pers(g, clip_yaws, 0.0, 90.0, (224, 224))[0])
            sc.clip_views.append(nets.clip.image_embeds(cv))
        if nets.captioner is not None:
            row["gen_caption"] = nets.captioner.caption(g8[None])[0]
        elif gen_caps:
            row["gen_caption"] = gen_caps.get(pair.rel)
        if ref_caps:
            row["ref_caption"] = ref_caps.get(pair.rel)
        sc.rows.append(row)
        if progress:
            progress(k + 1, len(inputs.pairs), pair.rel)
    return sc


# ---- stage 4: set metrics (FID family, IS, FAED) ----------------------------------------------


def _result(key: str, status: str, name: str | None = None, value: float | None = None,
            ci: tuple[float | None, float | None] = (None, None), ci_method: str = "", network: str | None = None,
            n: int = 0, detail: str = "") -> MetricResult:
    """A table row of registry metric ``key``; ``name`` (a network's) goes in brackets after its key and label."""
    m = registry.lookup(key)
    br = f"[{name}]" if name else ""
    return MetricResult(f"{key}{br}", f"{m.label}{br}", status, value, ci[0], ci[1], ci_method, m.better, network, n,
                        detail, m.group)


def _unavailable(m: registry.Metric, nets: Networks, default: str) -> MetricResult:
    """The row of metric ``m`` whose network (its first) is not loaded, named by the network's canonical name."""
    net = registry.NETWORKS[m.networks[0]]
    return _result(m.key, "unavailable", net.canonical, detail=nets.unavailable.get(net.key, default))


def set_metrics(sc: Scores, nets: Networks, opt: EvalOptions) -> list[MetricResult]:
    """Stage 4: distribution metrics over the whole set, with bootstrap intervals over panoramas."""
    from opama_tools.eval.metrics import fid as F

    n_ok = len(sc.rows)
    out: list[MetricResult] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for m in registry.metrics_for(opt.metrics):
            if m.scope != "set":
                continue
            if m.key == "faed":
                out.append(_faed_metric(sc, nets, opt, F))
                continue
            if m.key == "is":
                inc = nets.inception
                if inc is None:
                    out.append(_unavailable(m, nets, "network not loaded"))
                elif not sc.is_logits:
                    out.append(_result("is", "failed", inc.name, detail="no image evaluated"))
                else:
                    v, s = F.inception_score(torch.cat(sc.is_logits), opt.is_splits, opt.seed)
                    out.append(_result("is", "ok", inc.name, v, (v - s, v + s), f"± std over {opt.is_splits} splits",
                                       inc.name, n_ok))
                continue
            for net_key in m.networks:  # the FID family: one row per feature network
                net = nets.get(net_key)
                if net is None:
                    canon = registry.NETWORKS[net_key].canonical
                    out.append(_result(m.key, "unavailable", canon,
                                       detail=nets.unavailable.get(net_key, "network not loaded")))
                    continue
                out.append(_one_set_metric(m, net, sc, opt, F))
    return out


def _one_set_metric(m: registry.Metric, net, sc: Scores, opt: EvalOptions, F) -> MetricResult:
    n_ok = len(sc.rows)
    st = sc.feats[id(net)]
    if n_ok < 2:
        return _result(m.key, "failed", net.name, network=net.name, n=n_ok, detail="needs at least 2 evaluated pairs")

    def stack(side: str, idx: list[int], sel: np.ndarray | None = None, per_pano: bool = False) -> np.ndarray:
        arr = np.stack([np.stack(st[side][i]) for i in idx], axis=1)  # (P, V, D)
        if sel is not None:
            arr = arr[sel]
        return arr.mean(axis=1) if per_pano else arr.reshape(-1, arr.shape[-1])

    sel, h8, sides = sc.sel_faces, list(_HORIZONTAL8), list(_SIDES)

    def omni(s=None, per_pano=False):
        return float(np.mean([
            F.fid_fast(stack("gen", [4], s), stack("ref", [4], s)),
            F.fid_fast(stack("gen", [5], s), stack("ref", [5], s)),
            F.fid_fast(stack("gen", sides, s, per_pano), stack("ref", sides, s, per_pano)),
        ]))

    fns = {
        "fid": lambda s=None: F.fid_fast(stack("gen", sel, s), stack("ref", sel, s)),
        "fidh": lambda s=None: F.fid_fast(stack("gen", h8, s), stack("ref", h8, s)),
        "omnifid": lambda s=None: omni(s),
        "omnifid_pano": lambda s=None: omni(s, per_pano=True),
    }
    try:
        if m.key == "kid":
            sub = F.kid_subsets(stack("gen", sel), stack("ref", sel), opt.kid_subsets, 1000, opt.seed)
            val, sd = float(sub.mean()), float(sub.std())
            return _result(m.key, "ok", net.name, val, (val - sd, val + sd), f"± std over {opt.kid_subsets} subsets",
                           net.name, n_ok, m.note)
        fn = fns[m.key]
        val = fn()
        ci = F.bootstrap_set_metric(fn, n_ok, opt.set_bootstrap, opt.seed)
        return _result(m.key, "ok", net.name, val, ci, "bootstrap over panoramas", net.name, n_ok, m.note)
    except Exception as e:  # numerical failure: report, keep going
        return _result(m.key, "failed", net.name, network=net.name, n=n_ok, detail=f"{type(e).__name__}: {e}")


def _faed_metric(sc: Scores, nets: Networks, opt: EvalOptions, F) -> MetricResult:
    n_ok = len(sc.rows)
    if nets.faed is None:
        return _unavailable(registry.lookup("faed"), nets, "network not loaded")
    name = nets.faed.name
    if n_ok < 2:
        return _result("faed", "failed", name, network=name, n=n_ok, detail="needs at least 2 evaluated pairs")
    g, r = np.stack(sc.faed["gen"]), np.stack(sc.faed["ref"])
    try:
        val = F.fid_fast(g, r)
        ci = F.bootstrap_set_metric(lambda s: F.fid_fast(g[s], r[s]), n_ok, opt.set_bootstrap, opt.seed)
    except Exception as e:
        return _result("faed", "failed", name, network=name, n=n_ok, detail=f"{type(e).__name__}: {e}")
    return _result("faed", "ok", name, val, ci, "bootstrap over panoramas", name, n_ok,
                   f"whole panoramas at {opt.faed_height}x{2 * opt.faed_height}")


# ---- stage 5: text metrics (CLIP score, SC) -> per-image columns -----------------------------


def text_metrics(per_image, sc: Scores, nets: Networks, opt: EvalOptions, ref_caps: dict[str, str],
                 log: Callable[[str], None]) -> None:
    """Stage 5: add the CLIP-score and SC columns to ``per_image`` (in place)."""
    n_ok = len(sc.rows)
    if nets.clip is not None and n_ok:
        caps = [ref_caps.get(r["image"]) for r in sc.rows]
        have = [i for i, c in enumerate(caps) if c]
        whole, nfov = np.full(n_ok, np.nan), np.full(n_ok, np.nan)
        if have:
            from opama_tools.eval.metrics.clip_score import clip_score_from_embeds

            txt = nets.clip.text_embeds([caps[i] for i in have])
            img = torch.cat([sc.clip_img[i] for i in have])
            whole[have] = clip_score_from_embeds(img, txt).numpy()
            for j, i in enumerate(have):
                v = sc.clip_views[i]
                nfov[i] = float(clip_score_from_embeds(v, txt[j : j + 1].expand(v.shape[0], -1)).mean())
        per_image[f"clip[{nets.clip.name}]"] = whole
        per_image[f"clip_nfov[{nets.clip.name}]"] = nfov
        if len(have) < n_ok:
            log(f"clip: {n_ok - len(have)} panoramas have no caption in {opt.captions}")
    if nets.sentence is not None and n_ok:
        ok = [(i, r.get("gen_caption"), r.get("ref_caption")) for i, r in enumerate(sc.rows)]
        ok = [(i, gc, rc) for i, gc, rc in ok if gc and rc]
        vals = np.full(n_ok, np.nan)
        if ok:
            from opama_tools.eval.metrics.sc import sc_scores

            vals[[i for i, _, _ in ok]] = sc_scores(nets.sentence, [g for _, g, _ in ok], [r for _, _, r in ok])
        per_image[f"sc[{nets.sentence.name}]"] = vals
        if len(ok) < n_ok:
            log(f"sc: {n_ok - len(ok)} panoramas lack a generated or reference caption")


# ---- stage 6: per-image columns -> table rows ------------------------------------------------


def summarise_per_image(per_image, sc: Scores, nets: Networks, opt: EvalOptions) -> list[MetricResult]:
    """Stage 6: mean and bootstrap interval of every per-image column, in the registry's order."""
    out: list[MetricResult] = []
    notes = {
        "lpips": f"{len(sc.lpips_faces)} cube faces of {opt.face_size} px",
        "gen_lpips": f"cube faces {''.join('FRBLUD'[i] for i in sc.lpips_gen_faces)} (outside the input view)",
        "clip_nfov": f"mean over {opt.clip_views} horizontal 90° views",
    }
    if nets.sentence is not None:
        notes["sc"] = (f"captioner {nets.captioner.name}" if nets.captioner is not None
                       else f"gen captions {opt.gen_captions}")
    for m in registry.metrics_for(opt.metrics):
        if m.scope != "image":
            continue
        net = nets.get(m.networks[0]) if m.learned else None
        if m.learned and net is None:
            out.append(_unavailable(m, nets, ""))
            continue
        name = net.name if net is not None else None
        if m.key == "gen_lpips" and not sc.lpips_gen_faces:
            out.append(_result(m.key, "failed", name, network=name, detail="every cube face overlaps the input view"))
            continue
        col = f"{m.key}[{name}]" if name else m.key
        if col not in per_image.columns:
            out.append(_result(m.key, "failed", name, network=name, detail="no image evaluated"))
            continue
        mean, lo, hi, n = mean_ci(per_image[col].to_numpy(dtype=float), opt.bootstrap, opt.seed)
        if n == 0:
            out.append(_result(m.key, "failed", name, network=name, detail="no value (missing captions?)"))
            continue
        out.append(_result(m.key, "ok", name, mean, (lo, hi), "bootstrap of the mean", name, n,
                           notes.get(m.key, m.note)))
    return out


# ---- the pipeline ----------------------------------------------------------------------------


def evaluate(
    gen_dir: str | Path,
    ref_dir: str | Path,
    options: EvalOptions | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    log: Callable[[str], None] | None = None,
    inputs: EvalInputs | None = None,
) -> EvalResult:
    """Run the requested metrics over the paired panoramas of ``gen_dir`` and ``ref_dir``.

    ``progress(done, total, name)`` is called after each pair; ``log(msg)`` for notes;
    ``inputs`` is a :func:`collect_inputs` result already computed for these folders.
    Raises :class:`EvalInputError` for a user's mistake (bad option, unreadable caption
    file, mismatched sizes, nothing to pair, an explicitly given network that does not
    load); a missing network or an unreadable panorama is reported in the result.
    """
    import pandas as pd

    from opama_tools.jobs import done_fields

    opt = options or EvalOptions()
    opt.validate()
    say = log or (lambda m: None)
    t0 = time.perf_counter()
    device = resolve_device(opt.device)

    # 1. pairing and loading
    inputs = inputs or collect_inputs(gen_dir, ref_dir, opt)
    ref_caps, gen_caps = inputs.ref_caps, inputs.gen_caps
    # 2. networks
    nets = load_networks(opt, device, say)
    check_runnable(opt, nets)
    # 3. per-image metrics (and the features of the set metrics)
    sc = score_pairs(inputs, nets, opt, device, ref_caps, gen_caps, progress)
    per_image = pd.DataFrame(sc.rows)
    # 4. set metrics
    results = set_metrics(sc, nets, opt)
    # 5. text metrics, 6. per-image summaries
    text_metrics(per_image, sc, nets, opt, ref_caps, say)
    results += summarise_per_image(per_image, sc, nets, opt)

    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(opt).items()}
    config.update({"gen_dir": str(gen_dir), "ref_dir": str(ref_dir), "device": device,
                   "resized": inputs.resized})
    order = {"input": 0, "generated": 1, "whole": 2, "text": 3, "seam": 4}
    results.sort(key=lambda m: order.get(m.group, 5))
    evaluated = {r["image"] for r in sc.rows}
    pairs = [p.rel for p in inputs.pairs]
    res = EvalResult(results, per_image, pairs, inputs.gen_only, inputs.ref_only, sc.failed, config,
                     time.perf_counter() - t0, scored=inputs.scored, done=done_fields(inputs.source, inputs.settings))
    res.samples = [(p.rel, str(p.gen), str(p.ref)) for p in inputs.pairs if p.rel in evaluated][:4]
    return res
