"""Model zoo: every registered model builds, has the published size, and maps a tiny batch to logits."""
from __future__ import annotations

import pytest
import torch

from distlib.errors import ConfigError
from distlib.models import MODELS
from distlib.models.resnet_cifar import _PadShortcut

# Parameter counts published with each architecture (10 classes): He et al. 2016 Table 6
# (0.27M, 0.85M), kuangliu's ResNet-50 (23.5M), Zagoruyko and Komodakis 2016 Table 1 (36.5M).
PUBLISHED = {"resnet20": 0.27e6, "resnet56": 0.85e6, "resnet50": 23.5e6, "wrn28_10": 36.5e6}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_cifar_models_have_published_size_and_output_shape(name):
    torch.manual_seed(0)
    model = MODELS.build(name, {}, input_shape=(3, 32, 32), num_classes=10)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - PUBLISHED[name]) / PUBLISHED[name] < 0.01
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_resnet_accepts_grayscale_and_other_class_counts():
    model = MODELS.build("resnet_cifar", {"depth": 8, "shortcut": "B"}, input_shape=(1, 28, 28), num_classes=7)
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 7)


def test_option_a_shortcut_is_subsampling_with_zero_channels():
    x = torch.randn(2, 16, 8, 8)
    y = _PadShortcut(2, 16)(x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert not y[:, :8].any() and not y[:, 24:].any()


def test_torchvision_model_by_name_is_randomly_initialised():
    model = MODELS.build("torchvision", {"arch": "resnet18"}, input_shape=(3, 32, 32), num_classes=5)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    assert model.fc.out_features == 5


@pytest.mark.parametrize("params, field", [({"arch": "resnet_nope"}, "model.arch"),
                                           ({"weights": "DEFAULT"}, "model.weights")])
def test_torchvision_bad_options_name_the_field(params, field):
    with pytest.raises(ConfigError, match=field):
        MODELS.build("torchvision", params, input_shape=(3, 32, 32), num_classes=10)


def test_resnet_depth_is_checked():
    with pytest.raises(ConfigError, match="model.depth"):
        MODELS.build("resnet_cifar", {"depth": 21}, input_shape=(3, 32, 32), num_classes=10)
    with pytest.raises(ConfigError, match="model.depth"):
        MODELS.build("wide_resnet", {"depth": 27}, input_shape=(3, 32, 32), num_classes=10)
