"""Lexical retrieval for the prompt method: BM25 over the fact sheet, and a langchain-core example selector.

A 135M model drowns in a 700-token prompt, so the prompt method sends only what the
conversation needs: the few facts a BM25 ranking puts first, and the few-shot dialogs most
like the question (``BM25ExampleSelector``, a langchain-core ``BaseExampleSelector``). No
embedding model: nothing can be downloaded, and BM25 over a few dozen short documents takes
well under a millisecond.

``python -m prompts retrieve ecommerce "can i send back boots i bought 3 weeks ago"`` shows what
one message retrieves.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.example_selectors import BaseExampleSelector

_WORD = re.compile(r"[a-z0-9]+")
STOPWORDS = frozenset(
    ["a", "an", "the", "and", "or", "but", "if", "of", "to", "in", "on", "at", "for", "from", "by", "with", "about", "as", "is", "are", "was", "were", "be", "been", "being", "am", "do", "does", "did", "i", "me", "my", "we", "our", "you", "your", "it", "its", "this", "that", "these", "those", "he", "she", "they", "them", "his", "her", "their", "what", "which", "who", "whom", "how", "when", "where", "why", "can", "could", "would", "should", "will", "shall", "may", "might", "must", "have", "has", "had", "not", "no", "so", "than", "too", "very", "just", "there", "here", "please", "hi", "hello", "thanks", "thank", "any", "some"]
)


def stem(word: str) -> str:
    """A crude suffix strip, enough for 'returns'/'returned'/'returning' to meet 'return'."""
    for suffix, keep in (("ing", 4), ("ed", 4), ("es", 4), ("s", 3)):
        if word.endswith(suffix) and len(word) - len(suffix) >= keep:
            return word[: -len(suffix)]
    return word


def terms(text: str) -> list[str]:
    return [stem(word) for word in _WORD.findall(text.lower()) if word not in STOPWORDS]


class BM25Index:
    """Okapi BM25 over a fixed list of documents (k1 = 1.2, b = 0.75)."""

    def __init__(self, documents: Sequence[str], k1: float = 1.2, b: float = 0.75) -> None:
        self.k1, self.b = k1, b
        self._docs = [Counter(terms(doc)) for doc in documents]
        self._lengths = [sum(doc.values()) for doc in self._docs]
        self._average = (sum(self._lengths) / len(self._lengths)) if self._lengths else 0.0
        frequency: Counter[str] = Counter()
        for doc in self._docs:
            frequency.update(doc.keys())
        n = len(self._docs)
        self._idf = {term: math.log(1 + (n - df + 0.5) / (df + 0.5)) for term, df in frequency.items()}

    def __len__(self) -> int:
        return len(self._docs)

    def scores(self, query: str) -> list[float]:
        query_terms = terms(query)
        out = []
        for doc, length in zip(self._docs, self._lengths, strict=True):
            norm = self.k1 * (1 - self.b + self.b * length / self._average) if self._average else self.k1
            out.append(sum(self._idf[t] * doc[t] * (self.k1 + 1) / (doc[t] + norm) for t in query_terms if t in doc))
        return out

    def top(self, query: str, k: int, min_score: float = 0.0) -> list[int]:
        """Indices of the ``k`` best documents scoring above ``min_score``, best first (ties: file order)."""
        scored = [(score, -index) for index, score in enumerate(self.scores(query)) if score > min_score]
        return [-index for _, index in sorted(scored, reverse=True)[:k]]


@dataclass(frozen=True)
class QuestionVote:
    """Questions labelled with the fact they ask about; the closest ones vote for their fact.

    A fact's own words and keywords miss much of how people ask ("the courier reference",
    "the quicker delivery tier"). The generated training dialogs hold hundreds of phrasings
    per fact, so the ``neighbours`` questions BM25 ranks closest to a message add their match
    scores to their facts, scaled so the best-voted fact gains ``weight`` (a fact's own score
    is scaled the same way).
    """

    questions: tuple[tuple[str, str], ...]
    """(question, fact topic) pairs."""
    neighbours: int = 20
    weight: float = 1.0


class FactRanker:
    """Ranks a fact sheet for a message: BM25 over the facts, plus the labelled questions' vote."""

    def __init__(self, documents: Sequence[str], topics: Sequence[str], vote: QuestionVote | None = None) -> None:
        self._facts = BM25Index(documents)
        self._topics = list(topics)
        self._vote = vote
        self._questions = BM25Index([question for question, _ in vote.questions]) if vote else None

    def scores(self, query: str) -> list[float]:
        own = self._facts.scores(query)
        if self._vote is None or self._questions is None:
            return own
        best_own = max(own, default=0.0) or 1.0
        matches = self._questions.scores(query)
        closest = sorted((i for i, score in enumerate(matches) if score > 0), key=lambda i: -matches[i])[: self._vote.neighbours]
        votes: Counter[str] = Counter()
        for i in closest:
            votes[self._vote.questions[i][1]] += matches[i]
        best_vote = max(votes.values(), default=0.0) or 1.0
        return [score / best_own + self._vote.weight * votes[topic] / best_vote for score, topic in zip(own, self._topics, strict=True)]

    def top(self, query: str, k: int, min_score: float = 0.0) -> list[int]:
        """Indices of the ``k`` best facts scoring above ``min_score``, best first (ties: file order)."""
        scored = [(score, -index) for index, score in enumerate(self.scores(query)) if score > min_score]
        return [-index for _, index in sorted(scored, reverse=True)[:k]]


@dataclass(frozen=True)
class RetrievalSettings:
    """How much the prompt method retrieves (the prompt file's ``retrieval`` section)."""

    facts: int = 3
    """Facts retrieved per request (beside the ones always included)."""
    examples: int = 2
    """Few-shot dialogs selected per request."""
    always: tuple[str, ...] = ()
    """Fact topics sent on every request (first, so they stay in the cached prefix)."""
    min_score: float = 0.0
    """A fact or example scoring at most this is never sent: an off-topic message gets none."""


class BM25ExampleSelector(BaseExampleSelector):
    """langchain-core example selector: the ``k`` examples whose user turn best matches the question (BM25)."""

    def __init__(self, examples: Sequence[dict[str, str]], k: int, key: str = "user", min_score: float = 0.0) -> None:
        self.k, self.key, self.min_score = k, key, min_score
        self._examples: list[dict[str, str]] = []
        self._index = BM25Index([])
        for example in examples:
            self._examples.append(dict(example))
        self._reindex()

    def _reindex(self) -> None:
        self._index = BM25Index([example[self.key] for example in self._examples])

    def add_example(self, example: dict[str, str]) -> Any:
        self._examples.append(dict(example))
        self._reindex()

    def select_examples(self, input_variables: dict[str, str]) -> list[dict[str, Any]]:
        query = input_variables.get("query") or input_variables.get("question", "")
        chosen = self._index.top(query, self.k, self.min_score)
        # Most similar last: the example closest to the question sits right before it.
        return [self._examples[i] for i in reversed(chosen)]
