"""Benchmark: what the emergency guard adds to a request, rules alone against rules + detector.

    python -m benchmarks.detector                      # llama.cpp (auto) backend, 60 messages
    python -m benchmarks.detector --backend transformers --messages 30

Times, per message of ``bots/safety_eval/tiers_dev.jsonl``, the rules alone and the whole
guard (rules + the detector's forward pass and networks), after a warm-up, and prints
median and p95 milliseconds, the detector's share, and the ratio to one reply's time to first
token measured in the same run (the baseline a user already waits for). On llama.cpp it also
times the forward pass alone on the same messages twice: through the headless copy the guard
uses (token vectors in, no output layer) and through a copy that keeps the vocabulary (token
ids in, the output layer over 49,152 tokens computed and thrown away), and through a headless
copy with Q4_0 weights (the faster kernels; not what the shipped detector was fitted on), and
prints the ratios to the shipped copy.
Target: the detector adds <= 30 ms per message on 2 cores. A benchmark that prints figures,
never a timed test.
"""

from __future__ import annotations

import statistics
import sys
import time

from bots.backbone_base import EMBED_MAX_TOKENS
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
    if backbone.backend == "llamacpp" and guard.detector.blocks:
        # On the scheduler thread, as the guard's own pass: a second computing thread slows both.
        detector = guard.detector
        times = backbone.run_on_scheduler(lambda: forward_passes(backbone, texts, detector.blocks, detector.copy_weights))  # type: ignore[attr-defined]
        shipped = statistics.median(times["shipped"])
        print(f"forward pass alone, headless copy (shipped, {detector.copy_weights or 'base weights'}): {_ms(times['shipped'])}")
        print(f"forward pass alone, copy with the vocabulary: {_ms(times['with vocabulary'])}; shipped / with vocabulary = {shipped / statistics.median(times['with vocabulary']):.2f}x")
        print(f"forward pass alone, headless Q4_0 copy: {_ms(times['Q4_0'])}; Q4_0 / shipped = {statistics.median(times['Q4_0']) / shipped:.2f}x")
    return 0


def forward_passes(backbone: object, texts: list[str], blocks: int, copy_weights: str | None = None) -> dict[str, list[float]]:
    """Seconds per message of the detector's forward pass through three copies, alternating: the
    headless copy the guard uses ("shipped"), a truncated copy with its vocabulary ("with
    vocabulary", the baseline of the headless change) and a headless copy in Q4_0 ("Q4_0")."""
    from bots.gguf_truncate import TokenRows, cached_truncated_gguf
    from bots.llama_engine import EmbeddingContext, LlamaModel

    base, threads = backbone.base, backbone.model.threads  # type: ignore[attr-defined]
    rows = TokenRows(base.path)
    copies = {"shipped": (True, copy_weights), "with vocabulary": (False, copy_weights), "Q4_0": (True, "Q4_0")}
    contexts = {
        name: EmbeddingContext(
            LlamaModel(cached_truncated_gguf(base.path, blocks, backbone.cache_dir, base.fingerprint, headless=headless, weights=weights), threads),  # type: ignore[attr-defined]
            EMBED_MAX_TOKENS,
            threads,
            rows if headless else None,
        )
        for name, (headless, weights) in copies.items()
    }
    times: dict[str, list[float]] = {name: [] for name in contexts}
    try:
        for text in texts:
            tokens = backbone.encode_text(text)  # type: ignore[attr-defined]
            for name, context in contexts.items():
                context.embed(tokens)  # the first pass of a length allocates; time the second
                started = time.perf_counter()
                context.embed(tokens)
                times[name].append(time.perf_counter() - started)
    finally:
        for context in contexts.values():
            context.close()
    return times


if __name__ == "__main__":
    sys.exit(main())
