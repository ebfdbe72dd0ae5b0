"""Lexical retrieval for the prompt method: BM25 over the fact sheet, and a langchain-core example selector.

A 135M model drowns in a 700-token prompt, so the prompt method sends only what the
conversation needs: the few facts ranked first (``FactRanker``: BM25 over the fact sheet, and
the vote of labelled questions where the pool has them), and the few-shot dialogs most like
the question (``BM25ExampleSelector``, a langchain-core ``BaseExampleSelector``). No embedding
model: nothing can be downloaded, and a retrieval takes about a millisecond (``python -m
training.retrieval_recall`` times it).

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
        scores = self.scores(query)
        return _best(scores, [score > min_score for score in scores], k)


def _best(scores: Sequence[float], eligible: Sequence[bool], k: int) -> list[int]:
    """Indices of the ``k`` best eligible scores, best first (ties: the earlier index)."""
    scored = [(score, -index) for index, (score, ok) in enumerate(zip(scores, eligible, strict=True)) if ok]
    return [-index for _, index in sorted(scored, reverse=True)[:k]]


@dataclass(frozen=True)
class QuestionVote:
    """Questions labelled with the fact they ask about; the closest ones vote for their fact.

    A fact's own words and keywords miss much of how people ask ("the courier reference",
    "the quicker delivery tier"). The generated training dialogs hold hundreds of phrasings
    per fact, so the ``neighbours`` questions BM25 ranks closest to a message add their match
    scores to their facts, scaled so the best-voted fact gains ``weight``; a fact's own BM25
    score is scaled so the best match is 1. The scaling is per message: a weak best match
    counts as much as a strong one, which is why off-topic requests need questions of their
    own that vote for an out-of-scope rule. A fact that only a few neighbours vote for (under
    ``min_share`` of the vote) is not sent on the vote's word: it stays out unless its own
    words match the message best, so a clear emergency does not pull in the rules of the odd
    ordinary question that shares its words.
    """

    questions: tuple[tuple[str, str], ...]
    """(question, fact topic) pairs."""
    neighbours: int = 20
    weight: float = 1.0
    min_share: float = 0.0
    """The share of the vote (over every fact, those always sent included) a fact needs before
    the vote alone makes it eligible; 0: any vote does."""


class FactRanker:
    """Ranks a fact sheet for a message: BM25 over the facts, plus the labelled questions' vote."""

    def __init__(self, documents: Sequence[str], topics: Sequence[str], vote: QuestionVote | None = None) -> None:
        if len(documents) != len(topics):
            raise ValueError(f"{len(documents)} fact documents but {len(topics)} topics")
        self._facts = BM25Index(documents)
        self._topics = list(topics)
        self._vote = vote
        self._questions = BM25Index([question for question, _ in vote.questions]) if vote else None

    def _votes(self, query: str, exclude: str | None) -> Counter[str]:
        votes: Counter[str] = Counter()
        if self._vote is None or self._questions is None:
            return votes
        matches = self._questions.scores(query)
        exclude = exclude.strip() if exclude else None
        candidates = (i for i, score in enumerate(matches) if score > 0 and self._vote.questions[i][0] != exclude)
        for i in sorted(candidates, key=lambda i: -matches[i])[: self._vote.neighbours]:
            votes[self._vote.questions[i][1]] += matches[i]
        return votes

    def ranked(self, query: str, k: int, min_score: float = 0.0, exclude: str | None = None) -> list[int]:
        """Indices of the ``k`` best facts, best first (ties: file order).

        Without a vote, a fact takes part when its own BM25 score is above ``min_score``. With
        one, it takes part when at least ``min_share`` of the vote is for it, or when its own
        score is above ``min_score`` and the best of the sheet. ``exclude``: a question left out of the vote (a training dialog's own first turn,
        which would otherwise find itself: training/hybrid_data.py).
        """
        own = self._facts.scores(query)
        votes = self._votes(query, exclude)
        if not votes:
            return _best(own, [score > min_score for score in own], k)
        best_own = max(own, default=0.0) or 1.0
        best_vote = max(votes.values())
        assert self._vote is not None
        total_vote = sum(votes.values())
        combined = [score / best_own + self._vote.weight * votes[topic] / best_vote for score, topic in zip(own, self._topics, strict=True)]
        voted_in = [votes[topic] > 0 and votes[topic] >= self._vote.min_share * total_vote for topic in self._topics]
        # With a vote, a fact's own words admit it only as the best lexical match: shared common
        # words ("worse", "order") otherwise pad every prompt with rules nobody asked about
        # (chosen on dev: training/reports/retrieval_recall.md).
        best_match = [score > min_score and score >= best_own for score in own]
        return _best(combined, [matched or voted for matched, voted in zip(best_match, voted_in, strict=True)], k)


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
    """A fact or example whose own BM25 score is at most this is never sent (a fact still is when
    labelled questions vote for it). With no question vote, a message that shares no word with a
    fact or an example gets none."""


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
