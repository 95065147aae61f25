"""Pooling and heads against slow references: loops over items, positions and dimensions."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vsekit.models.pooling import (
    GPO,
    ProjectionHead,
    length_mask,
    masked_mean,
    positional_encoding,
)


def test_length_mask_matches_loop():
    lengths = torch.tensor([0, 3, 1, 5])
    mask = length_mask(lengths, 5)
    for b in range(4):
        for k in range(5):
            assert bool(mask[b, k]) == (k < int(lengths[b]))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(1, 6), st.integers(1, 3), st.integers(0, 1000))
def test_masked_mean_matches_loop(batch, size, dim, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, size, dim, generator=g)
    mask = torch.rand(batch, size, generator=g) < 0.6
    out = masked_mean(x, mask)
    for b in range(batch):
        for d in range(dim):
            values = [float(x[b, k, d]) for k in range(size) if mask[b, k]]
            expected = sum(values) / len(values) if values else 0.0
            assert math.isclose(float(out[b, d]), expected, abs_tol=1e-5)


def test_positional_encoding_matches_formula():
    pe = positional_encoding(7, 6)
    for k in range(7):
        for i in range(3):
            angle = k / 10000 ** (2 * i / 6)
            assert math.isclose(float(pe[k, 2 * i]), math.sin(angle), abs_tol=1e-6)
            assert math.isclose(float(pe[k, 2 * i + 1]), math.cos(angle), abs_tol=1e-6)


# ------------------------------------------------------------------ GPO


def slow_gpo(gpo: GPO, features: torch.Tensor, lengths: list[int]):
    """Item by item, without packing: GRU over the n encodings of one item, averaged
    directions, linear score, softmax(score / T); then per dimension: sort the n valid values
    in descending order and take the weighted sum.
    """
    batch, size, dim = features.shape
    pooled = torch.zeros(batch, dim)
    weights = torch.zeros(batch, size)
    with torch.no_grad():
        for b in range(batch):
            n = lengths[b]
            out, _ = gpo.gru(positional_encoding(n, gpo.d_pe)[None])
            half = out.shape[-1] // 2
            scores = gpo.score((out[0, :, :half] + out[0, :, half:]) / 2)[:, 0]
            exp = [math.exp(float(s) / gpo.temperature) for s in scores]
            w = [e / sum(exp) for e in exp]
            weights[b, :n] = torch.tensor(w)
            for d in range(dim):
                values = sorted((float(features[b, k, d]) for k in range(n)), reverse=True)
                pooled[b, d] = sum(wk * v for wk, v in zip(w, values, strict=True))
    return pooled, weights


@pytest.mark.parametrize("lengths", [[5, 5, 5], [5, 2, 1, 4], [1], [3, 3, 1]])
def test_gpo_matches_slow_reference_with_variable_lengths(lengths):
    gpo = GPO(d_pe=8, d_hidden=6, temperature=0.5)
    size = 5
    features = torch.randn(len(lengths), size, 4)
    # Garbage beyond each length must not leak into the result.
    for b, n in enumerate(lengths):
        features[b, n:] = 1e6
    pooled, weights = gpo(features, torch.tensor(lengths))
    ref_pooled, ref_weights = slow_gpo(gpo, features, lengths)
    assert pooled.shape == (len(lengths), 4) and weights.shape == (len(lengths), size)
    torch.testing.assert_close(weights, ref_weights, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pooled, ref_pooled, atol=1e-4, rtol=1e-5)


def test_gpo_weights_sum_to_one_over_valid_positions_default_temperature():
    gpo = GPO()
    assert gpo.temperature == 0.1
    lengths = torch.tensor([36, 10, 1])
    _, weights = gpo(torch.randn(3, 36, 8), lengths)
    torch.testing.assert_close(weights.sum(1), torch.ones(3))
    assert (weights[1, 10:] == 0).all() and weights[2, 0] == 1


def test_gpo_is_invariant_to_the_order_of_the_set():
    gpo = GPO(d_pe=4, d_hidden=4)
    features = torch.randn(2, 6, 3)
    perm = torch.randperm(6)
    lengths = torch.tensor([6, 6])
    torch.testing.assert_close(gpo(features, lengths)[0], gpo(features[:, perm], lengths)[0])


def test_gpo_gradients_reach_features_and_weight_generator():
    gpo = GPO(d_pe=4, d_hidden=4)
    features = torch.randn(3, 5, 2, requires_grad=True)
    pooled, _ = gpo(features, torch.tensor([5, 3, 1]))
    pooled.square().sum().backward()
    assert features.grad is not None and features.grad.abs().sum() > 0
    assert (features.grad[1, 3:] == 0).all() and (features.grad[2, 1:] == 0).all()
    for name, p in gpo.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("kwargs", [{"d_pe": 3}, {"d_pe": 0}, {"d_hidden": 0},
                                    {"temperature": 0.0}])
def test_gpo_rejects_bad_sizes(kwargs):
    with pytest.raises(ValueError):
        GPO(**kwargs)


# ------------------------------------------------------------------ ProjectionHead


@torch.no_grad()
def test_head_linear_matches_loop():
    head = ProjectionHead(3, 2)
    x = torch.randn(4, 3)
    out = head(x)
    w, b = head.linear.weight, head.linear.bias
    for i in range(4):
        for j in range(2):
            expected = sum(float(w[j, k]) * float(x[i, k]) for k in range(3)) + float(b[j])
            assert math.isclose(float(out[i, j]), expected, abs_tol=1e-5)


def test_head_with_mlp_and_standardize_in_eval_matches_loop():
    head = ProjectionHead(3, 2, hidden=4, standardize=True)
    with torch.no_grad():
        head.standardize.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        head.standardize.running_var.copy_(torch.tensor([4.0, 0.25, 1.0]))
        head.mlp["bn"].running_mean.uniform_(-1, 1)
        head.mlp["bn"].running_var.uniform_(0.5, 2)
        head.mlp["bn"].weight.uniform_(0.5, 2)
        head.mlp["bn"].bias.uniform_(-1, 1)
    head.eval().requires_grad_(False)
    x = torch.randn(5, 3)
    out = head(x)
    std, bn = head.standardize, head.mlp["bn"]
    lin, fc1, fc2 = head.linear, head.mlp["fc1"], head.mlp["fc2"]
    for i in range(5):
        z = [(float(x[i, k]) - float(std.running_mean[k])) / math.sqrt(float(std.running_var[k])
                                                                        + std.eps)
             for k in range(3)]
        h = []
        for m in range(4):
            a = sum(float(fc1.weight[m, k]) * z[k] for k in range(3)) + float(fc1.bias[m])
            a = (a - float(bn.running_mean[m])) / math.sqrt(float(bn.running_var[m]) + bn.eps)
            h.append(max(0.0, a * float(bn.weight[m]) + float(bn.bias[m])))
        for j in range(2):
            expected = sum(float(lin.weight[j, k]) * z[k] for k in range(3)) + float(lin.bias[j])
            expected += sum(float(fc2.weight[j, m]) * h[m] for m in range(4)) + float(fc2.bias[j])
            assert math.isclose(float(out[i, j]), expected, abs_tol=1e-4)


def test_head_treats_leading_dims_as_batch():
    head = ProjectionHead(3, 2, hidden=4, standardize=True)
    x = torch.randn(2, 5, 3)
    out = head(x)  # training mode: batch statistics over all 10 rows
    flat = head(x.reshape(10, 3))
    assert out.shape == (2, 5, 2)
    torch.testing.assert_close(out.reshape(10, 2), flat)


@torch.no_grad()
def test_head_dropout_zeroes_and_rescales_inputs_in_training_only():
    head = ProjectionHead(6, 2, dropout=0.5)
    x = torch.randn(40, 6)
    head.train()
    torch.manual_seed(3)
    out = head(x)
    torch.manual_seed(3)
    scale = head.dropout(torch.ones_like(x))  # the same draws: 0 (dropped) or 1 / (1 - p)
    assert set(scale.unique().tolist()) == {0.0, 2.0}
    lin = head.linear
    for i in range(40):
        kept = [float(x[i, k]) * float(scale[i, k]) for k in range(6)]
        for j in range(2):
            expected = sum(float(lin.weight[j, k]) * kept[k] for k in range(6)) + float(lin.bias[j])
            assert math.isclose(float(out[i, j]), expected, abs_tol=1e-5)
    head.eval()
    torch.testing.assert_close(head(x), lin(x))
