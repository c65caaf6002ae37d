"""Every metric of ``opama eval``, declared once: its key, label, direction, networks, scope and region.

The scorer (:mod:`opama_tools.eval.evaluate`), the report and ``eval compare``
(:mod:`opama_tools.eval.report`), the paired tables (:mod:`opama_tools.eval.paired`) and the
demo's page (:mod:`opama_tools.demo.report`) read these declarations; none of them decides
again which way a metric is better.

Keys: a metric's ``key`` is its per-image column (per-image metrics) and the stem of its
report key; a learned metric's report key and label carry its network in brackets
(``fid[inception]``, ``FID[inception]``). :func:`lookup` accepts either form.

Directions (``better``): ``lower``, ``higher``, or ``1.0`` (closest to 1 is best; seam and DS).
The module imports nothing heavy (numpy only inside the functions that compare values), so the
CLI can read it at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Metric",
    "Network",
    "METRICS",
    "NETWORKS",
    "OPTIONS",
    "VIDEO_OPTIONS",
    "ALIASES",
    "LEARNED",
    "GROUPS",
    "GROUP_TITLES",
    "DIRECTIONS",
    "lookup",
    "direction",
    "on_reference",
    "metrics_for",
    "networks_for",
    "badness",
    "a_better",
    "interval_better",
    "beats",
]

DIRECTIONS = ("lower", "higher", "1.0")
GROUPS = ("input", "generated", "whole", "text", "seam", "temporal")
"""Report order of the groups."""
GROUP_TITLES = {"input": "input region", "generated": "generated region", "whole": "whole panorama",
                "text": "text", "seam": "seam and poles", "temporal": "temporal (video)", "": ""}


@dataclass(frozen=True)
class Network:
    """A pretrained network some metrics need.

    ``canonical``: its name in labels when the standard weights are loaded (``None``: no
    bracket in the label of the unavailable row); ``option``: the :class:`EvalOptions` field
    (and ``flag`` the CLI flag) of an explicit path; ``components``: keys in
    :mod:`opama_tools.weights` (where ``opama doctor`` and the loaders look).
    """

    key: str
    canonical: str | None
    option: str
    flag: str
    components: tuple[str, ...]


NETWORKS: dict[str, Network] = {n.key: n for n in (
    Network("fid-clip", "clip_vit_b_32", "fid_clip_weights", "--fid-clip-weights", ("fid-clip",)),
    Network("inception", "inception", "inception_weights", "--inception-weights", ("inception",)),
    Network("lpips", "squeezenet1_1", "lpips_weights", "--lpips-weights", ("lpips",)),
    Network("faed", "panfusion_faed", "faed_weights", "--faed-weights", ("faed",)),
    Network("clip", "clip-vit-base-patch16", "clip_weights", "--clip-weights", ("clip-score",)),
    Network("sentence", None, "sentence_model", "--sentence-model", ("sentence-mpnet", "sentence-minilm")),
    Network("captioner", None, "captioner", "--captioner", ("blip",)),
)}


@dataclass(frozen=True)
class Metric:
    """One row of the report.

    Attributes:
        key: per-image column / report-key stem (``gen_colour``, ``fid``).
        label: report label, without the network bracket (``colour distance (generated)``).
        better: ``lower`` | ``higher`` | ``1.0``.
        group: report group (:data:`GROUPS`).
        option: the ``--metrics`` name that requests it (``region`` for every ``gen_*``).
        networks: network keys (:data:`NETWORKS`); the metric runs with any one of them
            (the FID family once per network). Empty: weight-free.
        scope: ``image`` (a per-image column; mean and bootstrap interval over panoramas;
            for videos per frame), ``set`` (one value over the whole set) or ``video`` (a
            temporal metric of videos only, per frame or frame pair; :mod:`opama_tools.eval.video`).
        region: ``input`` (pixels of the input view), ``generated`` (every other pixel)
            or ``whole``.
        on_reference: computed on the reference panoramas only (the same for every method).
        captions: needs the reference captions (``--captions``).
        note: the report's note (the scorer may give a more specific one).
    """

    key: str
    label: str
    better: str
    group: str
    option: str
    networks: tuple[str, ...] = ()
    scope: str = "image"
    region: str = "whole"
    on_reference: bool = False
    captions: bool = False
    note: str = ""

    @property
    def learned(self) -> bool:
        return bool(self.networks)


_FID_NETS = ("fid-clip", "inception")

METRICS: tuple[Metric, ...] = (
    # set metrics (stage 4 of the scorer), in report order
    Metric("fid", "FID", "lower", "whole", "fid", _FID_NETS, "set", note="cube faces"),
    Metric("kid", "KID", "lower", "whole", "kid", _FID_NETS, "set", note="cube faces"),
    Metric("omnifid", "OmniFID", "lower", "whole", "omnifid", _FID_NETS, "set",
           note="U, D and side faces; side faces pooled per face"),
    Metric("omnifid_pano", "OmniFID-pano", "lower", "whole", "omnifid", _FID_NETS, "set",
           note="U, D and side faces; side-face features averaged per panorama"),
    Metric("fidh", "FID-h", "lower", "whole", "fidh", _FID_NETS, "set", note="8 horizontal 90° views"),
    Metric("is", "IS", "higher", "whole", "is", ("inception",), "set"),
    Metric("faed", "FAED", "lower", "whole", "faed", ("faed",), "set"),
    # per-image metrics (stages 3, 5 and 6), in report order
    Metric("psnr", "PSNR (input region, dB)", "higher", "input", "psnr", region="input",
           note="masked to the input view; capped at 100 dB"),
    Metric("ssim", "SSIM (input region)", "higher", "input", "ssim", region="input", note="masked to the input view"),
    Metric("lpips", "LPIPS", "lower", "whole", "lpips", ("lpips",)),
    Metric("gen_psnr", "PSNR (generated, dB)", "higher", "generated", "region", region="generated",
           note="pixels outside the input view; capped at 100 dB"),
    Metric("gen_ssim", "SSIM (generated)", "higher", "generated", "region", region="generated",
           note="pixels outside the input view"),
    Metric("gen_lpips", "LPIPS (generated)", "lower", "generated", "region", ("lpips",), region="generated"),
    Metric("gen_colour", "colour distance (generated)", "lower", "generated", "region", region="generated",
           note="W1 of cos-weighted RGB histograms per 30° latitude band; 0 = same"),
    Metric("gen_gradient", "gradient distance (generated)", "lower", "generated", "region", region="generated",
           note="W1 of gradient-magnitude histograms per 30° latitude band; 0 = same"),
    Metric("clip", "CLIP", "higher", "text", "clip", ("clip",), captions=True,
           note="whole panorama (processor centre crop)"),
    Metric("clip_nfov", "CLIP-NFoV", "higher", "text", "clip", ("clip",), captions=True),
    Metric("sc", "SC", "higher", "text", "sc", ("sentence",), captions=True),
    Metric("seam", "seam", "1.0", "seam", "seam", note="|col 0 - col W-1| / interior; 1.0 = seamless"),
    Metric("seam_ref", "seam (reference)", "1.0", "seam", "seam", on_reference=True,
           note="same, on the reference panoramas"),
    Metric("ds", "DS", "1.0", "seam", "ds",
           note="Discontinuity Score (arXiv 2407.18207) at ±180°; ≈1 seamless, ≫1 seam"),
    Metric("ds_ref", "DS (reference)", "1.0", "seam", "ds", on_reference=True, note="same, on the reference panoramas"),
    Metric("pole", "pole variance", "lower", "seam", "pole", note="variance along the top/bottom rows"),
    Metric("pole_ref", "pole variance (reference)", "lower", "seam", "pole", on_reference=True,
           note="same, on the references"),
    # temporal metrics of videos (opama_tools.eval.video, opama_tools.eval.metrics.temporal), per frame pair / frame
    Metric("flicker", "flicker (generated)", "lower", "temporal", "flicker", scope="video", region="generated",
           note="mean |frame t - frame t-1| outside both frames' input masks, [0, 1] units"),
    Metric("flicker_ref", "flicker (reference)", "lower", "temporal", "flicker", scope="video", region="generated",
           on_reference=True, note="same pixels, on the reference video: what its own motion gives"),
    Metric("warp_error", "warping error (generated)", "lower", "temporal", "warp", scope="video", region="generated",
           note="mean squared change after the camera-motion warp, on pixels static in the reference"),
    Metric("warp_error_ref", "warping error (reference)", "lower", "temporal", "warp", scope="video",
           region="generated", on_reference=True, note="same pixels, on the reference video"),
    Metric("border", "input-border continuity", "1.0", "temporal", "border", scope="video", region="generated",
           note="per frame: mean |inside - outside| across the input mask's border / the reference's; 1.0 = as "
                "continuous as the reference"),
)

_BY_KEY = {m.key: m for m in METRICS}
_BY_LABEL = {m.label: m for m in METRICS}

OPTIONS: tuple[str, ...] = ("fid", "kid", "is", "omnifid", "fidh", "faed", "clip", "lpips", "sc", "psnr", "ssim",
                            "region", "seam", "ds", "pole")
"""The ``--metrics`` names, in the order ``all`` expands to."""
VIDEO_OPTIONS: tuple[str, ...] = ("flicker", "warp", "border")
"""The ``--metrics`` names of the temporal metrics (videos only); for videos ``all`` includes them."""
ALIASES = {"clipscore": "clip", "inception": "is", "generated": "region"}
"""Other spellings ``--metrics`` accepts (after lower-casing and removing ``-``)."""
LEARNED: frozenset[str] = frozenset(o for o in OPTIONS if all(m.learned for m in METRICS if m.option == o))
"""``--metrics`` names whose every row needs a network."""

assert set(OPTIONS) | set(VIDEO_OPTIONS) == {m.option for m in METRICS} and not set(OPTIONS) & set(VIDEO_OPTIONS)
assert all(m.better in DIRECTIONS and m.group in GROUPS for m in METRICS)
assert all(n in NETWORKS for m in METRICS for n in m.networks)


def lookup(key_or_label: str) -> Metric | None:
    """The declaration of a report key or label (``fid[inception]``, ``FID[inception]``, ``gen_colour``), or None."""
    base = key_or_label.split("[", 1)[0]
    return _BY_KEY.get(base) or _BY_LABEL.get(base)


def direction(key_or_label: str, fallback: str = "") -> str:
    """``better`` of a report key or label; ``fallback`` (e.g. what an older report file says) if not declared."""
    m = lookup(key_or_label)
    return m.better if m is not None else fallback


def on_reference(key_or_label: str) -> bool:
    """The metric is computed on the reference panoramas only (the same value for every method)."""
    m = lookup(key_or_label)
    return m is not None and m.on_reference


def metrics_for(options) -> tuple[Metric, ...]:
    """The metrics that the ``--metrics`` names ``options`` request, in report order."""
    want = set(options)
    return tuple(m for m in METRICS if m.option in want)


def networks_for(options) -> set[str]:
    """Keys of the networks the ``--metrics`` names ``options`` can use."""
    return {n for m in metrics_for(options) for n in m.networks}


def badness(values, better: str):
    """``values`` (array-like) as a float64 array in which smaller is better: itself (lower),
    negated (higher), ``|v - 1|`` (1.0)."""
    import numpy as np

    v = np.asarray(values, dtype=np.float64)
    if better == "lower":
        return v
    if better == "higher":
        return -v
    if better == "1.0":
        return np.abs(v - 1.0)
    raise ValueError(f"better must be one of {', '.join(DIRECTIONS)}, got {better!r}")


def _signed(better: str) -> float:
    """+1 when a positive difference ``a - b`` means ``a`` is better, -1 when a negative one does."""
    if better == "lower":
        return -1.0
    if better == "higher":
        return 1.0
    raise ValueError(f"better must be 'lower' or 'higher', got {better!r}")


def a_better(diff, better: str):
    """Boolean array: where the differences ``a - b`` say ``a`` is strictly better (``lower``/``higher`` only)."""
    import numpy as np

    return np.asarray(diff, dtype=np.float64) * _signed(better) > 0


def interval_better(ci_low: float, ci_high: float, better: str) -> bool:
    """The interval of a difference ``a - b`` lies wholly on ``a``'s better side of 0 (False for ``1.0``)."""
    if better not in ("lower", "higher"):
        return False
    return bool(ci_high < 0) if better == "lower" else bool(ci_low > 0)


def beats(a: tuple[float, float], b: tuple[float, float], better: str) -> bool:
    """Interval ``a = (lo, hi)`` lies wholly on the better side of interval ``b`` (``lower``/``higher``)."""
    if better == "higher":
        return bool(a[0] > b[1])
    if better == "lower":
        return bool(a[1] < b[0])
    return False
