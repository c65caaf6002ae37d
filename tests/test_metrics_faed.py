"""FAED: PanFusion's checkpoint layout loads into the encoder (Lightning dict, safetensors),
features equal an independent functional computation from the state dict, circular
padding makes features invariant to 32-px horizontal rolls, missing weights are explained."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from test_metrics_helpers import no_weights_env, save_tiny_faed

from opama_tools.eval.metrics.faed import FaedEncoder, encoder_state_dict, load_faed
from opama_tools.eval.metrics.features import MetricUnavailable


def _reference_features(sd: dict, x: torch.Tensor) -> torch.Tensor:
    """Encoder + width mean + cos(latitude) weights, written with functional ops from the raw keys."""

    def conv(t, key, stride, pad):
        if pad:
            t = torch.cat((t[..., -pad:], t, t[..., :pad]), dim=-1)  # wrap longitude
            t = F.pad(t, (0, 0, pad, pad))  # zeros above / below
        return F.conv2d(t, sd[f"net.encoder.{key}.conv2d.weight"], sd[f"net.encoder.{key}.conv2d.bias"], stride)

    def bn(t, key):
        p = f"net.encoder.{key}"
        return F.batch_norm(t, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                            False, 0.0, 1e-5)

    def block(t, key):  # conv(stride 2, k 4, pad 1) + BN + ReLU
        return F.relu(bn(conv(t, f"{key}.conv1", 2, 1), f"{key}.batchnorm1"))

    def res(t, key, pad):
        h = F.relu(bn(conv(t, f"{key}.conv1", 1, pad), f"{key}.batchnorm1"))
        return t + bn(conv(h, f"{key}.conv2", 1, pad), f"{key}.batchnorm2")

    t = conv(x, "downconv1_rgb", 1, 4)
    t = res(t, "downres1_rgb", 4)
    for i, pad in zip(range(2, 6), (3, 2, 1, 1)):
        t = res(block(t, f"downconv{i}_rgb"), f"downres{i}_rgb", pad)
    t = conv(block(t, "downconv6_rgb"), "fuse", 1, 1)
    m = t.mean(dim=3)
    n = m.shape[-1]
    w = torch.tensor([math.cos(math.pi / 2 - math.pi * k / (n - 1)) for k in range(n)])
    return (m * w).reshape(x.shape[0], -1)


def _panos(n: int, h: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, h // 8, h // 4, 3)).astype(np.uint8)
    return np.repeat(np.repeat(base, 8, axis=1), 8, axis=2)  # blocky, so it is not pure noise


def test_lightning_checkpoint_loads_and_features_match_a_direct_computation(tmp_path):
    ck = save_tiny_faed(tmp_path / "faed.ckpt")
    net = load_faed(ck, height=128)
    assert net.name == "panfusion_faed" and net.path == ck
    raw = torch.load(ck, weights_only=True)["state_dict"]
    for k, v in net.encoder.state_dict().items():  # every encoder tensor, bit for bit
        assert torch.equal(v, raw[f"net.encoder.{k}"]), k
    imgs = _panos(3, 128)
    got = net.features(imgs)
    assert got.shape == (3, 4 * 128)
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1
    want = _reference_features(raw, x).double().numpy()
    # float32 convolutions, two code paths: agree to float32 rounding of O(1) activations
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # 4 latitude rows weighted cos(90°, 30°, -30°, -90°): the end rows ≈ 0, as PanFusion's linspace
    f = got.reshape(3, 128, 4)
    assert np.abs(f[..., [0, 3]]).max() < 1e-5 and np.abs(f[..., 1:3]).mean() > 1e-2


def test_features_invariant_to_32px_roll_and_resize(tmp_path):
    net = load_faed(save_tiny_faed(tmp_path / "faed.ckpt"), height=128)
    imgs = _panos(2, 128, seed=1)
    a = net.features(imgs)
    b = net.features(np.roll(imgs, 32 * 3, axis=2))  # 5 stride-2 stages: a 32-px roll rolls the features by 3
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert np.abs(a).max() > 1e-3
    c = net.features(np.roll(imgs, 5, axis=2))  # not a multiple of 32: features change
    assert np.abs(c - a).max() > 1e-4
    big = np.repeat(np.repeat(imgs, 2, axis=1), 2, axis=2)  # 256 px tall: resized to 128 first
    np.testing.assert_allclose(net.features(big), a, rtol=1e-3, atol=1e-3)


def test_safetensors_and_bare_state_dicts(tmp_path):
    from safetensors.torch import save_file

    raw = torch.load(save_tiny_faed(tmp_path / "faed.ckpt"), weights_only=True)["state_dict"]
    save_file({k: v.contiguous() for k, v in raw.items()}, str(tmp_path / "faed.safetensors"))
    net = load_faed(tmp_path / "faed.safetensors", height=64)
    assert net.name == "custom:faed"
    enc = {k[len("net.encoder."):]: v for k, v in raw.items() if k.startswith("net.encoder.")}
    assert set(encoder_state_dict({"encoder." + k: v for k, v in enc.items()})) == set(enc)
    assert set(encoder_state_dict(enc)) == set(FaedEncoder().state_dict())


def test_missing_and_wrong_files_are_unavailable(tmp_path, monkeypatch):
    no_weights_env(monkeypatch, tmp_path)
    with pytest.raises(MetricUnavailable) as e:
        load_faed()
    assert "faed.ckpt" in str(e.value) and "--faed-weights" in str(e.value) and "OPAMA_FAED" in str(e.value)
    bad = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"net.encoder.fuse.conv2d.weight": torch.zeros(1)}}, str(bad))
    with pytest.raises(MetricUnavailable, match="not PanFusion's FAED checkpoint"):
        load_faed(bad)
    from opama_tools.weights import component

    assert "faed.ckpt" in component("faed").cache_hint()


def test_faed_through_evaluate(tmp_path):
    from test_metrics_helpers import synthetic_pano8, write_pngs

    from opama_tools.eval.evaluate import EvalOptions, evaluate

    write_pngs(tmp_path / "ref", {f"p{k}.png": synthetic_pano8(k, 64) for k in range(4)})
    write_pngs(tmp_path / "gen", {f"p{k}.png": synthetic_pano8(k + 30, 64) for k in range(4)})
    opts = EvalOptions(metrics=("faed",), faed_weights=str(save_tiny_faed(tmp_path / "faed.ckpt")), faed_height=96,
                       set_bootstrap=3, device="cpu")
    same = {m.label: m for m in evaluate(tmp_path / "ref", tmp_path / "ref", opts).metrics}["FAED[panfusion_faed]"]
    diff = {m.label: m for m in evaluate(tmp_path / "gen", tmp_path / "ref", opts).metrics}["FAED[panfusion_faed]"]
    assert same.status == "ok" and same.n == 4 and abs(same.value) < 1e-9  # identical feature sets
    # random weights give small features (|f| ~ 1e-2), so distances are small; still far from 0
    assert diff.value > 1000 * max(abs(same.value), 1e-10) and "96x192" in diff.detail
