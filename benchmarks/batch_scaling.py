"""Benchmark: what a batch costs in llama.cpp on this machine, the limit under every throughput figure.

Times one ``llama_decode`` step of k sequences (one new token each, after the same short
prompt) for k = 1, 2, 4, 8, and the prefill of a 256-token prompt, four ways: the bare base,
the base with a LoRA adapter applied at run time, a merged copy of that adapter
(bots/gguf_merge.py), and the base quantised again to Q4_0 (``--requantize``), a type for which
this llama.cpp build has repacked matrix kernels that Q4_1 lacks (lossy: replies change, so it
is a measurement, not a serving option). For each it prints ms per step, tokens/s and the
ratio to one sequence of the same way: how much batching buys. On a kernel that reads each
weight once per batch the ratio grows with k; on one that computes row by row it stays near 1.

    python -m benchmarks.batch_scaling                     # about two minutes on 2 cores
    python -m benchmarks.batch_scaling --adapter medical --steps 40 --json scaling.json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from bots.base_source import BaseModelSpec, cached_file_sha256, embedded_gguf_path
from bots.cli_args import CommandParser
from bots.gguf_lora import cached_gguf_lora, read_head_layout
from bots.gguf_merge import cached_merged_gguf
from bots.llama_engine import LlamaModel, Run, quantize_model
from bots.registry import default_adapters_dir

BATCHES = (1, 2, 4, 8)
PROMPT = "<|im_start|>user\nHow long do I have to return shoes I bought last week?<|im_end|>\n<|im_start|>assistant\n"
PREFILL_TOKENS = 256


def step_times(model: LlamaModel, adapter_gguf: Path | None, steps: int) -> dict[int | str, float]:
    """Seconds per decode step of k sequences, for every k in BATCHES, and per token of a
    PREFILL_TOKENS prefill (key 'prefill')."""
    context = model.new_context(512, max(BATCHES), 256)
    try:
        if adapter_gguf is not None:
            context.set_adapter(model.load_adapter(adapter_gguf))
        prompt = model.tokenize(PROMPT)
        for seq in range(max(BATCHES)):
            context.decode([Run(seq, prompt, 0)])
        times: dict[int | str, float] = {}
        long_prompt = (prompt * (PREFILL_TOKENS // len(prompt) + 1))[:PREFILL_TOKENS]
        context.forget(0)
        context.decode([Run(0, long_prompt, 0)])  # warm
        started = time.perf_counter()
        for _ in range(3):
            context.forget(0)
            context.decode([Run(0, long_prompt, 0)])
        times["prefill"] = (time.perf_counter() - started) / 3 / PREFILL_TOKENS
        context.forget(0)
        context.decode([Run(0, prompt, 0)])
        for k in BATCHES:
            context.decode([Run(seq, [28], len(prompt)) for seq in range(k)])  # warm: graph built for this shape
            started = time.perf_counter()
            for step in range(1, steps + 1):
                context.decode([Run(seq, [28], len(prompt) + step) for seq in range(k)])
            times[k] = (time.perf_counter() - started) / steps
            for seq in range(max(BATCHES)):
                context.forget(seq, len(prompt))
        return times
    finally:
        context.close()


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(prog="python -m benchmarks.batch_scaling", description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", default="ecommerce", help="adapter folder under bots/adapters (default ecommerce)")
    parser.add_argument("--steps", type=int, default=20, help="decode steps timed per batch size (default 20)")
    parser.add_argument("--threads", type=int, default=None, help="compute threads (default: all cores)")
    parser.add_argument("--requantize", default="Q4_0", help="also time the base quantised again to this type (default Q4_0; '' for none)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    adapter_dir = default_adapters_dir() / args.adapter
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        parser.error(f"no adapter at {adapter_dir} (train it first, or pass --adapter)")
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    spec = BaseModelSpec.from_env()
    base_path = embedded_gguf_path()
    lora = cached_gguf_lora(adapter_dir, spec.cache_dir, read_head_layout(base_path))
    merged = cached_merged_gguf(base_path, cached_file_sha256(base_path, spec.cache_dir), lora, spec.cache_dir, "Q8_0")
    base_model = LlamaModel(base_path, args.threads)
    ways = {
        "bare base (Q4_1)": step_times(base_model, None, args.steps),
        f"{args.adapter} adapter at run time": step_times(base_model, lora, args.steps),
        f"{args.adapter} merged (Q8_0)": step_times(LlamaModel(merged, args.threads), None, args.steps),
    }
    if args.requantize:
        requantized = spec.cache_dir / "requantized" / f"{base_path.stem}-{args.requantize}.gguf"
        if not requantized.is_file():
            quantize_model(base_path, requantized, args.requantize)
        ways[f"bare base requantised to {args.requantize}"] = step_times(LlamaModel(requantized, args.threads), None, args.steps)
    print("| | " + " | ".join(f"{k} seq" for k in BATCHES) + f" | prefill of {PREFILL_TOKENS} tokens |")
    print("|---" * (len(BATCHES) + 2) + "|")
    for name, times in ways.items():
        cells = [f"{times[k] * 1000:.1f} ms, {k / times[k]:.0f} tok/s ({k / times[k] / (1 / times[1]):.2f}x)" for k in BATCHES]
        cells.append(f"{times['prefill'] * 1000:.2f} ms/token ({times[1] / times['prefill']:.1f}x one decode step)")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("(ms per decode step; tok/s = sequences / step time; in brackets the ratio to one sequence of the same way;")
    print(" prefill: ms per prompt token, and how many times cheaper a prompt token is than a decode step)")
    if args.json:
        args.json.write_text(json.dumps({name: {str(k): t for k, t in times.items()} for name, times in ways.items()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
