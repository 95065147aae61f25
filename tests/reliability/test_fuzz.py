"""Fuzzing the config parser and the dataset loaders with hypothesis.

The property everywhere: an input is either accepted, and then what comes out is well formed,
or refused with a one-line :class:`VsekitError`; never another exception. Inputs start from
valid ones and are bent (keys dropped or mistyped, values of the wrong type or range, files
cut short, bytes that are not UTF-8), so most examples get past the first check.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tests.reliability.helpers import DEMO, write_png
from vsekit.config import Config, apply_overrides, config_from_dict, load_config
from vsekit.data import load_splits
from vsekit.errors import VsekitError
from vsekit.train.schedule import lr_factor

#: Examples per fuzz test (default 40); VSEKIT_FUZZ_EXAMPLES=2000 for a long hunt.
FUZZ = settings(max_examples=int(os.environ.get("VSEKIT_FUZZ_EXAMPLES", "40")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

# ---- values a YAML file or a --set can hold ---------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-2**70, max_value=2**70),
    st.sampled_from([0, 1, -1, 2**31, 2**32, 2**63, 10**6]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["auto", "cpu", "off", "cosine", "step", "fne", "vsepp", "bcls", "cnn",
                     "synthetic", "precomp", "1e-3", "nan", "-inf", "true", "off", "[1, 2]"]),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)
#: Values that often fit their key, so that many examples are accepted and checked further.
plausible = st.one_of(st.integers(0, 40), st.floats(0, 2), st.booleans(), st.none(),
                      st.sampled_from(["cosine", "step", "constant", "off", "auto", "cpu",
                                       "synthetic", "vsepp", "infonce", "cnn", "bigru", [3, 5]]))
edit_values = st.one_of(plausible, plausible, plausible, values)

#: Every key path of the tiny config, plus component keys the registries know.
KEY_PATHS = [
    "seed", "run_dir", "data", "data.format", "data.seed", "data.n_train", "data.n_dev",
    "data.n_test", "data.captions_per_image", "data.image_size", "data.max_objects", "data.root",
    "model", "model.embed_dim", "model.image", "model.image.type", "model.image.width",
    "model.image.image_size", "model.text", "model.text.type", "model.text.word_dim", "loss",
    "loss.name", "loss.margin", "loss.queue_size", "loss.momentum", "loss.lam", "loss.base",
    "loss.base_params", "train", "train.epochs", "train.batch_size", "train.lr",
    "train.backbone_lr", "train.weight_decay", "train.warmup_steps", "train.schedule",
    "train.step_epochs", "train.step_gamma", "train.grad_clip", "train.amp", "train.device",
    "train.num_workers", "train.log_every", "train.eval_every", "train.max_steps",
    "train.keep_last", "train.checkpoint_every", "train.max_nonfinite_steps",
    "train.drop_last", "train.progress", "eval", "eval.batch_size", "eval.chunk_size",
    "eval.split", "unknown", "train.unknown", "loss.unknown",
]


def base_config() -> dict[str, Any]:
    raw = yaml.safe_load(DEMO.read_text())
    raw["data"].update(n_train=8, n_dev=4, n_test=4)
    return raw


def set_path(raw: dict, path: str, value: Any) -> None:
    node = raw
    parts = path.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def edits_to_dict(edits: list[tuple[str, Any]]) -> dict[str, Any]:
    raw = base_config()
    for path, value in edits:
        set_path(raw, path, value)
    return raw


def check_valid_config(config: Config) -> None:
    """What the rest of vsekit assumes of an accepted config."""
    assert config_from_dict(config.to_dict()) == config  # it round-trips through the run dir
    torch.Generator().manual_seed(config.seed * 100_003 + 7)  # the loader's seeding
    np.random.default_rng([config.seed, 3])  # the sampler's
    np.random.seed(config.seed)
    train = config.train
    for step in (0, 1, train.warmup_steps, 10 * train.epochs):
        factor = lr_factor(train, 10, 10 * train.epochs)(step)
        assert math.isfinite(factor) and factor >= 0


@FUZZ
@given(edits=st.lists(st.tuples(st.sampled_from(KEY_PATHS), edit_values), min_size=1,
                     max_size=3))
def test_config_dict_fuzz(edits: list[tuple[str, Any]]) -> None:
    try:
        config = config_from_dict(edits_to_dict(edits))
    except VsekitError as exc:
        refused(exc)
        return
    event("accepted")
    check_valid_config(config)


set_items = st.one_of(
    st.text(max_size=30),
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEY_PATHS),
              st.one_of(st.text(max_size=12), scalars.map(str), plausible.map(json.dumps),
                        plausible.map(json.dumps), values.map(json.dumps))),
)


@FUZZ
@given(overrides=st.lists(set_items, min_size=1, max_size=4))
def test_set_overrides_fuzz(overrides: list[str]) -> None:
    try:
        config = config_from_dict(apply_overrides(base_config(), overrides))
    except VsekitError as exc:
        refused(exc)
        return
    event("accepted")
    check_valid_config(config)


yaml_texts = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(str.encode),
    st.builds(lambda edits: yaml.safe_dump(edits_to_dict(edits)).encode(),
              st.lists(st.tuples(st.sampled_from(KEY_PATHS), plausible), max_size=3)),
    st.lists(st.tuples(st.sampled_from(KEY_PATHS), edit_values), max_size=3).map(
        lambda pairs: yaml.safe_dump({k: v for k, v in pairs}, allow_unicode=True).encode()),
    st.sampled_from([b"[" * 3000, b"a: &a [*a]\n", b"{a: 1, a: 2}", b"- - - -\n", b"\t",
                     b"train: !!python/name:os.system\n", b"%YAML 9.9\n---\n"]),
)


@FUZZ
@given(data=yaml_texts)
def test_config_file_fuzz(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "c.yaml"
        path.write_bytes(data)
        try:
            config = load_config(path)
        except VsekitError as exc:
            refused(exc)
            return
    event("accepted")
    check_valid_config(config)


# ---- dataset loaders ----------------------------------------------------------------------


def refused(exc: VsekitError) -> None:
    """A refusal is one non-empty line (and is counted in the hypothesis statistics)."""
    assert "\n" not in str(exc) and str(exc)
    event("refused")


def load_or_refuse(data: dict) -> dict | None:
    """The splits, or None after checking the refusal."""
    try:
        splits = load_splits(data)
    except VsekitError as exc:
        refused(exc)
        return None
    event("accepted")
    return splits


def check_splits(splits: dict) -> None:
    for split in splits.values():
        assert split.n_images > 0 and split.n_captions > 0
        assert all(c == c.strip() and c for c in split.captions)
        assert len(set(split.image_ids)) == split.n_images
        assert split.caption_to_image.min() >= 0
        assert split.caption_to_image.max() < split.n_images
        if split.images.kind == "features":
            assert np.isfinite(np.asarray(split.images.features)).all()
            assert np.issubdtype(split.images.features.dtype, np.floating)


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


feature_arrays = st.one_of(
    hnp.arrays(st.sampled_from([np.float16, np.float32, np.float64]),
               hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=5),
               elements=st.floats(-1e4, 1e4, width=16)),
    hnp.arrays(st.sampled_from([np.float32, np.int32, np.bool_, np.complex64, np.uint8]),
               hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4)),
    hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=4),
               elements=st.floats(allow_nan=True, allow_infinity=True, width=32)),
)
npy_payloads = st.one_of(
    feature_arrays.map(npy_bytes),
    st.tuples(feature_arrays.map(npy_bytes), st.integers(1, 200)).map(lambda t: t[0][:-t[1]]),
    st.binary(max_size=64),
)
lines = st.lists(st.one_of(st.sampled_from(["a cat", "two dogs", " ", "", "x\r", "caf\u00e9"]),
                           st.text(max_size=10)), max_size=12)
text_files = st.one_of(lines.map(lambda ls: "\n".join(ls).encode()),
                       st.binary(max_size=40),
                       lines.map(lambda ls: "\n".join(ls).encode() + b"\xff\xfe"))


BAD_PRECOMP = ["nan", "inf", "truncate", "int_dtype", "rank1", "blank_caption", "bad_utf8",
               "drop_caption", "dup_id", "drop_id", "garbage_ims"]
ODD_PRECOMP = ["bom", "crlf", "no_final_newline", "padded_captions"]  # valid, read exactly


@st.composite
def precomp_cases(draw: st.DrawFn) -> dict[str, Any]:
    """A valid precomp split (n images, k captions each, rows repeated ``stride`` times),
    then at most one mutation that makes it invalid and some that keep it valid."""
    n, k, stride, dim = (draw(st.integers(1, 4)), draw(st.integers(1, 3)),
                         draw(st.integers(1, 2)), draw(st.integers(1, 5)))
    images = draw(hnp.arrays(st.sampled_from([np.float16, np.float32, np.float64]), (n, dim),
                             elements=st.floats(-100, 100, width=16)))
    words = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), min_size=1,
                    max_size=8).filter(lambda t: t.strip() == t and t != "")
    captions = draw(st.lists(words, min_size=n * k, max_size=n * k))
    ids = draw(st.none() | st.just([f"img{i}" for i in range(n)]))
    bad = draw(st.none() | st.sampled_from(BAD_PRECOMP).filter(
        lambda m: (m != "dup_id" or (ids is not None and n >= 2))
        and (m != "drop_id" or ids is not None)))
    return {"n": n, "k": k, "stride": stride, "images": images, "captions": captions,
            "ids": ids, "bad": bad, "odd": draw(st.sets(st.sampled_from(ODD_PRECOMP))),
            "explicit_k": bad == "drop_caption" or draw(st.booleans()),
            "cell": draw(st.tuples(st.integers(0, n - 1), st.integers(0, dim - 1))),
            "cut": draw(st.integers(1, 200))}


def write_precomp_case(root: Path, case: dict[str, Any]) -> None:
    rows = np.repeat(case["images"], case["stride"], axis=0)
    captions = list(case["captions"])
    ids = None if case["ids"] is None else [i for i in case["ids"] for _ in range(case["stride"])]
    bad, (r, c) = case["bad"], case["cell"]
    if bad in ("nan", "inf"):
        rows[r * case["stride"], c] = np.nan if bad == "nan" else -np.inf
    if bad == "int_dtype":
        rows = rows.astype(np.int32)
    if bad == "rank1":
        rows = rows.ravel()
    data = npy_bytes(rows)
    if bad == "truncate":
        data = data[:-min(case["cut"], len(data) - 1)]
    if bad == "garbage_ims":
        data = b"not numpy " + data
    if bad == "blank_caption":
        captions[r] = " "
    if bad == "drop_caption":
        captions.pop()
    if bad == "dup_id":  # image 1 gets image 0's id
        ids[case["stride"]:2 * case["stride"]] = [ids[0]] * case["stride"]
    if bad == "drop_id":
        ids.pop()
    odd = case["odd"]
    if "padded_captions" in odd:
        captions = [f"  {t}\t" for t in captions]
    newline = "\r\n" if "crlf" in odd else "\n"
    text = newline.join(captions) + ("" if "no_final_newline" in odd else newline)
    encoded = ("\ufeff" if "bom" in odd else "").encode() + text.encode()
    if bad == "bad_utf8":
        encoded = encoded[:1] + b"\xff" + encoded[1:]
    (root / "train_ims.npy").write_bytes(data)
    (root / "train_caps.txt").write_bytes(encoded)
    if ids is not None:
        (root / "train_ids.txt").write_text("".join(f"{i}\n" for i in ids))


@FUZZ
@given(case=precomp_cases())
def test_precomp_loader_fuzz(case: dict[str, Any]) -> None:
    """Valid inputs (with valid oddities) load exactly; each invalid mutation is refused."""
    with tempfile.TemporaryDirectory() as folder:
        write_precomp_case(Path(folder), case)
        splits = load_or_refuse({"format": "precomp", "root": folder,
                                 "image_stride": case["stride"],
                                 "captions_per_image": case["k"] if case["explicit_k"] else None})
        if case["bad"] is not None:
            assert splits is None, case["bad"]
            return
        assert splits is not None
        check_splits(splits)
        split = splits["train"]
        assert split.captions == case["captions"]
        np.testing.assert_array_equal(np.asarray(split.images.features), case["images"])
        assert split.caption_to_image.tolist() == [j // case["k"]
                                                   for j in range(len(case["captions"]))]
        if case["ids"] is not None:
            assert split.image_ids == case["ids"]


IMAGE_NAMES = ["p0.png", "p1.png", "p2.png", "a b.png", "p,3.png", "missing.png"]
BAD_CSV = ["no_caption_column", "ragged_row", "unclosed_quote", "empty_caption", "empty_image",
           "unknown_image", "junk_image", "bad_utf8", "too_few_images"]


@st.composite
def csv_cases(draw: st.DrawFn) -> dict[str, Any]:
    """A valid captions.txt over 3-5 images (captions with commas and quotes, CSV-quoted),
    seeded dev/test sizes leaving a train split, then at most one invalid mutation."""
    names = draw(st.lists(st.sampled_from(IMAGE_NAMES[:-1]), min_size=3, max_size=5,
                          unique=True))
    rows = [(name, text) for name in names for text in draw(st.lists(st.sampled_from(
        ["a dog", "a dog, running", 'a "quoted" cat', " padded ", "caf\u00e9"]), min_size=1,
        max_size=2))]
    dev, test = draw(st.integers(0, 1)), draw(st.integers(0, 1))
    return {"rows": draw(st.permutations(rows)), "names": names, "sizes": (dev, test),
            "bad": draw(st.none() | st.sampled_from(BAD_CSV)),
            "index": draw(st.integers(0, len(rows) - 1))}


@FUZZ
@given(case=csv_cases())
def test_flickr8k_csv_loader_fuzz(case: dict[str, Any]) -> None:
    """Valid tables load with every caption, in order; each mutation is refused."""
    rows, bad, i = [list(row) for row in case["rows"]], case["bad"], case["index"]
    header = ["image", "text" if bad == "no_caption_column" else "caption"]
    if bad == "empty_caption":
        rows[i][1] = "  "
    if bad == "empty_image":
        rows[i][0] = ""
    if bad == "unknown_image":
        rows[i][0] = "missing.png"
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([header, *rows])
    text = buffer.getvalue()
    if bad == "ragged_row":
        text += f"{rows[i][0]},one,two\n"
    if bad == "unclosed_quote":
        text += f'{rows[i][0]},"never closed\n'
    data = text.encode() + (b"p0.png,caf\xe9\n" if bad == "bad_utf8" else b"")
    dev, test = (5, 5) if bad == "too_few_images" else case["sizes"]
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "captions.txt").write_bytes(data)
        for j, name in enumerate(case["names"]):
            write_png(root / "Images" / name, 40 * j)
        if bad == "junk_image":
            (root / "Images" / rows[i][0]).write_bytes(b"GIF8 not really")
        splits = load_or_refuse({"format": "flickr8k_csv", "root": folder, "dev_size": dev,
                                 "test_size": test})
    if bad is not None:
        assert splits is None, bad
        return
    assert splits is not None
    check_splits(splits)
    loaded = sorted((split.image_ids[img], cap) for split in splits.values()
                    for cap, img in zip(split.captions, split.caption_to_image, strict=True))
    assert loaded == sorted((name, text.strip()) for name, text in rows)


BAD_KARPATHY = ["no_sentences", "blank_caption", "shared_id", "two_splits", "junk_image",
                "missing_image", "truncated_json", "record_not_object", "caption_not_text"]


@st.composite
def karpathy_cases(draw: st.DrawFn) -> dict[str, Any]:
    """A valid Karpathy file over distinct images, then at most one invalid mutation."""
    names = draw(st.lists(st.sampled_from(IMAGE_NAMES[:-1]), min_size=1, max_size=5,
                          unique=True))
    records = [{"filename": name,
                "split": draw(st.sampled_from(["train", "val", "test", "restval"])),
                "sentences": [{"raw": text, "tokens": []} for text in draw(st.lists(
                    st.sampled_from(["a dog", " two cats ", "caf\u00e9", "x"]), min_size=1,
                    max_size=3))],
                "cocoid": 100 + i} for i, name in enumerate(names)]
    bad = draw(st.none() | st.sampled_from(BAD_KARPATHY).filter(
        lambda m: m != "shared_id" or len(records) >= 2))
    return {"records": records, "bad": bad, "index": draw(st.integers(0, len(records) - 1)),
            "cut": draw(st.integers(1, 20))}


@FUZZ
@given(case=karpathy_cases())
def test_karpathy_loader_fuzz(case: dict[str, Any]) -> None:
    """Valid files load exactly (val → dev, restval → train); each mutation is refused."""
    records, bad, i = case["records"], case["bad"], case["index"]
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for j, record in enumerate(records):
            write_png(root / record["filename"], 40 * j)
        data: list[Any] = [dict(record) for record in records]
        if bad == "no_sentences":
            del data[i]["sentences"]
        if bad == "blank_caption":
            data[i]["sentences"] = [{"raw": "  "}]
        if bad == "caption_not_text":
            data[i]["sentences"] = [{"raw": 7}]
        if bad == "shared_id":
            data[1]["cocoid"] = data[0]["cocoid"]
        if bad == "two_splits":
            other = "test" if data[i]["split"] != "test" else "train"
            data.append(dict(data[i], split=other))
        if bad == "junk_image":
            (root / records[i]["filename"]).write_bytes(b"<html>gone</html>")
        if bad == "missing_image":
            (root / records[i]["filename"]).unlink()
        if bad == "record_not_object":
            data[i] = records[i]["filename"]
        text = json.dumps({"images": data})
        if bad == "truncated_json":
            text = text[:-case["cut"]]
        (root / "dataset_fuzz.json").write_text(text, encoding="utf-8")
        splits = load_or_refuse({"format": "karpathy", "root": folder})
    if bad is not None:
        assert splits is None, bad
        return
    assert splits is not None
    check_splits(splits)
    expected: dict[str, list[str]] = {}
    for record in records:
        split = {"val": "dev", "restval": "train"}.get(record["split"], record["split"])
        expected.setdefault(split, []).append(str(record["cocoid"]))
    assert {name: split.image_ids for name, split in splits.items()} == expected
    for split in splits.values():
        for caption, image in zip(split.captions, split.caption_to_image, strict=True):
            record = next(r for r in records if str(r["cocoid"]) == split.image_ids[image])
            assert caption in [s["raw"].strip() for s in record["sentences"]]


BAD_ALBEF = ["missing_caption", "missing_image", "null_caption", "not_a_list", "empty_list",
             "id_two_files", "id_two_splits"]


@st.composite
def albef_cases(draw: st.DrawFn) -> dict[str, Any]:
    """Valid ALBEF train/val/test files over disjoint images (several records may share an
    image), then at most one invalid mutation."""
    names = draw(st.lists(st.sampled_from(IMAGE_NAMES[:-1]), min_size=1, max_size=5,
                          unique=True))
    owner = {name: draw(st.sampled_from(["train.json", "val.json", "test.json"]))
             for name in names}
    records: dict[str, list[dict]] = {}
    for name in names:
        for caption in draw(st.lists(st.one_of(st.sampled_from(["a dog", " x "]), st.lists(
                st.sampled_from(["y", "two cats"]), min_size=1, max_size=2)), min_size=1,
                max_size=2)):
            records.setdefault(owner[name], []).append(
                {"image": name, "caption": caption, "image_id": f"id-{name}"})
    bad = draw(st.none() | st.sampled_from(BAD_ALBEF).filter(
        lambda m: m not in ("id_two_files", "id_two_splits") or len(names) >= 2))
    return {"records": records, "bad": bad, "names": names}


@FUZZ
@given(case=albef_cases())
def test_albef_loader_fuzz(case: dict[str, Any]) -> None:
    """Valid files load (records of one image merged, val → dev); mutations are refused."""
    records = {file: [dict(r) for r in rs] for file, rs in case["records"].items()}
    bad, names = case["bad"], case["names"]
    first_file = next(iter(records))
    first = records[first_file][0]
    if bad == "missing_caption":
        del first["caption"]
    if bad == "missing_image":
        del first["image"]
    if bad == "null_caption":
        first["caption"] = ["fine", None]
    if bad == "not_a_list":
        records[first_file] = {"records": records[first_file]}
    if bad == "empty_list":
        records[first_file] = []
    if bad in ("id_two_files", "id_two_splits"):
        other = next(n for n in names if n != first["image"])
        target = first_file if bad == "id_two_files" else next(
            f for f in ("train.json", "val.json", "test.json") if f != first_file)
        records.setdefault(target, []).append(
            {"image": other if bad == "id_two_files" else first["image"], "caption": "z",
             "image_id": first["image_id"]})
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for file, content in records.items():
            (root / file).write_text(json.dumps(content), encoding="utf-8")
        for j, name in enumerate(names):
            write_png(root / name, 40 * j)
        splits = load_or_refuse({"format": "karpathy", "root": folder, "style": "albef"})
    if bad is not None:
        assert splits is None, bad
        return
    assert splits is not None
    check_splits(splits)
    for file, rs in records.items():
        split = splits[{"val.json": "dev"}.get(file, file.removesuffix(".json"))]
        assert split.image_ids == list(dict.fromkeys(r["image_id"] for r in rs))
        texts = [t for r in rs for t in ([r["caption"]] if isinstance(r["caption"], str)
                                         else r["caption"])]
        assert sorted(split.captions) == sorted(t.strip() for t in texts)


BAD_PACK = ["duplicate_name", "blank_name", "row_out_of_range", "row_not_integer",
            "unknown_caption_image", "missing_caption_column", "feature_rows", "feature_nan",
            "feature_text"]


@st.composite
def pack_cases(draw: st.DrawFn) -> dict[str, Any]:
    """A valid miniature pack (n images, k captions each, disjoint splits, float features),
    then at most one invalid mutation."""
    n, k, dim = draw(st.integers(3, 5)), draw(st.integers(1, 2)), draw(st.integers(1, 4))
    order = draw(st.permutations(range(n)))
    cut = draw(st.integers(1, n - 1))
    splits = {"train": sorted(order[:cut]), "test": sorted(order[cut:])}
    features = draw(hnp.arrays(st.sampled_from([np.float16, np.float32]), (n, dim),
                               elements=st.floats(-10, 10, width=16)))
    return {"n": n, "k": k, "splits": splits, "features": features,
            "bad": draw(st.none() | st.sampled_from(BAD_PACK))}


@FUZZ
@given(case=pack_cases())
def test_flickr8k_pack_loader_fuzz(case: dict[str, Any]) -> None:
    """Valid packs load each split's rows exactly; each mutation is refused."""
    n, k, bad = case["n"], case["k"], case["bad"]
    names = [f"f{i}.jpg" for i in range(n)]
    captions = [(names[i], f"pack {i} {c}") for i in range(n) for c in range(k)]
    splits: dict[str, Any] = {name: list(rows) for name, rows in case["splits"].items()}
    features = case["features"].copy()
    if bad == "duplicate_name":
        names[1] = names[0]
    if bad == "blank_name":
        names[1] = " "
    if bad == "row_out_of_range":
        splits["test"].append(n)
    if bad == "row_not_integer":
        splits["train"][0] = str(splits["train"][0])
    if bad == "unknown_caption_image":
        captions.append(("f99.jpg", "nobody"))
    if bad == "feature_rows":
        features = features[:-1]
    if bad == "feature_nan":
        features[n - 1, 0] = np.nan
    header = "image\tcaption_index\t" + ("text" if bad == "missing_caption_column" else "caption")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "features").mkdir()
        (root / "images.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
        rows = [header, *(f"{image}\t{i}\t{text}" for i, (image, text) in enumerate(captions))]
        (root / "captions.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
        (root / "splits.json").write_text(json.dumps(splits), encoding="utf-8")
        (root / "features" / "image_effl0_1280.f16.npy").write_bytes(
            b"1 2 3\n" if bad == "feature_text" else npy_bytes(features))
        loaded = load_or_refuse({"format": "flickr8k", "root": folder,
                                 "caption_features": False})
    if bad is not None:
        assert loaded is None, bad
        return
    assert loaded is not None
    check_splits(loaded)
    for name, rows in case["splits"].items():
        assert loaded[name].image_ids == [names[r] for r in rows]
        np.testing.assert_array_equal(loaded[name].images.features,
                                      case["features"][rows].astype(np.float32))
        assert loaded[name].n_captions == k * len(rows)


@pytest.mark.parametrize("seed", [0, 2**32 - 1])
def test_extreme_valid_seeds_work_everywhere(seed: int) -> None:
    """The seed range the config accepts is the range every consumer takes."""
    raw = base_config()
    raw["seed"] = seed
    check_valid_config(config_from_dict(raw))
