"""Selective scan: every backend against the sequential reference, forward and gradients."""

import pytest
import torch

from opama_model import scan
from opama_model.scan import selective_scan, selective_scan_chunked, selective_scan_ref

HAS_CUDA_SCAN = torch.cuda.is_available() and scan.cuda_scan_available()


def make(b, d, n, l, bc="var", seed=0, dt_scale=0.5, device="cpu"):
    """Random scan inputs; bc: 'var' (b,n,l), 'grouped' (b,2,n,l), 'const' (d,n)."""
    g = torch.Generator().manual_seed(seed)

    def r(*s, scale=1.0):
        return (torch.randn(*s, generator=g) * scale).to(device).requires_grad_()

    bc_shape = {"var": (b, n, l), "grouped": (b, 2, n, l), "const": (d, n)}[bc]
    A = (-(torch.rand(d, n, generator=g) * 3 + 0.1)).to(device).requires_grad_()
    return dict(u=r(b, d, l), delta=r(b, d, l, scale=dt_scale), A=A, B=r(*bc_shape), C=r(*bc_shape),
                D=r(d), z=r(b, d, l), delta_bias=r(d))


def run(fn, inp, opts, use_last=True, **kw):
    """Forward + backward of a random scalar function of (out, last state); returns values and grads."""
    for v in inp.values():
        v.grad = None
    args = {k: inp[k] for k in ("u", "delta", "A", "B", "C")}
    for k in ("D", "z", "delta_bias"):
        if k in opts:
            args[k] = inp[k]
    out, last = fn(**args, delta_softplus="softplus" in opts, return_last_state=True, **kw)
    w = torch.linspace(-1, 1, out.numel(), device=out.device).view_as(out)
    loss = (out * w).sum() + (last.square().sum() if use_last else 0)
    loss.backward()
    grads = {k: inp[k].grad.clone() for k in args if inp[k].grad is not None}
    return out.detach(), last.detach(), grads


def assert_close(res, ref, rtol):
    """Each tensor within rtol of the reference's largest magnitude (a relative max error)."""
    (o, s, g), (o0, s0, g0) = res, ref
    for name, x, x0 in [("out", o, o0), ("last", s, s0)] + [(k, g[k], g0[k]) for k in g0]:
        err = float((x.float() - x0.float()).abs().max() / x0.float().abs().max().clamp_min(1e-30))
        assert err < rtol, f"{name}: relative max error {err:.2e}"
    assert set(g) == set(g0)


OPTS = [(), ("softplus",), ("D", "z"), ("D", "z", "delta_bias", "softplus")]


@pytest.mark.parametrize("opts", OPTS)
@pytest.mark.parametrize("bc", ["var", "grouped", "const"])
def test_chunked_matches_ref(opts, bc):
    inp = make(2, 6, 4, 77, bc=bc)
    ref = run(selective_scan_ref, inp, opts)
    # small chunks and blocks so that padding, several chunks and several blocks are all exercised
    for kw in ({}, {"chunk_len": 4, "block_elems": 6 * 4 * 2 * 8}, {"chunk_len": 1, "block_elems": 1},
               {"chunk_len": 4, "carry": "log"}, {"chunk_len": 2, "block_elems": 6 * 4 * 2 * 22, "carry": "log"}):
        assert_close(run(selective_scan_chunked, inp, opts, **kw), ref, 2e-5)


@pytest.mark.parametrize("nc", [1, 2, 3, 5, 8, 9, 16, 29, 64])
@pytest.mark.parametrize("reverse", [False, True])
def test_log_carry_matches_the_loop(nc, reverse):
    g = torch.Generator().manual_seed(nc)
    P = torch.rand(2, nc, 3, 4, generator=g)  # decays in [0, 1)
    q, h = torch.randn(2, nc, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    H_want, state = torch.empty_like(P), h
    for c in (range(nc - 1, -1, -1) if reverse else range(nc)):
        H_want[:, c] = state
        state = P[:, c] * state + q[:, c]
    H, last = scan._affine_carry(P, q, h, reverse=reverse)
    torch.testing.assert_close(H, H_want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(last, state, rtol=1e-6, atol=1e-6)


def test_carry_choice():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert scan._Plan(4096, 7, 640, 16, cuda).carry == "log"  # the GMA's first stage on a GPU: nc = 29
    assert scan._Plan(4096, 7, 640, 16, cpu).carry == "loop"
    assert scan._Plan(64, 1, 4, 4, cuda, T=16).carry == "loop"  # 4 chunks: the loop is as short
    assert scan._Plan(4096, 7, 640, 16, cpu, carry="log").carry == "log"
    # without gradients a GPU takes larger blocks (nothing is kept for a backward), as far as its free memory allows
    gib = 1 << 30
    assert scan._infer_block_elems(100 * gib) == scan._BLOCK_ELEMS_CUDA_INFER == 4 * scan._BLOCK_ELEMS_CUDA
    assert scan._infer_block_elems(2 * gib) == 2 * gib // 64  # a float32 block: 1/16 of the free memory
    assert scan._infer_block_elems(100 << 20) == scan._BLOCK_ELEMS_CUDA
    big = scan._Plan(4096, 7, 640, 16, cuda, block_elems=scan._BLOCK_ELEMS_CUDA_INFER)
    assert big.nblocks < scan._Plan(4096, 7, 640, 16, cuda).nblocks
    assert scan._Plan(4096, 7, 640, 16, cpu, grad=False).nblocks == scan._Plan(4096, 7, 640, 16, cpu).nblocks
    with pytest.raises(ValueError, match="chunk carry"):
        scan._Plan(64, 1, 4, 4, cpu, carry="tree")


def test_long_sequence_forward_and_gradients():
    # L >= 4096 and not a multiple of the chunk length; the reference loop takes ~1 s here
    inp = make(1, 4, 4, 4100, seed=1)
    opts = ("D", "z", "delta_bias", "softplus")
    ref = run(selective_scan_ref, inp, opts)
    assert_close(run(selective_scan_chunked, inp, opts), ref, 1e-4)
    assert_close(run(selective_scan_chunked, inp, opts, chunk_len=64, block_elems=1 << 12), ref, 1e-4)
    assert_close(run(selective_scan_chunked, inp, opts, chunk_len=8, carry="log"), ref, 1e-4)  # 513 chunks


def test_initial_state_gradient_matches_ref():
    inp = make(2, 3, 5, 40, seed=2)
    h0 = torch.randn(2, 3, 5, requires_grad=True)
    got = []
    for fn in (selective_scan_ref, selective_scan_chunked):
        h0.grad = None
        out = fn(inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], initial_state=h0, delta_softplus=True)
        out.pow(2).sum().backward()
        got.append((out.detach(), h0.grad.clone()))
    assert torch.allclose(got[0][0], got[1][0], rtol=1e-5, atol=1e-5)
    assert torch.allclose(got[0][1], got[1][1], rtol=1e-4, atol=1e-5)
    # the initial state matters (so the comparison above is not vacuous)
    assert got[0][1].abs().max() > 1e-3


def test_ref_matches_closed_form():
    """The reference loop against the recurrence's closed form, summed directly in float64:
    y[t] = sum_{s<=t} sum_n C[n,t] exp(A[n] * sum_{r=s+1..t} delta[r]) delta[s] B[n,s] u[s] + D u[t]."""
    inp = make(2, 3, 4, 40, seed=3)
    with torch.no_grad():
        u, dt, A, B, C, D = (inp[k].double() for k in ("u", "delta", "A", "B", "C", "D"))
        dt = torch.nn.functional.softplus(dt)
        cs = dt.cumsum(-1)  # (b, d, l)
        seg = cs[..., :, None] - cs[..., None, :]  # (b, d, t, s): sum of dt over (s, t]
        mask = torch.ones(40, 40, dtype=torch.bool).tril()
        decay = torch.exp(seg[..., None] * A[None, :, None, None, :]) * mask[..., None]  # (b, d, t, s, n)
        w = torch.einsum("bdtsn,bnt,bns->bdts", decay, C, B)
        y = torch.einsum("bdts,bds->bdt", w, dt * u) + D[:, None] * u
        ours = selective_scan_ref(inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], D=inp["D"],
                                  delta_softplus=True)
    assert torch.allclose(ours.double(), y, rtol=1e-5, atol=1e-5)


def test_stable_with_large_decays():
    # delta*|A| up to ~500 per step: a cumsum/exp(-cumsum) formulation would overflow to inf/nan
    inp = make(1, 4, 4, 300, seed=4, dt_scale=30.0)
    with torch.no_grad():
        inp["A"].mul_(10)
    opts = ("softplus", "D")
    ref = run(selective_scan_ref, inp, opts)
    res = run(selective_scan_chunked, inp, opts, chunk_len=64)
    assert all(torch.isfinite(t).all() for t in (res[0], res[1], *res[2].values()))
    assert_close(res, ref, 1e-5)


def test_low_precision_inputs_keep_dtype():
    inp = make(1, 4, 4, 50, seed=5)
    u = inp["u"].detach().bfloat16()
    out = selective_scan(u, inp["delta"].detach().bfloat16(), inp["A"].detach(), inp["B"].detach(),
                         inp["C"].detach(), backend="chunked")
    ref = selective_scan_ref(u.float(), inp["delta"].detach().bfloat16().float(), inp["A"].detach(),
                             inp["B"].detach(), inp["C"].detach())
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), ref, rtol=1e-2, atol=1e-2)


def test_backend_selection(monkeypatch):
    inp = make(1, 2, 2, 10)
    args = [inp[k].detach() for k in ("u", "delta", "A", "B", "C")]
    monkeypatch.delenv("OPAMA_SCAN", raising=False)
    assert scan.resolve_backend(None, torch.device("cpu")) == "chunked"
    monkeypatch.setenv("OPAMA_SCAN", "ref")
    assert scan.resolve_backend(None, torch.device("cpu")) == "ref"
    called = []
    monkeypatch.setattr(scan, "selective_scan_ref", lambda *a, **k: called.append(1) or "ref-ran")
    assert selective_scan(*args) == "ref-ran" and called
    monkeypatch.setenv("OPAMA_SCAN", "nonsense")
    with pytest.raises(ValueError, match="unknown selective-scan backend"):
        selective_scan(*args)
    monkeypatch.delenv("OPAMA_SCAN")
    # explicit 'cuda' without a CUDA tensor or without mamba-ssm's kernel: a clear error
    with pytest.raises(RuntimeError, match="backend 'cuda'"):
        selective_scan(*args, backend="cuda")


def test_cuda_unavailable_message(monkeypatch):
    monkeypatch.setattr(scan, "_cuda_fn", None)
    monkeypatch.setattr(scan, "_cuda_err", "ModuleNotFoundError: No module named 'selective_scan_cuda'")
    with pytest.raises(RuntimeError, match="needs mamba-ssm.*selective_scan_cuda"):
        scan.resolve_backend("cuda", torch.device("cuda"))
    assert scan.resolve_backend(None, torch.device("cuda")) == "chunked"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_chunked_on_cuda_matches_ref():
    inp = make(2, 8, 4, 1000, seed=6, device="cuda")
    opts = ("D", "z", "delta_bias", "softplus")
    assert_close(run(selective_scan_chunked, inp, opts), run(selective_scan_ref, inp, opts), 1e-4)


@pytest.mark.skipif(not HAS_CUDA_SCAN, reason="needs mamba-ssm's compiled kernel and a CUDA device")
@pytest.mark.parametrize("bc", ["var", "grouped", "const"])
def test_cuda_kernel_matches_ref(bc):
    inp = make(2, 8, 4, 4096, bc=bc, seed=7, device="cuda")
    opts = ("D", "z", "delta_bias", "softplus")
    # mamba-ssm's last state carries no gradient: the loss uses the output only
    ref = run(selective_scan_ref, inp, opts, use_last=False)
    assert_close(run(lambda **k: selective_scan(**k, backend="cuda"), inp, opts, use_last=False), ref, 1e-4)
