"""The precomp layout ({split}_ims.npy + {split}_caps.txt) and the shared file helpers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vsekit.data.formats import DATA_FORMATS
from vsekit.data.formats._io import (
    first_nonfinite_row,
    order_splits,
    read_lines,
    select_splits,
)
from vsekit.errors import VsekitError


def load(**params) -> dict:
    """Parse and build a precomp section the way a config does."""
    name, parsed = DATA_FORMATS.parse({"format": "precomp", **params}, "data")
    return DATA_FORMATS.build(name, parsed)


def write_split(root: Path, split: str, features: np.ndarray, captions: list[str],
                ids: list[str] | None = None) -> None:
    np.save(root / f"{split}_ims.npy", features)
    (root / f"{split}_caps.txt").write_text("".join(c + "\n" for c in captions), encoding="utf-8")
    if ids is not None:
        (root / f"{split}_ids.txt").write_text("\n".join(ids) + "\n", encoding="utf-8")


def slow_caption_to_image(n_captions: int, k: int) -> list[int]:
    out = []
    image = 0
    while len(out) < n_captions:
        for _ in range(k):
            out.append(image)
        image += 1
    return out


def test_loads_every_split_present_exactly(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.standard_normal((4, 6)).astype(np.float32)
    test = rng.standard_normal((3, 5, 6)).astype(np.float16)
    write_split(tmp_path, "train", train, [f"  cap {j} \t" for j in range(8)])
    write_split(tmp_path, "test", test, [f"t{j}" for j in range(9)], ids=["a", "b", "c"])
    write_split(tmp_path, "dev", train[:2], ["x", "y"])

    splits = load(root=str(tmp_path))

    assert list(splits) == ["train", "dev", "test"]
    tr = splits["train"]
    assert isinstance(tr.images.features, np.memmap)
    np.testing.assert_array_equal(np.asarray(tr.images.features), train)
    assert tr.captions == [f"cap {j}" for j in range(8)]
    assert tr.caption_to_image.tolist() == slow_caption_to_image(8, 2)
    assert tr.image_ids == ["train-0", "train-1", "train-2", "train-3"]
    assert tr.image_root is None
    te = splits["test"]
    assert te.images.features.dtype == np.float16 and te.images.features.shape == (3, 5, 6)
    np.testing.assert_array_equal(np.asarray(te.images.features), test)
    assert te.caption_to_image.tolist() == slow_caption_to_image(9, 3)
    assert te.image_ids == ["a", "b", "c"]
    assert splits["dev"].caption_to_image.tolist() == [0, 1]


def test_requested_splits_only_and_in_order(tmp_path):
    feats = np.ones((2, 3), np.float32)
    for split in ("train", "test", "testall"):
        write_split(tmp_path, split, feats, ["a", "b"])
    assert list(load(root=str(tmp_path))) == ["train", "test", "testall"]
    assert list(load(root=str(tmp_path), splits=["testall", "train"])) == ["testall", "train"]


def test_image_stride_keeps_every_kth_row_and_id(tmp_path):
    rng = np.random.default_rng(1)
    base = rng.standard_normal((3, 4)).astype(np.float32)
    repeated = np.repeat(base, 5, axis=0)  # SCAN-style: one image row per caption
    ids = [f"img{i // 5}" for i in range(15)]
    write_split(tmp_path, "test", repeated, [f"c{j}" for j in range(15)], ids=ids)

    split = load(root=str(tmp_path), image_stride=5)["test"]

    np.testing.assert_array_equal(np.asarray(split.images.features), base)
    assert split.caption_to_image.tolist() == slow_caption_to_image(15, 5)
    assert split.image_ids == ["img0", "img1", "img2"]
    # Without the stride the repeated ids give the forgotten setting away.
    with pytest.raises(VsekitError, match=r"image id 'img0' twice \(lines 1 and 2\).*image_stride"):
        load(root=str(tmp_path))
    (tmp_path / "test_ids.txt").unlink()
    unstrided = load(root=str(tmp_path))["test"]
    assert unstrided.n_images == 15 and unstrided.caption_to_image.tolist() == list(range(15))


def test_explicit_captions_per_image(tmp_path):
    write_split(tmp_path, "train", np.zeros((2, 3), np.float32), list("abcd"))
    assert load(root=str(tmp_path), captions_per_image=2)["train"].caption_to_image.tolist() == [
        0, 0, 1, 1]
    with pytest.raises(VsekitError, match=r"4 captions for 2 images, not 3 per image"):
        load(root=str(tmp_path), captions_per_image=3)


@pytest.mark.parametrize("n_captions", [7, 2, 0])
def test_caption_count_not_a_multiple(tmp_path, n_captions):
    write_split(tmp_path, "train", np.zeros((3, 2), np.float32),
                [f"c{j}" for j in range(n_captions)])
    with pytest.raises(VsekitError, match=rf"{n_captions} captions for 3 images, not a whole"):
        load(root=str(tmp_path))


def test_captions_crlf_bom_and_whitespace(tmp_path):
    np.save(tmp_path / "train_ims.npy", np.zeros((2, 2), np.float32))
    (tmp_path / "train_caps.txt").write_bytes(b"\xef\xbb\xbf caf\xc3\xa9 one \r\ntwo\r\n")
    assert load(root=str(tmp_path))["train"].captions == ["café one", "two"]


def test_blank_caption_names_line(tmp_path):
    write_split(tmp_path, "train", np.zeros((3, 2), np.float32), ["a", "  ", "c"])
    with pytest.raises(VsekitError, match=r"train_caps.txt line 2 is blank"):
        load(root=str(tmp_path))


def test_invalid_utf8_names_line(tmp_path):
    np.save(tmp_path / "train_ims.npy", np.zeros((3, 2), np.float32))
    (tmp_path / "train_caps.txt").write_bytes(b"ok\nfine\nbad \xff byte\n")
    with pytest.raises(VsekitError, match=r"train_caps.txt line 3 is not valid UTF-8"):
        load(root=str(tmp_path))


def test_missing_files_name_path_and_content(tmp_path):
    (tmp_path / "train_caps.txt").write_text("a\n", encoding="utf-8")
    with pytest.raises(VsekitError, match=r"train_ims.npy not found: expected float image feat"):
        load(root=str(tmp_path))
    np.save(tmp_path / "test_ims.npy", np.zeros((1, 2), np.float32))
    with pytest.raises(VsekitError, match=r"test_caps.txt not found: expected UTF-8 captions"):
        load(root=str(tmp_path), splits=["test"])


def test_split_discovery_errors(tmp_path):
    with pytest.raises(VsekitError, match=r"no split found in .*looked for \*_ims.npy"):
        load(root=str(tmp_path))
    write_split(tmp_path, "train", np.zeros((1, 2), np.float32), ["a"])
    with pytest.raises(VsekitError, match=r"split 'dev' not found .*\(found: train\)"):
        load(root=str(tmp_path), splits=["train", "dev"])
    with pytest.raises(VsekitError, match=r"is not a folder; set data.root"):
        load(root=str(tmp_path / "nope"))


@pytest.mark.parametrize("params, message", [
    ({}, r"data.root is required"),
    ({"root": "x", "captions_per_image": 0}, r"captions_per_image must be at least 1"),
    ({"root": "x", "image_stride": 0}, r"image_stride must be at least 1"),
    ({"root": "x", "splits": []}, r"data.splits is empty"),
    ({"root": "x", "splits": ["a", "a"]}, r"names a split twice"),
])
def test_param_validation(params, message):
    with pytest.raises(VsekitError, match=message):
        DATA_FORMATS.parse({"format": "precomp", **params}, "data")


def _write_caps(root: Path, n: int) -> None:
    (root / "train_caps.txt").write_text("".join(f"c{j}\n" for j in range(n)), encoding="utf-8")


def test_truncated_npy(tmp_path):
    np.save(tmp_path / "train_ims.npy", np.zeros((4, 8), np.float32))
    data = (tmp_path / "train_ims.npy").read_bytes()
    (tmp_path / "train_ims.npy").write_bytes(data[:-10])
    _write_caps(tmp_path, 4)
    with pytest.raises(VsekitError, match=r"train_ims.npy is not a readable .npy file .*truncated"):
        load(root=str(tmp_path))


@pytest.mark.parametrize(("payload", "message"), [
    (b"", r"is not a .npy file \(it is empty\)"),
    (b"garbage that is not numpy", r"is not a .npy file \(it starts with b'garbage '\)"),
    (b"\x93NUMPY\x01\x00", r"is not a readable .npy file"),
])
def test_corrupt_npy(tmp_path, payload, message):
    (tmp_path / "train_ims.npy").write_bytes(payload)
    _write_caps(tmp_path, 1)
    with pytest.raises(VsekitError, match=message):
        load(root=str(tmp_path))


def test_npz_archive_rejected(tmp_path):
    with open(tmp_path / "train_ims.npy", "wb") as handle:
        np.savez(handle, a=np.zeros((2, 2)))
    _write_caps(tmp_path, 2)
    with pytest.raises(VsekitError, match=r"is an .npz archive"):
        load(root=str(tmp_path))


@pytest.mark.parametrize("array, message", [
    (np.zeros(4, np.float32), r"holds a 1-d array of shape \(4,\), expected 2-d or 3-d"),
    (np.zeros((4, 1, 1, 2), np.float32), r"holds a 4-d array"),
    (np.zeros((4, 2), np.int64), r"holds int64 values, expected floats"),
])
def test_wrong_rank_or_dtype(tmp_path, array, message):
    np.save(tmp_path / "train_ims.npy", array)
    _write_caps(tmp_path, 4)
    with pytest.raises(VsekitError, match=message):
        load(root=str(tmp_path))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nonfinite_features_name_row(tmp_path, bad):
    features = np.zeros((5, 3, 2), np.float32)
    features[3, 1, 0] = bad
    np.save(tmp_path / "train_ims.npy", features)
    _write_caps(tmp_path, 5)
    with pytest.raises(VsekitError, match=r"train_ims.npy row 3 holds NaN or Inf"):
        load(root=str(tmp_path))
    assert load(root=str(tmp_path), check_finite=False)["train"].n_images == 5


def test_nonfinite_row_named_in_file_rows_with_stride(tmp_path):
    features = np.zeros((15, 2), np.float32)
    features[10:15, 1] = np.nan  # image 2's five copies
    np.save(tmp_path / "train_ims.npy", features)
    _write_caps(tmp_path, 15)
    with pytest.raises(VsekitError, match=r"train_ims.npy row 10 holds NaN"):
        load(root=str(tmp_path), image_stride=5)


def test_ids_count_mismatch(tmp_path):
    write_split(tmp_path, "train", np.zeros((2, 2), np.float32), ["a", "b"], ids=["x"])
    with pytest.raises(VsekitError, match=r"train_ids.txt has 1 ids for 2 feature rows"):
        load(root=str(tmp_path))


def test_stride_must_divide_rows(tmp_path):
    write_split(tmp_path, "train", np.zeros((7, 2), np.float32), [f"c{j}" for j in range(7)])
    with pytest.raises(VsekitError, match=r"7 rows, not a multiple of data.image_stride=5"):
        load(root=str(tmp_path), image_stride=5)


# ---- helpers --------------------------------------------------------------------------------


def slow_first_nonfinite_row(array: np.ndarray) -> int | None:
    for i in range(array.shape[0]):
        for value in array[i].reshape(-1).tolist():
            if math.isnan(value) or math.isinf(value):
                return i
    return None


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 30), width=st.integers(1, 5), chunk=st.integers(1, 200),
       bad=st.lists(st.tuples(st.integers(0, 29), st.integers(0, 4),
                              st.sampled_from([math.nan, math.inf, -math.inf])), max_size=3),
       seed=st.integers(0, 1000))
def test_first_nonfinite_row_matches_loop(n, width, chunk, bad, seed):
    array = np.random.default_rng(seed).standard_normal((n, width)).astype(np.float32)
    for row, col, value in bad:
        if row < n and col < width:
            array[row, col] = value
    assert first_nonfinite_row(array, chunk_bytes=chunk) == slow_first_nonfinite_row(array)


def test_first_nonfinite_row_on_memmap_in_chunks(tmp_path):
    array = np.random.default_rng(2).standard_normal((50, 4, 3)).astype(np.float16)
    array[41, 2, 1] = np.nan
    np.save(tmp_path / "a.npy", array)
    mapped = np.load(tmp_path / "a.npy", mmap_mode="r")
    assert first_nonfinite_row(mapped, chunk_bytes=4 * 3 * 2 * 7) == 41
    assert first_nonfinite_row(mapped[:41], chunk_bytes=1) is None


@pytest.mark.parametrize("raw, lines", [
    (b"", []), (b"a", ["a"]), (b"a\n", ["a"]), (b"a\r\nb", ["a", "b"]), (b"a\n\n", ["a", ""]),
])
def test_read_lines(tmp_path, raw, lines):
    (tmp_path / "f.txt").write_bytes(raw)
    assert read_lines(tmp_path / "f.txt") == lines


def test_order_and_select_splits():
    assert order_splits({"testall", "test", "train", "a", "dev"}) == [
        "train", "dev", "test", "a", "testall"]
    assert select_splits(["train", "test"], None, "here") == ["train", "test"]
    assert select_splits(["train", "test"], ["test"], "here") == ["test"]
    with pytest.raises(VsekitError, match=r"no split found in here"):
        select_splits([], None, "here")
