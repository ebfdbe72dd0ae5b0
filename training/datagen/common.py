"""Shared helpers of the dialog generator: seeded randomness, noise, pools, near-duplicates, output.

Nothing here knows a domain. ``training.datagen.engine`` builds dialogs with these helpers,
each domain's settings file (``settings/<domain>.yaml``) configures it. Run the whole generator with
``python -m training.datagen``.
"""

from __future__ import annotations

import difflib
import json
import random
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

SEED = "tune-or-prompt-datagen-v1"
SPLITS: tuple[str, ...] = ("train", "validation", "test")
HELD_OUT: tuple[str, ...] = ("validation", "test")
NEAR_DUP_THRESHOLD = 0.8
# Share of each phrase list reserved for the held-out splits (never seen in train).
POOL_SHARES = {"test": 0.25, "validation": 0.15}


def make_rng(*parts: object) -> random.Random:
    """A private RNG per purpose: string seeds are hashed with sha512, so runs are reproducible."""
    return random.Random(":".join([SEED, *map(str, parts)]))


# ---------------------------------------------------------------- pools and decks


def partition_pool(items: Sequence[T], key: str, min_train: int = 2) -> dict[str, list[T]]:
    """Split a phrase list into disjoint train/validation/test pools (seeded by `key`).

    Held-out splits get their own phrasings so that test scores measure generalisation,
    not recall of training sentences.
    """
    n = len(items)
    n_test = max(1, round(n * POOL_SHARES["test"]))
    n_val = max(1, round(n * POOL_SHARES["validation"]))
    if n - n_test - n_val < min_train:
        raise ValueError(f"{key}: {n} phrasings are too few to split (need >= {min_train + 2})")
    order = list(range(n))
    make_rng("pool", key).shuffle(order)
    chosen = {"test": order[:n_test], "validation": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}
    return {split: [items[i] for i in sorted(idx)] for split, idx in chosen.items()}


class Deck:
    """Draw items in shuffled rounds, so every item is used before any repeats."""

    def __init__(self, items: Sequence[T], rng: random.Random) -> None:
        if not items:
            raise ValueError("empty deck")
        self.items = list(items)
        self.rng = rng
        self.queue: list[T] = []

    def draw(self) -> T:
        if not self.queue:
            self.queue = self.items[:]
            self.rng.shuffle(self.queue)
        return self.queue.pop()


def allocate(total: int, weights: dict[str, float]) -> dict[str, int]:
    """Integer counts proportional to weights that sum to total (largest remainder)."""
    norm = sum(weights.values())
    exact = {key: total * w / norm for key, w in weights.items()}
    counts = {key: int(value) for key, value in exact.items()}
    by_remainder = sorted(exact, key=lambda key: (exact[key] - counts[key], key), reverse=True)
    for key in by_remainder[: total - sum(counts.values())]:
        counts[key] += 1
    return counts


# ---------------------------------------------------------------- noise

KEYBOARD_NEIGHBOURS = {
    "a": "sq", "b": "vn", "c": "xv", "d": "sf", "e": "wr", "f": "dg", "g": "fh", "h": "gj", "i": "uo",
    "j": "hk", "k": "jl", "l": "k", "m": "n", "n": "bm", "o": "ip", "p": "o", "r": "et", "s": "ad",
    "t": "ry", "u": "yi", "v": "cb", "w": "qe", "y": "tu",
}


def typo(word: str, rng: random.Random) -> str:
    """One realistic slip in a word: swapped, dropped, doubled or neighbouring key."""
    i = rng.randrange(1, len(word) - 1)
    kind = rng.choice(("swap", "drop", "double", "neighbour"))
    if kind == "swap":
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind == "drop":
        return word[:i] + word[i + 1 :]
    if kind == "double":
        return word[:i] + word[i] + word[i:]
    near = KEYBOARD_NEIGHBOURS.get(word[i].lower())
    return word[:i] + rng.choice(near) + word[i + 1 :] if near else word[:i] + word[i + 1 :]


def add_typos(text: str, rng: random.Random, count: int) -> str:
    """Put `count` typos into alphabetic words of 4+ letters (numbers stay intact)."""
    tokens = re.split(r"(\s+)", text)
    candidates = [i for i, tok in enumerate(tokens) if re.fullmatch(r"[A-Za-z]{4,}", tok)]
    for i in rng.sample(candidates, min(count, len(candidates))):
        tokens[i] = typo(tokens[i], rng)
    return "".join(tokens)


def lower_first(text: str) -> str:
    """Lowercase the first letter for joining after a comma, except 'I' and acronyms."""
    if not text or re.match(r"(I\b|I'|[A-Z]{2,})", text):
        return text
    return text[0].lower() + text[1:]


# ---------------------------------------------------------------- near-duplicates


def normalise(text: str) -> list[str]:
    """Lowercase words without punctuation: what a near-duplicate check compares."""
    return re.sub(r"[^a-z0-9$]+", " ", text.lower()).split()


def word_ngrams(words: Sequence[str], n: int = 3) -> frozenset[tuple[str, ...]]:
    """Word n-grams; texts shorter than n count as a single gram."""
    if len(words) < n:
        return frozenset([tuple(words)])
    return frozenset(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def similarity(a: str, b: str) -> float:
    """Max of word 3-gram Jaccard and difflib's word-sequence ratio, on normalised text."""
    wa, wb = normalise(a), normalise(b)
    ga, gb = word_ngrams(wa), word_ngrams(wb)
    jaccard = len(ga & gb) / len(ga | gb) if ga | gb else 1.0
    return max(jaccard, difflib.SequenceMatcher(None, wa, wb, autojunk=False).ratio())


class NearDupIndex:
    """The user texts of one split, queried for the most similar entry to a new text."""

    def __init__(self, texts: Iterable[str] = ()) -> None:
        self.entries: list[tuple[str, list[str], frozenset]] = []
        for text in texts:
            self.add(text)

    def add(self, text: str) -> None:
        words = normalise(text)
        self.entries.append((text, words, word_ngrams(words)))

    def closest(self, text: str, threshold: float = NEAR_DUP_THRESHOLD) -> tuple[float, str]:
        """Best (score, text) among entries scoring >= threshold, else (0.0, '').

        Cheap upper bounds (length ratio, word multiset overlap) skip most pairs before
        difflib's full ratio is computed.
        """
        words = normalise(text)
        grams = word_ngrams(words)
        best = (0.0, "")
        matcher = difflib.SequenceMatcher(None, autojunk=False)
        matcher.set_seq2(words)
        for other_text, other_words, other_grams in self.entries:
            union = grams | other_grams
            jaccard = len(grams & other_grams) / len(union) if union else 1.0
            score = jaccard
            if 2 * min(len(words), len(other_words)) / max(1, len(words) + len(other_words)) >= threshold:
                matcher.set_seq1(other_words)
                if matcher.quick_ratio() >= threshold:
                    score = max(score, matcher.ratio())
            if score >= threshold and score > best[0]:
                best = (score, other_text)
        return best


def user_text(dialog: dict) -> str:
    """All user turns of a dialog joined: the unit compared across splits."""
    return "\n".join(m["content"] for m in dialog["messages"] if m["role"] == "user")


def find_near_duplicates(
    held_out: Sequence[dict], train: Sequence[dict], threshold: float = NEAR_DUP_THRESHOLD
) -> list[tuple[str, str, float]]:
    """(held-out id, train id, score) for every held-out dialog too similar to a train one."""
    index = NearDupIndex(user_text(d) for d in train)
    found = []
    for dialog in held_out:
        score, text = index.closest(user_text(dialog), threshold)
        if score:
            twin = next(d["id"] for d in train if user_text(d) == text)
            found.append((dialog["id"], twin, round(score, 3)))
    return found


# ---------------------------------------------------------------- sizes and output


def approx_tokens(dialog: dict) -> int:
    """Rough token count (about 4 characters a token, plus chat-template overhead per message)."""
    return sum(len(m["content"]) // 4 + 5 for m in dialog["messages"])


def word_count(text: str) -> int:
    return len(text.split())


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    """One JSON object per line, UTF-8, '\\n' endings: byte-identical for identical rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
