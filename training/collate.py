"""Turn chat dialogs into training tensors: assistant-only labels, dynamic padding, length grouping.

* ``tokenize_dialog`` renders a dialog with the tokenizer's own chat template and returns
  ``input_ids`` plus ``labels`` that are -100 everywhere except on the assistant replies
  (their text and their closing end-of-turn token, e.g. ``<|im_end|>``). System and user
  turns and the role headers (``<|im_start|>assistant\\n``) are never trained on.
* ``DialogCollator`` pads a batch to its own longest row only (no fixed 256/512 padding).
* ``LengthGroupedSampler`` orders a shuffled dataset so that each batch holds dialogs of
  similar length, which keeps the padding of ``DialogCollator`` small.

Used by ``training.train`` and ``benchmarks.training_speed``; no command of its own.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Sampler
from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100
"""Label value that cross-entropy skips (PyTorch and transformers convention)."""


class TemplateError(ValueError):
    """The chat template does not render a dialog as a sequence of self-contained turns."""


@dataclass(frozen=True)
class TokenizedDialog:
    input_ids: list[int]
    labels: list[int]

    @property
    def trained_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def assistant_char_spans(messages: Sequence[dict[str, str]], tokenizer: PreTrainedTokenizerBase) -> tuple[str, list[tuple[int, int]]]:
    """Render the dialog and return (text, [(start, end) of each assistant reply + its end token])."""
    text = tokenizer.apply_chat_template(list(messages), tokenize=False)
    end_token = tokenizer.eos_token
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        # The prompt up to this reply, ending in the assistant header, must be a prefix of the
        # whole rendering; the reply then starts right after it.
        head = tokenizer.apply_chat_template(list(messages[:index]), tokenize=False, add_generation_prompt=True)
        reply = message["content"] + end_token
        start = len(head)
        if not text.startswith(head) or text[start : start + len(reply)] != reply:
            raise TemplateError(f"the chat template does not render assistant turn {index} as '<header>content{end_token}'")
        spans.append((start, start + len(reply)))
    return text, spans


def tokenize_dialog(messages: Sequence[dict[str, str]], tokenizer: PreTrainedTokenizerBase, max_length: int | None = None) -> TokenizedDialog:
    """Token ids of the rendered dialog, labels only on assistant replies; cut at ``max_length``."""
    text, spans = assistant_char_spans(messages, tokenizer)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = list(encoding["input_ids"])
    labels = []
    for token_id, (start, end) in zip(input_ids, encoding["offset_mapping"], strict=True):
        inside = any(span_start <= start and end <= span_end for span_start, span_end in spans)
        labels.append(token_id if inside else IGNORE_INDEX)
    if max_length is not None:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return TokenizedDialog(input_ids, labels)


@dataclass
class DialogCollator:
    """Pad ``input_ids``/``labels`` features to the longest row of the batch (right padding)."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None
    """Round the padded length up (e.g. 8); None pads to the longest row exactly."""

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(feature["input_ids"]) for feature in features)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, feature in enumerate(features):
            size = len(feature["input_ids"])
            input_ids[row, :size] = torch.as_tensor(feature["input_ids"], dtype=torch.long)
            labels[row, :size] = torch.as_tensor(feature["labels"], dtype=torch.long)
            attention_mask[row, :size] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def length_grouped_order(lengths: Sequence[int], batch_size: int, generator: torch.Generator, window_batches: int = 16) -> list[int]:
    """Shuffled indices where every run of ``batch_size`` holds similar lengths.

    Shuffle, cut into windows of ``window_batches`` batches, sort each window by length,
    split into batches and shuffle the batches. Only the final batch can be short, and it
    stays last so that every other batch boundary falls on a multiple of ``batch_size``.
    """
    order = torch.randperm(len(lengths), generator=generator).tolist()
    window = batch_size * window_batches
    grouped: list[int] = []
    for start in range(0, len(order), window):
        grouped.extend(sorted(order[start : start + window], key=lambda index: -lengths[index]))
    batches = [grouped[start : start + batch_size] for start in range(0, len(grouped), batch_size)]
    tail = [batches.pop()] if batches and len(batches[-1]) < batch_size else []
    shuffled = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    return [index for batch in shuffled + tail for index in batch]


class LengthGroupedSampler(Sampler[int]):
    """Sampler yielding ``length_grouped_order``; a new order per epoch, reproducible from ``seed``."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, window_batches: int = 16) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.window_batches = window_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        # Advance on our own too, in case the caller never calls set_epoch.
        self.epoch += 1
        return iter(length_grouped_order(self.lengths, self.batch_size, generator, self.window_batches))


def sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Deterministic batches for evaluation: longest first, so padding stays minimal."""
    order = sorted(range(len(lengths)), key=lambda index: -lengths[index])
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
