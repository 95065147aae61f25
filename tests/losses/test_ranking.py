"""Baseline ranking losses against slow plain-loop references (float64)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vsekit.errors import VsekitError
from vsekit.losses import LOSSES, InfoNCELoss, VSE0Loss, VSEPPLoss
from vsekit.losses.ranking import (
    HingeParams,
    InfoNCEParams,
    PairSims,
    VSEPPParams,
    anchor_hinges,
    exclusion_mask,
    pair_hinges,
    similarity_diagnostics,
    vse0_loss,
    vsepp_loss,
)

HINGE_NAMES = ["vse0", "vsepp"]
ALL_NAMES = ["vse0", "vsepp", "infonce"]


# --------------------------------------------------------------------------- helpers


def make_batch(seed: int, batch: int, dim: int, n_ids: int,
               dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, ...]:
    """Normalised leaf embeddings (requires_grad) and random ids with repeats."""
    gen = torch.Generator().manual_seed(seed)
    image = torch.nn.functional.normalize(torch.randn(batch, dim, generator=gen, dtype=dtype), dim=1)
    text = torch.nn.functional.normalize(torch.randn(batch, dim, generator=gen, dtype=dtype), dim=1)
    ids = torch.randint(0, n_ids, (batch,), generator=gen, dtype=torch.int64)
    return image.requires_grad_(), text.requires_grad_(), ids


def build(name: str, **params: object) -> torch.nn.Module:
    parsed_name, parsed = LOSSES.parse({"name": name, **params}, "loss")
    return LOSSES.build(parsed_name, parsed)


def ref_sims(image: torch.Tensor, text: torch.Tensor) -> list[list[torch.Tensor]]:
    batch, dim = image.shape
    return [[sum(image[i, d] * text[j, d] for d in range(dim)) for j in range(batch)]
            for i in range(batch)]


def excluded(ids: list[int], i: int, j: int, mask_same_image: bool) -> bool:
    return i == j or (mask_same_image and ids[i] == ids[j])


def anchor_pairs(anchor: int, batch: int) -> list[list[tuple[int, int]]]:
    """(image, caption) index pairs of image anchor ``anchor``, then of caption anchor ``anchor``."""
    return [[(anchor, k) for k in range(batch)], [(k, anchor) for k in range(batch)]]


def ref_anchor_hinges(sims: list[list[torch.Tensor]], ids: list[int], margin: float,
                      mask_same_image: bool) -> list[list[torch.Tensor]]:
    """Per anchor of both directions: the hinges of its admissible negatives."""
    zero = sims[0][0] * 0
    anchors = []
    for anchor in range(len(ids)):
        for pairs in anchor_pairs(anchor, len(ids)):
            row = []
            for i, j in pairs:
                if not excluded(ids, i, j, mask_same_image):
                    h = margin + sims[i][j] - sims[anchor][anchor]
                    row.append(h if h > 0 else zero)
            anchors.append(row)
    return anchors


def ref_hinge_loss(image, text, ids, name, margin, reduction, mask_same_image) -> torch.Tensor:
    sims = ref_sims(image, text)
    anchors = ref_anchor_hinges(sims, ids.tolist(), margin, mask_same_image)
    total = sims[0][0] * 0
    for hinges in anchors:
        if not hinges:
            continue
        if name == "vse0":
            for h in hinges:
                total = total + h
        else:
            hardest = hinges[0]
            for h in hinges[1:]:
                if h > hardest:
                    hardest = h
            total = total + hardest
    return total / len(ids) if reduction == "mean" else total


def ref_infonce(image, text, ids, scale, mask_same_image) -> torch.Tensor:
    sims = ref_sims(image, text)
    ids = ids.tolist()
    total = sims[0][0] * 0
    for anchor in range(len(ids)):
        for pairs in anchor_pairs(anchor, len(ids)):
            denominator = 0.0
            for i, j in pairs:
                if i == j == anchor or not excluded(ids, i, j, mask_same_image):
                    denominator = denominator + torch.exp(scale * sims[i][j])
            total = total + torch.log(denominator) - scale * sims[anchor][anchor]
    return total / (2 * len(ids))


def ref_diagnostics(image, text, ids, margin, mask_same_image) -> dict[str, float]:
    sims = [[val(s) for s in row] for row in ref_sims(image.detach(), text.detach())]
    ids = ids.tolist()
    batch = len(ids)
    hardest, active, admissible = [], 0, 0
    for anchor in range(batch):
        for pairs in anchor_pairs(anchor, batch):
            negatives = [sims[i][j] for i, j in pairs if not excluded(ids, i, j, mask_same_image)]
            if negatives:
                hardest.append(max(negatives))
            admissible += len(negatives)
            active += sum(margin + s - sims[anchor][anchor] > 0 for s in negatives)
    return {
        "pos_sim": sum(sims[i][i] for i in range(batch)) / batch,
        "hard_neg_sim": sum(hardest) / len(hardest) if hardest else 0.0,
        "active_hinges": active / admissible if admissible else 0.0,
    }


def val(tensor: torch.Tensor) -> float:
    """The Python value of a 0-d tensor, detached."""
    return tensor.detach().item()


def grads(value: torch.Tensor, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(value, inputs, allow_unused=True)


# --------------------------------------------------------------------------- pure functions


@pytest.mark.parametrize("integer_sims", [False, True], ids=["random", "ties"])
def test_hinge_costs_match_definition(integer_sims: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    batch = 7
    sims = torch.randn(batch, batch, generator=gen, dtype=torch.float64)
    if integer_sims:
        sims = torch.randint(-2, 3, (batch, batch), generator=gen).double() / 10
    mask = torch.rand(batch, batch, generator=gen) < 0.3
    mask |= torch.eye(batch, dtype=torch.bool)
    # both directions as anchor rows: caption anchor j's row holds column j of the matrix
    cost_i2t, cost_t2i = pair_hinges(PairSims.from_matrix(sims), mask, 0.2)
    for i in range(batch):
        for j in range(batch):
            want_i2t = 0.0 if mask[i, j] else max(0.0, 0.2 + val(sims[i, j]) - val(sims[i, i]))
            want_t2i = 0.0 if mask[i, j] else max(0.0, 0.2 + val(sims[i, j]) - val(sims[j, j]))
            assert val(cost_i2t[i, j]) == pytest.approx(want_i2t, abs=1e-12)
            assert val(cost_t2i[j, i]) == pytest.approx(want_t2i, abs=1e-12)


def test_anchor_hinges_use_the_given_positive_column() -> None:
    """Rows of a rank's anchors against a wider candidate set (DDP): positives off-diagonal."""
    gen = torch.Generator().manual_seed(2)
    sims = torch.randn(3, 8, generator=gen, dtype=torch.float64)
    positive = torch.tensor([4, 5, 6])
    mask = torch.zeros(3, 8, dtype=torch.bool)
    mask[torch.arange(3), positive] = True
    mask[0, 1] = True
    cost = anchor_hinges(sims, positive, mask, 0.3)
    for i in range(3):
        for j in range(8):
            want = 0.0 if mask[i, j] else max(0.0, 0.3 + val(sims[i, j] - sims[i, positive[i]]))
            assert val(cost[i, j]) == pytest.approx(want, abs=1e-12)


def test_vsepp_on_tied_similarity_matrix() -> None:
    sims = torch.tensor([[0.5, 0.5, 0.5], [0.5, 0.5, 0.5], [0.1, 0.5, 0.5]], dtype=torch.float64)
    mask = torch.eye(3, dtype=torch.bool)
    # i2t rows: 0.2, 0.2, max(0.2 + 0.1 - 0.5, 0.2 + 0.5 - 0.5) = 0.2.
    # t2i columns: max(0.2, 0.2 - 0.4 -> 0) = 0.2, 0.2, 0.2.
    assert val(vsepp_loss(sims, mask, 0.2, "sum")) == pytest.approx(1.2)
    # vse0 sum: i2t 0.4 + 0.4 + 0.2; t2i 0.2 + 0.4 + 0.4.
    assert val(vse0_loss(sims, mask, 0.2, "sum")) == pytest.approx(2.0)


def test_exclusion_mask_modes() -> None:
    ids = torch.tensor([3, 1, 3])
    same = exclusion_mask(ids, True)
    diagonal = exclusion_mask(ids, False)
    for i in range(3):
        for j in range(3):
            assert bool(same[i, j]) == (ids[i] == ids[j])
            assert bool(diagonal[i, j]) == (i == j)


# --------------------------------------------------------------------------- values and gradients


@pytest.mark.parametrize("name", HINGE_NAMES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("mask_same_image", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
def test_hinge_losses_match_reference(name, reduction, mask_same_image, seed) -> None:
    image, text, ids = make_batch(seed, batch=7, dim=5, n_ids=4)
    assert len(set(ids.tolist())) < len(ids)  # several captions of one image in the batch
    loss = build(name, margin=0.3, reduction=reduction, mask_same_image=mask_same_image)
    got = loss(image, text, ids).loss
    want = ref_hinge_loss(image, text, ids, name, 0.3, reduction, mask_same_image)
    assert val(got) == pytest.approx(val(want), rel=1e-10, abs=1e-12)
    assert val(got) > 0
    for g, w in zip(grads(got, image, text), grads(want, image, text), strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("mask_same_image", [True, False])
@pytest.mark.parametrize("learn_temperature", [True, False])
def test_infonce_matches_reference(mask_same_image, learn_temperature) -> None:
    image, text, ids = make_batch(2, batch=7, dim=5, n_ids=4)
    loss = build("infonce", temperature=0.1, learn_temperature=learn_temperature,
                 mask_same_image=mask_same_image).double()
    with torch.no_grad():  # the float32 init of log(10) would limit the comparison to 1e-7
        loss.logit_scale.fill_(math.log(10.0))
    log_scale = torch.tensor(math.log(10.0), dtype=torch.float64, requires_grad=True)
    got = loss(image, text, ids).loss
    want = ref_infonce(image, text, ids, log_scale.exp(), mask_same_image)
    assert val(got) == pytest.approx(val(want), rel=1e-10)
    inputs = (image, text, loss.logit_scale) if learn_temperature else (image, text)
    for g, w in zip(grads(got, *inputs), grads(want, image, text, log_scale), strict=False):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_gradients_match_finite_differences(name) -> None:
    image, text, ids = make_batch(3, batch=6, dim=4, n_ids=3)
    loss = build(name).double()
    assert torch.autograd.gradcheck(lambda a, b: loss(a, b, ids).loss, (image, text))


def test_mask_same_image_changes_hinge_loss() -> None:
    image, text, ids = make_batch(4, batch=6, dim=4, n_ids=2)
    masked = build("vse0", mask_same_image=True)(image, text, ids).loss
    unmasked = build("vse0", mask_same_image=False)(image, text, ids).loss
    assert val(unmasked) > val(masked)


# --------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("name", ALL_NAMES)
def test_batch_of_one_has_zero_loss_and_finite_grads(name) -> None:
    image, text, ids = make_batch(5, batch=1, dim=4, n_ids=1)
    out = build(name, mask_same_image=False)(image, text, ids)
    assert val(out.loss) == pytest.approx(0.0, abs=1e-12)
    for g in grads(out.loss, image, text):
        assert torch.isfinite(g).all() and val(g.abs().max()) < 1e-12
    assert val(out.diagnostics["hard_neg_sim"]) == 0.0


@pytest.mark.parametrize("name", ALL_NAMES)
@pytest.mark.parametrize("mask_same_image", [True, False])
def test_all_same_id_batch(name, mask_same_image) -> None:
    image, text, ids = make_batch(6, batch=5, dim=4, n_ids=1)
    out = build(name, mask_same_image=mask_same_image)(image, text, ids)
    if name == "infonce":
        want = ref_infonce(image, text, ids, 1 / 0.07, mask_same_image)
    else:
        want = ref_hinge_loss(image, text, ids, name, 0.2, "mean", mask_same_image)
    assert val(out.loss) == pytest.approx(val(want), rel=1e-6, abs=1e-12)
    assert (val(out.loss) == 0.0) == mask_same_image
    for g in grads(out.loss, image, text):
        assert torch.isfinite(g).all()


@pytest.mark.parametrize("name", ALL_NAMES)
def test_tied_embeddings(name) -> None:
    image, text, ids = make_batch(7, batch=6, dim=4, n_ids=6)
    with torch.no_grad():
        image[1] = image[0]
        image[4] = image[3]
        text[2] = text[0]
        text[5] = text[0]
    if name == "infonce":
        want = ref_infonce(image, text, ids, 1 / 0.07, True)
    else:
        want = ref_hinge_loss(image, text, ids, name, 0.2, "sum", True)
    loss = build(name) if name == "infonce" else build(name, reduction="sum")
    out = loss(image, text, ids)
    assert val(out.loss) == pytest.approx(val(want), rel=1e-6)
    for g in grads(out.loss, image, text):
        assert torch.isfinite(g).all()


@pytest.mark.parametrize("name", HINGE_NAMES)
@pytest.mark.parametrize("tied", ["image", "text"])
def test_zero_margin_exact_ties_give_no_gradient(name, tied) -> None:
    image, text, _ = make_batch(8, batch=3, dim=4, n_ids=3)
    ids = torch.tensor([0, 1, 2])
    with torch.no_grad():  # a copied row makes negatives tie their positives: zero hinges
        (image if tied == "image" else text)[1] = (image if tied == "image" else text)[0]
    out = build(name, margin=0.0)(image, text, ids)
    want = ref_hinge_loss(image, text, ids, name, 0.0, "mean", True)
    assert val(out.loss) == pytest.approx(val(want), abs=1e-12)
    for g, w in zip(grads(out.loss, image, text), grads(want, image, text), strict=True):
        torch.testing.assert_close(g, torch.zeros_like(g) if w is None else w)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_similarity_diagnostics_with_arbitrary_mask(seed) -> None:
    gen = torch.Generator().manual_seed(seed)
    sims = torch.randn(6, 6, generator=gen, dtype=torch.float64)
    mask = (torch.rand(6, 6, generator=gen) < 0.4) | torch.eye(6, dtype=torch.bool)
    mask[2] = True  # image anchor 2 has no negative
    mask[:, 4] = True  # caption anchor 4 has none either
    hardest = []
    for a in range(6):
        row = [val(sims[a, k]) for k in range(6) if not mask[a, k]]
        col = [val(sims[k, a]) for k in range(6) if not mask[k, a]]
        hardest += [max(c) for c in (row, col) if c]
    got = similarity_diagnostics(PairSims.from_matrix(sims), mask)
    assert val(got["hard_neg_sim"]) == pytest.approx(sum(hardest) / len(hardest), rel=1e-12)
    assert val(got["pos_sim"]) == pytest.approx(sum(val(sims[a, a]) for a in range(6)) / 6)
    everything = similarity_diagnostics(PairSims.from_matrix(sims),
                                        torch.ones(6, 6, dtype=torch.bool))
    assert val(everything["hard_neg_sim"]) == 0.0


# --------------------------------------------------------------------------- diagnostics


@pytest.mark.parametrize("name", ALL_NAMES)
@pytest.mark.parametrize("mask_same_image", [True, False])
def test_diagnostics_match_reference(name, mask_same_image) -> None:
    image, text, ids = make_batch(9, batch=7, dim=5, n_ids=3)
    out = build(name, mask_same_image=mask_same_image)(image, text, ids)
    want = ref_diagnostics(image, text, ids, 0.2, mask_same_image)
    expected_keys = {"pos_sim", "hard_neg_sim"} | (
        {"temperature"} if name == "infonce" else {"active_hinges"})
    assert set(out.diagnostics) == expected_keys
    for key, value in out.diagnostics.items():
        assert value.ndim == 0 and not value.requires_grad
        if key == "temperature":
            assert val(value) == pytest.approx(0.07, rel=1e-6)
        else:  # active_hinges is a float32 ratio of counts
            assert val(value) == pytest.approx(want[key], rel=1e-6, abs=1e-12)


# --------------------------------------------------------------------------- temperature


def test_learned_temperature_is_a_parameter_with_gradient() -> None:
    loss = build("infonce")
    params = list(loss.parameters())
    assert len(params) == 1 and params[0] is loss.logit_scale
    assert val(loss.logit_scale) == pytest.approx(math.log(1 / 0.07))
    image, text, ids = make_batch(10, batch=6, dim=4, n_ids=4, dtype=torch.float32)
    loss(image, text, ids).loss.backward()
    assert loss.logit_scale.grad is not None and val(loss.logit_scale.grad.abs()) > 0


def test_fixed_temperature_is_a_buffer() -> None:
    loss = build("infonce", learn_temperature=False, temperature=0.05)
    assert list(loss.parameters()) == []
    assert "logit_scale" in loss.state_dict()
    image, text, ids = make_batch(11, batch=4, dim=4, n_ids=4, dtype=torch.float32)
    assert val(loss(image, text, ids).diagnostics["temperature"]) == pytest.approx(0.05)


def test_learned_scale_is_clamped_to_max() -> None:
    loss = build("infonce", max_logit_scale=50.0)
    with torch.no_grad():
        loss.logit_scale.fill_(math.log(200.0))
    image, text, ids = make_batch(12, batch=4, dim=4, n_ids=4, dtype=torch.float32)
    out = loss(image, text, ids)
    assert val(out.diagnostics["temperature"]) == pytest.approx(1 / 50.0, rel=1e-5)
    assert val(loss.logit_scale) == pytest.approx(math.log(50.0), rel=1e-6)
    out.loss.backward()
    assert val(loss.logit_scale.grad.abs()) > 0


# --------------------------------------------------------------------------- dtype and context


@pytest.mark.parametrize("name", ALL_NAMES)
def test_autocast_keeps_float32_math_and_ignores_context(name) -> None:
    image, text, ids = make_batch(13, batch=6, dim=8, n_ids=4, dtype=torch.float32)
    loss = build(name)
    plain = loss(image, text, ids).loss
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        mixed = loss(image, text, ids, epoch=2, step=10, queue=None).loss
    assert mixed.dtype == torch.float32
    assert val(mixed) == pytest.approx(val(plain), rel=1e-6)


# --------------------------------------------------------------------------- registry and errors


def test_registry_round_trip() -> None:
    name, params = LOSSES.parse({"name": "vsepp", "margin": 0.1}, "loss")
    assert name == "vsepp" and params == VSEPPParams(margin=0.1)
    loss = LOSSES.build(name, params)
    assert isinstance(loss, VSEPPLoss) and loss.params.margin == 0.1
    image, text, ids = make_batch(14, batch=5, dim=4, n_ids=3)
    want = ref_hinge_loss(image, text, ids, "vsepp", 0.1, "mean", True)
    assert val(loss(image, text, ids).loss) == pytest.approx(val(want), rel=1e-10)
    assert isinstance(build("vse0"), VSE0Loss)
    assert isinstance(build("infonce"), InfoNCELoss)
    assert LOSSES.parse({"name": "infonce", "learn_temperature": "false"}, "loss")[1] == \
        InfoNCEParams(learn_temperature=False)


@pytest.mark.parametrize("section, fragment", [
    ({"name": "vsepp", "margn": 0.1}, "margin"),
    ({"name": "vsepp", "reduction": "avg"}, "reduction"),
    ({"name": "vse0", "margin": -0.1}, "margin"),
    ({"name": "infonce", "temperature": 0.0}, "temperature"),
    ({"name": "infonce", "temperature": 0.005}, "temperature"),
    ({"name": "infonce", "max_logit_scale": -1}, "max_logit_scale"),
    ({"name": "infonce", "learn_temperature": "maybe"}, "learn_temperature"),
    ({"name": "vsep"}, "vsepp"),
])
def test_bad_params_raise_one_line_error(section, fragment) -> None:
    with pytest.raises(VsekitError, match=fragment) as info:
        LOSSES.parse(section, "loss")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("shapes", [
    ((4, 3), (4, 5), (4,)),
    ((4, 3), (3, 3), (4,)),
    ((4, 3), (4, 3), (3,)),
    ((4, 3), (4, 3), (4, 1)),
    ((4,), (4,), (4,)),
    ((0, 3), (0, 3), (0,)),
])
@pytest.mark.parametrize("name", ALL_NAMES)
def test_bad_shapes_raise_vsekit_error(name, shapes) -> None:
    image_shape, text_shape, id_shape = shapes
    with pytest.raises(VsekitError, match="loss"):
        build(name)(torch.zeros(image_shape), torch.zeros(text_shape),
                    torch.zeros(id_shape, dtype=torch.int64))


# --------------------------------------------------------------------------- properties


batches = st.tuples(st.integers(0, 2**31 - 1), st.integers(1, 8), st.integers(1, 6),
                    st.integers(1, 8))


@settings(max_examples=40, deadline=None)
@given(batch=batches, name=st.sampled_from(ALL_NAMES), mask_same_image=st.booleans())
def test_permuting_the_batch_keeps_the_loss(batch, name, mask_same_image) -> None:
    seed, size, dim, n_ids = batch
    image, text, ids = make_batch(seed, size, dim, n_ids)
    perm = torch.randperm(size, generator=torch.Generator().manual_seed(seed))
    loss = build(name, mask_same_image=mask_same_image).double()
    before = loss(image, text, ids)
    after = loss(image[perm], text[perm], ids[perm])
    assert val(after.loss) == pytest.approx(val(before.loss), rel=1e-9, abs=1e-12)
    for key, value in before.diagnostics.items():
        assert val(after.diagnostics[key]) == pytest.approx(val(value), rel=1e-9, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(batch=batches, margin=st.floats(0.0, 1.0), mask_same_image=st.booleans(),
       reduction=st.sampled_from(["mean", "sum"]))
def test_hinge_losses_are_ordered_and_non_negative(batch, margin, mask_same_image,
                                                   reduction) -> None:
    seed, size, dim, n_ids = batch
    image, text, ids = make_batch(seed, size, dim, n_ids)
    params = {"margin": margin, "mask_same_image": mask_same_image, "reduction": reduction}
    hardest = val(build("vsepp", **params)(image, text, ids).loss)
    total = val(build("vse0", **params)(image, text, ids).loss)
    assert 0.0 <= hardest <= total + 1e-12
    infonce = val(build("infonce", mask_same_image=mask_same_image)(image, text, ids).loss)
    assert infonce >= -1e-12


def test_vsepp_mean_warmup_uses_sum_of_hinges_first() -> None:
    gen = torch.Generator().manual_seed(3)
    img = torch.nn.functional.normalize(torch.randn(6, 4, generator=gen), dim=1)
    txt = torch.nn.functional.normalize(torch.randn(6, 4, generator=gen), dim=1)
    ids = torch.tensor([0, 1, 1, 2, 3, 4])
    warm = VSEPPLoss(VSEPPParams(mean_warmup_epochs=2))
    vse0 = VSE0Loss(HingeParams())(img, txt, ids).loss
    vsepp = VSEPPLoss(VSEPPParams())(img, txt, ids).loss
    assert torch.allclose(warm(img, txt, ids, epoch=0).loss, vse0)
    assert torch.allclose(warm(img, txt, ids, epoch=1).loss, vse0)
    assert torch.allclose(warm(img, txt, ids, epoch=2).loss, vsepp)
    assert not torch.allclose(vse0, vsepp)
