"""Model-independent safety guards on a user's message, driven by bots/safety_rules.yaml.

    detect_emergency(text)              -> EmergencyMatch | None  (medical red flags)
    mask_card_numbers(text)             -> text with card numbers and CVVs masked (for logs)
    detect_injection(text)              -> name of the prompt-injection rule matched, or None
    detect_out_of_scope(domain, text)   -> True for clearly unrelated requests
    screen(domain, text)                -> all of the above, with the reply text to use

The rules (patterns, typo vocabulary, escalation and reply texts) are data in
bots/safety_rules.yaml; this module only normalises text and applies them. Measure the
emergency detector with ``python -m bots.safety_eval``.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

RULES_FILE = Path(__file__).resolve().with_name("safety_rules.yaml")
_MACRO = re.compile(r"\{([a-z_]+)\}")  # {gap}, {pron}...; regex repetitions like {0,30} never match


@dataclass(frozen=True)
class EmergencyMatch:
    """A message that describes a possible emergency, and the sentence(s) the reply must open with."""

    red_flag: str
    """Key of the first red flag matched (bots/safety_rules.yaml, ``red_flags``)."""
    matched: str
    """The words of the (normalised) message that matched."""
    escalation: str
    red_flags: tuple[str, ...] = ()
    """Every red flag matched, first one included (their escalation texts are all in ``escalation``)."""


# --- rules, compiled from the data file ------------------------------------------------------


@dataclass(frozen=True)
class _Combination:
    """Matches when every pattern has a live (not negated, not over) occurrence in the message,
    and none of the ``unless`` patterns (an everyday explanation: "numb from the dentist") occurs."""

    patterns: tuple[re.Pattern[str], ...]
    unless: tuple[re.Pattern[str], ...] = ()


@dataclass(frozen=True)
class _InfantFever:
    max_age_days: int
    min_celsius: float
    min_fahrenheit: float
    newborn: re.Pattern[str]
    age: re.Pattern[str]
    temperature: re.Pattern[str]
    fever_word: re.Pattern[str]


@dataclass(frozen=True)
class _RedFlag:
    key: str
    escalation: tuple[str, ...]
    rules: tuple[_Combination, ...]
    infant_fever: _InfantFever | None = None
    recurring_counts: bool = False
    """True where a recurring occurrence is still an emergency (thoughts of suicide "sometimes")."""


@dataclass(frozen=True)
class SafetyRules:
    """Everything bots/safety_rules.yaml says, compiled."""

    replacements: tuple[tuple[re.Pattern[str], str], ...]
    vocabulary: tuple[str, ...]
    protected: frozenset[str]
    clause_breaks: re.Pattern[str]
    negation_cues: re.Pattern[str]
    negation_window_words: int
    resolved_cues: re.Pattern[str]
    recurring_cues: re.Pattern[str]
    returned_cues: re.Pattern[str]
    resolved_message: re.Pattern[str]
    episode_past: re.Pattern[str]
    episode_over: re.Pattern[str]
    episode_present: re.Pattern[str]
    general_preface: re.Pattern[str]
    general_opening: re.Pattern[str]
    general_topic: re.Pattern[str]
    general_personal: re.Pattern[str]
    escalation_texts: dict[str, str]
    red_flags: tuple[_RedFlag, ...]
    injection: tuple[tuple[str, re.Pattern[str]], ...]
    out_of_scope_topics: tuple[tuple[str, re.Pattern[str]], ...]
    domain_topics: dict[str, tuple[tuple[str, re.Pattern[str]], ...]]
    in_domain: dict[str, re.Pattern[str]]
    injection_reply: dict[str, str]
    out_of_scope_reply: dict[str, str]

    @classmethod
    def load(cls, path: Path = RULES_FILE) -> SafetyRules:
        data: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
        macros: dict[str, str] = data["macros"]

        def compile_(pattern: str, flags: int = 0) -> re.Pattern[str]:
            def expand(match: re.Match[str], seen: tuple[str, ...] = ()) -> str:
                name = match.group(1)
                if name not in macros:
                    raise ValueError(f"{path}: unknown macro {{{name}}} in pattern {pattern!r}")
                if name in seen:
                    raise ValueError(f"{path}: macro {{{name}}} refers to itself")
                # Macros may use macros (a word class built on {cant} or {gap}).
                inner = _MACRO.sub(lambda m: expand(m, seen + (name,)), macros[name])
                return f"(?:{inner})"

            try:
                return re.compile(_MACRO.sub(expand, pattern), flags)
            except re.error as exc:
                raise ValueError(f"{path}: bad pattern {pattern!r}: {exc}") from exc

        def red_flag(key: str, spec: dict[str, Any]) -> _RedFlag:
            for name in spec["escalation"]:
                if name not in data["escalation_texts"]:
                    raise ValueError(f"{path}: red flag {key} names unknown escalation text {name}")
            rules = tuple(
                _Combination(tuple(compile_(p) for p in entry["all"]), tuple(compile_(p) for p in entry.get("unless", [])))
                if isinstance(entry, dict)
                else _Combination((compile_(entry),))
                for entry in spec.get("any", [])
            )
            infant = spec.get("infant_fever")
            parser = None
            if infant:
                parser = _InfantFever(
                    int(infant["max_age_days"]), float(infant["min_celsius"]), float(infant["min_fahrenheit"]),
                    compile_(infant["newborn"]), compile_(infant["age"]), compile_(infant["temperature"]), compile_(infant["fever_word"]),
                )
            return _RedFlag(key, tuple(spec["escalation"]), rules, parser, bool(spec.get("recurring_counts", False)))

        general = data["general_question"]
        episode = data["resolved_episode"]
        case_sensitive = set(data.get("injection_case_sensitive", []))
        scope = data["out_of_scope"]
        replies = data["replies"]
        return cls(
            replacements=tuple((compile_(p), r) for p, r in data["replacements"].items()),
            vocabulary=tuple(data["vocabulary"]),
            protected=frozenset(data["protected"]),
            clause_breaks=compile_(data["clause_breaks"]),
            negation_cues=compile_(data["negation_cues"]),
            negation_window_words=int(data["negation_window_words"]),
            resolved_cues=compile_(data["resolved_cues"]),
            recurring_cues=compile_(data["recurring_cues"]),
            returned_cues=compile_(data["returned_cues"]),
            resolved_message=compile_(data["resolved_message"]),
            episode_past=compile_(episode["past"]),
            episode_over=compile_(episode["over"]),
            episode_present=compile_(episode["present"]),
            general_preface=compile_(general["preface"]),
            general_opening=compile_(general["opening"]),
            general_topic=compile_(general["topic"]),
            general_personal=compile_(general["personal"]),
            escalation_texts={k: " ".join(v.split()) for k, v in data["escalation_texts"].items()},
            red_flags=tuple(red_flag(k, v) for k, v in data["red_flags"].items()),
            injection=tuple((k, compile_(v, 0 if k in case_sensitive else re.IGNORECASE)) for k, v in data["injection"].items()),
            out_of_scope_topics=tuple((k, compile_(v)) for k, v in scope["topics"].items()),
            domain_topics={d: tuple((k, compile_(v)) for k, v in topics.items()) for d, topics in scope.get("domain_topics", {}).items()},
            in_domain={k: compile_(v) for k, v in scope["in_domain"].items()},
            injection_reply={k: " ".join(v.split()) for k, v in replies["injection"].items()},
            out_of_scope_reply={k: " ".join(v.split()) for k, v in replies["out_of_scope"].items()},
        )


RULES = SafetyRules.load()
INJECTION_REPLY: dict[str, str] = RULES.injection_reply
"""Per domain: the polite redirect to send instead of a reply when detect_injection fires."""
OUT_OF_SCOPE_REPLY: dict[str, str] = RULES.out_of_scope_reply
"""Per domain: the polite redirect to send instead of a reply when detect_out_of_scope fires."""


# --- text normalisation ----------------------------------------------------------------------


def _one_edit_apart(word: str, target: str) -> bool:
    """Optimal string alignment distance exactly 1 (insert, delete, substitute or swap two neighbours)."""
    if word == target or abs(len(word) - len(target)) > 1:
        return False
    if len(word) == len(target):
        diffs = [i for i, (a, b) in enumerate(zip(word, target, strict=True)) if a != b]
        if len(diffs) == 1:
            return True
        i = diffs[0]
        return len(diffs) == 2 and diffs[1] == i + 1 and word[i] == target[i + 1] and word[i + 1] == target[i]
    short, long_ = sorted((word, target), key=len)
    return any(long_[:i] + long_[i + 1 :] == short for i in range(len(long_)))


@functools.lru_cache(maxsize=4096)
def _correct_word(word: str) -> str:
    if len(word) < 4 or word in RULES.protected or word in RULES.vocabulary:
        return word
    for target in RULES.vocabulary:
        if len(target) >= 5 and target[0] == word[0] and _one_edit_apart(word, target):
            return target
    return word


def normalise(text: str) -> str:
    """Lower case, no apostrophes, hyphens between words as spaces, slang and typos corrected."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"[\u2018\u2019\u02bc`\u00b4]", "'", text)
    text = re.sub(r"(?<=[a-z])'(?=[a-z])", "", text)  # can't -> cant, dad's -> dads
    text = text.replace("'", " ")
    text = re.sub(r"(?<=[a-z0-9])[-\u2010-\u2014](?=[a-z0-9])", " ", text)  # 8-week-old, self-harm
    text = re.sub(r"\s+", " ", text).strip()
    for pattern, replacement in RULES.replacements:
        text = pattern.sub(replacement, text)
    return re.sub(r"[a-z]+", lambda m: _correct_word(m.group()), text)


# --- emergencies ------------------------------------------------------------------------------


def _clause(text: str, start: int, end: int) -> tuple[int, int]:
    """Bounds of the clause holding text[start:end] (breaks inside the span are ignored)."""
    clause_start, clause_end = 0, len(text)
    for brk in RULES.clause_breaks.finditer(text):
        if brk.end() <= start:
            clause_start = brk.end()
        elif brk.start() >= end:
            clause_end = brk.start()
            break
    return clause_start, clause_end


def _is_live(text: str, start: int, end: int, recurring_counts: bool = False) -> bool:
    """Not negated just before ("no chest pain"), not over in its clause ("... is gone"), and
    not something that keeps coming back ("every time i run"), unless recurring_counts."""
    clause_start, clause_end = _clause(text, start, end)
    # Only the last few words count: "i dont know what to do my dad collapsed" is not negated.
    words = text[clause_start:start].split()
    before = " ".join(words[max(0, len(words) - RULES.negation_window_words) :])
    if RULES.negation_cues.search(before):
        return False
    clause = text[clause_start:clause_end]
    if not recurring_counts and RULES.recurring_cues.search(clause):
        return False
    # "chest pain two weeks ago, now it is back": over once, happening again now.
    return not RULES.resolved_cues.search(clause) or bool(RULES.returned_cues.search(text))


def _live_match(pattern: re.Pattern[str], text: str, recurring_counts: bool = False) -> str | None:
    for match in pattern.finditer(text):
        if _is_live(text, match.start(), match.end(), recurring_counts):
            return match.group()
    return None


def _combination_match(rule: _Combination, text: str, recurring_counts: bool = False) -> str | None:
    if any(pattern.search(text) for pattern in rule.unless):
        return None
    parts = []
    for pattern in rule.patterns:
        found = _live_match(pattern, text, recurring_counts)
        if found is None:
            return None
        parts.append(found)
    return " + ".join(dict.fromkeys(parts))


_NUMBER_WORDS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12}


def _age_in_days(number: str, unit: str) -> int:
    count = int(number) if number.isdigit() else _NUMBER_WORDS[number]
    if unit.startswith("d"):
        return count
    return count * (7 if unit.startswith("w") else 30)


def _infant_fever_match(rule: _InfantFever, text: str) -> str | None:
    """A baby under the age limit with a fever: a temperature at or over the threshold, or the word."""
    ages = [0] if rule.newborn.search(text) else []
    for match in rule.age.finditer(text):
        # The pattern has three alternatives ("6 weeks old", "baby, 6 weeks", "born 6 weeks ago").
        number, unit = next((match[f"n{i}"], match[f"unit{i}"]) for i in ("", "2", "3") if match[f"n{i}"])
        ages.append(_age_in_days(number, unit))
    if not ages or min(ages) >= rule.max_age_days:
        return None
    for match in rule.temperature.finditer(text):
        if not _is_live(text, match.start(), match.end()):
            continue
        value, unit = float(match["value"]), (match["unit"] or "")
        # Without a unit, the value's range tells Celsius (34-43.5) from Fahrenheit (93-110).
        if unit.startswith("c") or (not unit and 34.0 <= value <= 43.5):
            if value >= rule.min_celsius:
                return match.group()
        elif (unit.startswith("f") or (not unit and 93.0 <= value <= 110.0)) and value >= rule.min_fahrenheit - 1e-9:
            return match.group()
    return _live_match(rule.fever_word, text)


def _is_general_question(text: str) -> bool:
    """'what are the signs of a stroke?': about a red flag in general, nobody affected now.

    A short preface ("hi,", "im a nursing student,") may come first: it says who asks, not
    who is affected, so it is left out before looking for the opening and personal words.
    """
    text = RULES.general_preface.sub("", text, count=1)
    return bool(RULES.general_opening.search(text) and RULES.general_topic.search(text) and not RULES.general_personal.search(text))


def _is_resolved_episode(text: str) -> bool:
    """'had a panic attack yesterday, couldnt breathe but it passed': an episode that is over.

    Needs a past time, words saying it ended, and nothing that says it goes on now ("still",
    "again", "right now"): the clause-level cues cannot see across "but it passed".
    """
    return bool(RULES.episode_past.search(text) and RULES.episode_over.search(text) and not RULES.episode_present.search(text))


def _flag_match(flag: _RedFlag, text: str) -> str | None:
    if flag.infant_fever is not None:
        found = _infant_fever_match(flag.infant_fever, text)
        if found:
            return found
    for rule in flag.rules:
        found = _combination_match(rule, text, flag.recurring_counts)
        if found:
            return found
    return None


def detect_emergency(text: str) -> EmergencyMatch | None:
    """The red flags a message describes, with the escalation the reply must open with; None if none."""
    normalised = normalise(text)
    if not normalised or _is_general_question(normalised) or RULES.resolved_message.search(normalised) or _is_resolved_episode(normalised):
        return None
    found = [(flag, matched) for flag in RULES.red_flags if (matched := _flag_match(flag, normalised))]
    if not found:
        return None
    texts = dict.fromkeys(name for flag, _ in found for name in flag.escalation)  # ordered, no repeats
    if "emergency" in texts:  # "call 911 now" always comes first
        texts = {"emergency": None, **texts}
    escalation = " ".join(RULES.escalation_texts[name] for name in texts)
    first, matched = found[0]
    return EmergencyMatch(first.key, matched, escalation, tuple(flag.key for flag, _ in found))


# --- card numbers -----------------------------------------------------------------------------

# 13 or more digits (cards have 13-19), single spaces or dashes allowed between them. Longer runs
# are masked too: a card number typed with its expiry right after it is still a card number.
# Luhn is not checked on purpose, to err on masking: a mistyped card number is still one.
_CARD = re.compile(r"(?<!\d)(?<!\d[ -])(?:\d[ -]?){12,}\d(?![ -]?\d)")
_CVV = re.compile(r"\b(cvv2?|cvc2?|cvn|cid|csc|security code|card code)\b((?:\s*(?:is|was|number|no\.?|num|code|:|=|#|-))*\s*)\d{3,4}\b", re.IGNORECASE)


def mask_card_numbers(text: str) -> str:
    """Card-like numbers -> '**** **** **** 1234', CVVs -> 'cvv ***'. For logs and anything stored."""
    text = _CVV.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)
    return _CARD.sub(lambda m: "**** **** **** " + re.sub(r"\D", "", m.group())[-4:], text)


# --- prompt injection and off-topic requests ------------------------------------------------


def detect_injection(text: str) -> str | None:
    """Name of the first prompt-injection rule the message matches ('ignore_instructions', 'dan'...)."""
    light = unicodedata.normalize("NFKC", text)
    light = re.sub(r"(?<=\w)[\u2019']+(?=\w)", "", light)  # you're -> youre, as the patterns expect
    light = re.sub(r"[ \t]+", " ", light)
    for name, pattern in RULES.injection:
        if pattern.search(light):
            return name
    return None


def out_of_scope_topic(domain: str, text: str) -> str | None:
    """The unrelated topic of a message ('weather', 'coding'...), or None; see detect_out_of_scope."""
    if domain not in RULES.in_domain:
        raise ValueError(f"unknown domain '{domain}'; known: {', '.join(RULES.in_domain)}")
    normalised = normalise(text)
    if RULES.in_domain[domain].search(normalised):
        return None  # conservative: any word of the domain keeps the message in scope
    for name, pattern in RULES.out_of_scope_topics + RULES.domain_topics.get(domain, ()):
        if pattern.search(normalised):
            return name
    return None


def detect_out_of_scope(domain: str, text: str) -> bool:
    """True only for clearly unrelated requests (coding, homework, weather, politics...)."""
    return out_of_scope_topic(domain, text) is not None


# --- all guards at once -----------------------------------------------------------------------


@dataclass(frozen=True)
class Screening:
    """What the guards say about one user message, and what to do with the reply."""

    domain: str
    emergency: EmergencyMatch | None
    injection: str | None
    out_of_scope: bool

    @property
    def canned_reply(self) -> str | None:
        """Send this instead of asking the model (an emergency is always answered, escalation first)."""
        if self.emergency:
            return None
        if self.injection:
            return RULES.injection_reply[self.domain]
        if self.out_of_scope:
            return RULES.out_of_scope_reply[self.domain]
        return None

    @property
    def prefix(self) -> str:
        """Text the reply must open with ('' when nothing is needed)."""
        return self.emergency.escalation if self.emergency else ""


def screen(domain: str, text: str) -> Screening:
    return Screening(domain, detect_emergency(text), detect_injection(text), detect_out_of_scope(domain, text))
