"""`vsekit index build` and `vsekit search` end to end on a tiny trained synthetic run:
results equal brute force over the model's own split embeddings; bad input is one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.search.conftest import TINY_DATA, make_untrained_run
from tests.test_cli import assert_one_line_error, run_cli
from vsekit.cli import main
from vsekit.data import load_splits
from vsekit.eval.encode import encode_split
from vsekit.eval.run import load_run_model
from vsekit.train.run_dir import load_run_config


def split_embeddings(run_dir: Path, split: str = "test"):
    """(split, image embeddings, caption embeddings) by the eval code path."""
    config = load_run_config(run_dir)
    data = load_splits(config.data)[split]
    model = load_run_model(run_dir, config, data)
    image_emb, text_emb = encode_split(model, data)
    return data, image_emb, text_emb


def top_k(emb: torch.Tensor, query: torch.Tensor, k: int) -> tuple[list[float], list[int]]:
    scores, ids = torch.topk(emb @ query, k)
    return scores.tolist(), ids.tolist()


def search_json(capsys, *args: str) -> dict:
    code, out, err = run_cli(["search", *args, "--json"], capsys)
    assert code == 0, err
    return json.loads(out)


@pytest.mark.slow
def test_text_to_image_index(tiny_run: Path, tmp_path: Path, capsys) -> None:
    index = tmp_path / "images"
    code, out, err = run_cli(["index", "build", str(tiny_run), "--images", "test", "--out",
                              str(index), "--no-progress"], capsys)
    assert code == 0, err
    assert out.strip() == f"flat index of 12 images (16-d) from test: {index}"
    split, image_emb, text_emb = split_embeddings(tiny_run)
    caption = 7
    result = search_json(capsys, str(index), split.captions[caption], "-k", "5")
    scores, ids = top_k(image_emb, text_emb[caption], 5)
    assert result["direction"] == "text→image" and result["count"] == 12
    assert [hit["id"] for hit in result["results"]] == [split.image_ids[i] for i in ids]
    np.testing.assert_allclose([hit["score"] for hit in result["results"]], scores, atol=1e-5)
    assert [hit["rank"] for hit in result["results"]] == [1, 2, 3, 4, 5]
    code, out, _ = run_cli(["search", str(index), split.captions[caption], "-k", "3"], capsys)
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 5 and lines[1].split() == ["rank", "score", "image"]
    assert lines[2].split() == ["1", f"{scores[0]:.4f}", split.image_ids[ids[0]]]


@pytest.mark.slow
def test_image_to_text_index(tiny_run: Path, tmp_path: Path, capsys) -> None:
    index = tmp_path / "captions"
    code, out, err = run_cli(["index", "build", str(tiny_run), "--captions", "test", "--out",
                              str(index), "--kind", "ivf", "--nlist", "4", "--nprobe", "1",
                              "--recall-queries", "12", "--no-progress"], capsys)
    assert code == 0, err
    meta = json.loads((index / "meta.json").read_text())
    assert meta["kind"] == "ivf" and meta["params"] == {"nlist": 4, "nprobe": 1}
    assert meta["modality"] == "caption" and meta["count"] == 60
    assert 0 <= meta["recall_at_10"] <= 1 and meta["recall_queries"].startswith("12 images")
    assert f"recall@10 against exact search: {meta['recall_at_10']:.4f} on 12 images" in out
    split, image_emb, text_emb = split_embeddings(tiny_run)
    image = 3
    # --nprobe 4 visits every cell: exact results.
    by_id = search_json(capsys, str(index), split.image_ids[image], "-k", "6", "--nprobe", "4")
    scores, ids = top_k(text_emb, image_emb[image], 6)
    assert by_id["direction"] == "image→text"
    assert [hit["caption"] for hit in by_id["results"]] == [split.captions[j] for j in ids]
    assert [hit["image_id"] for hit in by_id["results"]] == [
        split.image_ids[split.caption_to_image[j]] for j in ids]
    np.testing.assert_allclose([hit["score"] for hit in by_id["results"]], scores, atol=1e-5)
    # The same image as a PNG file (32 px, as the model reads it) gives the same answer.
    png = tmp_path / "query.png"
    Image.fromarray(split.images.pixels[image]).save(png)
    by_path = search_json(capsys, str(index), str(png), "-k", "6", "--nprobe", "4")
    assert [h["caption"] for h in by_path["results"]] == [h["caption"] for h in by_id["results"]]
    np.testing.assert_allclose([h["score"] for h in by_path["results"]], scores, atol=1e-4)


@pytest.mark.slow
def test_folder_and_caption_file_sources(tiny_run: Path, tmp_path: Path, capsys) -> None:
    split, image_emb, text_emb = split_embeddings(tiny_run)
    folder = tmp_path / "pictures"
    folder.mkdir()
    for i in (0, 4, 9):
        Image.fromarray(split.images.pixels[i]).save(folder / f"pic{i}.png")
    code, _, err = run_cli(["index", "build", str(tiny_run), "--images", str(folder), "--out",
                            str(tmp_path / "folder"), "--kind", "hnsw", "--no-progress"], capsys)
    assert code == 0, err
    result = search_json(capsys, str(tmp_path / "folder"), split.captions[2], "-k", "3")
    scores, ids = top_k(image_emb[[0, 4, 9]], text_emb[2], 3)
    assert [h["path"] for h in result["results"]] == [
        str((folder / f"pic{[0, 4, 9][i]}.png").resolve()) for i in ids]
    np.testing.assert_allclose([h["score"] for h in result["results"]], scores, atol=1e-4)
    captions = tmp_path / "captions.txt"
    captions.write_text("\n".join(split.captions[:10]) + "\n", encoding="utf-8")
    code, _, err = run_cli(["index", "build", str(tiny_run), "--captions", str(captions),
                            "--out", str(tmp_path / "file"), "--no-progress"], capsys)
    assert code == 0, err
    result = search_json(capsys, str(tmp_path / "file"), split.image_ids[1], "-k", "4")
    scores, ids = top_k(text_emb[:10], image_emb[1], 4)
    assert [h["caption"] for h in result["results"]] == [split.captions[j] for j in ids]
    np.testing.assert_allclose([h["score"] for h in result["results"]], scores, atol=1e-5)


@pytest.mark.slow
def test_bad_input_is_one_line(tiny_run: Path, tmp_path: Path, capsys) -> None:
    index = tmp_path / "idx"
    assert run_cli(["index", "build", str(tiny_run), "--images", "test", "--out", str(index),
                    "--no-progress"], capsys)[0] == 0
    narrow = make_untrained_run(tmp_path / "narrow", {
        "data": TINY_DATA, "model": {"embed_dim": 8, "image": {"type": "cnn", "width": 4},
                                     "text": {"type": "bigru", "word_dim": 8}}})
    features = tmp_path / "features.npy"
    np.save(features, np.zeros((3, 8), dtype=np.float32))
    cases = [
        (["search", str(tmp_path / "missing"), "a red circle"], "not found; build one"),
        (["search", str(index), "a red circle", "-k", "0"], "-k must be at least 1"),
        (["search", str(index), "a red circle", "-k", "-2"], "-k must be at least 1"),
        (["search", str(index), "   "], "the query is empty"),
        (["search", str(index), "a red circle", "--run", str(narrow)],
         "are 8-d but the index holds 16-d"),
        (["search", str(index), "zebra giraffe"], "none of the 2 words of the query"),
        (["search", str(index), "a red circle", "--run", str(tmp_path)],
         "not a vsekit run directory"),
        (["index", "build", str(tiny_run), "--images", "test", "--out", str(index)],
         "already holds an index; pass --force"),
        (["index", "build", str(tiny_run), "--images", "nope", "--out", str(tmp_path / "x")],
         "is neither an image folder or a .npy features file nor a split"),
        (["index", "build", str(tiny_run), "--images", str(features), "--out",
          str(tmp_path / "x")], "reads pixels, not precomputed features"),
        (["index", "build", str(tiny_run), "--captions", "test", "--out", str(tmp_path / "x"),
          "--kind", "annoy"], "index kind must be one of flat, ivf, hnsw"),
        (["index", "build", str(tiny_run), "--captions", "test", "--out", str(tmp_path / "x"),
          "--kind", "ivf", "--nlist", "100"], "nlist must be at most the number of items (60)"),
    ]
    for args, pattern in cases:
        quiet = ["--no-progress"] if args[0] == "index" else []
        code, _, err = run_cli([*args, *quiet], capsys)
        assert_one_line_error(code, err, pattern)
    caption_index = tmp_path / "caps"
    assert run_cli(["index", "build", str(tiny_run), "--captions", "test", "--out",
                    str(caption_index), "--no-progress"], capsys)[0] == 0
    code, _, err = run_cli(["search", str(caption_index), "no_such_image.png"], capsys)
    assert_one_line_error(code, err, "neither an image file nor an image id")


def test_help(capsys) -> None:
    for command in (["index"], ["index", "build"], ["search"]):
        with pytest.raises(SystemExit) as info:
            main([*command, "--help"])
        assert info.value.code == 0
        assert "usage: vsekit" in capsys.readouterr().out
