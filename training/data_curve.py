"""The data-efficiency curve: LoRA quality against the number of training dialogs, the prompt across.

Answers "how much data does fine-tuning need before it beats the prompt?". For each domain it
trains extra adapters on the first N training dialogs (the training file is shuffled, so the
first N are a random sample; same config, same epochs), takes the shipped adapter as the
"all dialogs" point, and scores each on the same probes as the prompt variant and the control,
model alone (no guard). Every point is paired with the prompt on the same cases (exact McNemar).

    python -m training.data_curve                      # train what is missing, score, write the figures
    python -m training.data_curve --domains medical --sizes 50,150
    python -m training.data_curve --report-only        # redraw from data_curve.json, no model

Extra adapters are cached in ``artifacts/curve/<domain>/n<N>/`` (kept while the training data
and config are unchanged). Writes ``training/reports/data_curve.json`` (committed: the report is
rebuilt from it without retraining) and ``data_curve.png``, and re-renders ``report.md`` when the
evaluation's ``results.json`` is there. The sizes, split and metrics are data:
``training/data_curve.yaml``.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from bots.bot import Bot, LoraBot
from bots.cli_args import CommandParser
from bots.generation import GenerationSettings
from bots.registry import Runtime
from training import metrics as m
from training import stats
from training.config import load_config
from training.curve_report import CURVE_FILE, CURVE_PLOT, curve_markdown, plot_curve
from training.eval_data import PROBES_DIR, DomainCases, load_cases
from training.evaluate import (
    DEFAULT_OUT,
    RATE_CHECKS,
    Progress,
    compare_entries,
    runtime_from_args,
    score_model_alone,
)
from training.report import LOG_FILE
from training.report_sections import rerender_report
from training.train import read_splits

REPO_ROOT = Path(__file__).resolve().parent.parent
CURVE_CONFIG = Path(__file__).resolve().parent / "data_curve.yaml"
DEFAULT_WORK = REPO_ROOT / "artifacts" / "curve"
REFERENCE_METHODS = ("prompt", "base")
"""Drawn across the curve: the prompt variant, and the control."""


@dataclass(frozen=True)
class CurveConfig:
    """What the curve covers; the yaml file holds the defaults, the command line overrides them."""

    sizes: tuple[int, ...] = (50, 150, 300)
    split: str = "test"
    max_new_tokens: int = 96
    metrics: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Per domain, the probe metrics drawn (rates); only their probe sources are asked."""
    domains: tuple[str, ...] | None = None
    """None: every domain in ``metrics``."""
    work_dir: Path = DEFAULT_WORK
    out_dir: Path = DEFAULT_OUT
    adapters_dir: Path = REPO_ROOT / "bots" / "adapters"
    probes_dir: Path = PROBES_DIR
    parallel: int = 0
    resamples: int = stats.DEFAULT_RESAMPLES

    def chosen_domains(self) -> tuple[str, ...]:
        return self.domains if self.domains is not None else tuple(self.metrics)


def load_curve_config(path: Path = CURVE_CONFIG, **overrides: Any) -> CurveConfig:
    """The yaml defaults with ``overrides`` (None values are ignored); unknown metrics fail here, not after training."""
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    metrics = {domain: tuple(keys) for domain, keys in (data.get("metrics") or {}).items()}
    for domain, keys in metrics.items():
        unknown = [key for key in keys if key not in RATE_CHECKS or domain not in m.METRICS[key].domains]
        if unknown:
            raise ValueError(f"{path}: {domain} has no rate metric {', '.join(unknown)} (choose from {', '.join(s.key for s in m.metrics_for(domain) if s.key in RATE_CHECKS)})")
    config = CurveConfig(sizes=tuple(int(n) for n in data.get("sizes", CurveConfig.sizes)), split=str(data.get("split", "test")), max_new_tokens=int(data.get("max_new_tokens", 96)), metrics=metrics)
    config = replace(config, **{key: value for key, value in overrides.items() if value is not None})
    bad = [d for d in config.chosen_domains() if d not in metrics]
    if bad:
        raise ValueError(f"no curve metrics for domain(s) {', '.join(bad)} in {path}")
    if any(n <= 0 for n in config.sizes):
        raise ValueError("sizes must be positive numbers of dialogs")
    return config


# --------------------------------------------------------------------------- training the points


@dataclass
class TrainedPoint:
    """One adapter of the curve and what training it cost (from its training_log.json)."""

    dialogs: int
    folder: Path
    shipped: bool
    train_minutes: float | None = None
    cpu_minutes: float | None = None
    peak_rss_mb: float | None = None
    train_tokens: int | None = None
    """Non-padding tokens in one pass over its training dialogs."""
    adapter_mb: float | None = None


def read_point(folder: Path, shipped: bool) -> TrainedPoint | None:
    """The point an adapter folder holds, from its training log; None if it has none."""
    try:
        log = json.loads((folder / LOG_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    epochs = log.get("epochs") or []
    weights = folder / "adapter_model.safetensors"
    cpu = log.get("train_cpu_seconds")
    return TrainedPoint(
        dialogs=int(log.get("split_sizes", {}).get("train", 0)),
        folder=folder,
        shipped=shipped,
        train_minutes=round(log["train_seconds"] / 60, 2) if log.get("train_seconds") else None,
        cpu_minutes=round(cpu / 60, 2) if cpu else None,
        peak_rss_mb=round(log["peak_rss_mb"], 1) if log.get("peak_rss_mb") else None,
        train_tokens=int(epochs[0]["train_tokens"]) if epochs and "train_tokens" in epochs[0] else None,
        adapter_mb=round(weights.stat().st_size / 1e6, 2) if weights.is_file() else None,
    )


def point_is_current(folder: Path, domain: str, dialogs: int) -> bool:
    """Whether ``folder`` holds an adapter trained on today's data and config with ``dialogs`` dialogs."""
    try:
        log = json.loads((folder / LOG_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    wanted = load_config(None if not _domain_config(domain).is_file() else _domain_config(domain), {"domain": domain, "max_train_dialogs": dialogs})
    trained = log.get("config", {})
    same_config = all(trained.get(key) == value for key, value in wanted.to_dict().items() if key not in ("output_dir", "work_dir", "progress_bar", "data_dir"))
    return same_config and log.get("data_sha256") == read_splits(wanted).sha256 and (folder / "adapter_model.safetensors").is_file()


def _domain_config(domain: str) -> Path:
    return Path(__file__).resolve().parent / "configs" / f"{domain}.yaml"


def train_command(domain: str, dialogs: int, folder: Path, work: Path) -> list[str]:
    return [
        sys.executable, "-m", "training.train", "--domain", domain, "--max_train_dialogs", str(dialogs),
        "--output_dir", str(folder), "--work_dir", str(work), "--progress_bar", "false",
    ]  # fmt: skip


def train_points(domain: str, config: CurveConfig, run: Callable[[list[str]], None] | None = None) -> list[TrainedPoint]:
    """Every point of a domain, smallest first: extra adapters (trained unless current) and the shipped one last."""
    run = run or (lambda command: subprocess.run(command, check=True, cwd=REPO_ROOT))
    points = []
    for dialogs in sorted(set(config.sizes)):
        folder = config.work_dir / domain / f"n{dialogs}"
        if not point_is_current(folder, domain, dialogs):
            print(f"training {domain} on {dialogs} dialogs -> {folder}", file=sys.stderr, flush=True)
            run(train_command(domain, dialogs, folder, config.work_dir / domain / "runs"))
        point = read_point(folder, shipped=False)
        if point is None:
            raise RuntimeError(f"training {domain} on {dialogs} dialogs left no training log in {folder}")
        points.append(point)
    shipped = read_point(config.adapters_dir / domain, shipped=True)
    if shipped is not None and all(shipped.dialogs > p.dialogs for p in points):
        points.append(shipped)
    return points


# --------------------------------------------------------------------------- scoring the points


def curve_cases(domain: str, config: CurveConfig) -> DomainCases:
    """The probes behind the domain's curve metrics (their split), and nothing else."""
    cases = load_cases(domain, probes_dir=config.probes_dir, split=config.split)
    wanted = {RATE_CHECKS[key][0] for key in config.metrics[domain]}
    cases.sources = {source: items for source, items in cases.sources.items() if source in wanted}
    return cases


def score_bot(bot: Bot, cases: DomainCases, config: CurveConfig, progress: Progress) -> tuple[dict[str, Any], dict[str, Any]]:
    """The curve metrics of one bot (model alone), with intervals, and the per-case outcomes for pairing."""
    parallel = config.parallel or max(1, bot.backbone.parallel_replies)
    settings = GenerationSettings(max_new_tokens=config.max_new_tokens)
    figures, outcomes, _ = score_model_alone(bot, cases, config.metrics[bot.spec.domain], settings, progress, parallel, config.resamples)
    return figures, outcomes


def curve_bot(runtime: Runtime, domain: str, point: TrainedPoint) -> LoraBot:
    """A LoRA bot of ``domain`` serving the point's adapter (the shipped one is already loaded)."""
    template = next(bot for bot in runtime.bots.values() if bot.spec.domain == domain and bot.spec.method == "lora")
    if point.shipped:
        return template  # type: ignore[return-value]
    name = f"{domain}-lora@{point.dialogs}"
    if name not in runtime.backbone.adapters:
        runtime.backbone.load_adapter(name, point.folder)
    spec = replace(template.spec, name=name, label=f"{template.spec.label} ({point.dialogs} dialogs)")
    return LoraBot(spec, runtime.backbone, template.prompt, emergency=template.emergency, adapter_path=point.folder, adapter_name=name)


def score_domain(runtime: Runtime, domain: str, points: Sequence[TrainedPoint], config: CurveConfig) -> dict[str, Any]:
    cases = curve_cases(domain, config)
    references = {
        method: next(bot for bot in runtime.bots.values() if bot.spec.domain == domain and bot.spec.method == method and bot.availability.ok)
        for method in REFERENCE_METHODS
    }
    total = cases.total * (len(points) + len(references))
    progress = Progress(total, enabled=True)
    try:
        reference_figures, reference_outcomes = {}, {}
        for method, bot in references.items():
            progress.describe(bot.spec.name)
            reference_figures[method], reference_outcomes[method] = score_bot(bot, cases, config, progress)
        rows = []
        for point in points:
            bot = curve_bot(runtime, domain, point)
            progress.describe(bot.spec.name)
            figures, outcomes = score_bot(bot, cases, config, progress)
            against = {
                key: compare_entries(m.METRICS[key], bot.spec.name, references["prompt"].spec.name, outcomes[key], reference_outcomes["prompt"][key], config.resamples)
                for key in config.metrics[domain]
            }
            row = {k: v for k, v in vars(point).items() if k not in ("folder",)}
            row.update(adapter=_shown(point.folder), values=figures, against_prompt=against)
            rows.append(row)
    finally:
        progress.close()
    return {
        "metrics": list(config.metrics[domain]),
        "cases": {source: len(items) for source, items in cases.sources.items()},
        "points": rows,
        "reference": {method: {"variant": bot.spec.name, "values": reference_figures[method]} for method, bot in references.items()},
    }


def _shown(path: Path) -> str:
    resolved = path.resolve()
    return resolved.relative_to(REPO_ROOT).as_posix() if resolved.is_relative_to(REPO_ROOT) else path.name


def write_curve(curve: dict[str, Any], out_dir: Path) -> None:
    """data_curve.json and the plot; report.md re-rendered with the curve when results.json exists."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / CURVE_FILE).write_text(json.dumps(curve, indent=2) + "\n", encoding="utf-8")
    plot_curve(curve, out_dir / CURVE_PLOT)
    rerender_report(out_dir)


def run_curve(runtime: Runtime, config: CurveConfig, run: Callable[[list[str]], None] | None = None) -> dict[str, Any]:
    started = time.perf_counter()
    domains = {}
    for domain in config.chosen_domains():
        points = train_points(domain, config, run)
        domains[domain] = score_domain(runtime, domain, points, config)
    meta = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "split": config.split,
        "max_new_tokens": config.max_new_tokens,
        "sizes": list(config.sizes),
        "backend": runtime.backbone.backend,
        "duration_s": round(time.perf_counter() - started, 1),
    }
    return {"meta": meta, "domains": domains}


def main(argv: list[str] | None = None, runtime: Runtime | None = None) -> int:
    parser = CommandParser(prog="python -m training.data_curve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--domains", default=None, help="comma-separated domains (default: every domain in the yaml)")
    parser.add_argument("--sizes", default=None, help="comma-separated training dialog counts (default: the yaml's)")
    parser.add_argument("--config", type=Path, default=CURVE_CONFIG, help="curve settings (default: training/data_curve.yaml)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where data_curve.json and the plot go (default: training/reports/)")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK, help="where extra adapters are trained and cached (default: artifacts/curve)")
    parser.add_argument("--report-only", action="store_true", help="redraw the plot and report from data_curve.json; no model")
    parser.add_argument("--train-only", action="store_true", help="train the missing adapters and stop (score them later)")
    parser.add_argument("--base-model", default=None, help="'embedded' (default), a hub id or a local folder; env TOP_BASE_MODEL")
    parser.add_argument("--adapters-dir", type=Path, default=None, help="folder of the shipped adapters (default: bots/adapters)")
    parser.add_argument("--backend", default=None, help="serving backend for scoring (default: the evaluation's, llama.cpp)")
    parser.add_argument("--threads", type=int, default=None, help="compute threads for scoring")
    args = parser.parse_args(argv)
    if args.report_only:
        path = args.out / CURVE_FILE
        if not path.is_file():
            parser.error(f"no {path}: run python -m training.data_curve first")
        write_curve(json.loads(path.read_text(encoding="utf-8")), args.out)
        print(args.out / CURVE_PLOT)
        return 0
    try:
        sizes = tuple(int(n) for n in args.sizes.split(",")) if args.sizes else None
    except ValueError:
        parser.error(f"--sizes takes comma-separated whole numbers, not {args.sizes!r}")
    domains = tuple(d.strip() for d in args.domains.split(",")) if args.domains else None
    try:
        config = load_curve_config(args.config, sizes=sizes, domains=domains, out_dir=args.out, work_dir=args.work_dir, adapters_dir=args.adapters_dir)
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    if args.train_only:
        for domain in config.chosen_domains():
            for point in train_points(domain, config):
                print(f"{domain}: {point.dialogs} dialogs in {_shown(point.folder)} ({point.train_minutes} min)")
        return 0
    if args.backend is None:
        args.backend = "llamacpp"
    runtime = runtime or runtime_from_args(args, parser)
    curve = run_curve(runtime, config)
    write_curve(curve, config.out_dir)
    print(curve_markdown(curve, plot=None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
