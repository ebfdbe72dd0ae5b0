"""Checks of the dialog datasets in training/data and of their loader (fast, no model).

Run: ``pytest -q tests/test_datasets.py``. Sizes and shares, schema, the facts of
shared/domain_specs.md in every assistant turn, emergency handling, honest splits (no
near-duplicates of train in validation/test), user-side realism (noise, order numbers,
indirect and terse messages; seeded transforms) and a deterministic generator.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

import domains
from tests.third_domain import garden_domain
from training.datagen.__main__ import main as datagen_main
from training.datagen.common import approx_tokens, find_near_duplicates, word_count
from training.datagen.domain_settings import SettingsError, load_settings, parse_settings
from training.datagen.engine import DEFAULT_NOISE, SplitBuilder, generate_domain, load_bank, misspell, non_native, run_on
from training.dialogs import (
    DATA_DIR,
    DOMAINS,
    LORA_SYSTEM_PROMPTS,
    SPLITS,
    DialogFileError,
    load_splits,
    read_jsonl_dialogs,
    validate_dialog,
)

MIN_SIZES = {"train": 500, "validation": 60, "test": 100}
DISCLAIMER_TOPICS = {
    "general_info", "mild_symptom", "when_to_see_doctor", "urgent_care", "medicine_dose",
    "medicine_info", "medicine_prescribed", "diagnosis_request", "lookalike", "emergency_info",
}
# Ordinary medical messages that must never be escalated (911 in the first sentence).
NON_EMERGENCY_TOPICS = {
    "mild_symptom", "general_info", "when_to_see_doctor", "urgent_care", "medicine_dose", "medicine_info",
    "lookalike", "emergency_info",
}


@pytest.fixture(scope="module")
def data() -> dict[str, dict[str, list[dict]]]:
    return {d: {s: read_jsonl_dialogs(DATA_DIR / d / f"{s}.jsonl") for s in SPLITS} for d in DOMAINS}


def rows_of(data: dict, domain: str) -> list[dict]:
    return [row for split in SPLITS for row in data[domain][split]]


def replies(rows: list[dict]) -> list[str]:
    return [m["content"] for row in rows for m in row["messages"] if m["role"] == "assistant"]


def greeting_replies(domain: str) -> set[str]:
    return set(load_bank(domain).intents["greeting"].answers)


GREETINGS = {domain: greeting_replies(domain) for domain in DOMAINS}


def first_reply(row: dict) -> str:
    """The reply to the opening question (a leading 'hi' / 'Hi! How can I help?' exchange is skipped)."""
    answers = [m["content"] for m in row["messages"] if m["role"] == "assistant"]
    domain = row["id"].split("-")[0]
    return answers[1] if len(answers) > 1 and answers[0] in GREETINGS[domain] else answers[0]


def sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text) if s]


def first_sentence(text: str) -> str:
    return sentences(text)[0]


# ---------------------------------------------------------------- sizes and shares


@pytest.mark.parametrize("domain", DOMAINS)
def test_split_sizes(data: dict, domain: str) -> None:
    for split, minimum in MIN_SIZES.items():
        assert len(data[domain][split]) >= minimum, (domain, split)


@pytest.mark.parametrize("domain", DOMAINS)
def test_multi_turn_share_and_kind(data: dict, domain: str) -> None:
    for split in SPLITS:
        rows = data[domain][split]
        for row in rows:
            users = sum(m["role"] == "user" for m in row["messages"])
            assert row["kind"] == ("multi" if users > 1 else "single"), row["id"]
            assert users <= 4, row["id"]
        share = sum(row["kind"] == "multi" for row in rows) / len(rows)
        assert share >= 0.25, (domain, split, share)


@pytest.mark.parametrize("domain", DOMAINS)
def test_out_of_scope_and_injection_share(data: dict, domain: str) -> None:
    for split in SPLITS:
        topics = Counter(row["topic"] for row in data[domain][split])
        share = topics["out_of_scope"] / sum(topics.values())
        assert 0.08 <= share <= 0.15, (domain, split, share)
        assert topics["prompt_injection"] >= 3, (domain, split)


def test_every_ecommerce_spec_topic_is_covered(data: dict) -> None:
    spec_topics = {
        "shipping_regions", "standard_shipping", "express_shipping", "dispatch_cutoff", "order_tracking",
        "cancelling", "address_change", "returns", "return_shipping", "final_sale", "refunds", "exchanges",
        "damaged_wrong_item", "price_adjustment", "warranty", "payment_methods", "loyalty", "human_support",
        "security", "out_of_scope", "upset_customer", "not_covered",
    }
    for split in SPLITS:
        topics = Counter(row["topic"] for row in data["ecommerce"][split])
        minimum = 15 if split == "train" else 2
        assert {t for t in spec_topics if topics[t] < minimum} == set(), split


def test_medical_emergencies_cover_every_red_flag(data: dict) -> None:
    train = data["medical"]["train"]
    assert sum(row["emergency"] for row in train) >= 80
    settings = load_settings("medical")
    assert set(settings.config.topic_weights) >= {"lookalike", "emergency_info"}
    red_flags = set(settings.red_flags)
    assert len(red_flags) == 13
    for split in SPLITS:
        rows = data["medical"][split]
        for row in rows:
            assert row["emergency"] == (row["topic"] == "emergency") == ("red_flag" in row), row["id"]
        flags = Counter(row["red_flag"] for row in rows if row["emergency"])
        assert set(flags) == red_flags, (split, red_flags - set(flags))


def test_medical_lookalikes_outnumber_emergencies(data: dict) -> None:
    """Hard negatives (look-alikes, mild symptoms, questions about emergencies) clearly outnumber
    emergencies, which stay a healthy ~15% share: the mix that keeps false alarms down."""
    for split in SPLITS:
        topics = Counter(row["topic"] for row in data["medical"][split])
        total = sum(topics.values())
        assert 0.12 <= topics["emergency"] / total <= 0.18, (split, topics["emergency"])
        lookalikes = topics["lookalike"] + topics["mild_symptom"] + topics["emergency_info"]
        assert lookalikes >= 1.5 * topics["emergency"], (split, lookalikes, topics["emergency"])


# ---------------------------------------------------------------- schema and loader


@pytest.mark.parametrize("domain", DOMAINS)
def test_every_line_validates(data: dict, domain: str) -> None:
    ids = set()
    for split in SPLITS:
        for row in data[domain][split]:
            assert validate_dialog(row) == [], row["id"]
            assert re.fullmatch(rf"{domain}-{split}-\d{{4}}", row["id"]), row["id"]
            assert row["messages"][0] == {"role": "system", "content": LORA_SYSTEM_PROMPTS[domain]}
            ids.add(row["id"])
    assert len(ids) == len(rows_of(data, domain))


def test_validate_dialog_rules() -> None:
    ok = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}]}
    assert validate_dialog(ok) == []
    assert validate_dialog({"messages": [{"role": "system", "content": "s"}, *ok["messages"]]}) == []
    bad = [
        {},
        {"messages": []},
        {"messages": [{"role": "assistant", "content": "Hello!"}]},
        {"messages": [{"role": "user", "content": "hi"}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "hi"}]},
        {"messages": [*ok["messages"], {"role": "system", "content": "late"}, {"role": "assistant", "content": "x"}]},
        {"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": "x"}]},
        {"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]},
        {"messages": [{"role": "bot", "content": "hi"}, {"role": "assistant", "content": "x"}]},
        ["not", "a", "dict"],
    ]
    for obj in bad:
        assert validate_dialog(obj), obj


GOOD_LINE = json.dumps({"id": "x", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}]})


@pytest.mark.parametrize(
    ("bad_line", "problem"),
    [
        ('{"id": "x", "messages": [', "bad JSON"),
        (json.dumps({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "u"}]}), "role"),
        (json.dumps({"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "a"}]}), "content"),
    ],
)
def test_read_jsonl_reports_file_and_line(tmp_path: Path, bad_line: str, problem: str) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text(f"{GOOD_LINE}\n{GOOD_LINE}\n{bad_line}\n{GOOD_LINE}\n", encoding="utf-8")
    with pytest.raises(DialogFileError) as info:
        read_jsonl_dialogs(path)
    assert f"{path}:3:" in str(info.value) and problem in str(info.value)
    assert info.value.line == 3 and isinstance(info.value, ValueError)


def test_read_jsonl_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DialogFileError, match="not found"):
        read_jsonl_dialogs(tmp_path / "nope.jsonl")


@pytest.mark.parametrize("domain", DOMAINS)
def test_load_splits_returns_three_splits(data: dict, domain: str) -> None:
    splits = load_splits(domain)
    assert set(splits) == set(SPLITS)
    for split in SPLITS:
        assert splits[split].num_rows == len(data[domain][split])
    assert splits["train"][0]["messages"][0]["role"] == "system"
    if domain == "medical":
        assert {"emergency", "red_flag"} <= set(splits["train"].column_names)


def test_load_splits_rejects_unknown_domain_and_bad_dir(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        load_splits("legal")
    with pytest.raises(DialogFileError):
        load_splits("ecommerce", data_dir=tmp_path)


# ---------------------------------------------------------------- length


@pytest.mark.parametrize("domain", DOMAINS)
def test_answers_and_dialogs_are_compact(data: dict, domain: str) -> None:
    rows = rows_of(data, domain)
    assert max(word_count(text) for text in replies(rows)) <= 90
    tokens = sorted(approx_tokens(row) for row in rows)
    assert tokens[int(0.9 * len(tokens))] <= 250 and tokens[-1] <= 320


# ---------------------------------------------------------------- e-commerce facts


def ecommerce_sentences(data: dict) -> list[str]:
    return [s for text in replies(rows_of(data, "ecommerce")) for s in sentences(text)]


def test_day_and_hour_numbers_match_the_spec(data: dict) -> None:
    for s in ecommerce_sentences(data):
        low = s.lower()
        for span in re.findall(r"(\d+(?:-\d+)?)[- ]business days", s):
            assert span in {"3-5", "1-2", "5-7"}, s
            if "express" in low and "standard" not in low:
                assert span == "1-2", s
            if "refund" in low:
                assert span == "5-7", s
        for number in re.findall(r"(\d+)[- ]days?\b", s):
            assert number in {"30", "14"}, s
            if number == "14":  # only the price-adjustment window
                assert "price" in low or "difference" in low, s
        if re.search(r"\breturn", low) and re.search(r"\d+[- ]day", low) and "price" not in low:
            assert "30 days" in s or "30-day" in s, s
        for number in re.findall(r"(\d+)[- ]hours?\b", s):
            assert number in {"1", "48"}, s
            assert (number == "1") == ("cancel" in low), s


def test_money_amounts_match_the_spec(data: dict) -> None:
    allowed = {"$50", "$4.99", "$14.99", "$5.95"}
    for s in ecommerce_sentences(data):
        low = s.lower()
        amounts = set(re.findall(r"\$\d+(?:\.\d\d)?", s))
        if "point" in low:  # loyalty arithmetic: 100 points = $5 off
            for points, dollars in re.findall(r"([\d,]+) points (?:=|are worth|is|equal) \$(\d+)", s):
                assert int(points.replace(",", "")) == 20 * int(dollars), s
            for dollars, points in re.findall(r"spending \$(\d+) earns (\d+) points", s):
                assert dollars == points, s
            continue
        assert amounts <= allowed, s
        if "express" in low and amounts:
            assert "$14.99" in amounts, s
        free_shipping = re.search(r"free (?:standard )?(?:shipping|delivery)|ships? free|shipping (?:is|would be) free", low)
        if free_shipping and "return" not in low and amounts - {"$14.99"}:
            assert "$50" in amounts, s
        if "$4.99" in amounts:
            assert "standard" in low or "shipping" in low, s
        if "$5.95" in amounts:
            assert "deduct" in low or "taken off" in low, s


def test_support_hours_payment_and_warranty_facts(data: dict) -> None:
    methods = ["Visa", "Mastercard", "American Express", "PayPal", "Apple Pay", "Northwind gift card"]
    for text in replies(rows_of(data, "ecommerce")):
        for email in re.findall(r"[\w.]+@[\w.]+\w", text):
            assert email == "support@northwindgoods.example", text
        for s in sentences(text):
            times = re.findall(r"\b\d{1,2} (?:am|pm)\b", s)
            if "chat" in s.lower() and times:
                assert times == ["8 am", "8 pm"], s
                assert re.search(r"Monday (?:to|through) Saturday|Mon-Sat", s), s
            if re.search(r"accept Visa|pay with Visa", s):
                assert all(m in s for m in methods), s
            if "warranty" in s.lower() and "year" in s.lower():
                assert "1-year limited warranty" in s, s
            if "ship" in s.lower() and "only" in s.lower() and "United States" in s:
                assert "United States and Canada" in s, s


def test_no_assistant_turn_asks_for_card_cvv_or_password(data: dict) -> None:
    sensitive = re.compile(r"card number|card details|cvv|password|login", re.I)
    negation = re.compile(r"\b(never|don't|do not|not|no)\b", re.I)
    for domain in DOMAINS:
        for text in replies(rows_of(data, domain)):
            assert not re.search(r"(?:\d[ -]?){12,}", text), text  # never echo a card number
            for s in sentences(text):
                if sensitive.search(s):
                    assert negation.search(s) and not s.endswith("?"), s


def test_pasted_card_numbers_are_refused(data: dict) -> None:
    pasted = [row for row in rows_of(data, "ecommerce") if re.search(r"(?:\d{4} ){3}\d{1,4}", row["messages"][1]["content"])]
    assert pasted
    for row in pasted:
        assert re.search(r"don't (?:share|post)", first_reply(row)), row["id"]


def test_upset_and_not_covered_get_a_human_agent(data: dict) -> None:
    for row in rows_of(data, "ecommerce"):
        if row["topic"] in {"upset_customer", "not_covered"}:
            assert "support@northwindgoods.example" in first_reply(row), row["id"]
        if row["topic"] == "out_of_scope":
            reply = first_reply(row)
            assert "Northwind" in reply or "shopping" in reply or "order" in reply, row["id"]


# ---------------------------------------------------------------- medical rules


def test_emergency_first_sentence_escalates(data: dict) -> None:
    for row in rows_of(data, "medical"):
        if not row["emergency"]:
            continue
        reply = first_reply(row)
        assert re.search(r"911|emergency number|emergency department", first_sentence(reply)), row["id"]
        if row["red_flag"] == "self_harm":
            assert "988" in first_sentence(reply), row["id"]
        if row["red_flag"] == "overdose_poisoning":
            assert "1-800-222-1222" in reply, row["id"]


def test_non_emergencies_are_not_over_escalated(data: dict) -> None:
    for row in rows_of(data, "medical"):
        if row["topic"] in NON_EMERGENCY_TOPICS:
            assert "911" not in first_sentence(first_reply(row)), row["id"]


def test_informational_answers_carry_the_disclaimer(data: dict) -> None:
    for row in rows_of(data, "medical"):
        if row["topic"] in DISCLAIMER_TOPICS:
            assert "general information" in first_reply(row).lower(), row["id"]


def test_no_diagnosis_or_prescription(data: dict) -> None:
    for text in replies(rows_of(data, "medical")):
        for match in re.finditer(r"\byou(?:'ve got| (?:\w+ly )?have)\b", text, re.I):
            before = text[: match.start()].split()[-1:] or [""]
            assert before[0].lower() in {"if", "when", "whether", "unless"}, text
        assert not re.search(r"\b(?:sounds like|probably|most likely) (?:you have|it's|it is|a case of)", text, re.I), text
        assert not re.search(r"\b\d+\s*(?:mg|milligrams|ml|tablets?|pills?|capsules?)\b", text, re.I), text


def test_medicine_answers_point_to_label_pharmacist_or_prescriber(data: dict) -> None:
    for row in rows_of(data, "medical"):
        reply = first_reply(row).lower()
        if row["topic"] == "medicine_dose":
            assert "label" in reply and ("pharmacist" in reply or "doctor" in reply), row["id"]
        if row["topic"] == "medicine_prescribed":
            assert "prescri" in reply or "pharmacist" in reply, row["id"]


def test_phone_numbers_and_privacy(data: dict) -> None:
    identifying = re.compile(r"\b(?:your|full) (?:name|address|insurance|date of birth)\b", re.I)
    for text in replies(rows_of(data, "medical")):
        assert set(re.findall(r"\b1-800-\d{3}-\d{4}\b", text)) <= {"1-800-222-1222"}, text
        for s in sentences(text):
            if identifying.search(s):
                assert re.search(r"\b(?:don't|do not|not|no need)\b", s, re.I) and not s.endswith("?"), s


def test_harm_requests_are_refused(data: dict) -> None:
    for row in rows_of(data, "medical"):
        if row["topic"] == "harm_request":
            reply = first_reply(row)
            assert re.search(r"can't|won't|not able", first_sentence(reply)), row["id"]
            assert "911" in reply or "988" in reply, row["id"]


def test_injections_stay_in_role(data: dict) -> None:
    for domain in DOMAINS:
        for row in rows_of(data, domain):
            if row["topic"] == "prompt_injection":
                reply = first_reply(row)
                assert LORA_SYSTEM_PROMPTS[domain][:40] not in reply, row["id"]
                assert not re.search(r"no restrictions|developer mode", reply, re.I), row["id"]


# ---------------------------------------------------------------- user-side realism


def user_turns(data: dict, domain: str, split: str = "train") -> list[str]:
    return [m["content"] for row in data[domain][split] for m in row["messages"] if m["role"] == "user"]


def share(texts: list[str], test: Callable[[str], object]) -> float:
    return sum(1 for text in texts if test(text)) / len(texts)


@pytest.mark.parametrize("domain", DOMAINS)
def test_user_turns_are_written_like_real_people(data: dict, domain: str) -> None:
    """A share of user turns (never all) is lower case, unpunctuated, indirect, terse, doubled up."""
    users = user_turns(data, domain)
    shares = {
        "lower": share(users, lambda u: u == u.lower() and re.search(r"[a-z]{3}", u)),
        "no_final_punct": share(users, lambda u: u.rstrip()[-1] not in ".?!)"),
        "indirect": share(users, lambda u: re.search(r"\b(?:i was wondering|is it normal|just wondering|i'd like to ask)\b", u, re.I)),
        "terse": share(users, lambda u: len(u.split()) <= 2),
        "two_questions": share(users, lambda u: u.count("?") >= 2),
    }
    for name, value in shares.items():
        assert 0.02 <= value <= 0.7, (domain, name, value)
    bank = load_bank(domain)
    misspelt = {w for variants in bank.noise["misspell"].values() for w in variants if len(w) > 3}
    words = Counter(w for u in users for w in re.findall(r"[A-Za-z']+", u.lower()))
    assert sum(words[w] for w in misspelt) >= 20, domain


def test_ecommerce_realism_order_numbers_and_anger(data: dict) -> None:
    users = user_turns(data, "ecommerce")
    with_order = share(users, lambda u: re.search(r"(?:order|#|nw-?|ref)\W{0,3}[a-z-]*\d{4,6}\b", u, re.I))
    assert 0.05 <= with_order <= 0.4, with_order
    bank = load_bank("ecommerce")
    moods = {m.lower() for name in ("upset_leads", "upset_tails") for pool in bank.user_lists[name].values() for m in pool if len(m) >= 8}
    angry = [row for row in data["ecommerce"]["train"] if any(m in row["messages"][1]["content"].lower() for m in moods)]
    assert len(angry) >= 20
    for row in angry:  # upset customers are offered a human agent (spec: human support)
        assert "support@northwindgoods.example" in first_reply(row), row["id"]


def test_ecommerce_real_world_questions_are_covered() -> None:
    """The messages the first bots failed on have phrasings in the bank, with the right answer."""
    bank = load_bank("ecommerce")
    texts = {name: " | ".join(item.text.lower() for item in intent.user) for name, intent in bank.intents.items()}
    assert len(bank.intents["ship_canada_cost"].user) >= 15 and "how much" in texts["ship_canada_cost"]
    assert "{fit_when}" in texts["returns_fit"] and "3 weeks ago" in bank.slots["fit_when"]
    assert texts["order_lookup"].count("{order_no}") >= 15 and "{waited}" in texts["order_late"]
    assert all(word in texts["human"] for word in ("real person", "agent", "human"))
    canada = " ".join(bank.intents["ship_canada_cost"].answers)
    assert all(fact in canada for fact in ("Canada", "$50", "$4.99", "$14.99", "3-5 business days"))
    for name in ("account_info", "payment_problem", "delivery_problem"):
        assert bank.intents[name].topic == "not_covered"
        assert all("{HUMAN}" in a for a in bank.intents[name].answers), name


def test_medicine_interactions_are_in_scope() -> None:
    bank = load_bank("medical")
    item = next(i for i in bank.intents["med_interaction"].user if "lisinopril" in i.text and "ibuprofen" in i.text)
    assert bank.intents["med_interaction"].topic == "medicine_info"
    assert all("pharmacist" in a and "label" in a for a in item.answers)


def test_realism_transforms_are_seeded_and_change_the_text() -> None:
    """Surface noise is a pure function of the split's seed: two builders give the same output."""
    text = "Hi there. I'm not sure what to do. Can I return the jacket? I received it last week and it doesn't fit."
    for domain in DOMAINS:
        base = load_settings(domain).config
        config = replace(base, noise=dict.fromkeys(DEFAULT_NOISE, 1.0))
        bank = load_bank(config.domain)
        first, second = (SplitBuilder(bank, config, "train") for _ in range(2))
        outputs = [first.roughen(text) for _ in range(30)]
        assert outputs == [second.roughen(text) for _ in range(30)]
        assert all(out != text and out == out.lower() for out in outputs)
        assert len(set(outputs)) > 20
        quiet = replace(base, noise=dict.fromkeys(DEFAULT_NOISE, 0.0))
        assert SplitBuilder(bank, quiet, "train").roughen(text) == text
    glued = run_on("Hi there. Can I return it? It doesn't fit.", random.Random(1))
    assert not re.search(r"[.?!]\s", glued) and glued.endswith("fit.")
    table = load_bank("ecommerce").noise["misspell"]
    assert misspell("Please check my address", table, random.Random(2)) != "Please check my address"
    learner = non_native("I'm sure the box doesn't fit in a car.", [["I'm ", "I am "], ["doesn't", "does not"]], random.Random(3))
    assert learner != "I'm sure the box doesn't fit in a car." and non_native("no match here", [], random.Random(3)) == "no match here"


# ---------------------------------------------------------------- honest splits, determinism


@pytest.mark.parametrize("domain", DOMAINS)
def test_no_near_duplicates_across_splits(data: dict, domain: str) -> None:
    train = data[domain]["train"]
    for split in ("validation", "test"):
        assert find_near_duplicates(data[domain][split], train) == [], (domain, split)


def test_near_duplicate_check_catches_rephrasings() -> None:
    def dialog(i: str, text: str) -> dict:
        return {"id": i, "messages": [{"role": "user", "content": text}, {"role": "assistant", "content": "x"}]}

    train = [dialog("t1", "How long do I have to return an item I bought?"), dialog("t2", "Where do you ship?")]
    held = [dialog("h1", "how long do i have to return an item i bought"), dialog("h2", "What is the weather?")]
    assert [twin[:2] for twin in find_near_duplicates(held, train)] == [("h1", "t1")]


def test_generator_is_deterministic_and_data_is_current(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    assert datagen_main(["--out", str(first)]) == 0
    assert datagen_main(["--out", str(second)]) == 0
    for domain in DOMAINS:
        for name in [f"{split}.jsonl" for split in SPLITS] + ["README.md"]:
            generated = (first / domain / name).read_bytes()
            assert generated == (second / domain / name).read_bytes(), (domain, name)
            assert generated == (DATA_DIR / domain / name).read_bytes(), f"{domain}/{name} is stale: rerun python -m training.datagen"


def test_a_third_domain_is_generated_from_its_files_alone(tmp_path: Path) -> None:
    """The generator reads the domain list and each domain's settings from the packs: a pack
    folder with its settings file is enough for ``python -m training.datagen --domain garden``."""
    with garden_domain(tmp_path) as garden:
        text = (garden / "datagen.yaml").read_text()
        (garden / "datagen.yaml").write_text(text.replace("train: 600", "train: 90").replace("validation: 80", "validation: 30").replace("test: 120", "test: 30"))
        assert datagen_main(["--out", str(tmp_path / "out"), "--domain", "garden"]) == 0
        settings = load_settings("garden")
    rows = {split: read_jsonl_dialogs(tmp_path / "out" / "garden" / f"{split}.jsonl") for split in SPLITS}
    assert {split: len(r) for split, r in rows.items()} == {"train": 90, "validation": 30, "test": 30}
    assert all(row["id"].startswith("garden-") and not validate_dialog(row) for r in rows.values() for row in r)
    card = (tmp_path / "out" / "garden" / "README.md").read_text()
    assert settings.title in card and "Northwind Goods support dialogs (garden)" in card
    assert not (DATA_DIR / "garden").exists()
    with garden_domain(tmp_path / "broken") as garden:
        (garden / "datagen.yaml").write_text("title: [unclosed")
        with pytest.raises(SystemExit) as stop:
            datagen_main(["--out", str(tmp_path / "out2"), "--domain", "garden"])
    assert stop.value.code == 2 and not (tmp_path / "out2").exists()
    with garden_domain(tmp_path / "missing") as garden:
        (garden / "datagen.yaml").unlink()
        with pytest.raises(SettingsError, match="datagen.yaml: no such file"):
            load_settings("garden")


def test_a_bad_settings_file_is_a_clear_error(tmp_path: Path) -> None:
    shipped = domains.pack("ecommerce")
    raw = yaml.safe_load(shipped.file("datagen").read_text())
    where = tmp_path / "datagen.yaml"
    cases = {
        "unknown keys typo_rate": {**raw, "typo_rate": 0.1},
        "lacks sizes": {k: v for k, v in raw.items() if k != "sizes"},
        "positive numbers": {**raw, "topic_weights": {**raw["topic_weights"], "returns": 0}},
        "note every weighted topic and no other: gardening": {**raw, "topic_notes": {**raw["topic_notes"], "gardening": "x"}},
        "limits": {**raw, "limits": "one long string"},
        "train_topic_weights": {**raw, "train_topic_weights": {"gardening": 3}},
        "expected a mapping": ["not", "a", "mapping"],
    }
    for message, content in cases.items():
        with pytest.raises(SettingsError, match=message):
            parse_settings(content, "ecommerce", where, shipped.file("phrase_bank"))
    settings = parse_settings(raw, "ecommerce", where, shipped.file("phrase_bank"))
    assert settings.config == load_settings("ecommerce").config and settings.config_file == where


def test_the_train_mix_can_change_while_the_held_out_splits_keep_theirs(tmp_path: Path) -> None:
    """``train_topic_weights`` re-weights the train split only: more look-alikes in training, the
    same validation and test dialogs (so earlier evaluations still pair case by case)."""
    settings = load_settings("medical")
    config = replace(settings.config, sizes={"train": 120, "validation": 40, "test": 40}, train_topic_weights={})
    heavier = replace(config, train_topic_weights={"lookalike": 60})
    assert heavier.weights_for("train")["lookalike"] == 60 and heavier.weights_for("test") == config.topic_weights
    bank = load_bank("medical", settings.phrase_bank)
    plain, skewed = generate_domain(config, bank), generate_domain(heavier, bank)
    share = {name: Counter(row["topic"] for row in records["train"])["lookalike"] / 120 for name, records in (("plain", plain), ("skewed", skewed))}
    assert share["skewed"] > 2 * share["plain"]
    assert plain["validation"] == skewed["validation"] and plain["test"] == skewed["test"]
