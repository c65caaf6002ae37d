"""Feature networks for FID / KID / IS, loaded from local files only.

Two networks, the ones clean-fid uses, each wrapped so that it takes cube faces as
8-bit images and applies clean-fid's own preprocessing (mode ``clean``):

* **Inception** (``FID[inception]``, KID, IS): the TorchScript file
  ``inception-2015-12-05.pt`` (clean-fid / StyleGAN2-ADA). Faces are resized to
  299x299 with clean-fid's ``build_resizer("clean")`` (PIL bicubic on float32), then
  ``layers((x - 128) / 128)`` gives the 2048-d pool features exactly as
  ``cleanfid.inception_torchscript.InceptionV3W``; IS uses the same file's
  ``forward(img, no_output_bias=True)`` class probabilities (logged, i.e. the
  "logits_unbiased" torchmetrics uses by default).
* **CLIP ViT-B/32** (``FID[clip_vit_b_32]``, the papers' FID): OpenAI's JIT archive
  ``ViT-B-32.pt`` (what clean-fid's ``CLIP_fx`` loads) through
  ``open_clip.load_openai_model``, or an open_clip folder (``open_clip_config.json`` +
  weights) through ``local-dir:``. Faces go through clean-fid's ``img_preprocess_clip``
  (PIL bicubic resize to 224, centre crop, 8-bit), then ``/255``, CLIP mean/std,
  ``encode_image``.

A network is named after what was loaded: the canonical name (``inception``,
``clip_vit_b_32``) only for the canonical file/architecture, otherwise
``custom:<file or folder name>``, so a different network never hides under the
papers' metric name. Nothing is downloaded; a missing file raises
:class:`MetricUnavailable` whose message says what to place where.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from opama_tools.weights import component, locate

__all__ = [
    "MetricUnavailable",
    "resolve_weights",
    "load_state_dict_file",
    "InceptionFeatures",
    "ClipFeatures",
    "load_inception",
    "load_fid_clip",
]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class MetricUnavailable(RuntimeError):
    """A metric cannot run here; the message says what to place where."""


def resolve_weights(key: str, explicit: str | os.PathLike | None, flag: str) -> Path:
    """Local path of component ``key`` (flag > env > cache) or :class:`MetricUnavailable`."""
    comp = component(key)
    path, _ = locate(comp, explicit)
    if path is not None:
        return path
    what = f"the Hugging Face repo {comp.repo_id} (a folder)" if comp.repo_id else "the file"
    given = f"{explicit} (from {flag}) not found; " if explicit else ""
    raise MetricUnavailable(
        f"{given}place {what} at {comp.cache_hint()}, or pass {flag} PATH, or set {comp.env}=PATH"
    )


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file, or of a torch file via ``torch.load(weights_only=True)``."""
    p = Path(path)
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    sd = torch.load(str(p), map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    return sd


def _as_uint8_nhwc(images: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    a = np.asarray(images)
    if a.dtype != np.uint8:
        raise TypeError(f"expected uint8 images (N, H, W, 3), got {a.dtype}")
    if a.ndim != 4 or a.shape[-1] != 3:
        raise ValueError(f"expected (N, H, W, 3) images, got {a.shape}")
    return a


def _device_of(m: torch.nn.Module) -> torch.device:
    for t in m.parameters():
        return t.device
    for t in m.buffers():
        return t.device
    return torch.device("cpu")


class InceptionFeatures(torch.nn.Module):
    """clean-fid's Inception-v3 (TorchScript) on 8-bit images: 2048-d features and IS logits."""

    def __init__(self, base: torch.jit.ScriptModule, name: str, path: Path):
        super().__init__()
        self.base = base.eval()
        self.name = name
        self.path = path
        from cleanfid.resize import build_resizer

        self._resize = build_resizer("clean")

    def preprocess(self, images: np.ndarray) -> torch.Tensor:
        """clean-fid mode ``clean``: ``(N, 3, 299, 299)`` float32 in [0, 255]."""
        a = _as_uint8_nhwc(images)
        return torch.from_numpy(np.stack([self._resize(im) for im in a])).permute(0, 3, 1, 2).contiguous()

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool features ``(N, 2048)`` of preprocessed ``x`` (as ``InceptionV3W(resize_inside=False)``)."""
        x = x.to(_device_of(self.base))
        return self.base.layers.forward((x - 128) / 128).reshape(x.shape[0], -1).cpu()

    @torch.no_grad()
    def features(self, images: np.ndarray) -> np.ndarray:
        return self(self.preprocess(images)).double().numpy()

    @torch.no_grad()
    def is_logits(self, images: np.ndarray) -> torch.Tensor:
        """Log class probabilities without the output bias, ``(N, 1008)`` (torchmetrics' IS input)."""
        x = self.preprocess(images)
        probs = self.base(x.to(_device_of(self.base)), no_output_bias=True).cpu()
        return torch.log(probs.double().clamp_min(1e-30))


class ClipFeatures(torch.nn.Module):
    """CLIP image embeddings for FID, with clean-fid's ``clip_vit_b_32`` preprocessing."""

    def __init__(self, model: torch.nn.Module, name: str, path: Path):
        super().__init__()
        self.model = model.eval()
        self.name = name
        self.path = path

    @staticmethod
    def preprocess(images: np.ndarray) -> torch.Tensor:
        """clean-fid ``img_preprocess_clip`` (PIL bicubic shorter side 224, centre crop, uint8), then /255 and CLIP mean/std."""
        import torchvision.transforms as T
        from PIL import Image

        tf = T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224)])
        out = [np.asarray(tf(Image.fromarray(im).convert("RGB"))).clip(0, 255).astype(np.uint8) for im in _as_uint8_nhwc(images)]
        x = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255.0
        mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(x.to(_device_of(self.model))).cpu()

    @torch.no_grad()
    def features(self, images: np.ndarray) -> np.ndarray:
        return self(self.preprocess(images)).double().numpy()


def load_inception(explicit: str | os.PathLike | None = None) -> InceptionFeatures:
    """clean-fid's Inception TorchScript file from ``explicit`` / ``$OPAMA_INCEPTION`` / the temp folder.

    ``explicit`` may be the file or a folder containing ``inception-2015-12-05.pt``.
    """
    p = resolve_weights("inception", explicit, "--inception-weights")
    if p.is_dir():
        p = p / "inception-2015-12-05.pt"
        if not p.is_file():
            raise MetricUnavailable(f"{p} not found (folder given for the Inception file)")
    try:
        base = torch.jit.load(str(p), map_location="cpu")
    except Exception as e:
        raise MetricUnavailable(f"{p}: not a TorchScript Inception file ({type(e).__name__}: {e})") from e
    if not hasattr(base, "layers"):
        raise MetricUnavailable(f"{p}: TorchScript module has no `layers` (not clean-fid's inception-2015-12-05.pt)")
    name = "inception" if p.name == "inception-2015-12-05.pt" else f"custom:{p.stem}"
    return InceptionFeatures(base, name, p)


_VIT_B_32 = {"embed_dim": 512, "width": 768, "layers": 12, "patch_size": 32, "image_size": 224}


def load_fid_clip(explicit: str | os.PathLike | None = None) -> ClipFeatures:
    """CLIP ViT-B/32 for ``FID[clip_vit_b_32]``.

    Accepts OpenAI's JIT archive ``ViT-B-32.pt`` (clean-fid's file, default cache
    ``~/.cache/clip``) or an open_clip folder with ``open_clip_config.json`` and weights.
    """
    import open_clip

    p = resolve_weights("fid-clip", explicit, "--fid-clip-weights")
    try:
        if p.is_dir():
            cfg = json.loads((p / "open_clip_config.json").read_text())["model_cfg"]
            if not any(any(p.glob(g)) for g in ("*.safetensors", "*.bin", "*.pth")):
                # open_clip would only warn and return a randomly initialised model
                raise MetricUnavailable(f"{p}: open_clip folder without weights (*.safetensors / *.bin / *.pth)")
            model = open_clip.create_model_and_transforms(f"local-dir:{p}", device="cpu")[0]
            vis = cfg.get("vision_cfg", {})
            arch = {
                "embed_dim": cfg.get("embed_dim"),
                "width": vis.get("width"),
                "layers": vis.get("layers"),
                "patch_size": vis.get("patch_size"),
                "image_size": vis.get("image_size"),
            }
            name = "clip_vit_b_32" if arch == _VIT_B_32 else f"custom:{p.name}"
        else:
            res = open_clip.load_openai_model(str(p), precision="fp32", device="cpu")
            model = res[0] if isinstance(res, tuple) else res
            name = "clip_vit_b_32" if p.name == "ViT-B-32.pt" else f"custom:{p.stem}"
    except MetricUnavailable:
        raise
    except Exception as e:
        raise MetricUnavailable(f"{p}: cannot load a CLIP model ({type(e).__name__}: {e})") from e
    return ClipFeatures(model.float(), name, p)
