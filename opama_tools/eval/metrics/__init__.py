"""Metrics for 360° outpainting: learned (FID/KID/IS, CLIP score, LPIPS, SC) and weight-free
(seam, pole, masked PSNR/SSIM). Every pretrained network is loaded from a local path only;
see :mod:`opama_tools.eval.metrics.features`."""

from opama_tools.eval.metrics.features import MetricUnavailable  # noqa: F401
from opama_tools.eval.metrics.panorama import (  # noqa: F401
    PSNR_CAP_DB,
    input_coverage_mask,
    masked_psnr,
    masked_ssim,
    pole_variance,
    seam_score,
)
