import numpy as np
import pytest
import torch
from torch import nn

from busi.errors import ParameterError
from busi.explain import GradCam, energy_inside, heatmap_overlay
from busi.model import BACKBONES, build_model, last_conv_stage


def _brightness_model() -> nn.Sequential:
    """Class 0 grows with brightness, class 1 shrinks with it: Grad-CAM of class 0 must follow
    the bright pixels and class 1 has no positive evidence anywhere."""
    conv = nn.Conv2d(3, 1, 1, bias=False)
    head = nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1 / 3)
        head.weight.copy_(torch.tensor([[1.0], [-1.0]]))
    return nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)


def _disc(size: int = 32) -> tuple[torch.Tensor, np.ndarray]:
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - 10) ** 2 + (xx - 20) ** 2 < 25
    return torch.from_numpy(disc.astype(np.float32))[None, None].expand(1, 3, -1, -1).contiguous(), disc


def test_heat_follows_the_evidence_for_the_class():
    model = _brightness_model()
    x, disc = _disc()
    with GradCam(model, model[0]) as cam:
        heat, logits = cam(x, 0)
        nothing, _ = cam(x, 1)
    assert heat.shape == (32, 32) and heat.dtype == np.float32
    assert heat.max() == pytest.approx(1.0) and heat.min() >= 0
    assert heat[disc].mean() > 0.9 and heat[~disc].mean() < 0.1
    assert (nothing == 0).all()
    assert logits.shape == (2,) and logits[0] > logits[1]


def test_energy_inside_the_mask():
    heat = np.zeros((4, 4), np.float32)
    heat[0, 0], heat[3, 3] = 3.0, 1.0
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = True
    assert energy_inside(heat, mask) == pytest.approx(0.75)
    assert np.isnan(energy_inside(np.zeros((4, 4), np.float32), mask))
    with pytest.raises(ParameterError, match="differ in size"):
        energy_inside(heat, mask[:2])


@pytest.mark.parametrize("arch", sorted(BACKBONES))
def test_every_backbone_is_explained_and_left_exactly_as_found(arch):
    torch.manual_seed(0)
    model = build_model(arch, 3).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layer = last_conv_stage(model, arch)
    x = torch.randn(1, 3, 64, 64)
    with GradCam(model, layer) as cam:
        heat, logits = cam(x)
        assert not model.training
    assert heat.shape == (64, 64) and 0 <= heat.min() and heat.max() <= 1
    assert logits.shape == (3,)
    assert model.training
    assert not layer._forward_hooks
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bad_calls_are_refused():
    model = _brightness_model()
    x, _ = _disc()
    with GradCam(model, model[0]) as cam:
        with pytest.raises(ParameterError, match="one image at a time"):
            cam(torch.cat([x, x]))
        with pytest.raises(ParameterError, match="class_index"):
            cam(x, 5)
    assert not model[0]._forward_hooks


def test_overlay_keeps_cold_regions_as_the_plain_scan():
    grey = np.full((8, 8), 100, np.uint8)
    heat = np.zeros((8, 8), np.float32)
    heat[:4] = 1.0
    rgb = heatmap_overlay(grey, heat, 0.5)
    assert rgb.shape == (8, 8, 3) and rgb.dtype == np.uint8
    assert (rgb[4:] == 100).all() and (rgb[:4] != 100).any()
    assert (heatmap_overlay(grey, heat, 0.0) == 100).all()
    with pytest.raises(ParameterError, match="opacity"):
        heatmap_overlay(grey, heat, 2)
