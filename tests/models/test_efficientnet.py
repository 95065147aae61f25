"""EfficientNet-Lite0: padding rule, strict weight loading, and parity with the Flickr8k pack."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vsekit.data.images import IMAGENET_MEAN, IMAGENET_STD, load_image, transform
from vsekit.models.efficientnet import (
    FEATURE_DIM,
    EfficientNetLite0,
    MBConv,
    SameConv2d,
    pretrained_efficientnet_lite0,
    same_padding,
    weights_path,
)


@pytest.fixture(scope="module")
def net() -> EfficientNetLite0:
    return pretrained_efficientnet_lite0()


@pytest.mark.parametrize("size", range(1, 20))
@pytest.mark.parametrize("kernel, stride", [(1, 1), (3, 1), (3, 2), (5, 1), (5, 2)])
def test_same_padding_is_the_smallest_padding_giving_ceil_size_over_stride(size, kernel, stride):
    target = math.ceil(size / stride)
    total = 0  # brute force: grow the padding until the conv yields `target` positions
    while (size + total - kernel) // stride + 1 < target:
        total += 1
    before, after = same_padding(size, kernel, stride)
    assert before + after == total
    assert after - before in (0, 1)


@pytest.mark.parametrize("height, width", [(7, 7), (8, 5), (224, 224)])
def test_same_conv_equals_conv_on_manually_padded_input(height, width):
    conv = SameConv2d(2, 3, 5, 2)
    x = torch.randn(1, 2, height, width)
    top, bottom = same_padding(height, 5, 2)
    left, right = same_padding(width, 5, 2)
    padded = torch.zeros(1, 2, height + top + bottom, width + left + right)
    padded[:, :, top:top + height, left:left + width] = x
    expected = F.conv2d(padded, conv.weight, stride=2)
    out = conv(x)
    assert out.shape[-2:] == (math.ceil(height / 2), math.ceil(width / 2))
    torch.testing.assert_close(out, expected)


def test_mbconv_skip_only_when_shape_is_kept():
    assert MBConv(16, 16, 6, 3, 1).has_skip
    assert not MBConv(16, 24, 6, 3, 1).has_skip
    assert not MBConv(16, 16, 6, 3, 2).has_skip
    assert not MBConv(32, 16, 1, 3, 1).has_expand


def test_shipped_weights_load_strictly_with_every_key(net):
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    assert set(state) == set(EfficientNetLite0().state_dict())
    for key, value in net.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert not net.training


def test_features_and_logits_shapes(net):
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        features, logits = net.features(x), net.classify(x)
        assert torch.equal(net(x), features)
    assert features.shape == (2, FEATURE_DIM) and logits.shape == (2, 1000)
    assert (features >= 0).all() and (features <= 6).all()  # ReLU6 then a mean


@pytest.mark.realdata
def test_features_reproduce_the_flickr8k_pack(flickr8k_dir, net):
    """Preprocessed exactly as the pack's README says; rows found through images.txt."""
    names = (flickr8k_dir / "images.txt").read_text(encoding="utf-8").split()
    packed = np.load(flickr8k_dir / "features" / "image_effl0_1280.f16.npy", mmap_mode="r")
    sample = sorted((flickr8k_dir / "images_sample").glob("*.jpg"))
    chosen = [sample[0], sample[1], sample[-1]]  # a train and a test image among them
    batch = torch.stack([transform(load_image(p).resize((224, 224)), 224, IMAGENET_MEAN,
                                   IMAGENET_STD) for p in chosen])
    with torch.no_grad():
        ours = net.features(batch).numpy()
    expected = np.stack([packed[names.index(p.name)] for p in chosen]).astype(np.float32)
    assert {names.index(p.name) < 6000 for p in chosen} == {True, False}
    np.testing.assert_allclose(ours, expected, atol=1e-2, rtol=2e-3)
