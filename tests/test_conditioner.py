"""Conditioners on the tiny preset: full forward with the UNet, training signal, CFG, save/load."""

import json

import pytest
import torch

from opama_model.conditioner import AOGConditioner, OPaMaConditioner
from opama_model.gma import build_gma_input
from opama_model.presets import build_components, conditioner_kwargs


@pytest.fixture(scope="module")
def comps():
    return build_components("tiny", conditioner="opama", seed=0)


def _inputs(c, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = c.preset.image_size
    faces = torch.rand(b, 6, 3, s, s, generator=g) * 2 - 1
    view = torch.rand(b, 3, s, s, generator=g) * 2 - 1
    images = build_gma_input(faces, view, [0.0, 45.0][:b], [0.0, -25.0][:b], 90.0)
    embeds = c.encode_images(torch.cat((view.unsqueeze(1), faces), dim=1).flatten(0, 1)).unflatten(0, (b, 7))
    text = c.encode_text(["a photo of a room with a window", "blue sky over the sea"][:b])
    return images, embeds, text


def _unet_step(c, cond, seed=0):
    g = torch.Generator().manual_seed(seed)
    b = cond.encoder_hidden_states.shape[0]
    lat = c.preset.latent_size
    x = torch.randn(b, 9, lat, lat, generator=g)
    t = torch.tensor([10, 700])[:b]
    return c.unet(x, t, encoder_hidden_states=cond.encoder_hidden_states,
                  down_intrablock_additional_residuals=list(cond.down_intrablock_additional_residuals)).sample


@pytest.mark.parametrize("kind", ["opama", "aog"])
def test_tiny_full_forward_and_backward(comps, kind):
    c = comps
    if kind == "aog":
        torch.manual_seed(0)
        cond_model = AOGConditioner(**conditioner_kwargs("tiny", "aog"))
    else:
        cond_model = c.conditioner
    images, embeds, text = _inputs(c)
    cond = cond_model(images, embeds, text)
    ntok = 84 if kind == "opama" else 82
    assert cond.encoder_hidden_states.shape == (2, ntok, 32)
    unet_ch = c.unet.config.block_out_channels
    res = cond.down_intrablock_additional_residuals
    assert [tuple(r.shape) for r in res] == [(2, unet_ch[0], 16, 16), (2, unet_ch[1], 8, 8)]
    eps = _unet_step(c, cond)
    assert eps.shape == (2, 4, 16, 16) and torch.isfinite(eps).all()
    # the residuals reach the UNet: without them the prediction changes
    eps0 = _unet_step(c, type(cond)(cond.encoder_hidden_states, [torch.zeros_like(r) for r in res]))
    assert (eps - eps0).abs().amax() > 1e-4
    # only the conditioner learns; every one of its parameters gets a gradient
    cond_model.zero_grad()
    eps.square().mean().backward()
    assert not any(p.grad is not None for p in c.unet.parameters())
    missing = [n for n, p in cond_model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == ["null_image_embeds"]  # unused without unconditional samples
    cond_model.zero_grad()


def test_unconditional_embedding(comps):
    c = comps.conditioner
    images, embeds, text = _inputs(comps)
    uncond = torch.tensor([True, False])
    a = c(images, embeds, text, unconditional=uncond).encoder_hidden_states
    b = c(images, torch.randn_like(embeds), text, unconditional=uncond).encoder_hidden_states
    assert torch.equal(a[0], b[0])  # the learned null embedding replaced the images
    assert not torch.allclose(a[1], b[1])
    full = c(images, embeds, text).encoder_hidden_states
    assert torch.equal(full[1], a[1]) and not torch.allclose(full[0], a[0])
    a.sum().backward()
    assert c.null_image_embeds.grad.abs().sum() > 0
    c.zero_grad()


@pytest.mark.parametrize("cls", [OPaMaConditioner, AOGConditioner])
def test_save_pretrained_round_trip_bit_for_bit(comps, tmp_path, cls):
    kind = "opama" if cls is OPaMaConditioner else "aog"
    torch.manual_seed(1)
    m = cls(**conditioner_kwargs("tiny", kind)).eval()
    with torch.no_grad():  # move off the initial values so a fresh init cannot pass by accident
        for p in m.parameters():
            p.add_(0.01 * torch.randn_like(p))
    m.save_pretrained(tmp_path / kind)
    assert (tmp_path / kind / "diffusion_pytorch_model.safetensors").exists()
    assert not list((tmp_path / kind).glob("*.bin"))
    m2 = cls.from_pretrained(tmp_path / kind).eval()
    def cfg(x):
        return json.loads(json.dumps({k: v for k, v in x.config.items() if not k.startswith("_")}))

    assert cfg(m2) == cfg(m)
    d = build_components("tiny", conditioner=kind, conditioner_path=tmp_path / kind)
    # Weights bit for bit (directly and through the component builder).
    sa = m.state_dict()
    for other in (m2, d.conditioner):
        sb = other.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    # Outputs to a tolerance: tensors loaded from safetensors are not 64-byte aligned, so CPU
    # kernels may take another vectorised path (float32 differences ~1e-6); 1e-5 covers that,
    # a wrong or missing weight moves outputs by far more.
    images, embeds, text = _inputs(comps)
    uncond = torch.tensor([False, True])
    with torch.no_grad():
        a = m(images, embeds, text, unconditional=uncond)
        b = m2(images, embeds, text, unconditional=uncond)
        e = d.conditioner(images, embeds, text, unconditional=uncond)
    torch.testing.assert_close(a.encoder_hidden_states, b.encoder_hidden_states, rtol=1e-5, atol=1e-5)
    for x, y in zip(a.down_intrablock_additional_residuals, b.down_intrablock_additional_residuals, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.encoder_hidden_states, e.encoder_hidden_states, rtol=1e-5, atol=1e-5)
