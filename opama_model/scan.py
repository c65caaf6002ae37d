"""Selective scan (Mamba's S6 recurrence) with three interchangeable backends.

The recurrence, per batch ``b``, channel ``d`` and state index ``n`` (time ``t`` along the last axis)::

    delta = softplus(delta + delta_bias)          # if delta_softplus, else delta + delta_bias
    h[t]  = exp(delta[t] * A[d, n]) * h[t-1] + delta[t] * B[n, t] * u[t]       (h[-1] = initial_state or 0)
    y[t]  = sum_n C[n, t] * h[t] + D[d] * u[t]
    out   = y * silu(z)                           # if z is given

Shapes follow mamba-ssm's ``selective_scan_fn`` (channels-first, time last):

- ``u``, ``delta``, ``z``: ``(b, d, l)``; ``A``: ``(d, n)`` real (negative for a stable scan);
- ``B``, ``C``: ``(b, n, l)`` input-dependent, ``(b, g, n, l)`` grouped (``g`` divides ``d``; channel
  ``d`` uses group ``d // (D / g)``), or ``(d, n)`` constant;
- ``D``, ``delta_bias``: ``(d,)``. Output ``(b, d, l)`` in ``u``'s dtype; optional last state ``(b, d, n)``
  (float32).

Backends (``backend=`` argument, else the ``OPAMA_SCAN`` environment variable, else automatic):

- ``ref``: the plain sequential loop, float32 (the reference, like mamba-ssm's ``selective_scan_ref``).
- ``chunked``: pure PyTorch, the default off CUDA (and on CUDA when mamba-ssm is missing). The
  sequence is cut into blocks that fit in cache; inside a block, into chunks of ``T`` steps. A
  sequential sweep over the ``T`` steps runs for all chunks at once (the state of every chunk is
  computed from zero), a short recurrence over the chunks carries the true start state into each
  chunk (on CUDA a log-depth scan of the chunks, :func:`_affine_carry`, fewer and larger ops; on
  CUDA without gradients, 4x larger blocks), and a second sweep produces the states. Only multiplications of decays ``exp(delta*A) <= 1``
  occur (no ``exp(-cumsum)`` factors), so it is as stable as the loop. Autograd is a hand-written
  backward (the adjoint recurrence, run backwards with the same chunking) that recomputes states
  block by block from saved chunk start states, so memory is ``O(b*d*l)`` (the start states are at
  most 2x the size of ``u``) plus one block, not ``O(b*d*l*n)``. Grouped (``1 < g < d``) and constant
  ``B``/``C`` are expanded to ``(b, d, n, l)`` first, which does cost ``O(b*d*l*n)``.
- ``cuda``: mamba-ssm's fused kernel (``selective_scan_fn``); picked automatically for CUDA tensors
  when ``mamba_ssm`` is importable. Asking for it when it is not importable raises ``RuntimeError``.

Extensions over mamba-ssm (``ref``/``chunked`` only): ``initial_state`` ``(b, d, n)``, and the returned
last state is differentiable (mamba-ssm's is not).
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = [
    "selective_scan",
    "selective_scan_ref",
    "selective_scan_chunked",
    "cuda_scan_available",
    "resolve_backend",
    "BACKENDS",
]

BACKENDS = ("ref", "chunked", "cuda")

_cuda_fn = None
_cuda_err: str | None = None


def _load_cuda():
    """Import mamba-ssm's kernel once; remember why it failed."""
    global _cuda_fn, _cuda_err
    if _cuda_fn is None and _cuda_err is None:
        try:
            from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # type: ignore

            _cuda_fn = selective_scan_fn
        except Exception as e:  # ImportError, or missing compiled extension (ModuleNotFoundError)
            _cuda_err = f"{type(e).__name__}: {e}"
    return _cuda_fn


def cuda_scan_available() -> bool:
    """True when mamba-ssm's compiled selective-scan kernel can be imported."""
    return _load_cuda() is not None


def resolve_backend(backend: str | None, device: torch.device) -> str:
    """The backend that will run: explicit ``backend``, else ``$OPAMA_SCAN``, else automatic.

    Automatic: ``cuda`` for CUDA tensors when mamba-ssm is importable, else ``chunked``.
    Raises ``ValueError`` for an unknown name and ``RuntimeError`` when ``cuda`` cannot run.
    """
    name = backend or os.environ.get("OPAMA_SCAN") or "auto"
    name = name.strip().lower()
    if name == "auto":
        return "cuda" if (device.type == "cuda" and cuda_scan_available()) else "chunked"
    if name not in BACKENDS:
        raise ValueError(f"unknown selective-scan backend {name!r}; choose one of {BACKENDS + ('auto',)}")
    if name == "cuda":
        if not cuda_scan_available():
            raise RuntimeError(
                "selective-scan backend 'cuda' needs mamba-ssm with its compiled kernel "
                f"(import failed: {_cuda_err}); use backend='chunked' or unset OPAMA_SCAN"
            )
        if device.type != "cuda":
            raise RuntimeError(f"selective-scan backend 'cuda' needs CUDA tensors, got device {device}")
    return name


# ----------------------------------------------------------------------------------------------
# shared pre/post-processing (autograd-friendly, O(b*d*l))
# ----------------------------------------------------------------------------------------------


def _bc_4d(M: torch.Tensor, b: int, d: int, l: int, name: str) -> torch.Tensor:
    """B or C as float32 ``(b, 1 | d, n, l)`` (a broadcastable view or copy)."""
    M = M.float()
    if M.dim() == 2:  # constant (d, n)
        if M.shape[0] != d:
            raise ValueError(f"{name}: constant shape {tuple(M.shape)} does not match d={d}")
        return M[None, :, :, None].expand(b, d, M.shape[1], l)
    if M.dim() == 3:  # (b, n, l)
        return M[:, None]
    if M.dim() == 4:  # grouped (b, g, n, l)
        g = M.shape[1]
        if d % g:
            raise ValueError(f"{name}: {g} groups do not divide d={d}")
        if g == 1:
            return M
        return M.repeat_interleave(d // g, dim=1)
    raise ValueError(f"{name}: expected 2, 3 or 4 dims, got shape {tuple(M.shape)}")


def _check(u, delta, A):
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must both be (b, d, l); got {tuple(u.shape)} and {tuple(delta.shape)}")
    if A.is_complex():
        raise NotImplementedError("complex A is not supported")
    if A.dim() != 2 or A.shape[0] != u.shape[1]:
        raise ValueError(f"A must be (d, n) with d={u.shape[1]}; got {tuple(A.shape)}")


def _delta(delta, delta_bias, delta_softplus):
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    return delta


def _finish(y, u, D, z, dtype):
    if D is not None:
        y = y + u.float() * D.float()[:, None]
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(dtype)


# ----------------------------------------------------------------------------------------------
# ref backend
# ----------------------------------------------------------------------------------------------


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False, initial_state=None):
    """The reference: a plain float32 loop over time (autograd through the loop).

    Same arguments and result as :func:`selective_scan`. Memory ``O(b*d*l*n)``.
    """
    _check(u, delta, A)
    dtype = u.dtype
    b, d, l = u.shape
    uf = u.float()
    dt = _delta(delta, delta_bias, delta_softplus)
    Af = A.float()
    Bm = _bc_4d(B, b, d, l, "B")
    Cm = _bc_4d(C, b, d, l, "C")
    n = Af.shape[1]
    dA = torch.exp(dt[..., None] * Af[:, None, :])  # (b, d, l, n)
    dBu = (dt * uf)[..., None] * Bm.transpose(2, 3)  # (b, d, l, n)
    Ct = Cm.transpose(2, 3).expand(b, d, l, n)
    h = uf.new_zeros(b, d, n) if initial_state is None else initial_state.float()
    ys = []
    for a_t, x_t, c_t in zip(dA.unbind(2), dBu.unbind(2), Ct.unbind(2)):
        h = a_t * h + x_t
        ys.append((h * c_t).sum(-1))
    y = torch.stack(ys, dim=2) if ys else uf.new_zeros(b, d, 0)
    out = _finish(y, u, D, z, dtype)
    return (out, h) if return_last_state else out


# ----------------------------------------------------------------------------------------------
# chunked backend
# ----------------------------------------------------------------------------------------------

# Block budget: elements of one (positions x b x d x n) block tensor. Four such buffers live at a
# time in the backward; 2**20 floats = 4 MiB each keeps the working set in a CPU's L2/L3 cache.
_BLOCK_ELEMS_CPU = 1 << 20
_BLOCK_ELEMS_CUDA = 1 << 24
# Without gradients (inference) nothing is kept for a backward: on CUDA, up to 4x larger blocks (3
# buffers of up to 256 MiB, at most 1/16 of the free memory each) mean fewer blocks, hence fewer of
# the small per-block ops that dominate a GPU's time.
_BLOCK_ELEMS_CUDA_INFER = 1 << 26


def _infer_block_elems(free_bytes: int) -> int:
    """CUDA block budget without gradients: ``_BLOCK_ELEMS_CUDA_INFER``, less when a float32 block
    would exceed 1/16 of ``free_bytes``, never below the training budget ``_BLOCK_ELEMS_CUDA``."""
    return max(_BLOCK_ELEMS_CUDA, min(_BLOCK_ELEMS_CUDA_INFER, free_bytes // 64))
_MIN_BLOCK_POS = 32  # at least this many positions per block
# Carrying the start state across the chunks of a block: "loop" (nc sequential steps, 2 ops each) or
# "log" (a log-depth scan of the chunks' affine maps, ~4 log2(nc) ops). "auto": log on CUDA from this
# many chunks per block, where each op is small and its launch costs as much as its work.
CARRIES = ("auto", "loop", "log")
_LOG_CARRY_MIN_CHUNKS = 9


class _Plan:
    """How a sequence of length ``L`` is cut: chunk length ``T``, chunks per block ``nc``.

    Python-level op count is ~ L * (6 / nc + 3 / T) (sweeps over the T steps of each block, loops over
    the nc chunks of each block), at a fixed block size K = T * nc positions; hence T ~ sqrt(K / 2).
    """

    def __init__(self, L, b, d, n, device, T=None, block_elems=None, carry=None, grad=True):
        if device.type == "cuda":
            if block_elems:
                budget = block_elems
            elif grad:
                budget = _BLOCK_ELEMS_CUDA
            else:
                budget = _infer_block_elems(torch.cuda.mem_get_info(device)[0])
        else:
            budget = block_elems or _BLOCK_ELEMS_CPU
        per_pos = max(1, b * d * n)
        K = min(L, max(budget // per_pos, 1 if block_elems else _MIN_BLOCK_POS))
        if T is None:
            T = 1 << max(2, min(6, round(math.log2(max(K / 2, 1)) / 2)))
        self.T = T
        nchunks = -(-L // T)
        self.nc = max(1, min(nchunks, K // T))
        self.nchunks = nchunks
        self.Lp = nchunks * T  # padded length
        self.nblocks = -(-nchunks // self.nc)
        carry = (carry or os.environ.get("OPAMA_SCAN_CARRY") or "auto").strip().lower()
        if carry not in CARRIES:
            raise ValueError(f"unknown chunk carry {carry!r}; choose one of {CARRIES}")
        if carry == "auto":
            carry = "log" if device.type == "cuda" and self.nc >= _LOG_CARRY_MIN_CHUNKS else "loop"
        self.carry = carry

    def blocks(self):
        """(chunk start, chunk count) per block."""
        for i in range(self.nblocks):
            c0 = i * self.nc
            yield c0, min(self.nc, self.nchunks - c0)


def _to_tm(x: torch.Tensor, c0: int, nc: int, T: int) -> torch.Tensor:
    """``(b, k, Lp)`` -> time-major block ``(T, b, nc, k)`` for chunks ``c0 .. c0+nc`` (a copy)."""
    b, k, _ = x.shape
    blk = x[:, :, c0 * T:(c0 + nc) * T].reshape(b, k, nc, T)
    return blk.permute(3, 0, 2, 1).contiguous()


def _from_tm(x: torch.Tensor) -> torch.Tensor:
    """``(T, b, nc, k)`` -> ``(b, k, nc*T)``."""
    T, b, nc, k = x.shape
    return x.permute(1, 3, 2, 0).reshape(b, k, nc * T)


class _Workspace:
    """Reusable flat buffers (re-allocating large tensors each block costs page faults)."""

    def __init__(self, size, device):
        self.size, self.device, self.bufs = size, device, {}

    def get(self, name, shape):
        buf = self.bufs.get(name)
        if buf is None:
            buf = self.bufs[name] = torch.empty(self.size, dtype=torch.float32, device=self.device)
        return buf[: math.prod(shape)].view(shape)


def _block_coeffs(ws, dt_tm, dtu_tm, B_tm, A):
    """Decays ``a = exp(dt*A)`` and inputs ``x = dt*u*B``, both ``(T, b, nc, d, n)``."""
    T, b, nc, d = dt_tm.shape
    n = A.shape[1]
    a = ws.get("a", (T, b, nc, d, n))
    torch.mul(dt_tm[..., None], A, out=a)
    a.exp_()
    x = ws.get("x", (T, b, nc, d, n))
    torch.mul(dtu_tm[..., None], B_tm, out=x)
    return a, x


def _chunk_decay(dt_tm, A):
    """Product of the ``T`` decays of each chunk, ``exp(A * sum_t dt)``: ``(b, nc, d, n)``, <= 1."""
    return torch.exp(dt_tm.sum(0)[..., None] * A)


def _affine_carry(P, q, h, reverse=False):
    """Run ``state = P[:, c] * state + q[:, c]`` over the chunks ``c`` of a block from ``state = h``
    (in reverse chunk order if ``reverse``). ``P``, ``q``: ``(b, nc, d, n)``; ``h``: ``(b, d, n)``.

    Returns (``(b, nc, d, n)``: the state before each chunk's step, the state after the last step).
    A Hillis-Steele scan of the affine maps ``(P, q)`` with ``h`` folded into the first chunk's
    ``q``: ``ceil(log2 nc)`` rounds of whole-tensor ops instead of ``nc`` sequential steps; only
    products of the ``P`` occur (decays <= 1), as in the loop.
    """
    nc = P.shape[1]
    first = -1 if reverse else 0
    qc = q.clone()
    qc[:, first].addcmul_(P[:, first], h)
    Pc, k = P, 1  # after each round: the maps of up to 2k chunks ending at c, composed
    while k < nc:
        fresh = qc.clone()
        if reverse:
            fresh[:, :-k].addcmul_(Pc[:, :-k], qc[:, k:])
        else:
            fresh[:, k:].addcmul_(Pc[:, k:], qc[:, :-k])
        qc = fresh
        if 2 * k < nc:  # the next round needs the products over 2k chunks
            fresh = Pc.clone()
            if reverse:
                fresh[:, :-k].mul_(Pc[:, k:])
            else:
                fresh[:, k:].mul_(Pc[:, :-k])
            Pc = fresh
        k *= 2
    H = torch.empty_like(P)
    if reverse:
        H[:, -1] = h
        H[:, :-1] = qc[:, 1:]
        return H, qc[:, 0]
    H[:, 0] = h
    H[:, 1:] = qc[:, :-1]
    return H, qc[:, -1]


def _forward_states(ws, a, x, P, h_in, store, carry="loop"):
    """States of one block. ``a``, ``x``: ``(T, b, nc, d, n)``; ``P``: chunk decays; ``h_in``: ``(b, d, n)``.

    Returns (all states ``(T, b, nc, d, n)`` if ``store`` else None, last state ``(b, d, n)``,
    chunk start states ``(b, nc, d, n)``).
    """
    T, b, nc, d, n = a.shape
    # sweep 1: chunk-local end states from zero, for all chunks at once
    s = x[0].clone()
    for t in range(1, T):
        s = torch.addcmul(x[t], a[t], s)
    # across chunks: the true start state of each chunk
    if carry == "log":
        H, h = _affine_carry(P, s, h_in)
    else:
        H = torch.empty(b, nc, d, n, dtype=a.dtype, device=a.device)
        h = h_in
        for c in range(nc):
            H[:, c] = h
            h = torch.addcmul(s[:, c], P[:, c], h)
    return _sweep_states(ws, a, x, H) if store else None, h, H


def _sweep_states(ws, a, x, H):
    """All states of a block ``(T, b, nc, d, n)`` from the chunk start states ``H (b, nc, d, n)``."""
    hs = ws.get("h", a.shape)
    cur = H
    for t in range(a.shape[0]):
        cur = torch.addcmul(x[t], a[t], cur, out=hs[t])
    return hs


def _contract_n(hs, C_tm):
    """``y[t, b, c, d] = sum_n hs[t, b, c, d, n] * C[t, b, c, (d|1), n]``."""
    T, b, nc, d, n = hs.shape
    if C_tm.shape[3] == 1:  # einsum beats bmm(hs, C[..., None]) on CPU by ~40x here
        return torch.einsum("tbcdn,tbcn->tbcd", hs, C_tm[:, :, :, 0])
    return (hs * C_tm).sum(-1)


class _ChunkedScanFn(torch.autograd.Function):
    """Core scan (no D/z/bias): inputs float32 ``u, dt (b,d,l)``, ``A (d,n)``, ``B, C (b,1|d,n,l)``,
    ``h0 (b,d,n)``. Returns ``y (b,d,l)`` and the last state ``(b,d,n)``."""

    @staticmethod
    def forward(ctx, u, dt, A, B, C, h0, T, block_elems, carry, grad):
        b, d, L = u.shape
        n = A.shape[1]
        plan = _Plan(L, b, d, n, u.device, T, block_elems, carry, grad=grad)
        T = plan.T
        pad = plan.Lp - L
        if pad:  # dt = 0 => decay 1, input 0: the state passes through the padding unchanged
            u, dt = F.pad(u, (0, pad)), F.pad(dt, (0, pad))
            B, C = F.pad(B, (0, pad)), F.pad(C, (0, pad))
        dtu = dt * u
        Bt, Ct = B.transpose(2, 3), C.transpose(2, 3)  # (b, g, Lp, n)
        ws = _Workspace(T * b * plan.nc * d * n, u.device)
        y = torch.empty(b, d, plan.Lp, dtype=torch.float32, device=u.device)
        h = h0
        # start state of every chunk, kept for the backward: (b, chunks, d, n), i.e. n/T times the size
        # of u. When that is more than 2x (short chunks, T < n/2), keep one per block and recompute.
        keep = 2 * T >= n
        starts = torch.empty(b, plan.nchunks if keep else plan.nblocks, d, n, dtype=torch.float32, device=u.device)
        for i, (c0, nc) in enumerate(plan.blocks()):
            dt_tm, dtu_tm = _to_tm(dt, c0, nc, T), _to_tm(dtu, c0, nc, T)
            B_tm = _bc_tm(Bt, c0, nc, T)
            C_tm = _bc_tm(Ct, c0, nc, T)
            a, x = _block_coeffs(ws, dt_tm, dtu_tm, B_tm, A)
            if not keep:
                starts[:, i] = h
            hs, h, H = _forward_states(ws, a, x, _chunk_decay(dt_tm, A), h, store=True, carry=plan.carry)
            if keep:
                starts[:, c0:c0 + nc] = H
            y[:, :, c0 * T:(c0 + nc) * T] = _from_tm(_contract_n(hs, C_tm))
        ctx.save_for_backward(u, dt, A, B, C, starts)
        ctx.plan, ctx.L, ctx.keep = plan, L, keep
        return y[:, :, :L], h

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dlast):
        u, dt, A, B, C, starts = ctx.saved_tensors
        plan, L = ctx.plan, ctx.L
        T = plan.T
        b, d, Lp = u.shape
        n = A.shape[1]
        dy = dy.float()
        if Lp > L:
            dy = F.pad(dy, (0, Lp - L))
        dtu = dt * u
        Bt, Ct = B.transpose(2, 3), C.transpose(2, 3)
        gB, gC = B.shape[1], C.shape[1]
        ws = _Workspace(T * b * plan.nc * d * n, u.device)
        ddt = torch.empty_like(dt)
        du = torch.empty_like(u)
        dB = torch.empty(b, gB, Lp, n, dtype=torch.float32, device=u.device)
        dC = torch.empty(b, gC, Lp, n, dtype=torch.float32, device=u.device)
        dA = torch.zeros_like(A)
        G = dlast.float() if dlast is not None else torch.zeros(b, d, n, dtype=torch.float32, device=u.device)
        for i, (c0, nc) in reversed(list(enumerate(plan.blocks()))):
            sl = slice(c0 * T, (c0 + nc) * T)
            dt_tm, dtu_tm = _to_tm(dt, c0, nc, T), _to_tm(dtu, c0, nc, T)
            B_tm, C_tm = _bc_tm(Bt, c0, nc, T), _bc_tm(Ct, c0, nc, T)
            dy_tm = _to_tm(dy, c0, nc, T)  # (T, b, nc, d)
            a, x = _block_coeffs(ws, dt_tm, dtu_tm, B_tm, A)
            P = _chunk_decay(dt_tm, A)
            if ctx.keep:
                hs = _sweep_states(ws, a, x, starts[:, c0:c0 + nc])
            else:
                hs, _, _ = _forward_states(ws, a, x, P, starts[:, i], store=True, carry=plan.carry)
            # direct gradient on the states: dh[t] = dy[t] * C[t]   -> buffer g
            g = ws.get("g", a.shape)
            torch.mul(dy_tm[..., None], C_tm, out=g)
            # adjoint recurrence g[t] = dh[t] + a[t+1] * g[t+1]; sweep 1 from zero per chunk
            s = g[T - 1].clone()
            for t in range(T - 2, -1, -1):
                s = torch.addcmul(g[t], a[t + 1], s)
            # across chunks (backwards): Gc = gradient entering chunk c's last state from later
            if plan.carry == "log":
                Gs, G = _affine_carry(P, a[0] * s, G, reverse=True)
            else:
                Gs = torch.empty(b, nc, d, n, dtype=torch.float32, device=u.device)
                for c in range(nc - 1, -1, -1):
                    Gs[:, c] = G
                    G = torch.addcmul(P[:, c] * G, a[0, :, c], s[:, c])
            # sweep 2 in place: g[T-1] += Gs, g[t] += a[t+1] * g[t+1]
            g[T - 1].add_(Gs)
            for t in range(T - 2, -1, -1):
                g[t].addcmul_(a[t + 1], g[t + 1])
            # dC[t, n] = sum_d dy[t, d] * h[t, d, n]
            if gC == 1:
                dC_tm = torch.bmm(dy_tm.reshape(-1, 1, d), hs.view(-1, d, n)).view(T, b, nc, n)
                dC[:, 0, sl] = dC_tm.permute(1, 2, 0, 3).reshape(b, nc * T, n)
            else:
                dC_tm = hs * dy_tm[..., None]
                dC[:, :, sl] = dC_tm.permute(1, 3, 2, 0, 4).reshape(b, d, nc * T, n)
            # x = dt*u*B: s_x[t, d] = sum_n g * B ; dB = sum_d g * dt*u
            if gB == 1:
                sx = torch.einsum("tbcdn,tbcn->tbcd", g, B_tm[:, :, :, 0])
                dB_tm = torch.bmm(dtu_tm.reshape(-1, 1, d), g.view(-1, d, n)).view(T, b, nc, n)
                dB[:, 0, sl] = dB_tm.permute(1, 2, 0, 3).reshape(b, nc * T, n)
            else:
                sx = (g * B_tm).sum(-1)
                dB_tm = g * dtu_tm[..., None]
                dB[:, :, sl] = dB_tm.permute(1, 3, 2, 0, 4).reshape(b, d, nc * T, n)
            # d log a = g * a * h[t-1] = g * (h[t] - x[t]); ddt += sum_n dla * A ; dA += sum dla * dt
            dla = x
            torch.sub(hs, x, out=dla)
            dla.mul_(g)
            ddt_a = torch.einsum("tbcdn,dn->tbcd", dla, A)
            dA += dla.mul_(dt_tm[..., None]).sum((0, 1, 2))  # (einsum here is ~100x slower on CPU)
            u_tm = _to_tm(u, c0, nc, T)
            du[:, :, sl] = _from_tm(sx * dt_tm)
            ddt[:, :, sl] = _from_tm(torch.addcmul(ddt_a, sx, u_tm))
        dB = dB.transpose(2, 3)[..., :L]
        dC = dC.transpose(2, 3)[..., :L]
        return du[..., :L], ddt[..., :L], dA, dB, dC, G, None, None, None, None


def _bc_tm(Mt: torch.Tensor, c0: int, nc: int, T: int) -> torch.Tensor:
    """``(b, g, Lp, n)`` -> ``(T, b, nc, g, n)`` for chunks ``c0 .. c0+nc``."""
    b, g, _, n = Mt.shape
    blk = Mt[:, :, c0 * T:(c0 + nc) * T].reshape(b, g, nc, T, n)
    return blk.permute(3, 0, 2, 1, 4).contiguous()


def selective_scan_chunked(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                           return_last_state=False, initial_state=None, chunk_len=None, block_elems=None,
                           carry=None):
    """Chunked, cache-blocked scan in pure PyTorch with a hand-written backward.

    Same arguments and result as :func:`selective_scan`; ``chunk_len`` (steps per chunk),
    ``block_elems`` (elements of one block tensor) and ``carry`` (how start states cross the chunks
    of a block: ``"loop"``, ``"log"`` or ``"auto"``, see :data:`CARRIES`; else ``$OPAMA_SCAN_CARRY``)
    tune speed only: the results agree to float rounding.
    """
    _check(u, delta, A)
    dtype = u.dtype
    b, d, l = u.shape
    dt = _delta(delta, delta_bias, delta_softplus)
    Af = A.float()
    Bm = _bc_4d(B, b, d, l, "B")
    Cm = _bc_4d(C, b, d, l, "C")
    n = Af.shape[1]
    h0 = (initial_state.float() if initial_state is not None
          else torch.zeros(b, d, n, dtype=torch.float32, device=u.device))
    if l == 0:
        y, last = u.new_zeros(b, d, 0, dtype=torch.float32), h0
    else:
        uf = u.float()
        grad = torch.is_grad_enabled() and any(t.requires_grad for t in (uf, dt, Af, Bm, Cm, h0))
        y, last = _ChunkedScanFn.apply(uf, dt, Af, Bm, Cm, h0, chunk_len, block_elems, carry, grad)
    out = _finish(y, u, D, z, dtype)
    return (out, last) if return_last_state else out


# ----------------------------------------------------------------------------------------------
# public entry point
# ----------------------------------------------------------------------------------------------


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, backend=None, initial_state=None):
    """Mamba's selective scan; see the module docstring for shapes and the recurrence.

    Args:
        backend: ``"ref"``, ``"chunked"``, ``"cuda"`` or None/``"auto"`` (then ``$OPAMA_SCAN``, then
            automatic: ``cuda`` for CUDA tensors when mamba-ssm is importable, else ``chunked``).
        initial_state: optional ``(b, d, n)`` start state (``ref``/``chunked`` only).
    Returns:
        ``out (b, d, l)``, or ``(out, last_state (b, d, n))`` when ``return_last_state``.
    """
    name = resolve_backend(backend, u.device)
    if name == "cuda" and initial_state is not None:
        if backend is None and not os.environ.get("OPAMA_SCAN"):
            name = "chunked"  # automatic choice: fall back to a backend that supports it
        else:
            raise ValueError("backend 'cuda' (mamba-ssm) does not support initial_state")
    if name == "cuda":
        return _cuda_fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    fn = selective_scan_ref if name == "ref" else selective_scan_chunked
    return fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, initial_state)
