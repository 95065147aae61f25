"""Numeric properties of the losses and metrics, against slow references written here.

For every in-batch loss (vse0, vsepp, infonce, triplet_sn through the registry, the Kendall
rank loss of BCLS, FNE's sampling weights) and the retrieval metrics: equality with a
plain-loop reference on random and tie-heavy inputs, invariance to the order of the batch,
the right behaviour under scaling, single-item batches, and NaN inputs that can never be
trained on silently. float64 throughout, so "equal" means within 1e-9.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from vsekit.errors import VsekitError
from vsekit.eval.metrics import retrieval_metrics, retrieval_ranks
from vsekit.losses import LOSSES
from vsekit.losses.bcls import kendall_rank_loss
from vsekit.losses.fne import negative_sampling_weights
from vsekit.losses.ranking import PairSims, infonce_loss, vsepp_loss

PROPERTY = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MARGIN = 0.2
SCALE = 5.0
TAU = 0.1


def build(name: str, **params: Any) -> torch.nn.Module:
    return LOSSES.build(*LOSSES.parse({"name": name, **params}, "loss"))


LOSS_MODULES = {
    "vse0": lambda: build("vse0", margin=MARGIN),
    "vsepp": lambda: build("vsepp", margin=MARGIN),
    "infonce": lambda: build("infonce", temperature=1 / SCALE, learn_temperature=False),
    "triplet_sn": lambda: build("triplet_sn", margin=MARGIN, tau=TAU),
}


# ---- slow references (plain loops over the documented formulas) ------------------------


def negatives(ids: list[int], k: int) -> list[int]:
    return [j for j in range(len(ids)) if ids[j] != ids[k]]


def hinge_reference(s: np.ndarray, ids: list[int], pool: str) -> float:
    """Mean over pairs k of pool(i2t hinges of image k) + pool(t2i hinges of caption k)."""
    total = 0.0
    for k in range(len(ids)):
        i2t = [max(0.0, MARGIN + s[k, j] - s[k, k]) for j in negatives(ids, k)]
        t2i = [max(0.0, MARGIN + s[i, k] - s[k, k]) for i in negatives(ids, k)]
        reduce = sum if pool == "sum" else (lambda v: max(v, default=0.0))
        total += reduce(i2t) + reduce(t2i)
    return total / len(ids)


def infonce_reference(s: np.ndarray, ids: list[int]) -> float:
    """Mean of the i2t and t2i cross-entropies; same-image candidates leave the softmax."""
    def direction(m: np.ndarray) -> float:
        out = 0.0
        for k in range(len(ids)):
            terms = [SCALE * m[k, k]] + [SCALE * m[k, j] for j in negatives(ids, k)]
            top = max(terms)
            out += -(SCALE * m[k, k] - top - math.log(sum(math.exp(t - top) for t in terms)))
        return out / len(ids)

    return (direction(s) + direction(s.T)) / 2


def triplet_sn_reference(s: np.ndarray, ids: list[int]) -> float:
    """Mean of both directions of: per row, softmax(s / tau) over admissible negatives ×
    hinge, summed over the row, averaged over rows."""
    def direction(m: np.ndarray) -> float:
        out = 0.0
        for q in range(len(ids)):
            cols = negatives(ids, q)
            if not cols:
                continue
            top = max(m[q, j] / TAU for j in cols)
            weights = [math.exp(m[q, j] / TAU - top) for j in cols]
            hinges = [max(0.0, MARGIN + m[q, j] - m[q, q]) for j in cols]
            out += sum(w * h for w, h in zip(weights, hinges, strict=True)) / sum(weights)
        return out / len(ids)

    return (direction(s) + direction(s.T)) / 2


def kendall_all_reference(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mode "all", hinge, delta 0: mean over rows with a pair of the mean over pairs with
    y_a > y_b of [s_b − s_a]_+."""
    rows = []
    for q in range(scores.shape[0]):
        costs = [max(0.0, scores[q, b] - scores[q, a]) for a in range(scores.shape[1])
                 for b in range(scores.shape[1]) if labels[q, b] < labels[q, a]]
        if costs:
            rows.append(sum(costs) / len(costs))
    return sum(rows) / len(rows) if rows else 0.0


def ranks_reference(s: np.ndarray, caption_to_image: list[int]) -> tuple[list, list]:
    """i2t: captions scoring strictly above the image's best ground truth; t2i: images
    scoring strictly above the caption's own image (ties never count as ahead)."""
    i2t = []
    for i in range(s.shape[0]):
        own = [s[i, c] for c in range(s.shape[1]) if caption_to_image[c] == i]
        i2t.append(sum(s[i, c] > max(own) for c in range(s.shape[1])) if own else -1)
    t2i = [sum(s[i, c] > s[caption_to_image[c], c] for i in range(s.shape[0]))
           for c in range(s.shape[1])]
    return i2t, t2i


REFERENCES = {"vse0": lambda s, ids: hinge_reference(s, ids, "sum"),
              "vsepp": lambda s, ids: hinge_reference(s, ids, "max"),
              "infonce": infonce_reference, "triplet_sn": triplet_sn_reference}

# ---- inputs ------------------------------------------------------------------------------

#: Coordinates from a coarse grid make exact ties between similarities common.
coordinates = st.one_of(st.floats(-1, 1), st.sampled_from([-1.0, -0.5, 0.0, 0.5, 1.0]))


@st.composite
def batches(draw: st.DrawFn, min_size: int = 1,
            max_size: int = 7) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(image_emb, text_emb [B, D] float64 unit rows, image ids) with repeated ids."""
    b, d = draw(st.integers(min_size, max_size)), draw(st.integers(2, 5))

    def unit_rows() -> torch.Tensor:
        rows = draw(hnp.arrays(np.float64, (b, d), elements=coordinates).filter(
            lambda a: (np.linalg.norm(a, axis=1) > 1e-3).all()))
        return torch.from_numpy(rows / np.linalg.norm(rows, axis=1, keepdims=True))

    return unit_rows(), unit_rows(), draw(st.lists(st.integers(0, 3), min_size=b, max_size=b))


def loss_of(name: str, image: torch.Tensor, text: torch.Tensor, ids: list[int]) -> torch.Tensor:
    return LOSS_MODULES[name]()(image, text, torch.tensor(ids), epoch=5).loss


# ---- losses ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(LOSS_MODULES))
@PROPERTY
@given(batch=batches(), order=st.randoms(use_true_random=False))
def test_loss_matches_reference_and_ignores_batch_order(name: str, batch: tuple,
                                                        order: Any) -> None:
    image, text, ids = batch
    loss = loss_of(name, image, text, ids)
    assert math.isclose(loss.item(), REFERENCES[name]((image @ text.T).numpy(), ids),
                        rel_tol=1e-9, abs_tol=1e-12)
    perm = list(range(len(ids)))
    order.shuffle(perm)
    shuffled = loss_of(name, image[perm], text[perm], [ids[k] for k in perm])
    assert math.isclose(shuffled.item(), loss.item(), rel_tol=1e-9, abs_tol=1e-12)


@pytest.mark.parametrize("name", sorted(LOSS_MODULES))
@PROPERTY
@given(batch=batches(max_size=1))
def test_single_item_batch_is_zero_with_finite_zero_gradient(name: str, batch: tuple) -> None:
    image, text, ids = batch
    image.requires_grad_(True)
    text.requires_grad_(True)
    loss = loss_of(name, image, text, ids)
    loss.backward()
    assert loss.item() == 0.0
    for grad in (image.grad, text.grad):
        assert grad is not None and torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("name", sorted(LOSS_MODULES))
def test_all_equal_similarities(name: str) -> None:
    """Every similarity tied (identical embeddings, distinct images): the hinge losses pay
    the margin for every negative, InfoNCE log(B), Triplet-SN the margin."""
    b = 4
    image = text = torch.ones(b, 3, dtype=torch.float64) / math.sqrt(3)
    loss = loss_of(name, image, text, list(range(b))).item()
    expected = {"vse0": 2 * (b - 1) * MARGIN, "vsepp": 2 * MARGIN, "infonce": math.log(b),
                "triplet_sn": MARGIN}[name]
    assert math.isclose(loss, expected, rel_tol=1e-12)


@PROPERTY
@given(batch=batches(min_size=2), c=st.floats(0.01, 100))
def test_hinge_is_positively_homogeneous_and_infonce_sees_only_the_product(
        batch: tuple, c: float) -> None:
    """vsepp(c·S, c·m) = c·vsepp(S, m); infonce(c·S, scale) = infonce(S, c·scale)."""
    image, text, ids = batch
    sims = image @ text.T
    mask = torch.tensor(ids)[:, None] == torch.tensor(ids)[None, :]
    scaled = vsepp_loss(c * sims, mask, c * MARGIN, "mean")
    assert math.isclose(scaled.item(), c * vsepp_loss(sims, mask, MARGIN, "mean").item(),
                        rel_tol=1e-9, abs_tol=1e-12)
    a = infonce_loss(PairSims.from_matrix(c * sims), mask, torch.tensor(SCALE, dtype=torch.float64))
    b = infonce_loss(PairSims.from_matrix(sims), mask, torch.tensor(c * SCALE, dtype=torch.float64))
    assert math.isclose(a.item(), b.item(), rel_tol=1e-9, abs_tol=1e-12)


@pytest.mark.parametrize("name", sorted(LOSS_MODULES))
@PROPERTY
@given(batch=batches(min_size=2), where=st.tuples(st.booleans(), st.integers(0, 6),
                                                  st.integers(0, 4)))
def test_nan_input_is_never_trained_on_silently(name: str, batch: tuple,
                                                where: tuple[bool, int, int]) -> None:
    """A NaN anywhere makes the loss or a gradient non-finite, which the trainer skips."""
    image, text, ids = batch
    side, row, col = where
    target = image if side else text
    target[row % target.shape[0], col % target.shape[1]] = float("nan")
    image.requires_grad_(True)
    text.requires_grad_(True)
    loss = loss_of(name, image, text, ids)
    loss.backward()
    finite = (torch.isfinite(loss) & torch.isfinite(image.grad).all()
              & torch.isfinite(text.grad).all())
    assert not bool(finite)


@PROPERTY
@given(data=st.data(), q=st.integers(1, 4), n=st.integers(1, 6))
def test_kendall_all_pairs_reference_ties_and_order(data: st.DataObject, q: int,
                                                    n: int) -> None:
    """Mode "all" equals the loop reference (tied labels never pair, tied scores cost 0);
    permuting candidates (columns) or queries (rows) changes nothing."""
    scores = data.draw(hnp.arrays(np.float64, (q, n), elements=coordinates))
    labels = data.draw(hnp.arrays(np.float64, (q, n), elements=coordinates))
    loss = kendall_rank_loss(torch.from_numpy(scores), torch.from_numpy(labels), mode="all")
    assert math.isclose(loss.item(), kendall_all_reference(scores, labels), rel_tol=1e-9,
                        abs_tol=1e-12)
    cols = data.draw(st.permutations(range(n)))
    rows = data.draw(st.permutations(range(q)))
    moved = kendall_rank_loss(torch.from_numpy(scores[rows][:, cols]),
                              torch.from_numpy(labels[rows][:, cols]), mode="all")
    assert math.isclose(moved.item(), loss.item(), rel_tol=1e-9, abs_tol=1e-12)


@PROPERTY
@given(data=st.data(), q=st.integers(1, 4), n=st.integers(1, 6))
def test_kendall_swhs_ignores_order_without_ties(data: st.DataObject, q: int, n: int) -> None:
    """SW-HS sorts by label: with distinct labels and scores, column order is irrelevant;
    all-equal labels give no pair, so 0."""
    distinct = st.lists(st.floats(-1, 1), min_size=n, max_size=n, unique=True)
    scores = np.array([data.draw(distinct) for _ in range(q)])
    labels = np.array([data.draw(distinct) for _ in range(q)])
    cols = data.draw(st.permutations(range(n)))
    window = data.draw(st.none() | st.integers(1, 3))
    a = kendall_rank_loss(torch.from_numpy(scores), torch.from_numpy(labels), window=window)
    b = kendall_rank_loss(torch.from_numpy(scores[:, cols]), torch.from_numpy(labels[:, cols]),
                          window=window)
    assert math.isclose(a.item(), b.item(), rel_tol=1e-9, abs_tol=1e-12)
    flat = kendall_rank_loss(torch.from_numpy(scores), torch.zeros(q, n, dtype=torch.float64))
    assert flat.item() == 0.0


@PROPERTY
@given(data=st.data(), b=st.integers(1, 5), extra=st.integers(0, 4))
def test_fne_weights_follow_their_candidates(data: st.DataObject, b: int, extra: int) -> None:
    """Permuting the candidates (columns) permutes FNE's sampling weights the same way;
    weights are finite, non-negative, and every row keeps a positive entry."""
    n = b + extra
    sims = torch.from_numpy(data.draw(hnp.arrays(np.float64, (b, n), elements=coordinates)))
    pos = sims[:, :b].diagonal().clone()
    mask = torch.zeros(b, n, dtype=torch.bool)
    mask[:, :b] = torch.eye(b, dtype=torch.bool)
    stats = {"pos_mean": 0.5, "pos_var": 0.01, "neg_mean": 0.0, "neg_var": 0.02, "count": 300}
    stats_obj = type("Stats", (), stats)()
    hardest = torch.zeros(b, dtype=torch.long)
    weights = negative_sampling_weights(sims, pos, mask, stats_obj, hardest, min_count=10)
    assert torch.isfinite(weights).all() and (weights >= 0).all()
    assert (weights.sum(dim=1) > 0).all()
    cols = data.draw(st.permutations(range(n)))
    moved_hardest = torch.tensor([cols.index(int(h)) for h in hardest])
    moved = negative_sampling_weights(sims[:, cols], pos, mask[:, cols], stats_obj,
                                      moved_hardest, min_count=10)
    assert torch.equal(moved, weights[:, cols])


# ---- metrics -----------------------------------------------------------------------------


@st.composite
def score_matrices(draw: st.DrawFn) -> tuple[np.ndarray, list[int]]:
    """(sims [n_img, n_cap] float64, caption → image), ties common, every image captioned."""
    n_img = draw(st.integers(1, 5))
    owners = draw(st.lists(st.integers(0, n_img - 1), min_size=n_img, max_size=3 * n_img))
    owners = list(range(n_img)) + owners[n_img:]
    owners = draw(st.permutations(owners))
    sims = draw(hnp.arrays(np.float64, (n_img, len(owners)), elements=coordinates))
    return sims, owners


@PROPERTY
@given(case=score_matrices())
def test_ranks_match_reference_with_ties(case: tuple[np.ndarray, list[int]]) -> None:
    sims, owners = case
    i2t, t2i = retrieval_ranks(sims, owners)
    assert (list(i2t), list(t2i)) == ranks_reference(sims, owners)


@PROPERTY
@given(case=score_matrices(), data=st.data())
def test_metrics_ignore_order_and_monotone_transforms(case: tuple[np.ndarray, list[int]],
                                                      data: st.DataObject) -> None:
    """Relabelling images or captions, or a strictly increasing map of every score (positive
    scale + shift, exp), leaves every metric unchanged."""
    sims, owners = case
    metrics = retrieval_metrics(sims, owners)
    rows = data.draw(st.permutations(range(sims.shape[0])))
    cols = data.draw(st.permutations(range(sims.shape[1])))
    new_index = {old: new for new, old in enumerate(rows)}
    moved = retrieval_metrics(sims[rows][:, cols], [new_index[owners[c]] for c in cols])
    assert moved == metrics
    c, shift = data.draw(st.floats(0.5, 8)), data.draw(st.floats(-3, 3))
    for mapped in (c * sims + shift, np.exp(sims)):
        if same_order(sims, mapped):  # rounding can merge near-equal scores: then skip
            assert retrieval_metrics(mapped, owners) == metrics


def same_order(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether every pair of entries compares the same way in ``a`` and ``b``."""
    return bool((np.unique(a, return_inverse=True)[1] == np.unique(b, return_inverse=True)[1])
                .all())


def test_metrics_single_pair_and_all_ties() -> None:
    single = retrieval_metrics(np.array([[0.3]]), [0])
    assert single["rsum"] == 600 and single["i2t_medr"] == single["t2i_meanr"] == 1
    tied = retrieval_metrics(np.zeros((4, 8)), [0, 0, 1, 1, 2, 2, 3, 3])
    assert tied["rsum"] == 600  # a tied candidate never counts as ahead of the ground truth


@pytest.mark.parametrize("bad", [float("nan")])
def test_metrics_refuse_nan_scores(bad: float) -> None:
    sims = np.random.default_rng(0).random((3, 6))
    sims[1, 4] = bad
    with pytest.raises(VsekitError, match=r"NaN at \[1, 4\]"):
        retrieval_metrics(sims, [0, 0, 1, 1, 2, 2])
