"""Conditioners on the tiny preset: full forward with the UNet, training signal, CFG, save/load."""

import json
import math

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
    assert missing == ["null_tokens"]  # unused without unconditional samples
    cond_model.zero_grad()


def test_null_condition_is_the_whole_context(comps):
    """Reference semantics: null samples get the 7 learned tokens alone (VCR, text, images bypassed)."""
    c = comps.conditioner
    images, embeds, text = _inputs(comps)
    allnull = c(images, embeds, text, unconditional=True)
    assert allnull.encoder_hidden_states.shape == (2, 7, 32) and allnull.encoder_attention_mask is None
    assert torch.equal(allnull.encoder_hidden_states[0], c.null_tokens.detach())
    uncond = torch.tensor([True, False])
    a = c(images, embeds, text, unconditional=uncond)
    b = c(images, torch.randn_like(embeds), torch.randn_like(text), unconditional=uncond)
    assert a.encoder_hidden_states.shape == (2, 84, 32)
    assert a.encoder_attention_mask.tolist() == [[True] * 7 + [False] * 77, [True] * 84]
    assert torch.equal(a.encoder_hidden_states[0, :7], c.null_tokens.detach())
    assert torch.equal(a.encoder_hidden_states[0, 7:], torch.zeros(77, 32))
    assert torch.equal(a.encoder_hidden_states[0], b.encoder_hidden_states[0])  # inputs ignored
    assert not torch.allclose(a.encoder_hidden_states[1], b.encoder_hidden_states[1])
    full = c(images, embeds, text)
    assert full.encoder_attention_mask is None
    torch.testing.assert_close(full.encoder_hidden_states[1], a.encoder_hidden_states[1], rtol=1e-5, atol=1e-6)
    # the adapter residuals do not depend on the null flag
    for x, y in zip(full.down_intrablock_additional_residuals, a.down_intrablock_additional_residuals):
        assert torch.equal(x, y)
    a.encoder_hidden_states.sum().backward()
    assert c.null_tokens.grad.abs().sum() > 0
    c.zero_grad()


def test_null_init_like_nn_embedding():
    torch.manual_seed(0)
    kw = dict(conditioner_kwargs("sd2", "opama"), gma_local_depth=0, gma_global_depth=0, vcr_depth=0)
    with torch.device("meta"):
        shape = OPaMaConditioner(**kw).null_tokens.shape
    assert shape == (7, 1024)
    m = OPaMaConditioner(**dict(kw, gma_stem_channels=(8, 16, 320)))
    t = m.null_tokens.detach()
    assert t.shape == (7, 1024)
    assert abs(float(t.mean())) < 0.05 and abs(float(t.std()) - 1.0) < 0.05  # N(0, 1), not N(0, 0.02^2)


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
    images, embeds, text = _inputs(comps)
    uncond = torch.tensor([False, True])
    with torch.no_grad():
        a = m(images, embeds, text, unconditional=uncond)
        b = m2(images, embeds, text, unconditional=uncond)
    # weights bit for bit; outputs to float tolerance (safetensors-loaded tensors are not 64-byte
    # aligned, and CPU kernels may then sum in another order: ~1e-6 relative)
    sd, sd2 = m.state_dict(), m2.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    torch.testing.assert_close(a.encoder_hidden_states, b.encoder_hidden_states, rtol=1e-5, atol=1e-6)
    for x, y in zip(a.down_intrablock_additional_residuals, b.down_intrablock_additional_residuals, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
    # and through the component builder
    d = build_components("tiny", conditioner=kind, conditioner_path=tmp_path / kind)
    with torch.no_grad():
        e = d.conditioner(images, embeds, text, unconditional=uncond)
    torch.testing.assert_close(a.encoder_hidden_states, e.encoder_hidden_states, rtol=1e-5, atol=1e-6)


def test_aog_matches_its_reference_structure():
    """AOG-Net (zhuqiangLu/AOG-NET-360): queries = MLP(query ++ view embedding); the sequence
    [queries, faces + vision type, text + text type] + positions through post-norm self-attention
    layers; output = query outputs ++ the raw text; null condition = 5 tokens; the view's last
    adapter level attends to the faces' (and only that level sees them)."""
    torch.manual_seed(0)
    m = AOGConditioner(**conditioner_kwargs("tiny", "aog")).eval()
    assert tuple(m.null_tokens.shape) == (5, 32)
    g = m.global_branch
    img, txt = torch.randn(2, 7, 32), torch.randn(2, 77, 32)
    with torch.no_grad():
        out = g(img, txt)
        assert out.shape == (2, 82, 32) and torch.equal(out[:, 5:], txt)
        # the formula, written out with the module's weights (post-norm: LN after each residual add)
        q = g.query_mlp(torch.cat((g.queries.expand(2, -1, -1), img[:, :1].expand(-1, 5, -1)), dim=-1))
        x = torch.cat((q, img[:, 1:] + g.vision_embedding, txt + g.text_embedding), dim=1) + g.pos_embed
        for layer in g.transformer.layers:
            a = layer["attn"]
            heads = a.heads

            def split(t):
                return t.view(2, -1, heads, 32 // heads).transpose(1, 2)

            w = torch.softmax(split(a.to_q(x)) @ split(a.to_k(x)).transpose(-1, -2) / math.sqrt(32 // heads), -1)
            x = layer["norm1"](a.to_out((w @ split(a.to_v(x))).transpose(1, 2).reshape(2, -1, 32)) + x)
            x = layer["norm3"](layer["ff"](x) + x)
        torch.testing.assert_close(out[:, :5], x[:, :5], rtol=1e-5, atol=1e-5)
        # the view reaches the output through the queries; the faces through the sequence
        img2 = img.clone()
        img2[:, 0] += 1
        assert (g(img2, txt)[:, :5] - out[:, :5]).abs().amax() > 1e-4
        loc = m.local_branch
        images = torch.randn(1, 7, 5, 64, 64)
        res = loc(images)
        alone = loc.adapter(images[:, -1])
        for r, a in zip(res[:-1], alone[:-1], strict=True):  # batch of 7 vs 1: conv rounding differs
            torch.testing.assert_close(r, a, rtol=1e-5, atol=1e-5)
        images2 = images.clone()
        images2[:, 2] += 1  # face B
        res2 = loc(images2)
        for r, a in zip(res2[:-1], res[:-1], strict=True):
            torch.testing.assert_close(r, a, rtol=1e-5, atol=1e-5)
        assert (res2[-1] - res[-1]).abs().amax() > 1e-5
