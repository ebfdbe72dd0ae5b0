"""Training under ``accelerate launch`` with two CPU processes (DDP over gloo), on the tiny model.

``tests/ddp_train_tiny.py`` is the launched script: each process builds the tiny base and calls
``training.train.main``. About 25 s on 2 cores (two interpreters importing torch + transformers).
Run: ``python -m pytest tests/test_ddp_training.py``.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from peft import PeftModel

from tests.ddp_train_tiny import tiny_dialog, write_tiny_dataset
from tests.tiny_model import make_tiny_base
from training.collate import tokenize_dialog

REPO_ROOT = Path(__file__).resolve().parent.parent
PROCESSES = 2
EPOCHS = 2
TRAIN_DIALOGS, BATCH = 12, 4  # tests.ddp_train_tiny.SPLIT_SIZES, --per_device_batch_size
SHIPPED = {"adapter_config.json", "adapter_model.safetensors", "tune_or_prompt.json", "README.md", "training_log.json", "loss_curve.png"}


def _free_port() -> int:
    with socket.socket() as sock:  # other test runs on this machine may hold accelerate's default 29500
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_accelerate_launch_trains_on_two_processes_and_ships_one_adapter(tmp_path: Path) -> None:
    data = write_tiny_dataset(tmp_path / "data", ("ecommerce",))
    output, work, ranks = tmp_path / "adapter", tmp_path / "work", tmp_path / "ranks"
    train_args = {
        "domain": "ecommerce", "data_dir": data, "output_dir": output, "work_dir": work, "lora_r": 4, "learning_rate": 1e-2,
        "epochs": EPOCHS, "per_device_batch_size": BATCH, "eval_batch_size": 4, "max_length": 128, "logging_steps": 1,
        "progress_bar": "false", "threads": 1,
    }  # fmt: skip
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        # --multi_gpu picks accelerate's torchrun launcher; with ACCELERATE_USE_CPU the processes use gloo on CPU
        # (accelerate 1.15 runs `--cpu --num_processes 2` as one process unless mpirun is configured).
        "--multi_gpu", "--num_processes", str(PROCESSES), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_ip", "127.0.0.1", "--main_process_port", str(_free_port()),
        "-m", "tests.ddp_train_tiny", "--ranks-dir", str(ranks), "--",
        *[arg for name, value in train_args.items() for arg in (f"--{name}", str(value))],
    ]  # fmt: skip
    env = {
        **os.environ,
        "ACCELERATE_USE_CPU": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "HF_HOME": str(tmp_path / "hf"),  # no user accelerate config file; nothing to download
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
    try:
        done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"accelerate launch did not finish in {exc.timeout} s:\n{(exc.stderr or b'')[-3000:]!r}")
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"

    # Two processes of one process group ran, both on CPU with gloo.
    seen = [json.loads(path.read_text()) for path in sorted(ranks.glob("rank-*.json"))]
    assert [entry["dist_rank"] for entry in seen] == list(range(PROCESSES))
    assert all(entry["dist_initialized"] and entry["dist_world_size"] == PROCESSES and entry["backend"] == "gloo" for entry in seen)

    # One adapter folder, written once (by rank 0), and one shared checkpoint folder.
    assert {path.name for path in output.iterdir()} == SHIPPED
    assert [path.name for path in tmp_path.iterdir() if (path / "adapter_config.json").is_file()] == ["adapter"]
    assert len(list(work.glob("run-*"))) == 1, "every rank must use rank 0's run folder"
    PeftModel.from_pretrained(make_tiny_base().model, str(output))

    log = json.loads((output / "training_log.json").read_text())
    assert log["test_loss_adapter"] < log["test_loss_base"]
    # The batches were split between the processes: ceil(3 batches / 2) optimiser steps per epoch, not 3.
    batches = math.ceil(TRAIN_DIALOGS / BATCH)
    steps_per_epoch = math.ceil(batches / PROCESSES)
    assert max(entry["step"] for entry in log["log_history"]) == EPOCHS * steps_per_epoch
    # Each epoch's token count adds both processes' batches: at least the whole training split (accelerate
    # repeats a batch to give every process the same number), where rank 0 alone saw about half of it.
    tokenizer = make_tiny_base().tokenizer
    split_tokens = sum(len(tokenize_dialog(tiny_dialog(i)["messages"], tokenizer, 128).input_ids) for i in range(TRAIN_DIALOGS))
    assert [epoch["epoch"] for epoch in log["epochs"]] == [1.0, 2.0]
    assert all(epoch["train_tokens"] >= split_tokens for epoch in log["epochs"]), (split_tokens, log["epochs"])
