"""Train one domain's LoRA adapter on the shared base model and ship it in PEFT format.

    python -m training.train --domain ecommerce
    python -m training.train --domain medical --epochs 3 --learning_rate 3e-4
    python -m training.train --config my.yaml --init-adapter bots/adapters/medical
    accelerate launch -m training.train --domain ecommerce      # several processes / GPUs

Reads ``training/configs/<domain>.yaml`` (or ``--config``), then ``--field value`` overrides
(see ``--help``). Trains with transformers' Trainer + a peft LoRA on the assistant turns of
``training/data/<domain>/{train,validation}.jsonl``, keeps the epoch with the lowest
validation loss, and writes to ``bots/adapters/<domain>/``: ``adapter_config.json``,
``adapter_model.safetensors``, ``tune_or_prompt.json``, ``README.md`` (model card),
``training_log.json`` and ``loss_curve.png``. Intermediate checkpoints stay under
``artifacts/train/<domain>/`` (git-ignored). A bad configuration, a malformed data file or
a foreign-base ``--init-adapter`` ends with exit code 2 and a one-line message.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedTokenizerBase, TrainingArguments, set_seed

import training.cpu_env  # noqa: F401, I001  (first: sets OMP_WAIT_POLICY before torch loads)
from bots.base_model import BaseModelSpec, LoadedBase, load_base
from bots.cli_args import CommandParser
from training.adapter_meta import AdapterMetadata, AdapterMismatchError, check_same_base, files_sha256, write_metadata
from training.collate import DialogCollator, tokenize_dialog
from training.config import ConfigError, TrainConfig, add_config_arguments, default_config_path, load_config, overrides_from_args
from training.dialogs import DialogFileError, read_jsonl_dialogs
from training.hub_cards import rewrite_adapter
from training.lora_trainer import AssistantOnlyTrainer, trainable_parameters
from training.loss import mean_token_loss
from training.report import TrainingReport, write_report

SPLITS = ("train", "validation", "test")
SHIPPED_FILES = ("adapter_config.json", "adapter_model.safetensors")
log = logging.getLogger("training.train")


@dataclass(frozen=True)
class DialogSplits:
    dialogs: dict[str, list[dict]]
    files: list[Path]
    sha256: str


def read_splits(config: TrainConfig) -> DialogSplits:
    """Read and check the three jsonl files (DialogFileError names the file, line and problem)."""
    folder = config.resolved_data_dir() / config.domain
    files = [folder / f"{split}.jsonl" for split in SPLITS]
    for path in files:
        if not path.is_file():
            raise DialogFileError(f"{path}: file missing (expected {', '.join(p.name for p in files)} in {folder})")
    dialogs = {split: read_jsonl_dialogs(path) for split, path in zip(SPLITS, files, strict=True)}
    for split, rows in dialogs.items():
        if not rows:
            raise DialogFileError(f"{folder / (split + '.jsonl')}: no dialogs")
    if config.max_train_dialogs is not None:
        dialogs["train"] = dialogs["train"][: config.max_train_dialogs]
    return DialogSplits(dialogs, files, files_sha256(files))


def tokenize_split(dialogs: list[dict], tokenizer: PreTrainedTokenizerBase, max_length: int) -> Dataset:
    """input_ids / labels / length per dialog; dialogs left with no labelled token are dropped."""
    rows = []
    for dialog in dialogs:
        tokens = tokenize_dialog(dialog["messages"], tokenizer, max_length)
        if tokens.trained_tokens:
            rows.append({"input_ids": tokens.input_ids, "labels": tokens.labels, "length": len(tokens.input_ids)})
    if len(rows) < len(dialogs):
        log.warning("dropped %d of %d dialogs with no assistant token within max_length=%d", len(dialogs) - len(rows), len(dialogs), max_length)
    return Dataset.from_list(rows)


def attach_lora(base: LoadedBase, config: TrainConfig) -> PeftModel:
    """A fresh LoRA on the base model, or a trainable copy of ``init_adapter`` (same base only)."""
    if config.init_adapter is not None:
        check_same_base(config.init_adapter, base.fingerprint)
        return PeftModel.from_pretrained(base.model, str(config.init_adapter), is_trainable=True)
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(base.model, lora)


def training_arguments(config: TrainConfig, run_dir: Path, max_steps: int | None = None) -> TrainingArguments:
    """Trainer settings; ``max_steps`` runs a fixed number of steps without evaluation or saving (benchmarks)."""
    select_best = max_steps is None
    return TrainingArguments(
        output_dir=str(run_dir),
        per_device_train_batch_size=config.per_device_batch_size,
        per_device_eval_batch_size=config.eval_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        num_train_epochs=config.epochs,
        max_steps=max_steps if max_steps is not None else -1,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,  # a float in [0, 1) is a ratio of all steps
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        logging_steps=config.logging_steps,
        eval_strategy="epoch" if select_best else "no",
        save_strategy="best" if select_best else "no",
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        load_best_model_at_end=select_best,
        save_total_limit=1,
        save_only_model=True,  # adapter weights only: no optimiser state in the checkpoints
        seed=config.seed,
        data_seed=config.seed,
        report_to="none",
        remove_unused_columns=False,  # the collator picks its columns itself
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=not config.progress_bar,
        ddp_find_unused_parameters=False,  # every LoRA weight takes part in every step (a peft model would get True)
    )


def make_trainer(config: TrainConfig, model: PeftModel, tokenizer: PreTrainedTokenizerBase, train_set: Dataset, eval_set: Dataset | None, run_dir: Path, max_steps: int | None = None) -> AssistantOnlyTrainer:
    return AssistantOnlyTrainer(
        model=model,
        args=training_arguments(config, run_dir, max_steps),
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=DialogCollator(tokenizer.pad_token_id),
    )


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_stamp() -> str:
    """The run folder's timestamp; under ``accelerate launch`` rank 0's, so every process shares one folder.

    The processes start a few milliseconds apart and may read different seconds; the checkpoint that
    rank 0 saves must be where every rank looks for the best epoch (``load_best_model_at_end``).
    """
    stamp = [datetime.now().strftime("%Y%m%d-%H%M%S")]
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState
        from accelerate.utils import broadcast_object_list, parse_flag_from_env

        # Sets up the process group as TrainingArguments will (gloo when ACCELERATE_USE_CPU, else the device's).
        PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
        broadcast_object_list(stamp)
    return stamp[0]


def _clear_output(folder: Path) -> None:
    """Remove what a previous run shipped here, so the folder holds exactly this run's files."""
    from training.adapter_meta import METADATA_FILE
    from training.report import CARD_FILE, CURVE_FILE, LOG_FILE

    for name in (*SHIPPED_FILES, METADATA_FILE, CARD_FILE, CURVE_FILE, LOG_FILE):
        (folder / name).unlink(missing_ok=True)


def train(config: TrainConfig, base: LoadedBase | None = None) -> Path:
    """Train, select the best epoch, export the adapter and its report; return the adapter folder."""
    torch.set_num_threads(config.threads)
    set_seed(config.seed)
    data = read_splits(config)
    if base is None:
        base = load_base(BaseModelSpec.from_env(source=config.base_model))
    model = attach_lora(base, config)
    sets = {split: tokenize_split(rows, base.tokenizer, config.max_length) for split, rows in data.dialogs.items()}
    for split, dataset in sets.items():
        if len(dataset) == 0:
            raise DialogFileError(f"{data.files[SPLITS.index(split)]}: no dialog has an assistant token within max_length={config.max_length}")

    run_dir = config.resolved_work_dir() / f"run-{run_stamp()}"
    trainer = make_trainer(config, model, base.tokenizer, sets["train"], sets["validation"], run_dir)
    collate, device = trainer.data_collator, trainer.args.device
    with model.disable_adapter():
        validation_before = mean_token_loss(model, sets["validation"], collate, config.eval_batch_size, device).loss
    log.info("validation loss before training (base model): %.4f", validation_before)

    trainer.reset_counters()
    started, cpu_started = time.perf_counter(), time.process_time()
    trainer.train()
    train_seconds = time.perf_counter() - started
    train_cpu_seconds = time.process_time() - cpu_started

    # load_best_model_at_end has put the best epoch's weights back; score the test split.
    model.eval()
    adapter_test = mean_token_loss(model, sets["test"], collate, config.eval_batch_size, device)
    with model.disable_adapter():
        base_test = mean_token_loss(model, sets["test"], collate, config.eval_batch_size, device)

    output = config.resolved_output_dir()
    if not trainer.is_world_process_zero():
        return output
    output.mkdir(parents=True, exist_ok=True)
    _clear_output(output)
    # Name the base by hub id, not by the cache folder it was loaded from: the folder then
    # loads anywhere (PeftModel.from_pretrained, vLLM --lora-modules) with no hand edits.
    # Embeddings are never trained: saying so also stops peft from looking the base up on the hub.
    model.peft_config["default"].base_model_name_or_path = base.hub_id or base.name
    model.save_pretrained(str(output), save_embedding_layers=False)
    metadata = AdapterMetadata.now(config.domain, base.name, base.fingerprint, data.sha256)
    write_metadata(output, metadata)

    records = [asdict(record) for record in trainer.epoch_records]
    real = sum(record["train_tokens"] for record in records)
    padded = sum(record["padded_tokens"] for record in records)
    seconds = sum(record["train_seconds"] for record in records)
    best = min(records, key=lambda record: record["eval_loss"]) if records else None
    trainable, total = trainable_parameters(model)
    report = TrainingReport(
        domain=config.domain,
        base_name=base.name,
        base_fingerprint=base.fingerprint,
        data_sha256=data.sha256,
        split_sizes={split: len(dataset) for split, dataset in sets.items()},
        config=config.to_dict(),
        trainable_parameters=trainable,
        total_parameters=total,
        epochs=records,
        best_epoch=best["epoch"] if best else None,
        validation_loss_before=validation_before,
        test_loss_base=base_test.loss,
        test_loss_adapter=adapter_test.loss,
        test_tokens=adapter_test.tokens,
        train_seconds=train_seconds,
        real_tokens_per_second=real / seconds if seconds else 0.0,
        padding_fraction=1 - real / padded if padded else 0.0,
        created=metadata.created,
        log_history=trainer.state.log_history,
        train_cpu_seconds=train_cpu_seconds,
        peak_rss_mb=peak_rss_mb(),
    )
    write_report(output, report, base.hub_id or base.name)
    rewrite_adapter(output, config.domain, base.hub_id or base.name)  # the shipped form: `hub_cards --check` holds at once
    log.info("test loss: base %.4f -> adapter %.4f; adapter written to %s", base_test.loss, adapter_test.loss, output)
    return output


def make_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="python -m training.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, help="yaml file of TrainConfig fields (default: training/configs/<domain>.yaml)")
    add_config_arguments(parser)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    overrides = overrides_from_args(args)
    path = args.config
    if path is None:
        if "domain" not in overrides:
            raise ConfigError("domain: give --domain or --config")
        candidate = default_config_path(str(overrides["domain"]))
        path = candidate if candidate.is_file() else None
    return load_config(path, overrides)


def main(argv: Sequence[str] | None = None, base: LoadedBase | None = None) -> Path:
    """CLI entry; ``base`` lets tests inject a tiny model instead of loading the real one."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = make_parser().parse_args(argv)
    try:
        config = config_from_args(args)
        output = train(config, base=base)
    except (ConfigError, DialogFileError, AdapterMismatchError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        raise SystemExit(2) from exc
    print(output)
    return output


if __name__ == "__main__":
    main()
