"""A transformers ``Trainer`` that trains on assistant tokens only, fast on CPU.

Three changes to the stock Trainer, each for speed or for an exact figure:

* ``compute_loss`` uses ``training.loss.assistant_loss_sum`` (LM head only at labelled
  positions) and normalises by the number of labelled tokens in the whole accumulated
  batch, as the stock Trainer does for models that accept ``num_items_in_batch``.
* ``_get_train_sampler`` returns ``LengthGroupedSampler`` so that dynamic padding pads little.
* ``evaluate`` scores the validation split as a token-weighted mean (rather than a mean of
  per-batch means) and records, per epoch, the mean training loss, the real (non-padding)
  tokens processed and the time spent, which the model card reports (summed over processes
  under ``accelerate launch``; every process scores the whole validation split itself).

Used by ``training.train`` and ``benchmarks.training_speed``; no command of its own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import Trainer

from training.collate import LengthGroupedSampler
from training.loss import assistant_loss_sum, mean_token_loss


@dataclass
class EpochRecord:
    epoch: float
    train_loss: float | None
    eval_loss: float
    train_tokens: int
    """Real (non-padding) tokens through the forward/backward since the previous record."""
    padded_tokens: int
    """Tokens including padding, same period."""
    train_seconds: float
    """Wall time spent training (evaluation excluded), same period."""


@dataclass
class _Counters:
    loss_sum: float = 0.0
    labelled: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    started: float = field(default_factory=time.perf_counter)


class AssistantOnlyTrainer(Trainer):
    """Trainer with the assistant-only, labelled-positions-only loss (see module docstring)."""

    def __init__(self, *args: Any, length_window_batches: int = 16, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.length_window_batches = length_window_batches
        self.epoch_records: list[EpochRecord] = []
        self._counters = _Counters()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001, ANN201 (Trainer's signature)
        loss_sum, labelled = assistant_loss_sum(model, inputs)
        if model.training:
            counters = self._counters
            counters.loss_sum += float(loss_sum.detach())
            counters.labelled += labelled
            counters.real_tokens += int(inputs["attention_mask"].sum())
            counters.padded_tokens += inputs["attention_mask"].numel()
        if num_items_in_batch is None:
            loss = loss_sum / max(labelled, 1)
        else:
            # Normalised over the whole accumulated batch, so Trainer does not divide by the
            # accumulation steps again (it treats such a loss as already scaled).
            loss = loss_sum / num_items_in_batch
            if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
                loss = loss * self.accelerator.num_processes
        return (loss, None) if return_outputs else loss

    def _get_train_sampler(self, train_dataset=None):  # noqa: ANN001, ANN202 (Trainer's signature)
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        return LengthGroupedSampler(dataset["length"], self.args.per_device_train_batch_size, self.args.seed, self.length_window_batches)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:  # noqa: ANN001
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        train_seconds = time.perf_counter() - self._counters.started
        stats = mean_token_loss(self.model, dataset, self.data_collator, self.args.per_device_eval_batch_size, self.args.device)
        metrics = {f"{metric_key_prefix}_loss": stats.loss, f"{metric_key_prefix}_tokens": stats.tokens, f"{metric_key_prefix}_runtime": stats.seconds}
        if self.state.global_step > 0:  # not for a call before training starts
            counters = self._summed_counters()
            self.epoch_records.append(
                EpochRecord(
                    epoch=round(self.state.epoch or 0.0, 4),
                    train_loss=counters.loss_sum / counters.labelled if counters.labelled else None,
                    eval_loss=stats.loss,
                    train_tokens=counters.real_tokens,
                    padded_tokens=counters.padded_tokens,
                    train_seconds=train_seconds,
                )
            )
        self._counters = _Counters()  # the next period starts after this evaluation
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _summed_counters(self) -> _Counters:
        """This period's counters summed over all processes (under accelerate launch each sees its own batches)."""
        counters = self._counters
        if self.accelerator.num_processes == 1:
            return counters
        values = torch.tensor([counters.loss_sum, counters.labelled, counters.real_tokens, counters.padded_tokens], dtype=torch.float64, device=self.args.device)
        loss_sum, labelled, real, padded = self.accelerator.reduce(values, reduction="sum").tolist()
        return _Counters(loss_sum, int(labelled), int(real), int(padded), counters.started)

    def reset_counters(self) -> None:
        """Start timing now (call right before ``train()``)."""
        self._counters = _Counters()

    def counters_snapshot(self) -> tuple[int, int, float]:
        """(real tokens, padded tokens, seconds) since the last evaluation or reset."""
        counters = self._counters
        return counters.real_tokens, counters.padded_tokens, time.perf_counter() - counters.started


def trainable_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
