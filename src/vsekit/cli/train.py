"""``vsekit train``, ``vsekit demo`` and ``vsekit recipes``."""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from vsekit.cli.common import RECIPES, recipe_path
from vsekit.errors import VsekitError

if TYPE_CHECKING:
    from vsekit.config import Config

INTERRUPTED = 130  # exit code after Ctrl-C (the workers saved a checkpoint)


def _train(args: argparse.Namespace) -> int:
    from vsekit import distributed
    from vsekit.config import load_config
    from vsekit.eval.table import format_metrics
    from vsekit.report.run_plots import write_run_plots
    from vsekit.train.run_dir import load_run_config
    from vsekit.train.trainer import train

    if args.resume:
        run_dir = Path(args.resume)
        config = load_run_config(run_dir)
        if args.config or args.set:
            raise VsekitError("--resume continues a run with its saved config; do not pass a "
                              "config or --set with it")
    else:
        if not args.config:
            raise VsekitError("vsekit train needs a CONFIG (a YAML file or a built-in recipe "
                              "name such as demo) or --resume RUN_DIR")
        config = load_config(recipe_path(args.config), args.set)
        run_dir = Path(args.run_dir or config.run_dir)
    nproc = getattr(args, "nproc", None)  # (callers building a Namespace may omit it)
    if distributed.launched_by_torchrun():
        if nproc and nproc != int(os.environ["WORLD_SIZE"]):
            raise VsekitError("--nproc starts torchrun itself; under torchrun set the number of "
                              "processes with torchrun's --nnodes and --nproc-per-node instead")
    elif nproc and nproc > 1:
        _check_launch(config, run_dir, nproc, resume=bool(args.resume))
        return _launch_torchrun(nproc, _worker_arguments(args, run_dir))
    result = train(config, run_dir, resume=bool(args.resume), progress=not args.no_progress)
    if distributed.launch_rank() != 0:
        return 0
    if "metrics" in result:
        best = (f", best dev epoch {result['best_epoch'] + 1}" if result["best_epoch"] >= 0
                else " (no dev split: last weights)")
        print(format_metrics(result["metrics"], f"{result['split']} split{best}"))
    plots = write_run_plots(run_dir)
    if plots.files:
        print(f"figures: {', '.join(path.name for path in plots.files)}")
    print(f"run directory: {run_dir}")
    return 0


def _check_launch(config: Config, run_dir: Path, nproc: int, resume: bool) -> None:
    """What would fail in every worker, checked once before torchrun starts them."""
    import torch

    from vsekit.train.run_dir import check_new_run_dir
    from vsekit.train.trainer import resolve_device

    gpus = torch.cuda.device_count()
    if resolve_device(config.train.device).type == "cuda" and nproc > gpus:
        raise VsekitError(f"--nproc {nproc} needs one GPU per process but this machine has "
                          f"{gpus}; lower --nproc or set train.device=cpu")
    if config.train.batch_size % nproc:
        raise VsekitError(f"train.batch_size {config.train.batch_size} is the global batch "
                          f"and must be divisible by --nproc {nproc}; change one of them")
    if not resume:
        check_new_run_dir(run_dir)


def _worker_arguments(args: argparse.Namespace, run_dir: Path) -> list[str]:
    """``vsekit train`` arguments of each torchrun worker (the same run, without --nproc)."""
    if args.resume:
        forwarded = ["--resume", str(args.resume)]
    else:
        forwarded = [args.config, "--run-dir", str(run_dir)]
        for item in args.set:
            forwarded += ["--set", item]
    return ["train", *forwarded, *(["--no-progress"] if args.no_progress else [])]


def _launch_torchrun(nproc: int, arguments: list[str]) -> int:
    """``torchrun --standalone --nproc-per-node=N -m vsekit ARGUMENTS``, with this process as
    torchrun's agent (``torch.distributed.run``, the code of the ``torchrun`` command): it
    starts the workers, forwards Ctrl-C and SIGTERM to them (they checkpoint and stop) and
    waits. Returns the exit code: 0, 2 when the workers stopped on a user error (each
    printed it), 130 when interrupted; other worker failures raise a one-line error.
    """
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = torchrun.get_args_parser().parse_args(
        ["--standalone", f"--nproc-per-node={nproc}", "-m", "vsekit", *arguments])
    # each worker prints its own error; the agent would repeat it as a log line + traceback
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        torchrun.run(args)
    except SignalException:
        return INTERRUPTED
    except ChildFailedError as exc:
        codes = sorted({failure.exitcode for failure in exc.failures.values()})
        if codes in ([VsekitError.exit_code], [INTERRUPTED]):
            return codes[0]  # the workers printed their one-line messages
        raise VsekitError(f"{len(exc.failures)} of {nproc} worker processes failed (exit codes "
                          f"{', '.join(map(str, codes))}); their output above says why") from None
    return 0


def _demo(args: argparse.Namespace) -> int:
    from vsekit.report.page import write_report

    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = args.run_dir or f"runs/demo-{stamp}"
    overrides = [f"run_dir={run_dir}", *args.set]
    ns = argparse.Namespace(config="demo", set=overrides, run_dir=run_dir, resume=None,
                            no_progress=args.no_progress)
    code = _train(ns)
    print(f"report: {write_report([Path(run_dir)])}")
    return code


def _recipes(args: argparse.Namespace) -> int:
    for path in sorted(RECIPES.glob("*.yaml")):
        lines = path.read_text(encoding="utf-8").splitlines() or [""]
        first = lines[0].lstrip("# ").strip()
        print(f"{path.stem:<28}{first}")
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of processes, got {text!r}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    """Add the train, demo and recipes sub-commands."""
    p = sub.add_parser("train", help="train a model from a YAML recipe")
    p.add_argument("config", nargs="?", help="YAML file or built-in recipe name (see `vsekit recipes`)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.lr=1e-3 (repeatable)")
    p.add_argument("--run-dir", help="where to write the run (default: the config's run_dir)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run exactly")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--nproc", type=_positive_int, metavar="N",
                   help="train on N processes on this machine (starts torchrun; one GPU each "
                        "on a GPU machine, else CPU with gloo); train.batch_size stays the "
                        "global batch. On a cluster run torchrun yourself: torchrun --nnodes "
                        "... --nproc-per-node ... -m vsekit train CONFIG")
    p.set_defaults(func=_train)

    p = sub.add_parser("demo", help="train + evaluate on the built-in synthetic dataset")
    p.add_argument("--run-dir", help="where to write the run (default runs/demo-TIMESTAMP)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_demo)

    p = sub.add_parser("recipes", help="list the built-in YAML recipes")
    p.set_defaults(func=_recipes)
