"""The emergency guard of the medical variants: the keyword rules and the learned detector together.

``EmergencyGuard.assess(text, rules_match)`` decides the tier of a user's message:

- the rules (bots/safety.py) are the floor: a red flag they match is an emergency unless the
  detector is sure the message is routine (P(emergency) below its ``rules_veto_threshold``,
  chosen on the dev set under every dev emergency the rules catch): keyword rules cannot tell
  "what are the signs of a stroke?" or "she's not confused" from the real thing;
- the learned detector (bots/detector.py) adds what the rules miss: an emergency (the reply
  opens with 911, and 988 / Poison Control where its red flag calls for them), or an urgent
  problem (the reply opens with same-day care, without crying emergency).

The decision says which part acted and the detector's score, for the page, the CLI, the
API and the evaluation. On a backend without embeddings, or a base the detector was not
trained on, the rules act alone (``detector_status`` says why).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bots.backbone_base import BackboneBase
from bots.detector import DETECTOR_FILE, Detection, DetectorModel, detector_for
from bots.safety import RULES_FILE, EmergencyMatch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GuardDecision:
    """What the emergency guard decided for one message."""

    tier: str
    """'emergency', 'urgent' or 'routine'."""
    by: str
    """Who decided: 'rules', 'detector', 'rules+detector' (both found an emergency), or '' (routine)."""
    prefix: str = ""
    """Text the reply must open with ('' for routine)."""
    red_flag: str | None = None
    detection: Detection | None = None
    """The detector's view, when it ran."""
    overruled: str | None = None
    """The red flag the rules matched when the detector overruled them (the tier is then the detector's)."""

    @property
    def acted(self) -> bool:
        return self.tier != "routine"

    @property
    def score(self) -> float | None:
        """The detector's probability of the decided tier (None when it did not run)."""
        return self.detection.scores[self.tier] if self.detection else None

    def note(self) -> str:
        """One line for the page and logs; '' when the guard did not act."""
        if not self.acted:
            return ""
        score = f", detector score {self.score:.2f}" if self.score is not None else ""
        flag = f"red flag: {self.red_flag.replace('_', ' ')}; " if self.red_flag else ""
        if self.tier == "emergency":
            return f"Emergency guard acted ({flag}by {self.by}{score}): the reply opens with the escalation."
        return f"Urgent-care guard acted (by {self.by}{score}): the reply opens with a same-day care recommendation."

    def record(self) -> dict[str, Any]:
        """The decision as JSON (CLI batch lines, the evaluation's replies, the API)."""
        return {
            "tier": self.tier,
            "by": self.by or None,
            "red_flag": self.red_flag,
            "score": None if self.score is None else round(self.score, 4),
            "scores": {tier: round(p, 4) for tier, p in self.detection.scores.items()} if self.detection else None,
            "overruled": self.overruled,
        }


@dataclass(frozen=True)
class _Texts:
    urgent: str
    flag_escalation: dict[str, tuple[str, ...]]
    escalation_texts: dict[str, str]


@functools.lru_cache(maxsize=1)
def _texts() -> _Texts:
    data = yaml.safe_load(RULES_FILE.read_text(encoding="utf-8"))
    detector = data["detector"]
    return _Texts(
        urgent=" ".join(str(detector["urgent_text"]).split()),
        flag_escalation={flag: tuple(names) for flag, names in detector["flag_escalation"].items()},
        escalation_texts={name: " ".join(str(text).split()) for name, text in data["escalation_texts"].items()},
    )


def escalation_for(red_flag: str | None) -> str:
    """The detector's escalation: 911 first, then 988 or Poison Control where the flag calls for it."""
    texts = _texts()
    names = dict.fromkeys(("emergency", *texts.flag_escalation.get(red_flag or "", ())))
    return " ".join(texts.escalation_texts[name] for name in names)


def urgent_text() -> str:
    return _texts().urgent


class EmergencyGuard:
    """Rules plus, where available, the learned detector on the process's one base model."""

    def __init__(self, backbone: BackboneBase | None, detector: DetectorModel | None, detector_status: str = "") -> None:
        self.backbone = backbone
        self.detector = detector
        self.detector_status = detector_status or ("detector on" if detector else "rules only")

    @classmethod
    def for_backbone(cls, backbone: BackboneBase, path: Path = DETECTOR_FILE) -> EmergencyGuard:
        detector, why = detector_for(backbone.base.fingerprint, path)
        if detector is None:
            return cls(backbone, None, f"rules only: {why}")
        return cls(backbone, detector, f"rules + detector ({detector.feature})")

    def detect(self, text: str) -> Detection | None:
        if self.detector is None or self.backbone is None:
            return None
        try:
            return self.detector.detect(self.backbone.embed(text, self.detector.blocks, self.detector.copy_weights))
        except NotImplementedError as exc:
            self.detector, self.detector_status = None, f"rules only: {exc}"
            return None
        except Exception:  # a failing detector must never take the rules down with it
            log.exception("emergency detector failed; the rules act alone for this message")
            return None

    def assess(self, text: str, rules_match: EmergencyMatch | None) -> GuardDecision:
        detection = self.detect(text)
        overruled = None
        if rules_match is not None:
            if detection is None or self.detector is None or not self.detector.overrules(detection):
                both = detection is not None and detection.tier == "emergency"
                return GuardDecision("emergency", "rules+detector" if both else "rules", rules_match.escalation, rules_match.red_flag, detection)
            overruled = rules_match.red_flag
        if detection is None or detection.tier == "routine":
            return GuardDecision("routine", "", detection=detection, overruled=overruled)
        if detection.tier == "emergency":
            return GuardDecision("emergency", "detector", escalation_for(detection.red_flag), detection.red_flag, detection)
        return GuardDecision("urgent", "detector", urgent_text(), None, detection, overruled)


RULES_ONLY = EmergencyGuard(None, None, "rules only")
"""For bots built without a runtime (the rules need no model)."""
