"""The PNG figures a run directory keeps: ``vsekit train`` writes them at the end of a run and
``vsekit report`` draws the missing ones."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vsekit.data import load_splits
from vsekit.errors import VsekitError
from vsekit.report import analysis
from vsekit.report.plots import (
    Plot,
    bcls_labels,
    epoch_gaussians,
    false_negative_rates,
    fne_similarities,
    save_png,
    training_curves,
)
from vsekit.report.runs import RunRecord, load_run

TRAINING_CURVES = "training_curves.png"
FALSE_NEGATIVES = "false_negatives.png"
FNE_SIMILARITIES = "fne_similarities.png"
BCLS_LABELS = "bcls_labels.png"
#: Run-directory figures in the order a report shows them.
RUN_PLOTS = (TRAINING_CURVES, FALSE_NEGATIVES, FNE_SIMILARITIES, BCLS_LABELS)
SAMPLE_IMAGES = 400  # training images (with all their captions) the model figures encode
SAMPLE_SEED = 0


@dataclass
class RunPlots:
    """Figures of one run directory: the PNG files present and why any expected one is not."""

    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _model_plots(run: RunRecord, wanted: set[str]) -> tuple[dict[str, Plot], list[str]]:
    """The FNE / BCLS figures that need the trained model (newest step checkpoint)."""
    fne, bcls = analysis.fne_params(run.config), analysis.bcls_params(run.config)
    wanted = {name for name, on in ((FNE_SIMILARITIES, fne), (BCLS_LABELS, bcls))
              if on is not None and name in wanted}
    if not wanted:
        return {}, []
    split = load_splits(run.config.data).get("train")
    if split is None:
        return {}, ["the dataset has no train split to draw the FNE / BCLS figures from"]
    model, loss_state, checkpoint = analysis.last_model(run.path, run.config, split)
    sample = analysis.encode_sample(model, split, SAMPLE_IMAGES, SAMPLE_SEED,
                                    run.config.eval.batch_size)
    where = (f"{sample.split.n_images} training images and their {sample.split.n_captions} "
             f"captions, model of {checkpoint}")
    plots, notes = {}, []
    if FNE_SIMILARITIES in wanted:
        batch = min(run.config.train.batch_size, sample.split.n_captions)
        positives, negatives = analysis.fne_histograms(sample, batch, SAMPLE_SEED)
        plots[FNE_SIMILARITIES] = fne_similarities(
            positives, negatives, analysis.fne_stats(loss_state),
            epoch_gaussians(run.kind("train")), fne.prior_ratio,
            f"{where}, in-batch with batches of {batch}")
    if BCLS_LABELS in wanted:
        try:
            pairs = analysis.label_pairs(sample, split, bcls)
        except VsekitError as exc:  # e.g. the label cache was deleted since training
            notes.append(f"no BCLS label figure: {exc}")
        else:
            plots[BCLS_LABELS] = bcls_labels(pairs.labels, pairs.sims, pairs.ground_truth,
                                             pairs.tau, run.rows, where)
    return plots, notes


def write_run_plots(run_dir: Path | str, *, missing_only: bool = False) -> RunPlots:
    """Draw a run's figures into its directory as PNG (title and alt text inside).

    ``training_curves.png`` (loss, dev rsum, learning rate); ``false_negatives.png`` where the
    log has the true false-negative rate per epoch (built-in dataset); ``fne_similarities.png``
    for FNE runs (histograms of in-batch positive and hardest-negative similarities of the
    newest checkpoint's model on a training sample, FNE's fitted Gaussians and posterior p(s),
    p(s) per epoch from the log); ``bcls_labels.png`` for BCLS runs (pseudo label vs model
    similarity, Kendall τ over training). ``missing_only`` keeps figures already there.
    """
    run = load_run(Path(run_dir))
    result = RunPlots()
    wanted = {name for name in RUN_PLOTS
              if not (missing_only and (run.path / name).is_file())}
    plots: dict[str, Plot | None] = {}
    if TRAINING_CURVES in wanted:
        plots[TRAINING_CURVES] = training_curves([run])
    if FALSE_NEGATIVES in wanted:
        plots[FALSE_NEGATIVES] = false_negative_rates([run])
    model_plots, result.notes = _model_plots(run, wanted)
    plots.update(model_plots)
    for name, plot in plots.items():
        if plot is not None:
            save_png(plot, run.path / name)
    result.files = [run.path / name for name in RUN_PLOTS if (run.path / name).is_file()]
    return result
