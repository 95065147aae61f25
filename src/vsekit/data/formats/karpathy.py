"""Caption JSON in the Karpathy or ALBEF style, beside a folder of images (format ``karpathy``).

(a) Karpathy ``dataset_coco.json`` / ``dataset_flickr30k.json``: ``{"images": [{"filename",
    "filepath" (optional), "split": train|val|test|restval, "sentences": [{"raw": text}],
    "cocoid" or "imgid"}]}``. ``val`` becomes ``dev``; ``restval`` joins ``train`` unless
    ``restval_to_train`` is false. The image id is ``cocoid``, else ``imgid``, else the path.
(b) ALBEF: one JSON list per split of ``{"image": relative path, "caption": text or
    [texts], "image_id" (optional)}``; records of the same image id (the path when there is
    no id) are merged into one image with all their captions. Files are ``files`` (split →
    path) or, by default, ``train.json``, ``dev.json`` or ``val.json`` (→ dev), ``test.json``.

Image paths are relative to ``image_root``; every image of a loaded split must exist and be an
image file (its first bytes are checked, unless ``check_images`` is false), and an image id
may name one file and appear in one split only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from vsekit.data.dataset import ImageStore, RetrievalSplit
from vsekit.data.formats import DATA_FORMATS
from vsekit.data.formats._io import (
    check_split_names,
    order_splits,
    read_json,
    require_file,
    require_images_exist,
    require_root,
    select_splits,
)
from vsekit.errors import VsekitError, require

ALBEF_FILES = (("train", "train.json"), ("dev", "dev.json"), ("dev", "val.json"),
               ("test", "test.json"))
KARPATHY_SPLITS = {"val": "dev"}


@dataclass
class KarpathyParams:
    """Params of the ``karpathy`` format.

    Attributes:
        root: folder holding the JSON file(s).
        image_root: folder the image paths are relative to (default: ``root``).
        style: "karpathy", "albef", or "auto" (``files`` set → albef; ``file`` set or a
            ``dataset_*.json`` in root → karpathy; else ALBEF default file names).
        file: the Karpathy JSON inside ``root`` (default: the one ``dataset_*.json``).
        files: ALBEF split name → JSON path relative to ``root`` (names used as given).
        restval_to_train: put Karpathy's ``restval`` images into ``train``.
        splits: splits to load; None loads every split found.
        check_images: read the first bytes of every image file, so a file that is not an
            image (an HTML error page, an empty download) is reported before training.
    """

    root: str | None = None
    image_root: str | None = None
    style: Literal["auto", "karpathy", "albef"] = "auto"
    file: str | None = None
    files: dict | None = None
    restval_to_train: bool = True
    splits: list[str] | None = None
    check_images: bool = True

    def validate(self, where: str) -> None:
        require(self.root is not None, f"{where}.root is required: set it to the folder "
                                       "holding the caption JSON")
        check_split_names(self.splits, where)
        require(not (self.style == "karpathy" and self.files is not None),
                f"{where}.files is for style albef; use {where}.file for a Karpathy JSON")
        require(not (self.style == "albef" and self.file is not None),
                f"{where}.file is for style karpathy; use {where}.files for ALBEF JSON files")
        if self.files is not None:
            require(len(self.files) > 0 and all(isinstance(f, str) and f
                                                for f in self.files.values()),
                    f"{where}.files must map split names to JSON files, e.g. "
                    "{train: train.json, test: test.json}")


@dataclass
class Record:
    """One image entry of a JSON file (several ALBEF entries may share an image)."""

    split: str
    image_id: str
    path: Path
    captions: list[str]
    file: Path
    index: int

    @property
    def where(self) -> str:
        return f"{self.file} record {self.index}"


def get_key(item: Any, key: str, file: Path, index: int) -> Any:
    """``item[key]``; a non-object record or a missing key is an error naming both."""
    require(isinstance(item, dict), f"{file} record {index} is not a JSON object; each record "
                                    "must be {...} with the documented keys")
    if key not in item:
        raise VsekitError(f"{file} record {index} has no {key!r} key; add it or fix the style")
    return item[key]


def relative_path(value: Any, key: str, file: Path, index: int) -> Path:
    """A non-empty string field as a path."""
    require(isinstance(value, str) and value.strip() != "",
            f"{file} record {index}: {key!r} must be a non-empty file path, got {value!r}")
    return Path(value.strip())


def clean_captions(texts: Any, file: Path, index: int) -> list[str]:
    """Stripped caption strings; an empty list, a non-string or a blank one is an error."""
    require(isinstance(texts, list) and len(texts) > 0,
            f"{file} record {index} has no captions; give it at least one")
    captions = []
    for j, text in enumerate(texts):
        require(isinstance(text, str) and text.strip() != "",
                f"{file} record {index} caption {j} is empty or not text; write the caption "
                "or remove it")
        captions.append(text.strip())
    return captions


def karpathy_records(data: Any, file: Path, restval_to_train: bool) -> list[Record]:
    """Records of a Karpathy ``{"images": [...]}`` file, split names mapped (val → dev)."""
    require(not isinstance(data, list), f"{file} holds a list of records (ALBEF style); set "
                                        "data.style: albef and data.files")
    require(isinstance(data, dict) and isinstance(data.get("images"), list),
            f"{file} has no 'images' list; expected Karpathy's dataset_*.json layout")
    records = []
    for i, item in enumerate(data["images"]):
        name = relative_path(get_key(item, "filename", file, i), "filename", file, i)
        path = Path(str(item.get("filepath") or "")) / name
        split = str(get_key(item, "split", file, i))
        split = "train" if split == "restval" and restval_to_train else KARPATHY_SPLITS.get(
            split, split)
        sentences = get_key(item, "sentences", file, i)
        require(isinstance(sentences, list) and all(isinstance(s, dict) and "raw" in s
                                                    for s in sentences),
                f"{file} record {i}: 'sentences' must be a list of {{\"raw\": text}} objects")
        image_id = item.get("cocoid", item.get("imgid"))
        records.append(Record(split, str(path) if image_id is None else str(image_id), path,
                              clean_captions([s["raw"] for s in sentences], file, i), file, i))
    return check_image_ids(records)


def albef_records(data: Any, file: Path, split: str) -> list[Record]:
    """Records of one ALBEF split file (a list of {image, caption, image_id?})."""
    require(not (isinstance(data, dict) and "images" in data),
            f"{file} holds Karpathy's {{\"images\": [...]}} layout; set data.style: karpathy")
    require(isinstance(data, list) and len(data) > 0,
            f"{file} must hold a non-empty list of {{\"image\", \"caption\"}} records "
            "(ALBEF style)")
    records = []
    for i, item in enumerate(data):
        path = relative_path(get_key(item, "image", file, i), "image", file, i)
        caption = get_key(item, "caption", file, i)
        captions = clean_captions([caption] if isinstance(caption, str) else caption, file, i)
        image_id = item.get("image_id")
        records.append(Record(split, str(path) if image_id is None else str(image_id), path,
                              captions, file, i))
    return check_image_ids(records)


def check_image_ids(records: list[Record]) -> list[Record]:
    """``records`` unchanged; within one file an image id naming two files is an error."""
    first_of: dict[str, Record] = {}
    for record in records:
        first = first_of.setdefault(record.image_id, record)
        if first.path != record.path:
            raise VsekitError(f"image id {record.image_id!r} points to {first.path} "
                              f"({first.where}) and to {record.path} ({record.where}); give "
                              "each image file its own id")
    return records


def check_disjoint_splits(by_split: dict[str, list[Record]]) -> None:
    """An image id in two splits is an error naming both records (a test image seen in
    training inflates every score)."""
    owner: dict[str, tuple[str, Record]] = {}
    for split, records in by_split.items():
        for record in records:
            first_split, first = owner.setdefault(record.image_id, (split, record))
            if first_split != split:
                raise VsekitError(f"image id {record.image_id!r} is in split {first_split!r} "
                                  f"({first.where}) and in split {split!r} ({record.where}); "
                                  "put each image in one split")


def build_split(name: str, records: list[Record], image_root: Path,
                check_images: bool = True) -> RetrievalSplit:
    """Merge records by image id (first-appearance order) into a split of image files."""
    position: dict[str, int] = {}
    files: list[Path] = []
    captions: list[str] = []
    caption_to_image: list[int] = []
    for record in records:
        if record.image_id not in position:
            position[record.image_id] = len(files)
            files.append(image_root / record.path)
        captions.extend(record.captions)
        caption_to_image.extend([position[record.image_id]] * len(record.captions))
    require_images_exist(files, str(records[0].file), check_images)
    return RetrievalSplit(name=name, images=ImageStore("files", files=files), captions=captions,
                          caption_to_image=caption_to_image, image_ids=list(position),
                          image_root=image_root)


def albef_files(root: Path, files: dict | None) -> dict[str, Path]:
    """ALBEF split → JSON path: ``files`` as given, else the default names present in root."""
    if files is not None:
        return {str(split): require_file(root / path, "an ALBEF JSON list of {image, caption} "
                                                      "records") for split, path in files.items()}
    found: dict[str, Path] = {}
    for split, name in ALBEF_FILES:
        if split not in found and (root / name).is_file():
            found[split] = root / name
    return found


def karpathy_file(root: Path, file: str | None) -> Path:
    """The Karpathy JSON: ``root/file``, else the single ``dataset_*.json`` in root."""
    if file is not None:
        return require_file(root / file, "Karpathy's dataset JSON {\"images\": [...]}")
    candidates = sorted(root.glob("dataset_*.json"))
    require(len(candidates) == 1, f"expected one dataset_*.json in {root}, found "
                                  f"{[c.name for c in candidates]}; name it with data.file")
    return candidates[0]


def resolve_style(params: KarpathyParams, root: Path) -> str:
    """The JSON style to read: ``params.style``, or detected from the params and file names."""
    if params.style != "auto":
        return params.style
    if params.files is not None:
        return "albef"
    if params.file is not None or any(root.glob("dataset_*.json")):
        return "karpathy"
    if albef_files(root, None):
        return "albef"
    raise VsekitError(f"no caption JSON found in {root}: expected Karpathy's dataset_*.json or "
                      "ALBEF train.json / val.json / test.json; name them with data.file or "
                      "data.files")


def split_records(params: KarpathyParams, root: Path) -> dict[str, list[Record]]:
    """Records of each selected split (only the selected ALBEF files are read)."""
    if resolve_style(params, root) == "karpathy":
        file = karpathy_file(root, params.file)
        by_split: dict[str, list[Record]] = {}
        for record in karpathy_records(read_json(file), file, params.restval_to_train):
            by_split.setdefault(record.split, []).append(record)
        names = select_splits(order_splits(list(by_split)), params.splits, str(file))
        return {name: by_split[name] for name in names}
    files = albef_files(root, params.files)
    names = select_splits(order_splits(list(files)), params.splits,
                          f"{root} (ALBEF train.json / val.json / test.json or data.files)")
    return {name: albef_records(read_json(files[name]), files[name], name) for name in names}


@DATA_FORMATS.register("karpathy", KarpathyParams)
def load_karpathy(params: KarpathyParams) -> dict[str, RetrievalSplit]:
    """Karpathy (dataset_*.json) or ALBEF (one JSON list per split) captions + image files."""
    root = require_root(params.root, "the folder holding the caption JSON")
    image_root = root if params.image_root is None else Path(params.image_root).expanduser()
    require(image_root.is_dir(), f"image folder {str(image_root)!r} not found; set "
                                 "data.image_root to the folder the JSON image paths start from")
    by_split = split_records(params, root)
    check_disjoint_splits(by_split)
    return {name: build_split(name, records, image_root, params.check_images)
            for name, records in by_split.items()}
