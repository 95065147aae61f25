"""Feature extraction to the precomputed layout, and reading feature rows back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vsekit.data.images import IMAGENET_MEAN, IMAGENET_STD
from vsekit.errors import VsekitError
from vsekit.models.efficientnet import pretrained_efficientnet_lite0
from vsekit.models.features import extract_features, gather_rows, list_images


def write_images(folder, count, size=40):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


# ------------------------------------------------------------------ gather_rows


def test_gather_rows_from_float16_memmap_in_any_order(tmp_path):
    array = np.arange(24, dtype=np.float16).reshape(6, 4)
    np.save(tmp_path / "f.npy", array)
    mapped = np.load(tmp_path / "f.npy", mmap_mode="r")
    index = np.array([4, 0, 4, 2])
    rows = gather_rows(mapped, index, "image features")
    assert rows.dtype == torch.float32 and rows.shape == (4, 4)
    for i, j in enumerate(index):
        assert rows[i].tolist() == [float(v) for v in array[j]]


def test_gather_rows_regions():
    array = np.random.default_rng(0).standard_normal((5, 3, 2)).astype(np.float32)
    assert torch.equal(gather_rows(array, [1, 3], "x"), torch.from_numpy(array[[1, 3]]))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_gather_rows_rejects_non_finite(bad):
    array = np.zeros((4, 3), dtype=np.float32)
    array[2, 1] = bad
    assert gather_rows(array, [0, 1, 3], "image features").abs().sum() == 0  # other rows fine
    with pytest.raises(VsekitError, match="image features contain NaN or Inf"):
        gather_rows(array, [0, 2], "image features")


# ------------------------------------------------------------------ list_images


def test_list_images_sorted_and_filtered(tmp_path):
    for name in ["b.jpg", "a.PNG", "c.jpeg", "notes.txt", "d.JPG", ".hidden.gif"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.jpg").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.PNG", "b.jpg", "c.jpeg", "d.JPG"]


def test_list_images_errors(tmp_path):
    with pytest.raises(VsekitError, match="not found"):
        list_images(tmp_path / "missing")
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(VsekitError, match="no .jpg"):
        list_images(tmp_path)


# ------------------------------------------------------------------ extract_features


def test_extract_features_writes_rows_and_sidecar(tmp_path):
    paths = write_images(tmp_path, 3)
    out = tmp_path / "feats" / "train_ims.npy"
    features = extract_features(paths, out, batch_size=2, image_size=48, dtype="float32",
                                progress=False)
    saved = np.load(out)
    assert saved.dtype == np.float32 and saved.shape == (3, 1280)
    assert np.array_equal(saved, features)
    assert out.with_suffix(".txt").read_text().splitlines() == ["img0.png", "img1.png",
                                                                "img2.png"]
    half = extract_features(paths, tmp_path / "half.npy", batch_size=3, image_size=48,
                            progress=False)
    assert half.dtype == np.float16 and np.load(tmp_path / "half.npy").dtype == np.float16
    np.testing.assert_allclose(half.astype(np.float32), saved, atol=1e-2, rtol=1e-3)
    # Independently: each image alone, resized and normalised by hand.
    net = pretrained_efficientnet_lite0()
    mean, std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
    for i, path in enumerate(paths):
        pixels = np.asarray(Image.open(path).convert("RGB").resize((48, 48)), np.float64)
        x = torch.tensor(((pixels / 255 - mean) / std).transpose(2, 0, 1)[None],
                         dtype=torch.float32)
        with torch.no_grad():
            expected = net.features(x)[0].numpy()
        np.testing.assert_allclose(saved[i], expected, atol=1e-4, rtol=1e-4)


def test_extract_features_bad_inputs(tmp_path):
    with pytest.raises(VsekitError, match="no images"):
        extract_features([], tmp_path / "x.npy", progress=False)
    paths = write_images(tmp_path, 1)
    with pytest.raises(VsekitError, match=r"\.npy"):
        extract_features(paths, tmp_path / "x.bin", progress=False)
    with pytest.raises(VsekitError, match="batch_size"):
        extract_features(paths, tmp_path / "x.npy", batch_size=0, progress=False)
    (tmp_path / "broken.jpg").write_bytes(b"garbage")
    with pytest.raises(VsekitError, match="broken.jpg"):
        extract_features([*paths, tmp_path / "broken.jpg"], tmp_path / "x.npy", progress=False)
    assert not (tmp_path / "x.npy").exists()


@pytest.mark.realdata
def test_extract_features_matches_the_flickr8k_pack(flickr8k_dir, tmp_path):
    paths = list_images(flickr8k_dir / "images_sample")[:2]
    features = extract_features(paths, tmp_path / "f.npy", progress=False)
    names = (flickr8k_dir / "images.txt").read_text(encoding="utf-8").split()
    packed = np.load(flickr8k_dir / "features" / "image_effl0_1280.f16.npy", mmap_mode="r")
    expected = np.stack([packed[names.index(p.name)] for p in paths])
    np.testing.assert_allclose(features.astype(np.float32), expected.astype(np.float32),
                               atol=1e-2, rtol=2e-3)
