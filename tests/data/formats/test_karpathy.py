"""Karpathy dataset_*.json and ALBEF per-split JSON loaders (format ``karpathy``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vsekit.data.formats import DATA_FORMATS
from vsekit.errors import VsekitError


def load(**params) -> dict:
    name, parsed = DATA_FORMATS.parse({"format": "karpathy", **params}, "data")
    return DATA_FORMATS.build(name, parsed)


def touch_images(root: Path, paths: list[str]) -> None:
    for path in paths:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(b"\xff\xd8\xff\xe0 jpeg")


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return path


def slow_grouping(records: list[tuple[str, str, list[str]]]):
    """(image ids in first-appearance order, captions, caption → image) by plain loops."""
    ids: list[str] = []
    captions: list[str] = []
    owners: list[int] = []
    for image_id, _, texts in records:
        if image_id not in ids:
            ids.append(image_id)
        for text in texts:
            captions.append(text.strip())
            owners.append(ids.index(image_id))
    return ids, captions, owners


# ---- Karpathy style ---------------------------------------------------------------------------


def karpathy_data() -> dict:
    def entry(filename, split, sentences, filepath=None, **ids):
        item = {"filename": filename, "split": split,
                "sentences": [{"raw": s, "tokens": s.split()} for s in sentences], **ids}
        if filepath is not None:
            item["filepath"] = filepath
        return item

    return {"dataset": "coco", "images": [
        entry("a.jpg", "train", [" A cat. ", "a cat again"], "train2014", cocoid=11, imgid=0),
        entry("b.jpg", "val", ["b one", "b two", "b three"], "val2014", cocoid=12, imgid=1),
        entry("c.jpg", "test", ["c one"], "val2014", cocoid=13, imgid=2),
        entry("d.jpg", "restval", ["d one", "d two"], "val2014", cocoid=14, imgid=3),
        entry("e.jpg", "test", ["e one"], imgid=4),
        entry("f.jpg", "train", ["f one"]),
    ]}


def write_karpathy(tmp_path: Path) -> tuple[Path, Path]:
    root, images = tmp_path / "json", tmp_path / "images"
    root.mkdir()
    write_json(root / "dataset_coco.json", karpathy_data())
    touch_images(images, ["train2014/a.jpg", "val2014/b.jpg", "val2014/c.jpg", "val2014/d.jpg",
                          "e.jpg", "f.jpg"])
    return root, images


def test_karpathy_exact(tmp_path):
    root, images = write_karpathy(tmp_path)
    splits = load(root=str(root), image_root=str(images))

    assert list(splits) == ["train", "dev", "test"]
    train = splits["train"]
    assert train.image_ids == ["11", "14", "f.jpg"]  # restval joins train, file order kept
    assert train.images.kind == "files"
    assert train.images.files == [images / "train2014/a.jpg", images / "val2014/d.jpg",
                                  images / "f.jpg"]
    assert train.image_root == images
    expected = slow_grouping([("11", "", [" A cat. ", "a cat again"]),
                              ("14", "", ["d one", "d two"]), ("f.jpg", "", ["f one"])])
    assert (train.image_ids, train.captions, train.caption_to_image.tolist()) == expected
    assert splits["dev"].captions == ["b one", "b two", "b three"]
    assert splits["dev"].caption_to_image.tolist() == [0, 0, 0]
    assert splits["test"].image_ids == ["13", "4"]  # cocoid first, then imgid
    assert splits["test"].caption_to_image.tolist() == [0, 1]


def test_karpathy_restval_kept_apart_and_split_selection(tmp_path):
    root, images = write_karpathy(tmp_path)
    splits = load(root=str(root), image_root=str(images), restval_to_train=False)
    assert list(splits) == ["train", "dev", "test", "restval"]
    assert splits["restval"].image_ids == ["14"]
    assert splits["train"].image_ids == ["11", "f.jpg"]
    only = load(root=str(root), image_root=str(images), splits=["test"], style="karpathy",
                file="dataset_coco.json")
    assert list(only) == ["test"]
    with pytest.raises(VsekitError, match=r"split 'val' not found in .*dataset_coco.json "
                                          r"\(found: train, dev, test\)"):
        load(root=str(root), image_root=str(images), splits=["val"])


def test_karpathy_only_checks_images_of_loaded_splits(tmp_path):
    root, images = write_karpathy(tmp_path)
    (images / "f.jpg").unlink()
    assert load(root=str(root), image_root=str(images), splits=["test"])["test"].n_images == 2
    with pytest.raises(VsekitError, match=r"1 of 3 image files listed in .*dataset_coco.json "
                                          r"are missing \(first: .*f.jpg\)"):
        load(root=str(root), image_root=str(images))


def test_missing_images_counted(tmp_path):
    root, images = write_karpathy(tmp_path)
    with pytest.raises(VsekitError, match=r"3 of 3 image files .* missing \(first: "
                                          r".*json/train2014/a.jpg\); point the image folder"):
        load(root=str(root), splits=["train"])  # image_root defaults to root


def _mutate(data: dict, index: int, **changes) -> dict:
    item = data["images"][index]
    for key, value in changes.items():
        if value is None:
            del item[key]
        else:
            item[key] = value
    return data


@pytest.mark.parametrize("changes, expected", [
    ({"index": 2, "filename": None}, r"dataset_coco.json record 2 has no 'filename' key"),
    ({"index": 1, "split": None}, r"record 1 has no 'split' key"),
    ({"index": 3, "sentences": None}, r"record 3 has no 'sentences' key"),
    ({"index": 0, "sentences": [{"tokens": []}]}, r"record 0: 'sentences' must be a list of "),
    ({"index": 4, "sentences": [{"raw": "ok"}, {"raw": "  "}]},
     r"record 4 caption 1 is empty or not text"),
    ({"index": 4, "sentences": []}, r"record 4 has no captions"),
    ({"index": 5, "filename": ""}, r"record 5: 'filename' must be a non-empty file path"),
    ({"index": 5, "cocoid": 12}, r"image id '12' points to val2014/b.jpg \(.*record 1\) and to "
                                 r"f.jpg \(.*record 5\)"),
])
def test_karpathy_record_errors(tmp_path, changes, expected):
    root, images = write_karpathy(tmp_path)
    index = changes.pop("index")
    write_json(root / "dataset_coco.json", _mutate(karpathy_data(), index, **changes))
    with pytest.raises(VsekitError, match=expected):
        load(root=str(root), image_root=str(images), restval_to_train=False,
             splits=["train", "dev", "test"])


def test_duplicate_id_same_file_is_merged(tmp_path):
    root, images = write_karpathy(tmp_path)
    data = karpathy_data()
    data["images"].append({"filename": "a.jpg", "filepath": "train2014", "split": "train",
                           "cocoid": 11, "sentences": [{"raw": "merged"}]})
    write_json(root / "dataset_coco.json", data)
    train = load(root=str(root), image_root=str(images))["train"]
    assert train.image_ids == ["11", "14", "f.jpg"]
    assert train.captions[-1] == "merged" and train.caption_to_image.tolist()[-1] == 0


def test_karpathy_not_an_object_record(tmp_path):
    root, images = write_karpathy(tmp_path)
    data = karpathy_data()
    data["images"][1] = ["not", "an", "object"]
    write_json(root / "dataset_coco.json", data)
    with pytest.raises(VsekitError, match=r"record 1 is not a JSON object"):
        load(root=str(root), image_root=str(images))


def test_invalid_json_names_file_and_line(tmp_path):
    root = tmp_path
    (root / "dataset_f30k.json").write_text('{"images": [\n {"filename": "a.jpg",}\n]}',
                                            encoding="utf-8")
    with pytest.raises(VsekitError, match=r"dataset_f30k.json is not valid JSON \(line 2, "
                                          r"column \d+"):
        load(root=str(root))
    (root / "dataset_f30k.json").write_bytes(b'{"images":\n\n [\xff]}')
    with pytest.raises(VsekitError, match=r"dataset_f30k.json line 3 is not valid UTF-8"):
        load(root=str(root))


def test_karpathy_file_discovery_errors(tmp_path):
    with pytest.raises(VsekitError, match=r"no caption JSON found in .*dataset_\*.json or ALBEF"):
        load(root=str(tmp_path))
    with pytest.raises(VsekitError, match=r"expected one dataset_\*.json in .*found \[\]"):
        load(root=str(tmp_path), style="karpathy")
    write_json(tmp_path / "dataset_coco.json", karpathy_data())
    write_json(tmp_path / "dataset_flickr30k.json", karpathy_data())
    with pytest.raises(VsekitError, match=r"found \['dataset_coco.json', 'dataset_flickr30k.json'"
                                          r"\]; name it with data.file"):
        load(root=str(tmp_path))
    with pytest.raises(VsekitError, match=r"other.json not found: expected Karpathy's"):
        load(root=str(tmp_path), file="other.json")


def test_style_mismatch_is_explained(tmp_path):
    write_json(tmp_path / "dataset_coco.json", [{"image": "a.jpg", "caption": "x"}])
    with pytest.raises(VsekitError, match=r"holds a list of records \(ALBEF style\); set "
                                          r"data.style: albef"):
        load(root=str(tmp_path))
    write_json(tmp_path / "test.json", karpathy_data())
    with pytest.raises(VsekitError, match=r"test.json holds Karpathy's .* set data.style: "
                                          r"karpathy"):
        load(root=str(tmp_path), style="albef")
    write_json(tmp_path / "dataset_coco.json", {"annotations": []})
    with pytest.raises(VsekitError, match=r"has no 'images' list"):
        load(root=str(tmp_path))


# ---- ALBEF style ----------------------------------------------------------------------------


TRAIN = [
    {"image": "imgs/x.jpg", "caption": " x one ", "image_id": "coco_1"},
    {"image": "imgs/y.jpg", "caption": "y one", "image_id": "coco_2"},
    {"image": "imgs/x.jpg", "caption": "x two", "image_id": "coco_1"},
    {"image": "imgs/z.jpg", "caption": "z one", "image_id": 3},
]
VAL = [
    {"image": "imgs/v.jpg", "caption": ["v one", "v two"]},
    {"image": "imgs/w.jpg", "caption": ["w one"]},
    {"image": "imgs/v.jpg", "caption": "v three"},
]


def write_albef(tmp_path: Path) -> tuple[Path, Path]:
    root, images = tmp_path / "ann", tmp_path / "data"
    root.mkdir()
    write_json(root / "train.json", TRAIN)
    write_json(root / "val.json", VAL)
    touch_images(images, ["imgs/x.jpg", "imgs/y.jpg", "imgs/z.jpg", "imgs/v.jpg", "imgs/w.jpg"])
    return root, images


def as_tuples(records: list[dict]) -> list[tuple[str, str, list[str]]]:
    out = []
    for record in records:
        caption = record["caption"]
        image_id = str(record.get("image_id", record["image"]))
        out.append((image_id, record["image"], [caption] if isinstance(caption, str) else caption))
    return out


def test_albef_default_files_merged_exactly(tmp_path):
    root, images = write_albef(tmp_path)
    splits = load(root=str(root), image_root=str(images))

    assert list(splits) == ["train", "dev"]  # val.json becomes dev
    for split, records in ((splits["train"], TRAIN), (splits["dev"], VAL)):
        ids, captions, owners = slow_grouping(as_tuples(records))
        assert split.image_ids == ids
        assert split.captions == captions
        assert split.caption_to_image.tolist() == owners
        paths = {str(r.get("image_id", r["image"])): r["image"] for r in records}
        assert split.images.files == [images / paths[i] for i in ids]
        assert split.image_root == images
    assert splits["train"].image_ids == ["coco_1", "coco_2", "3"]
    assert splits["dev"].image_ids == ["imgs/v.jpg", "imgs/w.jpg"]


def test_albef_explicit_files_and_selection(tmp_path):
    root, images = write_albef(tmp_path)
    (root / "sub").mkdir()
    write_json(root / "sub" / "f30k_test.json", VAL)
    splits = load(root=str(root), image_root=str(images),
                  files={"test": "sub/f30k_test.json", "train": "train.json"}, splits=["test"])
    assert list(splits) == ["test"] and splits["test"].n_captions == 4
    with pytest.raises(VsekitError, match=r"nope.json not found: expected an ALBEF JSON list"):
        load(root=str(root), image_root=str(images), files={"test": "nope.json"})
    with pytest.raises(VsekitError, match=r"split 'test' not found in .*ALBEF"):
        load(root=str(root), image_root=str(images), splits=["test"])


@pytest.mark.parametrize("records, expected", [
    ([{"caption": "x"}], r"train.json record 0 has no 'image' key"),
    ([{"image": "imgs/x.jpg", "caption": "x"}, {"image": "imgs/y.jpg"}],
     r"train.json record 1 has no 'caption' key"),
    ([{"image": "imgs/x.jpg", "caption": ""}], r"record 0 caption 0 is empty or not text"),
    ([{"image": "imgs/x.jpg", "caption": ["a", 5]}], r"record 0 caption 1 is empty or not text"),
    ([{"image": "imgs/x.jpg", "caption": 7}], r"record 0 has no captions"),
    ([{"image": 3, "caption": "a"}], r"record 0: 'image' must be a non-empty file path"),
    ([{"image": "imgs/x.jpg", "caption": "a", "image_id": 1},
      {"image": "imgs/y.jpg", "caption": "b", "image_id": 1}],
     r"image id '1' points to imgs/x.jpg \(.*train.json record 0\) and to imgs/y.jpg"),
    ([], r"train.json must hold a non-empty list"),
    ({"x": 1}, r"train.json must hold a non-empty list"),
    ([{"image": "imgs/x.jpg", "caption": "a"}, {"image": "imgs/gone.jpg", "caption": "b"}],
     r"1 of 2 image files listed in .*train.json are missing \(first: .*gone.jpg\)"),
])
def test_albef_errors(tmp_path, records, expected):
    root, images = write_albef(tmp_path)
    write_json(root / "train.json", records)
    with pytest.raises(VsekitError, match=expected):
        load(root=str(root), image_root=str(images))


def test_image_root_must_exist(tmp_path):
    root, _ = write_albef(tmp_path)
    with pytest.raises(VsekitError, match=r"image folder '.*nowhere' not found; set "
                                          r"data.image_root"):
        load(root=str(root), image_root=str(tmp_path / "nowhere"))


@pytest.mark.parametrize("params, expected", [
    ({}, r"data.root is required"),
    ({"root": "x", "style": "karpathy", "files": {"train": "t.json"}},
     r"data.files is for style albef"),
    ({"root": "x", "style": "albef", "file": "d.json"}, r"data.file is for style karpathy"),
    ({"root": "x", "files": {"train": ""}}, r"data.files must map split names to JSON files"),
    ({"root": "x", "style": "coco"}, r"data.style: 'coco' is not one of"),
])
def test_param_validation(params, expected):
    with pytest.raises(VsekitError, match=expected):
        DATA_FORMATS.parse({"format": "karpathy", **params}, "data")
