"""The dialog engine: phrase banks (yaml) -> varied, checked dialogs for one domain and split.

A phrase bank (``training/datagen/phrases/<domain>.yaml``) holds

* ``slots``: values drawn once per dialog (``{country}``, ``{prod[n]}`` for a field of a dict value);
* ``macros``: UPPERCASE phrasing variants drawn fresh at every use (``{HUMAN}``, ``{CALL}``);
* ``user_lists``: user-side decorations (prefixes, suffixes, connectors, indirect leads,
  "is it normal that ...?" frames, order references, angry leads and tails, ...);
* ``noise``: surface-noise tables (common misspellings, non-native rewrites), merged over the
  shared ``phrases/noise.yaml``;
* ``intents``: one question type each, with user phrasings, answer phrasings (all factually
  identical), a topic, follow-ups and flags (see ``Intent``).

User-side realism comes in two layers, each applied to a share of turns (``DomainConfig``):
persona on the opening question (greeting-style prefixes, courtesy suffixes, indirect leads,
worry frames, order numbers, anger with an apology and a human agent in the reply), and
surface noise on every user turn's text as sent (``SplitBuilder.roughen``: non-native rewrites,
run-on sentences, misspellings, keyboard typos, all lower case, missing punctuation). All of it
draws on the split's seeded RNG, so the output stays byte-identical.

Every user-side list (intent phrasings and decorations) is split into disjoint train /
validation / test pools, so held-out dialogs are phrased in ways training never saw; a
near-duplicate check against train then rejects any held-out dialog that still comes close.
Configured per domain by ``training.datagen.domain_settings`` (the settings file its pack names);
run ``python -m training.datagen``.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import domains
from training.datagen.common import (
    HELD_OUT,
    SPLITS,
    Deck,
    NearDupIndex,
    add_typos,
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
SENTENCE_BREAK = re.compile(r"(?<=[\w)'\"])[.!?]+\s+(\S+)|\n(\S+)")
# Shares of user turns that get each kind of surface noise (each rolled independently).
DEFAULT_NOISE = {"non_native": 0.0, "run_on": 0.0, "misspell": 0.0, "typo": 0.16, "lower": 0.22, "no_punct": 0.2}


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
    order: bool  # about one order: the opening question may carry an order number
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
    noise: dict[str, Any] = field(default_factory=dict)  # misspell: {word: [variants]}, non_native: [[from, to]]


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
    indirect_rate: float = 0.0  # "I was wondering, ..." / "is it normal that ...?" around the opening question
    order_ref_rate: float = 0.0  # order number added to an opening question about one order
    noise: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_NOISE))  # surface noise per user turn
    greeting_rate: float = 0.1  # share of multi-turn dialogs that open with "hi"
    emergency_field: bool = False
    disclaimer_marker: str = "general information"
    train_topic_weights: dict[str, float] = field(default_factory=dict)
    """Weights that replace some of ``topic_weights`` in the train split only: the training mix can
    change while the held-out splits keep theirs (their RNGs are their own; the near-duplicate check
    against train may in principle reject another draft, and tests/test_datasets.py checks the files)."""

    def weights_for(self, split: str) -> dict[str, float]:
        """The topic mix of one split."""
        return {**self.topic_weights, **self.train_topic_weights} if split == "train" else dict(self.topic_weights)


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
        order=raw.get("order", False),
        disclaimer=raw.get("disclaimer", False),
        closing=raw.get("closing", False),
        red_flag=raw.get("red_flag"),
        weight=int(raw.get("weight", 1)),
        answer_by_flag={k: list(v) for k, v in raw.get("answer_by_flag", {}).items()},
    )


def load_noise(own: dict | None) -> dict[str, Any]:
    """The shared noise tables (phrases/noise.yaml) with a bank's own ``noise:`` entries added."""
    shared = yaml.safe_load((PHRASES_DIR / "noise.yaml").read_text(encoding="utf-8"))
    own = own or {}
    misspell = {**shared.get("misspell", {}), **own.get("misspell", {})}
    non_native = [*shared.get("non_native", []), *own.get("non_native", [])]
    for word, variants in misspell.items():
        if not (isinstance(variants, list) and variants and all(isinstance(v, str) for v in variants)):
            raise BankError(f"noise.misspell.{word}: expected a list of misspellings")
    for pair in non_native:
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, str) for v in pair)):
            raise BankError(f"noise.non_native: expected [from, to] pairs, got {pair!r}")
    return {"misspell": {w.lower(): v for w, v in misspell.items()}, "non_native": non_native}


def load_bank(domain: str, path: Path | None = None) -> Bank:
    """Read and check a phrase bank, and split every user-side list into pools."""
    path = path or domains.pack(domain).file("phrase_bank")
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    answers_of = {name: spec.get("answer", []) for name, spec in raw["intents"].items()}
    intents = {name: _intent(name, spec, answers_of) for name, spec in raw["intents"].items()}
    user_lists = {name: partition_pool(items, f"{domain}:list:{name}") for name, items in raw["user_lists"].items()}
    for intent in intents.values():
        intent.pools = partition_pool(intent.user, f"{domain}:intent:{intent.name}")
    bank = Bank(domain, raw.get("slots", {}), raw.get("macros", {}), user_lists, intents, load_noise(raw.get("noise")))
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


# ---------------------------------------------------------------- surface noise (small, seeded)


def non_native(text: str, rewrites: list[list[str]], rng: random.Random) -> str:
    """Learner English: contractions spelled out, 'Can I ...' -> 'Is possible I ...' (from the
    bank's noise table, each matching rewrite taken half the time), most articles dropped."""
    for old, new in rewrites:
        if old in text and rng.random() < 0.5:
            text = text.replace(old, new)
    return re.sub(r"\b(?:the|a|an) (?=[a-z])", lambda m: "" if rng.random() < 0.7 else m.group(0), text)


def run_on(text: str, rng: random.Random) -> str:
    """Sentences glued together: the stops between them become nothing or a comma."""

    def glue(match: re.Match) -> str:
        word = match.group(1) or match.group(2)
        return rng.choice((" ", " ", ", ")) + lower_first(word)

    return SENTENCE_BREAK.sub(glue, text)


def misspell(text: str, table: dict[str, list[str]], rng: random.Random) -> str:
    """One or two words swapped for a common misspelling ('recieve', 'adress', 'ibuprofin')."""
    tokens = re.split(r"(\W+)", text)
    hits = [i for i, tok in enumerate(tokens) if tok.lower() in table]
    for i in rng.sample(hits, min(len(hits), 2 if rng.random() < 0.3 else 1)):
        wrong = rng.choice(table[tokens[i].lower()])
        tokens[i] = wrong[0].upper() + wrong[1:] if tokens[i][0].isupper() else wrong
    return "".join(tokens)


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
        self.by_flag: dict[str, Deck] = {}  # red flag -> its opening intents (the plan names the flag)
        for topic in config.topic_weights:
            names = [n for n, i in bank.intents.items() if i.topic == topic and i.opener for _ in range(i.weight)]
            if not names:
                raise BankError(f"{domain}: topic {topic!r} has no opening intent")
            self.by_topic[topic] = Deck(names, deck_rng)
            for flag in sorted({bank.intents[n].red_flag for n in names} - {None}):
                self.by_flag[flag] = Deck([n for n in names if bank.intents[n].red_flag == flag], deck_rng)
        compounds = [n for n, i in bank.intents.items() if i.compound and i.opener and i.topic in config.topic_weights]
        self.compounds = Deck(compounds, deck_rng) if compounds else None
        self.compound_topics = {bank.intents[n].topic for n in compounds}

    def flags_of(self, topic: str) -> list[str]:
        """The red flags among a topic's opening intents (emergencies), sorted."""
        return sorted({self.bank.intents[n].red_flag for n in self.by_topic[topic].items} - {None})

    def opening(self, topic: str, flag: str | None) -> Intent:
        return self.bank.intents[(self.by_flag[flag] if flag else self.by_topic[topic]).draw()]

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

    def decorate(self, text: str, intent: Intent, fills: dict) -> str:
        """Persona: an indirect lead or worry frame, an order number, an opening word, a closing courtesy."""
        urgent = intent.red_flag is not None and "urgent_prefixes" in self.lists
        if self.rng.random() < self.config.indirect_rate:
            text = self.indirect(text)
        if intent.order and "order_refs" in self.lists and self.rng.random() < self.config.order_ref_rate:
            ref = self.render(self.lists["order_refs"].draw(), fills)
            text = f"{text} {ref}" if self.rng.random() < 0.6 else f"{ref} {text}"
        rate = 0.2 if urgent else self.config.prefix_rate
        if self.rng.random() < rate:
            prefix = self.lists["urgent_prefixes" if urgent else "prefixes"].draw()
            text = f"{prefix} {lower_first(text) if prefix[-1] in ',:' else text}"
        if not urgent and self.rng.random() < self.config.suffix_rate:
            text = f"{text} {self.lists['suffixes'].draw()}"
        return text

    def indirect(self, text: str) -> str:
        """A question asked indirectly ('I was wondering, ...'); a statement turned into a worried
        question ('is it normal that ...?', '... should I be worried?')."""
        is_question = text.rstrip().endswith("?") or QUESTION_START.match(text)
        if is_question and "indirect_leads" in self.lists:
            lead = self.lists["indirect_leads"].draw()
            return f"{lead} {text if lead[-1] in '.?!' else lower_first(text)}"
        if not is_question and "worry_frames" in self.lists:
            frame = self.lists["worry_frames"].draw()
            body = text.rstrip(" .!")
            if "{}" in frame:
                return frame.replace("{}", lower_first(body))
            return f"{body}, {frame}" if frame[0].islower() else f"{body}. {frame}"
        return text

    def roughen(self, text: str) -> str:
        """Surface noise on the text as sent; each kind on its own share of turns (config.noise)."""
        rates, roll, tables = self.config.noise, self.rng.random, self.bank.noise
        if roll() < rates.get("non_native", 0.0):
            text = non_native(text, tables.get("non_native", []), self.rng)
        if roll() < rates.get("run_on", 0.0):
            text = run_on(text, self.rng)
        if roll() < rates.get("misspell", 0.0):
            text = misspell(text, tables.get("misspell", {}), self.rng)
        if roll() < rates.get("typo", 0.0):
            text = add_typos(text, self.rng, 2 if roll() < 0.25 else 1)
        if roll() < rates.get("lower", 0.0):
            text = text.lower()
        if roll() < rates.get("no_punct", 0.0):
            text = text.rstrip(".?!")
        return text

    # -- turns

    def turn(self, intent: Intent, fills: dict, flag: str | None, first: bool = False) -> tuple[str, str, str]:
        """(clean user text, noisy user text, answer); the opening turn also gets a persona."""
        item = self.phrasings[intent.name].draw()
        clean = self.render(item.text, fills)
        reply = self.with_disclaimer(self.answer(intent, item, fills, flag), intent.disclaimer, fills)
        if first and intent.name != "greeting":  # "hi" needs no persona around it
            clean = self.decorate(clean, intent, fills)
            if intent.upset and self.rng.random() < self.config.upset_rate:
                clean, reply = self.upset(clean, reply, fills)
        return clean, self.roughen(clean), reply

    def upset(self, text: str, reply: str, fills: dict) -> tuple[str, str]:
        """An annoyed customer (an angry lead or tail): apologise and offer a human agent on top of the answer."""
        human = "" if "support@" in reply else " " + self.render("{HUMAN}", fills)
        new_reply = f"{self.render('{APOLOGY}', fills)} {reply}{human}"
        if word_count(new_reply) > MAX_ASSISTANT_WORDS:
            return text, reply
        if "upset_tails" in self.lists and self.rng.random() < 0.4:
            body = text if text[-1] in ".?!" else text + ("?" if QUESTION_START.match(text) else ".")
            return f"{body} {self.lists['upset_tails'].draw()}", new_reply
        return f"{self.lists['upset_leads'].draw()} {text}", new_reply

    def pick_primary(self, exclude_topic: str) -> Intent:
        """An opening question on another topic: the second half of a pair, or 'and another thing...'."""
        for _ in range(20):
            intent = self.bank.intents[self.compounds.draw()]
            if intent.topic != exclude_topic:
                return intent
        raise BankError(f"{self.config.domain}: no other-topic intent to follow {exclude_topic}")

    # -- dialogs

    def single(self, topic: str, flag: str | None = None) -> Draft:
        intent = self.opening(topic, flag)
        fills: dict[str, Any] = {}
        return Draft(intent.topic, intent.red_flag, [self.turn(intent, fills, intent.red_flag, first=True)])

    def compound(self, topic: str) -> Draft:
        """Two questions in one message, answered in one reply."""
        first = self.opening(topic, None)
        if not first.compound or self.compounds is None:
            return self.single(topic)
        second = self.pick_primary(first.topic)
        fills: dict[str, Any] = {}
        items = [self.phrasings[i.name].draw() for i in (first, second)]
        q1, q2 = (self.render(item.text, fills) for item in items)
        connector = self.lists["connectors"].draw()
        lower = connector.rstrip(" ")[-1:] in ",abcdefghijklmnopqrstuvwxyz"
        if connector.startswith(","):  # "Do you ship to Canada, and how much is it?"
            q1 = q1.rstrip(".?!")
        elif connector[0] in ".?" and q1[-1] in ".?!":  # "...do I do?" + ". And " -> "...do I do? And "
            connector = connector[1:]
        elif not lower and q1[-1] not in ".?!":  # "...not heavy Lastly, ..." reads as one run-on
            q1 += "?" if QUESTION_START.match(q1) else "."
        clean = self.decorate(q1 + connector + (lower_first(q2) if lower else q2), first, fills)
        parts = [self.answer(i, item, fills, None, short=True) for i, item in zip((first, second), items, strict=True)]
        reply = self.with_disclaimer(" ".join(parts), first.disclaimer or second.disclaimer, fills)
        if word_count(reply) > MAX_ASSISTANT_WORDS:  # two long answers: ask one question instead
            return self.single(topic)
        return Draft(first.topic, None, [(clean, self.roughen(clean), reply)])

    def multi(self, topic: str, flag: str | None = None) -> Draft:
        """2-4 user turns: optional greeting, the opening question, natural follow-ups."""
        first = self.opening(topic, flag)
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
                turns.append((clean, self.roughen(clean), reply))
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

    def build(self, topic: str, kind: str, flag: str | None = None) -> Draft:
        """One draft; a red flag named by the plan fixes the opening intent's flag."""
        if kind == "multi":
            draft = self.multi(topic, flag)
            if len(draft.turns) > 1:
                return draft
        if kind == "compound" and topic in self.compound_topics and flag is None:
            return self.compound(topic)
        return self.single(topic, flag)


def dialog_messages(config: DomainConfig, draft: Draft) -> dict:
    """The chat messages of a draft: the short system prompt, then the turns."""
    messages = [{"role": "system", "content": config.system_prompt}]
    for _, user, assistant in draft.turns:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return {"messages": messages}

# ---------------------------------------------------------------- splits


def make_plan(config: DomainConfig, split: str, builder: SplitBuilder) -> list[tuple[str, str, str | None]]:
    """(topic, kind, red flag) for every dialog of a split: topic quotas, then multi/compound quotas.

    A topic whose intents carry red flags (emergencies) gets at least one dialog per flag, taken
    from the largest other topic if its weight falls short, and names the flag of each dialog:
    first every flag once, then flags in proportion to their intents' weights. So every split,
    however small, holds every red flag.
    """
    counts = allocate(config.sizes[split], config.weights_for(split))
    flags = {topic: builder.flags_of(topic) for topic in counts}
    for topic, topic_flags in flags.items():
        while counts[topic] < len(topic_flags):
            donor = max((t for t in counts if not flags[t]), key=lambda t: (counts[t], t))
            counts[donor] -= 1
            counts[topic] += 1
    rng = make_rng(config.domain, split, "plan")
    plan: list[tuple[str, str, str | None]] = []
    for topic, count in counts.items():
        n_multi = round(count * config.multi_rate.get(topic, config.multi_rate["*"]))
        n_compound = round(count * config.compound_rate) if topic in builder.compound_topics else 0
        n_compound = min(n_compound, count - n_multi)
        kinds = ["multi"] * n_multi + ["compound"] * n_compound + ["single"] * (count - n_multi - n_compound)
        topic_flags: list[str | None] = [None] * count
        if flags[topic]:
            first = flags[topic][:]
            rng.shuffle(first)
            weighted = Deck([builder.bank.intents[n].red_flag for n in builder.by_topic[topic].items], rng)
            topic_flags = (first + [weighted.draw() for _ in range(count)])[:count]
            rng.shuffle(kinds)
        plan += [(topic, kind, flag) for kind, flag in zip(kinds, topic_flags, strict=True)]
    rng.shuffle(plan)
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
    for topic, kind, flag in make_plan(config, split, builder):
        for _ in range(MAX_ATTEMPTS):
            draft = builder.build(topic, kind, flag)
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

