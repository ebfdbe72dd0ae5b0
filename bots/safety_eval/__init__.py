"""Measure bots.safety.detect_emergency on a labelled set of messages (data: emergency_labelled.jsonl).

    python -m bots.safety_eval                       # the shipped set
    python -m bots.safety_eval --file other.jsonl    # any file of {"text", "label", "red_flag"?} lines

The labelling policy is in bots/safety_eval/README.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bots.safety import detect_emergency

SAFETY_EVAL_DIR = Path(__file__).resolve().parent
LABELLED_SET = SAFETY_EVAL_DIR / "emergency_labelled.jsonl"
LABELS = ("emergency", "ordinary")
TIER_LABELS = ("routine", "urgent", "emergency")


@dataclass(frozen=True)
class Example:
    text: str
    label: str
    red_flag: str | None = None


@dataclass
class EvalResult:
    """Confusion counts of the detector (positive = emergency) and the messages it got wrong."""

    true_positives: int = 0
    false_positives: int = 0
    false_negatives: int = 0
    true_negatives: int = 0
    missed: list[Example] = field(default_factory=list)
    false_alarms: list[tuple[Example, str]] = field(default_factory=list)
    other_flag: list[tuple[Example, str]] = field(default_factory=list)
    """Emergencies caught under another red flag than labelled (still counted as caught)."""

    @property
    def recall(self) -> float:
        positives = self.true_positives + self.false_negatives
        return self.true_positives / positives if positives else 1.0

    @property
    def precision(self) -> float:
        flagged = self.true_positives + self.false_positives
        return self.true_positives / flagged if flagged else 1.0

    @property
    def total(self) -> int:
        return self.true_positives + self.false_positives + self.false_negatives + self.true_negatives


def load_labelled(path: Path = LABELLED_SET) -> list[Example]:
    examples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        record = json.loads(line)
        if record.get("label") not in LABELS or not isinstance(record.get("text"), str):
            raise ValueError(f"{path}:{number}: expected text and a label in {LABELS}")
        examples.append(Example(record["text"], record["label"], record.get("red_flag")))
    return examples


@dataclass(frozen=True)
class TieredMessage:
    """A line of tiers_{train,dev,test}.jsonl: a message and its tier (README: the labelling policy)."""

    id: str
    text: str
    tier: str
    red_flag: str | None
    kind: str


def load_tiered(path: Path) -> list[TieredMessage]:
    """Read a tiers file; a bad line raises ValueError naming the file and line."""
    messages = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            message = TieredMessage(str(record["id"]), record["text"], record["tier"], record.get("red_flag"), str(record.get("kind", "")))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{number}: not a tiered message ({exc})") from exc
        if message.tier not in TIER_LABELS or not isinstance(message.text, str) or not message.text.strip():
            raise ValueError(f"{path}:{number}: expected a non-empty text and a tier in {TIER_LABELS}")
        if (message.tier == "emergency") != bool(message.red_flag):
            raise ValueError(f"{path}:{number}: an emergency names its red_flag, and only an emergency does")
        messages.append(message)
    return messages


SET_ROLES_FILE = SAFETY_EVAL_DIR / "detector_sets.yaml"
SET_ROLES = ("train", "dev", "report")


def set_roles(path: Path = SET_ROLES_FILE) -> dict[str, tuple[str, ...]]:
    """Which tiered sets train the detector, choose its thresholds, and are only reported (detector_sets.yaml)."""
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict) or set(data) != set(SET_ROLES):
        raise ValueError(f"{path}: expected exactly the roles {', '.join(SET_ROLES)}")
    roles = {role: tuple(str(name) for name in data[role] or ()) for role in SET_ROLES}
    names = [name for role in SET_ROLES for name in roles[role]]
    if len(names) != len(set(names)):
        raise ValueError(f"{path}: a set has two roles")
    missing = [name for name in names if not (SAFETY_EVAL_DIR / f"{name}.jsonl").is_file()]
    if missing:
        raise ValueError(f"{path}: no such set: {', '.join(missing)}")
    return roles


def load_role(role: str, path: Path = SET_ROLES_FILE) -> list[TieredMessage]:
    """Every message of the sets with this role, in file order."""
    return [message for name in set_roles(path)[role] for message in load_tiered(SAFETY_EVAL_DIR / f"{name}.jsonl")]


def evaluate(examples: list[Example]) -> EvalResult:
    result = EvalResult()
    for example in examples:
        match = detect_emergency(example.text)
        if example.label == "emergency":
            if match is None:
                result.false_negatives += 1
                result.missed.append(example)
                continue
            result.true_positives += 1
            if example.red_flag and match.red_flag != example.red_flag:
                result.other_flag.append((example, match.red_flag))
        elif match is None:
            result.true_negatives += 1
        else:
            result.false_positives += 1
            result.false_alarms.append((example, f"{match.red_flag}: {match.matched}"))
    return result
