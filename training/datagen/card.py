"""The dataset card (training/data/<domain>/README.md), written from the generated records.

Called by ``python -m training.datagen``; counts in the card are computed, never typed.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable

from training.config import repo_path
from training.datagen.common import SPLITS, NearDupIndex, approx_tokens, user_text
from training.datagen.domain_settings import DatagenSettings
from training.hub_cards import dataset_metadata, with_front_matter


def _share(rows: list[dict], test: Callable[[dict], bool]) -> str:
    hits = sum(1 for row in rows if test(row))
    return f"{hits} ({100 * hits / len(rows):.0f}%)"


def _sizes_table(records: dict[str, list[dict]]) -> list[str]:
    lines = [
        "| split | dialogs | multi-turn | out of scope | prompt injection | user turns | approx. tokens (mean / max) |",
        "|---|---|---|---|---|---|---|",
    ]
    for split in SPLITS:
        rows = records[split]
        turns = sum(1 for row in rows for m in row["messages"] if m["role"] == "user")
        tokens = [approx_tokens(row) for row in rows]
        lines.append(
            f"| {split} | {len(rows)} | {_share(rows, lambda r: r['kind'] == 'multi')} "
            f"| {_share(rows, lambda r: r['topic'] == 'out_of_scope')} "
            f"| {_share(rows, lambda r: r['topic'] == 'prompt_injection')} | {turns} "
            f"| {sum(tokens) / len(tokens):.0f} / {max(tokens)} |"
        )
    return lines


REALISM_TRAITS: dict[str, Callable[[str], object]] = {
    "all lower case": lambda u: u == u.lower() and re.search(r"[a-z]{3}", u),
    "no final punctuation": lambda u: u.rstrip()[-1] not in ".?!)",
    "two or more questions": lambda u: u.count("?") >= 2,
    "indirect ('I was wondering', 'is it normal that')": lambda u: INDIRECT.search(u),
    "very short (1-2 words)": lambda u: len(u.split()) <= 2,
    "order number": lambda u: ORDER_NUMBER.search(u),
}
INDIRECT = re.compile(r"\b(?:i was wondering|is it normal|just wondering|i'd like to ask|should i be worried that|is it bad that)\b", re.I)
ORDER_NUMBER = re.compile(r"(?:order|#|nw-?|ref)\W{0,3}[a-z-]*\d{4,6}\b", re.I)


def _realism_table(rows: list[dict]) -> list[str]:
    users = [m["content"] for row in rows for m in row["messages"] if m["role"] == "user"]
    lines = ["| trait | user turns |", "|---|---|"]
    for name, test in REALISM_TRAITS.items():
        hits = sum(1 for text in users if test(text))
        if hits:
            lines.append(f"| {name} | {hits} ({100 * hits / len(users):.0f}%) |")
    return lines


def _count_table(records: dict[str, list[dict]], key: str, header: str, notes: dict[str, str]) -> list[str]:
    counts = {split: Counter(row[key] for row in records[split] if row.get(key)) for split in SPLITS}
    keys = sorted(counts["train"], key=lambda k: (-counts["train"][k], k))
    lines = [f"| {header} | train | validation | test | what it covers |", "|---|---|---|---|---|"]
    for name in keys:
        cells = " | ".join(str(counts[split][name]) for split in SPLITS)
        lines.append(f"| `{name}` | {cells} | {notes.get(name, '')} |")
    return lines


def _closest_to_train(records: dict[str, list[dict]], split: str) -> str:
    """Highest similarity of any held-out dialog's user turns to a train dialog's."""
    index = NearDupIndex(user_text(row) for row in records["train"])
    best = max(index.closest(user_text(row), 0.5)[0] for row in records[split])
    return f"{best:.2f}" if best else "< 0.50"


def dataset_card(settings: DatagenSettings, records: dict[str, list[dict]]) -> str:
    """Markdown card: provenance, sizes, topic (and red-flag) counts, honesty checks, limits."""
    config = settings.config
    domain = config.domain
    lines = [
        f"# {settings.title}",
        "",
        f"Chat dialogs for training and evaluating the LoRA variant of the `{domain}` bot "
        "(SmolLM2-135M-Instruct). Every assistant answer restates `shared/domain_specs.md`; where the "
        "spec is silent, the answer says so and hands over to a person.",
        "",
        "## How it was made",
        "",
        "Generated, not hand-written:",
        "",
        "```bash",
        "python -m training.datagen            # both domains; --domain " + domain + " for this one",
        "```",
        "",
        f"* Phrase bank `{repo_path(settings.phrase_bank)}`: per intent several user phrasings "
        "and several answer phrasings (all factually identical), slots, follow-ups.",
        f"* Settings `{repo_path(settings.config_file)}`: split sizes, topic mix, persona and noise rates.",
        "* `training/datagen/engine.py` combines them: personas (greetings, courtesy, terse or long "
        "messages, indirect questions, 'is it normal that ...?' frames"
        + (", order numbers" if config.order_ref_rate else "")
        + (", angry customers who are offered a person" if config.upset_rate else "")
        + "), two questions in one message, 2-4 user-turn conversations with natural follow-ups, and "
        "seeded surface noise on a share of user turns (learner English, run-on sentences, common "
        "misspellings from `phrases/noise.yaml`, keyboard typos, lower case, missing punctuation).",
        "* Fixed seed: the files are byte-identical on every run.",
        f"* Every dialog starts with the LoRA bot's short system prompt (`LORA_SYSTEM_PROMPTS['{domain}']` "
        "in `training/dialogs.py`), which holds no facts.",
        "",
        "## Sizes",
        "",
        *_sizes_table(records),
        "",
        "Tokens are estimated as characters / 4 plus 5 per message (system prompt included).",
        "",
        "## How users write",
        "",
        "Share of train user turns with each trait, measured on the files (a turn can have several; "
        "many hand-written phrasings are terse or lower case already):",
        "",
        *_realism_table(records["train"]),
        "",
        "## Topics",
        "",
        "Two-question messages are counted under the topic of their first question; multi-turn "
        "dialogs under the topic of their opening question.",
        "",
        *_count_table(records, "topic", "topic", settings.topic_notes),
        "",
    ]
    if config.emergency_field:
        lines += [
            "## Emergencies",
            "",
            "`emergency: true` dialogs carry a `red_flag`; the first sentence of the first reply tells the "
            "user to call 911 (or the local emergency number) or go to the nearest emergency department; "
            "self-harm replies add 988, poisoning replies Poison Control 1-800-222-1222.",
            "",
            *_count_table(records, "red_flag", "red flag", settings.red_flags),
            "",
        ]
    lines += [
        "## Honest splits",
        "",
        "* Every user-side phrase list (each intent's phrasings, openers, courtesy phrases, connectors, "
        "indirect leads, worry frames, order references, angry leads and tails) is "
        "split into disjoint pools: 25% test, 15% validation, 60% train. Validation and test dialogs are "
        "built only from their own pools, so the model is tested on phrasings it never trained on. "
        "Answer phrasings are shared: they are what the model should learn, and so are the noise tables "
        "(misspellings, learner rewrites), which change how a turn is typed, not what it asks.",
        "* A near-duplicate check compares the user turns of every validation/test dialog with every "
        "train dialog (normalised word 3-gram Jaccard and difflib word-sequence ratio); any score "
        ">= 0.8 is rejected during generation and fails `tests/test_datasets.py`. Highest similarity "
        f"to a train dialog: validation {_closest_to_train(records, 'validation')}, "
        f"test {_closest_to_train(records, 'test')}.",
        "",
        "## Format",
        "",
        "One JSON object per line: `id`, `topic`, `kind` (`single` | `multi`)"
        + (", `emergency`, `red_flag` (emergencies only)" if config.emergency_field else "")
        + ", `messages` (system, then user/assistant alternating, ending with the assistant). "
        "Load with `training.dialogs.load_splits(\"" + domain + "\")`.",
        "",
        "## Known limits",
        "",
        *[f"* {limit}" for limit in settings.limits],
        "",
    ]
    total = sum(len(records[split]) for split in SPLITS)
    return with_front_matter("\n".join(lines), dataset_metadata(domain, total, settings.title))
