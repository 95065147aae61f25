"""Text encoders: GRU pooling vs per-caption loops, vocabulary in the state dict, offline
MiniLM parity with the Flickr8k pack, precomputed features, errors.
"""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vsekit.data.dataset import ImageStore, RetrievalSplit
from vsekit.errors import VsekitError
from vsekit.models import TEXT_ENCODERS, ModelContext
from vsekit.models.text import BiGRUEncoder, HFEncoder, PrecomputedTextEncoder, resolve_model_path

CAPTIONS = ["A dog runs on the grass .", "two dogs", "", "The dog sleeps on a red sofa near the cat",
            "a cat"]


def make_split(captions, caption_features=None) -> RetrievalSplit:
    n = len(captions)
    return RetrievalSplit(name="train", images=ImageStore("features", features=np.zeros((n, 2))),
                          captions=list(captions), caption_to_image=np.arange(n),
                          image_ids=[str(i) for i in range(n)], caption_features=caption_features)


def build(section, embed_dim=6, captions=None, caption_feature_dim=None):
    name, params = TEXT_ENCODERS.parse(section, "model.text")
    context = ModelContext(embed_dim=embed_dim, image_kind="features", image_feature_dim=2,
                           caption_feature_dim=caption_feature_dim, train_captions=captions)
    return TEXT_ENCODERS.build(name, params, context=context)


# ------------------------------------------------------------------ bigru


def slow_gru_embedding(enc: BiGRUEncoder, ids: list[int]) -> torch.Tensor:
    """One caption, no padding or packing: run the GRU on its own tokens, average directions,
    then mean over time ("mean") or average the final forward/backward states ("last").
    """
    x = enc.embedding(torch.tensor([ids]))
    out, last = enc.gru(x)
    dirs = 2 if enc.params.bidirectional else 1
    if enc.params.pooling == "last":
        top = last[-dirs:, 0]  # final layer: forward state (and backward state)
        return sum(top[d] for d in range(dirs)) / dirs
    steps = out[0].view(len(ids), dirs, -1)
    per_step = [sum(steps[t, d] for d in range(dirs)) / dirs for t in range(len(ids))]
    return sum(per_step) / len(ids)


@pytest.mark.parametrize("section", [
    {"type": "bigru", "word_dim": 5},
    {"type": "bigru", "word_dim": 5, "pooling": "last"},
    {"type": "bigru", "word_dim": 5, "bidirectional": False, "pooling": "last"},
    {"type": "bigru", "word_dim": 5, "bidirectional": False, "num_layers": 2},
    {"type": "bigru", "word_dim": 5, "num_layers": 2, "pooling": "last"},
])
def test_bigru_matches_per_caption_reference(section):
    enc = build(section, captions=CAPTIONS)
    assert isinstance(enc, BiGRUEncoder)
    split = make_split(CAPTIONS)
    order = np.array([3, 0, 2, 4, 1])  # unsorted lengths exercise enforce_sorted=False
    text = enc.prepare(split, order)
    with torch.no_grad():
        out = enc(**text)
        assert out.shape == (5, 6)
        for row in range(len(order)):
            n = int(text["lengths"][row])
            expected = slow_gru_embedding(enc, text["ids"][row, :n].tolist())
            torch.testing.assert_close(out[row], expected, atol=1e-5, rtol=1e-4)


def test_bigru_gradients_flow_to_every_parameter():
    enc = build({"type": "bigru", "word_dim": 4}, captions=CAPTIONS)
    text = enc.prepare(make_split(CAPTIONS), np.arange(5))
    enc(**text).square().sum().backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_bigru_vocabulary_travels_in_the_state_dict():
    a = build({"type": "bigru", "word_dim": 4}, captions=CAPTIONS)
    buffer = io.BytesIO()
    torch.save({"model": torch.nn.ModuleDict({"text": a}).state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)

    b = build({"type": "bigru", "word_dim": 4}, captions=None)  # restoring: no captions
    assert len(b.vocab) == 2
    parent = torch.nn.ModuleDict({"text": b})
    parent.load_state_dict(checkpoint["model"])  # strict
    assert b.vocab == a.vocab and b.embedding.num_embeddings == len(a.vocab)
    split = make_split(["the dog runs", "an unseen zebra", "cat"])
    ta, tb = a.prepare(split, np.arange(3)), b.prepare(split, np.arange(3))
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    with torch.no_grad():
        assert torch.equal(a(**ta), b(**tb))


def test_bigru_same_vocabulary_load_keeps_the_parameter_objects():
    a = build({"type": "bigru", "word_dim": 4}, captions=CAPTIONS)
    b = build({"type": "bigru", "word_dim": 4}, captions=CAPTIONS)
    weight = b.embedding.weight
    b.load_state_dict(a.state_dict())
    assert b.embedding.weight is weight and torch.equal(weight, a.embedding.weight)


def test_bigru_rejects_a_state_without_vocabulary():
    enc = build({"type": "bigru", "word_dim": 4}, captions=CAPTIONS)
    state = enc.state_dict()
    state["_extra_state"] = {"words": []}
    with pytest.raises(VsekitError, match="no vocabulary"):
        enc.load_state_dict(state)
    state["_extra_state"] = {"vocabulary": ["x", "y"]}
    with pytest.raises(VsekitError, match="malformed"):
        enc.load_state_dict(state)


def test_bigru_min_count_maps_rare_words_to_unk():
    enc = build({"type": "bigru", "min_count": 2}, captions=CAPTIONS)
    # counts: a 3, the 3, cat 2, dog 2, on 2 (ties alphabetical); "dogs", "runs"... once
    assert enc.vocab.to_list()[2:] == ["a", "the", "cat", "dog", "on"]


@pytest.mark.parametrize("section, match", [
    ({"type": "bigru", "word_dim": 0}, "word_dim must be positive"),
    ({"type": "bigru", "num_layers": 0}, "num_layers must be positive"),
    ({"type": "bigru", "pooling": "max"}, "not one of"),
    ({"type": "hf", "max_length": 0}, "max_length must be positive"),
    ({"type": "hf", "model": "bert-base-uncased"}, "offline"),
    ({"type": "hf", "pooling": "max"}, "not one of"),
    ({"type": "precomputed", "hidden": -2}, "hidden must be positive"),
    ({"type": "precomputed", "dropout": -0.1}, r"dropout must be in \[0, 1\)"),
    ({"type": "hf", "length_buckets": 0}, "length_buckets must be positive"),
])
def test_bad_params_are_one_line_errors(section, match):
    with pytest.raises(VsekitError, match=match):
        TEXT_ENCODERS.parse(section, "model.text")


# ------------------------------------------------------------------ hf (MiniLM, offline)


@pytest.fixture(scope="module")
def minilm_raw() -> HFEncoder:
    """Frozen MiniLM, no projection: the sentence embedding itself."""
    return build({"type": "hf", "freeze": True, "project": False}, embed_dim=384)


def read_captions(folder, rows):
    with open(folder / "captions.tsv", encoding="utf-8", newline="") as f:
        table = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    return [table[r][2] for r in rows]


@pytest.mark.realdata
def test_minilm_reproduces_the_flickr8k_pack(flickr8k_dir, minilm_raw):
    rows = [0, 1, 7, 35000, 35003, 40454]
    captions = read_captions(flickr8k_dir, rows)
    text = minilm_raw.prepare(make_split(captions), np.arange(len(rows)))
    with torch.no_grad():
        ours = F.normalize(minilm_raw(**text), dim=-1).numpy()
    packed = np.load(flickr8k_dir / "features" / "caption_minilm_384.f16.npy", mmap_mode="r")
    np.testing.assert_allclose(ours, packed[rows].astype(np.float32), atol=2e-3)


def test_minilm_pooling_modes_against_loops(minilm_raw):
    text = minilm_raw.prepare(make_split(CAPTIONS), np.array([0, 1, 3]))
    ids, mask = text["input_ids"], text["attention_mask"]
    assert ids.shape == mask.shape and (mask.sum(1) < mask.shape[1]).any()  # has padding
    with torch.no_grad():
        hidden = minilm_raw.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        mean = minilm_raw(**text)
        minilm_raw.params.pooling = "mean_with_padding"
        with_padding = minilm_raw(**text)
        minilm_raw.params.pooling = "cls"
        cls = minilm_raw(**text)
        minilm_raw.params.pooling = "mean"
    for b in range(3):
        valid = [hidden[b, t] for t in range(ids.shape[1]) if mask[b, t]]
        every = [hidden[b, t] for t in range(ids.shape[1])]
        torch.testing.assert_close(mean[b], sum(valid) / len(valid), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(with_padding[b], sum(every) / len(every), atol=1e-5,
                                   rtol=1e-4)
        torch.testing.assert_close(cls[b], hidden[b, 0])
    assert not torch.allclose(mean[1], with_padding[1])


@pytest.mark.parametrize("buckets", [2, 3, 4, 50])
@pytest.mark.parametrize("pooling", ["mean", "cls", "mean_with_padding"])
def test_length_buckets_give_the_embeddings_of_one_padded_batch(minilm_raw, buckets, pooling):
    captions = [c * (1 + i % 3) for i, c in enumerate(CAPTIONS * 2)]
    text = minilm_raw.prepare(make_split(captions), np.arange(len(captions)))
    mask = text["attention_mask"]
    assert len(set(mask.sum(1).tolist())) > 2  # captions of several lengths
    minilm_raw.params.pooling = pooling
    try:
        with torch.no_grad():
            minilm_raw.params.length_buckets = 1
            hidden = minilm_raw.backbone(**text).last_hidden_state
            reference = [hidden[b, 0] if pooling == "cls" else
                         hidden[b].mean(0) if pooling == "mean_with_padding" else
                         hidden[b, mask[b].bool()].mean(0) for b in range(len(captions))]
            minilm_raw.params.length_buckets = buckets
            bucketed = minilm_raw(**text)
    finally:
        minilm_raw.params.pooling, minilm_raw.params.length_buckets = "mean", 4
    for b, expected in enumerate(reference):
        torch.testing.assert_close(bucketed[b], expected, atol=1e-5, rtol=1e-4)


def test_minilm_frozen_stays_in_eval_and_gets_no_grad(minilm_raw):
    minilm_raw.train()
    assert minilm_raw.training and not minilm_raw.backbone.training
    assert not any(p.requires_grad for p in minilm_raw.parameters())
    out = minilm_raw(**minilm_raw.prepare(make_split(CAPTIONS), np.arange(2)))
    assert not out.requires_grad


def test_minilm_truncates_to_max_length(minilm_raw):
    long_caption = " ".join(["dog"] * 200)
    text = minilm_raw.prepare(make_split([long_caption, "cat"]), np.arange(2))
    assert text["input_ids"].shape == (2, 64)


def test_hf_trainable_projection_from_a_local_folder():
    folder = str(resolve_model_path("minilm"))
    enc = build({"type": "hf", "model": folder, "max_length": 16}, embed_dim=8).train()
    assert enc.backbone.training
    out = enc(**enc.prepare(make_split(CAPTIONS), np.arange(3)))
    assert out.shape == (3, 8)
    out.sum().backward()
    assert enc.head.weight.grad is not None
    assert enc.backbone.embeddings.word_embeddings.weight.grad is not None


def test_hf_without_projection_needs_matching_embed_dim():
    with pytest.raises(VsekitError, match="embed_dim to 384"):
        build({"type": "hf", "project": False}, embed_dim=256)


def test_resolve_model_path_errors(tmp_path):
    with pytest.raises(VsekitError, match="not available offline"):
        resolve_model_path(str(tmp_path))  # a folder, but no config.json
    with pytest.raises(VsekitError, match="huggingface-cli download no-such-org/no-such-model"):
        resolve_model_path("no-such-org/no-such-model", role="image")
    assert (resolve_model_path("minilm") / "config.json").is_file()


def test_train_truncation_false_pads_training_batches_to_their_longest_caption(minilm_raw):
    enc = build({"type": "hf", "freeze": True, "project": False, "max_length": 8,
                 "train_truncation": False}, embed_dim=384)
    split = make_split([" ".join(["dog"] * 20), "cat"])
    enc.train()
    assert enc.prepare(split, np.arange(2))["input_ids"].shape == (2, 22)  # [CLS] 20 [SEP]
    enc.eval()
    assert enc.prepare(split, np.arange(2))["input_ids"].shape == (2, 8)


def test_clean_fne_tokenises_the_cleaned_caption(minilm_raw):
    enc = build({"type": "hf", "freeze": True, "project": False, "clean": "fne"}, embed_dim=384)
    raw = enc.prepare(make_split(["A Dog-runs, (fast)!"]), np.arange(1))["input_ids"]
    clean = minilm_raw.prepare(make_split(["a dog runs fast"]), np.arange(1))["input_ids"]
    torch.testing.assert_close(raw, clean)


# ------------------------------------------------------------------ precomputed


def test_precomputed_gathers_rows_and_projects():
    features = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float16)
    enc = build({"type": "precomputed", "hidden": 4}, caption_feature_dim=3)
    assert isinstance(enc, PrecomputedTextEncoder)
    text = enc.prepare(make_split(CAPTIONS, features), np.array([4, 1, 1]))
    assert set(text) == {"features"}
    assert torch.equal(text["features"], torch.from_numpy(features[[4, 1, 1]].astype(np.float32)))
    out = enc(**text)
    assert out.shape == (3, 6)
    out.sum().backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None, name


def test_precomputed_errors():
    with pytest.raises(VsekitError, match="caption_features: true"):
        build({"type": "precomputed"})
    enc = build({"type": "precomputed"}, caption_feature_dim=3)
    with pytest.raises(VsekitError, match="needs precomputed caption features"):
        enc.prepare(make_split(CAPTIONS), np.arange(2))
    bad = np.ones((5, 3), dtype=np.float32)
    bad[3, 2] = np.inf
    with pytest.raises(VsekitError, match="caption features contain NaN or Inf"):
        enc.prepare(make_split(CAPTIONS, bad), np.array([0, 3]))


@pytest.mark.parametrize("k", [0, 2, 6])
def test_train_layers_leaves_only_the_top_layers_trainable(k):
    enc = build({"type": "hf", "train_layers": k, "max_length": 16}, embed_dim=8).train()
    layers = enc.backbone.encoder.layer
    for i, layer in enumerate(layers):
        assert all(p.requires_grad == (i >= len(layers) - k) for p in layer.parameters())
    assert not any(p.requires_grad for p in enc.backbone.embeddings.parameters())
    enc(**enc.prepare(make_split(CAPTIONS), np.arange(3))).sum().backward()
    for i, layer in enumerate(layers):
        got_grad = [p.grad is not None for p in layer.parameters()]
        assert all(got_grad) if i >= len(layers) - k else not any(got_grad)
    assert enc.head.weight.grad is not None


def test_train_layers_beyond_the_model_is_a_one_line_error():
    with pytest.raises(VsekitError, match="model has 6 layers"):
        build({"type": "hf", "train_layers": 7}, embed_dim=8)
    with pytest.raises(VsekitError, match="train_layers must be >= 0"):
        TEXT_ENCODERS.parse({"type": "hf", "train_layers": -1}, "model.text")
