"""Panorama records, the training dataset and a resumable, world-size-independent sample order.

The order of samples is one global stream: epoch ``e`` is a permutation of the panoramas drawn
from ``(seed, e)``; stream position ``p`` holds panorama ``perm_{p // n}[p % n]``, and its random
draws (step ``k``, rotation, captions) come from ``(seed, p)`` alone. Global micro-batch ``m``
covers positions ``m * G .. m * G + G - 1`` (``G`` = global batch = processes x batch size) and
process ``r`` takes its ``r``-th slice. So the samples (and their draws) of a step do not depend
on how many processes share it, and resuming only needs the number of micro-batches done.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .sample import SampleSettings, compose_caption, draw_sample_params, make_sample, seeded_rng

__all__ = ["PanoramaRecord", "PanoramaDataset", "StreamSampler", "load_panorama", "SAMPLE_KEY", "EPOCH_KEY"]

SAMPLE_KEY = 1
EPOCH_KEY = 2


@dataclass(frozen=True)
class PanoramaRecord:
    """One training panorama: its file, its global caption and its per-view captions."""

    path: str
    caption: str = ""
    view_captions: tuple[str, ...] = ()


def load_panorama(path: str | Path, canvas_hw: tuple[int, int]) -> torch.Tensor:
    """Read an image with :func:`opama_model.image_file.read_ldr` (8/16-bit, any mode, upright, alpha
    dropped; 16-bit rounded to 8-bit levels), resize to ``canvas_hw`` (bilinear, antialiased, as the
    reference's ``T.Resize``) and return ``(3, H, W)`` float32 in [-1, 1]."""
    from PIL import Image

    from opama_model.image_file import read_ldr, to_uint8

    h, w = canvas_hw
    try:
        im = Image.fromarray(to_uint8(read_ldr(path)))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    if im.size != (w, h):
        im = im.resize((w, h), Image.Resampling.BILINEAR)
    arr = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


class PanoramaDataset(Dataset):
    """Training samples of :mod:`opama_model.training.sample`, indexed by ``(index, stream position)``.

    ``dataset[(i, p)]`` builds a sample of panorama ``i`` with the random draws of position ``p``
    (deterministic). Decoded panoramas are kept in memory when they fit in ``cache_bytes``.
    """

    def __init__(self, records: Sequence[PanoramaRecord], settings: SampleSettings, seed: int = 0,
                 cache_bytes: int = 1 << 30):
        if not records:
            raise ValueError("no panoramas")
        self.records = list(records)
        self.settings = settings
        self.seed = int(seed)
        h, w = settings.canvas_hw
        self._cache: dict[int, torch.Tensor] | None = (
            {} if len(self.records) * 3 * h * w * 4 <= cache_bytes else None)

    def __len__(self) -> int:
        return len(self.records)

    def panorama(self, i: int) -> torch.Tensor:
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        x = load_panorama(self.records[i].path, self.settings.canvas_hw)
        if self._cache is not None:
            self._cache[i] = x
        return x

    def __getitem__(self, key) -> dict:
        i, pos = key
        rng = seeded_rng(self.seed, SAMPLE_KEY, pos)
        k, yaw = draw_sample_params(rng, self.settings)
        rec = self.records[i]
        caption = compose_caption(rec.caption, rec.view_captions, rng, self.settings.max_view_captions)
        out = make_sample(self.panorama(i), k, yaw, self.settings)
        out["caption"] = caption
        out["pos"] = torch.tensor(pos, dtype=torch.long)
        return out


class StreamSampler(Sampler):
    """Endless ``(index, position)`` keys of process ``rank`` (see the module docstring).

    Args:
        n: number of panoramas.
        seed: run seed (epoch permutations).
        local_batch: samples per process per micro-batch.
        world: number of processes.
        rank: this process.
        start_micro: global micro-batches already done (resume).
        shuffle: permute each epoch (False: panorama order, e.g. validation).
    """

    def __init__(self, n: int, seed: int, local_batch: int, world: int = 1, rank: int = 0, start_micro: int = 0,
                 shuffle: bool = True):
        self.n, self.seed, self.b, self.world, self.rank = n, int(seed), local_batch, world, rank
        self.start_micro, self.shuffle = int(start_micro), shuffle
        self._epoch, self._perm = -1, None

    def _index(self, pos: int) -> int:
        e, j = divmod(pos, self.n)
        if not self.shuffle:
            return j
        if e != self._epoch:
            self._epoch, self._perm = e, seeded_rng(self.seed, EPOCH_KEY, e).permutation(self.n)
        return int(self._perm[j])

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = self.b * self.world
        m = self.start_micro
        while True:
            base = m * g + self.rank * self.b
            for j in range(self.b):
                yield self._index(base + j), base + j
            m += 1
