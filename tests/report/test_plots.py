"""Figure helpers: smoothing, log series, FNE posterior and Gaussians per epoch, PNG text."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vsekit.report.plots import (
    Gaussians,
    epoch_gaussians,
    fne_similarities,
    png_text,
    posterior,
    save_png,
    series,
    smooth,
)


def test_smooth_is_an_exponential_moving_average() -> None:
    values = [2.0, 4.0, 0.0, 6.0]
    alpha = 2 / (3 + 1)
    expected, running = [], None
    for v in values:
        running = v if running is None else (1 - alpha) * running + alpha * v
        expected.append(running)
    np.testing.assert_allclose(smooth(values, 3), expected)
    np.testing.assert_allclose(smooth(values, 1), values)
    assert smooth([], 5).shape == (0,)


def test_series_skips_rows_without_a_finite_value() -> None:
    rows = [{"step": 1, "loss": 0.5}, {"step": 2}, {"step": 3, "loss": float("nan")},
            {"step": 4, "loss": 0.25}]
    x, y = series(rows, "loss")
    assert x.tolist() == [1.0, 4.0] and y.tolist() == [0.5, 0.25]
    assert series(rows, "rsum")[0].size == 0


def test_posterior_matches_the_bayes_formula() -> None:
    stats = Gaussians(pos_mean=0.6, pos_var=0.01, neg_mean=0.3, neg_var=0.02)
    s = np.linspace(0.0, 0.9, 19)
    for ratio in (2.0, 100.0, 10000.0):
        expected = []
        for value in s:
            p_pos = math.exp(-(value - 0.6) ** 2 / 0.02) / math.sqrt(2 * math.pi * 0.01)
            p_neg = math.exp(-(value - 0.3) ** 2 / 0.04) / math.sqrt(2 * math.pi * 0.02)
            expected.append(p_pos / (p_pos + (ratio - 1) * p_neg))
        np.testing.assert_allclose(posterior(s, stats, ratio), expected, rtol=1e-9, atol=1e-15)


def test_epoch_gaussians_take_each_epochs_last_ready_row() -> None:
    rows = [
        {"epoch": 0, "fne_ready": 0.0, "pos_mean": 0, "pos_std": 0, "neg_mean": 0, "neg_std": 0},
        {"epoch": 1, "fne_ready": 1.0, "pos_mean": 0.5, "pos_std": 0.1, "neg_mean": 0.2,
         "neg_std": 0.2},
        {"epoch": 1, "fne_ready": 1.0, "pos_mean": 0.6, "pos_std": 0.1, "neg_mean": 0.3,
         "neg_std": 0.3},
        {"epoch": 2, "fne_ready": 0.0, "pos_mean": 0.9, "pos_std": 0.1, "neg_mean": 0.3,
         "neg_std": 0.3},
        {"epoch": 3, "loss": 1.0},
    ]
    found = epoch_gaussians(rows)
    assert [epoch for epoch, _ in found] == [1]
    stats = found[0][1]
    assert (stats.pos_mean, stats.neg_mean) == (0.6, 0.3)
    assert stats.pos_var == pytest.approx(0.01) and stats.neg_var == pytest.approx(0.09)


def test_fne_figure_keeps_title_and_alt_text_in_the_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(0.6, 0.1, 300), rng.normal(0.3, 0.1, 600)
    final = Gaussians(0.6, 0.01, 0.3, 0.01, 300)
    plot = fne_similarities(pos, neg, final, [(1, final), (2, final)], 100.0, "a test sample")
    assert f"positives mean {pos.mean():.2f}" in plot.alt
    assert "μ=0.60" in plot.alt and "after each of 2 epochs" in plot.alt
    path = save_png(plot, tmp_path / "fne.png")
    assert png_text(path) == (plot.title, plot.alt)
    with Image.open(path) as image:
        assert 800 <= image.width <= 1100
    empty = fne_similarities(pos, neg, None, [], 100.0, "a test sample")
    assert "statistics were empty" in empty.alt
