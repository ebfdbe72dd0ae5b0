"""Rules, learned detector and their combination, side by side, on a tiered message set.

``evaluate_guard(messages, guard)`` runs every message of a ``tiers_*.jsonl`` file (or the
medical probe files) through the rules alone, the detector alone and the guard that
combines them (bots/guard.py), and counts:

- emergency recall: emergencies flagged as emergencies;
- false alarms: routine messages flagged as emergencies (all, and the hard negatives apart);
- urgent: urgent messages sent to same-day care or more, and routine ones sent there;
- recall per red flag.

Used by ``python -m bots.safety_eval``; the timing of the detector is measured by
``python -m benchmarks.detector``, never here.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from bots.guard import EmergencyGuard
from bots.safety import detect_emergency
from bots.safety_eval import TieredMessage

PARTS = ("rules", "detector", "combined")
HARD_NEGATIVE_KINDS = frozenset({"info_question", "past_event", "negated", "lookalike", "figure_of_speech"})


@dataclass(frozen=True)
class Rate:
    hits: int
    n: int

    @property
    def value(self) -> float:
        return self.hits / self.n if self.n else float("nan")



@dataclass
class Outcome:
    """What each part said about one message."""

    message: TieredMessage
    tiers: dict[str, str]
    """part -> 'emergency' | 'urgent' | 'routine' (the rules say emergency or routine only)."""
    score: float | None = None


@dataclass
class GuardReport:
    outcomes: list[Outcome] = field(default_factory=list)
    detector_status: str = ""

    def _select(self, tier: str, kinds: frozenset[str] | None = None) -> list[Outcome]:
        return [o for o in self.outcomes if o.message.tier == tier and (kinds is None or o.message.kind in kinds)]

    def rate(self, part: str, label: str, decided: tuple[str, ...], kinds: frozenset[str] | None = None) -> Rate:
        chosen = self._select(label, kinds)
        return Rate(sum(o.tiers[part] in decided for o in chosen), len(chosen))

    def recall(self, part: str) -> Rate:
        return self.rate(part, "emergency", ("emergency",))

    def false_alarms(self, part: str, hard_only: bool = False) -> Rate:
        return self.rate(part, "routine", ("emergency",), HARD_NEGATIVE_KINDS if hard_only else None)

    def by_red_flag(self, part: str) -> dict[str, Rate]:
        groups: dict[str, list[Outcome]] = defaultdict(list)
        for outcome in self._select("emergency"):
            groups[outcome.message.red_flag or "?"].append(outcome)
        return {flag: Rate(sum(o.tiers[part] == "emergency" for o in rows), len(rows)) for flag, rows in sorted(groups.items())}

    def missed(self, part: str = "combined") -> list[TieredMessage]:
        return [o.message for o in self._select("emergency") if o.tiers[part] != "emergency"]

    def alarms(self, part: str = "combined") -> list[TieredMessage]:
        return [o.message for o in self._select("routine") if o.tiers[part] == "emergency"]


def evaluate_guard(messages: list[TieredMessage], guard: EmergencyGuard) -> GuardReport:
    report = GuardReport(detector_status=guard.detector_status)
    for message in messages:
        rules_match = detect_emergency(message.text)
        decision = guard.assess(message.text, rules_match)
        detection = decision.detection
        tiers = {
            "rules": "emergency" if rules_match else "routine",
            "detector": detection.tier if detection else "n/a",
            "combined": decision.tier,
        }
        report.outcomes.append(Outcome(message, tiers, detection.scores["emergency"] if detection else None))
    return report
