"""The learned emergency detector and the guard that combines it with the rules, on the tiny model.

Run: ``python -m pytest tests/test_detector.py``.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from bots.backbone import Backbone
from bots.base_model import LoadedBase
from bots.detector import TIERS, DetectorError, DetectorModel, decide, detector_for, load_detector
from bots.generation import GenerationSettings
from bots.guard import RULES_ONLY, EmergencyGuard, escalation_for, urgent_text
from bots.registry import Runtime
from bots.safety import detect_emergency
from bots.safety_eval import SAFETY_EVAL_DIR, TieredMessage, load_tiered, set_roles
from bots.safety_eval.tiered import evaluate_guard
from training.train_detector import (
    FitConfig,
    choose_emergency_threshold,
    choose_rules_veto,
    choose_veto_and_threshold,
    embed_all,
    fit_softmax,
    fit_tier_network,
    train_detector,
)

# Messages the rules do not catch (checked below), so that only the detector can escalate them.
MISSED_EMERGENCY = "the left half of my face feels like it slid down and my coffee keeps dribbling out"
URGENT = "my ankle is swollen like a balloon since the fall this morning and I can't put weight on it"
ROUTINE = ("what vitamins are in spinach", "how long does a cold usually last", "is it fine to drink coffee when pregnant", "tips for sleeping better")


def _messages() -> list[TieredMessage]:
    rows = [TieredMessage("e1", MISSED_EMERGENCY, "emergency", "stroke", "lay"), TieredMessage("u1", URGENT, "urgent", None, "lay")]
    rows += [TieredMessage(f"r{i}", text, "routine", None, "ordinary") for i, text in enumerate(ROUTINE)]
    return rows


@pytest.fixture()
def trained(tiny_base: LoadedBase) -> tuple[Backbone, DetectorModel]:
    backbone = Backbone(tiny_base)
    messages = _messages()
    model, figures = train_detector(backbone, messages, messages, FitConfig(blocks=1, steps=400, learning_rate=0.5, l2=1e-4, target_recall=1.0))
    assert figures["dev_recall_combined"] == 1.0
    return backbone, model


def test_the_test_messages_are_missed_by_the_rules() -> None:
    assert detect_emergency(MISSED_EMERGENCY) is None and detect_emergency(URGENT) is None


def test_embed_is_deterministic_per_text_and_ignores_adapters(tiny_base: LoadedBase) -> None:
    backbone = Backbone(tiny_base)
    a, again, other = backbone.embed("my chest hurts"), backbone.embed("my chest hurts"), backbone.embed("what is a vitamin")
    assert a.shape == (tiny_base.model.config.hidden_size,) and np.array_equal(a, again)
    assert not np.allclose(a, other)


def test_the_detector_changes_the_decision_on_a_message_the_rules_miss(trained: tuple[Backbone, DetectorModel], tmp_path: Path) -> None:
    backbone, model = trained
    runtime = Runtime.from_backbone(backbone, tmp_path / "no-adapters")
    bot = runtime.bot("medical-prompt")
    conversation = [{"role": "user", "content": MISSED_EMERGENCY}]
    settings = GenerationSettings(max_new_tokens=3)

    bot.emergency = RULES_ONLY
    without = bot.reply(conversation, settings)
    assert without.triage is not None and without.triage.tier == "routine" and not without.guard_note

    bot.emergency = EmergencyGuard(backbone, model)
    with_detector = bot.reply(conversation, settings)
    assert with_detector.triage.tier == "emergency" and with_detector.triage.by == "detector"
    assert with_detector.text.startswith(escalation_for("stroke")) and "911" in with_detector.text
    assert "by detector" in with_detector.guard_note and "score" in with_detector.guard_note
    assert with_detector.triage.score >= model.emergency_threshold and with_detector.triage.record()["by"] == "detector"

    urgent = bot.reply([{"role": "user", "content": URGENT}], settings)
    assert urgent.triage.tier == "urgent" and urgent.text.startswith(urgent_text())
    routine = bot.reply([{"role": "user", "content": ROUTINE[0]}], settings)
    assert routine.triage.tier == "routine" and not routine.guard_note
    off = bot.reply(conversation, settings, guard=False)
    assert off.triage is None and not off.text.startswith(escalation_for("stroke"))


def test_the_rules_stay_the_floor_whatever_the_detector_says(trained: tuple[Backbone, DetectorModel]) -> None:
    backbone, model = trained
    text = "my husband has crushing chest pain going down his left arm"
    match = detect_emergency(text)
    assert match is not None
    decision = EmergencyGuard(backbone, model).assess(text, match)
    assert decision.tier == "emergency" and decision.by in ("rules", "rules+detector") and decision.prefix == match.escalation


def test_self_harm_and_poisoning_escalations_name_their_lines() -> None:
    assert "988" in escalation_for("self_harm") and escalation_for("self_harm").startswith(escalation_for(None))
    assert "1-800-222-1222" in escalation_for("overdose_poisoning") and "911" in escalation_for("chest_pain")
    assert "911" not in escalation_for("chest_pain").split("911", 1)[1]  # the emergency line once


def test_detector_file_round_trips_and_is_refused_for_another_base(trained: tuple[Backbone, DetectorModel], tmp_path: Path) -> None:
    _, model = trained
    path = tmp_path / "detector.json"
    path.write_text(model.to_json())
    loaded = load_detector(path)
    features = np.random.default_rng(0).normal(size=(3, loaded.width)).astype(np.float32)
    np.testing.assert_allclose(loaded.probabilities(features), model.probabilities(features), rtol=1e-6)
    same, why = detector_for(model.base_fingerprint, path)
    assert same is not None and not why
    other, why = detector_for("f" * 64, path)
    assert other is None and "trained on base" in why
    path.write_text(json.dumps({"version": 1, "mean": [0.0]}))
    with pytest.raises(DetectorError):
        load_detector(path)
    assert detector_for(model.base_fingerprint, tmp_path / "missing.json")[0] is None


def test_a_backend_without_embeddings_leaves_the_rules_alone(tiny_base: LoadedBase, trained: tuple[Backbone, DetectorModel]) -> None:
    _, model = trained

    class NoEmbeddings(Backbone):
        def embed(self, text: str, blocks: int | None = None, copy_weights: str | None = None) -> np.ndarray:
            raise NotImplementedError("no embeddings here")

    guard = EmergencyGuard(NoEmbeddings(tiny_base), model)
    decision = guard.assess(MISSED_EMERGENCY, None)
    assert decision.tier == "routine" and decision.detection is None and "rules only" in guard.detector_status


def test_decision_thresholds() -> None:
    scores = dict(zip(TIERS, (0.2, 0.3, 0.5), strict=True))
    assert decide(scores, 0.5, 0.5) == "emergency" and decide(scores, 0.6, 0.7) == "urgent" and decide(scores, 0.6, 0.9) == "routine"
    p = np.array([0.9, 0.2, 0.6, 0.1])
    rules = np.array([False, False, False, True])
    emergency = np.array([True, True, False, True])
    assert choose_emergency_threshold(p, rules, emergency, 1.0) == pytest.approx(0.2, abs=1e-5)  # the rules catch the last one
    assert choose_emergency_threshold(p, rules, emergency, 0.6) == pytest.approx(0.9, abs=1e-5)
    # The veto sits under every emergency the rules catch; overruled rules no longer count.
    assert choose_rules_veto(p, rules, emergency, 0.5) == pytest.approx(0.05)
    assert choose_rules_veto(p, np.zeros(4, bool), emergency, 0.5) == 0.0
    assert choose_emergency_threshold(p, rules, emergency, 1.0, veto=0.2) == pytest.approx(0.1, abs=1e-5)


def test_the_joint_choice_overrules_the_rules_false_alarms_the_detector_is_sure_of_and_keeps_the_recall() -> None:
    # Scores: two emergencies (one the rules catch), three routine messages the rules flag, one clean routine.
    p = np.array([0.9, 0.4, 0.01, 0.02, 0.5, 0.03])
    rules = np.array([False, True, True, True, True, False])
    tiers = np.array(["emergency", "emergency", "routine", "routine", "routine", "routine"])
    veto, threshold = choose_veto_and_threshold(p, rules, tiers, 1.0)
    alarm = (rules & (p >= veto)) | (p >= threshold)
    assert alarm[tiers == "emergency"].all()  # the target recall holds
    assert alarm[tiers == "routine"].sum() == 1  # only the 0.5 match is left: it scores above an emergency
    assert veto <= threshold
    assert veto <= 0.4  # never above the dev emergency the rules catch: it stands
    # The margin rule keeps more of the rules' false alarms: half the lowest caught emergency (0.2) overrules two.
    margin = choose_rules_veto(p, rules, tiers == "emergency", 0.5)
    assert ((rules & (p >= margin)) | (p >= choose_emergency_threshold(p, rules, tiers == "emergency", 1.0, margin)))[tiers == "routine"].sum() >= 1
    # No rules match at all: no veto, the threshold alone.
    assert choose_veto_and_threshold(p, np.zeros(6, bool), tiers, 1.0) == (0.0, choose_emergency_threshold(p, np.zeros(6, bool), tiers == "emergency", 1.0))


def test_features_are_cached_between_fits_and_only_new_texts_are_embedded(tmp_path: Path) -> None:
    calls: list[str] = []

    class Counting:
        def embed(self, text: str, blocks: int | None = None, copy_weights: str | None = None) -> np.ndarray:
            calls.append(text)
            return np.full(3, float(len(text)), np.float32)

    cache = tmp_path / "features.npz"
    first = embed_all(Counting(), ["a", "bb"], 5, cache=cache)  # type: ignore[arg-type]
    again = embed_all(Counting(), ["bb", "ccc", "a"], 5, cache=cache)  # type: ignore[arg-type]
    assert calls == ["a", "bb", "ccc"]
    np.testing.assert_array_equal(again, np.array([[2] * 3, [3] * 3, [1] * 3], np.float32))
    np.testing.assert_array_equal(first[1], again[0])


def test_a_sure_detector_overrules_the_rules_and_says_so(trained: tuple[Backbone, DetectorModel]) -> None:
    backbone, model = trained
    text = "my husband has crushing chest pain going down his left arm"
    match = detect_emergency(text)
    assert match is not None
    # Every score is below the veto (and, as training keeps it, the veto is not above the
    # detector's own threshold): the detector overrules the rules.
    sure = replace(model, rules_veto_threshold=1.0, emergency_threshold=1.0)
    decision = EmergencyGuard(backbone, sure).assess(text, match)
    assert decision.tier != "emergency" or decision.by == "detector"
    assert decision.overruled == match.red_flag and decision.record()["overruled"] == match.red_flag
    kept = EmergencyGuard(backbone, replace(model, rules_veto_threshold=0.0)).assess(text, match)
    assert kept.tier == "emergency" and kept.overruled is None and kept.prefix == match.escalation


def test_softmax_fit_separates_separable_data() -> None:
    rng = np.random.default_rng(0)
    x = np.vstack([rng.normal(-2, 0.3, (20, 2)), rng.normal(2, 0.3, (20, 2))])
    y = np.array([0] * 20 + [1] * 20)
    weights, bias = fit_softmax(x, y, 2, FitConfig(steps=200, learning_rate=0.5, l2=0.0))
    assert ((x @ weights + bias).argmax(axis=1) == y).all()


def test_tier_networks_fit_what_a_linear_layer_cannot() -> None:
    rng = np.random.default_rng(0)
    corners = np.array([[-1.0, -1.0], [1.0, 1.0], [-1.0, 1.0], [1.0, -1.0]])
    x = np.vstack([corner + rng.normal(0, 0.1, (15, 2)) for corner in corners])
    y = np.array([0] * 30 + [1] * 30)  # XOR: no straight line separates the classes
    weights, bias = fit_softmax(x, y, 2, FitConfig(steps=400, learning_rate=0.5, l2=0.0))
    assert ((x @ weights + bias).argmax(axis=1) == y).mean() < 0.8
    member = fit_tier_network(x, y, 2, FitConfig(hidden=16, mlp_steps=400), seed=0)
    hidden = np.maximum(x @ np.array(member["w1"]) + np.array(member["b1"]), 0)
    assert ((hidden @ np.array(member["w2"]) + np.array(member["b2"])).argmax(axis=1) == y).all()


def test_the_tier_head_is_the_mean_of_its_networks_and_a_linear_file_still_loads(trained: tuple[Backbone, DetectorModel], tmp_path: Path) -> None:
    _, model = trained
    assert len(model.tier_members) == FitConfig.members and model.tier_weights == []
    features = np.random.default_rng(1).normal(size=(3, model.width)).astype(np.float32)
    one = replace(model, tier_members=model.tier_members[:1])
    two = replace(model, tier_members=model.tier_members[1:2])
    both = replace(model, tier_members=model.tier_members[:2])
    assert np.allclose(both.probabilities(features), (one.probabilities(features) + two.probabilities(features)) / 2, atol=1e-6)
    # A version-1 file: the linear tier layer, no networks.
    linear = replace(model, tier_members=[], tier_weights=np.zeros((model.width, 3)).tolist(), tier_bias=[0.0, 0.0, 1.0], version=1)
    path = tmp_path / "v1.json"
    path.write_text(json.dumps({k: v for k, v in json.loads(linear.to_json()).items() if k != "tier_members"}))
    loaded = load_detector(path)
    assert loaded.version == 1 and np.allclose(loaded.probabilities(features), np.exp([0, 0, 1]) / np.exp([0, 0, 1]).sum(), atol=1e-6)
    with pytest.raises(DetectorError, match="inconsistent shapes"):
        replace(model, tier_members=[{**model.tier_members[0], "b2": [0.0]}])
    with pytest.raises(DetectorError, match="needs w1, b1, w2 and b2"):
        replace(model, tier_members=[{"w1": []}])


def test_side_by_side_report_counts_each_part(trained: tuple[Backbone, DetectorModel]) -> None:
    backbone, model = trained
    report = evaluate_guard(_messages(), EmergencyGuard(backbone, model))
    assert report.recall("rules").hits == 0 and report.recall("detector").hits == 1 and report.recall("combined").hits == 1
    assert report.false_alarms("combined").n == len(ROUTINE)


ALL_SETS = tuple(name for names in set_roles().values() for name in names)


@pytest.mark.parametrize("name", ALL_SETS)
def test_shipped_tier_sets_parse_and_cover_every_tier(name: str) -> None:
    messages = load_tiered(SAFETY_EVAL_DIR / f"{name}.jsonl")
    assert {m.tier for m in messages} == set(TIERS)
    assert len({m.red_flag for m in messages if m.tier == "emergency"}) == 13
    assert len({m.id for m in messages}) == len(messages)


def test_tier_sets_do_not_overlap() -> None:
    # Punctuation and case are ignored: "why?" and "why" are the same message to the detector.
    texts = {name: {" ".join(re.findall(r"\w+", m.text.lower())) for m in load_tiered(SAFETY_EVAL_DIR / f"{name}.jsonl")} for name in ALL_SETS}
    assert all(not texts[a] & texts[b] for i, a in enumerate(ALL_SETS) for b in ALL_SETS[i + 1 :])


def test_every_role_has_a_set_and_a_set_has_one_role(tmp_path: Path) -> None:
    roles = set_roles()
    assert all(roles[role] for role in ("train", "dev", "report"))
    path = tmp_path / "roles.yaml"
    path.write_text("train: [tiers_train]\ndev: [tiers_train]\nreport: [tiers_test]\n")
    with pytest.raises(ValueError, match="two roles"):
        set_roles(path)
    path.write_text("train: [tiers_train]\ndev: [no_such_set]\nreport: [tiers_test]\n")
    with pytest.raises(ValueError, match="no such set"):
        set_roles(path)
