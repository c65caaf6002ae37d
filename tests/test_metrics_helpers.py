"""Tiny, randomly initialised stand-ins for the metric networks, saved in the real formats
(TorchScript Inception file, open_clip folder, transformers CLIP folder, torchvision
SqueezeNet state dict as safetensors) so the tests load them through the real loaders.
Also synthetic panoramas written as 8-bit PNG. No tests here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


class TinyInception(torch.nn.Module):
    """Same call interface as clean-fid's inception-2015-12-05.pt: ``layers`` gives pool
    features of a normalised 299 px input (64-d here, 2048 in the real file, so the
    tests' D x D square roots stay cheap); ``forward(img, ...)`` class probabilities."""

    def __init__(self):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 8, stride=8), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(4),
            torch.nn.Flatten(), torch.nn.Linear(128, 64),
        )
        self.output = torch.nn.Linear(64, 1008)

    def forward(self, img: torch.Tensor, return_features: bool = False, use_fp16: bool = False,
                no_output_bias: bool = False) -> torch.Tensor:
        x = torch.nn.functional.interpolate(img.float(), size=(299, 299), mode="bilinear", align_corners=False)
        f = self.layers((x - 128) / 128)
        if return_features:
            return f
        if no_output_bias:
            logits = f @ self.output.weight.t()
        else:
            logits = self.output(f)
        return torch.softmax(logits, dim=1)


def save_tiny_inception(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    torch.jit.script(TinyInception().eval()).save(str(path))
    return path


TINY_OPEN_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 224, "layers": 1, "width": 32, "head_width": 16, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 1, "layers": 1},
}


def save_tiny_open_clip(folder: Path, seed: int = 0) -> Path:
    import open_clip
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"model_cfg": TINY_OPEN_CLIP, "preprocess_cfg": {}}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    torch.manual_seed(seed)
    model = open_clip.create_model("local-dir:" + str(folder), device="cpu")  # no weights yet: random init
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


def save_tiny_hf_clip(folder: Path, seed: int = 0) -> Path:
    """transformers CLIPModel + CLIPProcessor, byte-level BPE vocabulary with a few merges."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    folder.mkdir(parents=True, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    merges = ["t h", "th e</w>", "a n", "an d</w>"]
    vocab_list = chars + [c + "</w>" for c in chars] + ["th", "the</w>", "an", "and</w>"]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(vocab_list))}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"))
    proc = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                         tokenizer=tok)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77,
                         bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                         pad_token_id=vocab["<|endoftext|>"]),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(seed)
    CLIPModel(cfg).eval().save_pretrained(str(folder))
    proc.save_pretrained(str(folder))
    return folder


def save_tiny_squeezenet(path: Path, seed: int = 0) -> Path:
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    sd = torchvision.models.squeezenet1_1(weights=None).state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def tonemap8(x: np.ndarray) -> np.ndarray:
    """AOG-Net's EXR -> 8-bit tonemap (gamma 2.4, median to 0.5), as ``opama prepare`` does it."""
    from opama_tools.data.prepare import to_uint8
    from opama_tools.data.tonemap import tonemap

    return to_uint8(tonemap(np.ascontiguousarray(x, dtype=np.float32), "percentile")[0])


def synthetic_pano8(seed: int, height: int = 64, supersample: int = 1) -> np.ndarray:
    from opama_tools.data.synthetic import make_scene, render_equirect

    return tonemap8(render_equirect(make_scene(seed), height, 2 * height, supersample=supersample))


def write_pngs(folder: Path, images: dict[str, np.ndarray]) -> Path:
    from PIL import Image

    for rel, im in images.items():
        p = folder / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(p)
    return folder


def no_weights_env(monkeypatch, tmp_path: Path, keep_sentence: bool = False) -> None:
    """Point every weight cache at empty folders (HF, torch hub, temp dir, ~/.cache/clip)."""
    import tempfile

    for sub in ("hf", "torch", "tmp", "home"):
        (tmp_path / sub).mkdir(exist_ok=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    for var in ("OPAMA_INCEPTION", "OPAMA_FID_CLIP", "OPAMA_CLIPSCORE", "OPAMA_LPIPS", "OPAMA_SENTENCE",
                "OPAMA_SENTENCE_MINILM", "OPAMA_BLIP", "OPAMA_FAED", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    if not keep_sentence:
        monkeypatch.setattr("opama_tools.weights._sentence_pkg_dir", lambda: tmp_path / "no-sentence-model")


def save_tiny_faed(path: Path, seed: int = 0) -> Path:
    """A randomly initialised FAED encoder saved like PanFusion's ``faed.ckpt``: a Lightning
    checkpoint dict whose ``state_dict`` holds ``net.encoder.*`` and ``net.decoder.*`` tensors
    (BatchNorm running statistics randomised too, so eval-mode BN is not the identity)."""
    from opama_tools.eval.metrics.faed import FaedEncoder

    torch.manual_seed(seed)
    enc = FaedEncoder()
    with torch.no_grad():
        for name, buf in enc.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
        for name, q in enc.named_parameters():
            if "batchnorm" in name:
                q.uniform_(0.5, 1.5) if name.endswith("weight") else q.normal_(0, 0.1)
    sd = {f"net.encoder.{k}": v.clone() for k, v in enc.state_dict().items()}
    sd["net.decoder.outconv_rgb.conv2d.weight"] = torch.randn(3, 32, 9, 9)
    sd["net.decoder.outconv_rgb.conv2d.bias"] = torch.zeros(3)
    ckpt = {"epoch": 3, "global_step": 1200, "pytorch-lightning_version": "2.1.0", "state_dict": sd,
            "hyper_parameters": {"lr": 1e-4, "lr_decay": 0.99}, "optimizer_states": [], "lr_schedulers": []}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, str(path))
    return path
