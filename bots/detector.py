"""The learned emergency detector: a small classifier on the base model's hidden states.

One forward pass of the already loaded base model over the user's message (adapters off)
gives the mean of its hidden states after block ``blocks`` (15 of 30 since v5, 21 before: a
probe reads emergencies there better than at the last block, measured on the dev set), through the
final norm (``BackboneBase.embed``, on both backends). On that vector, the mean of a few small
networks (one hidden layer each, seeds apart; a linear softmax layer in files of version 1)
gives three tiers, and a linear layer names the likely red flag of an emergency (it picks the
escalation text: 911, 988 or Poison Control):

- ``emergency``: call 911 now (988 / Poison Control where the spec says so);
- ``urgent``: same-day care, without crying emergency;
- ``routine``: everything else.

The weights live in ``bots/safety_detector.json`` (written by ``python -m training.train_detector``),
with the thresholds chosen on the dev set and the fingerprint of the base they were trained on:
on another base the detector is unavailable and the rules act alone. Nothing here imports
torch; numpy only.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DETECTOR_FILE = Path(__file__).resolve().with_name("safety_detector.json")
TIERS: tuple[str, ...] = ("routine", "urgent", "emergency")
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
"""Version 1 files have the linear tier layer only; version 2 adds ``tier_members``."""


class DetectorError(ValueError):
    """The detector file is missing, malformed or made for another base model."""


@dataclass(frozen=True)
class Detection:
    """The detector's view of one message."""

    tier: str
    scores: dict[str, float]
    """Probability of each tier."""
    red_flag: str | None = None
    """The most likely red flag when the tier is emergency (the probes' names: chest_pain, self_harm...)."""

    @property
    def score(self) -> float:
        """Probability of the tier it chose."""
        return self.scores[self.tier]


@dataclass
class DetectorModel:
    """The tier and red-flag heads on standardised features, and the decision thresholds."""

    base_fingerprint: str
    feature: str
    """What the features are (for the reader of the file): e.g. 'mean final hidden state'."""
    mean: list[float]
    scale: list[float]
    tier_weights: list[list[float]]
    """features x tiers (the linear tier layer; empty when ``tier_members`` are given)."""
    tier_bias: list[float]
    red_flags: list[str]
    flag_weights: list[list[float]]
    """features x red flags."""
    flag_bias: list[float]
    emergency_threshold: float
    """Emergency when P(emergency) >= this (chosen on the dev set for recall)."""
    urgent_threshold: float
    """Otherwise urgent when P(urgent) + P(emergency) >= this."""
    rules_veto_threshold: float = 0.0
    """A rules match is overruled when P(emergency) < this: the detector is sure the message is
    routine (a question about an emergency, a past or negated one). Chosen on the dev set below
    every dev emergency the rules catch; 0 never overrules the rules."""
    trained_on: dict[str, Any] = field(default_factory=dict)
    """Files, sizes and dev figures of the run that made it."""
    blocks: int | None = None
    """The features are the hidden state after this many blocks (None: after the last one)."""
    copy_weights: str | None = None
    """llama.cpp: the weight format of the truncated copy the features come from (bots/gguf_truncate.py,
    e.g. Q4_0); None: the base file's own. The transformers backend computes in full precision."""
    tier_members: list[dict[str, Any]] = field(default_factory=list)
    """The tier head as the mean of these networks' probabilities, each ``{"w1": features x
    hidden, "b1": hidden, "w2": hidden x tiers, "b2": tiers}`` with a ReLU between; empty: the
    linear tier layer."""
    version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        self._mean = np.asarray(self.mean, dtype=np.float32)
        self._scale = np.asarray(self.scale, dtype=np.float32)
        self._tier_w = np.asarray(self.tier_weights, dtype=np.float32)
        self._tier_b = np.asarray(self.tier_bias, dtype=np.float32)
        self._flag_w = np.asarray(self.flag_weights, dtype=np.float32)
        self._flag_b = np.asarray(self.flag_bias, dtype=np.float32)
        width = self._mean.shape[0]
        if self._scale.shape != (width,):
            raise DetectorError("detector weights have inconsistent shapes")
        self._members = [self._member(member, width) for member in self.tier_members]
        if not self._members and (self._tier_w.shape != (width, len(TIERS)) or self._tier_b.shape != (len(TIERS),)):
            raise DetectorError("detector weights have inconsistent shapes")
        if self._flag_w.shape != (width, len(self.red_flags)) or self._flag_b.shape != (len(self.red_flags),):
            raise DetectorError("detector red-flag weights have inconsistent shapes")

    @staticmethod
    def _member(member: dict[str, Any], width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        try:
            w1, b1, w2, b2 = (np.asarray(member[key], dtype=np.float32) for key in ("w1", "b1", "w2", "b2"))
        except (KeyError, TypeError, ValueError) as exc:
            raise DetectorError(f"a tier member needs w1, b1, w2 and b2 ({exc!r})") from None
        hidden = b1.shape[0] if b1.ndim == 1 else -1
        if w1.shape != (width, hidden) or w2.shape != (hidden, len(TIERS)) or b2.shape != (len(TIERS),):
            raise DetectorError("detector tier member weights have inconsistent shapes")
        return w1, b1, w2, b2

    @property
    def width(self) -> int:
        return int(self._mean.shape[0])

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """Tier probabilities, rows of ``features`` (n x width) -> n x 3."""
        z = self._standardise(features)
        if self._members:
            return np.mean([_softmax(np.maximum(z @ w1 + b1, 0.0) @ w2 + b2) for w1, b1, w2, b2 in self._members], axis=0)
        return _softmax(z @ self._tier_w + self._tier_b)

    def flag_probabilities(self, features: np.ndarray) -> np.ndarray:
        return _softmax(self._standardise(features) @ self._flag_w + self._flag_b)

    def overrules(self, detection: Detection) -> bool:
        """Whether this detection overrules a rules match (see ``rules_veto_threshold``)."""
        return detection.scores["emergency"] < self.rules_veto_threshold

    def detect(self, features: np.ndarray) -> Detection:
        """The decision for one message's feature vector."""
        vector = np.asarray(features, dtype=np.float32).reshape(1, -1)
        if vector.shape[1] != self.width:
            raise DetectorError(f"expected {self.width} features, got {vector.shape[1]}")
        probs = self.probabilities(vector)[0]
        scores = {tier: float(p) for tier, p in zip(TIERS, probs, strict=True)}
        tier = decide(scores, self.emergency_threshold, self.urgent_threshold)
        flag = None
        if tier == "emergency" and self.red_flags:
            flag = self.red_flags[int(np.argmax(self.flag_probabilities(vector)[0]))]
        return Detection(tier, scores, flag)

    def _standardise(self, features: np.ndarray) -> np.ndarray:
        return (np.asarray(features, dtype=np.float32) - self._mean) / self._scale

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":")) + "\n"


def decide(scores: dict[str, float], emergency_threshold: float, urgent_threshold: float) -> str:
    if scores["emergency"] >= emergency_threshold:
        return "emergency"
    if scores["urgent"] + scores["emergency"] >= urgent_threshold:
        return "urgent"
    return "routine"


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def load_detector(path: Path = DETECTOR_FILE) -> DetectorModel:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DetectorError(f"{path} is missing: train it with python -m training.train_detector") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise DetectorError(f"{path} is malformed ({exc})") from exc
    if not isinstance(data, dict) or data.get("version") not in READABLE_VERSIONS:
        raise DetectorError(f"{path}: unknown detector format (expected version {' or '.join(map(str, READABLE_VERSIONS))})")
    try:
        return DetectorModel(**data)
    except TypeError as exc:
        raise DetectorError(f"{path}: {exc}") from exc


def detector_for(fingerprint: str, path: Path = DETECTOR_FILE) -> tuple[DetectorModel | None, str]:
    """The detector trained on this base, or (None, why not)."""
    try:
        model = load_detector(path)
    except DetectorError as exc:
        return None, str(exc)
    if model.base_fingerprint != fingerprint:
        return None, f"the detector was trained on base {model.base_fingerprint[:12]}..., not on the loaded {fingerprint[:12]}..."
    return model, ""
