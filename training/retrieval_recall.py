"""How often the prompt method's retrieval puts the probe's fact in the prompt, and what it costs.

    python -m training.retrieval_recall                 # dev split (choosing), writes training/reports/retrieval_recall.{json,md}
    python -m training.retrieval_recall --split test    # report only; never choose on it

A 135M model cannot state a fact that is not in its context, so the share of probes whose fact
(the probe's ``spec_row``) is among the facts sent bounds what the prompt and hybrid methods
can score. Every probe of a domain whose ``spec_row`` names a fact-sheet topic counts
("Emergencies first: stroke" names "Emergencies first"), except those about a topic sent on
every request (``always``), which no ranker can miss; they are counted apart. Two rankers are compared on the same
probes: BM25 over the fact sheet alone, and the shipped ranker (with the pool's question vote,
where the domain has one; prompts/bm25.py FactRanker). No model is loaded: it takes seconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import domains
from prompts.loader import PromptFileError, PromptSpec, load_prompt_spec, retrieval_tools, retrieved_facts, without_question_vote
from training.eval_data import PROBES_DIR, ProbeFileError, read_probe_file
from training.stats import wilson_interval

REPORTS_DIR = Path(__file__).resolve().parent / "reports"
RESULT_FILE = "retrieval_recall.json"
NOTES_FILE = "retrieval_recall.md"


@dataclass(frozen=True)
class Probe:
    question: str
    topic: str
    """The fact-sheet topic the probe asks about."""


def fact_probes(spec: PromptSpec, split: str) -> list[Probe]:
    """The domain's probes of ``split`` whose spec_row names one of its fact topics (``always`` ones included)."""
    topics = {fact.topic for fact in spec.fact_sheet}
    out = []
    for probe in domains.pack(spec.domain).probes:
        for row in read_probe_file(PROBES_DIR / probe.file, probe.fields):
            topic = str(row.get("spec_row", "")).split(":")[0].strip()
            # a probe file shared by the domains (out of scope, injection) names each row's domain
            if row.get("split") == split and topic in topics and row.get("domain", spec.domain) == spec.domain:
                out.append(Probe(str(row["question"]), topic))
    return out


def recall(spec: PromptSpec, probes: list[Probe]) -> dict[str, Any]:
    """Share of probes whose fact is sent (recall at the number sent) and ranked first, the other
    facts sent per probe (distractors the model must ignore; those always sent not counted), and
    the time per retrieval."""
    assert spec.retrieval is not None
    retrieval_tools(spec)  # built once per process, as in serving: not part of a request's time
    sent = first = others = 0
    times = []
    for probe in probes:
        started = time.perf_counter()
        facts = [fact.topic for fact in retrieved_facts(spec, probe.question)]
        times.append(time.perf_counter() - started)
        sent += probe.topic in facts
        ranked = [topic for topic in facts if topic not in spec.retrieval.settings.always]
        first += ranked[:1] == [probe.topic]
        others += sum(topic != probe.topic for topic in ranked)
    n = len(probes)
    return {
        "probes": n,
        "sent": _rate(sent, n),
        "ranked_first": _rate(first, n),
        "other_facts": round(others / n, 2) if n else None,
        "median_ms": round(1000 * statistics.median(times), 3) if times else None,
        "max_ms": round(1000 * max(times), 3) if times else None,
    }


def _other_facts(spec: PromptSpec, probes: list[Probe]) -> float | None:
    """Mean number of facts sent beside the always-sent ones."""
    assert spec.retrieval is not None
    always = spec.retrieval.settings.always
    counts = [sum(fact.topic not in always for fact in retrieved_facts(spec, probe.question)) for probe in probes]
    return round(statistics.mean(counts), 2) if counts else None


def _rate(hits: int, n: int) -> dict[str, float | int | None]:
    low, high = wilson_interval(hits, n) if n else (None, None)
    return {"hits": hits, "value": hits / n if n else None, "ci_low": low, "ci_high": high}


def measure(split: str) -> dict[str, Any]:
    out: dict[str, Any] = {"split": split, "domains": {}}
    for name in domains.names():
        spec = load_prompt_spec(name)
        if spec.retrieval is None:
            continue
        every = fact_probes(spec, split)
        probes = [probe for probe in every if probe.topic not in spec.retrieval.settings.always]
        about_always = [probe for probe in every if probe.topic in spec.retrieval.settings.always]
        rankers = {"facts alone": without_question_vote(spec)}
        if spec.retrieval.question_vote is not None:
            rankers["facts + question vote"] = spec
        out["domains"][name] = {
            "facts_sent": spec.retrieval.settings.facts,
            "always": list(spec.retrieval.settings.always),
            "always_probes": len(about_always),
            # what a probe about an always-sent rule (an emergency) gets beside it
            "always_probe_other_facts": {label: _other_facts(ranked, about_always) for label, ranked in rankers.items()},
            "shipped": list(rankers)[-1],
            "rankers": {label: recall(ranked, probes) for label, ranked in rankers.items()},
        }
    return out


def _percent(rate: dict[str, Any]) -> str:
    if rate["value"] is None:
        return "–"
    return f"{rate['value']:.0%} [{rate['ci_low']:.0%}, {rate['ci_high']:.0%}]"


def recall_markdown(result: dict[str, Any]) -> str:
    lines = [
        f"## Retrieval recall ({result['split']} split)",
        "Share of probes whose fact (its `spec_row`) is among the facts the prompt method sends, and ranked first "
        "(`python -m training.retrieval_recall`; 95% Wilson intervals). A fact that is not sent cannot be stated. "
        "Other facts sent: the mean number of the other facts beside it, which the model must ignore.",
    ]
    for name, domain in result["domains"].items():
        always = f" + always: {', '.join(domain['always'])} ({domain['always_probes']} probes about it, not counted)" if domain["always"] else ""
        lines += [
            "",
            f"### {name}: {domain['facts_sent']} facts sent{always}",
            "",
            "| ranker | probes | fact sent | ranked first | other facts sent | ms per retrieval (median / max) |",
            "|---|---|---|---|---|---|",
        ]
        for label, figures in domain["rankers"].items():
            shown = f"**{label}** (shipped)" if label == domain["shipped"] else label
            lines.append(
                f"| {shown} | {figures['probes']} | {_percent(figures['sent'])} | {_percent(figures['ranked_first'])} "
                f"| {figures['other_facts']} | {figures['median_ms']} / {figures['max_ms']} |"
            )
        if domain["always_probes"]:
            beside = ", ".join(f"{label} {count}" for label, count in domain["always_probe_other_facts"].items())
            lines += ["", f"Facts sent beside {', '.join(domain['always'])} to the {domain['always_probes']} probes about it (mean): {beside}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=("dev", "test"), default="dev")
    parser.add_argument("--out", type=Path, default=REPORTS_DIR, help="folder for retrieval_recall.json and .md (dev split; a test run only prints)")
    args = parser.parse_args(argv)
    try:
        result = measure(args.split)
    except (PromptFileError, ProbeFileError, domains.PackError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = recall_markdown(result)
    print(text)
    if args.split == "dev":
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / RESULT_FILE).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        (args.out / NOTES_FILE).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
