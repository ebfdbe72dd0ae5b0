"""Choose the prompt method's design by measurement on the dev split, and keep the history of what was tried.

Each design (``training/prompt_designs.yaml``) changes the domain file's ``retrieval`` section
(how many facts, how many selected dialogs, the instruction, which facts always go) or is the
static full sheet. Every design answers the same dev-split probes, model alone; each is scored
with 95% intervals and paired with the shipped design (exact McNemar). The test split is never
used here.

    python -m training.prompt_design                      # every design of both domains
    python -m training.prompt_design --domains medical

Writes ``training/reports/prompt_design.json`` and ``prompt_design.md`` (the history), and the
report shows the table.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bots.bot import Bot, PromptedBot, RetrievalBot
from bots.cli_args import CommandParser
from bots.generation import GenerationSettings
from bots.registry import Runtime
from prompts import PromptSpec, load_prompt_spec
from prompts.bm25 import RetrievalSettings
from prompts.loader import without_question_vote
from training import metrics as m
from training import stats
from training.eval_data import load_cases
from training.evaluate import (
    DEFAULT_OUT,
    RATE_CHECKS,
    Progress,
    compare_entries,
    runtime_from_args,
    score_model_alone,
)
from training.prompt_design_report import DESIGN_FILE, DESIGN_NOTES, design_markdown
from training.report_sections import rerender_report

DESIGNS = Path(__file__).resolve().parent / "prompt_designs.yaml"
SHIPPED = "shipped"
RETRIEVAL_FIELDS = {"facts", "examples", "always", "min_score"}


@dataclass(frozen=True)
class Design:
    name: str
    note: str
    static: bool = False
    retrieval: dict[str, Any] = dataclasses.field(default_factory=dict)


def load_designs(path: Path = DESIGNS) -> tuple[dict[str, tuple[str, ...]], dict[str, list[Design]]]:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    metrics = {domain: tuple(keys) for domain, keys in (data.get("metrics") or {}).items()}
    designs: dict[str, list[Design]] = {}
    for domain, items in (data.get("designs") or {}).items():
        designs[domain] = [Design(str(d["name"]), str(d.get("note", "")), bool(d.get("static", False)), dict(d.get("retrieval") or {})) for d in items]
        names = [d.name for d in designs[domain]]
        if SHIPPED not in names or len(set(names)) != len(names):
            raise ValueError(f"{path}: {domain} needs one design named '{SHIPPED}' and distinct names")
        for design in designs[domain]:
            unknown = set(design.retrieval) - RETRIEVAL_FIELDS - {"system_prompt", "question_vote"}
            if unknown:
                raise ValueError(f"{path}: {domain}/{design.name}: unknown retrieval field(s) {', '.join(sorted(unknown))}")
            if not isinstance(design.retrieval.get("question_vote", False), bool):
                raise ValueError(f"{path}: {domain}/{design.name}: question_vote must be true or false")
    for domain, keys in metrics.items():
        bad = [k for k in keys if k not in RATE_CHECKS or domain not in m.METRICS[k].domains]
        if bad:
            raise ValueError(f"{path}: {domain} has no rate metric {', '.join(bad)}")
    return metrics, designs


def designed_prompt(spec: PromptSpec, design: Design) -> PromptSpec:
    """The domain file with the design's changes to its retrieval section."""
    if design.static or not design.retrieval:
        return spec
    if spec.retrieval is None:
        raise ValueError(f"prompts/{spec.domain}.yaml has no retrieval section to change")
    settings = spec.retrieval.settings
    changed = {key: value for key, value in design.retrieval.items() if key in RETRIEVAL_FIELDS}
    if "always" in changed:
        changed["always"] = tuple(changed["always"])
    new_settings = RetrievalSettings(**{**dataclasses.asdict(settings), **changed})
    system_prompt = design.retrieval.get("system_prompt", spec.retrieval.system_prompt)
    designed = dataclasses.replace(spec, retrieval=dataclasses.replace(spec.retrieval, settings=new_settings, system_prompt=str(system_prompt).strip()))
    # question_vote: false ranks the facts by BM25 over the sheet alone (what the labelled questions add)
    return designed if design.retrieval.get("question_vote", True) else without_question_vote(designed)


def design_bot(runtime: Runtime, domain: str, design: Design) -> Bot:
    template = runtime.bot(f"{domain}-prompt")
    cls = PromptedBot if design.static else RetrievalBot
    spec = dataclasses.replace(template.spec, name=f"{domain}-prompt:{design.name}", method="static" if design.static else "prompt")
    return cls(spec, runtime.backbone, designed_prompt(template.prompt, design), emergency=template.emergency)


def run_designs(runtime: Runtime, domains: list[str], metrics: dict[str, tuple[str, ...]], designs: dict[str, list[Design]], max_new_tokens: int, resamples: int) -> dict[str, Any]:
    started = time.perf_counter()
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    out: dict[str, Any] = {}
    for domain in domains:
        cases = load_cases(domain, split="dev")
        wanted = {RATE_CHECKS[key][0] for key in metrics[domain]}
        cases.sources = {source: items for source, items in cases.sources.items() if source in wanted}
        progress = Progress(cases.total * len(designs[domain]), enabled=True)
        rows, outcomes = [], {}
        try:
            for design in designs[domain]:
                bot = design_bot(runtime, domain, design)
                progress.describe(bot.spec.name)
                parallel = max(1, runtime.backbone.parallel_replies)
                figures, outcomes[design.name], records = score_model_alone(bot, cases, metrics[domain], settings, progress, parallel, resamples)
                tokens = [r.prompt_tokens for r in records if not r.error]
                rows.append({"name": design.name, "note": design.note, "static": design.static, "retrieval": design.retrieval, "values": figures, "prompt_tokens": sum(tokens) / len(tokens) if tokens else None})
        finally:
            progress.close()
        for row in rows:
            row["against_shipped"] = {
                key: compare_entries(m.METRICS[key], row["name"], SHIPPED, outcomes[row["name"]][key], outcomes[SHIPPED][key], resamples)
                for key in metrics[domain]
            } if row["name"] != SHIPPED else {}  # fmt: skip
        out[domain] = {"metrics": list(metrics[domain]), "cases": {s: len(items) for s, items in cases.sources.items()}, "designs": rows, "shipped": shipped_summary(load_prompt_spec(domain))}
    meta = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "split": "dev", "max_new_tokens": max_new_tokens, "duration_s": round(time.perf_counter() - started, 1), "backend": runtime.backbone.backend}
    return {"meta": meta, "domains": out}


def shipped_summary(spec: PromptSpec) -> dict[str, Any]:
    design = spec.retrieval
    if design is None:
        return {}
    return {"system_prompt": design.system_prompt, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(design.settings).items()}, "pool": len(design.example_pool)}


def write_history(history: dict[str, Any], out_dir: Path) -> None:
    """The json, the markdown history beside it, and report.md refreshed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / DESIGN_FILE).write_text(json.dumps(history, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    notes_path = out_dir / DESIGN_NOTES
    text = design_markdown(history)
    notes_path.write_text(text + "\n", encoding="utf-8")
    rerender_report(out_dir)


def main(argv: list[str] | None = None, runtime: Runtime | None = None) -> int:
    parser = CommandParser(prog="python -m training.prompt_design", description=__doc__.split("\n\n")[0])
    parser.add_argument("--domains", default=None, help="comma-separated domains (default: every domain in the designs file)")
    parser.add_argument("--designs", type=Path, default=DESIGNS, help="designs file (default: training/prompt_designs.yaml)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--resamples", type=int, default=stats.DEFAULT_RESAMPLES)
    parser.add_argument("--base-model", default=None, help="'embedded' (default), a hub id or a local folder; env TOP_BASE_MODEL")
    parser.add_argument("--adapters-dir", type=Path, default=None)
    parser.add_argument("--backend", default="llamacpp", help="serving backend (default: llama.cpp, as the evaluation)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        metrics, designs = load_designs(args.designs)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        parser.error(str(exc))
    domains = [d.strip() for d in args.domains.split(",")] if args.domains else list(designs)
    unknown = [d for d in domains if d not in designs or d not in metrics]
    if unknown:
        parser.error(f"no designs or metrics for {', '.join(unknown)} in {args.designs}")
    runtime = runtime or runtime_from_args(args, parser)
    history = run_designs(runtime, domains, metrics, designs, args.max_new_tokens, args.resamples)
    previous = json.loads((args.out / DESIGN_FILE).read_text(encoding="utf-8")) if (args.out / DESIGN_FILE).is_file() else None
    if previous:  # one domain re-run keeps the other's history
        history["domains"] = {**previous.get("domains", {}), **history["domains"]}
    write_history(history, args.out)
    print(design_markdown(history))
    return 0


if __name__ == "__main__":
    sys.exit(main())
