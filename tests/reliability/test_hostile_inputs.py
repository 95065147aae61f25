"""Hostile inputs through the real CLI: each gives exit code 2, one ``error:`` line naming the
problem, no traceback, and leaves every file it could have touched as it was.

Three sources: the corpus (``corpus_files.py`` writes it, one bad file swapped into a valid
miniature dataset, or a whole bad config), out-of-range ``--set`` values, and damaged run
directories, checkpoints, caches and image folders made from a real tiny run.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.reliability.corpus_files import write_corpus
from tests.reliability.helpers import (
    TEMPLATES,
    TINY_SETS,
    assert_one_line_error,
    flow,
    run_cli,
    sets,
    tree,
    write_png,
)
from vsekit.data import load_splits

# ---- the corpus (corpus_files.py): file → a fragment the one-line error must contain -------------

CORPUS_CASES = {
    "config/bad_choice.yaml": "train.amp: 'maybe' is not one of",
    "config/bcls_base_bcls.yaml": "loss.base cannot be bcls itself",
    "config/device_unknown.yaml": "train.device 'tpu' is not a torch device",
    "config/huge_seed.yaml": "seed must be an integer in 0..4294967295",
    "config/inf_lr.yaml": "train.lr: expected a finite number, got inf",
    "config/integer_is_bool.yaml": "train.epochs: expected an integer, got True",
    "config/integer_is_float.yaml": "train.epochs: expected an integer, got 2.5",
    "config/invalid_utf8.yaml": "is not UTF-8 text",
    "config/list_is_scalar.yaml": "train.step_epochs: expected a list, got 5",
    "config/loss_not_mapping.yaml": "loss: expected a mapping, got 'vsepp'",
    "config/missing_root.yaml": "data.root is required",
    "config/momentum_over_one.yaml": "loss.momentum must be in [0, 1], got 1.5",
    "config/nan_lr.yaml": "train.lr: expected a finite number, got nan",
    "config/negative_batch_size.yaml": "train.batch_size must be at least 1, got -8",
    "config/negative_csv_seed.yaml": "data.seed must be non-negative, got -3",
    "config/negative_dev_size.yaml": "data.dev_size must be non-negative, got -1",
    "config/negative_embed_dim.yaml": "model.embed_dim must be at least 1, got -16",
    "config/negative_lr.yaml": "train.lr must be positive, got -0.001",
    "config/negative_n_train.yaml": "data.n_train must be at least 1, got -10",
    "config/negative_queue.yaml": "loss.queue_size must be non-negative, got -5",
    "config/negative_seed.yaml": "seed must be an integer in 0..4294967295, got -1",
    "config/negative_stride.yaml": "data.image_stride must be at least 1, got -5",
    "config/nested_too_deep.yaml": "is not valid YAML: it is nested too deeply",
    "config/number_is_text.yaml": "train.lr: expected a number, got 'fast'",
    "config/python_object_tag.yaml": "is not valid YAML: line 1: could not determine a constructor",
    "config/repeated_section.yaml": "line 2: key 'train' appears twice",
    "config/root_not_found.yaml": "data root '/nonexistent/vsekit-data' is not a folder",
    "config/section_not_mapping.yaml": "train: expected a mapping of keys, got 5",
    "config/step_without_epochs.yaml": "train.step_epochs is empty",
    "config/string_is_list.yaml": "run_dir: expected a string, got ['a', 'b']",
    "config/syntax_error.yaml": "is not valid YAML: line 2: expected ',' or ']'",
    "config/tab_indent.yaml": "is not valid YAML: line 2: found character '\\t'",
    "config/top_level_list.yaml": "must hold a mapping at the top level",
    "config/top_level_scalar.yaml": "must hold a mapping at the top level",
    "config/unknown_data_param.yaml": "unknown key 'n_trian' (did you mean 'n_train'?)",
    "config/unknown_format.yaml": "unknown data format 'coco2017'",
    "config/unknown_image_encoder.yaml": "unknown image encoder 'resnet152'",
    "config/unknown_key.yaml": "unknown key 'epohcs' (did you mean 'epochs'?)",
    "config/unknown_loss.yaml": "unknown loss 'vsepp_plus' (did you mean 'vsepp'?)",
    "config/unknown_loss_param.yaml": "unknown key 'margn' (did you mean 'margin'?)",
    "config/unknown_section.yaml": "unknown key 'trainer' (did you mean 'train'?)",
    "config/zero_epochs.yaml": "train.epochs must be at least 1, got 0",
    "precomp/blank_id__train_ids.txt": "train_ids.txt line 2 is blank",
    "precomp/blank_line__train_caps.txt": "train_caps.txt line 3 is blank",
    "precomp/bool__train_ims.npy": "train_ims.npy holds bool values, expected floats",
    "precomp/complex__train_ims.npy": "train_ims.npy holds complex64 values, expected floats",
    "precomp/duplicate_ids__train_ids.txt": "image id 'img0' twice (lines 1 and 3)",
    "precomp/empty__train_caps.txt": "train_caps.txt has 0 captions for 4 images",
    "precomp/empty__train_ims.npy": "train_ims.npy is not a .npy file (it is empty)",
    "precomp/header_only__train_ims.npy": "train_ims.npy is not a readable .npy file (EOF",
    "precomp/int32__train_ims.npy": "train_ims.npy holds int32 values, expected floats",
    "precomp/invalid_utf8__train_caps.txt": "train_caps.txt line 2 is not valid UTF-8",
    "precomp/nan__train_ims.npy": "train_ims.npy row 2 holds NaN or Inf",
    "precomp/neginf__train_ims.npy": "train_ims.npy row 2 holds NaN or Inf",
    "precomp/npz_archive__train_ims.npy": "train_ims.npy is an .npz archive",
    "precomp/pickled_objects__train_ims.npy": "train_ims.npy is not a readable .npy file",
    "precomp/posinf__train_ims.npy": "train_ims.npy row 2 holds NaN or Inf",
    "precomp/rank1__train_ims.npy": "holds a 1-d array of shape (32,), expected 2-d or 3-d",
    "precomp/rank4__train_ims.npy": "holds a 4-d array of shape (4, 2, 2, 2)",
    "precomp/scalar__train_ims.npy": "holds a 0-d array of shape ()",
    "precomp/seven_captions__train_caps.txt": "train_caps.txt has 7 captions for 4 images",
    "precomp/text_file__train_ims.npy": "train_ims.npy is not a .npy file (it starts with",
    "precomp/three_ids__train_ids.txt": "train_ids.txt has 3 ids for 4 feature rows",
    "precomp/truncated__train_ims.npy": "train_ims.npy is not a readable .npy file",
    "precomp/whitespace_line__train_caps.txt": "train_caps.txt line 4 is blank",
    "precomp/zero_rows__train_ims.npy": "train_ims.npy has no rows",
    "flickr8k_csv/empty_caption__captions.txt": "captions.txt line 2 has an empty caption",
    "flickr8k_csv/empty_file__Images__p2.png": "p2.png (listed in",
    "flickr8k_csv/empty_image__captions.txt": "captions.txt line 10 has an empty image name",
    "flickr8k_csv/html_page__Images__p1.png": "p1.png (listed in",
    "flickr8k_csv/invalid_utf8__captions.txt": "captions.txt line 10 is not valid UTF-8",
    "flickr8k_csv/missing_caption_column__captions.txt": "captions.txt has no 'caption' column",
    "flickr8k_csv/missing_image_column__captions.txt": "captions.txt has no 'image' column",
    "flickr8k_csv/no_header__captions.txt": "captions.txt has no 'image' column",
    "flickr8k_csv/ragged_row__captions.txt": "captions.txt line 10 has 3 fields, expected 2",
    "flickr8k_csv/text_file__Images__p3.png": "p3.png (listed in",
    "flickr8k_csv/unclosed_quote__captions.txt": "captions.txt line 10 is not valid CSV",
    "flickr8k_csv/unknown_image__captions.txt": "1 of 5 image files listed in",
    "karpathy/blank_caption__dataset_tiny.json": "record 0 caption 0 is empty or not text",
    "karpathy/caption_not_text__dataset_tiny.json": "record 0 caption 0 is empty or not text",
    "karpathy/duplicate_image_id__dataset_tiny.json": "image id '100' points to k0.png",
    "karpathy/html_page__images__k1.png": "k1.png (listed in",
    "karpathy/image_in_two_splits__dataset_tiny.json": "image id '100' is in split 'train'",
    "karpathy/invalid_utf8__dataset_tiny.json": "dataset_tiny.json line 9 is not valid UTF-8",
    "karpathy/missing_filename__dataset_tiny.json": "record 2 has no 'filename' key",
    "karpathy/missing_image_file__dataset_tiny.json": "1 of 5 image files listed in",
    "karpathy/missing_sentences__dataset_tiny.json": "record 1 has no 'sentences' key",
    "karpathy/nested_too_deep__dataset_tiny.json": "dataset_tiny.json is nested too deeply",
    "karpathy/no_captions__dataset_tiny.json": "record 5 has no captions",
    "karpathy/no_images_list__dataset_tiny.json": "dataset_tiny.json has no 'images' list",
    "karpathy/record_not_object__dataset_tiny.json": "record 8 is not a JSON object",
    "karpathy/syntax_error__dataset_tiny.json": "dataset_tiny.json is not valid JSON (line",
    "albef/caption_list_with_null__train.json": "record 8 caption 1 is empty or not text",
    "albef/duplicate_image_id__train.json": "image id '0' points to a0.png",
    "albef/empty_list__train.json": "train.json must hold a non-empty list",
    "albef/image_path_empty__train.json": "record 8: 'image' must be a non-empty file path",
    "albef/missing_caption__train.json": "record 8 has no 'caption' key",
    "albef/missing_image__train.json": "record 8 has no 'image' key",
    "albef/not_a_list__train.json": "train.json must hold a non-empty list",
    "flickr8k/blank_line__images.txt": "images.txt line 2 is blank",
    "flickr8k/duplicate_name__images.txt": "image file name 'f0.jpg' twice (lines 1 and 3)",
    "flickr8k/missing_caption_column__captions.tsv": "captions.tsv has no 'caption' column",
    "flickr8k/not_a_mapping__splits.json": "splits.json must map split names",
    "flickr8k/row_not_integer__splits.json": "split 'dev' must be a list of images.txt row",
    "flickr8k/row_out_of_range__splits.json": "split 'test' must be a list of images.txt row",
    "flickr8k/text_features__features__image_effl0_1280.f16.npy": "is not a .npy file",
    "flickr8k/unknown_image__captions.tsv": "names 1 images not in images.txt (first: 'f8.jpg')",
}
NOT_AN_IMAGE = {"flickr8k_csv/empty_file__Images__p2.png": "is not an image file (it is empty)",
                "flickr8k_csv/html_page__Images__p1.png": "(it starts with b'<!DOCTYP')",
                "flickr8k_csv/text_file__Images__p3.png": "(it starts with b'this is ')",
                "karpathy/html_page__images__k1.png": "(it starts with b'<html><h')"}

# ---- out-of-range --set values on the tiny demo run: value → error fragment --------------

SET_CASES = {
    "train.lr=-1": "train.lr must be positive, got -1",
    "train.lr=0": "train.lr must be positive, got 0",
    "train.lr=nan": "train.lr: expected a finite number",
    "train.lr=-inf": "train.lr: expected a finite number",
    "train.lr=1e999": "train.lr: expected a finite number",
    "train.epochs=0": "train.epochs must be at least 1",
    "train.epochs=1.5": "train.epochs: expected an integer, got 1.5",
    "train.batch_size=abc": "train.batch_size: expected an integer, got 'abc'",
    "train.batch_size=0": "train.batch_size must be at least 1",
    "train.amp=maybe": "train.amp: 'maybe' is not one of",
    "train.schedule=linear": "train.schedule: 'linear' is not one of",
    "train.keep_last=0": "train.keep_last must be at least 1",
    "train.max_nonfinite_steps=0": "train.max_nonfinite_steps must be at least 1",
    "train.checkpoint_every=0": "train.checkpoint_every must be at least 1 or null",
    "train.max_steps=-3": "train.max_steps must be at least 1 or null",
    "train.log_every=0": "train.log_every must be at least 1",
    "train.grad_clip=-1": "train.grad_clip must be non-negative",
    "train.warmup_steps=-1": "train.warmup_steps must be non-negative",
    "train.num_workers=-2": "train.num_workers must be non-negative",
    "train.step_gamma=2": "step_gamma in (0, 1]",
    "train.progress=sometimes": "train.progress: expected true or false",
    "train.device=tpu": "train.device 'tpu' is not a torch device",
    "eval.batch_size=0": "eval.batch_size must be at least 1",
    "eval.chunk_size=-1": "eval.chunk_size must be at least 1",
    "eval.split=validation": "the dataset has no 'validation' split",
    "data.n_train=0": "data.n_train must be at least 1",
    "data.n_train=100000": "data.n_train=100000 needs a",
    "data.image_size=8": "data.image_size must be between 24 and 256",
    "data.max_objects=99": "data.max_objects must be between 1 and 9",
    "data.captions_per_image=0": "data.captions_per_image must be at least 1",
    "model.embed_dim=0": "model.embed_dim must be at least 1",
    "model.image.width=-3": "model.image.width must be",
    "model.text.word_dim=0": "model.text.word_dim must be",
    "model.image.type=resnet": "unknown image encoder 'resnet'",
    "seed=-1": "seed must be an integer in 0..4294967295",
    "seed=4294967296": "seed must be an integer in 0..4294967295",
    "loss.margin=-0.5": "loss.margin must be non-negative",
    "loss={name: fne, momentum: 2}": "loss.momentum must be in [0, 1]",
    "loss={name: fne, prior_ratio: 1}": "loss.prior_ratio must be greater than 1",
    "loss={name: fne, seed: -4}": "loss.seed must be in [0, 2**31)",
    "loss={name: bcls, lam: -1}": "loss.lam must be a non-negative number",
    "loss={name: infonce, bogus: 1}": "unknown key 'bogus'",
    "train=5": "train: expected a mapping of keys, got 5",
    "data=" + "[" * 2000: "data: expected a mapping",
    "noequals": "--set 'noequals': expected KEY=VALUE",
    "=1": "empty key part",
    "train..lr=1": "empty key part",
    "train.lr.x=1": "'lr' is not a section",
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The hostile-input corpus, written once for this module."""
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def test_every_corpus_file_has_a_case(corpus: Path) -> None:
    files = sorted(str(p.relative_to(corpus)) for p in corpus.rglob("*") if p.is_file())
    assert files == sorted(CORPUS_CASES)


@pytest.mark.parametrize("folder", sorted(TEMPLATES))
def test_templates_are_valid(tmp_path: Path, folder: str) -> None:
    """The miniature datasets load cleanly, so each error below is the bad file's doing."""
    writer, _ = TEMPLATES[folder]
    splits = load_splits(writer(tmp_path / "data"))
    assert "train" in splits and all(s.n_captions == 2 * s.n_images for s in splits.values())


def corpus_args(corpus: Path, name: str, tmp_path: Path) -> list[str]:
    """CLI arguments of corpus case ``name``; data cases get their template built first."""
    source = corpus / name
    folder = name.split("/")[0]
    if folder == "config":
        return ["train", str(source)]
    writer, extra = TEMPLATES[folder]
    data = writer(tmp_path / "data")
    target = source.name.split("__", 1)[1].replace("__", "/")
    shutil.copyfile(source, tmp_path / "data" / target)
    return ["train", "demo", *sets([*extra, flow(data)])]


@pytest.mark.parametrize("name", sorted(CORPUS_CASES))
def test_corpus_file_is_refused(corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture, name: str) -> None:
    monkeypatch.chdir(tmp_path)
    args = corpus_args(corpus, name, tmp_path) + ["--run-dir", str(tmp_path / "out"), "--no-progress"]
    before = tree(tmp_path)
    line = assert_one_line_error(*run_cli(args, capsys)[::2], CORPUS_CASES[name])
    if name in NOT_AN_IMAGE:
        assert NOT_AN_IMAGE[name] in line
    assert tree(tmp_path) == before  # no run directory, nothing written anywhere


@pytest.mark.parametrize("value", sorted(SET_CASES))
def test_out_of_range_set_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture, value: str) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["train", "demo", *sets([*TINY_SETS, value]), "--run-dir", "out", "--no-progress"]
    assert_one_line_error(*run_cli(args, capsys)[::2], SET_CASES[value])
    assert tree(tmp_path) == {}


# ---- damaged runs, checkpoints, caches and image folders ---------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny vsepp run (3 epochs, checkpoints every 3 steps)."""
    from vsekit.cli import main

    run = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", "demo", *sets(TINY_SETS), "--run-dir", str(run), "--no-progress"]) == 0
    return run


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 3])
    elif how == "empty":
        path.write_bytes(b"")
    else:  # flip one byte in the middle
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 0x5A]) + data[middle + 1:])


def damage_steps(run: Path, how: str) -> None:
    for path in (run / "checkpoints").glob("step-*.pt"):
        damage(path, how)


def replace_text(path: Path, old: str, new: str) -> None:
    path.write_text(path.read_text().replace(old, new))


RUN_CASES = {
    # name: (how to damage the copied run, CLI arguments after the run dir, error fragment)
    "resume_all_checkpoints_flipped": (lambda r: damage_steps(r, "flip"), ["train", "--resume"],
                                       "no readable checkpoint in"),
    "resume_all_checkpoints_truncated": (lambda r: damage_steps(r, "truncate"),
                                         ["train", "--resume"], "is corrupted or truncated"),
    "resume_all_checkpoints_empty": (lambda r: damage_steps(r, "empty"), ["train", "--resume"],
                                     "(0 bytes) is corrupted or truncated"),
    "resume_no_checkpoints": (lambda r: shutil.rmtree(r / "checkpoints"), ["train", "--resume"],
                              "no checkpoint found in"),
    "resume_config_not_yaml": (lambda r: (r / "config.yaml").write_text("seed: [1,\n"),
                               ["train", "--resume"], "config.yaml' is not valid YAML"),
    "resume_config_unknown_key": (lambda r: replace_text(r / "config.yaml", "epochs:", "epoch:"),
                                  ["train", "--resume"], "unknown key 'epoch'"),
    "resume_config_missing": (lambda r: (r / "config.yaml").unlink(), ["train", "--resume"],
                              "is not a vsekit run directory"),
    "resume_with_set": (lambda r: None, ["train", "--set", "train.lr=1", "--resume"],
                        "do not pass a config or --set"),
    "train_into_finished_run": (lambda r: None, ["train", "demo", *sets(TINY_SETS), "--run-dir"],
                                "already holds a run"),
    "eval_best_flipped": (lambda r: damage(r / "checkpoints" / "best.pt", "flip"), ["eval"],
                          "best.pt' ("),
    "eval_best_truncated": (lambda r: damage(r / "checkpoints" / "best.pt", "truncate"),
                            ["eval"], "is corrupted or truncated"),
    "eval_best_missing": (lambda r: (r / "checkpoints" / "best.pt").unlink(), ["eval"],
                          "has no best checkpoint yet"),
    "eval_last_all_flipped": (lambda r: damage_steps(r, "flip"),
                              ["eval", "--checkpoint", "last"], "no readable checkpoint in"),
    "compare_damaged_metrics": (lambda r: damage(r / "final_metrics.json", "truncate"),
                                ["compare"], "final_metrics.json' is damaged"),
}


@pytest.mark.parametrize("case", sorted(RUN_CASES))
def test_damaged_run_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture, finished_run: Path,
                                case: str) -> None:
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    how, args, fragment = RUN_CASES[case]
    how(run)
    position = args.index("--resume") + 1 if "--resume" in args else len(args)
    if args[0] in ("eval", "compare"):
        position = 1
    argv = [*args[:position], str(run), *args[position:]]
    if argv[0] in ("train", "eval"):
        argv.append("--no-progress")
    before = tree(tmp_path)
    assert_one_line_error(*run_cli(argv, capsys)[::2], fragment)
    assert tree(tmp_path) == before


def test_damaged_label_cache_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture) -> None:
    """A truncated BCLS label cache: one line naming it, nothing rebuilt over it."""
    from vsekit.config import load_config
    from vsekit.labels import cache_path, minilm_encoder

    monkeypatch.chdir(tmp_path)
    values = [*TINY_SETS, f"loss={{name: bcls, label_cache_dir: {tmp_path / 'cache'}}}"]
    config = load_config(Path(__file__).parents[2] / "src/vsekit/configs/demo.yaml", values)
    path = cache_path(load_splits(config.data)["train"].captions, tmp_path / "cache",
                      minilm_encoder())
    path.parent.mkdir()
    buffer = io.BytesIO()
    np.save(buffer, np.ones((80, 384), np.float32))
    path.write_bytes(buffer.getvalue()[:300])
    before = tree(tmp_path)
    args = ["train", "demo", *sets(values), "--run-dir", "out", "--no-progress"]
    assert_one_line_error(*run_cli(args, capsys)[::2], f"label cache {path} is unreadable")
    assert tree(tmp_path) == before


FEATURE_CASES = [
    ({"a.png": "png", "b.jpg": b"<html>not found</html>"}, "b.jpg' cannot be decoded"),
    ({"a.png": "png", "c.png": b""}, "c.png' cannot be decoded"),
    ({"README.txt": b"notes", "data.csv": b"a,b"}, "has no .jpg, .jpeg or .png files"),
]


@pytest.mark.parametrize(("files", "fragment"), FEATURE_CASES)
def test_features_with_non_images(tmp_path: Path, capsys: pytest.CaptureFixture,
                                  files: dict, fragment: str) -> None:
    """``vsekit features`` over a folder holding non-image files: one line, and the
    existing output file is not overwritten."""
    folder = tmp_path / "images"
    folder.mkdir()
    for name, content in files.items():
        if content == "png":
            write_png(folder / name, 100)
        else:
            (folder / name).write_bytes(content)
    (tmp_path / "out.npy").write_bytes(b"an earlier result")
    before = tree(tmp_path)
    args = ["features", str(folder), "--out", str(tmp_path / "out.npy"), "--no-progress"]
    assert_one_line_error(*run_cli(args, capsys)[::2], fragment)
    assert tree(tmp_path) == before


def test_batch_larger_than_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture) -> None:
    """A batch larger than the training set: one line and no run directory; the same
    ``--run-dir`` works at once with a fixed batch size."""
    monkeypatch.chdir(tmp_path)
    base = ["train", "demo", "--run-dir", "out", "--no-progress"]
    code, _, err = run_cli([*base, *sets([*TINY_SETS, "train.batch_size=4096"])], capsys)
    assert_one_line_error(code, err, "batch size 4096 is larger than the 80 training captions")
    assert not (tmp_path / "out").exists()
    code, _, _ = run_cli([*base, *sets([*TINY_SETS, "train.epochs=1"])], capsys)
    assert code == 0 and (tmp_path / "out" / "final_metrics.json").is_file()


#: Bad inputs this module tries: the corpus, the --set values, the damaged runs, the image
#: folders, the damaged label cache and the oversized batch (the figure in the doc).
BAD_INPUTS = len(CORPUS_CASES) + len(SET_CASES) + len(RUN_CASES) + len(FEATURE_CASES) + 2


def test_input_count_matches_doc() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "reliability.md").read_text(encoding="utf-8")
    assert f"{BAD_INPUTS} bad inputs" in doc
