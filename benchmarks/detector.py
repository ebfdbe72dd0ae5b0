"""Benchmark: what the emergency guard adds to a request, rules alone against rules + detector.

    python -m benchmarks.detector                      # llama.cpp (auto) backend, 60 messages
    python -m benchmarks.detector --backend transformers --messages 30

Times, per message of ``bots/safety_eval/tiers_dev.jsonl``, the rules alone and the whole
guard (rules + the detector's forward pass and linear layer), after a warm-up, and prints
median and p95 milliseconds, the detector's share, and the ratio to one reply's time to first
token measured in the same run (the baseline a user already waits for). Target: the detector
adds <= 30 ms per message on 2 cores. A benchmark that prints figures, never a timed test.
"""

from __future__ import annotations

import statistics
import sys
import time

from bots.backends import build_backbone
from bots.base_source import BaseModelSpec
from bots.cli_args import CommandParser
from bots.generation import GenerationSettings
from bots.guard import EmergencyGuard
from bots.safety import detect_emergency
from bots.safety_eval import SAFETY_EVAL_DIR, load_tiered


def _ms(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return f"median {1000 * statistics.median(ordered):.1f} ms, p95 {1000 * p95:.1f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(prog="python -m benchmarks.detector", description="Time the emergency guard: rules alone against rules + learned detector.")
    parser.add_argument("--backend", default=None, help="serving backend (default auto)")
    parser.add_argument("--messages", type=int, default=60, help="messages to time (default 60)")
    args = parser.parse_args(argv)
    if args.messages < 1:
        parser.error("--messages must be positive")
    backbone = build_backbone(BaseModelSpec.from_env(backend=args.backend))
    guard = EmergencyGuard.for_backbone(backbone)
    if guard.detector is None:
        print(f"no detector for this base: {guard.detector_status}", file=sys.stderr)
        return 1
    texts = [m.text for m in load_tiered(SAFETY_EVAL_DIR / "tiers_dev.jsonl")][: args.messages]
    guard.assess(texts[0], None)  # warm-up: the embedding context (and the truncated GGUF) on first use
    rules, combined = [], []
    for text in texts:
        started = time.perf_counter()
        match = detect_emergency(text)
        rules.append(time.perf_counter() - started)
        started = time.perf_counter()
        guard.assess(text, match)
        combined.append(time.perf_counter() - started + rules[-1])
    added = [c - r for c, r in zip(combined, rules, strict=True)]
    from bots.registry import Runtime

    bot = Runtime.from_backbone(backbone).bot("medical-lora")
    stream = bot.reply([{"role": "user", "content": texts[1]}], GenerationSettings(max_new_tokens=8), guard=False)
    print(f"backend {backbone.backend}, {len(texts)} messages, detector after {guard.detector.blocks or 'all'} blocks")
    print(f"rules alone:        {_ms(rules)}")
    print(f"rules + detector:   {_ms(combined)}")
    print(f"added by detector:  {_ms(added)} (target <= 30 ms)")
    print(f"one reply's time to first token (medical-lora, no guard): {1000 * stream.stats.ttft_s:.1f} ms; detector / TTFT = {statistics.median(added) / stream.stats.ttft_s:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
