"""What a training run leaves next to its adapter: ``training_log.json``, ``loss_curve.png``, ``README.md``.

``TrainingReport`` gathers the figures of one run (configuration, base, data, per-epoch
losses, test losses with and without the adapter, time and speed); ``write_report`` writes
the three files. Used by ``training.train``; no command of its own.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402

from training.config import field_docs  # noqa: E402
from training.hub_cards import adapter_metadata, with_front_matter  # noqa: E402

LOG_FILE = "training_log.json"
CURVE_FILE = "loss_curve.png"
CARD_FILE = "README.md"


@dataclass
class TrainingReport:
    domain: str
    base_name: str
    base_fingerprint: str
    data_sha256: str
    split_sizes: dict[str, int]
    """Dialogs per split actually used (after dropping dialogs with nothing to learn)."""
    config: dict[str, Any]
    trainable_parameters: int
    total_parameters: int
    epochs: list[dict[str, Any]]
    """One record per epoch: epoch, train_loss, eval_loss, train_tokens, padded_tokens, train_seconds."""
    best_epoch: float | None
    validation_loss_before: float
    """Validation loss of the base model (adapter disabled), before training."""
    test_loss_base: float
    test_loss_adapter: float
    test_tokens: int
    train_seconds: float
    """Wall time of the whole Trainer.train call (evaluations included)."""
    real_tokens_per_second: float
    """Non-padding tokens per second of training proper (evaluation time excluded)."""
    padding_fraction: float
    created: str
    log_history: list[dict[str, Any]] = field(default_factory=list)
    train_cpu_seconds: float | None = None
    """CPU time of the whole process over the Trainer.train call (every thread; None in old logs)."""
    peak_rss_mb: float | None = None
    """Peak resident memory of the training process (loading, training, scoring), in MB."""


def write_log(folder: Path, report: TrainingReport) -> Path:
    path = folder / LOG_FILE
    path.write_text(json.dumps(asdict(report), indent=2) + "\n")
    return path


def plot_loss_curve(folder: Path, report: TrainingReport) -> Path:
    """Logged training loss and per-epoch validation loss against epochs, base losses for reference."""
    figure, axes = plt.subplots(figsize=(7, 4.2), dpi=110)
    steps = [entry for entry in report.log_history if "loss" in entry and "epoch" in entry]
    if steps:
        axes.plot([e["epoch"] for e in steps], [e["loss"] for e in steps], color="tab:blue", alpha=0.7, label="training loss (logged)")
    epochs = [0.0] + [record["epoch"] for record in report.epochs]
    validation = [report.validation_loss_before] + [record["eval_loss"] for record in report.epochs]
    axes.plot(epochs, validation, "o-", color="tab:orange", label="validation loss")
    axes.axhline(report.test_loss_base, color="grey", linestyle="--", linewidth=1, label=f"test loss, base ({report.test_loss_base:.3f})")
    axes.axhline(report.test_loss_adapter, color="tab:green", linestyle="--", linewidth=1, label=f"test loss, adapter ({report.test_loss_adapter:.3f})")
    axes.set_xlabel("epoch")
    axes.set_ylabel("cross-entropy per assistant token (nats)")
    axes.set_title(f"LoRA {report.domain}: loss")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    path = folder / CURVE_FILE
    figure.savefig(path)
    plt.close(figure)
    return path


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def model_card(report: TrainingReport) -> str:
    docs = field_docs()
    hyper = "\n".join(f"| `{name}` | `{value}` | {docs.get(name, '')} |" for name, value in report.config.items())
    epochs = "\n".join(
        f"| {record['epoch']:g} | {_fmt(record['train_loss'])} | {_fmt(record['eval_loss'])} | {record['train_seconds']:.0f} |"
        + (" best |" if record["epoch"] == report.best_epoch else " |")
        for record in report.epochs
    )
    splits = ", ".join(f"{name} {size}" for name, size in report.split_sizes.items())
    minutes = report.train_seconds / 60
    return f"""# LoRA adapter: {report.domain}

A LoRA adapter (PEFT format) for the **{report.domain}** chatbot of *Tune or Prompt*, trained with
`python -m training.train --domain {report.domain}` on the assistant turns of
`training/data/{report.domain}/` (loss on assistant tokens only; the system prompt in the data
is the short LoRA system prompt, so the facts live in the weights, not the prompt).

| | |
|---|---|
| base model | {report.base_name} |
| base fingerprint (sha256) | `{report.base_fingerprint}` |
| data sha256 (train + validation + test files) | `{report.data_sha256}` |
| dialogs | {splits} |
| trainable parameters | {report.trainable_parameters:,} of {report.total_parameters:,} |
| created | {report.created} |

The bots refuse this adapter on a base whose fingerprint differs (see `tune_or_prompt.json`).

## Results

Mean cross-entropy per assistant token (nats), test split:

| model | test loss |
|---|---|
| base model (adapter disabled) | {report.test_loss_base:.4f} |
| base + this adapter | {report.test_loss_adapter:.4f} |

Validation loss before training (base model): {report.validation_loss_before:.4f}.

| epoch | train loss | validation loss | training seconds | |
|---|---|---|---|---|
{epochs}

The epoch with the lowest validation loss is the one exported here.

Training time {minutes:.1f} min (evaluations included); **{report.real_tokens_per_second:.1f} real (non-padding)
tokens/s** of training proper, with {report.padding_fraction:.1%} padding, on CPU, fp32.

![loss curve]({CURVE_FILE})

## Hyper-parameters

| field | value | meaning |
|---|---|---|
{hyper}

## Use

```python
from peft import PeftModel
model = PeftModel.from_pretrained(base_model, "bots/adapters/{report.domain}")
```

`{LOG_FILE}` holds every logged figure of the run.
"""


def write_report(folder: Path, report: TrainingReport, base_model: str) -> list[Path]:
    """``base_model``: the base's hub id, for the card's Hub metadata."""
    card = folder / CARD_FILE
    card.write_text(with_front_matter(model_card(report), adapter_metadata(report.domain, base_model)))
    return [write_log(folder, report), plot_loss_curve(folder, report), card]
