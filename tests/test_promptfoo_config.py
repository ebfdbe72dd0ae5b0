"""The promptfoo configuration (``promptfooconfig.yaml``) stays consistent with the project.

It is run by hand against ``python -m bots.api`` (README, "HTTP API"); this test only reads it:
every provider is a served variant, every test goes to the two variants of one domain, every
regex assertion compiles, and no question is copied from the probes or the training dialogs.
Run: ``python -m pytest tests/test_promptfoo_config.py``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from bots.registry import VARIANTS

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG = REPO_ROOT / "promptfooconfig.yaml"
HEADLINE = {name for name, spec in VARIANTS.items() if spec.method in ("lora", "prompt")}
REGEX_TYPES = {"regex", "not-regex"}


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def _matches(ref: str, label: str, provider_id: str) -> bool:
    """promptfoo's provider filter (doesProviderRefMatch): exact label or id, ``prefix*``, or ``ref:`` prefix."""
    if ref in (label, provider_id):
        return True
    if ref.endswith("*"):
        return label.startswith(ref[:-1]) or provider_id.startswith(ref[:-1])
    return label.startswith(f"{ref}:") or provider_id.startswith(f"{ref}:")


def _assertions(config: dict) -> list[dict]:
    tests = config["tests"]
    return [a for test in tests for a in test.get("assert", [])] + list(config.get("defaultTest", {}).get("assert", []))


def test_providers_are_the_four_headline_variants_through_the_api(config: dict) -> None:
    providers = config["providers"]
    names = [provider["id"].removeprefix("openai:chat:") for provider in providers]
    assert all(provider["id"].startswith("openai:chat:") for provider in providers)
    assert all(name in VARIANTS for name in names), names
    assert sorted(names) == sorted(HEADLINE)
    for provider, name in zip(providers, names, strict=True):
        assert provider["label"] == name
        engine = provider["config"]
        assert engine["apiBaseUrl"].endswith("/v1") and engine["temperature"] == 0 and engine["max_tokens"] > 0


def test_every_test_goes_to_both_variants_of_one_domain(config: dict) -> None:
    providers = [(provider["label"], provider["id"]) for provider in config["providers"]]
    assert 12 <= len(config["tests"]) <= 30
    for test in config["tests"]:
        chosen = {label for label, pid in providers if any(_matches(ref, label, pid) for ref in test["providers"])}
        domains = {VARIANTS[label].domain for label in chosen}
        assert len(domains) == 1 and chosen == {n for n in HEADLINE if VARIANTS[n].domain in domains}, (test["description"], chosen)
        assert test["assert"] and all(a.get("metric") for a in test["assert"]), test["description"]
        assert test["vars"]["question"].strip()
    covered = {VARIANTS[label].domain for test in config["tests"] for label, pid in providers if any(_matches(r, label, pid) for r in test["providers"])}
    assert covered == {spec.domain for spec in VARIANTS.values()}


def test_every_regex_assertion_compiles(config: dict) -> None:
    regexes = [a["value"] for a in _assertions(config) if a["type"] in REGEX_TYPES]
    assert regexes
    for pattern in regexes:
        assert isinstance(pattern, str) and "{{" not in pattern and "{%" not in pattern and "{#" not in pattern  # promptfoo renders values with nunjucks
        re.compile(pattern)


def test_assertions_are_deterministic(config: dict) -> None:
    allowed = {"contains", "not-contains", "icontains", "not-icontains", "icontains-any", "contains-any", "regex", "not-regex", "javascript", "equals"}
    assert {a["type"] for a in _assertions(config)} <= allowed  # no model-graded (llm-rubric, similar, ...) checks


def test_questions_are_not_copied_from_probes_or_training_dialogs(config: dict) -> None:
    def norm(text: str) -> str:
        return " ".join(text.lower().split())

    known = set()
    for path in (REPO_ROOT / "training" / "probes").glob("*.jsonl"):
        known |= {norm(json.loads(line)["question"]) for line in path.read_text().splitlines() if line.strip()}
    for path in (REPO_ROOT / "training" / "data").glob("*/*.jsonl"):
        for line in path.read_text().splitlines():
            if line.strip():
                known |= {norm(m["content"]) for m in json.loads(line)["messages"] if m["role"] == "user"}
    copied = [test["vars"]["question"] for test in config["tests"] if norm(test["vars"]["question"]) in known]
    assert not copied
