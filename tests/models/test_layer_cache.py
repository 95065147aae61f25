"""Cached lower-layer states: batches, equality with the full transformer, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vsekit.data.dataset import ImageStore, RetrievalSplit
from vsekit.errors import VsekitError
from vsekit.models import TEXT_ENCODERS, ModelContext
from vsekit.models.layer_cache import LowerStates, compute_lower_states

CAPTIONS = ["A dog runs on the grass .", "two dogs", "", "The dog sleeps on a red sofa near the cat",
            "a cat", "a man rides a bike down a long and winding mountain road at dusk"]


def make_split(captions) -> RetrievalSplit:
    n = len(captions)
    return RetrievalSplit(name="train", images=ImageStore("features", features=np.zeros((n, 2))),
                          captions=list(captions), caption_to_image=np.arange(n),
                          image_ids=[str(i) for i in range(n)])


def build(**params):
    torch.manual_seed(0)
    name, parsed = TEXT_ENCODERS.parse({"type": "hf", "train_layers": 2, **params}, "model.text")
    return TEXT_ENCODERS.build(name, parsed, context=ModelContext(embed_dim=8,
                                                                  image_kind="features"))


@pytest.fixture(scope="module")
def pair():
    """The same weights with and without the cache."""
    return build(), build(cache_lower_layers=True)


def test_lower_states_batch_matches_a_loop():
    gen = torch.Generator().manual_seed(1)
    lengths = [3, 1, 5, 2]
    states = torch.randn(sum(lengths), 4, generator=gen)
    offsets = torch.tensor(np.concatenate([[0], np.cumsum(lengths)]))
    cache = LowerStates(captions=[], states=states, offsets=offsets)
    rows = np.array([2, 0, 3, 2])
    hidden, mask = cache.batch(rows)
    assert hidden.shape == (4, 5, 4) and mask.shape == (4, 5)
    for b, r in enumerate(rows):
        start = sum(lengths[:r])
        for t in range(5):
            if t < lengths[r]:
                assert mask[b, t] == 1
                torch.testing.assert_close(hidden[b, t], states[start + t])
            else:
                assert mask[b, t] == 0 and not hidden[b, t].any()


def test_lower_states_are_the_transformer_hidden_states(pair):
    plain, _ = pair
    tokens = plain.tokenize(CAPTIONS)
    layers = plain.backbone.encoder.layer
    plain.train()
    cache = compute_lower_states(plain.backbone.embeddings, layers[:4], plain.tokenize, CAPTIONS,
                                 chunk=4)
    assert plain.backbone.training  # modes restored
    with torch.no_grad():
        reference = plain.backbone.eval()(**tokens, output_hidden_states=True).hidden_states[4]
    plain.train()
    for i in range(len(CAPTIONS)):
        n = int(tokens["attention_mask"][i].sum())
        assert int(cache.offsets[i + 1] - cache.offsets[i]) == n
        torch.testing.assert_close(cache.states[cache.offsets[i]:cache.offsets[i + 1]],
                                   reference[i, :n], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("buckets", [1, 3])
def test_cached_encoder_gives_the_full_encoders_embeddings(pair, buckets):
    plain, cached = pair
    split = make_split(CAPTIONS)
    rows = np.array([5, 0, 2, 3, 1])
    plain.eval(), cached.eval()
    cached.params.length_buckets = buckets
    try:
        with torch.no_grad():
            expected = plain(**plain.prepare(split, rows))
            got = cached(**cached.prepare(split, rows))
    finally:
        plain.train(), cached.train()
        cached.params.length_buckets = 4
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_cached_encoder_gets_the_same_gradients(pair):
    plain, cached = pair
    split = make_split(CAPTIONS)
    rows = np.arange(len(CAPTIONS))
    grads = []
    for encoder in (plain, cached):
        encoder.eval()  # no dropout: both paths must give identical numbers
        encoder.zero_grad()
        encoder(**encoder.prepare(split, rows)).pow(2).sum().backward()
        grads.append({n: p.grad for n, p in encoder.named_parameters() if p.grad is not None})
        encoder.train()
    assert grads[0].keys() == grads[1].keys()
    assert all(".layer.4." in n or ".layer.5." in n or n.startswith("head") for n in grads[1])
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-4, rtol=1e-3)


def test_cache_is_computed_once_per_split(pair):
    _, cached = pair
    first, second = make_split(CAPTIONS), make_split(CAPTIONS[:3])
    cached.lower_states.clear()
    cached.prepare(first, np.array([0, 1]))
    states = cached.lower_states[id(first.captions)]
    cached.prepare(first, np.array([2]))
    cached.prepare(second, np.array([0]))
    assert cached.lower_states[id(first.captions)] is states
    assert len(cached.lower_states) == 2
    assert len(cached.lower_states[id(second.captions)].offsets) == 4


def test_empty_caption_list_gives_empty_states(pair):
    plain, _ = pair
    cache = compute_lower_states(plain.backbone.embeddings, plain.backbone.encoder.layer[:4],
                                 plain.tokenize, [])
    assert cache.offsets.tolist() == [0] and cache.states.numel() == 0


@pytest.mark.parametrize("params, match", [
    ({"train_layers": None}, "needs train_layers"),
    ({"freeze": True}, "needs freeze: false"),
    ({"train_truncation": False}, "needs train_truncation: true"),
    ({"pooling": "mean_with_padding"}, "needs pooling mean or cls"),
])
def test_cache_needs_a_compatible_configuration(params, match):
    with pytest.raises(VsekitError, match=match):
        TEXT_ENCODERS.parse({"type": "hf", "train_layers": 2, "cache_lower_layers": True,
                             **params}, "model.text")
