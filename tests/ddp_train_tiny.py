"""Train the tiny in-process model with ``training.train`` under a multi-process launcher (DDP).

Run by ``tests/test_ddp_training.py`` through ``accelerate launch``; each process builds the
tiny base itself (a model object cannot cross process boundaries), trains, and writes
``<ranks_dir>/rank-<rank>.json`` with what it saw of the process group, so the test can tell
that the run really had several processes::

    accelerate launch --cpu --num_processes 2 -m tests.ddp_train_tiny --ranks-dir R -- --domain ecommerce ...

Everything after ``--`` goes to ``python -m training.train``. ``write_tiny_dataset`` writes the
small dataset of ``tests/test_training.py`` (the test calls it before launching).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

REPLIES = ["Standard shipping takes 3-5 business days.", "Returns are accepted within 30 days.", "Call 911 now."]
SPLIT_SIZES = (("train", 12), ("validation", 4), ("test", 4))


def tiny_dialog(index: int) -> dict:
    messages = [{"role": "system", "content": "You are Northwind Assistant."}]
    for turn in range(1 + index % 2):
        messages += [{"role": "user", "content": f"question {index} {turn}?"}, {"role": "assistant", "content": REPLIES[(index + turn) % 3]}]
    return {"id": f"d{index}", "topic": "test", "kind": "single", "messages": messages}


def write_tiny_dataset(root: Path, domains: Sequence[str] = ("ecommerce", "medical")) -> Path:
    """``root/<domain>/{train,validation,test}.jsonl`` (12 / 4 / 4 dialogs)."""
    for domain in domains:
        for split, count in SPLIT_SIZES:
            path = root / domain / f"{split}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(tiny_dialog(i)) + "\n" for i in range(count)))
    return root


def main(argv: Sequence[str] | None = None) -> None:
    import torch.distributed as dist

    from bots.cli_args import CommandParser
    from tests.tiny_model import make_tiny_base
    from training.train import main as train_main

    parser = CommandParser(prog="python -m tests.ddp_train_tiny", description="Train the tiny test model with training.train (one process of a launch).")
    parser.add_argument("--ranks-dir", type=Path, required=True, help="folder for one rank-<rank>.json per process")
    parser.add_argument("train_args", nargs="*", help="arguments for python -m training.train (after --)")
    args = parser.parse_args(argv)

    output = train_main(args.train_args, base=make_tiny_base())
    rank = int(os.environ.get("RANK", "0"))
    seen = {
        "rank": rank,
        "env_world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "dist_initialized": dist.is_initialized(),
        "dist_world_size": dist.get_world_size() if dist.is_initialized() else 1,
        "dist_rank": dist.get_rank() if dist.is_initialized() else 0,
        "backend": dist.get_backend() if dist.is_initialized() else None,
        "output": str(output),
    }
    args.ranks_dir.mkdir(parents=True, exist_ok=True)
    (args.ranks_dir / f"rank-{rank}.json").write_text(json.dumps(seen))
    if dist.is_initialized():
        dist.barrier()  # rank 0 may still be writing the adapter; leave together
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
