"""The LoRA training configuration: a typed dataclass, its yaml files and command-line overrides.

``load_config("training/configs/ecommerce.yaml", {"epochs": "1"})`` reads a yaml mapping of
field names to values, applies overrides (strings from the command line are parsed by the
field's type), checks every value and returns a ``TrainConfig``. Anything wrong (an unknown
key, a wrong type, an impossible value, a missing data folder) raises ``ConfigError`` naming
the field. ``add_config_arguments`` gives an argparse parser one ``--field value`` option per
field (``--lora_r`` and ``--lora-r`` both work). Used by ``python -m training.train``.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

import domains
from training.dialogs import DOMAINS

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_DATA_DIR = Path(__file__).resolve().parent / "data"
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")


def repo_path(path: Path) -> str:
    """A file's path as the repository spells it (POSIX, from its root), or as given outside it:
    how reports and dataset cards name the files they were made from."""
    try:
        return path.resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return path.as_posix()


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or impossible; the message names the field."""


@dataclass
class TrainConfig:
    """Everything one LoRA training run needs; every field can come from yaml or ``--field value``."""

    domain: str = ""
    """Which chatbot to train: one of training.dialogs.DOMAINS (ecommerce, medical)."""
    data_dir: Path | None = None
    """Folder holding <domain>/{train,validation,test}.jsonl; None means training/data in the repo."""
    output_dir: Path | None = None
    """Where the shipped adapter goes; None means bots/adapters/<domain> in the repo."""
    work_dir: Path | None = None
    """Scratch folder for intermediate checkpoints; None means artifacts/train/<domain> (git-ignored)."""
    base_model: str = "embedded"
    """Base model source for bots.base_model: 'embedded' (SmolLM2-135M-Instruct GGUF), a hub id or a folder."""
    init_adapter: Path | None = None
    """Continue training from this existing adapter folder (its base fingerprint must match)."""

    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: float = 32.0
    """LoRA scaling numerator: the update is scaled by lora_alpha / lora_r."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA input, in [0, 1); 0 skips the op (its random masks cost ~15% of a CPU step)."""
    target_modules: list[str] = field(default_factory=lambda: list(ALL_LINEAR))
    """Decoder linear layers that get a LoRA (default: all attention and MLP projections)."""

    learning_rate: float = 3e-4
    """Peak AdamW learning rate."""
    lr_scheduler: str = "cosine"
    """Learning-rate schedule after warm-up: linear, cosine, constant or constant_with_warmup."""
    warmup_ratio: float = 0.05
    """Fraction of the optimiser steps spent warming the learning rate up from 0, in [0, 1)."""
    weight_decay: float = 0.0
    """AdamW weight decay on the LoRA weights."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm; 0 disables clipping."""
    epochs: int = 2
    """Passes over the training split; the epoch with the lowest validation loss is exported."""
    per_device_batch_size: int = 8
    """Dialogs per forward pass (per process under accelerate launch)."""
    gradient_accumulation_steps: int = 1
    """Forward passes per optimiser step."""
    eval_batch_size: int = 16
    """Dialogs per forward pass when scoring the validation and test splits."""
    max_length: int = 384
    """Tokens kept per dialog (longer dialogs are cut at the end)."""
    max_train_dialogs: int | None = None
    """Use only the first N training dialogs (quick trials); None uses all."""

    seed: int = 42
    """Seed for LoRA initialisation, dropout and batch order."""
    threads: int = 2
    """torch intra-op threads (the machine has 2 cores)."""
    logging_steps: int = 5
    """Log the training loss every N optimiser steps."""
    progress_bar: bool = True
    """Show the tqdm progress bar."""

    def resolved_data_dir(self) -> Path:
        return self.data_dir if self.data_dir is not None else DEFAULT_DATA_DIR

    def resolved_output_dir(self) -> Path:
        return self.output_dir if self.output_dir is not None else REPO_ROOT / "bots" / "adapters" / self.domain

    def resolved_work_dir(self) -> Path:
        return self.work_dir if self.work_dir is not None else REPO_ROOT / "artifacts" / "train" / self.domain

    def to_dict(self) -> dict[str, Any]:
        """Plain yaml/json-friendly values (paths as strings)."""
        return {key: str(value) if isinstance(value, Path) else value for key, value in dataclasses.asdict(self).items()}


@lru_cache(maxsize=1)
def field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


@lru_cache(maxsize=1)
def field_docs() -> dict[str, str]:
    """The docstring under each field, read from this file's source (for --help and the model card)."""
    tree = ast.parse(inspect.getsource(TrainConfig))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, following in zip(body, body[1:], strict=False):
        is_field = isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
        if is_field and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
            docs[node.target.id] = " ".join(str(following.value.value).split())
    return docs


def _describe(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("pathlib.", "")


def _coerce(name: str, annotation: Any, value: Any) -> Any:
    """Check (and, for text from the command line or yaml, parse) one value against its field type."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        inner = [arg for arg in args if arg is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in {"none", "null"}):
            return None
        return _coerce(name, inner[0], value)
    if value is None:
        raise ConfigError(f"{name}: a value is required (expected {_describe(annotation)})")
    if typing.get_origin(annotation) is list:
        items = [item.strip() for item in value.split(",") if item.strip()] if isinstance(value, str) else value
        if not isinstance(items, list):
            raise ConfigError(f"{name}: expected a list of {_describe(args[0])}, got {value!r}")
        return [_coerce(name, args[0], item) for item in items]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "yes", "1", "false", "no", "0"}:
            return value.lower() in {"true", "yes", "1"}
    elif annotation in (int, float):
        if isinstance(value, bool):
            pass  # yaml `true` is not a number
        elif isinstance(value, int) or (annotation is float and isinstance(value, float)):
            return annotation(value)
        elif isinstance(value, str):
            # PyYAML reads `3e-4` (no dot) as text, so numbers may arrive as strings.
            try:
                return annotation(value)
            except ValueError:
                pass
    elif annotation is Path:
        if isinstance(value, (str, Path)) and str(value):
            return Path(value).expanduser()
    elif annotation is str:
        if isinstance(value, str):
            return value
    else:
        raise ConfigError(f"{name}: unsupported field type {annotation!r}")
    raise ConfigError(f"{name}: expected {_describe(annotation)}, got {value!r}")


def _check_values(config: TrainConfig) -> None:
    def require(condition: bool, name: str, rule: str) -> None:
        if not condition:
            raise ConfigError(f"{name}: must be {rule}, got {getattr(config, name)!r}")

    require(config.domain in DOMAINS, "domain", f"one of {', '.join(DOMAINS)}")
    for name in ("lora_r", "epochs", "per_device_batch_size", "gradient_accumulation_steps", "eval_batch_size", "threads", "logging_steps"):
        require(getattr(config, name) > 0, name, "> 0")
    require(config.lora_alpha > 0, "lora_alpha", "> 0")
    require(config.learning_rate > 0, "learning_rate", "> 0")
    require(0 <= config.lora_dropout < 1, "lora_dropout", "in [0, 1)")
    require(0 <= config.warmup_ratio < 1, "warmup_ratio", "in [0, 1)")
    require(config.weight_decay >= 0, "weight_decay", ">= 0")
    require(config.max_grad_norm >= 0, "max_grad_norm", ">= 0")
    require(config.max_length >= 16, "max_length", ">= 16")
    require(config.max_train_dialogs is None or config.max_train_dialogs > 0, "max_train_dialogs", "> 0 or none")
    require(bool(config.target_modules), "target_modules", "a non-empty list")
    require(config.lr_scheduler in SCHEDULERS, "lr_scheduler", f"one of {', '.join(SCHEDULERS)}")
    data = config.resolved_data_dir() / config.domain
    if not data.is_dir():
        raise ConfigError(f"data_dir: no folder {data} (expected <data_dir>/{config.domain}/train.jsonl ...)")
    if config.init_adapter is not None and not config.init_adapter.is_dir():
        raise ConfigError(f"init_adapter: no adapter folder at {config.init_adapter}")


def build_config(values: Mapping[str, Any], source: str = "configuration") -> TrainConfig:
    """A checked TrainConfig from a mapping of field names to values (native or text)."""
    types_by_name = field_types()
    unknown = sorted(set(values) - set(types_by_name))
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown key in {source} (known keys: {', '.join(types_by_name)})")
    parsed = {name: _coerce(name, types_by_name[name], value) for name, value in values.items()}
    config = TrainConfig(**parsed)
    _check_values(config)
    return config


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"config: cannot read {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config: {path} is not valid yaml: {' '.join(str(exc).split())}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config: {path} must hold a mapping of field names to values")
    return data


def default_config_path(domain: str) -> Path:
    # The domain pack names the file; a domain without a pack falls back to configs/<domain>.yaml.
    return domains.pack(domain).file("training_config") if domain in domains.names() else CONFIG_DIR / f"{domain}.yaml"


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Yaml values (if a path is given), then overrides on top; checked as a whole."""
    values = read_yaml(path) if path is not None else {}
    values.update(overrides or {})
    return build_config(values, source=str(path) if path is not None else "overrides")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--field value`` option per TrainConfig field; unset options stay out of the namespace."""
    docs = field_docs()
    group = parser.add_argument_group("training configuration (override the yaml)")
    for name, annotation in field_types().items():
        flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        group.add_argument(*flags, dest=name, default=argparse.SUPPRESS, metavar=_describe(annotation).upper(), help=docs.get(name, "").replace("%", "%%"))


def overrides_from_args(namespace: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(namespace, name) for name in field_types() if hasattr(namespace, name)}
