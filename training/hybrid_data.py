"""Training data of the hybrid method: the domain's dialogs with retrieved facts in their context (RAFT-style).

Every dialog of ``training/data/<domain>/`` gets, as its system message, exactly what the hybrid
method sends when serving (``prompts.loader.render_hybrid``): the prompt method's instruction and
the facts retrieval ranks first for the dialog's last user turns, with whatever distractors retrieval
brings. In a seeded share of the train and validation dialogs, values are swapped consistently in
the facts and in the dialog (``training/hybrid.yaml``), so the adapter must read the facts to
answer; the test split keeps the real values. Nothing here is a probe.

    python -m training.hybrid_data --domain ecommerce      # writes artifacts/hybrid_data/ecommerce/
    python -m training.train --domain ecommerce --data_dir artifacts/hybrid_data \\
        --output_dir bots/adapters/ecommerce-hybrid        # then train the hybrid adapter on it
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bots.cli_args import CommandParser
from prompts import PromptSpec, load_prompt_spec
from prompts.loader import render_hybrid
from training.dialogs import DATA_DIR, read_jsonl_dialogs

REPO_ROOT = Path(__file__).resolve().parent.parent
SETTINGS = Path(__file__).resolve().parent / "hybrid.yaml"
DEFAULT_OUT = REPO_ROOT / "artifacts" / "hybrid_data"
SPLITS = ("train", "validation", "test")
SWAPPED_SPLITS = ("train", "validation")


@dataclass(frozen=True)
class Swap:
    find: str
    alternatives: tuple[str, ...]


@dataclass(frozen=True)
class HybridSettings:
    seed: int
    counterfactual_share: float
    swaps: dict[str, tuple[Swap, ...]]


def load_settings(path: Path = SETTINGS) -> HybridSettings:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    swaps = {domain: tuple(Swap(str(s["find"]), tuple(str(a) for a in s["alternatives"])) for s in items) for domain, items in (data.get("swaps") or {}).items()}
    share = float(data.get("counterfactual_share", 0.0))
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"{path}: counterfactual_share must be between 0 and 1")
    for domain, items in swaps.items():
        for swap in items:
            if not swap.alternatives or swap.find in swap.alternatives:
                raise ValueError(f"{path}: {domain}: '{swap.find}' needs alternatives other than itself")
    return HybridSettings(int(data.get("seed", 0)), share, swaps)


def swapped_prompt(spec: PromptSpec, chosen: dict[str, str]) -> PromptSpec:
    def edit(text: str) -> str:
        for find, value in chosen.items():
            text = text.replace(find, value)
        return text

    return dataclasses.replace(spec, fact_sheet=tuple(dataclasses.replace(f, fact=edit(f.fact)) for f in spec.fact_sheet))


def hybrid_dialog(dialog: dict[str, Any], spec: PromptSpec, chosen: dict[str, str]) -> dict[str, Any]:
    """The dialog with the hybrid system message (and ``chosen`` swaps applied to facts and turns)."""
    turns = [dict(m) for m in dialog["messages"] if m["role"] != "system"]
    for turn in turns:
        for find, value in chosen.items():
            turn["content"] = turn["content"].replace(find, value)
    last_user = max(i for i, turn in enumerate(turns) if turn["role"] == "user")
    # The dialog's own first turn is one of the vote's labelled questions (when the pool has a
    # question_vote): left in, it would find itself, and training would see cleaner retrieval
    # than any new message gets.
    first_user = next((m["content"] for m in dialog["messages"] if m["role"] == "user"), None)
    system = render_hybrid(swapped_prompt(spec, chosen), turns[: last_user + 1], exclude=first_user)[0]
    out = {key: value for key, value in dialog.items() if key != "messages"}
    out["messages"] = [system, *turns]
    if chosen:
        out["counterfactual"] = chosen
    return out


def build_split(dialogs: list[dict[str, Any]], spec: PromptSpec, swaps: tuple[Swap, ...], share: float, rng: random.Random) -> list[dict[str, Any]]:
    out = []
    for dialog in dialogs:
        # Only values the dialog itself states: a swap must show in the answer to be learned from.
        applicable = [swap for swap in swaps if any(swap.find in m["content"] for m in dialog["messages"] if m["role"] == "assistant")]
        draw = rng.random()  # drawn for every dialog, so one dialog's content never shifts the others' draws
        chosen = {swap.find: rng.choice(swap.alternatives) for swap in applicable} if applicable and draw < share else {}
        out.append(hybrid_dialog(dialog, spec, chosen))
    return out


def build(domain: str, out_dir: Path = DEFAULT_OUT, data_dir: Path = DATA_DIR, settings: HybridSettings | None = None) -> dict[str, int]:
    """Write ``out_dir/<domain>/{train,validation,test}.jsonl``; returns dialogs (and swapped ones) per split."""
    settings = settings or load_settings()
    spec = load_prompt_spec(domain)
    rng = random.Random(f"{settings.seed}:{domain}")
    folder = out_dir / domain
    folder.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for split in SPLITS:
        dialogs = read_jsonl_dialogs(data_dir / domain / f"{split}.jsonl")
        share = settings.counterfactual_share if split in SWAPPED_SPLITS else 0.0
        rows = build_split(dialogs, spec, settings.swaps.get(domain, ()), share, rng)
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
        counts[split] = len(rows)
        counts[f"{split}_swapped"] = sum(1 for row in rows if row.get("counterfactual"))
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(prog="python -m training.hybrid_data", description=__doc__.split("\n\n")[0])
    parser.add_argument("--domain", required=True, help="the domain whose dialogs to rewrite (ecommerce, medical, ...)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: artifacts/hybrid_data)")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="the domain dialogs (default: training/data)")
    args = parser.parse_args(argv)
    try:
        counts = build(args.domain, args.out, args.data_dir)
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    print(json.dumps(counts))
    print(f"train it: python -m training.train --domain {args.domain} --data_dir {args.out} --output_dir bots/adapters/{args.domain}-hybrid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
