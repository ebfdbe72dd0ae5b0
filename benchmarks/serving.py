"""Serving benchmark: the fast backend against plain llama.cpp and the transformers reference.

One run measures, on this machine and the same GGUF file:

* start to ready, in fresh processes: cold (empty cache folder) and warm (caches built);
* per variant: time to first token (first request, and again with the prompt prefix
  cached), decode tokens/s, the latency of one reply, and how long building its prompt takes
  (for the prompt method: BM25 over the fact sheet and the example selector; target <= 20 ms);
* plain llama.cpp (llama-cpp-python's ``Llama``, greedy, no adapter) on the same prompts;
* peak memory (fresh processes): the bare base model serving one variant, and all four;
* the wall time to answer one message with all four variants at once (the Side by side
  view) against one reply alone;
* that the fast backend is the same model: greedy replies of the fast and the reference
  backend agree on the first 32 tokens (common-prefix share), and prompt token ids match;

and prints each figure with its ratio and the target. Run::

    python -m benchmarks.serving                 # about 5 minutes on 2 cores
    python -m benchmarks.serving --quick         # fewer probes, no cold start of transformers
    python -m benchmarks.serving --json out.json # also write the figures
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import domains
from bots.base_source import BaseModelSpec, embedded_gguf_path
from bots.cli_args import CommandParser
from bots.generation import GenerationSettings, GenerationStats

PROBES_DIR = Path(__file__).resolve().parent.parent / "training" / "probes"
PROBE_FILES = {name: domains.pack(name).probe(domains.pack(name).bench_probe_source).file for name in domains.names()}
"""The probe file whose questions time each domain (its pack's ``bench_probe_source``)."""
ENV_BENCH_VARIANTS = "TOP_BENCH_VARIANTS"
"""The memory child answers only these variants (comma-separated; empty: every one)."""
TARGETS = {"render_ms": 20.0, "decode_vs_llamacpp": 0.8, "warm_start_s": 3.0, "memory_ratio": 1.3, "compare_ratio": 2.0, "agreement": 0.9}


@dataclass(frozen=True)
class BenchConfig:
    probes_per_domain: int = 4
    max_new_tokens: int = 64
    agreement_tokens: int = 32
    fast_backend: str = "llamacpp"
    reference_backend: str = "transformers"
    cold_reference: bool = True
    """Also time the transformers cold start (about 20 s: it dequantises the GGUF)."""


@dataclass
class VariantFigures:
    variant: str
    ttft_first_s: float = 0.0
    ttft_cached_s: float = 0.0
    decode_tok_s: float = 0.0
    reply_s: float = 0.0
    prompt_tokens: int = 0
    llamacpp_ttft_s: float = 0.0
    llamacpp_decode_tok_s: float = 0.0
    render_ms: float = 0.0
    """Median time to build the prompt messages (retrieval included), in ms."""
    render_first_ms: float = 0.0
    """The first build of the process (indexes made on first use)."""


@dataclass
class BenchResults:
    machine: dict = field(default_factory=dict)
    start: dict = field(default_factory=dict)
    variants: list[VariantFigures] = field(default_factory=list)
    memory: dict = field(default_factory=dict)
    compare: dict = field(default_factory=dict)
    agreement: dict = field(default_factory=dict)


def probe_questions(domain: str, count: int) -> list[str]:
    lines = (PROBES_DIR / PROBE_FILES[domain]).read_text(encoding="utf-8").splitlines()
    questions = [json.loads(line)["question"] for line in lines if line.strip()]
    step = max(1, len(questions) // count)  # spread over the file: different topics
    return questions[::step][:count]


# --- fresh processes: start and memory ------------------------------------------------------


def _child_main(argv: list[str]) -> None:
    """Run inside a fresh process: load, optionally answer, print one JSON line."""
    mode, backend = argv[0], argv[1]
    if mode == "plain":
        job = json.loads(Path(backend).read_text())
        results = plain_llamacpp(job["prompts"], GenerationSettings(**job["settings"]), job["threads"])
        print("BENCH " + json.dumps({"results": results}), flush=True)
        return
    started = time.perf_counter()
    from bots.backends import build_backbone
    from bots.registry import Runtime

    spec = BaseModelSpec.from_env(backend=backend)
    backbone = build_backbone(spec)
    runtime = Runtime.from_backbone(backbone)
    ready = time.perf_counter() - started
    out: dict = {"ready_in_process_s": ready, "load_s": backbone.base.load_seconds}
    if mode == "memory":
        settings = GenerationSettings(max_new_tokens=32)
        only = set(filter(None, os.environ.get(ENV_BENCH_VARIANTS, "").split(",")))
        answered = []
        for name, bot in runtime.bots.items():
            if bot.availability.ok and (not only or name in only):
                bot.reply([{"role": "user", "content": "How long do I have to return an item?"}], settings, guard=False)
                answered.append(name)
        out["answered"] = answered
        out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("BENCH " + json.dumps(out), flush=True)


def _run_child(mode: str, backend: str, env: dict[str, str]) -> dict:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "benchmarks.serving", "--child", mode, backend], env={**os.environ, **env}, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    lines = [line for line in proc.stdout.splitlines() if line.startswith("BENCH ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"benchmark child ({mode}, {backend}) failed: {proc.stderr[-2000:]}")
    figures = json.loads(lines[-1][len("BENCH ") :])
    figures["process_s"] = wall
    return figures


def measure_start(backend: str) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        cold = _run_child("start", backend, {"TOP_CACHE_DIR": cache})
        warm = _run_child("start", backend, {"TOP_CACHE_DIR": cache})
    return {"cold": cold, "warm": warm}


def _headline_adapters(into: Path) -> Path:
    """A folder that links only the headline variants' adapters (the hybrids' stay out)."""
    from bots.registry import HEADLINE_VARIANTS, METHODS, VARIANTS, default_adapters_dir

    source = default_adapters_dir()
    for name in HEADLINE_VARIANTS:
        folder_of = getattr(METHODS[VARIANTS[name].method].bot_class, "adapter_folder_of", None)
        folder = folder_of(VARIANTS[name].domain) if folder_of else None
        if folder and (source / folder).is_dir():
            (into / folder).symlink_to(source / folder)
    return into


def measure_memory(backend: str) -> dict:
    """Peak memory of the bare base, of the four headline variants (the Chat tab's), and of
    every variant (the hybrids' adapters too), each in a fresh process."""
    from bots.registry import HEADLINE_VARIANTS

    with tempfile.TemporaryDirectory() as no_adapters:
        base_only = _run_child("memory", backend, {"TOP_ADAPTERS_DIR": no_adapters})
    with tempfile.TemporaryDirectory() as headline_dir:
        all_four = _run_child("memory", backend, {"TOP_ADAPTERS_DIR": str(_headline_adapters(Path(headline_dir))), ENV_BENCH_VARIANTS: ",".join(HEADLINE_VARIANTS)})
    every = _run_child("memory", backend, {})
    return {
        "base_only": base_only,
        "all_four": all_four,
        "every_variant": every,
        "ratio": all_four["peak_rss_mb"] / base_only["peak_rss_mb"],
        "every_ratio": every["peak_rss_mb"] / base_only["peak_rss_mb"],
    }


# --- in this process: speed, compare, agreement -------------------------------------------------


def _timed_reply(bot: object, question: str, settings: GenerationSettings) -> GenerationStats:
    stream = bot.reply([{"role": "user", "content": question}], settings, guard=False)  # type: ignore[attr-defined]
    return stream.stats


def _render_times(bot: object, questions: list[str], repeats: int = 20) -> tuple[float, float]:
    """(first build, median build) in ms of the bot's prompt messages: what a request costs before the model runs."""
    times = []
    for question in questions * repeats:
        started = time.perf_counter()
        bot.render([{"role": "user", "content": question}])  # type: ignore[attr-defined]
        times.append((time.perf_counter() - started) * 1000)
    return times[0], statistics.median(times)


def plain_llamacpp(prompts: list[list[int]], settings: GenerationSettings, threads: int | None) -> list[tuple[float, float, list[int]]]:
    """llama-cpp-python's ``Llama`` on the same GGUF, no adapter, in this process: for each
    prompt (time to first token, decode tok/s, token ids). Tokens are picked with the same
    TokenPicker as the backends, so the per-token work outside llama.cpp is the same."""
    import llama_cpp
    import numpy as np

    from bots.generation import TokenPicker

    n = threads or os.cpu_count() or 1
    llm = llama_cpp.Llama(str(embedded_gguf_path()), n_ctx=2048, n_threads=n, n_threads_batch=n, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    results = []
    for prompt_ids in prompts:
        llm.reset()
        picker, ids, first = TokenPicker(settings), [], 0.0
        started = time.perf_counter()
        llm.eval(prompt_ids)
        for _ in range(settings.max_new_tokens):
            logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))  # the last position's logits
            token = picker(logits, ids)
            first = first or time.perf_counter() - started
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                break
            ids.append(token)
            llm.eval([token])
        total = time.perf_counter() - started
        results.append((first, (len(ids) - 1) / (total - first) if len(ids) > 1 else 0.0, ids))
    llm.close()
    return results


def plain_llamacpp_in_child(prompts: list[list[int]], settings: GenerationSettings, threads: int | None) -> list[tuple[float, float, list[int]]]:
    """plain_llamacpp in a fresh process: two llama.cpp users in one process get two OpenMP
    thread teams that spin against each other, halving both speeds (measured)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump({"prompts": prompts, "settings": asdict(settings), "threads": threads}, handle)
    try:
        return [tuple(row) for row in _run_child("plain", handle.name, {})["results"]]
    finally:
        os.unlink(handle.name)


def measure_variants(runtime: object, config: BenchConfig, threads: int | None) -> list[VariantFigures]:
    settings = GenerationSettings(max_new_tokens=config.max_new_tokens)
    figures = []
    for name, bot in runtime.bots.items():  # type: ignore[attr-defined]
        if not bot.availability.ok:
            continue
        domain_questions = probe_questions(bot.spec.domain, config.probes_per_domain)
        first_ms, render_ms = _render_times(bot, domain_questions)
        runs = [_timed_reply(bot, question, settings) for question in domain_questions]
        again = _timed_reply(bot, domain_questions[0], settings)  # same fixed prefix as before: cached
        row = VariantFigures(
            name,
            ttft_first_s=runs[0].ttft_s,
            ttft_cached_s=statistics.median([run.ttft_s for run in runs[1:]] + [again.ttft_s]),
            decode_tok_s=statistics.median([run.decode_tokens_per_s for run in runs if run.new_tokens > 1]),
            reply_s=statistics.median([run.latency_s for run in runs]),
            prompt_tokens=int(statistics.median([run.prompt_tokens for run in runs])),
            render_ms=render_ms,
            render_first_ms=first_ms,
        )
        prompts = [runtime.backbone.encode(bot.render([{"role": "user", "content": q}])) for q in domain_questions]  # type: ignore[attr-defined]
        plain = plain_llamacpp_in_child(prompts, settings, threads)
        row.llamacpp_ttft_s = statistics.median([p[0] for p in plain])
        row.llamacpp_decode_tok_s = statistics.median([p[1] for p in plain if p[1]])
        figures.append(row)
    return figures


def replies_together(bots: list, conversation: list[dict[str, str]], settings: GenerationSettings) -> tuple[list, float]:
    """Every bot answers the conversation at once (guards off); the streams and the wall time."""
    started = time.perf_counter()
    streams = [bot.stream(conversation, settings, guard=False) for bot in bots]
    threads = [threading.Thread(target=stream.consume) for stream in streams]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return streams, time.perf_counter() - started


def _compare(bots: list, question: str, settings: GenerationSettings) -> dict:
    alone = {bot.spec.name: _timed_reply(bot, question, settings).latency_s for bot in bots}
    streams, together = replies_together(bots, [{"role": "user", "content": question}], settings)
    one = statistics.mean(alone.values())
    return {
        "variants": [bot.spec.name for bot in bots],
        "alone_s": alone,
        "one_reply_mean_s": one,
        "slowest_alone_s": max(alone.values()),
        "together_s": together,
        "ratio": together / one,
        "tokens": [s.stats.new_tokens for s in streams],
    }


def measure_compare(runtime: object, config: BenchConfig) -> dict:
    """One message answered at once by the four headline variants (Side by side's default:
    two domains x lora/prompt), and by every method of its domain, each against the same
    variants alone. The ratio's target (<= 2x) is the headline four's."""
    from bots.registry import HEADLINE_VARIANTS

    settings = GenerationSettings(max_new_tokens=config.max_new_tokens)
    question = probe_questions("ecommerce", 1)[0]
    available = {name: bot for name, bot in runtime.bots.items() if bot.availability.ok}  # type: ignore[attr-defined]
    headline = _compare([available[name] for name in HEADLINE_VARIANTS if name in available], question, settings)
    domain = _compare([bot for bot in available.values() if bot.spec.domain == "ecommerce"], question, settings)
    return {**headline, "all_four_s": headline["together_s"], "one_domain": domain}


def measure_agreement(fast: object, reference: object, config: BenchConfig) -> dict:
    """Is the fast backend the same model? Three views over the probe set (greedy, first n tokens):

    * free-running: the share of the first n tokens before the two replies part (one near-tie
      between two candidate tokens changes everything after it);
    * teacher-forced: fed the reference's reply, how often the fast backend picks the
      reference's next token (the same decision at every position);
    * against plain llama.cpp: the scheduler and batching change nothing.
    """
    settings = GenerationSettings(max_new_tokens=config.agreement_tokens)
    n = config.agreement_tokens
    free, forced, plain, same_prompt, pairs = [], [], [], 0, []
    backbone = fast.backbone  # type: ignore[attr-defined]
    for name, bot in fast.bots.items():  # type: ignore[attr-defined]
        ref_bot = reference.bots[name]  # type: ignore[attr-defined]
        if not (bot.availability.ok and ref_bot.availability.ok):
            continue
        for question in probe_questions(bot.spec.domain, config.probes_per_domain):
            conversation = [{"role": "user", "content": question}]
            fast_ids = backbone.encode(bot.render(conversation))
            ref_ids = reference.backbone.encode(ref_bot.render(conversation))  # type: ignore[attr-defined]
            same_prompt += fast_ids == ref_ids
            got = bot.reply(conversation, settings, guard=False).stats
            want = ref_bot.reply(conversation, settings, guard=False).stats
            share = _agreement(got.token_ids, got.stopped_by, want.token_ids, want.stopped_by, n)
            free.append(share)
            forced.append(_teacher_forced(backbone, fast_ids, bot.adapter, want.token_ids, want.stopped_by, settings))
            if bot.adapter is None:
                plain_ids = plain_llamacpp_in_child([fast_ids], settings, None)[0][2]
                plain.append(_agreement(got.token_ids, got.stopped_by, plain_ids, "eos" if len(plain_ids) < n else "length", n))
            pairs.append({"variant": name, "question": question, "share": share, "forced": forced[-1]})
    return {
        "free_running": statistics.mean(free) if free else 0.0,
        "teacher_forced": statistics.mean(forced) if forced else 0.0,
        "vs_plain_llamacpp": statistics.mean(plain) if plain else None,
        "pairs": len(free),
        "identical_prompts": same_prompt,
        "lowest": sorted(pairs, key=lambda p: p["share"])[:3],
    }


def _teacher_forced(backbone: object, prompt_ids: list[int], adapter: str | None, reference: list[int], reference_stop: str, settings: GenerationSettings) -> float:
    """Share of the reference's next-token decisions the fast backend makes too, fed the reference's tokens."""
    from bots.generation import TokenPicker
    from bots.llama_engine import Run

    context = backbone.model.new_context(len(prompt_ids) + len(reference) + 8, 1, 512)  # type: ignore[attr-defined]
    try:
        context.set_adapter(backbone._adapter_handles[adapter] if adapter else None)  # type: ignore[attr-defined]
        picker = TokenPicker(settings)
        targets = reference + ([-1] if reference_stop == "eos" else [])  # -1: "end of reply here"
        logits = context.decode([Run(0, prompt_ids, 0)])[0]
        same = 0
        for i, target in enumerate(targets):
            pick = picker(logits, reference[:i])
            same += (pick == target) or (target == -1 and backbone.model.is_end_of_generation(pick))  # type: ignore[attr-defined]
            if i < len(reference):
                logits = context.decode([Run(0, [reference[i]], len(prompt_ids) + i)])[0]
        return same / len(targets) if targets else 1.0
    finally:
        context.close()


def _agreement(got: list[int], got_stop: str, want: list[int], want_stop: str, n: int) -> float:
    """Share of the first n tokens on which two greedy replies agree (common prefix; ending together counts)."""
    common = 0
    for a, b in zip(got[:n], want[:n], strict=False):
        if a != b:
            return common / n
        common += 1
    if common >= n:
        return 1.0
    ended_together = len(got) == len(want) == common and got_stop == want_stop == "eos"
    return 1.0 if ended_together else common / n


# --- report -------------------------------------------------------------------------------------


def _check(value: float, target: float, higher_is_better: bool) -> str:
    ok = value >= target if higher_is_better else value <= target
    return "meets" if ok else "MISSES"


def print_report(results: BenchResults) -> None:
    print(f"machine: {results.machine}")
    print("\n## Start to ready (fresh process; in-process load in brackets)")
    for backend, figures in results.start.items():
        for state in ("cold", "warm"):
            if state in figures:
                f = figures[state]
                print(f"{backend:13} {state}: {f['process_s']:.2f} s  [{f['ready_in_process_s']:.2f} s]")
    warm = results.start.get("llamacpp", {}).get("warm")
    warmup = results.start.get("llamacpp", {}).get("prefix_warmup_after_ready_s")
    if warmup is not None:
        print(f"llamacpp      prompt prefixes cached in the background {warmup:.2f} s after ready (requests meanwhile wait for it)")
    if warm:
        print(f"target warm start <= {TARGETS['warm_start_s']} s: {warm['process_s']:.2f} s ({_check(warm['process_s'], TARGETS['warm_start_s'], False)})")
    print("\n## Per variant (fast backend), next to plain llama.cpp on the same prompt")
    print("| variant | prompt tok | prompt build ms (first) | TTFT first | TTFT cached | decode tok/s | llama.cpp decode | ratio | llama.cpp TTFT | reply s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for v in results.variants:
        ratio = v.decode_tok_s / v.llamacpp_decode_tok_s if v.llamacpp_decode_tok_s else 0.0
        print(
            f"| {v.variant} | {v.prompt_tokens} | {v.render_ms:.2f} ({v.render_first_ms:.1f}; {_check(v.render_ms, TARGETS['render_ms'], False)}) | {v.ttft_first_s:.2f} | {v.ttft_cached_s:.2f} | {v.decode_tok_s:.1f} | "
            f"{v.llamacpp_decode_tok_s:.1f} | {ratio:.2f} ({_check(ratio, TARGETS['decode_vs_llamacpp'], True)}) | {v.llamacpp_ttft_s:.2f} | {v.reply_s:.2f} |"
        )
    print("\n## Peak memory (fresh process, MB)")
    for backend, m in results.memory.items():
        print(
            f"{backend:13} base only {m['base_only']['peak_rss_mb']:.0f}, the four headline variants {m['all_four']['peak_rss_mb']:.0f} (ratio {m['ratio']:.2f}), "
            f"every variant {m['every_variant']['peak_rss_mb']:.0f} (ratio {m['every_ratio']:.2f})"
        )
    fast_memory = results.memory.get("llamacpp")
    if fast_memory:
        print(f"target all four <= {TARGETS['memory_ratio']}x one base: {fast_memory['ratio']:.2f}x ({_check(fast_memory['ratio'], TARGETS['memory_ratio'], False)})")
    c = results.compare
    if c:
        print("\n## One message to all four variants (Side by side)")
        print(f"headline four ({', '.join(c['variants'])}): alone {c['one_reply_mean_s']:.2f} s on average (slowest {c['slowest_alone_s']:.2f} s), all at once {c['together_s']:.2f} s: {c['ratio']:.2f}x ({_check(c['ratio'], TARGETS['compare_ratio'], False)} <= {TARGETS['compare_ratio']}x)")
        d = c["one_domain"]
        print(f"every method of one domain ({', '.join(d['variants'])}): alone {d['one_reply_mean_s']:.2f} s on average (slowest {d['slowest_alone_s']:.2f} s), all at once {d['together_s']:.2f} s: {d['ratio']:.2f}x")
    a = results.agreement
    if a:
        print("\n## Same model? Greedy agreement with the reference (transformers) on the first 32 tokens")
        print(f"identical prompt token ids: {a['identical_prompts']}/{a['pairs']}")
        print(f"teacher-forced (same next-token decision): {a['teacher_forced']:.1%} ({_check(a['teacher_forced'], TARGETS['agreement'], True)} >= {TARGETS['agreement']:.0%})")
        print(f"free-running (tokens before the replies part): {a['free_running']:.1%} ({_check(a['free_running'], TARGETS['agreement'], True)} >= {TARGETS['agreement']:.0%})")
        if a["vs_plain_llamacpp"] is not None:
            print(f"fast backend vs plain llama.cpp, free-running, prompt variants: {a['vs_plain_llamacpp']:.1%}")
        for low in a["lowest"]:
            print(f"  lowest free-running: {low['share']:.0%} (forced {low['forced']:.0%}) {low['variant']}: {low['question'][:60]}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        _child_main(argv[1:])
        return 0
    parser = CommandParser(prog="python -m benchmarks.serving", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 probes per domain; skip the reference's cold start")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--threads", type=int, default=None, help="compute threads (default: all cores)")
    args = parser.parse_args(argv)
    config = BenchConfig(probes_per_domain=2 if args.quick else 4, cold_reference=not args.quick)
    results = BenchResults(machine={"cpus": os.cpu_count(), "python": sys.version.split()[0], "load_avg": os.getloadavg()})

    print("measuring start-up in fresh processes...", flush=True)
    results.start[config.fast_backend] = measure_start(config.fast_backend)
    if config.cold_reference:
        results.start[config.reference_backend] = measure_start(config.reference_backend)
    else:
        results.start[config.reference_backend] = {"warm": _run_child("start", config.reference_backend, {})}
    print("measuring memory in fresh processes...", flush=True)
    for backend in (config.fast_backend, config.reference_backend):
        results.memory[backend] = measure_memory(backend)

    from bots.backends import build_backbone
    from bots.registry import Runtime

    print("measuring speed per variant...", flush=True)
    started = time.perf_counter()
    fast = Runtime.from_backbone(build_backbone(replace(BaseModelSpec.from_env(backend=config.fast_backend), threads=args.threads)), warm_prompts=True)
    ready = time.perf_counter() - started
    fast.backbone.wait_idle()  # the prompt prefixes are computed in the background after start
    results.start[config.fast_backend]["prefix_warmup_after_ready_s"] = time.perf_counter() - started - ready
    results.variants = measure_variants(fast, config, args.threads)
    print("measuring the four-variant answer...", flush=True)
    results.compare = measure_compare(fast, config)
    print("measuring agreement with the reference...", flush=True)
    reference = Runtime.from_backbone(build_backbone(replace(BaseModelSpec.from_env(backend=config.reference_backend), threads=args.threads)))
    results.agreement = measure_agreement(fast, reference, config)
    print()
    print_report(results)
    if args.json:
        args.json.write_text(json.dumps(asdict(results), indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
