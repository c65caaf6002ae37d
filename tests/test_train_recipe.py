"""The tiny recipe's options beyond the reference: --prediction-type (kept in the model folder) and
the UNet warm-up (--unet-steps: plain inpainting pre-training, then frozen unless --train-backbone;
--unet-context text: the caption's text-encoder states as its context)."""

import json
import os
import signal
import subprocess
import sys

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

from test_train import CANVAS, KILL_SCRIPT, ROOT, _cfg, _tensors, panorama_data

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
                        (["--unet-steps", "2", "--unet-context", "image"], "--unet-context"),
                        (["--unet-steps", "2", "--unet-context", "text", "--unet-context-dropout", "1.5"],
                         "--unet-context-dropout"),
                        (["--preset", "sd2", "--unet-steps", "2"], "--unet-steps")):
        res = runner.invoke(app, base + extra)
        assert res.exit_code == 2 and word in res.output and "Traceback" not in res.output, (extra, res.output)
    assert not (tmp_path / "run").exists()


def _warmup_contexts(recs, context: str, dropout: float, steps: int = 2, batch: int = 2):
    """The ``encoder_hidden_states`` the UNet gets in each step of a warm-up on ``recs``, and its last loss."""
    from opama_model.training.data import PanoramaDataset
    from opama_model.training.warmup import unet_warmup

    comps = build_components("tiny", random_weights=True, seed=0)
    seen = []
    comps.unet.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["encoder_hidden_states"].detach().clone()),
                                         with_kwargs=True)
    ds = PanoramaDataset(recs, SampleSettings(view_size=64, canvas_hw=CANVAS), seed=0)
    loss = unet_warmup(comps, ds, torch.device("cpu"), steps=steps, lr=1e-3, batch=batch, seed=0, context=context,
                       text_dropout=dropout)
    return comps, seen, loss


def test_text_warmup_context_is_the_caption_or_the_empty_caption(data, one_thread):
    """--unet-context text: the UNet sees the caption's text-encoder states (so two captions give two
    contexts), the empty caption's where guidance dropout drops it; null: the conditioner's null tokens."""
    from dataclasses import replace

    from opama_model.training.warmup import warmup_context

    png, cap = data
    recs = load_records(png, [cap])
    comps = build_components("tiny", random_weights=True, seed=0)
    a, b = warmup_context(comps, ["a room with a window", "a field under the sky"], [False, False])
    assert a.shape == (77, comps.unet.config.cross_attention_dim) and not torch.allclose(a, b)
    empty = comps.encode_text([""])[0]
    dropped = warmup_context(comps, ["a room with a window", "a field under the sky"], [True, False])
    assert torch.equal(dropped[0], empty) and torch.equal(dropped[1], b)

    # other captions, as many view captions (the same random draws): another context, another loss
    other = [replace(r, caption="a kitchen at night", view_captions=tuple(f"a lamp {j}" for j in
                                                                          range(len(r.view_captions)))) for r in recs]
    _, text1, loss1 = _warmup_contexts(recs, "text", 0.0)
    _, text2, loss2 = _warmup_contexts(other, "text", 0.0)
    assert len(text1) == 2 and text1[0].shape == (2, 77, 32)
    assert all(not torch.equal(x, y) for x, y in zip(text1, text2)) and loss1 != loss2  # the caption matters
    plain = [replace(r, caption="a kitchen at night", view_captions=()) for r in recs]
    kitchen = comps.encode_text(["a kitchen at night"])[0]
    assert all(torch.equal(x[j], kitchen) for x in _warmup_contexts(plain, "text", 0.0)[1] for j in range(2))
    # dropped (probability 1): the empty caption's states, whatever the caption
    _, drop1, d1 = _warmup_contexts(recs, "text", 1.0)
    _, drop2, d2 = _warmup_contexts(other, "text", 1.0)
    assert all(torch.equal(x[j], empty) for x in drop1 + drop2 for j in range(2)) and d1 == d2
    # null (the default): the conditioner's null tokens, as before
    c, null, _ = _warmup_contexts(recs, "null", 0.1)
    assert all(torch.equal(x, c.conditioner.null_condition(2)) for x in null)


def test_text_warmup_run_resumes_bit_identically(data, tmp_path, one_thread):
    """A run with the text warm-up killed after its checkpoint and resumed ends with the weights of an
    uninterrupted run; resuming it with the other warm-up context is refused."""
    png, cap = data
    recs = load_records(png, [cap])
    common = dict(steps=3, save_every=1, vae_steps=1, vae_batch=1, unet_steps=2, unet_batch=2,
                  unet_warmup_context="text", unet_warmup_dropout=0.5, canvas_hw=CANVAS, val_every=0, seed=5)
    killed = tmp_path / "killed"
    script = KILL_SCRIPT.format(cfg={**common, "out": str(killed)}, kill_at=2, data=str(png), cap=str(cap))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert (killed / "checkpoint-1").is_dir() and not (killed / "model").exists()
    from opama_model.training import TrainError

    with pytest.raises(TrainError, match="unet_warmup_context='text'"):
        train(TrainConfig(out=str(killed), resume=True, **dict(common, unet_warmup_context="null")), recs)
    resumed = train(TrainConfig(out=str(killed), resume=True, **common), recs)
    full = train(TrainConfig(out=str(tmp_path / "full"), **common), recs)
    assert resumed.step == 3 and full.losses[-len(resumed.losses):] == resumed.losses
    a, b = _tensors(killed / "model"), _tensors(tmp_path / "full" / "model")
    assert a.keys() == b.keys() and any(k.startswith("unet/") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    info = json.loads((killed / "model" / "opama_model.json").read_text())["training"]
    assert info["unet_warmup_context"] == "text" and info["unet_warmup_dropout"] == 0.5
    # the text warm-up gives another UNet than the null one (same seed, same draws otherwise)
    null = train(TrainConfig(out=str(tmp_path / "null"), **dict(common, unet_warmup_context="null", steps=1)), recs)
    un = _tensors(null.model_dir)
    assert any(not torch.equal(un[k], b[k]) for k in un if k.startswith("unet/"))
