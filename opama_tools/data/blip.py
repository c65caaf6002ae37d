"""BLIP / BLIP-2 captioning: find the weights locally, load them, caption images in batches.

* Weights are looked up locally only (a folder or a repo id in the local HF cache, then
  ``OPAMA_BLIP``, then the HF cache of ``Salesforce/blip-image-captioning-large``); BLIP vs
  BLIP-2 is chosen from the checkpoint's ``config.json`` ``model_type``. fp16 on CUDA, fp32 elsewhere.
* :meth:`Captioner.generate_batch` makes exactly one ``generate`` call for up to
  ``batch_size`` images; the prompt prefix is removed from the captions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["DEFAULT_PROMPT", "Captioner", "resolve_model_path", "load_captioner"]

DEFAULT_PROMPT = "a photography of"


class Captioner:
    """A loaded BLIP or BLIP-2 captioner.

    ``caption(images)`` captions a list of PIL images (or HWC uint8 arrays) with one
    ``model.generate`` call per ``batch_size`` images and returns one string per image,
    with the prompt prefix removed.
    """

    def __init__(
        self,
        model,
        processor,
        *,
        kind: str,
        device,
        dtype,
        prompt: str = DEFAULT_PROMPT,
        max_new_tokens: int = 30,
        batch_size: int = 8,
        source: str = "",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.processor = processor
        self.kind = kind
        self.device = device
        self.dtype = dtype
        self.prompt = prompt or ""
        self.max_new_tokens = int(max_new_tokens)
        self.batch_size = int(batch_size)
        self.source = source

    def _strip_prompt(self, text: str) -> str:
        text = " ".join(text.split())
        p = " ".join(self.prompt.split())
        if p and text.lower().startswith(p.lower()):
            text = text[len(p):].strip()
        return text

    def generate_batch(self, images: Sequence) -> list[str]:
        """Caption ``images`` (at most ``batch_size`` of them) with exactly one ``generate`` call."""
        import torch

        from PIL import Image

        pil = [im if isinstance(im, Image.Image) else Image.fromarray(np.asarray(im)) for im in images]
        if self.prompt:
            inputs = self.processor(images=pil, text=[self.prompt] * len(pil), return_tensors="pt")
        else:
            inputs = self.processor(images=pil, return_tensors="pt")
        inputs = {
            k: (v.to(self.device, self.dtype) if k == "pixel_values" else v.to(self.device))
            for k, v in inputs.items()
            if isinstance(v, torch.Tensor)
        }
        with torch.inference_mode():
            ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens)
        texts = self.processor.batch_decode(ids, skip_special_tokens=True)
        return [self._strip_prompt(t) for t in texts]

    def caption(self, images: Sequence) -> list[str]:
        """Caption any number of images, ``ceil(len/batch_size)`` generate calls."""
        out: list[str] = []
        for i in range(0, len(images), self.batch_size):
            out.extend(self.generate_batch(images[i : i + self.batch_size]))
        return out


_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_model_path(model: str | os.PathLike | None = None) -> Path:
    """Local folder of the captioner: ``model`` (a folder, or a repo id found in the local HF
    cache), else ``OPAMA_BLIP``, else the HF cache of the default id. Never downloads.

    Raises :class:`opama_tools.weights.MissingWeightsError` naming the id, where to place it
    and ``opama doctor``.
    """
    from opama_model.weights import hf_cache_dir
    from opama_tools.weights import MissingWeightsError, component, require

    comp = component("blip")
    if model is None or str(model) == "":
        return require(comp)
    p = Path(model).expanduser()
    if p.exists() or not _REPO_ID.match(str(model)):
        return require(comp, explicit=p)
    # A repo id: only the local Hugging Face cache (offline) is consulted.
    with contextlib.suppress(Exception):
        from huggingface_hub import snapshot_download

        snap = Path(snapshot_download(str(model), cache_dir=hf_cache_dir(), local_files_only=True))
        if (snap / "config.json").is_file():
            return snap
    hint = dataclasses.replace(comp, repo_id=str(model)).cache_hint()
    raise MissingWeightsError(
        f"{comp.title}: {model} (given with {comp.flag}) is neither a local folder nor in the local "
        f"Hugging Face cache. Place the Hugging Face repo {model} at {hint} (or pass {comp.flag} PATH "
        f"to a folder with config.json, or set {comp.env}=PATH); no download is attempted. See `opama doctor`."
    )


def load_captioner(
    model: str | os.PathLike | None = None,
    *,
    device: str | None = "auto",
    prompt: str = DEFAULT_PROMPT,
    max_new_tokens: int = 30,
    batch_size: int = 8,
) -> Captioner:
    """Load BLIP (``model_type`` ``blip``) or BLIP-2 (``blip-2``) from a local folder / HF cache.

    ``device``: :func:`opama_tools.devices.resolve_device` (auto, cpu, cuda, cuda:N, mps).
    fp16 on CUDA, fp32 elsewhere. See :func:`resolve_model_path` for where it looks.
    """
    import torch

    path = resolve_model_path(model)
    cfg_file = path / "config.json"
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
        model_type = cfg.get("model_type", "") if isinstance(cfg, dict) else ""
    except UnicodeDecodeError:
        raise ValueError(f"{cfg_file}: cannot read the model config (not UTF-8 text)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_file}: line {e.lineno}: not valid JSON ({e.msg})") from None
    except OSError as e:
        raise ValueError(f"{cfg_file}: cannot read the model config ({e.strerror or e})") from None
    from opama_tools.devices import resolve_device

    dev = resolve_device(device or "auto")
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    if model_type == "blip":
        from transformers import BlipForConditionalGeneration, BlipProcessor

        proc_cls, net_cls, kind = BlipProcessor, BlipForConditionalGeneration, "blip"
    elif model_type == "blip-2":
        from transformers import Blip2ForConditionalGeneration, Blip2Processor

        proc_cls, net_cls, kind = Blip2Processor, Blip2ForConditionalGeneration, "blip-2"
    else:
        raise ValueError(
            f"{cfg_file}: model_type {model_type!r} is not a captioner opama supports (expected 'blip' or 'blip-2')"
        )
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        try:
            proc = proc_cls.from_pretrained(path, local_files_only=True)
        except Exception as e:  # noqa: BLE001 - transformers raises OSError/ValueError/TypeError ...
            raise ValueError(f"{path}: cannot load the {kind} processor (tokenizer / image processor files): "
                             f"{_first_line(e)}") from None
        try:
            net = net_cls.from_pretrained(path, dtype=dtype, local_files_only=True)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{path}: cannot load the {kind} weights: {_first_line(e)}") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    net = net.to(dev).eval()
    return Captioner(
        net, proc, kind=kind, device=dev, dtype=dtype, prompt=prompt, max_new_tokens=max_new_tokens,
        batch_size=batch_size, source=str(path),
    )


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
