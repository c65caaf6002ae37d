"""Known-answer tests of the metrics, with tiny random networks loaded through the real loaders."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import linalg

from test_metrics_helpers import (
    save_tiny_hf_clip,
    save_tiny_inception,
    save_tiny_open_clip,
    save_tiny_squeezenet,
    synthetic_pano8,
    write_pngs,
)

from opama_tools.eval.metrics import fid as F
from opama_tools.eval.metrics.features import MetricUnavailable, load_fid_clip, load_inception
from opama_tools.eval.metrics.panorama import (
    PSNR_CAP_DB,
    input_coverage_mask,
    masked_psnr,
    masked_ssim,
    pole_variance,
    seam_score,
)


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    d = tmp_path_factory.mktemp("nets")
    return {
        "inception": save_tiny_inception(d / "tiny-inception.pt"),
        "clip": save_tiny_open_clip(d / "tiny-open-clip"),
        "hfclip": save_tiny_hf_clip(d / "tiny-hf-clip"),
        "squeeze": save_tiny_squeezenet(d / "tiny-squeeze.safetensors"),
    }


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255


# ---------------------------------------------------------------- FID / KID / IS


def _exact_gaussian_samples(rng, mu, cov, n):
    """Samples whose sample mean and (ddof 1) covariance are exactly ``mu`` and ``cov``."""
    z = rng.normal(size=(n, len(mu)))
    z -= z.mean(0)
    c = np.cov(z, rowvar=False)
    z = z @ np.linalg.inv(np.linalg.cholesky(c)).T  # whiten: sample cov = I
    return z @ np.linalg.cholesky(cov).T + mu


def test_fid_matches_closed_form_for_known_gaussian_stats():
    rng = np.random.default_rng(1)
    d = 6
    a = rng.normal(size=(d, d))
    b = rng.normal(size=(d, d))
    s1, s2 = a @ a.T + 0.5 * np.eye(d), b @ b.T + 0.1 * np.eye(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d) + 1.0
    r1 = linalg.sqrtm(s1)
    closed = float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * linalg.sqrtm(r1 @ s2 @ r1).real))
    f1 = _exact_gaussian_samples(rng, mu1, s1, 300)
    f2 = _exact_gaussian_samples(rng, mu2, s2, 200)
    assert F.fid_from_features(f1, f2) == pytest.approx(closed, rel=1e-8)
    assert F.fid_fast(f1, f2) == pytest.approx(closed, rel=1e-8)
    # isotropic case: FID = |dmu|^2 + d (s1 - s2)^2 for s*I covariances
    g1 = _exact_gaussian_samples(rng, np.zeros(d), 4.0 * np.eye(d), 100)
    g2 = _exact_gaussian_samples(rng, np.full(d, 0.5), 1.0 * np.eye(d), 100)
    assert F.fid_from_features(g1, g2) == pytest.approx(d * 0.25 + d * (2 - 1) ** 2, rel=1e-8)


def test_fid_fast_equals_clean_fid_when_fewer_samples_than_dims():
    rng = np.random.default_rng(2)
    f1, f2 = rng.normal(size=(40, 100)), rng.normal(size=(30, 100)) * 1.5 + 0.3
    assert F.fid_fast(f1, f2) == pytest.approx(F.fid_from_features(f1, f2), rel=1e-5)


def test_kid_mirrors_clean_fid_and_is_zero_for_identical_sets():
    from cleanfid.fid import kernel_distance

    rng = np.random.default_rng(3)
    f1, f2 = rng.normal(size=(60, 32)), rng.normal(size=(50, 32)) + 0.7
    np.random.seed(7)
    ref = kernel_distance(f1, f2, num_subsets=20, max_subset_size=40)
    assert F.kid_subsets(f1, f2, 20, 40, seed=7).mean() == pytest.approx(ref, rel=1e-12)
    diff, _ = F.kid_from_features(f1, f2, 20, 1000)
    # identical sets: the unbiased estimator's cross term includes k(x, x), a -O(1/m) offset
    big = rng.normal(size=(1000, 32))
    same, _ = F.kid_from_features(big, big.copy(), 5, 1000)
    assert diff > 0.1 and abs(same) < 0.01 * diff


def test_inception_score_known_answers():
    k = 5
    onehot = torch.eye(k).repeat(20, 1) * 50  # 100 confident predictions spread over 5 classes
    assert F.inception_score(onehot, splits=1)[0] == pytest.approx(k, rel=1e-3)
    flat = torch.zeros(100, k)  # uniform predictions: IS = 1
    assert F.inception_score(flat, splits=4)[0] == pytest.approx(1.0, abs=1e-6)


def test_in_memory_features_match_clean_fid_compute_fid(nets, tmp_path):
    """Our in-memory clean-fid pipeline == cleanfid.compute_fid(folder, folder, custom_feat_extractor)."""
    from cleanfid import fid as cfid

    net = load_inception(nets["inception"])
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (6, 40, 40, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-60, 60, a.shape), 0, 255).astype(np.uint8)
    write_pngs(tmp_path / "a", {f"{i}.png": im for i, im in enumerate(a)})
    write_pngs(tmp_path / "b", {f"{i}.png": im for i, im in enumerate(b)})
    ref = cfid.compute_fid(str(tmp_path / "a"), str(tmp_path / "b"), mode="clean", custom_feat_extractor=net,
                           num_workers=0, batch_size=4, device=torch.device("cpu"), verbose=False)
    ours = F.fid_from_features(net.features(a), net.features(b))
    assert ours == pytest.approx(ref, rel=1e-4)
    assert F.fid_from_features(net.features(a), net.features(a)) == pytest.approx(0.0, abs=1e-6)


def test_feature_networks_are_named_and_missing_files_explained(nets, tmp_path):
    inc = load_inception(nets["inception"])
    clip = load_fid_clip(nets["clip"])
    assert inc.name == "custom:tiny-inception" and clip.name == "custom:tiny-open-clip"
    assert clip.features(np.zeros((2, 299, 299, 3), np.uint8)).shape == (2, 16)
    with pytest.raises(MetricUnavailable, match="--inception-weights"):
        load_inception(tmp_path / "nope.pt")
    empty = tmp_path / "empty-clip"
    empty.mkdir()
    (empty / "open_clip_config.json").write_text((nets["clip"] / "open_clip_config.json").read_text())
    with pytest.raises(MetricUnavailable, match="without weights"):
        load_fid_clip(empty)


def test_lpips_and_clip_score_with_tiny_networks(nets):
    from opama_tools.eval.metrics.clip_score import clip_score_from_embeds, load_clip_scorer
    from opama_tools.eval.metrics.lpips import load_lpips

    lp = load_lpips(nets["squeeze"])
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(lp(x, x), torch.zeros(2, dtype=torch.float64))
    assert (lp(x, x.flip(-1)) > 0).all()

    from transformers import CLIPModel, CLIPProcessor

    sc = load_clip_scorer(nets["hfclip"])
    imgs = np.random.default_rng(0).integers(0, 256, (2, 40, 80, 3), dtype=np.uint8)
    texts = ["the room and", "a red house"]
    ours = clip_score_from_embeds(sc.image_embeds(imgs), sc.text_embeds(texts))
    m = CLIPModel.from_pretrained(str(nets["hfclip"]))
    p = CLIPProcessor.from_pretrained(str(nets["hfclip"]))
    out = m(**p(text=texts, images=list(imgs), return_tensors="pt", padding=True))
    cos = torch.diagonal(out.logits_per_image / m.logit_scale.exp()).double()
    assert torch.allclose(ours, 100 * cos.clamp_min(0), atol=1e-4)
    e = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert clip_score_from_embeds(e, torch.tensor([[2.0, 0.0], [-1.0, 0.0]])).tolist() == [100.0, 0.0]


# ---------------------------------------------------------------- weight-free 360° metrics


def test_seam_is_one_for_seamless_and_large_for_mismatched_halves():
    h = 64
    lat = (0.5 - (torch.arange(h) + 0.5) / h) * math.pi
    lon = ((torch.arange(2 * h) + 0.5) / (2 * h) - 0.5) * 2 * math.pi
    la, lo = torch.meshgrid(lat, lon, indexing="ij")
    smooth = torch.stack([0.5 + 0.3 * torch.cos(la) * torch.sin(k * lo + k) for k in (1, 2, 3)])[None]
    assert float(seam_score(smooth)) == pytest.approx(1.0, abs=0.1)  # analytic periodic: exactly continuous

    seamless, mismatched = [], []
    for s in range(6):
        a = synthetic_pano8(s, 128, supersample=2)
        b = synthetic_pano8(s + 50, 128, supersample=2)
        seamless.append(float(seam_score(_t(a))))
        # halves from two different scenes: the ±180° edge no longer meets
        mismatched.append(float(seam_score(_t(np.concatenate([a[:, :128], b[:, 128:]], axis=1)))))
        # swapping the halves of a seamless panorama is a 180° yaw turn: still seamless at its edge
        assert float(seam_score(_t(np.roll(a, 128, axis=1)))) < 3
    assert np.median(seamless) == pytest.approx(1.0, abs=0.25)
    assert min(mismatched) > 5 * np.median(seamless)


def test_pole_variance():
    x = torch.rand(1, 3, 32, 64)
    assert float(pole_variance(x)) > 0.05
    x[..., 0, :] = 0.3
    x[..., -1, :] = 0.7
    assert float(pole_variance(x)) == 0.0


def test_coverage_mask_matches_the_frustum_geometry():
    h, w = 256, 512
    m = input_coverage_mask(h, w, 0, 0, 90, (512, 512))
    lon = ((np.arange(w) + 0.5) / w - 0.5) * 2 * np.pi
    lat = (0.5 - (np.arange(h) + 0.5) / h) * np.pi
    # |x/z| <= 1, |y/z| <= 1*(511/511): |lon| <= 45° and |tan(lat)| <= cos(lon)
    expected = (np.abs(lon)[None] <= np.pi / 4) & (np.abs(np.tan(lat))[:, None] <= np.cos(lon)[None])
    assert (m.numpy() != expected).sum() <= 0.01 * expected.sum()
    assert m[h // 2, w // 2] and not m[h // 2, 0] and not m[5, w // 2]
    # a view turned right covers columns to the right of the centre
    r = input_coverage_mask(h, w, 90, 0, 90)
    assert r[h // 2, 3 * w // 4] and not r[h // 2, w // 2 - 100]


def test_masked_psnr_capped_for_identical_and_ssim_one():
    a = torch.from_numpy(synthetic_pano8(3, 64)).permute(2, 0, 1)[None].float() / 255
    m = input_coverage_mask(64, 128)
    assert float(masked_psnr(a, a.clone(), m)) == PSNR_CAP_DB
    assert float(masked_ssim(a, a.clone(), m)) == pytest.approx(1.0, abs=1e-9)
    b = a.clone()
    b[..., ~m] = 1 - b[..., ~m]  # change only outside the known region
    assert float(masked_psnr(a, b, m)) == PSNR_CAP_DB
    from torchmetrics.functional.image import structural_similarity_index_measure

    d = torch.from_numpy(synthetic_pano8(9, 64)).permute(2, 0, 1)[None].float() / 255
    _, full = structural_similarity_index_measure(a, d, data_range=1.0, reduction="none", return_full_image=True)
    assert float(masked_ssim(a, d, m)) == pytest.approx(float(full[..., m].double().mean()), abs=1e-5)  # bbox crop exact
    c = (a + 0.1).clamp(0, 1)
    mse = float(((a - c)[..., m] ** 2).mean())
    assert float(masked_psnr(a, c, m)) == pytest.approx(10 * math.log10(1 / mse), rel=1e-6)
