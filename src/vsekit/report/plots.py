"""Static report figures (matplotlib, PNG): arrays and log rows in, a :class:`Plot` out.

Every figure uses the Okabe-Ito colour-blind-safe palette (and line styles or markers where two
series could be confused), is sized for a laptop screen (about 1000 px wide) and carries a
title and an alt text; :func:`save_png` stores both inside the PNG (``Title`` and
``Description`` text chunks), so a report reading the file back still has them.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from vsekit.losses.fne import log_odds
from vsekit.report.runs import RunRecord

#: Okabe & Ito (2008): distinguishable with every common colour-vision deficiency.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000",
           "#F0E442")
BLUE, ORANGE, GREEN, VERMILLION = PALETTE[:4]
STYLE = {
    "axes.prop_cycle": matplotlib.cycler(color=PALETTE),
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
    "savefig.dpi": 100,
}
WIDTH = 10.0  # inches at 100 dpi: 1000 px
LOG_SPAN = 30.0  # a loss axis spanning more than this factor is drawn on a log scale
POSTERIOR_RANGE = (1e-6, 1.5)  # y range of posterior curves (log scale: R makes p(s) tiny)


@dataclass
class Plot:
    """A drawn figure with the words a reader without the image needs."""

    figure: Figure
    title: str
    alt: str


@contextmanager
def styled() -> Iterator[None]:
    """The report's matplotlib style, for drawing and saving (nothing global is changed)."""
    with matplotlib.rc_context(STYLE):
        yield


def png_bytes(plot: Plot) -> bytes:
    """The figure as PNG bytes with ``Title`` and ``Description`` (alt text) metadata."""
    buffer = io.BytesIO()
    with styled():
        plot.figure.savefig(buffer, format="png", bbox_inches="tight",
                            metadata={"Title": plot.title, "Description": plot.alt})
    return buffer.getvalue()


def save_png(plot: Plot, path: Path) -> Path:
    """Write the figure to ``path`` (PNG with its title and alt text inside)."""
    path.write_bytes(png_bytes(plot))
    return path


def png_text(path: Path) -> tuple[str, str]:
    """(title, alt text) stored in a PNG by :func:`save_png` (empty strings when absent)."""
    with Image.open(path) as image:
        text = getattr(image, "text", {}) or {}
    return text.get("Title", ""), text.get("Description", "")


def smooth(values: Sequence[float], span: int) -> np.ndarray:
    """Exponential moving average with weight 2 / (span + 1) per new value, same length."""
    out = np.empty(len(values))
    alpha = 2.0 / (max(span, 1) + 1)
    running = math.nan
    for i, value in enumerate(values):
        running = value if math.isnan(running) else running + alpha * (value - running)
        out[i] = running
    return out


def series(rows: Sequence[dict[str, Any]], key: str, x: str = "step"
           ) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) float arrays of the rows that have a finite ``key``."""
    kept = [(float(r[x]), float(r[key])) for r in rows
            if key in r and math.isfinite(float(r[key]))]
    if not kept:
        return np.empty(0), np.empty(0)
    return tuple(np.array(v) for v in zip(*kept, strict=True))


def _figure(n_panels: int, height: float = 3.4) -> tuple[Figure, list[Any]]:
    with styled():
        figure = Figure(figsize=(WIDTH, height), layout="constrained")
        axes = figure.subplots(1, n_panels, squeeze=False)[0]
    return figure, list(axes)


def _colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


# --------------------------------------------------------------------------- training


def training_curves(runs: Sequence[RunRecord]) -> Plot:
    """Training loss (faint: logged values, solid: smoothed), dev rsum per evaluation and the
    learning rate, one colour per run."""
    figure, (loss_ax, rsum_ax, lr_ax) = _figure(3)
    notes = []
    with styled():
        for i, run in enumerate(runs):
            colour, train = _colour(i), run.kind("train")
            steps, loss = series(train, "loss")
            if len(loss):
                loss_ax.plot(steps, loss, color=colour, alpha=0.25, linewidth=0.8)
                loss_ax.plot(steps, smooth(loss, max(len(loss) // 30, 1)), color=colour,
                             label=run.name)
                notes.append(f"{run.name}: loss {loss[0]:.3f} at step {steps[0]:.0f} to "
                             f"{loss[-1]:.3f} at step {steps[-1]:.0f}")
            epochs, rsum = series(run.kind("dev"), "rsum", x="epoch")
            if len(rsum):
                rsum_ax.plot(epochs + 1, rsum, marker="o", color=colour, label=run.name)
                best = int(np.argmax(rsum))
                notes.append(f"best dev rsum {rsum[best]:.1f} after epoch {epochs[best] + 1:.0f}")
            steps, lr = series(train, "lr")
            if len(lr):
                lr_ax.plot(steps, lr, color=colour, label=run.name)
        loss_ax.set(title="training loss", xlabel="step", ylabel="loss")
        low, high = loss_ax.dataLim.y0, loss_ax.dataLim.y1
        if np.isfinite([low, high]).all() and low > 0 and high / low > LOG_SPAN:  # e.g. warm-up
            loss_ax.set(yscale="log", ylabel="loss (log scale)")
        rsum_ax.set(title="dev rsum (sum of six R@K)", xlabel="epoch", ylabel="rsum")
        rsum_ax.xaxis.get_major_locator().set_params(integer=True)
        lr_ax.set(title="learning rate", xlabel="step", ylabel="lr")
        lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        if len(runs) > 1:
            loss_ax.legend(fontsize=9)
    alt = ("Three line charts over training: loss by step, dev rsum by epoch, learning rate by "
           "step. " + "; ".join(notes or ["No training rows were logged."]))
    return Plot(figure, "Training curves", alt)


def false_negative_rates(runs: Sequence[RunRecord]) -> Plot | None:
    """Percent of chosen training negatives that truly match their anchor, per epoch (the
    built-in dataset knows complete relevance); None when no run logged it."""
    figure, (ax,) = _figure(1, height=3.2)
    notes = []
    with styled():
        for i, run in enumerate(runs):
            rows = run.kind("epoch")
            for key, style, label in (("true_fn_rate_i2t", "-", "image→text"),
                                      ("true_fn_rate_t2i", "--", "text→image")):
                epochs, rate = series(rows, key, x="epoch")
                if len(rate):
                    name = f"{run.name}: {label}" if len(runs) > 1 else label
                    ax.plot(epochs + 1, rate, style, marker="o", color=_colour(i), label=name)
                    notes.append(f"{name} {rate[0]:.1f}% in epoch 1, {rate[-1]:.1f}% in epoch "
                                 f"{epochs[-1] + 1:.0f}")
        if not notes:
            return None
        ax.set(title="chosen negatives that are true matches (false negatives)", xlabel="epoch",
               ylabel="% of chosen negatives")
        ax.set_ylim(bottom=0)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=9)
    alt = "Line chart of the false-negative rate of chosen negatives per epoch: " + \
        "; ".join(notes) + "."
    return Plot(figure, "False negatives among chosen negatives", alt)


# --------------------------------------------------------------------------- FNE


@dataclass
class Gaussians:
    """FNE's two similarity Gaussians (the fields :func:`vsekit.losses.fne.log_odds` reads);
    variances in squared similarity units, ``count`` = positives seen (n⁺)."""

    pos_mean: float
    pos_var: float
    neg_mean: float
    neg_var: float
    count: float = 0.0


def posterior(s: np.ndarray, stats: Gaussians, prior_ratio: float) -> np.ndarray:
    """FNE's false-negative posterior p(s) = sigmoid(ℓ(s)) at similarities ``s`` [K]."""
    ell = log_odds(torch.as_tensor(s, dtype=torch.float64), stats, prior_ratio)
    return torch.sigmoid(ell).numpy()


def _normal_pdf(s: np.ndarray, mean: float, var: float) -> np.ndarray:
    var = max(var, 1e-12)
    return np.exp(-0.5 * (s - mean) ** 2 / var) / math.sqrt(2 * math.pi * var)


def epoch_gaussians(rows: Sequence[dict[str, Any]]) -> list[tuple[int, Gaussians]]:
    """(epoch, Gaussians) from the last logged training row of each epoch whose statistics
    were in use (``fne_ready`` = 1; FNE resets them every epoch, so that row is the epoch's)."""
    last: dict[int, Gaussians] = {}
    for row in rows:
        if row.get("fne_ready") == 1.0 and all(k in row for k in ("pos_mean", "pos_std")):
            last[int(row["epoch"])] = Gaussians(row["pos_mean"], row["pos_std"] ** 2,
                                                row["neg_mean"], row["neg_std"] ** 2)
    return sorted(last.items())


def fne_similarities(positives: np.ndarray, negatives: np.ndarray, final: Gaussians | None,
                     per_epoch: Sequence[tuple[int, Gaussians]], prior_ratio: float,
                     where: str) -> Plot:
    """Histograms of positive and hardest-negative similarities with FNE's fitted Gaussians and
    posterior p(s) (left), and p(s) after each epoch of training (right, when logged).

    ``positives`` [P] and ``negatives`` [N] are cosines; ``final`` the statistics of the
    last epoch (None when empty); ``where`` says which model and data gave the histograms.
    """
    figure, axes = _figure(2 if per_epoch else 1, height=4.0)
    ax = axes[0]
    low = min(positives.min(), negatives.min(), final.neg_mean if final else 1.0) - 0.05
    high = max(positives.max(), negatives.max(), final.pos_mean if final else -1.0) + 0.05
    grid = np.linspace(low, high, 401)
    with styled():
        bins = np.linspace(low, high, 50)
        handles = [ax.hist(positives, bins=bins, density=True, color=BLUE, alpha=0.45,
                           label="positive pairs")[2][0],
                   ax.hist(negatives, bins=bins, density=True, color=ORANGE, alpha=0.45,
                           label="hardest negatives")[2][0]]
        if final is not None:
            handles += ax.plot(grid, _normal_pdf(grid, final.pos_mean, final.pos_var),
                               color=BLUE, label="fitted N(μ⁺, σ⁺²)")
            handles += ax.plot(grid, _normal_pdf(grid, final.neg_mean, final.neg_var), "--",
                               color=ORANGE, label="fitted N(μ⁻, σ⁻²)")
            twin = ax.twinx()
            handles += twin.plot(grid, posterior(grid, final, prior_ratio), ":", color="black",
                                 linewidth=2, label="posterior p(s), right axis")
            twin.set(yscale="log", ylim=POSTERIOR_RANGE, ylabel="p(false negative | s), log")
            twin.grid(False)
        ax.set(title="similarities, fitted Gaussians, posterior", xlabel="cosine similarity s",
               ylabel="density", xlim=(low, high))
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3,
                  fontsize=9)
        if per_epoch:
            right = axes[1]
            colours = matplotlib.colormaps["viridis"](np.linspace(0, 0.9, len(per_epoch)))
            for (epoch, stats), colour in zip(per_epoch, colours, strict=True):
                right.plot(grid, posterior(grid, stats, prior_ratio), color=colour,
                           label=f"epoch {epoch + 1}")
            right.set(title="posterior p(s) after each epoch", xlabel="cosine similarity s",
                      ylabel="p(false negative | s), log scale", yscale="log",
                      ylim=POSTERIOR_RANGE, xlim=(low, high))
            right.legend(fontsize=9, ncol=2 if len(per_epoch) > 5 else 1)
    text = (f"Histograms of {len(positives)} positive and {len(negatives)} hardest-negative "
            f"similarities ({where}): positives mean {positives.mean():.2f}, hardest "
            f"negatives mean {negatives.mean():.2f}. ")
    if final is None:
        text += "FNE's statistics were empty in the last epoch, so no Gaussian is drawn."
    else:
        text += (f"Fitted Gaussians: positives μ={final.pos_mean:.2f}, "
                 f"σ={math.sqrt(final.pos_var):.2f}; negatives μ={final.neg_mean:.2f}, "
                 f"σ={math.sqrt(final.neg_var):.2f}. ")
        above = grid >= final.neg_mean
        likely = posterior(grid[above], final, prior_ratio) >= 0.5
        text += (f"Above μ⁻ the posterior p(s) passes 0.5 at s≈{grid[above][likely][0]:.2f}."
                 if likely.any() else "Above μ⁻ the posterior p(s) stays below 0.5.")
    if per_epoch:
        text += f" Right: p(s) after each of {len(per_epoch)} epochs."
    return Plot(figure, "FNE similarity statistics", text)


# --------------------------------------------------------------------------- BCLS


def bcls_labels(labels: np.ndarray, sims: np.ndarray, ground_truth: np.ndarray, tau: float,
                runs_rows: Sequence[dict[str, Any]], where: str,
                max_points: int = 4000, seed: int = 0) -> Plot:
    """Pseudo label vs model similarity (left) and Kendall τ / rank loss over training (right).

    ``labels``, ``sims`` [Q, N] and bool ``ground_truth`` [Q, N] (the binary positives);
    ``tau`` the mean Kendall τ-b of the rows; ``runs_rows`` the run's log rows. At most
    ``max_points`` non-positive pairs are drawn (a seeded sample).
    """
    figure, (ax, right) = _figure(2, height=3.8)
    rng = np.random.default_rng(seed)
    others = np.flatnonzero(~ground_truth.ravel())
    if len(others) > max_points:
        others = rng.choice(others, max_points, replace=False)
    positives = np.flatnonzero(ground_truth.ravel())
    with styled():
        ax.scatter(labels.ravel()[others], sims.ravel()[others], s=6, alpha=0.35, color=ORANGE,
                   marker="o", linewidths=0, label="other pairs")
        ax.scatter(labels.ravel()[positives], sims.ravel()[positives], s=14, alpha=0.8,
                   color=BLUE, marker="^", linewidths=0, label="ground-truth pairs")
        ax.set(title=f"pseudo label vs model similarity (mean τ-b {tau:.3f})",
               xlabel="pseudo label (caption-embedding cosine)", ylabel="model similarity")
        ax.legend(fontsize=9, loc="upper left")
        notes = []
        dev = [r for r in runs_rows if r["kind"] == "dev"]
        epochs, graded = series(dev, "graded_i2t_kendall_tau", x="epoch")
        if len(graded):
            _, graded_t2i = series(dev, "graded_t2i_kendall_tau", x="epoch")
            right.plot(epochs + 1, graded, "-o", color=GREEN, label="dev τ-b image→text")
            right.plot(epochs + 1, graded_t2i, "--s", color=VERMILLION, label="dev τ-b text→image")
            right.set(title="Kendall τ-b vs true graded relevance (dev)", xlabel="epoch",
                      ylabel="τ-b")
            right.xaxis.get_major_locator().set_params(integer=True)
            notes.append(f"dev τ-b image→text {graded[0]:.3f} after epoch 1, {graded[-1]:.3f} "
                         f"after epoch {epochs[-1] + 1:.0f}")
        else:
            train = [r for r in runs_rows if r["kind"] == "train"]
            for key, style, colour, label in (("kendall_i2t", "-", GREEN, "image→text"),
                                              ("kendall_t2i", "--", VERMILLION, "text→image")):
                steps, loss = series(train, key)
                if len(loss):
                    right.plot(steps, smooth(loss, max(len(loss) // 30, 1)), style,
                               color=colour, label=label)
                    notes.append(f"Kendall rank loss {label} {loss[0]:.3f} to {loss[-1]:.3f}")
            right.set(title="Kendall rank loss (training, smoothed)", xlabel="step",
                      ylabel="loss")
        right.legend(fontsize=9)
    alt = (f"Scatter of pseudo label against model similarity for {len(others)} sampled pairs "
           f"and {len(positives)} ground-truth pairs ({where}); mean Kendall τ-b {tau:.3f}. "
           f"Right: {'; '.join(notes) or 'nothing logged over training'}.")
    return Plot(figure, "BCLS pseudo labels", alt)
