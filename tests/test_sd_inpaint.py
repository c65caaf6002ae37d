"""The training-free method: ``opama outpaint --model`` with a Stable Diffusion inpainting checkpoint
(a diffusers folder or its repo id in the local Hugging Face cache), no conditioner.

The checkpoints are tiny diffusers inpainting folders built here from configs with random weights
(the tiny preset's UNet/VAE architecture, 9 input channels), laid out as ``save_pretrained`` of
``StableDiffusionInpaintPipeline`` writes them (``model_index.json`` + one folder per component),
with a 1024-d text encoder (SD-2-like) and a 768-d one (SD-1.5-like).
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from opama_tools.cli import app

runner = CliRunner()
# 32 px views (UNet sample 8, VAE factor 4), 2 steps; two views keep each run to seconds
FAST = ["--size", "32x64", "--steps", "2", "--views", "0,25;0,-25"]


pytestmark = pytest.mark.usefixtures("one_thread_module")


def make_checkpoint(path: Path, text_dim: int, cls: str = "StableDiffusionInpaintPipeline",
                    in_channels: int = 9) -> Path:
    """A random-weight diffusers inpainting folder at ``path`` (text encoder width ``text_dim``)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from opama_model.presets import load_config
    from opama_model.tokenizer import build_tiny_clip_tokenizer

    torch.manual_seed(text_dim)
    tok = build_tiny_clip_tokenizer()
    ucfg = {k: v for k, v in load_config("tiny", "unet").items() if not k.startswith("_")}
    ucfg.update(cross_attention_dim=text_dim, sample_size=8, in_channels=in_channels)
    unet = UNet2DConditionModel(**ucfg)
    vae = AutoencoderKL.from_config(load_config("tiny", "vae"))
    text = CLIPTextModel(CLIPTextConfig(hidden_size=text_dim, intermediate_size=64, num_attention_heads=4,
                                        num_hidden_layers=1, max_position_embeddings=77, projection_dim=32,
                                        vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    sched = DDPMScheduler.from_config(load_config("tiny", "scheduler"))
    unet.save_pretrained(path / "unet")
    vae.save_pretrained(path / "vae")
    text.save_pretrained(path / "text_encoder")
    tok.save_pretrained(path / "tokenizer")
    sched.save_pretrained(path / "scheduler")
    index = {"_class_name": cls, "_diffusers_version": "0.30.0",
             "feature_extractor": [None, None], "safety_checker": [None, None], "requires_safety_checker": False,
             "scheduler": ["diffusers", "DDPMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"]}
    (path / "model_index.json").write_text(json.dumps(index))
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return {d: make_checkpoint(root / f"sd{d}", d) for d in (1024, 768)}


def write_photo(path, seed=0, size=32):
    a = (np.random.RandomState(seed).rand(size, size, 3) * 255).astype(np.uint8)
    Image.fromarray(a).save(path)
    return a


@pytest.mark.parametrize("dim", [1024, 768])
def test_inpainting_checkpoint_makes_a_panorama(tmp_path, checkpoints, dim):
    write_photo(tmp_path / "v.png")
    out = tmp_path / "o"
    res = runner.invoke(app, ["outpaint", "--model", str(checkpoints[dim]), "--size", "32x64", "--steps", "2",
                              "--input", f"{tmp_path / 'v.png'}@0,0,90", "--prompt", "a room", "--out", str(out)])
    assert res.exit_code == 0, res.output
    pano = np.asarray(Image.open(out / "pano.png"))
    mask = np.asarray(Image.open(out / "input_mask.png")) > 0
    assert pano.shape == (32, 64, 3) and 0 < mask.sum() < mask.size
    meta = json.loads((out / "meta.json").read_text())
    assert meta["method"] == "sd-inpaint" and meta["model_id"] == f"dir:{checkpoints[dim].resolve()}"
    assert meta["preset"] == "sd-inpaint" and meta["reuse_faces"] is False and meta["faces_reused"] == 0
    # the default schedule (AOG-Net's 21 views + completion): every pixel covered, passes as the plan says
    assert len(meta["views"]) >= 21 and meta["generated_views"] > 0
    assert meta["unet_passes"] == meta["unet_passes_expected"] == sum(v["unet_calls"] for v in meta["views"]) > 0
    assert meta["unet_rows"] == meta["unet_rows_expected"]
    # input pixels bit-identical to the pasted photo (same paste as the pipeline)
    from opama_model.pipeline import paste_inputs, to_uint8

    canvas, known = paste_inputs([np.asarray(Image.open(tmp_path / "v.png"))], [(0, 0, 90)], (32, 64))
    assert np.array_equal(known[0, 0].numpy(), mask)
    assert np.array_equal(pano[mask], to_uint8(canvas)[mask])
    # re-run: done already (the checkpoint is part of the key); a touched weight file redoes it
    res = runner.invoke(app, ["outpaint", "--model", str(checkpoints[dim]), "--size", "32x64", "--steps", "2",
                              "--input", f"{tmp_path / 'v.png'}@0,0,90", "--prompt", "a room", "--out", str(out)])
    assert res.exit_code == 0 and "already done" in res.output, res.output


def test_pipeline_without_conditioner_guides_with_the_empty_prompt(checkpoints):
    """Library route: no conditioner, no image encoder; CFG's null branch = the empty caption's states,
    no GMA residuals; batched and separate guidance agree."""
    from opama_model.sd_inpaint import load_inpaint_pipeline

    pipe = load_inpaint_pipeline(checkpoints[1024])
    assert pipe.method == "sd-inpaint" and pipe.conditioner is None and pipe.image_encoder is None
    calls = []
    orig = pipe._unet

    def spy(sample, t, tokens, residuals, mask=None):
        calls.append((tokens.clone(), residuals, mask))
        return orig(sample, t, tokens, residuals, mask)

    pipe._unet = spy
    kw = dict(prompt="a room", height=32, width=64, num_inference_steps=2, schedule=[(0.0, 0.0)], output_type="pt",
              guidance_fraction=1.0)
    sep = pipe(batched_cfg=False, **kw)
    cond, empty = pipe._encode_text("a room"), pipe._encode_text("")
    assert all(r is None and m is None for _, r, m in calls)
    assert torch.equal(calls[0][0], cond) and torch.equal(calls[1][0], empty)
    calls.clear()
    both = pipe(batched_cfg=True, **kw)
    assert torch.equal(calls[0][0], torch.cat((cond, empty))) and calls[0][2] is None
    assert sep.info["unet_passes"] == 2 * both.info["unet_passes"] == sep.info["unet_passes_expected"]
    # batch 2 vs two batch-1 calls: float rounding of the batched matmuls only (values in [-1, 1])
    assert (sep.images - both.images).abs().max() < 1e-2


@pytest.mark.parametrize("procedure", ["reference", "aog"])
def test_published_procedures_without_conditioner(checkpoints, procedure):
    """The reference (DPM-Solver++, separate CFG calls) and aog (PNDM, its warm-up pass counted)
    procedures run the same loop: every pixel filled, passes as the plan implies."""
    from opama_model.sd_inpaint import load_inpaint_pipeline

    pipe = load_inpaint_pipeline(checkpoints[768])
    photo = (np.random.RandomState(3).rand(32, 32, 3) * 255).astype(np.uint8)
    out = pipe([photo], [(0, 0, 90)], "a room", height=32, width=64, procedure=procedure, num_inference_steps=2,
               schedule=[(90.0, 0.0), (0.0, 60.0)], output_type="np")
    info = out.info
    assert info["method"] == "sd-inpaint" and info["procedure"] == procedure
    assert info["unet_passes"] == info["unet_passes_expected"] > 0
    assert info["unet_evals_per_view"] == (3 if procedure == "aog" else 2)  # PNDM: one warm-up evaluation more
    assert out.images[0].shape == (32, 64, 3)


def test_repo_id_from_the_hf_cache(tmp_path, checkpoints, monkeypatch):
    """``--model owner/name`` resolves through refs/main to its snapshot; doctor lists it."""
    import shutil

    cache = tmp_path / "hub"
    repo = "someone/tiny-inpainting"
    root = cache / ("models--" + repo.replace("/", "--"))
    commit = "a" * 40
    shutil.copytree(checkpoints[768], root / "snapshots" / commit)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    (root / "snapshots" / ("0" * 40)).mkdir()  # an older, empty snapshot: refs/main wins
    # another cached repo of another pipeline class is not listed
    other = cache / "models--x--sdxl" / "snapshots" / commit
    other.mkdir(parents=True)
    (other / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLInpaintPipeline"}))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    write_photo(tmp_path / "v.png")
    res = runner.invoke(app, ["outpaint", "--model", repo, *FAST, "--input", str(tmp_path / "v.png"),
                              "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "o" / "meta.json").read_text())
    assert meta["model_id"] == repo and meta["method"] == "sd-inpaint"
    from opama_tools.doctor import inpaint_checkpoints

    assert inpaint_checkpoints() == [(repo, str(root / "snapshots" / commit))]
    res = runner.invoke(app, ["doctor"], env={"COLUMNS": "300", "HF_HUB_CACHE": str(cache)})
    assert res.exit_code == 0 and repo in res.output and "x/sdxl" not in res.output, res.output
    # a repo id not in the cache: one line naming where it was looked for and what to download
    res = runner.invoke(app, ["outpaint", "--model", "stabilityai/stable-diffusion-2-inpainting", *FAST,
                              "--out", str(tmp_path / "o2")], env={"COLUMNS": "400"})
    assert res.exit_code == 2 and not (tmp_path / "o2").exists()
    line = res.output.strip()
    assert "\n" not in line and str(cache) in line and "huggingface-cli download" in line, res.output


def test_unsupported_folders_are_one_line_exit_2(tmp_path):
    sdxl = tmp_path / "sdxl"
    sdxl.mkdir()
    (sdxl / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLInpaintPipeline"}))
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("hello")
    four = tmp_path / "four"
    four.mkdir()
    (four / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionInpaintPipeline"}))
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        (four / part).mkdir()
    (four / "unet" / "config.json").write_text(json.dumps({"in_channels": 4}))
    for folder, words in ((sdxl, "StableDiffusionXLInpaintPipeline folder is not supported"),
                          (plain, "neither an opama model folder"), (four, "4 input channels")):
        out = tmp_path / ("o_" + folder.name)
        res = runner.invoke(app, ["outpaint", "--model", str(folder), *FAST, "--out", str(out)],
                            env={"COLUMNS": "400"})
        assert res.exit_code == 2, res.output
        assert len(res.output.strip().splitlines()) == 1 and words in res.output, res.output
        assert "StableDiffusionInpaintPipeline" in res.output and not out.exists()


def test_direction_prompts_change_only_their_views(tmp_path, checkpoints):
    from opama_model.sd_inpaint import load_inpaint_pipeline

    pipe = load_inpaint_pipeline(checkpoints[768])
    seen = []
    orig = pipe._condition

    def spy(inp, text, cache=None):
        seen.append(text.clone())
        return orig(inp, text, cache)

    pipe._condition = spy
    sched = [(0.0, 0.0), (0.0, 60.0), (90.0, -50.0), (180.0, 44.0), (-90.0, 0.0)]
    kw = dict(prompt="a room", height=32, width=64, num_inference_steps=2, schedule=sched, output_type="pt")
    base = pipe(**kw)
    n_base = len(seen)
    out = pipe(prompt_up="the sky", prompt_down="the floor", **kw)
    enc = {k: pipe._encode_text(v) for k, v in (("main", "a room"), ("up", "the sky"), ("down", "the floor"))}
    views = [v for v in out.info["views"] if v["generated"]]
    # text only: the view (0, 0) first, then the schedule
    assert [v["prompt"] for v in out.info["views"][:6]] == ["main", "main", "up", "down", "main", "main"]
    assert sum(v["prompt"] != "main" for v in views) >= 2
    for v, text in zip(views, seen[n_base:]):
        want = "up" if v["pitch"] >= 45 else "down" if v["pitch"] <= -45 else "main"
        assert v["prompt"] == want and torch.equal(text, enc[want])
    assert all(torch.equal(t, enc["main"]) for t in seen[:n_base])
    assert out.info["prompt_up"] == "the sky" and out.info["prompt_down"] == "the floor"
    # the first view (pitch 0, main prompt, same seed and canvas) is the same in both runs; its pixels
    # (yaw and pitch within +-45 degrees: rows 8..24, columns 24..40) are never overwritten
    assert out.info["views"][0]["kind"] == "first"
    assert torch.equal(base.images[:, :, 12:20, 28:36], out.images[:, :, 12:20, 28:36])
    assert not torch.equal(base.images, out.images)


def test_direction_prompts_from_the_cli_are_recorded(tmp_path, checkpoints):
    write_photo(tmp_path / "v.png")
    args = ["outpaint", "--model", str(checkpoints[768]), "--size", "32x64", "--steps", "2", "--views", "0,60;0,-60",
            "--input", str(tmp_path / "v.png"), "--out", str(tmp_path / "o")]
    res = runner.invoke(app, [*args, "--prompt-up", "the sky", "--prompt-down", "the floor"])
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "o" / "meta.json").read_text())
    assert meta["prompt_up"] == "the sky" and meta["prompt_down"] == "the floor"
    assert [v["prompt"] for v in meta["views"][:2]] == ["up", "down"]
    # with a trained-style model (the tiny preset's conditioner) too
    res = runner.invoke(app, [*args[:1], "--preset", "tiny", *args[3:-1], str(tmp_path / "t"), "--prompt-up", "sky"])
    assert res.exit_code == 0, res.output
    meta_t = json.loads((tmp_path / "t" / "meta.json").read_text())
    assert meta_t["method"] == "opama" and [v["prompt"] for v in meta_t["views"][:2]] == ["up", "main"]
    # the direction prompts are part of the done key: without them the panorama is redone
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and "written" in res.output, res.output
    assert json.loads((tmp_path / "o" / "meta.json").read_text())["prompt_up"] is None


def test_exported_backbone_is_the_same_model_without_conditioner(tmp_path):
    """export_inpaint_pipeline: an opama model folder's backbone as a diffusers inpainting folder; loaded
    back its weights are bit-identical, a panorama through it equals the same components run with
    conditioner=None in-process, and `opama outpaint --model` takes it as an sd-inpaint checkpoint."""
    from diffusers import StableDiffusionInpaintPipeline

    from opama_model.model_dir import save_model_dir
    from opama_model.pipeline import OPaMaPipeline
    from opama_model.presets import build_components, with_prediction_type
    from opama_model.sd_inpaint import EXPORT_FILE, export_inpaint_pipeline, load_inpaint_pipeline

    comps = build_components("tiny", random_weights=True, seed=0)
    with torch.no_grad():  # a UNet unlike the preset's seed-0 rebuild, as after the warm-up
        for p in comps.unet.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    comps.scheduler = with_prediction_type(comps.scheduler, "v_prediction")
    model = save_model_dir(comps, tmp_path / "model", trained=("conditioner", "unet"),
                           extra={"training": {"unet_warmup_context": "text"}})
    out = export_inpaint_pipeline(model, tmp_path / "sd-inpaint")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["model_index.json", EXPORT_FILE, "scheduler", "text_encoder", "tokenizer", "unet", "vae"])
    assert json.loads((out / EXPORT_FILE).read_text())["training"]["unet_warmup_context"] == "text"
    assert not list(tmp_path.glob(".sd-inpaint.*"))  # the atomic folder swap left nothing behind
    pipe = load_inpaint_pipeline(out)
    for part in ("unet", "vae", "text_encoder"):
        a, b = getattr(pipe, part).state_dict(), getattr(comps, part).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.tokenizer("a room with a lamp").input_ids == comps.tokenizer("a room with a lamp").input_ids
    # the same loop over the in-memory components without a conditioner: the same panorama, bit for bit.
    # The loaded weights are memory-mapped from the safetensors files at addresses that are not 64-byte
    # aligned, and CPU kernels may round differently by alignment (measured: 1 pixel of 8192 one level
    # apart); copied into fresh storage they are aligned as the in-memory ones are.
    with torch.no_grad():
        for m in (pipe.unet, pipe.vae, pipe.text_encoder):
            for p in m.parameters():
                p.data = p.data.clone()
    same = OPaMaPipeline(vae=comps.vae, unet=comps.unet, scheduler=comps.scheduler, tokenizer=comps.tokenizer,
                         text_encoder=comps.text_encoder, image_encoder=None, conditioner=None)
    photo = (np.random.RandomState(4).rand(64, 64, 3) * 255).astype(np.uint8)
    kw = dict(height=64, width=128, num_inference_steps=2, schedule=[(90.0, 0.0), (0.0, 60.0)], output_type="pt",
              seed=3)
    got = pipe([photo], [(0, 0, 90)], "a room", **kw)
    want = same([photo], [(0, 0, 90)], "a room", **kw)
    assert got.info["method"] == want.info["method"] == "sd-inpaint"
    assert torch.equal(got.images, want.images)
    assert not torch.equal(got.images, pipe([photo], [(0, 0, 90)], "a field", **kw).images)  # the text is used
    # diffusers' own class loads it too
    assert isinstance(StableDiffusionInpaintPipeline.from_pretrained(out, local_files_only=True),
                      StableDiffusionInpaintPipeline)
    # the CLI's training-free path
    write_photo(tmp_path / "v.png", size=64)
    res = runner.invoke(app, ["outpaint", "--model", str(out), "--size", "64x128", "--steps", "2", "--views",
                              "90,0", "--input", str(tmp_path / "v.png"), "--prompt", "a room",
                              "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "o" / "meta.json").read_text())
    assert meta["method"] == "sd-inpaint" and meta["model_id"] == f"dir:{out.resolve()}"
    # exporting again replaces the folder whole
    export_inpaint_pipeline(comps, out)
    assert json.loads((out / EXPORT_FILE).read_text())["source"] == "components"
