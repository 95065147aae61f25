"""FNE loss-path speed: vsekit vs a port of the reference implementation (LuminosityX/FNE).

Times the FNE loss path, both directions: the two B×N similarity matrices, statistics update,
sampling weights, one weighted draw per anchor and the hinge on the drawn negative. Inputs are seeded,
structured unit embeddings: B anchors against pools of N = B + Q candidates (batch momentum
features + queue), with repeated image ids (several captions per image). Both sides start from
the same statistics (warmed up past ``min_count`` on identical batches, so the Gaussian branch
runs), get the same inputs every repetition, and must end with the same statistics and give the
same sampling weights (asserted in float64 to 1e-9; in float32 to 1e-5, save decisions whose input
lies within 1e-6 of a threshold, which the two roundings may split). Both paths are timed forward only (no autograd) and forward + backward (gradient to the online
embeddings), single-threaded by default; each includes its two B×N similarity matmuls. A third
line times vsekit with ``sampler: multinomial`` (the reference's ``torch.multinomial``).

    python benchmarks/fne_loss.py            # B = 128, Q = 8224, D = 256 (CPU)
    python benchmarks/fne_loss.py --quick    # small smoke run
    python benchmarks/fne_loss.py --full-step configs/demo.yaml --threads 2   # whole steps
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from vsekit.losses.fne import (
    FNEParams,
    Pools,
    fallback_index,
    fne_loss_path,
    sampling_weights,
)
from vsekit.losses.ranking import batch_similarities
from vsekit.losses.stats import SimilarityStats, inbatch_observations

FULL = {"batch": 128, "queue": 8224, "dim": 256, "repeats": 21}
QUICK = {"batch": 16, "queue": 64, "dim": 32, "repeats": 3}


# --------------------------------------------------------------------------- reference port
# A port of LuminosityX/FNE loss.py (HardTripletLoss with average_sims_scores and
# choice_negative, epoch >= 1) and model.py (AverageSims, VarianceSims), for timing only.
# Changes: `.cuda()` → the input's device; choice_negative's weight part is a function of its
# own (reference_weights) so the benchmark can compare weights; names are snake_case.
# Everything else, including the per-row Python loops with `.item()`, is kept.


class AverageSimsPort:
    """Running mean (reference AverageSims)."""

    def __init__(self) -> None:
        self.sum: Any = 0
        self.count = 0
        self.avg: Any = 0

    def update(self, val: Any, n: int = 1) -> None:
        self.sum += val * n
        self.count += n
        self.avg = self.sum / self.count


class VarianceSimsPort:
    """Approximate running variance (reference VarianceSims)."""

    def __init__(self) -> None:
        self.sum: Any = 0
        self.count = 0
        self.var: Any = 0

    def update(self, val: Any, avg: Any, n: int = 1) -> None:
        self.sum += (val * n - avg) ** 2
        self.count += n
        self.var = self.sum / (self.count - 1)


class ReferenceState:
    """The four statistics tools of the reference model."""

    def __init__(self) -> None:
        self.avg_pos, self.var_pos = AverageSimsPort(), VarianceSimsPort()
        self.avg_neg, self.var_neg = AverageSimsPort(), VarianceSimsPort()


def average_sims_scores_port(img: torch.Tensor, txt: torch.Tensor, st: ReferenceState) -> None:
    scores = img @ txt.T
    scores_t = scores.T
    match_index_i2t = scores.sort(1, descending=True)[1]
    match_index_t2i = scores_t.sort(1, descending=True)[1]
    eye = (torch.eye(scores.size(0)) > 0.5).to(scores.device)
    cost_s = scores.masked_fill(eye, 0).max(1)[0]
    cost_im = scores_t.masked_fill(eye, 0).max(1)[0]
    for i in range(scores.size(0)):
        if match_index_i2t[i][0].item() == i and match_index_t2i[i][0].item() == i:
            st.avg_pos.update(scores[i, i])
            st.avg_neg.update(cost_s[i])
            st.avg_neg.update(cost_im[i])
    for i in range(scores.size(0)):
        if match_index_i2t[i][0].item() == i and match_index_t2i[i][0].item() == i:
            st.var_pos.update(scores[i, i], st.avg_pos.avg)
            st.var_neg.update(cost_s[i], st.avg_neg.avg)
            st.var_neg.update(cost_im[i], st.avg_neg.avg)


def normal_scores_port(mean: Any, var: Any, x: torch.Tensor) -> torch.Tensor:
    return torch.distributions.Normal(mean, torch.sqrt(var)).log_prob(x).exp()


def reference_weights(pos_sims: torch.Tensor, sims: torch.Tensor, mask: torch.Tensor,
                      st: ReferenceState, nums_right_sims: int, index: torch.Tensor,
                      margin: float) -> torch.Tensor:
    tau, match_para, false_margin = 0.5, 10000, 0.999
    neg_scores = torch.exp(-(sims - pos_sims) ** 2 * tau)
    if st.avg_pos.count > nums_right_sims:
        pos_p = normal_scores_port(st.avg_pos.avg, st.var_pos.var, sims)
        neg_p = normal_scores_port(st.avg_neg.avg, st.var_neg.var, sims)
        match_p = pos_p / (pos_p + (match_para - 1) * neg_p)
        no_match_p = 1 - match_p
        match_p = torch.exp(-match_p * tau)
        match_mask = no_match_p < false_margin
        neg_scores[match_mask] = match_p[match_mask]
    neg_scores = neg_scores.masked_fill_(mask, 0)
    margin_mask = sims <= (st.avg_pos.avg - margin)
    neg_scores = neg_scores.masked_fill_(margin_mask, 0)
    for i, sum_i in enumerate(neg_scores.sum(1)):
        if sum_i == 0:
            neg_scores[i, index[i]] = 1.0
    return neg_scores


def choice_negative_port(pos_sims: torch.Tensor, sims: torch.Tensor, mask: torch.Tensor,
                         st: ReferenceState, nums_right_sims: int, index: torch.Tensor,
                         margin: float) -> torch.Tensor:
    weights = reference_weights(pos_sims, sims, mask, st, nums_right_sims, index, margin)
    return torch.multinomial(weights, 1)


def hard_triplet_loss_port(im: torch.Tensor, s: torch.Tensor, sims_i2t: torch.Tensor,
                           sims_t2i: torch.Tensor, margin: float, mask: torch.Tensor,
                           st: ReferenceState, nums_right_sims: int) -> torch.Tensor:
    """HardTripletLoss, epoch >= 1 branch (sum over anchors, both directions)."""
    d1 = sims_i2t.diag().view(sims_i2t.size(0), 1).expand_as(sims_i2t)
    d2 = sims_t2i.diag().view(sims_t2i.size(0), 1).expand_as(sims_t2i)
    cost_s = (margin + sims_i2t - d1).clamp(min=0).masked_fill_(mask, 0)
    cost_im = (margin + sims_t2i - d2).clamp(min=0).masked_fill_(mask, 0)
    cost_s_index, cost_im_index = cost_s.max(1)[1], cost_im.max(1)[1]
    average_sims_scores_port(im, s, st)
    index_s = choice_negative_port(d1.detach(), sims_i2t.detach(), mask, st, nums_right_sims,
                                   cost_s_index, margin)
    index_im = choice_negative_port(d2.detach(), sims_t2i.detach(), mask, st, nums_right_sims,
                                    cost_im_index, margin)
    return cost_s.gather(1, index_s).sum() + cost_im.gather(1, index_im).sum()


# --------------------------------------------------------------------------- inputs


def unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)


def make_inputs(batch: int, queue: int, dim: int, seed: int, dtype: torch.dtype
                ) -> dict[str, torch.Tensor]:
    """Online embeddings, pool similarities and the same-image mask of one step.

    Pairs share a common direction (negatives ≈ 0.3), captions of one image share its latent
    (positives ≈ 0.6), and latents cluster by concept (a tail of hard negatives).
    """
    gen = torch.Generator().manual_seed(seed)
    n_images = (batch + queue) // 3 + 1
    common = unit(torch.randn(dim, generator=gen))
    concepts = unit(torch.randn(max(n_images // 20, 1), dim, generator=gen))
    concept_of = torch.randint(0, len(concepts), (n_images,), generator=gen)
    latent = unit(concepts[concept_of] + 1.5 * unit(torch.randn(n_images, dim, generator=gen)))

    def embed(image: torch.Tensor) -> torch.Tensor:
        noise = unit(torch.randn(len(image), dim, generator=gen))
        return unit(0.55 * common + 0.55 * latent[image] + 0.63 * noise)

    ids = torch.randint(0, n_images, (batch,), generator=gen)
    queue_ids = torch.randint(0, n_images, (queue,), generator=gen)
    image, text = embed(ids), embed(ids)
    pool_ids = torch.cat([ids, queue_ids])
    image_pool, caption_pool = embed(pool_ids), embed(pool_ids)
    image_pool[:batch], caption_pool[:batch] = unit(image + 0.05 * embed(ids)), unit(
        text + 0.05 * embed(ids))
    cast = {k: v.to(dtype) for k, v in {"image": image, "text": text, "image_pool": image_pool,
                                        "caption_pool": caption_pool}.items()}
    cast["sims_i2t"] = cast["image"] @ cast["caption_pool"].T
    cast["sims_t2i"] = cast["text"] @ cast["image_pool"].T
    cast["mask"] = ids[:, None] == pool_ids[None, :]
    return cast


def warm_statistics(batch: int, dim: int, dtype: torch.dtype, steps: int
                    ) -> tuple[ReferenceState, SimilarityStats]:
    """Both statistics after the same ``steps`` in-batch updates (well past min_count)."""
    ref, ours = ReferenceState(), SimilarityStats()
    for k in range(steps):
        x = make_inputs(batch, 30 * batch, dim, seed=1000 + k, dtype=dtype)
        average_sims_scores_port(x["image"], x["text"], ref)
        ours.update(inbatch_observations(x["image"] @ x["text"].T))
    return ref, ours


def assert_same_state(ref: ReferenceState, ours: SimilarityStats, rtol: float) -> None:
    pairs = {"pos_mean": ref.avg_pos.avg, "pos_var": ref.var_pos.var,
             "neg_mean": ref.avg_neg.avg, "neg_var": ref.var_neg.var}
    for name, value in pairs.items():
        torch.testing.assert_close(getattr(ours, name).to(value.dtype), value, rtol=rtol,
                                   atol=0, msg=f"statistics differ: {name}")
    assert int(ours.count) == ref.avg_pos.count, "statistics differ: count"


def check_weights(x: dict[str, torch.Tensor], ref: ReferenceState, ours: SimilarityStats,
                  params: FNEParams, rtol: float, band: float) -> tuple[float, int, int]:
    """Assert equal weights, both directions, save for decisions within ``band`` of a threshold.

    Elementwise comparisons (cut-down s ≤ μ⁺ − m, false-negative branch 1 − P < γ) flip where
    the two sides' roundings straddle the threshold; in float32 a million candidates put a few
    within rounding of one. Returns (largest |diff| elsewhere, boundary flips, weights that
    took the false-negative branch).
    """
    worst, flips, fn_branch = 0.0, 0, 0
    for key in ("sims_i2t", "sims_t2i"):
        sims = x[key]
        pos = sims[:, : sims.shape[0]].diagonal()
        fallback = fallback_index(sims, pos, x["mask"], params.margin)
        theirs = reference_weights(pos[:, None], sims, x["mask"], ref, params.min_count,
                                   fallback, params.margin)
        found = sampling_weights(sims, pos, x["mask"], ours, fallback, **params.weight_kwargs())
        posterior = found.posterior
        boundary = ((sims - (ref.avg_pos.avg - params.margin)).abs() <= band) | (
            ((1 - posterior) - params.false_margin).abs() <= band)
        differ = ~torch.isclose(found.weights, theirs, rtol=rtol, atol=rtol)
        assert not (differ & ~boundary).any(), f"sampling weights differ ({key})"
        flips += int((differ & boundary).sum())
        worst = max(worst, float((found.weights - theirs).abs().masked_fill(boundary, 0).max()))
        fn_branch += int((found.keep & (1 - posterior < params.false_margin)).sum())
    return worst, flips, fn_branch


# --------------------------------------------------------------------------- timing


def time_paths(paths: dict[str, Callable[..., torch.Tensor]], image: torch.Tensor,
               text: torch.Tensor, backward: bool, repeats: int) -> dict[str, float]:
    """Median seconds of each path(image, text), with ``loss.backward()`` when ``backward``."""

    def step(path: Callable[..., torch.Tensor]) -> None:
        loss = path(image, text)
        if backward:
            loss.backward()

    times: dict[str, list[float]] = {name: [] for name in paths}
    with torch.set_grad_enabled(backward):
        for path in paths.values():  # warm caches and allocator
            step(path)
        for _ in range(repeats):  # interleaved: load changes on a shared CPU hit every path
            for name, path in paths.items():
                start = time.perf_counter()
                step(path)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def loss_path_benchmark(quick: bool) -> None:
    """Equal weights, then the timings of the reference port and vsekit's loss path."""
    size = QUICK if quick else FULL
    batch, queue, dim, repeats = size["batch"], size["queue"], size["dim"], size["repeats"]
    params = FNEParams(queue_size=queue)
    warm_steps = params.min_count // batch + 3 if not quick else 30
    if quick:
        params = FNEParams(queue_size=queue, min_count=20)

    # Equality: float64 (tight) and float32 (the training dtype).
    for dtype, rtol, band in ((torch.float64, 1e-9, 0.0), (torch.float32, 1e-5, 1e-6)):
        ref, ours = warm_statistics(batch, dim, dtype, warm_steps)
        assert_same_state(ref, ours, rtol=rtol)
        assert ref.avg_pos.count > params.min_count, "warm-up too short for the Gaussian branch"
        worst, flips, fn_branch = check_weights(make_inputs(batch, queue, dim, 0, dtype), ref,
                                                ours, params, rtol, band)
        print(f"equal weights ({str(dtype)[6:]}): max |diff| = {worst:.1e}, {flips} threshold "
              f"flips within {band:g}, {fn_branch} weights on the false-negative branch "
              f"(n+ = {ref.avg_pos.count}, μ+ = {float(ours.pos_mean):.3f}, "
              f"μ- = {float(ours.neg_mean):.3f})")

    x = make_inputs(batch, queue, dim, 0, torch.float32)
    ref, ours = warm_statistics(batch, dim, torch.float32, warm_steps)
    generator = torch.Generator().manual_seed(0)
    ids = torch.zeros(batch, dtype=torch.int64)
    pools = Pools(image=x["image_pool"], caption=x["caption_pool"])

    def reference_path(image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        sims_i2t, sims_t2i = image @ pools.caption.T, text @ pools.image.T
        return hard_triplet_loss_port(image, text, sims_i2t, sims_t2i, params.margin,
                                      x["mask"], ref, params.min_count) / batch

    def vsekit_path(stats: SimilarityStats, options: FNEParams) -> Callable[..., torch.Tensor]:
        def run(image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
            inbatch = batch_similarities(image, text, ids)
            return fne_loss_path(inbatch, image, text, pools, x["mask"], stats, options,
                                 generator).loss

        return run

    paths = {"reference port (HardTripletLoss)": reference_path,
             "vsekit fne_loss_path": vsekit_path(ours, params),
             "  same, sampler: multinomial": vsekit_path(
                 copy.deepcopy(ours), dataclasses.replace(params, sampler="multinomial"))}
    print(f"device: CPU ({platform.processor() or platform.machine()}), "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"B = {batch}, N = B + {queue} = {batch + queue}, D = {dim}, median of {repeats}; "
          "each path includes its two B×N similarity matmuls")
    for backward in (False, True):
        image, text = (x[k].detach().requires_grad_(backward) for k in ("image", "text"))
        times = time_paths(paths, image, text, backward, repeats)
        t_ref = times["reference port (HardTripletLoss)"]
        print("forward + backward:" if backward else "forward (no autograd):")
        for name, seconds in times.items():
            print(f"  {name:34s} {seconds * 1e3:8.2f} ms  ({t_ref / seconds:.2f}x)")
    assert_same_state(ref, ours, rtol=1e-5)  # both took the same number of updates


def full_step_benchmark(config_path: str, overrides: list[str], steps: int) -> None:
    """Whole training steps (forward, loss, backward, clip, optimiser) of one recipe's model
    and batches, with the recipe's loss replaced by ``vsepp`` and by ``fne`` (past its
    warm-up); the two trainers alternate step by step."""
    from vsekit.config import load_config
    from vsekit.data.loader import train_loader
    from vsekit.train.trainer import Trainer

    trainers = {}
    run_root = tempfile.TemporaryDirectory(prefix="fne-bench-")
    for name, section in {"vsepp": {"name": "vsepp", "margin": 0.2},
                          "fne": {"name": "fne"}}.items():
        config = load_config(config_path, overrides)
        config.loss = section
        config.validate()
        trainers[name] = Trainer(config, Path(run_root.name) / name, progress=False)
        trainers[name].model.train()
    first = trainers["vsepp"]
    loader = train_loader(first.train_split, first.model, batch_size=config.train.batch_size,
                          seed=config.seed, epoch=0)
    batches = [b for _, b in zip(range(steps + 2), loader, strict=False)]
    times: dict[str, list[float]] = {name: [] for name in trainers}
    for k, batch in enumerate(batches):
        for name, trainer in trainers.items():
            start = time.perf_counter()
            trainer.train_step(batch, epoch=1)
            if trainer.device.type == "cuda":
                torch.cuda.synchronize()
            if k >= 2:  # the first two warm the allocator, cuDNN and the queue
                times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(values) for name, values in times.items()}
    for name, seconds in median.items():
        print(f"{name:6s} step: {seconds * 1e3:9.2f} ms (median of {steps}, device "
              f"{first.device}, batch {config.train.batch_size})")
    print(f"FNE / VSE++ step time: {median['fne'] / median['vsepp']:.2f}x")
    run_root.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: stable timings on a shared machine)")
    parser.add_argument("--full-step", metavar="CONFIG",
                        help="instead, time whole training steps of this recipe, VSE++ vs FNE")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for --full-step (repeatable)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps for --full-step")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.full_step:
        full_step_benchmark(args.full_step, args.set, args.steps)
    else:
        loss_path_benchmark(args.quick)


if __name__ == "__main__":
    main()
