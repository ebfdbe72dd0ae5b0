"""The dialog engine: phrase banks (yaml) -> varied, checked dialogs for one domain and split.

A phrase bank (``training/datagen/phrases/<domain>.yaml``) holds

* ``slots``: values drawn once per dialog (``{country}``, ``{prod[n]}`` for a field of a dict value);
* ``macros``: UPPERCASE phrasing variants drawn fresh at every use (``{HUMAN}``, ``{CALL}``);
* ``user_lists``: user-side decorations (prefixes, suffixes, connectors, ...);
* ``intents``: one question type each, with user phrasings, answer phrasings (all factually
  identical), a topic, follow-ups and flags (see ``Intent``).

Every user-side list (intent phrasings and decorations) is split into disjoint train /
validation / test pools, so held-out dialogs are phrased in ways training never saw; a
near-duplicate check against train then rejects any held-out dialog that still comes close.
Used by ``training.datagen.ecommerce`` / ``.medical``; run ``python -m training.datagen``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from training.datagen.common import (
    HELD_OUT,
    SPLITS,
    Deck,
    NearDupIndex,
    add_noise,
    allocate,
    approx_tokens,
    lower_first,
    make_rng,
    normalise,
    partition_pool,
    word_count,
)

PHRASES_DIR = Path(__file__).resolve().parent / "phrases"
FIELD_RE = re.compile(r"\{([A-Za-z_]+)(?:\[([a-z_]+)\])?\}")
QUESTION_START = re.compile(r"(?i)(how|what|whats|when|where|why|who|which|is|are|do|does|did|can|could|should|will|would|any)\b")
PRIMARY = "another_question"  # follow-up placeholder: a new question on another topic
MAX_ASSISTANT_WORDS = 90
MAX_DIALOG_TOKENS = 250
MAX_ATTEMPTS = 60


class BankError(ValueError):
    """A phrase bank is malformed (unknown slot, missing answers, too few phrasings...)."""


@dataclass(frozen=True)
class UserItem:
    text: str
    answers: tuple[str, ...] = ()  # phrasing-specific answers override the intent's


@dataclass
class Intent:
    name: str
    topic: str
    user: list[UserItem]
    answers: list[str]
    short: list[str]  # compact answers for two-question messages
    followups: list[str]
    opener: bool  # may open a dialog (follow-ups like "what about Canada?" may not)
    compound: bool  # may be one half of a two-question message
    upset: bool  # may be asked by an upset customer
    disclaimer: bool  # answer must carry the general-information disclaimer
    closing: bool  # "thanks!"-type turn: only ever last
    red_flag: str | None
    weight: int
    answer_by_flag: dict[str, list[str]]
    pools: dict[str, list[UserItem]] = field(default_factory=dict)


@dataclass
class Bank:
    domain: str
    slots: dict[str, list[Any]]
    macros: dict[str, list[str]]
    user_lists: dict[str, dict[str, list[str]]]  # name -> split -> pool
    intents: dict[str, Intent]


@dataclass(frozen=True)
class DomainConfig:
    domain: str
    system_prompt: str
    sizes: dict[str, int]
    topic_weights: dict[str, float]
    multi_rate: dict[str, float]  # per topic; "*" is the default
    compound_rate: float = 0.12
    prefix_rate: float = 0.25
    suffix_rate: float = 0.1
    upset_rate: float = 0.0
    greeting_rate: float = 0.1  # share of multi-turn dialogs that open with "hi"
    emergency_field: bool = False
    disclaimer_marker: str = "general information"


@dataclass
class Draft:
    topic: str
    red_flag: str | None
    turns: list[tuple[str, str, str]]  # (clean user text, noisy user text, assistant)

    @property
    def clean_user_text(self) -> str:
        return "\n".join(turn[0] for turn in self.turns)

    @property
    def user_text(self) -> str:
        return "\n".join(turn[1] for turn in self.turns)


# ---------------------------------------------------------------- loading


def _user_items(raw: list[Any], where: str) -> list[UserItem]:
    items = []
    for entry in raw:
        if isinstance(entry, str):
            items.append(UserItem(entry))
        elif isinstance(entry, dict) and isinstance(entry.get("u"), str) and entry.get("a"):
            items.append(UserItem(entry["u"], tuple(entry["a"])))
        else:
            raise BankError(f"{where}: user entries are strings or {{u: text, a: [answers]}}, got {entry!r}")
    return items


def _intent(name: str, raw: dict, answers_of: dict[str, list[str]]) -> Intent:
    source = raw.get("answer_from")
    answers = list(raw.get("answer", answers_of.get(source, [])))
    return Intent(
        name=name,
        topic=raw["topic"],
        user=_user_items(raw.get("user", []), name),
        answers=answers,
        short=list(raw.get("short", [])),
        followups=list(raw.get("followups", [])),
        opener=not raw.get("followup_only", False),
        compound=raw.get("compound", False),
        upset=raw.get("upset", False),
        disclaimer=raw.get("disclaimer", False),
        closing=raw.get("closing", False),
        red_flag=raw.get("red_flag"),
        weight=int(raw.get("weight", 1)),
        answer_by_flag={k: list(v) for k, v in raw.get("answer_by_flag", {}).items()},
    )


def load_bank(domain: str, path: Path | None = None) -> Bank:
    """Read and check a phrase bank, and split every user-side list into pools."""
    path = path or PHRASES_DIR / f"{domain}.yaml"
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    answers_of = {name: spec.get("answer", []) for name, spec in raw["intents"].items()}
    intents = {name: _intent(name, spec, answers_of) for name, spec in raw["intents"].items()}
    user_lists = {name: partition_pool(items, f"{domain}:list:{name}") for name, items in raw["user_lists"].items()}
    for intent in intents.values():
        intent.pools = partition_pool(intent.user, f"{domain}:intent:{intent.name}")
    bank = Bank(domain, raw.get("slots", {}), raw.get("macros", {}), user_lists, intents)
    _check_bank(bank)
    return bank


def _fields(text: str) -> list[tuple[str, str | None]]:
    return [(m.group(1), m.group(2)) for m in FIELD_RE.finditer(text)]


def _check_bank(bank: Bank) -> None:
    """Fail early, naming the intent, on references that would break generation."""
    for intent in bank.intents.values():
        where = f"{bank.domain}:{intent.name}"
        if not intent.user:
            raise BankError(f"{where}: no user phrasings")
        has_answers = intent.answers or intent.answer_by_flag or all(item.answers for item in intent.user)
        if not has_answers:
            raise BankError(f"{where}: no answers")
        for follow in intent.followups:
            if follow != PRIMARY and follow not in bank.intents:
                raise BankError(f"{where}: unknown follow-up {follow!r}")
        texts = [i.text for i in intent.user] + intent.answers + intent.short
        texts += [a for i in intent.user for a in i.answers] + [a for v in intent.answer_by_flag.values() for a in v]
        for text in texts:
            for root, key in _fields(text):
                known = bank.macros if root.isupper() else bank.slots
                if root not in known:
                    raise BankError(f"{where}: unknown {'macro' if root.isupper() else 'slot'} {{{root}}} in {text!r}")
                if key and not all(isinstance(v, dict) and key in v for v in known[root]):
                    raise BankError(f"{where}: slot {root} has no field {key!r}")


# ---------------------------------------------------------------- building


class SplitBuilder:
    """Builds drafts for one split, drawing user phrasings from that split's pools only."""

    def __init__(self, bank: Bank, config: DomainConfig, split: str) -> None:
        self.bank, self.config, self.split = bank, config, split
        domain = config.domain
        self.rng = make_rng(domain, split, "build")
        deck_rng = make_rng(domain, split, "decks")
        self.phrasings = {name: Deck(i.pools[split], deck_rng) for name, i in bank.intents.items()}
        self.lists = {name: Deck(pools[split], deck_rng) for name, pools in bank.user_lists.items()}
        self.by_topic: dict[str, Deck] = {}
        for topic in config.topic_weights:
            names = [n for n, i in bank.intents.items() if i.topic == topic and i.opener for _ in range(i.weight)]
            if not names:
                raise BankError(f"{domain}: topic {topic!r} has no opening intent")
            self.by_topic[topic] = Deck(names, deck_rng)
        compounds = [n for n, i in bank.intents.items() if i.compound and i.opener and i.topic in config.topic_weights]
        self.compounds = Deck(compounds, deck_rng) if compounds else None
        self.compound_topics = {bank.intents[n].topic for n in compounds}

    # -- text

    def render(self, template: str, fills: dict[str, Any]) -> str:
        """Fill slots (once per dialog, kept in `fills`) and macros (fresh each time)."""

        def replace(match: re.Match) -> str:
            root, key = match.group(1), match.group(2)
            if root.isupper():
                return self.render(self.rng.choice(self.bank.macros[root]), fills)
            if root not in fills:
                fills[root] = self.rng.choice(self.bank.slots[root])
            value = fills[root]
            return str(value[key] if key else value)

        return FIELD_RE.sub(replace, template)

    def answer(self, intent: Intent, item: UserItem, fills: dict, flag: str | None, short: bool = False) -> str:
        """One answer phrasing: phrasing-specific, else per red flag, else the intent's (short ones for pairs)."""
        if item.answers:
            options = list(item.answers)
        elif flag and flag in intent.answer_by_flag:
            options = intent.answer_by_flag[flag]
        elif short:
            options = intent.short or [a for a in intent.answers if word_count(a) <= 40] or intent.answers
        else:
            options = intent.answers
        return self.render(self.rng.choice(options), fills)

    def with_disclaimer(self, text: str, needed: bool, fills: dict) -> str:
        """Append the general-information disclaimer where the intent needs it and the answer lacks it."""
        if needed and self.config.disclaimer_marker not in text.lower():
            text = f"{text} {self.render('{DISCLAIMER}', fills)}"
        return text

    def decorate(self, text: str, intent: Intent) -> str:
        """Persona: an opening word or phrase, a closing courtesy."""
        urgent = intent.red_flag is not None and "urgent_prefixes" in self.lists
        rate = 0.2 if urgent else self.config.prefix_rate
        if self.rng.random() < rate:
            prefix = self.lists["urgent_prefixes" if urgent else "prefixes"].draw()
            text = f"{prefix} {lower_first(text) if prefix[-1] in ',:' else text}"
        if not urgent and self.rng.random() < self.config.suffix_rate:
            text = f"{text} {self.lists['suffixes'].draw()}"
        return text

    # -- turns

    def turn(self, intent: Intent, fills: dict, flag: str | None, first: bool = False) -> tuple[str, str, str]:
        """(clean user text, noisy user text, answer); the opening turn also gets a persona."""
        item = self.phrasings[intent.name].draw()
        clean = self.render(item.text, fills)
        reply = self.with_disclaimer(self.answer(intent, item, fills, flag), intent.disclaimer, fills)
        if first and intent.name != "greeting":  # "hi" needs no persona around it
            clean = self.decorate(clean, intent)
            if intent.upset and self.rng.random() < self.config.upset_rate:
                clean, reply = self.upset(clean, reply, fills)
        return clean, add_noise(clean, self.rng), reply

    def upset(self, text: str, reply: str, fills: dict) -> tuple[str, str]:
        """An annoyed customer: apologise and offer a human agent on top of the answer."""
        lead = self.lists["upset_leads"].draw()
        human = "" if "support@" in reply else " " + self.render("{HUMAN}", fills)
        new_reply = f"{self.render('{APOLOGY}', fills)} {reply}{human}"
        if word_count(new_reply) > MAX_ASSISTANT_WORDS:
            return text, reply
        return f"{lead} {text}", new_reply

    def pick_primary(self, exclude_topic: str) -> Intent:
        """An opening question on another topic: the second half of a pair, or 'and another thing...'."""
        for _ in range(20):
            intent = self.bank.intents[self.compounds.draw()]
            if intent.topic != exclude_topic:
                return intent
        raise BankError(f"{self.config.domain}: no other-topic intent to follow {exclude_topic}")

    # -- dialogs

    def single(self, topic: str) -> Draft:
        intent = self.bank.intents[self.by_topic[topic].draw()]
        fills: dict[str, Any] = {}
        return Draft(intent.topic, intent.red_flag, [self.turn(intent, fills, intent.red_flag, first=True)])

    def compound(self, topic: str) -> Draft:
        """Two questions in one message, answered in one reply."""
        first = self.bank.intents[self.by_topic[topic].draw()]
        if not first.compound or self.compounds is None:
            return self.single(topic)
        second = self.pick_primary(first.topic)
        fills: dict[str, Any] = {}
        items = [self.phrasings[i.name].draw() for i in (first, second)]
        q1, q2 = (self.render(item.text, fills) for item in items)
        connector = self.lists["connectors"].draw()
        lower = connector.rstrip(" ")[-1:] in ",abcdefghijklmnopqrstuvwxyz"
        if not lower and q1[-1] not in ".?!":  # "...not heavy Lastly, ..." reads as one run-on
            q1 += "?" if QUESTION_START.match(q1) else "."
        clean = self.decorate(q1 + connector + (lower_first(q2) if lower else q2), first)
        parts = [self.answer(i, item, fills, None, short=True) for i, item in zip((first, second), items, strict=True)]
        reply = self.with_disclaimer(" ".join(parts), first.disclaimer or second.disclaimer, fills)
        if word_count(reply) > MAX_ASSISTANT_WORDS:  # two long answers: ask one question instead
            return self.single(topic)
        return Draft(first.topic, None, [(clean, add_noise(clean, self.rng), reply)])

    def multi(self, topic: str) -> Draft:
        """2-4 user turns: optional greeting, the opening question, natural follow-ups."""
        first = self.bank.intents[self.by_topic[topic].draw()]
        flag = first.red_flag
        fills: dict[str, Any] = {}
        turns = []
        greeting = self.bank.intents.get("greeting")
        if greeting and not flag and topic != "greeting" and self.rng.random() < self.config.greeting_rate:
            turns.append(self.turn(greeting, fills, None, first=True))
        turns.append(self.turn(first, fills, flag, first=not turns))
        pending = list(first.followups)
        used = {first.name}
        wanted = self.rng.choices([1, 2, 3], weights=[0.55, 0.33, 0.12])[0]
        for step in range(wanted):
            if len(turns) >= 4:
                break
            follow = self.next_followup(pending, used, last=step == wanted - 1)
            if follow is None:
                break
            if follow == PRIMARY:
                intent = self.pick_primary(first.topic)
                clean, _, reply = self.turn(intent, fills, None)
                lead = self.lists["back_leads"].draw()
                clean = f"{lead} {lower_first(clean)}" if lead[-1] in ",:" else f"{lead} {clean}"
                turns.append((clean, add_noise(clean, self.rng), reply))
                used.add(PRIMARY)
                continue
            intent = self.bank.intents[follow]
            turns.append(self.turn(intent, fills, flag))
            used.add(follow)
            pending.extend(f for f in intent.followups if f not in pending)
        draft = Draft(first.topic, flag, turns)
        while len(draft.turns) > 2 and approx_tokens(dialog_messages(self.config, draft)) > MAX_DIALOG_TOKENS:
            draft.turns.pop()
        return draft

    def next_followup(self, pending: list[str], used: set[str], last: bool) -> str | None:
        """A not-yet-used follow-up; 'thanks!'-type closers only as the last turn."""
        fresh = [f for f in pending if f not in used]
        closers = [f for f in fresh if f != PRIMARY and self.bank.intents[f].closing]
        others = [f for f in fresh if f not in closers]
        if last and closers and (not others or self.rng.random() < 0.4):
            return self.rng.choice(closers)
        if others:
            return self.rng.choice(others)
        return self.rng.choice(closers) if last and closers else None

    def build(self, topic: str, kind: str) -> Draft:
        if kind == "multi":
            draft = self.multi(topic)
            if len(draft.turns) > 1:
                return draft
        if kind == "compound" and topic in self.compound_topics:
            return self.compound(topic)
        return self.single(topic)



def dialog_messages(config: DomainConfig, draft: Draft) -> dict:
    """The chat messages of a draft: the short system prompt, then the turns."""
    messages = [{"role": "system", "content": config.system_prompt}]
    for _, user, assistant in draft.turns:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return {"messages": messages}

# ---------------------------------------------------------------- splits


def make_plan(config: DomainConfig, split: str, builder: SplitBuilder) -> list[tuple[str, str]]:
    """(topic, kind) for every dialog of a split: topic quotas, then multi/compound quotas."""
    counts = allocate(config.sizes[split], config.topic_weights)
    plan = []
    for topic, count in counts.items():
        n_multi = round(count * config.multi_rate.get(topic, config.multi_rate["*"]))
        n_compound = round(count * config.compound_rate) if topic in builder.compound_topics else 0
        n_compound = min(n_compound, count - n_multi)
        plan += [(topic, "multi")] * n_multi + [(topic, "compound")] * n_compound
        plan += [(topic, "single")] * (count - n_multi - n_compound)
    make_rng(config.domain, split, "plan").shuffle(plan)
    return plan


def check_draft(draft: Draft) -> None:
    """Generator bugs, not data choices: unfilled fields, over-long answers."""
    for clean, _, reply in draft.turns:
        for text in (clean, reply):
            if "{" in text or "}" in text or "  " in text:
                raise BankError(f"badly rendered text: {text!r}")
        if word_count(reply) > MAX_ASSISTANT_WORDS:
            raise BankError(f"answer over {MAX_ASSISTANT_WORDS} words: {reply!r}")


def generate_split(bank: Bank, config: DomainConfig, split: str, train_index: NearDupIndex | None) -> list[Draft]:
    """Drafts of one split: unique within the split and, when held out, not near any train dialog."""
    builder = SplitBuilder(bank, config, split)
    seen: set[str] = set()
    drafts = []
    for topic, kind in make_plan(config, split, builder):
        for _ in range(MAX_ATTEMPTS):
            draft = builder.build(topic, kind)
            key = " ".join(normalise(draft.clean_user_text))
            if key in seen:
                continue
            if train_index is not None and (
                train_index.closest(draft.clean_user_text)[0] or train_index.closest(draft.user_text)[0]
            ):
                continue
            break
        else:
            raise BankError(f"{config.domain}/{split}: no fresh {kind} dialog for topic {topic!r}")
        check_draft(draft)
        seen.add(key)
        drafts.append(draft)
    return drafts


def to_record(config: DomainConfig, draft: Draft, split: str, index: int) -> dict:
    record: dict[str, Any] = {
        "id": f"{config.domain}-{split}-{index:04d}",
        "topic": draft.topic,
        "kind": "multi" if len(draft.turns) > 1 else "single",
    }
    if config.emergency_field:
        record["emergency"] = draft.red_flag is not None
        if draft.red_flag:
            record["red_flag"] = draft.red_flag
    record["messages"] = dialog_messages(config, draft)["messages"]
    return record


def generate_domain(config: DomainConfig, bank: Bank | None = None) -> dict[str, list[dict]]:
    """All three splits of a domain as records; held-out splits are checked against train."""
    bank = bank or load_bank(config.domain)
    records: dict[str, list[dict]] = {}
    train_index: NearDupIndex | None = None
    for split in SPLITS:
        drafts = generate_split(bank, config, split, train_index if split in HELD_OUT else None)
        records[split] = [to_record(config, d, split, i) for i, d in enumerate(drafts, start=1)]
        if split == "train":
            train_index = NearDupIndex([d.clean_user_text for d in drafts] + [d.user_text for d in drafts])
    return records

