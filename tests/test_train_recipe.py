"""The tiny recipe's options beyond the reference: --prediction-type (kept in the model folder) and
the UNet warm-up (--unet-steps: plain inpainting pre-training, then frozen unless --train-backbone)."""

import json

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file
from typer.testing import CliRunner

from opama_model.model_dir import load_model_dir
from opama_model.presets import build_components, with_prediction_type
from opama_model.training import TrainConfig, train
from opama_model.training.sample import SampleSettings, make_sample
from opama_model.training.step import draw_step, unet_inputs
from opama_tools.cli import app
from opama_tools.data.train_data import load_records

from test_train import CANVAS, _cfg, panorama_data

runner = CliRunner()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return panorama_data(tmp_path_factory, "recipe", 3)


def test_unet_only_sample_is_the_full_sample_without_the_conditioner_images():
    g = torch.Generator().manual_seed(0)
    pano = torch.rand(3, *CANVAS, generator=g) * 2 - 1
    st = SampleSettings(view_size=64, canvas_hw=CANVAS)
    for k, yaw in ((0, 0), (5, 37), (17, 300)):
        full = make_sample(pano, k, yaw, st)
        light = make_sample(pano, k, yaw, st, unet_only=True)
        assert set(light) == {"target", "unknown", "masked_image", "k"}
        for key in light:
            assert torch.equal(light[key], full[key]), (k, key)


def test_v_prediction_target_and_scheduler_copy():
    comps = build_components("tiny", random_weights=True, seed=0)
    eps = comps.scheduler
    v = with_prediction_type(eps, "v_prediction")
    assert type(v) is type(eps) and v.config.prediction_type == "v_prediction"
    assert eps.config.prediction_type == "epsilon"  # the original is untouched
    assert torch.equal(v.alphas_cumprod, eps.alphas_cumprod)
    with pytest.raises(ValueError, match="prediction type"):
        with_prediction_type(eps, "sample_x0")
    pano = torch.rand(3, *CANVAS, generator=torch.Generator().manual_seed(1)) * 2 - 1
    s = make_sample(pano, 3, 0, SampleSettings(view_size=64, canvas_hw=CANVAS), unet_only=True)
    batch = {k: t.unsqueeze(0) for k, t in s.items()}
    draws = draw_step(0, 0, [0], (4, 16, 16), 1000)
    x_e, t, target_e = unet_inputs(comps.vae, eps, batch, draws)
    x_v, _, target_v = unet_inputs(comps.vae, v, batch, draws)
    assert torch.equal(x_e, x_v) and x_e.shape == (1, 9, 16, 16)
    # v = sqrt(a) * noise - sqrt(1 - a) * x0, with x0 recovered from the noisy latent and the noise
    a = eps.alphas_cumprod[t].view(-1, 1, 1, 1)
    noisy, noise = x_e[:, :4], target_e
    x0 = (noisy - (1 - a).sqrt() * noise) / a.sqrt()
    torch.testing.assert_close(target_v, a.sqrt() * noise - (1 - a).sqrt() * x0, atol=1e-4, rtol=1e-4)


def test_prediction_type_is_kept_in_the_model_folder(data, tmp_path, one_thread):
    png, cap = data
    res = train(_cfg(tmp_path / "v", prediction_type="v_prediction"), load_records(png, [cap]))
    assert json.loads((res.model_dir / "scheduler" / "scheduler_config.json").read_text())[
        "prediction_type"] == "v_prediction"
    comps = load_model_dir(res.model_dir)
    assert comps.scheduler.config.prediction_type == "v_prediction"
    # and the pipeline's samplers take it from there
    from opama_model.pipeline import OPaMaPipeline, make_scheduler

    pipe = OPaMaPipeline.from_components(comps)
    assert make_scheduler("dpm++2m-karras", pipe.scheduler.config).config.prediction_type == "v_prediction"
    # a folder without scheduler/ (written before) uses the preset's
    default = train(_cfg(tmp_path / "eps"), load_records(png, [cap]))
    assert load_model_dir(default.model_dir).scheduler.config.prediction_type == "epsilon"


def test_unet_warmup_trains_the_unet_then_freezes_it(data, tmp_path, one_thread):
    png, cap = data
    recs = load_records(png, [cap])
    kw = dict(unet_steps=3, unet_batch=2, vae_steps=2, vae_batch=2, prediction_type="v_prediction")
    seen = []
    one = train(_cfg(tmp_path / "one", steps=1, **kw), recs, progress=lambda p: seen.append((p.phase, p.step)))
    two = train(_cfg(tmp_path / "two", steps=2, **kw), recs)
    assert [s for p, s in seen if p == "unet"] == [1, 2, 3] and ("train", 1) in seen
    assert json.loads((one.model_dir / "opama_model.json").read_text())["trained"] == ["conditioner", "unet", "vae"]
    u1, u2 = load_file(str(one.model_dir / "unet" / "diffusion_pytorch_model.safetensors")), \
        load_file(str(two.model_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    random_unet = build_components("tiny", random_weights=True, seed=0).unet.state_dict()
    assert any(not torch.equal(u1[k], random_unet[k]) for k in u1)  # the warm-up trained it
    assert all(torch.equal(u1[k], u2[k]) for k in u1)  # ... and the main phase did not (frozen)
    c1, c2 = _conditioner(one.model_dir), _conditioner(two.model_dir)
    assert any(not torch.equal(c1[k], c2[k]) for k in c1)  # the conditioner did train
    # with --train-backbone the UNet keeps training after the warm-up
    both = train(_cfg(tmp_path / "both", steps=2, train_backbone=True, **kw), recs)
    u3 = load_file(str(both.model_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    assert any(not torch.equal(u2[k], u3[k]) for k in u2)
    assert UNet2DConditionModel.from_pretrained(one.model_dir / "unet").config.in_channels == 9


def test_vae_warmup_leaves_a_deterministic_posterior(data, tmp_path, one_thread):
    """The training step samples the VAE posterior (as the reference does with SD's VAE, whose spread is
    negligible). A random VAE fitted for a few steps must not keep its initial spread (std ~1 before the
    fix, ~0.65 of the latent std after 250 steps): the saved VAE's posterior is its mean."""
    from diffusers import AutoencoderKL

    from opama_model.training.warmup import deterministic_posterior_

    fresh = build_components("tiny", random_weights=True, seed=0).vae
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        assert float(fresh.encode(x).latent_dist.std.mean()) > 0.3  # a random VAE is far from deterministic
        before = fresh.encode(x).latent_dist.mean
        deterministic_posterior_(fresh)
        after = fresh.encode(x).latent_dist
    assert torch.equal(after.mean, before)  # the mean half is untouched
    assert float(after.std.max()) < 1e-6

    png, cap = data
    run = train(_cfg(tmp_path / "vae", steps=1, vae_steps=2, vae_batch=2, train_backbone=True),
                load_records(png, [cap]))
    vae = AutoencoderKL.from_pretrained(run.model_dir / "vae")
    with torch.no_grad():
        d = vae.encode(x).latent_dist
    assert float((d.std * vae.config.scaling_factor).max()) < 1e-6
    assert float((d.mean * vae.config.scaling_factor).std()) > 0.1


def test_warmup_lr_shapes(data, tmp_path, one_thread):
    """--warmup-lr cosine: each warm-up's lr goes from its set value down to ~0 by its last step
    (reported per step); constant keeps it; the conditioner phase is not affected (reference)."""
    import math

    from opama_model.training.warmup import warmup_lr_factor

    assert warmup_lr_factor("constant", 7, 10) == 1.0
    assert warmup_lr_factor("cosine", 0, 10) == 1.0 and warmup_lr_factor("cosine", 5, 10) == pytest.approx(0.5)
    assert warmup_lr_factor("cosine", 9, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.9)))
    with pytest.raises(ValueError, match="cosine"):
        warmup_lr_factor("linear", 0, 10)
    png, cap = data
    recs = load_records(png, [cap])
    kw = dict(steps=1, vae_steps=4, vae_batch=1, unet_steps=4, unet_batch=1, vae_lr=1e-3, unet_lr=2e-3, lr=5e-4)
    for shape in ("constant", "cosine"):
        seen = []
        train(_cfg(tmp_path / shape, warmup_lr=shape, **kw), recs, progress=seen.append)
        for phase, base in (("vae", 1e-3), ("unet", 2e-3)):
            lrs = [p.lr for p in seen if p.phase == phase]
            want = [base * warmup_lr_factor(shape, k, 4) for k in range(4)]
            assert lrs == pytest.approx(want), (shape, phase)
        assert [p.lr for p in seen if p.phase == "train"] == [5e-4]


def _conditioner(model_dir):
    out = {}
    for f in sorted((model_dir / "conditioner").glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def test_recipe_options_bad_input_one_line_exit_2(data, tmp_path):
    png, cap = data
    base = ["train", "--data", str(png), "--captions", str(cap), "--out", str(tmp_path / "run"), "--steps", "1",
            "--canvas", "64x128"]
    for extra, word in ((["--prediction-type", "x0"], "--prediction-type"), (["--unet-steps", "-1"], "--unet-steps"),
                        (["--unet-steps", "2", "--unet-lr", "0"], "--unet-lr"),
                        (["--unet-steps", "2", "--warmup-lr", "linear"], "--warmup-lr"),
                        (["--preset", "sd2", "--unet-steps", "2"], "--unet-steps")):
        res = runner.invoke(app, base + extra)
        assert res.exit_code == 2 and word in res.output and "Traceback" not in res.output, (extra, res.output)
    assert not (tmp_path / "run").exists()
