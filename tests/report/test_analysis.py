"""In-batch similarities for FNE's histograms and the Gaussians read from a checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vsekit.losses.stats import Observations, SimilarityStats
from vsekit.report.analysis import fne_stats, gaussians_from_moments, inbatch_similarities


def reference_inbatch(image_emb, text_emb, c2i, groups, batch_size, seed):
    order = torch.randperm(len(text_emb), generator=torch.Generator().manual_seed(seed))
    n_full = max(len(order) // batch_size, 1)
    positives, negatives = [], []
    for k in range(n_full):
        rows = order[k * batch_size:(k + 1) * batch_size].tolist()
        for a in rows:
            img = image_emb[c2i[a]]
            positives.append(float(img @ text_emb[a]))
            best = [float(img @ text_emb[b]) for b in rows if groups[c2i[b]] != groups[c2i[a]]]
            if best:
                negatives.append(max(best))
        for a in rows:
            txt = text_emb[a]
            best = [float(image_emb[c2i[b]] @ txt) for b in rows
                    if groups[c2i[b]] != groups[c2i[a]]]
            if best:
                negatives.append(max(best))
    return positives, negatives


@pytest.mark.parametrize(("n_images", "batch_size"), [(10, 8), (7, 50), (12, 5)])
def test_inbatch_similarities_match_a_loop(n_images: int, batch_size: int) -> None:
    gen = torch.Generator().manual_seed(n_images)
    per_image = torch.randint(1, 4, (n_images,), generator=gen)
    c2i = torch.repeat_interleave(torch.arange(n_images), per_image)
    groups = torch.arange(n_images) // 2  # pairs of rows share an image id
    image_emb = torch.nn.functional.normalize(torch.randn(n_images, 6, generator=gen), dim=1)
    text_emb = torch.nn.functional.normalize(torch.randn(len(c2i), 6, generator=gen), dim=1)
    pos, neg = inbatch_similarities(image_emb, text_emb, c2i, groups, batch_size,
                                    torch.Generator().manual_seed(3))
    ref_pos, ref_neg = reference_inbatch(image_emb, text_emb, c2i.tolist(), groups.tolist(),
                                         batch_size, 3)
    np.testing.assert_allclose(pos.numpy(), ref_pos, atol=1e-6)
    np.testing.assert_allclose(neg.numpy(), ref_neg, atol=1e-6)


def test_gaussians_from_checkpoint_moments() -> None:
    stats = SimilarityStats(exact_variance=True)
    values_pos, values_neg = torch.rand(40, dtype=torch.float64), torch.rand(70, dtype=torch.float64)
    for chunk in range(0, 40, 10):
        stats.update(Observations(values_pos[chunk:chunk + 10], torch.ones(10, dtype=torch.bool),
                                  values_neg[chunk:chunk + 10], torch.ones(10, dtype=torch.bool)))
    stats.update(Observations(values_pos[:0], torch.ones(0, dtype=torch.bool),
                              values_neg[40:], torch.ones(30, dtype=torch.bool)))
    found = fne_stats({"base.stats.moments": stats.moments.clone(), "queue.ids": torch.zeros(3)})
    assert found.count == 40
    assert found.pos_mean == pytest.approx(float(values_pos.mean()))
    assert found.pos_var == pytest.approx(float(values_pos.var()))
    assert found.neg_mean == pytest.approx(float(values_neg.mean()))
    assert found.neg_var == pytest.approx(float(values_neg.var()))
    assert gaussians_from_moments(torch.zeros(2, 3, dtype=torch.float64)) is None
    assert fne_stats({"logit_scale": torch.ones(())}) is None
