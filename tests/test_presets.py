"""Presets: architecture configs, the local tokenizer, the pretrained loading path, missing weights."""

import torch
import pytest

from opama_model.presets import (
    PRESETS,
    build_components,
    conditioner_kwargs,
    load_config,
    vae_downscale,
)
from opama_model.tokenizer import build_tiny_clip_tokenizer, write_tiny_clip_vocab
from opama_model.weights import MissingWeightsError


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_sizes_agree_with_configs(name):
    p = PRESETS[name]
    unet, vae = load_config(name, "unet"), load_config(name, "vae")
    assert unet["in_channels"] == 9 and unet["out_channels"] == 4
    assert p.image_size == p.latent_size * vae_downscale(vae)
    assert unet["sample_size"] == p.latent_size
    kw = conditioner_kwargs(name, "opama")
    assert kw["unet_channels"] == tuple(unet["block_out_channels"])
    assert 2 ** len(kw["gma_stem_channels"]) == p.downscale
    assert kw["gma_stem_channels"][-1] == unet["block_out_channels"][0]
    assert kw["cross_attention_dim"] == unet["cross_attention_dim"]


def test_sd2_random_weights_build_the_published_architectures():
    """build_components("sd2", random_weights=True) from the configs in the project (on the meta
    device: no memory, no download). Parameter counts of the SD-2(-inpainting) UNet/VAE and the
    OpenCLIP ViT-H/14 towers of SD-2.1-unCLIP: 865,910,724 UNet parameters for 4 input channels +
    5 x 320 x 3 x 3 for the 5 extra inpainting channels; 83,653,863 VAE; 340,387,840 text
    (23 layers); 632,076,800 vision with projection."""
    with torch.device("meta"):
        c = build_components("sd2", random_weights=True, conditioner="opama")
    count = {k: sum(p.numel() for p in getattr(c, k).parameters()) for k in ("unet", "vae", "text_encoder", "image_encoder")}
    assert count["unet"] == 865_910_724 + 5 * 320 * 9
    assert count["vae"] == 83_653_863
    assert count["text_encoder"] == 340_387_840
    assert count["image_encoder"] == 632_076_800
    assert c.text_encoder.config.hidden_size == c.image_encoder.config.projection_dim == c.unet.config.cross_attention_dim
    assert type(c.scheduler).__name__ == "DDPMScheduler" and c.scheduler.config.beta_schedule == "scaled_linear"
    gma = c.conditioner.gma
    assert gma.downscale_factor == 8 and c.conditioner.config.unet_channels == (320, 640, 1280, 1280)
    assert not any(p.requires_grad for p in c.unet.parameters())
    assert all(p.requires_grad for p in c.conditioner.parameters())


def test_tiny_tokenizer(tmp_path):
    v1, m1 = write_tiny_clip_vocab(tmp_path / "a")
    v2, m2 = write_tiny_clip_vocab(tmp_path / "b")
    assert v1.read_bytes() == v2.read_bytes() and m1.read_bytes() == m2.read_bytes()
    tok = build_tiny_clip_tokenizer(tmp_path / "c")
    assert len(tok) > 512 + 50  # byte alphabet (+ </w>) plus learned merges, not a 2-token vocab
    enc = tok(["a photo of a room", "Zürich ☀"], padding="max_length", max_length=77, truncation=True)
    ids = torch.tensor(enc.input_ids)
    assert ids.shape == (2, 77) and int(ids.max()) < len(tok)
    assert ids[0, 0] == tok.bos_token_id
    # merged words are single tokens; unknown text falls back to bytes and decodes back
    assert tok.tokenize("room") == ["room</w>"]
    assert tok.decode(enc.input_ids[1], skip_special_tokens=True).strip() == "zürich ☀"


def test_tiny_tokenizer_leaves_no_temporary_folder(tmp_path, monkeypatch):
    """Without a folder, the vocabulary goes to a temporary one that is removed (it used to stay
    in the temp dir, one per model built); the tokenizer still works and saves its vocabulary."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    tok = build_tiny_clip_tokenizer()
    assert list((tmp_path / "tmp").iterdir()) == []
    ref = build_tiny_clip_tokenizer(tmp_path / "c")
    assert tok("a bright room").input_ids == ref("a bright room").input_ids
    tok.save_pretrained(tmp_path / "saved")
    back = type(tok).from_pretrained(tmp_path / "saved")
    assert back("a bright room").input_ids == ref("a bright room").input_ids


def test_missing_sd2_folder_raises_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("OPAMA_SD2_INPAINT", raising=False)
    monkeypatch.delenv("OPAMA_SD2_CLIP", raising=False)
    with pytest.raises(MissingWeightsError) as e:
        build_components("sd2", conditioner=None)
    msg = str(e.value)
    assert "stabilityai/stable-diffusion-2-inpainting" in msg and "OPAMA_SD2_INPAINT" in msg
    assert "--sd2-inpaint" in msg and "opama doctor" in msg
    with pytest.raises(MissingWeightsError, match="given with --sd2-inpaint"):
        build_components("sd2", paths={"sd2-inpaint": tmp_path / "nope"}, conditioner=None)


def test_tiny_parts_saved_as_hf_folders_load_through_the_sd2_path(tmp_path):
    """save_pretrained tiny UNet/VAE/scheduler/CLIP/tokenizer in the two HF repo layouts, then load
    them with build_components("sd2", paths=...): the real (offline) loading code path."""
    c = build_components("tiny", conditioner=None, seed=3)
    inp, clip = tmp_path / "inpaint", tmp_path / "clip"
    c.unet.save_pretrained(inp / "unet")
    c.vae.save_pretrained(inp / "vae")
    c.scheduler.save_pretrained(inp / "scheduler")
    c.text_encoder.save_pretrained(clip / "text_encoder")
    c.tokenizer.save_pretrained(clip / "tokenizer")
    c.image_encoder.save_pretrained(clip / "image_encoder")
    assert (inp / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert (clip / "text_encoder" / "model.safetensors").exists()
    d = build_components("sd2", paths={"sd2-inpaint": inp, "sd2-clip": clip}, conditioner=None)
    assert not any(p.requires_grad for p in d.unet.parameters())
    assert type(d.scheduler).__name__ == "DDPMScheduler"
    assert torch.equal(d.scheduler.alphas_cumprod, c.scheduler.alphas_cumprod)

    # Weights bit for bit: the round trip must not change a single parameter or buffer.
    for a, b in ((c.unet, d.unet), (c.vae, d.vae), (c.text_encoder, d.text_encoder),
                 (c.image_encoder, d.image_encoder)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), type(a).__name__

    # Outputs with a tolerance: same weights, but tensors loaded from safetensors are not
    # 64-byte aligned, so CPU kernels may pick another vectorised path / summation order
    # (differences ~1e-6 were seen on fresh machines). float32 round-off of a K-term dot
    # product is ~sqrt(K) * 6e-8 * |terms|; 1e-5 relative (+1e-5 absolute for values near 0)
    # covers that with margin, while any real loading bug (a wrong or missing tensor)
    # moves outputs by O(1e-2) or more.
    def close(u, v):
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-5)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 9, 16, 16, generator=g)
    ctx = torch.randn(1, 77, 32, generator=g)
    img = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
    with torch.no_grad():
        close(c.unet(x, 5, ctx).sample, d.unet(x, 5, ctx).sample)
        za, zb = c.vae.encode(img).latent_dist.mean, d.vae.encode(img).latent_dist.mean
        close(za, zb)
        close(c.vae.decode(za).sample, d.vae.decode(zb).sample)
    caps = ["a photo of a room", "blue sky over the sea"]
    close(c.encode_text(caps), d.encode_text(caps))
    close(c.encode_images(img), d.encode_images(img))
