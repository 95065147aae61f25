"""Typed run configuration, loaded from YAML with ``--set key=value`` overrides.

Fixed sections (``train``, ``eval``) are dataclasses. Component sections (``data``,
``model.image``, ``model.text``, ``loss``) name a registered component and carry that
component's own parameters, validated against its parameter dataclass.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from vsekit.errors import VsekitError
from vsekit.registry import parse_dataclass

MAX_SEED = 2**32 - 1  # numpy's legacy seeds; torch and the loaders accept every such seed


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects a key given twice in one mapping (plain YAML keeps the
    last one silently, so a repeated section would drop the first)."""


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode,
                              deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: later keys override it
            continue
        key = loader.construct_object(key_node, deep=deep)
        try:
            repeated = key in seen
        except TypeError:  # unhashable: construct_mapping reports it
            continue
        if repeated:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                                 _construct_unique_mapping)


def parse_yaml(text: str) -> Any:
    """``yaml.safe_load`` that also rejects repeated keys; errors stay ``yaml.YAMLError`` (or
    ``RecursionError`` for absurdly deep nesting)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no arbitrary objects


def _yaml_problem(exc: Exception) -> str:
    """One line describing a YAML error, with its line number where YAML gives one."""
    if isinstance(exc, RecursionError):
        return "it is nested too deeply"
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        problem = exc.problem or exc.context or "invalid syntax"
        return f"line {exc.problem_mark.line + 1}: {problem}"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping for ``vsekit train``.

    Checkpoints are written at every epoch end, every ``checkpoint_every`` steps (if set) and
    on Ctrl-C. A step whose loss or gradient is not finite is skipped (no update); after
    ``max_nonfinite_steps`` such steps in a row the run stops with a clear error, keeping its
    last good checkpoint. ``backbone_lr`` is the learning rate of pretrained backbones being fine-tuned (parameters
    under a ``backbone`` module: the HF text transformer, EfficientNet); None uses ``lr``.
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 2e-4
    backbone_lr: float | None = None
    weight_decay: float = 1e-4
    warmup_steps: int = 0
    schedule: Literal["constant", "cosine", "step"] = "cosine"
    step_epochs: list[int] = field(default_factory=list)
    step_gamma: float = 0.1
    grad_clip: float = 2.0
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    device: str = "auto"
    num_workers: int = 0
    log_every: int = 20
    eval_every: int = 1
    max_steps: int | None = None
    keep_last: int = 2
    checkpoint_every: int | None = None
    max_nonfinite_steps: int = 5
    drop_last: bool = True
    progress: bool = True

    def validate(self, where: str) -> None:
        positive = {"epochs": self.epochs, "batch_size": self.batch_size,
                    "max_nonfinite_steps": self.max_nonfinite_steps,
                    "log_every": self.log_every, "eval_every": self.eval_every,
                    "keep_last": self.keep_last}
        for name, value in positive.items():
            if value < 1:
                raise VsekitError(f"{where}.{name} must be at least 1, got {value}")
        for name in ("lr", "backbone_lr"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise VsekitError(f"{where}.{name} must be positive, got {value}")
        for name in ("weight_decay", "warmup_steps", "grad_clip", "num_workers"):
            if getattr(self, name) < 0:
                raise VsekitError(f"{where}.{name} must be non-negative, got {getattr(self, name)}")
        if self.schedule == "step" and not self.step_epochs:
            raise VsekitError(f"{where}.schedule is step but {where}.step_epochs is empty; list "
                              "the epochs where the lr drops, e.g. [5, 15]")
        if any(e < 1 for e in self.step_epochs) or not 0 < self.step_gamma <= 1:
            raise VsekitError(f"{where}.step_epochs must be positive epochs and step_gamma in "
                              f"(0, 1], got {self.step_epochs} and {self.step_gamma}")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise VsekitError(f"{where}.checkpoint_every must be at least 1 or null, got "
                              f"{self.checkpoint_every}")
        if self.max_steps is not None and self.max_steps < 1:
            raise VsekitError(f"{where}.max_steps must be at least 1 or null, got {self.max_steps}")


@dataclass
class EvalConfig:
    """Evaluation settings: batch size for encoding; rows per block when counting ranks
    (None: about 1M scores a block, see :mod:`vsekit.eval.metrics`)."""

    batch_size: int = 256
    chunk_size: int | None = None
    split: str = "test"

    def validate(self, where: str) -> None:
        for name in ("batch_size", "chunk_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise VsekitError(f"{where}.{name} must be at least 1, got {value}")


@dataclass
class ModelConfig:
    """Joint embedding size and the two encoders (each ``{type: NAME, **params}``)."""

    embed_dim: int = 256
    image: dict = field(default_factory=lambda: {"type": "projection"})
    text: dict = field(default_factory=lambda: {"type": "bigru"})

    def validate(self, where: str) -> None:
        if self.embed_dim < 1:
            raise VsekitError(f"{where}.embed_dim must be at least 1, got {self.embed_dim}")


@dataclass
class Config:
    """A whole run. ``data`` and ``loss`` are ``{format|name: NAME, **params}`` sections."""

    seed: int = 0
    run_dir: str = "runs/run"
    data: dict = field(default_factory=lambda: {"format": "synthetic"})
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: dict = field(default_factory=lambda: {"name": "vsepp"})
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self, where: str = "config") -> None:
        """Check the seed, then the component sections against their registries (imported
        lazily)."""
        from vsekit.data.formats import DATA_FORMATS
        from vsekit.losses import LOSSES
        from vsekit.models import IMAGE_ENCODERS, TEXT_ENCODERS

        if not 0 <= self.seed <= MAX_SEED:
            raise VsekitError(f"{where}.seed must be an integer in 0..{MAX_SEED}, got {self.seed}")
        DATA_FORMATS.parse(self.data, f"{where}.data")
        IMAGE_ENCODERS.parse(self.model.image, f"{where}.model.image")
        TEXT_ENCODERS.parse(self.model.text, f"{where}.model.text")
        LOSSES.parse(self.loss, f"{where}.loss")


def _parse_scalar(text: str) -> Any:
    """A ``--set`` value as YAML, minus YAML 1.1 surprises (``off`` → False, ``1e-3`` → str)."""
    try:
        value = parse_yaml(text)
    except (yaml.YAMLError, RecursionError):
        return text
    if isinstance(value, bool) and text.strip().lower() not in ("true", "false"):
        return text
    if isinstance(value, str):
        try:
            return float(text)
        except ValueError:
            return value
    return value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings (values parsed as YAML) to a nested dict copy."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise VsekitError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.lr=1e-3")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise VsekitError(f"--set {item!r}: empty key part in {key!r}")
        node = raw
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise VsekitError(f"--set {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = _parse_scalar(value)
    return raw


def config_from_dict(raw: Any, where: str = "config") -> Config:
    """Parse and fully validate a config mapping."""
    config = parse_dataclass(Config, raw, where)
    config.validate(where)
    return config


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with one-line errors for missing or malformed files."""
    path = Path(path)
    if not path.is_file():
        raise VsekitError(f"config file {str(path)!r} not found; pass a YAML recipe such as "
                          "configs/demo.yaml")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise VsekitError(f"config file {str(path)!r} is not UTF-8 text (byte {exc.start}); "
                          "save it as UTF-8") from None
    except OSError as exc:
        raise VsekitError(f"config file {str(path)!r} cannot be read ({exc.strerror or exc})"
                          ) from None
    try:
        raw = parse_yaml(text)
    except (yaml.YAMLError, RecursionError) as exc:
        raise VsekitError(f"config file {str(path)!r} is not valid YAML: {_yaml_problem(exc)}"
                          ) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise VsekitError(f"config file {str(path)!r} must hold a mapping at the top level")
    return raw


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Load a YAML recipe (or the defaults when ``path`` is None) and apply overrides."""
    raw = load_yaml(path) if path is not None else {}
    raw = apply_overrides(raw, overrides or [])
    return config_from_dict(raw, where=str(path) if path else "config")
