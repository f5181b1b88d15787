"""Backbones: taps (f_bn / f_pre / logits), weight sources, cross-modality init, clear errors."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pytest

import paths
import timm
import torch
import torchvision
from PIL import Image

from egoattn.errors import BadInputError, ConfigError, EgoattnError
from egoattn.models.backbones import build_backbone, cross_modality_init, list_backbones

IMAGES = paths.REAL / "images"


def _randomise_bn(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BatchNorm statistics, so a missing or extra BN would change the numbers."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


def _imagenet_label(path: Path, model: torch.nn.Module) -> str:
    labels = (IMAGES / "imagenet_labels.txt").read_text().splitlines()
    assert len(labels) == 1001 and labels[0] == "background"
    img = np.asarray(Image.open(path).convert("RGB").resize((224, 224), Image.BILINEAR), dtype=np.float32)
    x = torch.from_numpy((img - 127.5) / 127.5).permute(2, 0, 1)[None]
    with torch.no_grad():
        logits = model(x)["logits"]
    return labels[int(logits.argmax(1)) + 1]


@pytest.mark.skipif(not (IMAGES / "cat.png").exists(), reason="real images not available")
def test_bundled_efficientnet_classifies_real_images():
    net = build_backbone("efficientnet_lite0", "bundled").eval()
    assert net.mean == (0.5, 0.5, 0.5) and net.std == (0.5, 0.5, 0.5)
    assert _imagenet_label(IMAGES / "cat.png", net) == "Egyptian cat"
    assert _imagenet_label(IMAGES / "bird.png", net) == "chickadee"


def test_bundled_only_for_efficientnet():
    with pytest.raises(ConfigError, match="bundled.*efficientnet_lite0"):
        build_backbone("resnet18", "bundled")


def test_imagenet_offline_failure_is_clear(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(EgoattnError, match=r"could not download the ImageNet weights of resnet18.*bundled"):
        build_backbone("resnet18", "imagenet")

    real_create = timm.create_model

    def create(name, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        return real_create(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", create)
    with pytest.raises(EgoattnError, match=r"efficientnet_lite0.*local state-dict file"):
        build_backbone("efficientnet_lite0", "imagenet")


def test_flow_conv1_is_cross_modality_average_of_rgb_weights(tmp_path):
    torch.manual_seed(0)
    rgb = build_backbone("resnet18")
    path = tmp_path / "rgb.pth"
    torch.save(rgb.state_dict(), path)
    flow = build_backbone("resnet18", path, in_channels=10)
    expected = rgb.conv1.weight.mean(dim=1, keepdim=True).expand(-1, 10, -1, -1)
    assert flow.conv1.weight.shape == (64, 10, 7, 7)
    torch.testing.assert_close(flow.conv1.weight, expected, rtol=0, atol=0)
    torch.testing.assert_close(flow.layer4[1].conv2.weight, rgb.layer4[1].conv2.weight, rtol=0, atol=0)
    assert flow.mean == (pytest.approx(0.449, abs=1e-3),) * 10  # the flow normalisation
    # Every input channel carries the same filter, so a constant 10-channel input gives the RGB response.
    assert torch.allclose(cross_modality_init(rgb.conv1.weight, 10)[:, 3], rgb.conv1.weight.mean(1))


def test_bundled_flow_stem_is_averaged():
    rgb = build_backbone("efficientnet_lite0", "bundled")
    flow = build_backbone("efficientnet_lite0", "bundled", in_channels=10)
    assert flow.conv_stem.weight.shape == (32, 10, 3, 3)
    torch.testing.assert_close(flow.conv_stem.weight[:, 7], rgb.conv_stem.weight.mean(dim=1))
    torch.testing.assert_close(flow.fc.weight, rgb.fc.weight)


def test_weights_file_mismatch_names_file_and_keys(tmp_path):
    small = build_backbone("resnet18")
    path = tmp_path / "r18.pth"
    torch.save(small.state_dict(), path)
    with pytest.raises(BadInputError, match=r"r18\.pth.*resnet34.*missing keys \(first: layer1\.2\."):
        build_backbone("resnet34", path)

    sd = small.state_dict()
    sd["fc.weight"] = torch.zeros(10, 512)
    torch.save(sd, path)
    with pytest.raises(BadInputError, match=r"r18\.pth.*fc\.weight \(10, 512\) \(expected \(1000, 512\)\)"):
        build_backbone("resnet18", path)

    with pytest.raises(BadInputError, match="not found"):
        build_backbone("resnet18", tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a state dict")
    with pytest.raises(BadInputError, match="junk.pth"):
        build_backbone("resnet18", tmp_path / "junk.pth")


def test_weights_file_round_trip(tmp_path):
    torch.manual_seed(1)
    a = build_backbone("efficientnet_lite0")
    path = tmp_path / "e.pth"
    torch.save(a.state_dict(), path)
    b = build_backbone("efficientnet_lite0", path)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnet_taps_match_torchvision_forward(name):
    """f_bn is torchvision's layer4 output; f_pre is last conv + identity (hooked), logits are fc(pool)."""
    torch.manual_seed(0)
    ours = build_backbone(name).eval()
    _randomise_bn(ours)
    ref = getattr(torchvision.models, name)(weights=None).eval()
    ref.load_state_dict(ours.state_dict())
    last = ref.layer4[-1]
    grabbed = {}
    last_conv = last.conv3 if name == "resnet50" else last.conv2
    last_conv.register_forward_hook(lambda m, i, o: grabbed.__setitem__("conv", o.clone()))
    last.register_forward_hook(lambda m, i, o: grabbed.update(block_in=i[0].clone(), out=o.clone()))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref_logits = ref(x)
        taps = ours(x)
    torch.testing.assert_close(taps["f_bn"], grabbed["out"])
    torch.testing.assert_close(taps["f_pre"], grabbed["conv"] + grabbed["block_in"])
    torch.testing.assert_close(taps["logits"], ref_logits)
    assert not torch.allclose(taps["f_pre"], taps["f_bn"], atol=1e-2)
    assert taps["f_pre"].min() < 0  # no ReLU on the pre-BN tap


def test_resnet_exposes_torchvision_names():
    net = build_backbone("resnet34")
    names = {n for n, _ in net.named_parameters()}
    assert {"conv1.weight", "bn1.weight", "layer4.2.conv2.weight", "fc.weight"} <= names
    assert isinstance(net.fc, torch.nn.Linear) and net.fc.weight.shape == (1000, 512)
    assert net.out_channels == 512 and net.feature_stride == 32


@pytest.mark.parametrize("name", ["resnet18", "vgg16", "efficientnet_lite0"])
def test_feature_size_matches_forward(name):
    net = build_backbone(name).eval()
    for size in (64, 97, 112):
        with torch.no_grad():
            out = net(torch.randn(1, 3, size, size))
        assert tuple(out["f_bn"].shape[-2:]) == net.feature_size(size)
        assert out["f_bn"].shape[1] == net.out_channels
        assert out["logits"].shape == (1, 1000)
    assert net.feature_size(224) == (7, 7)


def test_unknown_backbone():
    with pytest.raises(ConfigError, match="resnet34"):
        build_backbone("resnet101")
    assert list_backbones() == sorted(["resnet18", "resnet34", "resnet50", "vgg16", "efficientnet_lite0"])


@pytest.mark.parametrize("name, last_stage, trunk_channels", [
    ("resnet18", ("layer4",), 256),
    ("vgg16", tuple(f"features.{i}" for i in range(24, 31)), 512),
    ("efficientnet_lite0", ("blocks.5", "blocks.6", "conv_head", "bn2"), 112),
])
def test_trunk_then_last_stage_is_the_whole_backbone(name, last_stage, trunk_channels):
    """What stage 2 fine-tunes (the last stage) is split off exactly: trunk + last stage = forward."""
    net = build_backbone(name, "none").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        whole = net(x)
        trunk = net.forward_trunk(x)
        split = net.forward_last_stage(trunk)
    assert trunk.shape[1] == trunk_channels and trunk.shape[-1] == 64 // (net.feature_stride // 2)
    for key in ("f_bn", "f_pre", "logits"):
        torch.testing.assert_close(split[key], whole[key])
    in_last = {n.split(".weight")[0].split(".bias")[0] for n, _ in net.named_parameters() if net.in_last_stage(n)}
    assert in_last and all(n.startswith(last_stage) for n in in_last)
    assert not net.in_last_stage("fc.weight") and not net.in_last_stage(net.first_conv + ".weight")
