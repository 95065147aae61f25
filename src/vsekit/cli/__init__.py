"""The ``vsekit`` command. Each sub-command lives in a module of this package with a
``register(subparsers)`` function and calls library functions; user errors become one line on
stderr and exit code 2."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from vsekit import __version__
from vsekit.cli import data, evaluate, report, search, train
from vsekit.cli.common import RECIPES, recipe_path
from vsekit.errors import VsekitError

__all__ = ["RECIPES", "build_parser", "main", "recipe_path"]

COMMAND_MODULES = [train, evaluate, data, search, report]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command registered."""
    parser = argparse.ArgumentParser(
        prog="vsekit", description="Train and evaluate image-text retrieval models that know "
                                   "their negatives may be false negatives.")
    parser.add_argument("--version", action="version", version=f"vsekit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no "Loading weights" bars
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except VsekitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return VsekitError.exit_code
    except BrokenPipeError:  # output piped into `head` and closed early: not an error to report
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second complaint when Python flushes stdout
        return 1
    except OSError as exc:  # full disk, read-only folder, permissions
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}; free space or choose another folder",
              file=sys.stderr)
        return VsekitError.exit_code
    except KeyboardInterrupt as exc:
        print(f"interrupted: {exc}" if str(exc) else "interrupted", file=sys.stderr)
        return 130
