"""Training of the OPa-Ma conditioner (``opama train``): samples as the reference's ``dataset.py``,
the loss step of its ``forward``, and an accelerate loop with atomic checkpoints and exact resume.

Entry point: :func:`train` (``TrainConfig``, records, optional validation records, progress callback).
"""

from .data import PanoramaDataset, PanoramaRecord, StreamSampler
from .sample import SampleSettings, canvas_size, compose_caption, known_masks, make_sample
from .step import GuidanceProbs, diffusion_loss, draw_step, generate_view
from .trainer import RunResult, TrainConfig, TrainError, TrainProgress, train

__all__ = [
    "PanoramaDataset", "PanoramaRecord", "StreamSampler", "SampleSettings", "canvas_size", "compose_caption",
    "known_masks", "make_sample", "GuidanceProbs", "diffusion_loss", "draw_step", "generate_view", "RunResult",
    "TrainConfig", "TrainError", "TrainProgress", "train",
]
