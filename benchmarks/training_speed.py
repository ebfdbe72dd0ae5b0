"""Measure LoRA training speed: a naive loop against our Trainer path, in real tokens per second.

    python -m benchmarks.training_speed                 # ecommerce data, ~3-5 minutes on 2 cores
    python -m benchmarks.training_speed --steps 3 --domain medical

Both runs use the embedded base model, the domain yaml's LoRA (r=16 on all linear layers),
AdamW, fp32 and the same real training dialogs; only real (non-padding) tokens count.

* naive: random batches of 8 dialogs padded (or cut) to 256 tokens, the model's own loss on
  full logits (49,152 per position), a plain ``torch.optim.AdamW`` loop;
* ours: ``training.train``'s Trainer with length-grouped batches, dynamic padding and the
  LM head applied only at labelled positions (batch size and max_length from the domain yaml).

The first step of each is a warm-up and is not timed. Prints both figures and their ratio.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import TrainerCallback

import training.cpu_env  # noqa: F401, I001  (first: sets OMP_WAIT_POLICY before torch loads)
from bots.base_model import BaseModelSpec, load_base
from bots.cli_args import CommandParser
from training.collate import IGNORE_INDEX, tokenize_dialog
from training.config import TrainConfig, default_config_path, load_config
from training.train import attach_lora, make_trainer, read_splits, tokenize_split


@dataclass(frozen=True)
class Speed:
    steps: int
    real_tokens: int
    padded_tokens: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.real_tokens / self.seconds

    def describe(self) -> str:
        padding = 1 - self.real_tokens / self.padded_tokens
        return f"{self.tokens_per_second:6.1f} real tokens/s ({self.steps} steps, {self.real_tokens} real tokens, {padding:.0%} padding, {self.seconds:.1f} s)"


def naive_batch(dialogs: Sequence[dict], tokenizer, width: int) -> dict[str, torch.Tensor]:  # noqa: ANN001
    """Fixed-width batch: every row padded (or cut) to ``width`` tokens."""
    input_ids = torch.full((len(dialogs), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(dialogs), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(dialogs), width), dtype=torch.long)
    for row, dialog in enumerate(dialogs):
        tokens = tokenize_dialog(dialog["messages"], tokenizer, width)
        size = len(tokens.input_ids)
        input_ids[row, :size] = torch.tensor(tokens.input_ids)
        labels[row, :size] = torch.tensor(tokens.labels)
        attention_mask[row, :size] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def bench_naive(config: TrainConfig, dialogs: list[dict], steps: int, batch_size: int = 8, width: int = 256, seed: int = 0) -> Speed:
    """The naive loop, with the same LoRA (rank, targets, dropout) as ours so only the mechanics differ."""
    base = load_base(BaseModelSpec.from_env(source=config.base_model))
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout, target_modules=list(config.target_modules), task_type="CAUSAL_LM")
    model = get_peft_model(base.model, lora)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate)
    rng = random.Random(seed)
    real = padded = 0
    started = 0.0
    for step in range(steps + 1):
        if step == 1:  # after the warm-up step
            real = padded = 0
            started = time.perf_counter()
        batch = naive_batch(rng.sample(dialogs, batch_size), base.tokenizer, width)
        loss = model(**batch).loss  # full logits at every position, then the masked loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        real += int(batch["attention_mask"].sum())
        padded += batch["attention_mask"].numel()
    return Speed(steps, real, padded, time.perf_counter() - started)


class _StepTimer(TrainerCallback):
    """Snapshot the trainer's token counters after the warm-up step and at the end."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.trainer = None
        self.marks: list[tuple[int, int, float]] = []

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201 (TrainerCallback signature)
        if state.global_step in (self.warmup, state.max_steps):
            self.marks.append(self.trainer.counters_snapshot())


def bench_ours(domain: str, steps: int, work_dir: Path, seed: int = 0) -> Speed:
    config = load_config(default_config_path(domain), {"progress_bar": False, "seed": seed})
    base = load_base(BaseModelSpec.from_env(source=config.base_model))
    data = read_splits(config)
    model = attach_lora(base, config)
    train_set = tokenize_split(data.dialogs["train"], base.tokenizer, config.max_length)
    trainer = make_trainer(config, model, base.tokenizer, train_set, None, work_dir, max_steps=steps + 1)
    timer = _StepTimer(warmup=1)
    timer.trainer = trainer
    trainer.add_callback(timer)
    trainer.reset_counters()
    trainer.train()
    (real0, padded0, t0), (real1, padded1, t1) = timer.marks
    return Speed(steps, real1 - real0, padded1 - padded0, t1 - t0)


def make_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="python -m benchmarks.training_speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--domain", default="ecommerce", help="whose training dialogs to use")
    parser.add_argument("--steps", type=int, default=4, help="timed naive steps (8 x 256 tokens each)")
    parser.add_argument("--our-steps", type=int, default=12, help="timed steps of our Trainer path (8 dialogs each)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work-dir", type=Path, default=Path(__file__).resolve().parent.parent / "artifacts" / "bench")
    return parser


def main(argv: Sequence[str] | None = None) -> float:
    args = make_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = load_config(default_config_path(args.domain))
    dialogs = read_splits(config).dialogs["train"]
    print(f"LoRA r={config.lora_r} on {', '.join(config.target_modules)}, dropout {config.lora_dropout}, AdamW, fp32, {args.threads} threads", flush=True)
    naive = bench_naive(config, dialogs, args.steps)
    print(f"naive: {naive.describe()}", flush=True)
    ours = bench_ours(args.domain, args.our_steps, args.work_dir)
    print(f"ours:  {ours.describe()}", flush=True)
    ratio = ours.tokens_per_second / naive.tokens_per_second
    print(f"naive {naive.tokens_per_second:.1f} tok/s, ours {ours.tokens_per_second:.1f} tok/s, ratio {ratio:.2f}x")
    return ratio


if __name__ == "__main__":
    main()
