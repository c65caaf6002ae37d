"""The real sd2 load path: ``build_components("sd2")`` finds and loads every part from a Hugging
Face hub cache laid out as the hub client writes it.

Layout (as ``huggingface_hub`` writes it): ``<cache>/models--stabilityai--stable-diffusion-2-inpainting/``
with ``refs/main`` (the commit hash), ``blobs/<sha256>`` (the file contents) and
``snapshots/<hash>/<path>`` (relative symlinks to the blobs): ``model_index.json``, ``unet/``,
``vae/``, ``scheduler/``, ``text_encoder/``, ``tokenizer/``, ``feature_extractor/``; likewise
``models--stabilityai--stable-diffusion-2-1-unclip`` with ``image_encoder/`` too. An older,
incomplete snapshot sits beside the current one: ``refs/main`` must win.

How the test stays small: the files are the *tiny* preset's parts (their configs and random
weights, a few MB in all) saved under the sd2 names, so every loader (diffusers' and transformers'
``from_pretrained`` of each subfolder, the tokenizer's files) runs exactly as for the real
8.7 GB download. The conditioner is not part of the download (``conditioner=None``: it is
built from the preset or a trained model folder, tested elsewhere).
"""

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from opama_model.presets import build_components
from opama_model.weights import MODEL_COMPONENTS, locate

HASHES = {"stabilityai/stable-diffusion-2-inpainting": "81a84f49b15956b60b4272a405ad3daef3da4590",
          "stabilityai/stable-diffusion-2-1-unclip": "e99f66a92bdcd1b0fb0d4b6a9b81b3b37d8bea44"}


def _write_repo(cache: Path, repo_id: str, staging: Path) -> Path:
    """Lay ``staging``'s files out as a hub cache entry of ``repo_id``; returns the snapshot folder."""
    root = cache / ("models--" + repo_id.replace("/", "--"))
    commit = HASHES[repo_id]
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)  # the hub writes the hash without a newline
    blobs = root / "blobs"
    blobs.mkdir()
    snap = root / "snapshots" / commit
    for f in sorted(p for p in staging.rglob("*") if p.is_file()):
        rel = f.relative_to(staging)
        data = f.read_bytes()
        blob = blobs / hashlib.sha256(data).hexdigest()
        if not blob.exists():
            blob.write_bytes(data)
        link = snap / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    # an older snapshot, incomplete (only model_index.json), newer on disk: refs/main must win
    old = root / "snapshots" / ("0" * 40)
    old.mkdir()
    (old / "model_index.json").symlink_to(os.path.relpath(snap / "model_index.json", old))
    return snap


@pytest.fixture(scope="module")
def tiny_parts():
    return build_components("tiny", conditioner=None, seed=3)


@pytest.fixture(scope="module")
def staged(tiny_parts, tmp_path_factory):
    """The tiny parts saved under the two sd2 repos' folder names (staging folders)."""
    c = tiny_parts
    base = tmp_path_factory.mktemp("staging")
    inpaint, clip = base / "inpaint", base / "clip"
    c.unet.save_pretrained(inpaint / "unet")
    c.vae.save_pretrained(inpaint / "vae")
    c.scheduler.save_pretrained(inpaint / "scheduler")
    for d in (inpaint, clip):
        c.text_encoder.save_pretrained(d / "text_encoder")
        c.tokenizer.save_pretrained(d / "tokenizer")
        (d / "feature_extractor").mkdir(parents=True)
        (d / "feature_extractor" / "preprocessor_config.json").write_text(json.dumps(
            {"crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
             "image_processor_type": "CLIPImageProcessor", "size": 224}))
    c.image_encoder.save_pretrained(clip / "image_encoder")
    (inpaint / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionInpaintPipeline", "_diffusers_version": "0.8.0",
        "feature_extractor": ["transformers", "CLIPImageProcessor"], "safety_checker": [None, None],
        "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"]}))
    (clip / "model_index.json").write_text(json.dumps({
        "_class_name": "StableUnCLIPImg2ImgPipeline", "_diffusers_version": "0.15.0",
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"]}))
    size = sum(p.stat().st_size for p in base.rglob("*") if p.is_file())
    assert size < 50 * 2**20, f"stand-in weights are {size / 2**20:.1f} MB: the test must stay small"
    return inpaint, clip


def _state_equal(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("env", ["HF_HOME", "HF_HUB_CACHE"])
def test_build_sd2_from_hub_cache_layout(env, staged, tiny_parts, tmp_path, monkeypatch):
    inpaint, clip = staged
    cache = tmp_path / "hub" if env == "HF_HOME" else tmp_path / "elsewhere"
    snaps = {repo: _write_repo(cache, repo, staging) for repo, staging in
             (("stabilityai/stable-diffusion-2-inpainting", inpaint),
              ("stabilityai/stable-diffusion-2-1-unclip", clip))}
    for var in ("HF_HOME", "HF_HUB_CACHE", "OPAMA_SD2_INPAINT", "OPAMA_SD2_CLIP"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(env, str(tmp_path if env == "HF_HOME" else cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    for comp in MODEL_COMPONENTS:  # found in the cache, at refs/main's snapshot
        path, where = locate(comp)
        assert where == "cache" and path == snaps[comp.repo_id], (comp.key, path, where)

    sd2 = build_components("sd2", conditioner=None)
    t = tiny_parts
    assert sd2.preset.name == "sd2"
    for name in ("unet", "vae", "text_encoder", "image_encoder"):
        _state_equal(getattr(sd2, name), getattr(t, name))  # every weight loaded, bit for bit
        m = getattr(sd2, name)
        assert not m.training and not any(p.requires_grad for p in m.parameters())
    def sched(c):
        return {k: v for k, v in dict(c.scheduler.config).items() if not k.startswith("_")}

    assert type(sd2.scheduler) is type(t.scheduler) and sched(sd2) == sched(t)
    ids = sd2.tokenizer(["a bright room"]).input_ids
    assert ids == t.tokenizer(["a bright room"]).input_ids
    # the parts run together: CLIP text + image embeddings of the loaded encoders
    assert sd2.encode_text(["a bright room"]).shape[-1] == t.text_encoder.config.hidden_size
    assert torch.equal(sd2.encode_images(torch.zeros(1, 3, 64, 64)), t.encode_images(torch.zeros(1, 3, 64, 64)))


def test_missing_repo_in_cache_names_it(staged, tmp_path, monkeypatch):
    """Only the inpainting repo cached: the error names the unCLIP repo and where to place it."""
    from opama_model.weights import MissingWeightsError

    inpaint, _ = staged
    _write_repo(tmp_path / "hub", "stabilityai/stable-diffusion-2-inpainting", inpaint)
    for var in ("HF_HOME", "HF_HUB_CACHE", "OPAMA_SD2_INPAINT", "OPAMA_SD2_CLIP"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(MissingWeightsError, match="stable-diffusion-2-1-unclip"):
        build_components("sd2", conditioner=None)
    shutil.rmtree(tmp_path / "hub")
