"""Next-token loss on assistant tokens, with the vocabulary projection only where it is needed.

The LM head of SmolLM2 maps 576 features to 49,152 logits, so computing it for every
position of a batch (then throwing most of it away because the labels are -100) costs about
a fifth of a training step and ~400 MB of logits at batch 8 x 256. ``assistant_loss_sum``
runs the decoder for every position but applies the LM head only at positions whose next
token is labelled: the model's own ``logits_to_keep`` argument takes a boolean
(batch, seq) mask and returns logits for those positions only, flattened to (N, vocab).
Going through the model's forward (rather than calling its submodules) keeps the call
inside DistributedDataParallel's forward, so ``accelerate launch`` still syncs gradients.

``full_logits_loss_sum`` is the plain reference (all logits, then mask); the tests check
that both agree, and ``benchmarks.training_speed`` uses it for the naive loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from training.collate import IGNORE_INDEX, sorted_batches


def labelled_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask of positions whose *next* token is labelled, those next tokens flattened)."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    targets = labels[:, 1:][keep[:, :-1]]
    return keep, targets


def assistant_loss_sum(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over labelled tokens and their count; LM head on those positions only."""
    keep, targets = labelled_positions(batch["labels"])
    outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep, use_cache=False)
    logits = outputs.logits  # (N, vocab): one row per labelled position
    return F.cross_entropy(logits.float(), targets, reduction="sum"), int(targets.numel())


def full_logits_loss_sum(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Reference: logits at every position, shifted, masked by the -100 labels."""
    outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    logits = outputs.logits[:, :-1].float()
    targets = batch["labels"][:, 1:]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")
    return loss, int((targets != IGNORE_INDEX).sum())


@dataclass(frozen=True)
class LossStats:
    loss: float
    """Mean cross-entropy per labelled token (nats)."""
    tokens: int
    """Labelled tokens scored."""
    seconds: float


@torch.no_grad()
def mean_token_loss(
    model: nn.Module,
    features: Sequence[dict[str, Any]],
    collate: Callable[[Sequence[dict[str, Any]]], dict[str, torch.Tensor]],
    batch_size: int,
    device: torch.device | str = "cpu",
) -> LossStats:
    """Token-weighted mean assistant loss over a dataset (eval mode, batches sorted by length)."""
    started = time.perf_counter()
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        lengths = [len(feature["input_ids"]) for feature in features]
        for indices in sorted_batches(lengths, batch_size):
            batch = {key: value.to(device) for key, value in collate([features[i] for i in indices]).items()}
            loss_sum, tokens = assistant_loss_sum(model, batch)
            total += float(loss_sum)
            count += tokens
    finally:
        model.train(was_training)
    return LossStats(total / max(count, 1), count, time.perf_counter() - started)
