"""The fact-drift test: change a few facts of a domain and see which variants keep up without retraining.

    python -m training.fact_drift                          # ecommerce, every split, llama.cpp backend
    python -m training.fact_drift --domain medical         # the emergency number of another country

The changes are data (``training/drift/<domain>.yaml``): each replaces an old value by a new
one in the domain's prompt file (system prompts, fact sheet and few-shot answers, as an
operator would edit the file) and names the probes it affects (fact probes of some topics, or
emergency probes of some red flags). Replies are the model's alone (guards off: a guard's
fixed text would hide what the model does). Every variant of the domain then answers the
affected probes with the drifted prompt file: a prompt variant reads the new value on every
request; an adapter learned the old one, and keeps it until it is retrained. The report counts,
per variant, replies that state the new value and replies that still state the old one (95%
Wilson intervals), and what retraining the adapter would cost (its last training run's
CPU-minutes, from ``training_log.json``).
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

import domains
from bots.cli_args import CommandParser
from bots.registry import VARIANTS, Runtime, get_runtime
from prompts import FewShotExample, PromptSpec
from training.eval_data import load_cases
from training.metrics import states_fact
from training.stats import wilson_interval

DRIFT_DIR = Path(__file__).resolve().parent / "drift"
REPORTS = Path(__file__).resolve().parent / "reports"
ALL = "*"
"""In ``topics``: every probe of the source."""


def default_out(domain: str) -> Path:
    return REPORTS / f"fact_drift_{domain}.json"


class DriftFileError(ValueError):
    """A drift file is missing or malformed; the message names the file."""


@dataclass(frozen=True)
class FactChange:
    name: str
    topics: tuple[str, ...]
    old_value: str
    find: str
    replace: str
    expected: tuple[str, ...]
    source: str = "facts"
    """The probe source it affects: 'facts' (by topic) or 'emergencies' (by red flag)."""
    old_expected: tuple[str, ...] = ()
    """What states the old value; empty: the probe's own expected patterns that match old_value."""

    def apply(self, text: str) -> str:
        return text.replace(self.find, self.replace)


@dataclass(frozen=True)
class DriftCase:
    change: FactChange
    probe_id: str
    question: str
    old_expected: tuple[str, ...]


def load_changes(domain: str, folder: Path | None = None) -> list[FactChange]:
    """The domain's fact changes: the file its pack names, or ``folder/<domain>.yaml``."""
    path = folder / f"{domain}.yaml" if folder is not None else domains.pack(domain).file("fact_drift")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        changes = [
            FactChange(
                str(c["name"]), tuple(c["topics"]), str(c["old_value"]), str(c["find"]), str(c["replace"]), tuple(c["expected"]),
                str(c.get("source", "facts")), tuple(c.get("old_expected", ())),
            )
            for c in data["changes"]
        ]  # fmt: skip
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise DriftFileError(f"{path}: {exc}") from exc
    for change in changes:
        if change.source not in SOURCE_KEYS:
            raise DriftFileError(f"{path}: {change.name}: source must be one of {', '.join(SOURCE_KEYS)}")
        for pattern in (*change.expected, *change.old_expected):
            re.compile(pattern)
    return changes


def drifted_prompt(spec: PromptSpec, changes: list[FactChange]) -> PromptSpec:
    """The prompt file with every change applied to its facts and few-shot answers."""

    def edit(text: str) -> str:
        for change in changes:
            text = change.apply(text)
        return text

    retrieval = spec.retrieval
    if retrieval is not None:  # the prompt method's instruction and example pool are part of the domain's prompt data
        retrieval = dataclasses.replace(
            retrieval,
            system_prompt=edit(retrieval.system_prompt),
            example_pool=tuple(FewShotExample(shot.user, edit(shot.assistant)) for shot in retrieval.example_pool),
        )
    return dataclasses.replace(
        spec,
        retrieval=retrieval,
        system_prompt=edit(spec.system_prompt),
        lora_system_prompt=edit(spec.lora_system_prompt),
        base_system_prompt=edit(spec.base_system_prompt),
        fact_sheet=tuple(dataclasses.replace(fact, fact=edit(fact.fact)) for fact in spec.fact_sheet),
        few_shot=tuple(FewShotExample(shot.user, edit(shot.assistant)) for shot in spec.few_shot),
    )


SOURCE_KEYS = {"facts": "topic", "emergencies": "red_flag"}
"""Each probe source a change can affect, and the probe field its ``topics`` name."""


def affected_cases(domain: str, changes: list[FactChange], split: str | None) -> list[DriftCase]:
    """Probes of a change's topics (or red flags) whose old expectation is the old value."""
    sources = load_cases(domain, split=split).sources
    found = []
    for change in changes:
        key = SOURCE_KEYS[change.source]
        for case in sources.get(change.source, []):
            if ALL not in change.topics and case.info.get(key) not in change.topics:
                continue
            if change.old_expected:
                found.append(DriftCase(change, case.case_id, case.question, change.old_expected))
                continue
            expected = tuple(case.info.get("expected", ()))
            if any(re.search(p, change.old_value, re.IGNORECASE) for p in expected):
                found.append(DriftCase(change, case.case_id, case.question, expected))
    return found


def run_drift(runtime: Runtime, domain: str, changes: list[FactChange], cases: list[DriftCase], max_new_tokens: int = 96) -> dict[str, Any]:
    from bots.generation import GenerationSettings

    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    variants: dict[str, Any] = {}
    for name, spec in VARIANTS.items():
        if spec.domain != domain or not runtime.bots[name].availability.ok:
            continue
        bot = dataclasses.replace(runtime.bots[name], prompt=drifted_prompt(runtime.bots[name].prompt, changes))
        rows = []
        for case in cases:
            reply = bot.reply([{"role": "user", "content": case.question}], settings, guard=False).text
            rows.append({"probe": case.probe_id, "change": case.change.name, "new_value": states_fact(reply, case.change.expected), "old_value": states_fact(reply, case.old_expected), "reply": reply})
        variants[name] = {"method": spec.method, "new_value": _rate([r["new_value"] for r in rows]), "old_value": _rate([r["old_value"] for r in rows]), "replies": rows}
    return {"domain": domain, "changes": [dataclasses.asdict(c) for c in changes], "cases": len(cases), "variants": variants, "retraining": retraining_cost(runtime, domain)}


def _rate(flags: list[bool]) -> dict[str, float | int]:
    hits, n = sum(flags), len(flags)
    low, high = wilson_interval(hits, n)
    return {"value": hits / n if n else float("nan"), "ci_low": low, "ci_high": high, "hits": hits, "n": n}


def retraining_cost(runtime: Runtime, domain: str) -> dict[str, Any] | None:
    """CPU-minutes of the adapter's last training run, as the figure for 'retrain to keep up'."""
    bot = next((b for b in runtime.bots.values() if b.spec.domain == domain and b.spec.method == "lora"), None)
    path = getattr(bot, "adapter_path", None)
    log = path / "training_log.json" if path else None
    if not log or not log.is_file():
        return None
    data = json.loads(log.read_text(encoding="utf-8"))
    return {"train_minutes": round(data["train_seconds"] / 60, 1), "threads": data["config"].get("threads"), "dialogs": data["split_sizes"].get("train")}


def format_summary(result: dict[str, Any]) -> str:
    lines = [f"fact drift, {result['domain']}: {len(result['changes'])} changed facts, {result['cases']} affected probes"]
    for name, row in result["variants"].items():
        new, old = row["new_value"], row["old_value"]
        lines.append(f"  {name:18} new value {new['value']:.2f} [{new['ci_low']:.2f}, {new['ci_high']:.2f}] ({new['hits']}/{new['n']}), old value still {old['value']:.2f} ({old['hits']}/{old['n']})")
    if result["retraining"]:
        lines.append(f"  retraining the adapter to catch up: {result['retraining']['train_minutes']} CPU-minutes (its last run)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(prog="python -m training.fact_drift", description="Change a few facts and measure which variants keep up without retraining.")
    parser.add_argument("--domain", default=domains.names()[0], choices=[name for name in domains.names() if domains.pack(name).file("fact_drift").is_file()])
    parser.add_argument("--split", choices=("dev", "test", "all"), default="all", help="fact probes used (default all: nothing is chosen on this test)")
    parser.add_argument("--out", type=Path, default=None, help="result file (default: training/reports/fact_drift_<domain>.json)")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    args = parser.parse_args(argv)
    changes = load_changes(args.domain)
    cases = affected_cases(args.domain, changes, None if args.split == "all" else args.split)
    if not cases:
        parser.error(f"no probe of {args.domain} is affected by {domains.pack(args.domain).file('fact_drift')}")
    args.out = args.out or default_out(args.domain)
    result = run_drift(get_runtime(), args.domain, changes, cases, args.max_new_tokens)
    result["split"] = args.split
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(format_summary(result))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
