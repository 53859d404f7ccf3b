import urllib.error

import pytest
import torch
from torchvision import models

from busi.errors import BusiError, ParameterError
from busi.model import ARCHITECTURES, build_model, last_conv_stage, lesion_map_stages, to_model_tensor


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_every_architecture_gives_three_logits(arch):
    model = build_model(arch, 3, "none").eval()
    with torch.no_grad():
        out = model(torch.zeros(2, 3, 64, 64))
    assert out.shape == (2, 3)
    assert isinstance(last_conv_stage(model, arch), torch.nn.Module)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
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
        (b"not a checkpoint", "not a readable torchvision state dict"),
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
    with pytest.raises(BusiError, match=r"resnet18-f37072fd\.pth.*or choose 'none'"):
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
