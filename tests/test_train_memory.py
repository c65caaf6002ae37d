"""Training memory options: gradient checkpointing (same gradients), frozen parts stored in the
mixed-precision dtype, the optimiser choice, the recipe hint, and the --random-weights model folder."""

import dataclasses
import json

import pytest
import torch
from typer.testing import CliRunner

from opama_model.training import TrainConfig, train
from opama_model.training.sample import SampleSettings, make_sample
from opama_model.training.step import MODE_CAPTION, MODE_NULL, Parts, diffusion_loss, draw_step
from opama_model.training.trainer import cast_frozen_, enable_checkpointing, recipe_hint
from opama_tools.cli import app
from opama_tools.data.train_data import load_records

from test_train import CANVAS, _cfg, panorama_data

runner = CliRunner()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return panorama_data(tmp_path_factory, "train_memory", 2)


def _batch(comps, n=2):
    from torch.utils.data import default_collate

    st = SampleSettings(view_size=comps.preset.image_size, canvas_hw=CANVAS)
    pano = torch.rand(3, *CANVAS, generator=torch.Generator().manual_seed(3)) * 2 - 1
    items = [dict(make_sample(pano, 4 + j, 30 * j, st), caption="a red room") for j in range(n)]
    return default_collate(items)


def _grads(comps, batch, draws):
    comps.conditioner.zero_grad(set_to_none=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        loss = diffusion_loss(Parts(comps, comps.conditioner, comps.unet), batch, draws).mean()
    loss.backward()
    return {n: p.grad.clone() for n, p in comps.conditioner.named_parameters()}, sum(saved)


def test_gradient_checkpointing_gives_the_same_gradients(one_thread):
    from opama_model.mamba import MambaBlock
    from opama_model.presets import build_components

    comps = build_components("tiny", seed=0)
    comps.conditioner.requires_grad_(True)
    comps.conditioner.train()
    batch = _batch(comps)
    draws = draw_step(0, 0, [0, 1], (4, 16, 16), 1000, modes=[MODE_CAPTION, MODE_NULL])
    plain, saved_plain = _grads(comps, batch, draws)
    enable_checkpointing(comps, comps.conditioner)
    blocks = [m for m in comps.conditioner.modules() if isinstance(m, MambaBlock)]
    assert blocks and all(m.gradient_checkpointing for m in blocks)
    assert comps.unet.is_gradient_checkpointing
    ckpt, saved_ckpt = _grads(comps, batch, draws)
    assert saved_ckpt < 0.5 * saved_plain  # the recomputed blocks keep (far) fewer tensors for backward
    assert plain.keys() == ckpt.keys()
    nonzero = 0
    for k in plain:
        assert torch.allclose(plain[k], ckpt[k], rtol=0, atol=1e-6), (k, (plain[k] - ckpt[k]).abs().max())
        nonzero += int(plain[k].abs().max() > 0)
    # gradients reach the GMA (through the frozen UNet's residual inputs) and the VCR
    assert any(k.startswith("gma.") and plain[k].abs().max() > 0 for k in plain)
    assert any(k.startswith("vcr.") and plain[k].abs().max() > 0 for k in plain)
    assert nonzero > 0.5 * len(plain)


def test_frozen_parts_are_stored_in_the_mixed_precision_dtype():
    from opama_model.presets import build_components

    comps = build_components("tiny", seed=0)
    cast = cast_frozen_(comps, torch.bfloat16, keep=("vae",))
    assert cast == ["unet", "text_encoder", "image_encoder"]
    for name in cast:
        assert {p.dtype for p in getattr(comps, name).parameters()} == {torch.bfloat16}, name
    assert {p.dtype for p in comps.vae.parameters()} == {torch.float32}  # kept (e.g. trained by a warm-up)
    assert {p.dtype for p in comps.conditioner.parameters()} == {torch.float32}  # fp32 master weights
    comps.conditioner.requires_grad_(True)
    batch = _batch(comps, 1)
    draws = draw_step(0, 0, [0], (4, 16, 16), 1000, modes=[MODE_CAPTION])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = diffusion_loss(Parts(comps, comps.conditioner, comps.unet), batch, draws).mean()
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in comps.conditioner.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 for g in grads)


def test_bf16_run_with_checkpointing_trains_and_saves_fp32_parts(data, tmp_path, one_thread):
    png, cap = data
    res = train(_cfg(tmp_path / "run", mixed_precision="bf16", gradient_checkpointing=True, unet_steps=1,
                     unet_batch=1), load_records(png, [cap]))
    assert res.step == 2 and all(torch.isfinite(torch.tensor(res.losses)))
    from safetensors.torch import load_file

    for part in ("conditioner", "unet"):  # the warmed-up UNet is saved, so it is not cast
        for f in (res.model_dir / part).glob("*.safetensors"):
            assert {t.dtype for t in load_file(f).values()} == {torch.float32}, f


def test_adamw8bit_without_bitsandbytes_or_cuda_is_one_line_exit_2(data, tmp_path):
    png, cap = data
    res = runner.invoke(app, ["train", "--data", str(png), "--captions", str(cap), "--out", str(tmp_path / "run"),
                              "--steps", "1", "--canvas", "64x128", "--optimizer", "adamw8bit"])
    assert res.exit_code == 2, res.output
    line = [ln for ln in res.output.splitlines() if "--optimizer adamw8bit" in ln]
    assert line and ("bitsandbytes" in line[0] or "CUDA" in line[0]) and "Traceback" not in res.output
    assert not (tmp_path / "run").exists()
    res = runner.invoke(app, ["train", "--data", str(png), "--out", str(tmp_path / "run"), "--steps", "1",
                              "--optimizer", "sgd"])
    assert res.exit_code == 2 and "--optimizer" in res.output


def test_recipe_hint_only_for_a_random_backbone_without_warmups():
    hint = recipe_hint(TrainConfig(out="x", preset="tiny", steps=1))
    assert hint and "--vae-steps 600 --unet-steps 600" in hint and "docs/training.md" in hint
    assert recipe_hint(TrainConfig(out="x", preset="tiny", steps=1, vae_steps=600, unet_steps=600)) is None
    assert recipe_hint(TrainConfig(out="x", preset="sd2", steps=1)) is None  # pretrained backbone
    assert recipe_hint(TrainConfig(out="x", preset="sd2", steps=1, random_weights=True)) is not None


def test_random_weights_model_folder_loads_in_outpaint(data, tmp_path, monkeypatch, one_thread):
    """The sd2 path, on tiny: the preset is marked pretrained (as sd2 is), so the backbone is random only
    because of ``--random-weights``, and a backbone the folder calls pretrained would need the (absent)
    SD-2 weights. The trainer must record ``random_backbone: true``; ``opama outpaint --model DIR
    --random-weights`` must build a random backbone even for a folder that says false."""
    from opama_model import presets
    from opama_model.weights import MissingWeightsError
    from opama_tools.outpaint.runner import load_model

    monkeypatch.setitem(presets.PRESETS, "tiny", dataclasses.replace(presets.PRESETS["tiny"], pretrained=True))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for var in ("OPAMA_SD2_INPAINT", "OPAMA_SD2_CLIP"):
        monkeypatch.delenv(var, raising=False)
    png, cap = data
    res = train(_cfg(tmp_path / "run", steps=1, random_weights=True), load_records(png, [cap]))
    info_file = res.model_dir / "opama_model.json"
    info = json.loads(info_file.read_text())
    assert info["random_backbone"] is True
    load_model(res.model_dir, device="cpu")  # no weights needed

    out = tmp_path / "pano"
    args = ["outpaint", "--model", str(res.model_dir), "--size", "64x128", "--steps", "1", "--views", "0,25",
            "--prompt", "a room", "--out", str(out)]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert (out / "pano.png").is_file()

    info["random_backbone"] = False  # a folder written before the fix
    info_file.write_text(json.dumps(info))
    with pytest.raises(MissingWeightsError):
        load_model(res.model_dir, device="cpu")
    r = runner.invoke(app, args + ["--random-weights"])
    assert r.exit_code == 0, r.output


def test_default_num_workers_by_device(monkeypatch):
    from opama_model.training.trainer import default_num_workers

    assert default_num_workers(torch.device("cpu")) == 0
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))
    assert default_num_workers(torch.device("cuda")) == 4
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    assert default_num_workers(torch.device("cuda")) == 1
