"""Load checkpoints of the public OPa-Ma reference code (``PengleiGao/OPaMa``) into opama.

The reference trains with PyTorch Lightning; its ``on_save_checkpoint`` stores, as the
checkpoint's ``state_dict``, the ``named_parameters()`` of each trained network::

    {"projector":        CusMamba (the VCR stack + proj + gate),
     "adapter":          MambaAdapter (the GMA),
     "text_embedding":   {"weight": (77, dim)},  the VCR's text type embeddings
     "vision_embedding": {"weight": (7, dim)},   the VCR's visual type embeddings
     "uncond_embed":     {"weight": (77, dim)}}  the null condition (rows 0-6 are read)

Every tensor is mapped one to one onto :class:`~opama_model.conditioner.OPaMaConditioner`
(table below; ``k`` = 1..4, ``i`` = Block index, ``j`` = stem layer index); the architecture
(widths, depths, Mamba sizes) is inferred from the tensors themselves, names and shapes are
checked, nothing may be left over or missing.

======================================================  ==========================================
reference                                               opama
======================================================  ==========================================
``projector.layers.i.{mixer,norm}.*``                   ``vcr.layers.i.{mixer,norm}.*``
``projector.proj.*``, ``projector.gate.weight``         ``vcr.proj.*``, ``vcr.gate.weight``
``vision_embedding.weight``, ``text_embedding.weight``  ``vcr.vision_embedding``, ``vcr.text_embedding``
``uncond_embed.weight`` (77, dim)                       ``null_tokens`` (7, dim): rows 0-6; rows
                                                        7-76 are never read by the reference and
                                                        are dropped
``adapter.patch_embed.j.*`` (conv / LayerNorm gamma,    ``gma.stem.j.*`` (same indices)
beta)
``adapter.image_embed`` (1, 7, C, 1, 1)                 ``gma.image_embed`` (7, C)
``adapter.block{k}.in_conv.*``                          ``gma.stages.{k-1}.in_conv.*``
``adapter.block{k}.layers.i.*``                         ``gma.stages.{k-1}.layers.i.*``
``adapter.block{k}.global_local_mamba.i.*``             ``gma.stages.{k-1}.cross.i.*``
======================================================  ==========================================

Tensors are cast to float32 (the conditioner's dtype). Only the reference's default model is
supported (``use_adapter=True``, ``disable_ar_cond=False``, ``disable_geo=False``); the others
lack tensors and are reported as such.
"""

from __future__ import annotations

import math
import pickle
import re
from pathlib import Path
from typing import Any, Mapping

import torch

__all__ = [
    "ReferenceCheckpointError",
    "REFERENCE_PARTS",
    "flatten_reference_state",
    "reference_config",
    "convert_reference_state_dict",
    "from_reference_state_dict",
    "read_reference_checkpoint",
    "load_reference_checkpoint",
    "matching_preset",
    "convert_reference_checkpoint",
]

REFERENCE_PARTS = ("projector", "adapter", "text_embedding", "vision_embedding", "uncond_embed")
NULL_ROWS = 7  # rows of ``uncond_embed`` the reference reads (``get_uncond_embed``: range(7))


class ReferenceCheckpointError(ValueError):
    """A reference checkpoint cannot be read or converted (one-line message naming the tensor or file)."""


def flatten_reference_state(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """``{"projector": {"layers.0.norm.weight": t, ...}, ...}`` (or already dotted names, or a
    Lightning checkpoint with such a ``state_dict``) -> ``{"projector.layers.0.norm.weight": t}``."""
    if not isinstance(state, Mapping):
        raise ReferenceCheckpointError(f"expected a dict of tensors, got {type(state).__name__}")
    if "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    out: dict[str, torch.Tensor] = {}

    def walk(prefix: str, obj) -> None:
        if isinstance(obj, Mapping):
            for k, v in obj.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(obj, torch.Tensor):
            out[prefix] = obj.detach()
        else:
            kind = type(obj).__name__
            raise ReferenceCheckpointError(f"{prefix!r} is {'an' if kind[0] in 'aeiou' else 'a'} {kind}, not a "
                                           "tensor (not an OPa-Ma reference checkpoint)")

    walk("", state)
    return out


def _tensor(flat: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
    t = flat.get(name)
    if t is None:
        raise ReferenceCheckpointError(f"tensor {name!r} is missing (not a complete OPa-Ma reference checkpoint)")
    return t


def _count(flat: Mapping[str, torch.Tensor], prefix: str) -> int:
    """Number of consecutive indices ``prefix.0``, ``prefix.1``, ... present."""
    n = 0
    while any(k.startswith(f"{prefix}.{n}.") for k in flat):
        n += 1
    return n


def _mamba_sizes(flat: Mapping[str, torch.Tensor], prefix: str, d_model: int) -> dict:
    """``d_state``, ``d_conv``, ``expand`` of the mamba-ssm ``Mamba`` at ``prefix`` (checked)."""
    a_log = _tensor(flat, f"{prefix}.A_log")
    conv = _tensor(flat, f"{prefix}.conv1d.weight")
    dt_w = _tensor(flat, f"{prefix}.dt_proj.weight")
    if a_log.ndim != 2 or conv.ndim != 3:
        raise ReferenceCheckpointError(f"tensor {prefix + '.A_log'!r} has shape {tuple(a_log.shape)}: not a Mamba")
    d_inner, d_state = a_log.shape
    if d_inner % d_model:
        raise ReferenceCheckpointError(
            f"tensor {prefix + '.A_log'!r}: d_inner {d_inner} is not a multiple of d_model {d_model}")
    if dt_w.ndim != 2 or dt_w.shape[1] != math.ceil(d_model / 16):
        raise ReferenceCheckpointError(
            f"tensor {prefix + '.dt_proj.weight'!r} has shape {tuple(dt_w.shape)}: dt_rank differs from "
            f"mamba-ssm's default ceil({d_model}/16)")
    return dict(d_state=int(d_state), d_conv=int(conv.shape[-1]), expand=d_inner // d_model)


def reference_config(state: Mapping[str, Any]) -> dict:
    """:class:`~opama_model.conditioner.OPaMaConditioner` arguments of a reference state dict,
    inferred from its tensors (widths, depths, Mamba sizes, stages with cross-image blocks)."""
    flat = state if all(isinstance(v, torch.Tensor) for v in state.values()) else flatten_reference_state(state)
    proj = _tensor(flat, "projector.proj.weight")
    dim = int(proj.shape[0])
    depth = _count(flat, "projector.layers")
    if depth == 0:
        raise ReferenceCheckpointError("tensor 'projector.layers.0.norm.weight' is missing (no VCR blocks)")
    vcr = _mamba_sizes(flat, "projector.layers.0.mixer", dim)
    text_len = int(_tensor(flat, "text_embedding.weight").shape[0])
    n_img = int(_tensor(flat, "vision_embedding.weight").shape[0])
    if n_img != 7:
        raise ReferenceCheckpointError(f"tensor 'vision_embedding.weight' has {n_img} rows, expected 7 (view + 6 faces)")
    stem = []
    j = 0
    while f"adapter.patch_embed.{3 * j}.weight" in flat:
        stem.append(int(flat[f"adapter.patch_embed.{3 * j}.weight"].shape[0]))
        j += 1
    if not stem:
        raise ReferenceCheckpointError("tensor 'adapter.patch_embed.0.weight' is missing (no GMA stem)")
    in_ch = int(flat["adapter.patch_embed.0.weight"].shape[1])
    if in_ch != 5:
        raise ReferenceCheckpointError(
            f"tensor 'adapter.patch_embed.0.weight' takes {in_ch} input channels; opama's GMA takes 5 "
            "(RGB + latitude + longitude; the reference's disable_geo variant is not supported)")
    channels, pairs, cross, global_stages = [], [], [], []
    k = 1
    while any(n.startswith(f"adapter.block{k}.") for n in flat):
        channels.append(int(_tensor(flat, f"adapter.block{k}.layers.0.norm.weight").shape[0]))
        pairs.append(_count(flat, f"adapter.block{k}.layers"))
        c = _count(flat, f"adapter.block{k}.global_local_mamba")
        if c:
            cross.append(c)
            global_stages.append(k - 1)
        k += 1
    if not channels:
        raise ReferenceCheckpointError("tensor 'adapter.block1.layers.0.norm.weight' is missing (no GMA stages)")
    if any(p != pairs[0] or p % 2 for p in pairs):
        raise ReferenceCheckpointError(f"GMA stages have {pairs} Blocks; expected the same even number in each")
    if any(c != cross[0] for c in cross):
        raise ReferenceCheckpointError(f"GMA stages have {cross} cross-image Blocks; expected the same number")
    gma = _mamba_sizes(flat, "adapter.block1.layers.0.mixer", channels[0])
    return dict(
        cross_attention_dim=dim, image_embed_dim=dim, text_embed_dim=dim, text_len=text_len,
        unet_channels=tuple(channels), downscale_factor=2 ** len(stem),
        vcr_depth=depth, vcr_d_state=vcr["d_state"], vcr_d_conv=vcr["d_conv"], vcr_expand=vcr["expand"],
        gma_stem_channels=tuple(stem), gma_local_depth=pairs[0] // 2, gma_global_depth=cross[0] if cross else 0,
        gma_global_stages=tuple(global_stages) if global_stages != list(range(1, len(channels))) else None,
        gma_d_state=gma["d_state"], gma_d_conv=gma["d_conv"], gma_expand=gma["expand"],
    )


_RULES = (
    (re.compile(r"projector\.(layers\.\d+\..+|proj\.(weight|bias)|gate\.weight)"), r"vcr.\1"),
    (re.compile(r"vision_embedding\.weight"), "vcr.vision_embedding"),
    (re.compile(r"text_embedding\.weight"), "vcr.text_embedding"),
    (re.compile(r"uncond_embed\.weight"), "null_tokens"),
    (re.compile(r"adapter\.patch_embed\.(\d+\.(weight|bias|gamma|beta))"), r"gma.stem.\1"),
    (re.compile(r"adapter\.image_embed"), "gma.image_embed"),
)
_BLOCK = re.compile(r"adapter\.block(\d+)\.(in_conv|layers|global_local_mamba)\.(.+)")


def _our_name(ref: str) -> str | None:
    for pat, rep in _RULES:
        if pat.fullmatch(ref):
            return pat.sub(rep, ref)
    m = _BLOCK.fullmatch(ref)
    if m and int(m.group(1)) >= 1:
        part = {"global_local_mamba": "cross"}.get(m.group(2), m.group(2))
        return f"gma.stages.{int(m.group(1)) - 1}.{part}.{m.group(3)}"
    return None


_INVERSE = (
    (re.compile(r"vcr\.(layers\..+|proj\..+|gate\..+)"), r"projector.\1"),
    (re.compile(r"vcr\.(vision_embedding|text_embedding)"), r"\1.weight"),
    (re.compile(r"null_tokens"), "uncond_embed.weight"),
    (re.compile(r"gma\.stem\.(.+)"), r"adapter.patch_embed.\1"),
    (re.compile(r"gma\.image_embed"), "adapter.image_embed"),
)
_STAGE = re.compile(r"gma\.stages\.(\d+)\.(in_conv|layers|cross)\.(.+)")


def _reference_name(ours: str) -> str:
    """The reference's name of opama's tensor ``ours`` (inverse of :func:`_our_name`)."""
    for pat, rep in _INVERSE:
        if pat.fullmatch(ours):
            return pat.sub(rep, ours)
    m = _STAGE.fullmatch(ours)
    if m:
        part = {"cross": "global_local_mamba"}.get(m.group(2), m.group(2))
        return f"adapter.block{int(m.group(1)) + 1}.{part}.{m.group(3)}"
    return ours


def _fmt(shape) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


def convert_reference_state_dict(state: Mapping[str, Any]):
    """Convert; returns ``(conditioner, report)`` with ``report`` a dict (``config``, ``tensors``
    mapped, ``null_rows_dropped``). See :func:`from_reference_state_dict`."""
    from .conditioner import OPaMaConditioner

    flat = flatten_reference_state(state)
    for part in REFERENCE_PARTS:
        if not any(k == part or k.startswith(part + ".") for k in flat):
            raise ReferenceCheckpointError(f"part {part!r} is missing (expected {', '.join(REFERENCE_PARTS)})")
    config = reference_config(flat)
    with torch.device("meta"):
        model = OPaMaConditioner(**config)
    want = {n: tuple(t.shape) for n, t in model.state_dict().items()}
    mapped: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}
    dropped = 0
    for ref, t in flat.items():
        ours = _our_name(ref)
        if ours is None or ours not in want:
            raise ReferenceCheckpointError(f"tensor {ref!r} has no place in the OPa-Ma conditioner (unexpected name)")
        if ours in mapped:
            raise ReferenceCheckpointError(f"tensor {ref!r} maps onto {ours!r} like {source[ours]!r}")
        if not t.is_floating_point():
            raise ReferenceCheckpointError(f"tensor {ref!r} has dtype {t.dtype}, expected floating point")
        shape = want[ours]
        if ours == "null_tokens":  # the reference allocates 77 rows and reads the first 7
            ok = t.ndim == 2 and t.shape[0] >= shape[0] and t.shape[1] == shape[1]
            need = f"(>= {shape[0]}, {shape[1]})"
        else:
            ref_shape = (1, *shape, 1, 1) if ours == "gma.image_embed" else shape
            ok, need = tuple(t.shape) == ref_shape, _fmt(ref_shape)
        if not ok:
            raise ReferenceCheckpointError(
                f"tensor {ref!r} has shape {_fmt(t.shape)}, but the architecture inferred from the checkpoint "
                f"needs {need} (for {ours!r})")
        if ours == "null_tokens":
            dropped = int(t.shape[0]) - NULL_ROWS
            t = t[:NULL_ROWS]
        mapped[ours] = t.reshape(shape).to(torch.float32).clone().contiguous()
        source[ours] = ref
    for ours in want:
        if ours not in mapped:
            raise ReferenceCheckpointError(
                f"tensor {_reference_name(ours)!r} is missing (the architecture inferred from the checkpoint "
                f"needs it for {ours!r})")
    # built on the meta device (no memory, no init), then every entry of its state dict is
    # assigned (strict): nothing of the meta model survives (meta inputs give a meta model)
    model.load_state_dict(mapped, strict=True, assign=True)
    model.eval()
    return model, dict(config=config, tensors=len(mapped), null_rows_dropped=dropped)


def from_reference_state_dict(state: Mapping[str, Any]):
    """:class:`~opama_model.conditioner.OPaMaConditioner` holding the reference checkpoint's weights.

    Args:
        state: the reference's ``state_dict`` (``{"projector": {...}, "adapter": {...},
            "text_embedding": {"weight"}, "vision_embedding": {"weight"}, "uncond_embed":
            {"weight"}}`` with the reference's parameter names), dotted names, or the whole
            Lightning checkpoint dict.

    Raises:
        ReferenceCheckpointError: a tensor is missing, unexpected or of the wrong shape (the
            message names the first one).
    """
    return convert_reference_state_dict(state)[0]


def read_reference_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The flattened reference ``state_dict`` of a file: a Lightning ``.ckpt`` / ``torch.save``
    file read with ``torch.load(weights_only=True)`` (nothing else is unpickled), or a
    ``.safetensors`` file with dotted names."""
    path = Path(path)
    if not path.is_file():
        raise ReferenceCheckpointError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return flatten_reference_state(load_file(str(path)))
        except ReferenceCheckpointError as e:
            raise ReferenceCheckpointError(f"{path}: {e}") from None
        except Exception as e:
            raise ReferenceCheckpointError(f"{path}: not a readable safetensors file ({_first_line(e)})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if m is None:
            raise ReferenceCheckpointError(_not_a_checkpoint(path)) from None
        raise ReferenceCheckpointError(
            f"{path}: needs unpickling of arbitrary Python objects ({m.group(1)}), which opama refuses; in an "
            "environment you trust, save its ['state_dict'] alone with torch.save and convert that file") from None
    except Exception:  # torch's readers raise anything (IndexError, RuntimeError, ...) for other files
        raise ReferenceCheckpointError(_not_a_checkpoint(path)) from None
    try:
        return flatten_reference_state(obj)
    except ReferenceCheckpointError as e:
        raise ReferenceCheckpointError(f"{path}: {e}") from None


def _not_a_checkpoint(path: Path) -> str:
    """One line saying why ``path`` is not a file of ``torch.save`` (what its first bytes look like)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        return f"{path}: cannot read ({e.strerror or e})"
    if not head:
        return f"{path}: empty file, not a PyTorch checkpoint"
    if head == b"PK\x03\x04":
        return f"{path}: a zip archive but not a PyTorch checkpoint (not written by torch.save)"
    return (f"{path}: not a PyTorch checkpoint (expected a .ckpt/.pt file written by torch.save, "
            "or a .safetensors file)")


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return (lines[0] if lines else type(e).__name__)[:200]


def load_reference_checkpoint(path: str | Path):
    """Read a reference checkpoint file (:func:`read_reference_checkpoint`) and convert it
    (:func:`from_reference_state_dict`); errors name the file."""
    flat = read_reference_checkpoint(path)
    try:
        return from_reference_state_dict(flat)
    except ReferenceCheckpointError as e:
        raise ReferenceCheckpointError(f"{path}: {e}") from None


_INTERFACE = ("cross_attention_dim", "image_embed_dim", "text_embed_dim", "text_len", "unet_channels",
              "downscale_factor")


def matching_preset(config: Mapping[str, Any], preset: str = "auto") -> str:
    """The preset whose backbone the converted conditioner fits (widths, text length, UNet
    channels, VAE factor); ``preset="auto"`` tries ``sd2`` then ``tiny``.

    Raises:
        ReferenceCheckpointError: no (or not the named) preset fits.
    """
    from .presets import PRESETS, conditioner_kwargs

    names = ["sd2", "tiny"] if preset == "auto" else [preset]
    for name in names:
        if name not in PRESETS:
            raise ReferenceCheckpointError(f"unknown preset {name!r}; choose auto or one of {sorted(PRESETS)}")
        want = conditioner_kwargs(name, "opama")
        if all(tuple(config[k]) == tuple(want[k]) if isinstance(want[k], tuple) else config[k] == want[k]
               for k in _INTERFACE):
            return name
    got = ", ".join(f"{k}={config[k]}" for k in _INTERFACE)
    raise ReferenceCheckpointError(f"the checkpoint's conditioner ({got}) fits no {' or '.join(names)} backbone")


def convert_reference_checkpoint(ckpt: str | Path, out_dir: str | Path, *, preset: str = "auto") -> dict:
    """Convert a reference checkpoint file into an opama model folder (:mod:`opama_model.model_dir`)
    that ``opama outpaint --model OUT_DIR`` loads; only the conditioner is stored (the frozen
    backbone of the preset is located at load time and is not built here).

    Returns:
        ``{"path", "preset", "tensors", "null_rows_dropped", "parameters"}``.
    """
    from .fileio import file_digest
    from .model_dir import save_model_dir
    from .presets import Components, get_preset

    ckpt = Path(ckpt)
    flat = read_reference_checkpoint(ckpt)
    try:
        cond, report = convert_reference_state_dict(flat)
        name = matching_preset(report["config"], preset)
    except ReferenceCheckpointError as e:
        raise ReferenceCheckpointError(f"{ckpt}: {e}") from None
    comps = Components(get_preset(name), unet=None, vae=None, scheduler=None, text_encoder=None,
                       tokenizer=None, image_encoder=None, conditioner=cond)
    source = dict(kind="opama-reference-checkpoint", repository="PengleiGao/OPaMa", file=ckpt.name,
                  sha256=file_digest(ckpt), tensors=report["tensors"], null_rows_dropped=report["null_rows_dropped"])
    path = save_model_dir(comps, out_dir, trained=("conditioner",), extra={"source": source})
    return dict(path=path, preset=name, tensors=report["tensors"], null_rows_dropped=report["null_rows_dropped"],
                parameters=sum(p.numel() for p in cond.parameters()))
