"""The canvas cut at a view: masks, unknown values, faces and the schedule's known regions."""

import torch

from opama_model.canvas import cut_view, known_after_steps
from opama_model.spherical import equi_to_pers
from opama_model.views import AOG21, AOG21_TRAIN_STEPS


def test_known_after_steps_grows_and_covers_almost_everything():
    known = known_after_steps(AOG21, (64, 128), 32)
    assert known.shape == (22, 1, 64, 128) and known.dtype == torch.bool
    frac = known.float().mean(dim=(1, 2, 3))
    assert (frac[1:] >= frac[:-1]).all() and (frac[1:] > frac[:-1]).sum() >= 18
    assert 0.1 < frac[0] < 0.2  # one 90-degree view covers ~1/8 of the sphere's pixels (more near the equator)
    # the reference's schedule leaves a sliver near the poles and the seam uncovered
    assert 0.98 < frac[-1] <= 1.0
    assert AOG21_TRAIN_STEPS == 18


def test_cut_view_masks_and_unknown_values():
    g = torch.Generator().manual_seed(0)
    canvas = torch.rand(2, 3, 64, 128, generator=g) * 2 - 1
    known = known_after_steps(AOG21, (64, 128), 32)[[0, 5]]
    vi = cut_view(canvas, known, *AOG21[0], 90.0, 32)
    assert vi.view.shape == (2, 3, 32, 32) and vi.faces.shape == (2, 6, 3, 32, 32)
    assert vi.gma_images.shape == (2, 7, 5, 32, 32) and vi.clip_images.shape == (2, 7, 3, 32, 32)
    u = vi.unknown
    assert set(u.unique().tolist()) <= {0.0, 1.0} and 0 < u.mean() < 1
    # unknown pixels are -1 for CLIP/GMA, 0 in the UNet's masked image; known pixels are the canvas
    assert torch.all(vi.view[u.expand_as(vi.view) > 0] == -1)
    assert torch.all(vi.masked_image[u.expand_as(vi.view) > 0] == 0)
    truth = equi_to_pers(canvas, *AOG21[0], 90.0, (32, 32), mode="nearest")[:, 0]
    k = u.expand_as(vi.view) == 0
    assert torch.equal(vi.view[k], truth[k]) and torch.equal(vi.masked_image[k], truth[k])
    # the GMA sees the masked faces and the view
    assert torch.equal(vi.gma_images[:, 6, :3], vi.view) and torch.equal(vi.gma_images[:, :6, :3], vi.faces)
    # more known canvas, fewer unknown pixels at the same view
    assert u[1].mean() < u[0].mean()
