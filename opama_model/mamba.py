"""Mamba mixer and pre-norm residual block, weight-compatible with mamba-ssm.

:class:`Mamba` has the parameter names, shapes and initialisation of
``mamba_ssm.modules.mamba_simple.Mamba`` (``in_proj``, ``conv1d``, ``x_proj``, ``dt_proj``, ``A_log``,
``D``, ``out_proj``; also transformers' ``MambaMixer``), so state dicts load either way. It runs
anywhere through :func:`opama_model.scan.selective_scan`; on CUDA, when mamba-ssm and causal-conv1d
are importable and neither option below is on, it calls mamba-ssm's fused ``mamba_inner_fn`` with the
same weights (what ``mamba_ssm``'s ``Mamba`` does).

Options beyond mamba-ssm:

- ``bidirectional``: a second scan over the reversed sequence, summed with the forward scan
  (before the ``z`` gate and ``out_proj``). The reverse direction has its **own** conv, ``x_proj``,
  ``dt_proj``, ``A`` and ``D`` (named ``conv1d_b``, ``x_proj_b``, ``dt_proj_b``, ``A_b_log``, ``D_b``,
  as Vision Mamba's "v2" bidirectional Mamba), and shares ``in_proj``/``out_proj``.
- ``circular``: the sequence is a ring (a panorama row wraps at +-180 deg). The depthwise conv pads
  circularly, and the scan starts from the ring's periodic steady state: after one lap from zero
  the state is ``E``; the lap's total decay is ``P = exp(A * sum(delta))``; the state that
  reproduces itself after a lap is ``h0 = E / (1 - P)`` (the limit of infinitely many warm-up laps).
  The output is then exactly equivariant to cyclic shifts of the input (up to float rounding):
  no position is a boundary. Cost: two scans.

Shapes: tokens are ``(B, L, d_model)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .scan import resolve_backend, selective_scan

__all__ = ["Mamba", "MambaBlock", "MAMBA_SSM_PARAM_NAMES", "fast_path_available", "no_weight_decay_names"]

# named_parameters() of mamba_ssm.modules.mamba_simple.Mamba (mamba-ssm 1.x / 2.x), in order
MAMBA_SSM_PARAM_NAMES = (
    "A_log", "D", "in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight",
    "dt_proj.weight", "dt_proj.bias", "out_proj.weight",
)

_fast = None


def _load_fast():
    global _fast
    if _fast is None:
        try:
            from causal_conv1d import causal_conv1d_fn  # type: ignore  # noqa: F401
            from mamba_ssm.ops.selective_scan_interface import mamba_inner_fn  # type: ignore

            _fast = mamba_inner_fn
        except Exception:
            _fast = False
    return _fast or None


def fast_path_available() -> bool:
    """True when mamba-ssm's fused ``mamba_inner_fn`` (with causal-conv1d) can be imported."""
    return _load_fast() is not None


def _init_dt_proj(dt_proj: nn.Linear, dt_rank: int, dt_min: float, dt_max: float, dt_init_floor: float,
                  dt_scale: float = 1.0, dt_init: str = "random"):
    """mamba-ssm's init: uniform (or constant) weight, bias = softplus^-1 of log-uniform dt in [dt_min, dt_max]."""
    std = dt_rank ** -0.5 * dt_scale
    if dt_init == "constant":
        nn.init.constant_(dt_proj.weight, std)
    else:
        nn.init.uniform_(dt_proj.weight, -std, std)
    d_inner = dt_proj.out_features
    dt = torch.exp(torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=dt_init_floor)
    inv_dt = dt + torch.log(-torch.expm1(-dt))  # inverse softplus
    with torch.no_grad():
        dt_proj.bias.copy_(inv_dt.to(dt_proj.bias))
    dt_proj.bias._no_reinit = True


class Mamba(nn.Module):
    """Mamba (S6) mixer: ``(B, L, d_model) -> (B, L, d_model)``.

    Args:
        d_model: token width. ``d_inner = expand * d_model``.
        d_state: SSM state size ``N``. d_conv: depthwise causal conv width.
        dt_rank: rank of the delta projection (``"auto"``: ``ceil(d_model / 16)``).
        dt_min, dt_max, dt_init_floor: range of the initial step sizes (mamba-ssm's init).
        conv_bias, bias: biases of the conv and of in/out projections.
        bidirectional: add a reverse-direction scan with its own SSM weights (see module doc).
        circular: treat each sequence as a ring (see module doc).
        scan_backend: ``None`` (automatic / ``$OPAMA_SCAN``), ``"ref"``, ``"chunked"`` or ``"cuda"``.
        dt_scale, dt_init, use_fast_path, layer_idx, device, dtype: as in mamba-ssm (``use_fast_path=False``
            never calls the fused kernel; ``layer_idx`` is only stored).
    """

    def __init__(self, d_model, d_state=16, d_conv=4, expand=2, dt_rank="auto", dt_min=0.001, dt_max=0.1,
                 dt_init_floor=1e-4, conv_bias=True, bias=False, bidirectional=False, circular=False,
                 scan_backend=None, dt_scale=1.0, dt_init="random", use_fast_path=True, layer_idx=None,
                 device=None, dtype=None):
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.bidirectional, self.circular, self.scan_backend = bidirectional, circular, scan_backend
        self.use_fast_path, self.layer_idx = use_fast_path, layer_idx
        if dt_init not in ("random", "constant"):
            raise NotImplementedError(f"dt_init={dt_init!r}")
        self._init_args = (dt_min, dt_max, dt_init_floor, dt_scale, dt_init)

        self.in_proj = nn.Linear(d_model, self.d_inner * 2, bias=bias, **fk)
        self.conv1d, self.x_proj, self.dt_proj = self._ssm_parts(conv_bias, fk)
        self.A_log, self.D = self._ssm_params(device)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **fk)
        if bidirectional:
            self.conv1d_b, self.x_proj_b, self.dt_proj_b = self._ssm_parts(conv_bias, fk)
            self.A_b_log, self.D_b = self._ssm_params(device)

    def _ssm_parts(self, conv_bias, fk):
        conv = nn.Conv1d(self.d_inner, self.d_inner, kernel_size=self.d_conv, groups=self.d_inner,
                         padding=self.d_conv - 1, bias=conv_bias, **fk)
        x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * self.d_state, bias=False, **fk)
        dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **fk)
        _init_dt_proj(dt_proj, self.dt_rank, *self._init_args)
        return conv, x_proj, dt_proj

    def _ssm_params(self, device):
        # S4D real init, kept in fp32
        A = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=device).repeat(self.d_inner, 1)
        # No ``_no_weight_decay`` attribute on the parameters (mamba-ssm's habit): accelerate's
        # empty-weight init cannot re-create such parameters, which breaks diffusers'
        # ``from_pretrained``. Use :func:`no_weight_decay_names` for optimiser groups instead.
        A_log = nn.Parameter(torch.log(A))
        D = nn.Parameter(torch.ones(self.d_inner, device=device))
        return A_log, D

    # ------------------------------------------------------------------------------------------
    def _use_fast(self, x):
        if self.bidirectional or self.circular or not x.is_cuda or not self.use_fast_path:
            return False
        if self.scan_backend not in (None, "auto", "cuda"):
            return False
        if self.scan_backend is None:
            try:
                if resolve_backend(None, x.device) != "cuda":
                    return False
            except (RuntimeError, ValueError):
                return False
        return fast_path_available()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``hidden_states (B, L, d_model) -> (B, L, d_model)``."""
        Bsz, L, _ = hidden_states.shape
        xz = self.in_proj(hidden_states).transpose(1, 2)  # (B, 2*d_inner, L)
        if self._use_fast(hidden_states):
            return _load_fast()(
                xz.contiguous(), self.conv1d.weight, self.conv1d.bias, self.x_proj.weight, self.dt_proj.weight,
                self.out_proj.weight, self.out_proj.bias, -torch.exp(self.A_log.float()), None, None,
                self.D.float(), delta_bias=self.dt_proj.bias.float(), delta_softplus=True)
        x, z = xz.chunk(2, dim=1)
        y = self._ssm(x, self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D)
        if self.bidirectional:
            yb = self._ssm(x.flip(-1), self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b)
            y = y + yb.flip(-1)
        y = y * F.silu(z)
        return self.out_proj(y.transpose(1, 2))

    def _ssm(self, x, conv, x_proj, dt_proj, A_log, D):
        """Conv + selective scan of one direction, without the ``z`` gate: ``(B, d_inner, L)``."""
        L = x.shape[-1]
        if self.circular:
            k = self.d_conv
            idx = torch.arange(-(k - 1), L, device=x.device) % L  # wraps any number of times
            xc = F.conv1d(x[..., idx], conv.weight, conv.bias, groups=self.d_inner)
        else:
            xc = conv(x)[..., :L]
        xc = F.silu(xc)
        x_dbl = x_proj(xc.transpose(1, 2))  # (B, L, R + 2N)
        dt, Bm, Cm = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, dt_proj.weight).transpose(1, 2)  # (B, d_inner, L); bias added in the scan
        Bm, Cm = Bm.transpose(1, 2), Cm.transpose(1, 2)  # (B, N, L)
        A = -torch.exp(A_log.float())
        bias = dt_proj.bias.float()
        if not self.circular:
            return selective_scan(xc, dt, A, Bm, Cm, D.float(), None, bias, True, backend=self.scan_backend)
        backend = self.scan_backend
        if resolve_backend(backend, x.device) == "cuda":
            backend = "chunked"  # mamba-ssm has no initial state and no gradient of the last state
        _, lap = selective_scan(xc, dt, A, Bm, Cm, None, None, bias, True, return_last_state=True,
                                backend=backend)
        dsum = F.softplus(dt.float() + bias[:, None]).sum(-1)  # (B, d_inner)
        one_minus_P = -torch.expm1(dsum[..., None] * A)  # 1 - lap decay, in (0, 1]
        h0 = lap / one_minus_P.clamp_min(1e-6)
        return selective_scan(xc, dt, A, Bm, Cm, D.float(), None, bias, True, backend=backend, initial_state=h0)


class MambaBlock(nn.Module):
    """mamba-ssm's ``Block``: add residual -> norm -> Mamba (the OPa-Ma VCR block).

    ``forward(hidden, residual=None) -> (hidden_out, residual)`` with ``residual = hidden + residual``
    (or ``hidden``) and ``hidden_out = mixer(norm(residual))``; after the last block the caller adds
    ``hidden_out + residual`` (mamba-ssm's language models then apply a final norm; OPa-Ma's VCR and
    GMA do not). This is the unfused path of mamba-ssm's ``Block`` (``fused_add_norm=False``, no
    drop-path), which the OPa-Ma reference uses. Submodules ``mixer`` and ``norm``.

    Args:
        d_model: token width. norm: ``"layernorm"`` or ``"rmsnorm"``. eps: norm epsilon.
        residual_in_fp32: keep the residual stream in float32. mixer_kwargs: passed to :class:`Mamba`.

    ``gradient_checkpointing = True`` (set by diffusers' ``enable_gradient_checkpointing`` on the
    conditioner) recomputes the block in the backward pass instead of keeping its activations
    (``torch.utils.checkpoint``, ``use_reentrant=False``); only while gradients are enabled.
    """

    def __init__(self, d_model, norm="layernorm", eps=1e-5, residual_in_fp32=False, **mixer_kwargs):
        super().__init__()
        self.residual_in_fp32 = residual_in_fp32
        self.gradient_checkpointing = False
        self.mixer = Mamba(d_model, **mixer_kwargs)
        if norm == "layernorm":
            self.norm = nn.LayerNorm(d_model, eps=eps)
        elif norm == "rmsnorm":
            self.norm = nn.RMSNorm(d_model, eps=eps)
        else:
            raise ValueError(f"norm must be 'layernorm' or 'rmsnorm', got {norm!r}")

    def forward(self, hidden_states, residual=None):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            return checkpoint(self._forward, hidden_states, residual, use_reentrant=False)
        return self._forward(hidden_states, residual)

    def _forward(self, hidden_states, residual=None):
        residual = hidden_states if residual is None else hidden_states + residual
        hidden = self.mixer(self.norm(residual.to(self.norm.weight.dtype)))
        if self.residual_in_fp32:
            residual = residual.float()
        return hidden, residual


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Names of the parameters mamba-ssm excludes from weight decay (``A_log``, ``D`` and their
    reverse-direction twins) in every :class:`Mamba` inside ``model``, for AdamW parameter groups."""
    names = set()
    for prefix, mod in model.named_modules():
        if isinstance(mod, Mamba):
            for p in ("A_log", "D", "A_b_log", "D_b"):
                if hasattr(mod, p):
                    names.add(f"{prefix}.{p}" if prefix else p)
    return names
