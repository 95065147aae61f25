"""Flickr8k loaders: the real-data pack layout (``flickr8k``) and Kaggle's (``flickr8k_csv``)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from vsekit.data.formats import DATA_FORMATS
from vsekit.data.formats.flickr8k import seeded_split_rows
from vsekit.errors import VsekitError


def load(fmt: str, **params) -> dict:
    name, parsed = DATA_FORMATS.parse({"format": fmt, **params}, "data")
    return DATA_FORMATS.build(name, parsed)


def slow_caption_to_image(caption_images: list[str], image_names: list[str]) -> list[int]:
    out = []
    for caption_image in caption_images:
        for i, name in enumerate(image_names):
            if name == caption_image:
                out.append(i)
                break
    return out


# ---- a miniature pack ---------------------------------------------------------------------

NAMES = ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"]
SPLITS = {"train": [0, 1], "dev": [2], "test": [3]}  # row 4 is in no split


def caption_text(i: int, c: int) -> str:
    return f'image {i} says "{c}", quoted'


def write_pack(root: Path, sample: tuple[str, ...] = ("a.jpg", "d.jpg")) -> dict:
    rng = np.random.default_rng(0)
    image_features = rng.random((5, 8)).astype(np.float16)
    caption_features = rng.standard_normal((10, 4)).astype(np.float16)
    (root / "features").mkdir(parents=True)
    (root / "images_sample").mkdir()
    (root / "images.txt").write_text("\n".join(NAMES) + "\n", encoding="utf-8")
    rows = ["image\tcaption_index\tcaption"]
    rows += [f"{NAMES[r // 2]}\t{r % 2}\t{caption_text(r // 2, r % 2)}" for r in range(10)]
    (root / "captions.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (root / "splits.json").write_text(json.dumps(SPLITS), encoding="utf-8")
    np.save(root / "features/image_effl0_1280.f16.npy", image_features)
    np.save(root / "features/caption_minilm_384.f16.npy", caption_features)
    for name in sample:
        (root / "images_sample" / name).write_bytes(b"\xff\xd8\xff\xe0 jpeg")
    return {"image": image_features, "caption": caption_features}


def test_pack_features_exact(tmp_path):
    arrays = write_pack(tmp_path)
    splits = load("flickr8k", root=str(tmp_path))

    assert list(splits) == ["train", "dev", "test"]
    for name, rows in SPLITS.items():
        split = splits[name]
        assert split.image_ids == [NAMES[r] for r in rows]
        assert split.images.kind == "features" and split.images.features.dtype == np.float32
        np.testing.assert_array_equal(split.images.features,
                                      arrays["image"][rows].astype(np.float32))
        caption_rows = [2 * r + c for r in rows for c in range(2)]
        assert split.captions == [caption_text(r // 2, r % 2) for r in caption_rows]
        assert split.caption_to_image.tolist() == slow_caption_to_image(
            [NAMES[r // 2] for r in caption_rows], split.image_ids)
        assert split.caption_features.dtype == np.float32
        np.testing.assert_array_equal(split.caption_features,
                                      arrays["caption"][caption_rows].astype(np.float32))
        assert split.image_root is None


def test_pack_files_keeps_only_sample_images(tmp_path):
    write_pack(tmp_path, sample=("b.jpg", "d.jpg", "e.jpg"))
    splits = load("flickr8k", root=str(tmp_path), images="files", caption_features=False)

    assert list(splits) == ["train", "test"]  # dev's only image is not in images_sample
    train = splits["train"]
    assert train.images.files == [tmp_path / "images_sample" / "b.jpg"]
    assert train.image_ids == ["b.jpg"] and train.captions == [caption_text(1, 0),
                                                              caption_text(1, 1)]
    assert train.caption_to_image.tolist() == [0, 0]
    assert train.caption_features is None
    assert train.image_root == tmp_path / "images_sample"
    assert splits["test"].image_ids == ["d.jpg"]
    with pytest.raises(VsekitError, match=r"split 'dev' has no image in .*images_sample"):
        load("flickr8k", root=str(tmp_path), images="files", splits=["dev"])


def test_pack_requested_splits(tmp_path):
    write_pack(tmp_path)
    assert list(load("flickr8k", root=str(tmp_path), splits=["test"])) == ["test"]
    with pytest.raises(VsekitError, match=r"split 'val' not found in .*splits.json"):
        load("flickr8k", root=str(tmp_path), splits=["val"])


def test_pack_root_required_and_must_exist(tmp_path):
    with pytest.raises(VsekitError, match=r"data.root is required: set it to the Flickr8k pack"):
        load("flickr8k")
    with pytest.raises(VsekitError, match=r"is not a folder; set data.root to the Flickr8k pack"):
        load("flickr8k", root=str(tmp_path / "missing"))


@pytest.mark.parametrize("file, expected", [
    ("images.txt", r"images.txt not found: expected one image file name a line"),
    ("captions.tsv", r"captions.tsv not found: expected a tab-separated table"),
    ("splits.json", r"splits.json not found"),
    ("features/image_effl0_1280.f16.npy", r"image_effl0_1280.f16.npy not found"),
    ("features/caption_minilm_384.f16.npy", r"caption_minilm_384.f16.npy not found"),
])
def test_pack_missing_file(tmp_path, file, expected):
    write_pack(tmp_path)
    (tmp_path / file).unlink()
    with pytest.raises(VsekitError, match=expected):
        load("flickr8k", root=str(tmp_path))


def test_pack_missing_sample_folder(tmp_path):
    write_pack(tmp_path, sample=())
    (tmp_path / "images_sample").rmdir()
    with pytest.raises(VsekitError, match=r"images_sample not found: images: files needs"):
        load("flickr8k", root=str(tmp_path), images="files")


def _rewrite(path: Path, old: str, new: str) -> None:
    path.write_text(path.read_text(encoding="utf-8").replace(old, new, 1), encoding="utf-8")


@pytest.mark.parametrize("old, new, expected", [
    ("image\tcaption_index", "img\tcaption_index", r"has no 'image' column"),
    ("\tcaption\n", "\ttext\n", r"has no 'caption' column"),
    ("b.jpg\t0\t", "b.jpg\t0\textra\t", r"captions.tsv line 4 has 4 fields, expected 3"),
    ('image 1 says "1", quoted', "   ", r"captions.tsv line 5 has an empty caption"),
    ("c.jpg\t0", "zzz.jpg\t0", r"captions.tsv names 1 images not in images.txt .*'zzz.jpg'"),
])
def test_pack_bad_captions_table(tmp_path, old, new, expected):
    write_pack(tmp_path)
    _rewrite(tmp_path / "captions.tsv", old, new)
    with pytest.raises(VsekitError, match=expected):
        load("flickr8k", root=str(tmp_path))


@pytest.mark.parametrize("content, expected", [
    ('{"train": [0, 1],\n "test": [3,]}', r"splits.json is not valid JSON \(line 2, column"),
    ('{"train": [0, 9]}', r"split 'train' must be a list of images.txt row indices in 0..4"),
    ('{"train": [true]}', r"split 'train' must be a list"),
    ("[]", r"must map split names to lists"),
])
def test_pack_bad_splits_json(tmp_path, content, expected):
    write_pack(tmp_path)
    (tmp_path / "splits.json").write_text(content, encoding="utf-8")
    with pytest.raises(VsekitError, match=expected):
        load("flickr8k", root=str(tmp_path))


def test_pack_feature_rows_and_nan(tmp_path):
    arrays = write_pack(tmp_path)
    np.save(tmp_path / "features/image_effl0_1280.f16.npy", arrays["image"][:4])
    with pytest.raises(VsekitError, match=r"has 4 rows, expected 5 \(one per line of images"):
        load("flickr8k", root=str(tmp_path))
    bad = arrays["caption"].copy()
    bad[7, 2] = np.nan
    np.save(tmp_path / "features/image_effl0_1280.f16.npy", arrays["image"])
    np.save(tmp_path / "features/caption_minilm_384.f16.npy", bad)
    with pytest.raises(VsekitError, match=r"caption_minilm_384.f16.npy row 7 holds NaN"):
        load("flickr8k", root=str(tmp_path))
    assert load("flickr8k", root=str(tmp_path), caption_features=False)["dev"].n_captions == 2


# ---- the real pack ----------------------------------------------------------------------------


@pytest.mark.realdata
def test_real_pack(flickr8k_dir):
    splits = load("flickr8k", root=str(flickr8k_dir))
    names = (flickr8k_dir / "images.txt").read_text(encoding="utf-8").split()
    with open(flickr8k_dir / "captions.tsv", encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    raw_images = np.load(flickr8k_dir / "features/image_effl0_1280.f16.npy")
    raw_captions = np.load(flickr8k_dir / "features/caption_minilm_384.f16.npy")

    assert {name: s.n_images for name, s in splits.items()} == {
        "train": 6000, "dev": 1000, "test": 1000}
    for first_row, split in zip((0, 6000, 7000), splits.values(), strict=True):
        n = split.n_images
        assert split.n_captions == 5 * n
        assert np.bincount(split.caption_to_image).tolist() == [5] * n
        assert split.caption_to_image.tolist() == [j // 5 for j in range(5 * n)]
        assert split.images.features.shape == (n, 1280)
        assert split.images.features.dtype == np.float32
        assert split.caption_features.shape == (5 * n, 384)
        assert split.image_ids == names[first_row:first_row + n]
        assert split.captions[0] == rows[5 * first_row][2].strip()
        assert rows[5 * first_row][0] == split.image_ids[0]
        assert split.captions[-1] == rows[5 * (first_row + n) - 1][2].strip()
        np.testing.assert_array_equal(split.images.features[[0, -1]],
                                      raw_images[[first_row, first_row + n - 1]])
        np.testing.assert_array_equal(split.caption_features[[0, -1]],
                                      raw_captions[[5 * first_row, 5 * (first_row + n) - 1]])


@pytest.mark.realdata
def test_real_pack_sample_files(flickr8k_dir):
    splits = load("flickr8k", root=str(flickr8k_dir), images="files", caption_features=False)
    assert {name: s.n_images for name, s in splits.items()} == {"train": 100, "test": 100}
    for split in splits.values():
        assert all(path.is_file() for path in split.images.files)
        assert split.n_captions == 500


# ---- the Kaggle layout ------------------------------------------------------------------------


KAGGLE = [("p.jpg", "A dog, running."), ("p.jpg", 'He said "hi"'), ("q.jpg", " spaced "),
          ("r.jpg", "one"), ("q.jpg", "two"), ("s.jpg", "x"), ("t.jpg", "y"), ("p.jpg", "z")]


def write_kaggle(root: Path, rows=KAGGLE, header=("image", "caption"), skip=()) -> None:
    (root / "Images").mkdir(parents=True, exist_ok=True)
    with open(root / "captions.txt", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    for name in {image for image, _ in rows if image} - set(skip):
        (root / "Images" / name).write_bytes(b"\xff\xd8\xff\xe0 jpeg")


def test_kaggle_split_files(tmp_path):
    write_kaggle(tmp_path)
    (tmp_path / "train.txt").write_text("p.jpg\r\nq.jpg\r\n", encoding="utf-8")
    (tmp_path / "test.txt").write_text("s.jpg\n", encoding="utf-8")
    splits = load("flickr8k_csv", root=str(tmp_path),
                  split_files={"train": "train.txt", "test": "test.txt"})

    assert list(splits) == ["train", "test"]  # r.jpg and t.jpg are in no list
    train = splits["train"]
    assert train.image_ids == ["p.jpg", "q.jpg"]
    assert train.images.files == [tmp_path / "Images" / "p.jpg", tmp_path / "Images" / "q.jpg"]
    assert train.image_root == tmp_path / "Images"
    kept = [(image, text.strip()) for image, text in KAGGLE if image in ("p.jpg", "q.jpg")]
    assert train.captions == [text for _, text in kept]
    assert train.caption_to_image.tolist() == slow_caption_to_image(
        [image for image, _ in kept], train.image_ids)
    assert splits["test"].captions == ["x"]


def test_kaggle_seeded_split(tmp_path):
    write_kaggle(tmp_path)
    splits = load("flickr8k_csv", root=str(tmp_path), dev_size=1, test_size=2, seed=3)
    order = ["p.jpg", "q.jpg", "r.jpg", "s.jpg", "t.jpg"]
    perm = np.random.default_rng(3).permutation(5).tolist()
    expected = {"train": sorted(perm[3:]), "dev": sorted(perm[2:3]), "test": sorted(perm[:2])}
    assert list(splits) == ["train", "dev", "test"]
    for name, rows in expected.items():
        assert splits[name].image_ids == [order[r] for r in rows]
        assert splits[name].captions == [t.strip() for i, t in KAGGLE if i in
                                         splits[name].image_ids]
    assert list(load("flickr8k_csv", root=str(tmp_path), dev_size=0, test_size=1)) == [
        "train", "test"]


@pytest.mark.parametrize("n, dev, test, seed", [(10, 3, 2, 0), (7, 0, 6, 5), (100, 10, 10, 9)])
def test_seeded_split_rows_partition(n, dev, test, seed):
    rows = seeded_split_rows(n, dev, test, seed)
    again = seeded_split_rows(n, dev, test, seed)
    sizes = {"train": n - dev - test, "dev": dev, "test": test}
    assert {k: len(v) for k, v in rows.items()} == {k: v for k, v in sizes.items() if v}
    seen = []
    for name, index in rows.items():
        assert index.tolist() == sorted(index.tolist())
        assert index.tolist() == again[name].tolist()
        seen.extend(index.tolist())
    assert sorted(seen) == list(range(n))
    other = seeded_split_rows(n, dev, test, seed + 1)
    assert n < 100 or other["test"].tolist() != rows["test"].tolist()


def test_seeded_split_too_small(tmp_path):
    write_kaggle(tmp_path)
    with pytest.raises(VsekitError, match=r"5 images are too few for dev_size=3 \+ test_size=2"):
        load("flickr8k_csv", root=str(tmp_path), dev_size=3, test_size=2)


def test_kaggle_missing_images_named_and_counted(tmp_path):
    write_kaggle(tmp_path, skip=("q.jpg", "t.jpg"))
    with pytest.raises(VsekitError, match=r"2 of 5 image files listed in .*captions.txt are "
                                          r"missing \(first: .*Images/q.jpg\)"):
        load("flickr8k_csv", root=str(tmp_path), dev_size=1, test_size=1)


def test_kaggle_only_checks_images_of_loaded_splits(tmp_path):
    write_kaggle(tmp_path, skip=("t.jpg",))
    (tmp_path / "train.txt").write_text("p.jpg\n", encoding="utf-8")
    splits = load("flickr8k_csv", root=str(tmp_path), split_files={"train": "train.txt"})
    assert splits["train"].image_ids == ["p.jpg"]


@pytest.mark.parametrize("rows, header, expected", [
    (KAGGLE, ("img", "caption"), r"captions.txt has no 'image' column"),
    (KAGGLE, ("image", "text"), r"captions.txt has no 'caption' column"),
    ([("p.jpg", "ok"), ("q.jpg", "  ")], ("image", "caption"), r"line 3 has an empty caption"),
    ([("p.jpg", "ok"), ("", "x")], ("image", "caption"), r"line 3 has an empty image name"),
])
def test_kaggle_bad_table(tmp_path, rows, header, expected):
    write_kaggle(tmp_path, rows=rows, header=header)
    with pytest.raises(VsekitError, match=expected):
        load("flickr8k_csv", root=str(tmp_path), dev_size=0, test_size=0)


def test_kaggle_invalid_csv_and_utf8(tmp_path):
    write_kaggle(tmp_path)
    (tmp_path / "captions.txt").write_bytes(b'image,caption\np.jpg,fine\nq.jpg,"a"b\n')
    with pytest.raises(VsekitError, match=r"captions.txt line 3 is not valid CSV \(',' expected"):
        load("flickr8k_csv", root=str(tmp_path), dev_size=0, test_size=0)
    (tmp_path / "captions.txt").write_bytes(b'image,caption\np.jpg,"unterminated\n')
    with pytest.raises(VsekitError, match=r"captions.txt line 2 is not valid CSV"):
        load("flickr8k_csv", root=str(tmp_path), dev_size=0, test_size=0)
    (tmp_path / "captions.txt").write_bytes(b"image,caption\np.jpg,caf\xe9\n")
    with pytest.raises(VsekitError, match=r"captions.txt line 2 is not valid UTF-8"):
        load("flickr8k_csv", root=str(tmp_path), dev_size=0, test_size=0)


def test_kaggle_split_file_errors(tmp_path):
    write_kaggle(tmp_path)
    (tmp_path / "train.txt").write_text("p.jpg\n9000268201_993b08cb0e.jpg\n", encoding="utf-8")
    with pytest.raises(VsekitError, match=r"train.txt names 1 images not in .*captions.txt "
                                          r"\(first: '9000268201_993b08cb0e.jpg'\)"):
        load("flickr8k_csv", root=str(tmp_path), split_files={"train": "train.txt"})
    (tmp_path / "train.txt").write_text("p.jpg\nq.jpg\n", encoding="utf-8")
    (tmp_path / "test.txt").write_text("q.jpg\n", encoding="utf-8")
    with pytest.raises(VsekitError, match=r"image 'q.jpg' is listed twice \(in the train and "
                                          r"test split files\)"):
        load("flickr8k_csv", root=str(tmp_path),
             split_files={"train": "train.txt", "test": "test.txt"})
    with pytest.raises(VsekitError, match=r"dev.txt not found: expected image file names"):
        load("flickr8k_csv", root=str(tmp_path), split_files={"dev": "dev.txt"})
    with pytest.raises(VsekitError, match=r"split 'dev' not found in data.split_files"):
        load("flickr8k_csv", root=str(tmp_path), split_files={"train": "train.txt"},
             splits=["dev"])


@pytest.mark.parametrize("params, expected", [
    ({}, r"data.root is required: set it to the folder holding captions.txt"),
    ({"root": "x", "dev_size": -1}, r"data.dev_size must be non-negative"),
    ({"root": "x", "split_files": {}}, r"data.split_files must map split names"),
    ({"root": "x", "split_files": {"train": 3}}, r"data.split_files must map split names"),
])
def test_kaggle_param_validation(params, expected):
    with pytest.raises(VsekitError, match=expected):
        DATA_FORMATS.parse({"format": "flickr8k_csv", **params}, "data")


def test_kaggle_missing_captions_file(tmp_path):
    with pytest.raises(VsekitError, match=r"captions.txt not found: expected a CSV with header"):
        load("flickr8k_csv", root=str(tmp_path))
