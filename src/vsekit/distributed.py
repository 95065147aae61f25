"""Training on several processes with PyTorch's own engine: torch.distributed + DDP, torchrun.

Conventions (docs/distributed.md has the user's view):

- ``train.batch_size`` is the *global* batch B. Each of the W processes ("ranks") takes B / W
  consecutive pairs of every global batch (:class:`vsekit.data.loader.EpochBatchSampler`), so
  the ranks' local batches, concatenated in rank order, are the batch one process would see.
- Losses see the negatives of the whole global batch: :func:`gather_rows` collects the
  embeddings of every rank (with gradient), and each rank computes the rows of its own
  anchors against all candidates. A rank returns its *share* of the global loss, scaled so
  that DDP's gradient average over ranks equals the gradient of one process with batch B
  (for a mean over the B anchors the share is simply the mean over the rank's own anchors;
  means over a data-dependent number of rows use :func:`global_mean`).
- Everything here is the identity, without communication or copies, when no process group
  is initialised or it has one process: the single-process path is unchanged.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import distributed as dist
from torch import nn

from vsekit.data.dataset import RetrievalSplit
from vsekit.errors import VsekitError
from vsekit.eval.encode import encode_split

# --------------------------------------------------------------------------- who am I


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """W, the number of processes (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank in 0 … W − 1 (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    """Rank 0: the process that logs, checkpoints and shows progress bars."""
    return rank() == 0


@dataclass(frozen=True)
class Shard:
    """This process's anchors are rows ``offset … offset + size − 1`` of a global batch of
    ``total`` rows (one process: offset 0, total = size)."""

    offset: int
    size: int
    total: int


def local_shard(size: int) -> Shard:
    """The :class:`Shard` of a local batch of ``size`` rows (every rank has the same size)."""
    return Shard(rank() * size, size, world_size() * size)


# --------------------------------------------------------------------------- collectives


class _GatherRows(torch.autograd.Function):
    """All-gather along dim 0; backward sums every rank's gradient of its copy (reduce-scatter)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        out = x.new_empty((world_size() * x.shape[0], *x.shape[1:]))
        dist.all_gather_single(out, x)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        out = grad.new_empty((grad.shape[0] // world_size(), *grad.shape[1:]))
        dist.reduce_scatter_single(out, grad)
        return out


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """x [n, ...] of every rank, concatenated in rank order: [W·n, ...], the same on all ranks.

    Differentiable: the backward pass sums, over ranks, the gradient each rank computed for
    this rank's rows (so ``loss_r`` of every rank reaches the rows' owner). Every rank must
    pass the same shape. One process: ``x`` itself.
    """
    if not is_distributed():
        return x
    if x.requires_grad:
        return _GatherRows.apply(x)
    out = x.new_empty((world_size() * x.shape[0], *x.shape[1:]))
    dist.all_gather_single(out, x.contiguous())
    return out


def gather_many(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """:func:`gather_rows` of several tensors of one shape and dtype in one collective
    (stacked along a new dim 1). One process: the tensors themselves."""
    if not is_distributed():
        return tensors
    return gather_rows(torch.stack(tensors, dim=1)).unbind(dim=1)


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """A new tensor: the elementwise sum of ``x`` over ranks (not differentiable). One
    process: ``x`` itself."""
    if not is_distributed():
        return x
    out = x.detach().clone()
    dist.all_reduce(out)
    return out


def global_mean(local_sum: torch.Tensor, local_count: torch.Tensor) -> torch.Tensor:
    """This rank's share of a mean over the items of all ranks (elementwise over any shape).

    One process: local_sum / max(count, 1). W processes: W · local_sum / max(Σ_r count_r, 1),
    whose average over ranks is the global mean Σ_r sum_r / Σ_r count_r (one all-reduce of
    the counts; gradient flows through ``local_sum``).
    """
    count = all_reduce_sum(local_count.to(local_sum.dtype)).clamp(min=1)
    return local_sum * world_size() / count if is_distributed() else local_sum / count


def any_rank(flags: list[bool], device: torch.device) -> list[bool]:
    """Elementwise OR of boolean flags over ranks (one all-reduce); one process: ``flags``."""
    if not is_distributed():
        return flags
    values = torch.tensor(flags, dtype=torch.int32, device=device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return [bool(v) for v in values.tolist()]


def average_gradients(params: Iterable[nn.Parameter]) -> None:
    """Average the ``.grad`` of parameters that DDP does not own (e.g. a loss's learned
    temperature) over ranks, in one all-reduce. No-op on one process."""
    grads = [p.grad for p in params if p.grad is not None]
    if not is_distributed() or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size()
    torch._foreach_copy_(grads, [f.view_as(g) for f, g in
                                 zip(flat.split([g.numel() for g in grads]), grads, strict=True)])


def mean_over_ranks(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """0-d tensors averaged over ranks (one all-reduce), as Python floats (for logging)."""
    if not values:
        return {}
    stacked = torch.stack([v.detach().double().reshape(()) for v in values.values()])
    stacked = all_reduce_sum(stacked) / world_size()
    return dict(zip(values, stacked.tolist(), strict=True))


def gather_objects(obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (pickled; small objects only)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait until every rank got here. No-op on one process."""
    if is_distributed():
        dist.barrier()


# --------------------------------------------------------------------------- lifecycle

#: Environment variables torchrun sets for every worker (env:// rendezvous).
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launched_by_torchrun() -> bool:
    """True in a worker started by torchrun (its rendezvous variables are set)."""
    return all(name in os.environ for name in TORCHRUN_ENV)


def launch_rank() -> int:
    """The global rank torchrun gave this process (0 outside torchrun), also when no process
    group is initialised (e.g. after the run)."""
    return int(os.environ["RANK"]) if launched_by_torchrun() else 0


def backend_for(device: torch.device) -> str:
    """``nccl`` for GPUs, ``gloo`` for CPUs."""
    return "nccl" if device.type == "cuda" else "gloo"


def local_device(device: torch.device) -> torch.device:
    """The device of this process: on GPUs ``cuda:LOCAL_RANK`` (one GPU per process)."""
    if device.type != "cuda" or not launched_by_torchrun():
        return device
    index = int(os.environ["LOCAL_RANK"])
    if index >= torch.cuda.device_count():
        raise VsekitError(f"process with local rank {index} has no GPU (this machine has "
                          f"{torch.cuda.device_count()}); start at most that many processes "
                          "per node")
    return torch.device("cuda", index)


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[None]:
    """Inside a torchrun worker of a job with several processes, initialise the default
    process group (env:// rendezvous; nccl on GPUs, gloo on CPUs) for the duration, and
    destroy it afterwards. Elsewhere (a plain process, or a group someone else initialised)
    do nothing."""
    if (not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1
            or dist.is_initialized()):
        yield
        return
    device = local_device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend_for(device), init_method="env://")
    try:
        yield
    finally:
        dist.destroy_process_group()


def wrap_model(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel when there are several processes, else itself.

    ``static_graph``: the same parameters take part in every step, and parameters the
    forward never uses (e.g. a transformer's pooler) are handled without a per-step graph
    search.
    """
    if not is_distributed():
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, static_graph=True)


def seed_for_rank(seed: int) -> int:
    """The seed of rank r's global RNGs (dropout etc.): ``seed`` on rank 0, and a distinct
    seed derived from (seed, r) on the others, so ranks draw independent noise."""
    if rank() == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank()]).generate_state(1, np.uint64)[0] >> 1)


# --------------------------------------------------------------------------- evaluation


def _batch_block(n: int, batch_size: int, of_rank: int) -> range:
    """Rows of rank ``of_rank``: a contiguous block of whole ``batch_size`` batches (blocks
    differ by at most one batch; a rank may get none)."""
    per, extra = divmod(-(-n // batch_size), world_size())
    first = of_rank * per + min(of_rank, extra)
    count = per + (of_rank < extra)
    return range(min(n, first * batch_size), min(n, (first + count) * batch_size))


def _gather_blocks(local: torch.Tensor, n: int, batch_size: int) -> torch.Tensor:
    """Concatenate every rank's block of rows (unequal sizes: padded for the all-gather)."""
    sizes = [len(_batch_block(n, batch_size, r)) for r in range(world_size())]
    padded = local.new_zeros((max(sizes), *local.shape[1:]))
    padded[:local.shape[0]] = local
    rows = gather_rows(padded).split(max(sizes))
    return torch.cat([block[:size] for block, size in zip(rows, sizes, strict=True)])


def _encoding_view(split: RetrievalSplit, images: range, captions: range) -> RetrievalSplit:
    """The images and captions of ``split`` at the given rows, for encoding only.

    A :class:`RetrievalSplit` cannot be empty, so an empty range borrows row 0 (encoded and
    dropped by the caller); ``caption_to_image`` is not meaningful (all 0): encoding never
    reads it.
    """
    image_rows = np.arange(images.start, images.stop) if len(images) else np.array([0])
    caption_rows = (np.arange(captions.start, captions.stop) if len(captions)
                    else np.array([0]))
    features = split.caption_features
    return RetrievalSplit(
        name=split.name, images=split.images.subset(image_rows),
        captions=[split.captions[j] for j in caption_rows],
        caption_to_image=np.zeros(len(caption_rows), dtype=np.int64),
        image_ids=[split.image_ids[i] for i in image_rows],
        caption_features=None if features is None else np.asarray(features[caption_rows]))


def encode_split_sharded(model: nn.Module, split: RetrievalSplit, *, batch_size: int = 256,
                         device: torch.device | str = "cpu", progress: bool = False
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`vsekit.eval.encode.encode_split`, with the work shared by all ranks.

    Each rank encodes a contiguous block of whole evaluation batches (the same batches one
    process would encode, so every embedding is bit-identical to one process's), and the
    blocks are all-gathered: every rank returns (image embeddings [N_img, D], caption
    embeddings [N_cap, D]), float32 on ``device``. One process: ``encode_split`` itself.
    """
    if not is_distributed():
        return encode_split(model, split, batch_size=batch_size, device=device,
                            progress=progress)
    images = _batch_block(split.n_images, batch_size, rank())
    captions = _batch_block(split.n_captions, batch_size, rank())
    view = _encoding_view(split, images, captions)
    image_emb, text_emb = encode_split(model, view, batch_size=batch_size, device=device,
                                       progress=progress and is_main())
    return (_gather_blocks(image_emb[:len(images)], split.n_images, batch_size),
            _gather_blocks(text_emb[:len(captions)], split.n_captions, batch_size))
