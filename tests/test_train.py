"""opama train: checkpoints, exact resume after SIGKILL, bad input, SIGTERM, and the loss falling."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from opama_model.training import TrainConfig, train
from opama_tools.cli import app
from opama_tools.data.train_data import load_records

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
CANVAS = (64, 128)  # tiny views are 64 px: a small canvas keeps every step fast


def _write_panoramas(folder: Path, n: int, h: int = 64) -> Path:
    """Synthetic ray-cast panoramas (PNG, tonemapped) + an opama caption JSONL with view captions."""
    from opama_tools.data.synthetic import make_scene, render_equirect

    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for k in range(n):
        scene = make_scene(k)
        hdr = render_equirect(scene, h, 2 * h, supersample=1)
        ldr = np.clip((hdr / (1 + hdr)) ** (1 / 2.2), 0, 1)
        Image.fromarray((ldr * 255).round().astype(np.uint8)).save(folder / f"p{k}.png")
        views = [{"yaw": y, "pitch": 0, "caption": f"view {y} of scene {k}"} for y in range(0, 360, 60)]
        lines.append(json.dumps({"image": f"p{k}.png", "caption": scene.description, "views": views}))
    cap = folder.parent / f"{folder.name}.jsonl"
    cap.write_text("\n".join(lines) + "\n")
    return cap


def panorama_data(tmp_path_factory, name: str, n: int) -> tuple[Path, Path]:
    """``(png folder, caption JSONL)`` of ``n`` synthetic panoramas in a fresh temp folder ``name``."""
    root = tmp_path_factory.mktemp(name)
    cap = _write_panoramas(root / "png", n)
    return root / "png", cap


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return panorama_data(tmp_path_factory, "train", 4)


def _cfg(out, **kw):
    base = dict(out=str(out), steps=2, canvas_hw=CANVAS, save_every=0, val_every=0, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def _tensors(folder: Path) -> dict:
    out = {}
    for f in sorted(folder.rglob("*.safetensors")):
        for k, v in load_file(str(f)).items():
            out[f"{f.relative_to(folder)}:{k}"] = v
    return out


KILL_SCRIPT = """
import os, signal, sys, torch
torch.set_num_threads(1)
from opama_model.training import TrainConfig, train
from opama_tools.data.train_data import load_records
cfg = TrainConfig(**{cfg})
def progress(p):
    if p.phase == "train" and p.step == {kill_at}:
        os.kill(os.getpid(), signal.SIGKILL)
train(cfg, load_records({data!r}, [{cap!r}]), progress=progress)
"""


def test_exact_resume_after_sigkill_is_bit_identical(data, tmp_path, one_thread):
    png, cap = data
    recs = load_records(png, [cap])
    common = dict(steps=4, save_every=2, train_backbone=True, ema=0.9, vae_steps=2, vae_batch=2, lr=1e-3,
                  canvas_hw=CANVAS, val_every=0, seed=3)
    killed = tmp_path / "killed"
    script = KILL_SCRIPT.format(cfg={**common, "out": str(killed)}, kill_at=3, data=str(png), cap=str(cap))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert (killed / "checkpoint-2").is_dir() and not list(killed.glob("checkpoint-[34]"))
    assert not (killed / "model").exists()

    resumed = train(TrainConfig(out=str(killed), resume=True, **common), recs)
    assert resumed.resumed_from.name == "checkpoint-2" and resumed.step == 4
    full = train(TrainConfig(out=str(tmp_path / "full"), **common), recs)
    assert full.losses[2:] == resumed.losses  # the same draws after the resume point
    a, b = _tensors(killed / "model"), _tensors(tmp_path / "full" / "model")
    assert a.keys() == b.keys() and any(k.startswith("unet/") for k in a) and any(k.startswith("vae/") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bit-identical (EMA weights of conditioner + UNet, warm-up VAE)
    ea, eb = load_file(str(killed / "checkpoint-4" / "ema.safetensors")), \
        load_file(str(tmp_path / "full" / "checkpoint-4" / "ema.safetensors"))
    assert all(torch.equal(ea[k], eb[k]) for k in ea)
    # the log keeps one row per step across the interruption
    steps = [int(line.split(",")[0]) for line in (killed / "log.csv").read_text().splitlines()[1:]]
    assert steps == [1, 2, 3, 4]
    info = json.loads((killed / "model" / "opama_model.json").read_text())
    assert info["trained"] == ["conditioner", "unet", "vae"]


def test_checkpoint_holds_only_trainable_weights_and_loads_without_pickle(data, tmp_path, one_thread):
    png, cap = data
    res = train(_cfg(tmp_path / "run", save_every=1, keep=2, steps=3, val_every=3, val_count=2, panel_count=2,
                     panel_steps=2), load_records(png, [cap]), load_records(png, [cap])[:2])
    ckpts = sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*"))
    assert ckpts == ["checkpoint-2", "checkpoint-3"]  # --keep 2
    ck = tmp_path / "run" / "checkpoint-3"
    assert sorted(p.name for p in ck.iterdir()) == ["conditioner", "optimizer.pt", "rng-0.safetensors", "state.json"]
    from opama_model.presets import build_components

    comps = build_components("tiny")
    sd = load_file(str(ck / "conditioner" / "diffusion_pytorch_model.safetensors"))
    assert set(sd) == set(comps.conditioner.state_dict())  # no UNet / VAE / CLIP copy
    size = sum(f.stat().st_size for f in ck.rglob("*") if f.is_file())
    cond_bytes = sum(p.numel() * 4 for p in comps.conditioner.parameters())
    assert size < 3.5 * cond_bytes  # weights + two AdamW moments + small files
    opt = torch.load(ck / "optimizer.pt", weights_only=True)
    n_params = len(list(comps.conditioner.parameters()))
    assert sum(len(g["params"]) for g in opt["param_groups"]) == n_params
    assert 0 < len(opt["state"]) <= n_params  # a parameter without gradient yet has no state
    state = json.loads((ck / "state.json").read_text())
    assert state["step"] == 3 and state["micro_done"] == 3
    # the final model loads with load_model_dir, and its conditioner equals the last checkpoint's
    from opama_model.model_dir import load_model_dir

    m = load_model_dir(tmp_path / "run" / "model")
    for k, v in m.conditioner.state_dict().items():
        assert torch.equal(v, sd[k])
    assert res.val_loss is not None and (tmp_path / "run" / "panels" / "step-0000003.png").is_file()
    with Image.open(tmp_path / "run" / "panels" / "step-0000003.png") as im:
        assert im.size == (3 * 64, 2 * 64)  # masked input | generated | target, one row per sample
    rows = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert rows[0].startswith("step,phase,time_s,loss,lr") and len(rows) == 4


def test_bad_input_one_line_exit_2(data, tmp_path):
    png, cap = data
    base = ["train", "--out", str(tmp_path / "run"), "--steps", "1", "--canvas", "64x128"]

    def run(*args):
        res = runner.invoke(app, base + list(args))
        assert res.exit_code == 2, res.output
        assert "Traceback" not in res.output
        return res.output

    (tmp_path / "empty").mkdir()
    assert "no panoramas" in run("--data", str(tmp_path / "empty"))
    bad = tmp_path / "bad"
    bad.mkdir()
    Image.new("RGB", (100, 64)).save(bad / "x.png")
    assert "x.png" in run("--data", str(bad)) and "2:1" in run("--data", str(bad))
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"image": "nothing_here.png", "caption": "c"}) + "\n")
    assert "names none" in run("--data", str(png), "--captions", str(other))
    assert "--mixed-precision" in run("--data", str(png), "--mixed-precision", "fp8")
    assert "--steps" in run("--data", str(png), "--steps", "0")
    assert not (tmp_path / "run").exists()  # nothing partial written


def test_missing_sd2_weights_gives_the_doctor_message(data, tmp_path, monkeypatch):
    png, cap = data
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for var in ("OPAMA_SD2_INPAINT", "OPAMA_SD2_CLIP"):
        monkeypatch.delenv(var, raising=False)
    res = runner.invoke(app, ["train", "--data", str(png), "--out", str(tmp_path / "run"), "--steps", "1",
                              "--preset", "sd2"])
    assert res.exit_code == 2, res.output
    assert "stable-diffusion-2" in res.output and "Traceback" not in res.output


def test_resume_with_corrupt_checkpoint_and_rerun_without_resume(data, tmp_path, one_thread):
    png, cap = data
    out = tmp_path / "run"
    args = ["train", "--data", str(png), "--captions", str(cap), "--out", str(out), "--steps", "1",
            "--canvas", "64x128", "--val-every", "0"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, args)  # checkpoints exist: refuse to mix runs
    assert res.exit_code == 2 and "--resume" in res.output
    f = out / "checkpoint-1" / "conditioner" / "diffusion_pytorch_model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    before = sorted(p.name for p in out.iterdir())
    res = runner.invoke(app, args[:-4] + ["--steps", "2", "--canvas", "64x128", "--resume"])
    assert res.exit_code == 2, res.output
    assert "diffusion_pytorch_model.safetensors" in res.output and "Traceback" not in res.output
    assert sorted(p.name for p in out.iterdir()) == before  # no new checkpoint


def test_sigterm_saves_a_checkpoint_and_exits_143(data, tmp_path):
    png, cap = data
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "opama_tools.cli", "train", "--data", str(png), "--captions",
                             str(cap), "--out", str(out), "--steps", "100000", "--canvas", "64x128", "--save-every",
                             "0", "--val-every", "0"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    deadline = time.time() + 240
    log = out / "log.csv"
    while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= 3):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, output[-2000:]
    ckpts = list(out.glob("checkpoint-*"))
    assert len(ckpts) == 1 and (ckpts[0] / "state.json").is_file()
    assert not list(out.glob(".checkpoint-*"))
    assert not (out / "model").exists()
    step = json.loads((ckpts[0] / "state.json").read_text())["step"]
    assert ckpts[0].name == f"checkpoint-{step}" and step >= 2


def test_two_processes_match_one_process_with_the_same_global_batch(data, tmp_path, one_thread):
    """`accelerate launch --multi_gpu --num_processes 2` on this CPU machine (torchrun + gloo) with
    batch 1 per process vs one process with batch 2: the same samples and draws per step (the
    stream is world-size independent), so the weights differ only by float reassociation (batch-2
    kernels vs batch-1 kernels + all-reduce average), ~1e-7 per step. Tolerance 1e-5 after 2 AdamW
    steps at lr 1e-4: an Adam update is at most ~lr per weight, so reassociation noise stays orders of
    magnitude below the ~1e-4 the weights move, while a different sample or draw would move them
    by about as much as training does."""
    png, cap = data
    common = ["--data", str(png), "--captions", str(cap), "--steps", "2", "--canvas", "64x128", "--val-every", "0",
              "--save-every", "0"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    two = tmp_path / "two"
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           "-m", "opama_tools.cli", "train", "--out", str(two), "--batch-size", "1", "--cpu", *common],
                          env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    state = json.loads((two / "checkpoint-2" / "state.json").read_text())
    assert state["world_size"] == 2 and state["global_batch"] == 2
    res = runner.invoke(app, ["train", "--out", str(tmp_path / "one"), "--batch-size", "2", *common])
    assert res.exit_code == 0, res.output
    a = _tensors(two / "model")
    b = _tensors(tmp_path / "one" / "model")
    from opama_model.presets import build_components

    init = build_components("tiny").conditioner.state_dict()
    moved = max((b[k] - init[k.split(":", 1)[1]]).abs().max().item() for k in b)
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert moved > 1e-4
    assert diff < 1e-5, (diff, moved)
    la = [line.split(",")[3] for line in (two / "log.csv").read_text().splitlines()[1:]]
    lb = [line.split(",")[3] for line in (tmp_path / "one" / "log.csv").read_text().splitlines()[1:]]
    assert [float(x) for x in la] == pytest.approx([float(x) for x in lb], abs=1e-5)


def test_loss_falls_clearly_with_the_demo_recipe(data, tmp_path, one_thread):
    """Tiny preset, synthetic panoramas, CPU: the demo recipe (conditioner + UNet, lr 1e-3) halves the
    loss within 120 steps (seeded; mean of the first vs the last 20 steps)."""
    png, cap = data
    res = train(_cfg(tmp_path / "run", steps=120, lr=1e-3, train_backbone=True), load_records(png, [cap]))
    early, late = np.mean(res.losses[:20]), np.mean(res.losses[-20:])
    assert late < 0.5 * early, (early, late)


def test_out_of_memory_is_one_line_and_leaves_no_checkpoint(data, tmp_path, monkeypatch):
    png, cap = data

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr("opama_model.training.trainer.diffusion_loss", oom)
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "--data", str(png), "--captions", str(cap), "--out", str(out), "--steps", "2",
                              "--canvas", "64x128", "--batch-size", "4"])
    assert res.exit_code == 2, res.output
    assert "out of memory" in res.output and "--batch-size 4" in res.output and "Traceback" not in res.output
    assert not list(out.glob("checkpoint-*")) and not list(out.glob(".checkpoint-*")) and not (out / "model").exists()
