"""The prompt method's retrieval: BM25, the langchain-core example selector, and the rendered messages."""

from __future__ import annotations

import pytest
from langchain_core.example_selectors import BaseExampleSelector

from prompts import load_prompt_spec
from prompts.bm25 import BM25ExampleSelector, BM25Index, stem, terms
from prompts.loader import render_prompted, render_retrieval, retrieval_query, retrieved_facts

ECOMMERCE = load_prompt_spec("ecommerce")
MEDICAL = load_prompt_spec("medical")


def test_terms_drop_stopwords_and_meet_on_a_stem() -> None:
    assert terms("Can I return the boots?") == ["return", "boot"]
    assert stem("returned") == stem("returning") == stem("returns") == "return"
    assert stem("is") == "is" and stem("gas") == "gas"  # too short to strip


def test_bm25_ranks_the_document_that_shares_rare_words_first() -> None:
    index = BM25Index(["returns within 30 days", "express shipping 1-2 days", "shipping to canada and the united states"])
    assert index.top("how many days for express shipping", 2) == [1, 0]
    assert index.top("do you ship to canada", 1) == [2]
    assert index.top("photosynthesis", 3) == []  # nothing in common: nothing retrieved


def test_example_selector_is_a_langchain_selector_and_picks_by_similarity() -> None:
    selector = BM25ExampleSelector([{"user": "where is my parcel", "assistant": "a"}, {"user": "return boots", "assistant": "b"}], k=1)
    assert isinstance(selector, BaseExampleSelector)
    assert selector.select_examples({"query": "can I return my boots"}) == [{"user": "return boots", "assistant": "b"}]
    selector.add_example({"user": "cancel my order", "assistant": "c"})
    assert selector.select_examples({"question": "please cancel the order"})[0]["assistant"] == "c"


@pytest.mark.parametrize(
    ("question", "topic"),
    [
        ("Do you ship to Canada, and how much does it cost?", "Shipping regions"),
        ("I bought a jacket 3 weeks ago and it doesn't fit. Can I send it back?", "Returns"),
        ("where is my order 4417? it's been a week", "Order tracking"),
        ("I want to talk to a real person", "Human support"),
    ],
)
def test_the_fact_a_question_needs_is_retrieved(question: str, topic: str) -> None:
    assert topic in [fact.topic for fact in retrieved_facts(ECOMMERCE, question)]


def test_the_retrieval_prompt_is_short_and_keeps_a_cached_prefix() -> None:
    conversation = [{"role": "user", "content": "Can I pay with PayPal?"}]
    messages = render_retrieval(ECOMMERCE, conversation)
    static = render_prompted(ECOMMERCE, conversation)
    assert sum(len(m["content"]) for m in messages) < sum(len(m["content"]) for m in static) / 2
    assert "Payment methods" in messages[0]["content"] and "Loyalty" not in messages[0]["content"]
    assert messages[-1] == {"role": "user", "content": "Can I pay with PayPal?"}
    assert len(messages) == 2 + 2 * ECOMMERCE.retrieval.settings.examples  # system, selected dialogs, question
    other = render_retrieval(ECOMMERCE, [{"role": "user", "content": "How long is the warranty?"}])
    # The instruction comes first in every request, so the backend's prefix cache serves it.
    assert other[0]["content"].startswith(ECOMMERCE.retrieval.system_prompt) and messages[0]["content"].startswith(ECOMMERCE.retrieval.system_prompt)


def test_the_emergency_rule_is_always_sent_to_the_medical_prompt() -> None:
    for question in ("What is cholesterol?", "my son swallowed some of my pills"):
        assert retrieved_facts(MEDICAL, question)[0].topic == "Emergencies first"


def test_a_follow_up_keeps_the_topic_of_the_previous_question() -> None:
    conversation = [{"role": "user", "content": "Do you ship to Canada?"}, {"role": "assistant", "content": "Yes."}, {"role": "user", "content": "how long does it take?"}]
    assert "Canada" in retrieval_query(conversation)
    assert "Shipping regions" in [fact.topic for fact in retrieved_facts(ECOMMERCE, retrieval_query(conversation))]


def test_prompt_lab_overrides_replace_the_instruction_and_the_examples() -> None:
    conversation = [{"role": "user", "content": "Can I pay with PayPal?"}]
    shots = (ECOMMERCE.few_shot[0],)
    messages = render_retrieval(ECOMMERCE, conversation, system_prompt="Be brief.", few_shot=shots)
    assert messages[0]["content"].startswith("Be brief.") and "Payment methods" in messages[0]["content"]
    assert messages[1]["content"] == shots[0].user and len(messages) == 4

