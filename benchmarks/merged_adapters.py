"""Benchmark: LoRA variants served with the adapter applied at run time against a merged copy of the base.

For every adapter variant (LoRA and hybrid) and a few probe questions of its domain, one
reply at a time, greedy, guards off, on the llama.cpp backend:

* decode tokens/s with the adapter applied at run time, with the merged weights
  (bots/gguf_merge.py), and of the bare base on the same prompts: the baseline of the same
  run (target: merged >= 0.9x the bare base);
* how often the merged replies agree with the run-time ones (the share of the first tokens
  before the two greedy replies part): the merge is W + B A stored as Q8_0, so small
  rounding differences are expected, not a different model;
* the wall time of one message to all four UI variants at once against one reply alone
  (target <= 2x), both ways;
* the merged files' size, and the KV cache each merged pool adds.

    python -m benchmarks.merged_adapters                 # 4 probes a variant; --probes 3 took 2 minutes here
    python -m benchmarks.merged_adapters --probes 2 --json merged.json
"""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from benchmarks.serving import probe_questions, replies_together
from bots.base_source import BaseModelSpec
from bots.cli_args import CommandParser
from bots.generation import GenerationSettings

UI_VARIANTS = ("ecommerce-lora", "ecommerce-prompt", "medical-lora", "medical-prompt")
TARGETS = {"merged_vs_base": 0.9, "compare_ratio": 2.0}


@dataclass
class AdapterFigures:
    variant: str
    runtime_tok_s: float
    merged_tok_s: float
    base_tok_s: float
    agreement: float
    """Mean share of the first tokens (up to --agree-tokens) before merged and run-time replies part."""


@dataclass
class MergedResults:
    adapters: list[AdapterFigures] = field(default_factory=list)
    compare: dict = field(default_factory=dict)
    files_mb: dict = field(default_factory=dict)
    kv_mb_per_pool: float = 0.0


def _decode_rate(backbone: object, prompt: list[int], adapter: str | None, settings: GenerationSettings) -> tuple[float, list[int]]:
    from bots.generation import GenerationStats

    stats = GenerationStats()
    "".join(backbone.stream(prompt, adapter, settings, stats))  # type: ignore[attr-defined]
    return stats.decode_tokens_per_s, stats.token_ids


def _shared_share(a: list[int], b: list[int], n: int) -> float:
    a, b = a[:n], b[:n]
    if not a and not b:
        return 1.0
    same = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return same / max(len(a), len(b))


Decodes = dict[str, list[tuple[float, list[int]]]]
"""Per adapter variant, per probe: decode tok/s and the reply's token ids."""


def measure_decodes(runtime: object, probes: int, settings: GenerationSettings, adapter: bool = True) -> Decodes:
    """Every adapter variant's probes, with its adapter (or, ``adapter=False``, on the bare base)."""
    found: Decodes = {}
    for name, bot in runtime.bots.items():  # type: ignore[attr-defined]
        if not bot.availability.ok or not bot.adapter:
            continue
        found[name] = []
        for question in probe_questions(bot.spec.domain, probes):
            prompt = runtime.backbone.encode(bot.render([{"role": "user", "content": question}]))  # type: ignore[attr-defined]
            found[name].append(_decode_rate(runtime.backbone, prompt, bot.adapter if adapter else None, settings))  # type: ignore[attr-defined]
    return found


def adapter_rows(runtime_path: Decodes, merged: Decodes, base: Decodes, agree_tokens: int) -> list[AdapterFigures]:
    def median_rate(runs: list[tuple[float, list[int]]]) -> float:
        return statistics.median(rate for rate, _ in runs if rate)

    rows = []
    for name, runs in runtime_path.items():
        agreement = statistics.mean(_shared_share(m[1], r[1], agree_tokens) for m, r in zip(merged[name], runs, strict=True))
        rows.append(AdapterFigures(name, median_rate(runs), median_rate(merged[name]), median_rate(base[name]), agreement))
    return rows


def measure_compare(runtime: object, settings: GenerationSettings) -> dict:
    """One message to the four UI variants at once, against the mean of each alone."""
    bots = [runtime.bot(name) for name in UI_VARIANTS]  # type: ignore[attr-defined]
    question = [{"role": "user", "content": probe_questions("ecommerce", 1)[0]}]
    alone = statistics.mean(bot.reply(question, settings, guard=False).stats.latency_s for bot in bots)
    _, together = replies_together(bots, question, settings)
    return {"one_reply_s": alone, "all_four_s": together, "ratio": together / alone}


def print_report(results: MergedResults) -> None:
    print("## Adapter variants: decode tokens/s, one reply at a time (median over the probes)")
    print("| variant | run-time adapter | merged | bare base | run-time / base | merged / base | merged vs run-time agreement |")
    print("|---|---|---|---|---|---|---|")
    for row in results.adapters:
        runtime_ratio, merged_ratio = row.runtime_tok_s / row.base_tok_s, row.merged_tok_s / row.base_tok_s
        verdict = "meets" if merged_ratio >= TARGETS["merged_vs_base"] else "MISSES"
        print(
            f"| {row.variant} | {row.runtime_tok_s:.1f} | {row.merged_tok_s:.1f} | {row.base_tok_s:.1f} | {runtime_ratio:.2f} | "
            f"{merged_ratio:.2f} ({verdict} >= {TARGETS['merged_vs_base']}) | {row.agreement:.0%} |"
        )
    print("\n## One message to all four UI variants at once, against one reply alone")
    for mode, c in results.compare.items():
        verdict = "meets" if c["ratio"] <= TARGETS["compare_ratio"] else "MISSES"
        print(f"{mode:9} alone {c['one_reply_s']:.2f} s, all four {c['all_four_s']:.2f} s: {c['ratio']:.2f}x ({verdict} <= {TARGETS['compare_ratio']}x)")
    print("\n## What merging costs")
    for name, size in results.files_mb.items():
        print(f"{name}: {size:.1f} MB (memory-mapped)")
    print(f"KV cache per merged pool: {results.kv_mb_per_pool:.0f} MB, made at warm-up or on first use")


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(prog="python -m benchmarks.merged_adapters", description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=4, help="probe questions per adapter variant (default 4)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--agree-tokens", type=int, default=32, help="tokens compared for agreement (default 32)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.probes < 1 or args.max_new_tokens < 1:
        parser.error("--probes and --max-new-tokens must be at least 1")

    from bots.backends import build_backbone
    from bots.registry import Runtime

    spec = BaseModelSpec.from_env(backend="llamacpp")
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens)
    results = MergedResults()
    # One backbone at a time: two scheduler threads in one process make two OpenMP teams, and
    # libgomp then sleeps at every barrier (bots/llama_backbone.py, _on_scheduler): both slow down.
    print("run-time adapters: decode speed and the four-variant answer...", flush=True)
    runtime_path = Runtime.from_backbone(build_backbone(replace(spec, merge_adapters=False)), warm_prompts=True)
    runtime_path.backbone.wait_idle()
    runtime_decodes = measure_decodes(runtime_path, args.probes, settings)
    base_decodes = measure_decodes(runtime_path, args.probes, settings, adapter=False)
    results.compare = {"run-time": measure_compare(runtime_path, settings)}
    runtime_path.backbone.close()
    print("merged adapters (merging takes ~10 s per adapter the first time)...", flush=True)
    merged = Runtime.from_backbone(build_backbone(replace(spec, merge_adapters=True)), warm_prompts=True)
    merged.backbone.wait_idle()
    merged_decodes = measure_decodes(merged, args.probes, settings)
    results.compare["merged"] = measure_compare(merged, settings)
    results.adapters = adapter_rows(runtime_decodes, merged_decodes, base_decodes, args.agree_tokens)
    backbone = merged.backbone
    merged_lanes = 0
    for name, pool in backbone._pools.items():  # noqa: SLF001  a benchmark reads the backbone's insides
        if pool.merged:
            results.files_mb[name] = pool.model.path.stat().st_size / 1e6
            merged_lanes = pool.lane_count
    results.kv_mb_per_pool = merged_lanes * backbone.kv_bytes_per_lane() / 1e6
    merged.backbone.close()
    print()
    print_report(results)
    if args.json:
        args.json.write_text(json.dumps(asdict(results), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
