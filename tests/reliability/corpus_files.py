"""The hostile-input corpus, generated at test time (:func:`write_corpus`) rather than
checked in.

Every file is one bad input. Its name is ``CASE__TARGET``: the test copies it to TARGET
(``__`` stands for ``/``) inside a valid miniature dataset of its format folder (built by
``tests/reliability/helpers.py``: 4 images × 2 captions per split) and expects vsekit to
refuse it with one line. ``config/`` holds whole config files. Deterministic output.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def features(rows: int = 4, dim: int = 8) -> np.ndarray:
    return np.linspace(-1, 1, rows * dim, dtype=np.float32).reshape(rows, dim)


def with_value(value: float) -> np.ndarray:
    array = features()
    array[2, 5] = value
    return array


def precomp() -> dict[str, bytes]:
    good = npy(features())
    npz = io.BytesIO()
    np.savez(npz, ims=features())
    return {
        "truncated__train_ims.npy": good[: len(good) - 40],
        "header_only__train_ims.npy": good[:60],
        "empty__train_ims.npy": b"",
        "text_file__train_ims.npy": b"0.1 0.2 0.3\n0.4 0.5 0.6\n",
        "npz_archive__train_ims.npy": npz.getvalue(),
        "pickled_objects__train_ims.npy": npy(np.array([{"a": 1}] * 4, dtype=object)),
        "int32__train_ims.npy": npy(np.arange(32, dtype=np.int32).reshape(4, 8)),
        "complex__train_ims.npy": npy(features().astype(np.complex64)),
        "bool__train_ims.npy": npy(features() > 0),
        "rank1__train_ims.npy": npy(features().ravel()),
        "rank4__train_ims.npy": npy(features().reshape(4, 2, 2, 2)),
        "scalar__train_ims.npy": npy(np.float32(1.0)),
        "zero_rows__train_ims.npy": npy(np.zeros((0, 8), np.float32)),
        "nan__train_ims.npy": npy(with_value(np.nan)),
        "posinf__train_ims.npy": npy(with_value(np.inf)),
        "neginf__train_ims.npy": npy(with_value(-np.inf)),
        "blank_line__train_caps.txt": b"c0\nc1\n\nc3\nc4\nc5\nc6\nc7\n",
        "whitespace_line__train_caps.txt": b"c0\nc1\nc2\n \t \nc4\nc5\nc6\nc7\n",
        "invalid_utf8__train_caps.txt": b"c0\nc1 caf\xe9\nc2\nc3\nc4\nc5\nc6\nc7\n",
        "empty__train_caps.txt": b"",
        "seven_captions__train_caps.txt": b"c0\nc1\nc2\nc3\nc4\nc5\nc6\n",
        "duplicate_ids__train_ids.txt": b"img0\nimg1\nimg0\nimg3\n",
        "three_ids__train_ids.txt": b"img0\nimg1\nimg2\n",
        "blank_id__train_ids.txt": b"img0\n\nimg2\nimg3\n",
    }


CSV_HEADER = "image,caption\n"
CSV_ROWS = "".join(f"p{i}.png,a picture {i} {c}\n" for i in range(4) for c in range(2))


def flickr8k_csv() -> dict[str, bytes]:
    return {
        "missing_caption_column__captions.txt": ("image,text\n" + CSV_ROWS).encode(),
        "missing_image_column__captions.txt": ("picture,caption\n" + CSV_ROWS).encode(),
        "no_header__captions.txt": b"",
        "ragged_row__captions.txt": (CSV_HEADER + CSV_ROWS + "p1.png,extra,field\n").encode(),
        "unclosed_quote__captions.txt": (CSV_HEADER + CSV_ROWS + 'p1.png,"never closed\n').encode(),
        "empty_caption__captions.txt": (CSV_HEADER + "p0.png,  \n" + CSV_ROWS).encode(),
        "empty_image__captions.txt": (CSV_HEADER + CSV_ROWS + ",a caption\n").encode(),
        "invalid_utf8__captions.txt": (CSV_HEADER + CSV_ROWS).encode() + b"p2.png,caf\xe9\n",
        "unknown_image__captions.txt": (CSV_HEADER + CSV_ROWS + "p9.png,no file\n").encode(),
        "html_page__Images__p1.png": b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n",
        "empty_file__Images__p2.png": b"",
        "text_file__Images__p3.png": b"this is not a picture\n",
    }


def karpathy_entry(i: int, split: str) -> dict:
    return {"filename": f"k{i}.png", "split": split, "cocoid": 100 + i,
            "sentences": [{"raw": f"karpathy image {i} caption {c}"} for c in range(2)]}


def karpathy_file(entries: list) -> bytes:
    return json.dumps({"images": entries}, indent=1).encode()


def karpathy() -> dict[str, bytes]:
    splits = ["train"] * 4 + ["val"] * 2 + ["test"] * 2
    good = [karpathy_entry(i, s) for i, s in enumerate(splits)]
    no_sentences = [dict(e) for e in good]
    del no_sentences[1]["sentences"]
    no_filename = [dict(e) for e in good]
    del no_filename[2]["filename"]
    duplicate_id = [dict(e) for e in good]
    duplicate_id[3] = dict(duplicate_id[3], cocoid=100)  # k3.png and k0.png both claim id 100
    cross_split = [dict(e) for e in good]
    cross_split[7] = dict(cross_split[0], split="test")  # k0.png in train and in test
    number_caption = [dict(e) for e in good]
    number_caption[0] = dict(number_caption[0], sentences=[{"raw": 42}])
    blank_caption = [dict(e) for e in good]
    blank_caption[0] = dict(blank_caption[0], sentences=[{"raw": "   "}])
    no_captions = [dict(e) for e in good]
    no_captions[5] = dict(no_captions[5], sentences=[])
    return {
        "missing_sentences__dataset_tiny.json": karpathy_file(no_sentences),
        "missing_filename__dataset_tiny.json": karpathy_file(no_filename),
        "no_images_list__dataset_tiny.json": json.dumps({"pictures": good}).encode(),
        "record_not_object__dataset_tiny.json": karpathy_file([*good, "k9.png"]),
        "duplicate_image_id__dataset_tiny.json": karpathy_file(duplicate_id),
        "image_in_two_splits__dataset_tiny.json": karpathy_file(cross_split),
        "caption_not_text__dataset_tiny.json": karpathy_file(number_caption),
        "blank_caption__dataset_tiny.json": karpathy_file(blank_caption),
        "no_captions__dataset_tiny.json": karpathy_file(no_captions),
        "syntax_error__dataset_tiny.json": karpathy_file(good)[:-30],
        "invalid_utf8__dataset_tiny.json": karpathy_file(good).replace(b"caption 0", b"caf\xe9", 1),
        "nested_too_deep__dataset_tiny.json": b"[" * 3000 + b"]" * 3000,
        "missing_image_file__dataset_tiny.json": karpathy_file(
            [*good, karpathy_entry(9, "train")]),
        "html_page__images__k1.png": b"<html><head><title>Error</title></head></html>\n",
    }


def albef() -> dict[str, bytes]:
    good = [{"image": f"a{i}.png", "caption": f"albef {i} {c}", "image_id": str(i)}
            for i in range(4) for c in range(2)]
    return {
        "missing_caption__train.json": json.dumps(
            [*good, {"image": "a0.png", "image_id": "0"}]).encode(),
        "missing_image__train.json": json.dumps([*good, {"caption": "lost"}]).encode(),
        "not_a_list__train.json": json.dumps({"data": good}).encode(),
        "empty_list__train.json": b"[]",
        "duplicate_image_id__train.json": json.dumps(
            [*good, {"image": "a3.png", "caption": "x", "image_id": "0"}]).encode(),
        "caption_list_with_null__train.json": json.dumps(
            [*good, {"image": "a1.png", "caption": ["ok", None], "image_id": "1"}]).encode(),
        "image_path_empty__train.json": json.dumps(
            [*good, {"image": " ", "caption": "x"}]).encode(),
    }


def flickr8k() -> dict[str, bytes]:
    return {
        "duplicate_name__images.txt": b"f0.jpg\nf1.jpg\nf0.jpg\nf3.jpg\n",
        "blank_line__images.txt": b"f0.jpg\n\nf2.jpg\nf3.jpg\n",
        "row_out_of_range__splits.json": json.dumps(
            {"train": [0, 1], "dev": [2], "test": [7]}).encode(),
        "row_not_integer__splits.json": json.dumps(
            {"train": [0, 1], "dev": ["2"], "test": [3]}).encode(),
        "not_a_mapping__splits.json": json.dumps([[0, 1], [2], [3]]).encode(),
        "missing_caption_column__captions.tsv": b"image\tcaption_index\ttext\nf0.jpg\t0\tx\n",
        "unknown_image__captions.tsv": (
            "image\tcaption_index\tcaption\n"
            + "".join(f"f{i}.jpg\t{c}\tpack {i} {c}\n" for i in range(4) for c in range(2))
            + "f8.jpg\t0\tnot listed\n").encode(),
        "text_features__features__image_effl0_1280.f16.npy": b"1 2 3\n",
    }


CONFIGS = {
    "unknown_key.yaml": "train: {epohcs: 2}\n",
    "unknown_section.yaml": "trainer: {epochs: 2}\n",
    "unknown_data_param.yaml": "data: {format: synthetic, n_trian: 10}\n",
    "unknown_loss_param.yaml": "loss: {name: vsepp, margn: 0.2}\n",
    "unknown_loss.yaml": "loss: {name: vsepp_plus}\n",
    "unknown_format.yaml": "data: {format: coco2017}\n",
    "unknown_image_encoder.yaml": "model: {image: {type: resnet152}}\n",
    "loss_not_mapping.yaml": "loss: vsepp\n",
    "section_not_mapping.yaml": "train: 5\n",
    "top_level_list.yaml": "- train\n- eval\n",
    "top_level_scalar.yaml": "just a sentence\n",
    "number_is_text.yaml": "train: {lr: fast}\n",
    "integer_is_bool.yaml": "train: {epochs: true}\n",
    "integer_is_float.yaml": "train: {epochs: 2.5}\n",
    "list_is_scalar.yaml": "train: {schedule: step, step_epochs: 5}\n",
    "string_is_list.yaml": "run_dir: [a, b]\n",
    "bad_choice.yaml": "train: {amp: maybe}\n",
    "nan_lr.yaml": "train: {lr: .nan}\n",
    "inf_lr.yaml": "train: {lr: .inf}\n",
    "negative_lr.yaml": "train: {lr: -0.001}\n",
    "negative_batch_size.yaml": "train: {batch_size: -8}\n",
    "zero_epochs.yaml": "train: {epochs: 0}\n",
    "negative_embed_dim.yaml": "model: {embed_dim: -16}\n",
    "negative_n_train.yaml": "data: {format: synthetic, n_train: -10}\n",
    "negative_queue.yaml": "loss: {name: fne, queue_size: -5}\n",
    "negative_seed.yaml": "seed: -1\n",
    "huge_seed.yaml": "seed: 100000000000000000000\n",
    "negative_csv_seed.yaml": "data: {format: flickr8k_csv, root: ., seed: -3}\n",
    "negative_dev_size.yaml": "data: {format: flickr8k_csv, root: ., dev_size: -1}\n",
    "negative_stride.yaml": "data: {format: precomp, root: ., image_stride: -5}\n",
    "momentum_over_one.yaml": "loss: {name: fne, momentum: 1.5}\n",
    "step_without_epochs.yaml": "train: {schedule: step}\n",
    "bcls_base_bcls.yaml": "loss: {name: bcls, base: bcls}\n",
    "missing_root.yaml": "data: {format: precomp}\n",
    "root_not_found.yaml": "data: {format: precomp, root: /nonexistent/vsekit-data}\n",
    "device_unknown.yaml": "train: {device: tpu}\n",
    "repeated_section.yaml": "train: {lr: 0.001}\ntrain: {epochs: 2}\n",
    "syntax_error.yaml": "train: {lr: [0.1, 0.2\n",
    "tab_indent.yaml": "train:\n\tlr: 0.1\n",
    "python_object_tag.yaml": "!!python/object/apply:os.system ['echo pwned']\n",
    "nested_too_deep.yaml": "[" * 1000 + "]" * 1000 + "\n",
}


def write_corpus(root: Path) -> Path:
    """Write every corpus file under ``root`` (``FORMAT/CASE__TARGET``); returns ``root``."""
    folders = {"precomp": precomp(), "flickr8k_csv": flickr8k_csv(), "karpathy": karpathy(),
               "albef": albef(), "flickr8k": flickr8k(),
               "config": {**CONFIGS, "invalid_utf8.yaml": b"train: {lr: 0.1}\n# caf\xe9\n"}}
    for folder, files in folders.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (root / folder / name).write_bytes(data.encode() if isinstance(data, str) else data)
    return root
