"""Reference-checkpoint converter: names and shapes as the reference modules define them.

The state dicts below are built from the reference's module definitions (PengleiGao/OPaMa
``models/my_modules.py`` and ``models/inpaint_model_mamba.py``), written out here by hand and
not through opama's mapping: ``CusMamba`` = ``layers`` (8 mamba-ssm ``Block``: ``mixer`` +
``norm``), ``gate`` (Linear(dim, 1, bias=False)), ``proj`` (Linear(dim, dim));
``MambaAdapter`` = ``patch_embed`` (Sequential conv, LayerNorm(gamma, beta), SiLU, conv, LayerNorm,
SiLU, conv), ``image_embed`` (1, 7, C, 1, 1), ``block1..4`` (``in_conv`` 1x1 where channels change,
``layers`` 4 Blocks, ``global_local_mamba`` 2 Blocks in blocks 2-4); three ``nn.Embedding``.
"""

import argparse
import hashlib
import json
import math

import pytest
import torch
from typer.testing import CliRunner

from opama_model.model_dir import load_model_dir, read_model_info
from opama_model.presets import conditioner_kwargs
from opama_model.reference import (
    ReferenceCheckpointError,
    from_reference_state_dict,
    load_reference_checkpoint,
    reference_config,
)
from opama_tools.cli import app

runner = CliRunner()


def _mamba(d, d_state, d_conv=4, expand=2):
    di, r = expand * d, math.ceil(d / 16)
    return {"A_log": (di, d_state), "D": (di,), "in_proj.weight": (2 * di, d), "conv1d.weight": (di, 1, d_conv),
            "conv1d.bias": (di,), "x_proj.weight": (r + 2 * d_state, di), "dt_proj.weight": (di, r),
            "dt_proj.bias": (di,), "out_proj.weight": (d, di)}


def _block(d, d_state):
    out = {f"mixer.{k}": v for k, v in _mamba(d, d_state).items()}
    out.update({"norm.weight": (d,), "norm.bias": (d,)})
    return out


def reference_shapes(dim=1024, stem=(80, 160, 320), channels=(320, 640, 1280, 1280), vcr_depth=8,
                     d_state=16, text_len=77, null_rows=77, pairs=2):
    """``{part: {name: shape}}`` of the reference's saved ``state_dict``."""
    projector = {}
    for i in range(vcr_depth):
        projector.update({f"layers.{i}.{k}": v for k, v in _block(dim, d_state).items()})
    projector.update({"gate.weight": (1, dim), "proj.weight": (dim, dim), "proj.bias": (dim,)})
    adapter = {}
    prev = 5
    for j, c in enumerate(stem):
        adapter[f"patch_embed.{3 * j}.weight"] = (c, prev, 3, 3)
        adapter[f"patch_embed.{3 * j}.bias"] = (c,)
        if j < len(stem) - 1:
            adapter[f"patch_embed.{3 * j + 1}.gamma"] = (c,)
            adapter[f"patch_embed.{3 * j + 1}.beta"] = (c,)
        prev = c
    adapter["image_embed"] = (1, 7, channels[0], 1, 1)
    prev = channels[0]
    for k, c in enumerate(channels, start=1):
        if c != prev:
            adapter[f"block{k}.in_conv.weight"] = (c, prev, 1, 1)
            adapter[f"block{k}.in_conv.bias"] = (c,)
        for i in range(2 * pairs):
            adapter.update({f"block{k}.layers.{i}.{n}": v for n, v in _block(c, d_state).items()})
        if k > 1:
            for i in range(pairs):
                adapter.update({f"block{k}.global_local_mamba.{i}.{n}": v for n, v in _block(c, d_state).items()})
        prev = c
    return {"projector": projector, "adapter": adapter, "text_embedding": {"weight": (text_len, dim)},
            "vision_embedding": {"weight": (7, dim)}, "uncond_embed": {"weight": (null_rows, dim)}}


def tiny_reference_state(seed=0, pairs=2):
    """Random tensors, reference names, widths of the tiny preset (dim 32, stages 32/64)."""
    g = torch.Generator().manual_seed(seed)
    shapes = reference_shapes(dim=32, stem=(16, 32), channels=(32, 64), vcr_depth=2, d_state=8, pairs=pairs)
    return {part: {n: torch.randn(s, generator=g) for n, s in d.items()} for part, d in shapes.items()}


def test_sd2_names_and_shapes_convert_on_meta_with_the_reference_counts():
    shapes = reference_shapes()
    with torch.device("meta"):
        state = {p: {n: torch.empty(s) for n, s in d.items()} for p, d in shapes.items()}
    cfg = reference_config(state)
    want = dict(conditioner_kwargs("sd2", "opama"), gma_global_stages=None)
    assert cfg == want
    m = from_reference_state_dict(state)
    assert all(p.is_meta for p in m.parameters())
    n = {p: sum(math.prod(s) for s in d.values()) for p, d in shapes.items()}
    # the reference's own parameter counts (issue 10), part by part
    assert n["projector"] == 54_396_928 and n["adapter"] == 144_702_560
    assert n["text_embedding"] + n["vision_embedding"] == 86_016 and n["uncond_embed"] == 78_848
    count = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
    assert count(m.vcr.layers) + count(m.vcr.proj) + count(m.vcr.gate) == n["projector"]
    assert count(m.gma) == n["adapter"]
    assert m.vcr.vision_embedding.numel() + m.vcr.text_embedding.numel() == 86_016
    assert m.null_tokens.numel() == 7_168
    assert count(m) == sum(n.values()) - 70 * 1024  # everything but the 70 unread null rows


def test_tiny_state_converts_and_every_tensor_lands_in_place():
    state = tiny_reference_state()
    m = from_reference_state_dict(state)
    p, a = state["projector"], state["adapter"]
    assert torch.equal(m.vcr.layers[1].mixer.A_log, p["layers.1.mixer.A_log"])
    assert torch.equal(m.vcr.layers[0].mixer.in_proj.weight, p["layers.0.mixer.in_proj.weight"])
    assert torch.equal(m.vcr.layers[1].norm.bias, p["layers.1.norm.bias"])
    assert torch.equal(m.vcr.proj.bias, p["proj.bias"]) and torch.equal(m.vcr.gate.weight, p["gate.weight"])
    assert torch.equal(m.vcr.vision_embedding, state["vision_embedding"]["weight"])
    assert torch.equal(m.vcr.text_embedding, state["text_embedding"]["weight"])
    assert torch.equal(m.null_tokens, state["uncond_embed"]["weight"][:7])
    assert torch.equal(m.gma.stem[0].weight, a["patch_embed.0.weight"])
    assert torch.equal(m.gma.stem[1].gamma, a["patch_embed.1.gamma"])
    assert torch.equal(m.gma.stem[3].bias, a["patch_embed.3.bias"])
    assert torch.equal(m.gma.image_embed, a["image_embed"][0, :, :, 0, 0])
    assert torch.equal(m.gma.stages[1].in_conv.weight, a["block2.in_conv.weight"])
    assert torch.equal(m.gma.stages[0].layers[3].mixer.dt_proj.bias, a["block1.layers.3.mixer.dt_proj.bias"])
    assert torch.equal(m.gma.stages[1].layers[2].mixer.x_proj.weight, a["block2.layers.2.mixer.x_proj.weight"])
    assert torch.equal(m.gma.stages[1].cross[1].mixer.D, a["block2.global_local_mamba.1.mixer.D"])
    assert torch.equal(m.gma.stages[1].cross[0].norm.weight, a["block2.global_local_mamba.0.norm.weight"])
    # one to one: as many tensors and values as the reference holds (less the 70 unread null rows)
    ref_n = sum(t.numel() for d in state.values() for t in d.values())
    assert sum(t.numel() for t in m.state_dict().values()) == ref_n - 70 * 32
    assert len(m.state_dict()) == sum(len(d) for d in state.values())
    # trainable float32 parameters on the CPU (fine-tuning a converted model works)
    assert all(isinstance(t, torch.nn.Parameter) and t.requires_grad and t.dtype == torch.float32
               and t.device.type == "cpu" for t in m.parameters())
    # no shared storage with the input (safe to save) and it runs
    state["projector"]["proj.bias"].add_(1.0)
    assert not torch.equal(m.vcr.proj.bias, state["projector"]["proj.bias"])
    with torch.no_grad():
        out = m(torch.randn(1, 7, 5, 16, 16), torch.randn(1, 7, 32), torch.randn(1, 77, 32))
    assert out.encoder_hidden_states.shape == (1, 84, 32)
    assert [tuple(r.shape) for r in out.down_intrablock_additional_residuals] == [(1, 32, 4, 4), (1, 64, 2, 2)]


@pytest.mark.parametrize("edit,needle", [
    (lambda s: s["adapter"].pop("block2.layers.3.mixer.D"), "'adapter.block2.layers.3.mixer.D'"),
    (lambda s: s["projector"].__setitem__("layers.0.extra", torch.zeros(3)), "'projector.layers.0.extra'"),
    (lambda s: s["adapter"].__setitem__("block1.in_conv.weight", torch.zeros(32, 32, 1, 1)),
     "'adapter.block1.in_conv.weight'"),
    (lambda s: s["adapter"].__setitem__("block2.layers.1.norm.weight", torch.zeros(32)),
     "'adapter.block2.layers.1.norm.weight' has shape (32)"),
    (lambda s: s["adapter"].__setitem__("image_embed", torch.zeros(7, 32)), "'adapter.image_embed' has shape (7, 32)"),
    (lambda s: s["uncond_embed"].__setitem__("weight", torch.zeros(5, 32)), "'uncond_embed.weight' has shape (5, 32)"),
    (lambda s: s.pop("vision_embedding"), "'vision_embedding' is missing"),
    (lambda s: s["adapter"].__setitem__("patch_embed.0.weight", torch.zeros(16, 3, 3, 3)), "input channels"),
])
def test_mismatches_name_the_first_bad_tensor(edit, needle):
    state = tiny_reference_state()
    edit(state)
    with pytest.raises(ReferenceCheckpointError) as e:
        from_reference_state_dict(state)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg


def test_lightning_file_converts_and_the_folder_loads(tmp_path):
    state = tiny_reference_state(seed=3, pairs=1)  # one pair per stage (the tiny preset's depth): fast
    ckpt = tmp_path / "epoch=239.ckpt"
    # what Lightning writes around the reference's on_save_checkpoint state_dict
    torch.save({"epoch": 239, "global_step": 1000, "pytorch-lightning_version": "1.9.3", "state_dict": state,
                "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-4}]}], "lr_schedulers": []}, ckpt)
    m = load_reference_checkpoint(ckpt)
    assert torch.equal(m.gma.stem[0].weight, state["adapter"]["patch_embed.0.weight"])
    out = tmp_path / "model"
    res = runner.invoke(app, ["convert-reference", str(ckpt), str(out)])
    assert res.exit_code == 0, res.output
    info = read_model_info(out)
    assert info["preset"] == "tiny" and info["conditioner"] == "opama" and info["trained"] == ["conditioner"]
    assert info["source"]["file"] == ckpt.name and info["source"]["null_rows_dropped"] == 70
    assert info["source"]["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    comps = load_model_dir(out)
    c = comps.conditioner
    assert torch.equal(c.vcr.layers[1].mixer.out_proj.weight, state["projector"]["layers.1.mixer.out_proj.weight"])
    assert c.config.gma_local_depth == 1 and c.config.gma_global_depth == 1
    assert torch.equal(c.gma.stages[1].cross[0].mixer.conv1d.weight,
                       state["adapter"]["block2.global_local_mamba.0.mixer.conv1d.weight"])
    assert torch.equal(c.null_tokens, state["uncond_embed"]["weight"][:7])
    # and the loaded model conditions the tiny UNet
    with torch.no_grad():
        cond = c(torch.randn(1, 7, 5, 64, 64), torch.randn(1, 7, 32), comps.encode_text(["a room"]))
        eps = comps.unet(torch.randn(1, 9, 16, 16), torch.tensor([10]), encoder_hidden_states=cond.encoder_hidden_states,
                         down_intrablock_additional_residuals=list(cond.down_intrablock_additional_residuals)).sample
    assert eps.shape == (1, 4, 16, 16) and torch.isfinite(eps).all()
    # a re-run replaces the folder atomically
    res = runner.invoke(app, ["convert-reference", str(ckpt), str(out), "--preset", "tiny"])
    assert res.exit_code == 0, res.output
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def _bad(tmp_path, *args):
    res = runner.invoke(app, ["convert-reference", *map(str, args)])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    return res.exit_code, lines


def test_cli_bad_inputs_one_line_exit_2(tmp_path):
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": tiny_reference_state()}, good)
    code, lines = _bad(tmp_path, tmp_path / "nope.ckpt", tmp_path / "o")
    assert code == 2 and len(lines) == 1 and "nope.ckpt: no such file" in lines[0]
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    code, lines = _bad(tmp_path, junk, tmp_path / "o")
    assert code == 2 and len(lines) == 1 and "junk.ckpt: not a PyTorch checkpoint" in lines[0]
    pickled = tmp_path / "hparams.ckpt"  # hyper-parameters as a Python object: refused, not unpickled
    torch.save({"state_dict": tiny_reference_state(), "hyper_parameters": argparse.Namespace(lr=1e-4)}, pickled)
    code, lines = _bad(tmp_path, pickled, tmp_path / "o")
    assert code == 2 and len(lines) == 1 and "unpickling of arbitrary Python objects" in lines[0]
    broken = tmp_path / "broken.ckpt"
    st = tiny_reference_state()
    del st["projector"]["gate.weight"]
    torch.save({"state_dict": st}, broken)
    code, lines = _bad(tmp_path, broken, tmp_path / "o")
    assert code == 2 and len(lines) == 1 and "'projector.gate.weight'" in lines[0]
    code, lines = _bad(tmp_path, good, tmp_path / "o", "--preset", "sd2")
    assert code == 2 and len(lines) == 1 and "fits no sd2 backbone" in lines[0]
    code, lines = _bad(tmp_path, good, tmp_path / "o", "--preset", "huge")
    assert code == 2 and len(lines) == 1 and "--preset" in lines[0]
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    code, lines = _bad(tmp_path, good, other)
    assert code == 2 and len(lines) == 1 and "refusing to replace" in lines[0]
    assert (other / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "o").exists()  # nothing partial left by the failures


def test_help_has_a_working_example():
    res = runner.invoke(app, ["convert-reference", "--help"])
    assert res.exit_code == 0 and "Example: opama convert-reference" in res.output
    res = runner.invoke(app, ["--help"])
    assert "convert-reference" in res.output


def test_reference_json_config_is_saved(tmp_path):
    m = from_reference_state_dict(tiny_reference_state())
    m.save_pretrained(tmp_path / "c")
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    assert cfg["gma_residual"] == "reference" and cfg["gma_ring_scan"] is False and cfg["vcr_depth"] == 2


def test_cli_non_checkpoints_one_clear_line(tmp_path):
    """Files that are no checkpoint at all: one line saying so (never torch's internal message), exit 2."""
    import zipfile

    files = {
        "text.ckpt": b"some text\nmore\n",  # torch.load: "pop from empty list"
        "mark.ckpt": b"(.",
        "digits.ckpt": b"hello",  # torch.load: "101"
        "empty.ckpt": b"",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    with zipfile.ZipFile(tmp_path / "archive.ckpt", "w") as z:
        z.writestr("x.txt", "hi")
    torch.save({"a": 1}, tmp_path / "ints.ckpt")
    want = {"text.ckpt": "not a PyTorch checkpoint (expected a .ckpt/.pt file written by torch.save",
            "mark.ckpt": "not a PyTorch checkpoint (expected", "digits.ckpt": "not a PyTorch checkpoint (expected",
            "empty.ckpt": "empty file, not a PyTorch checkpoint",
            "archive.ckpt": "a zip archive but not a PyTorch checkpoint",
            "ints.ckpt": "'a' is an int, not a tensor (not an OPa-Ma reference checkpoint)"}
    for name, text in want.items():
        code, lines = _bad(tmp_path, tmp_path / name, tmp_path / "o")
        assert code == 2 and len(lines) == 1, (name, lines)
        assert f"{name}: {text}" in lines[0], (name, lines)
        assert "pop from empty list" not in lines[0] and "inline_container" not in lines[0]
    assert not (tmp_path / "o").exists()
