"""The prompt method's retrieval: BM25, the langchain-core example selector, and the rendered messages."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml
from langchain_core.example_selectors import BaseExampleSelector

from prompts import load_prompt_spec
from prompts.bm25 import BM25ExampleSelector, BM25Index, FactRanker, QuestionVote, stem, terms
from prompts.loader import PromptFileError, load_prompt_file, render_prompted, render_retrieval, retrieval_query, retrieved_facts
from training import retrieval_recall

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



def test_labelled_questions_vote_for_a_fact_its_own_words_miss() -> None:
    documents, topics = ["returns within 30 days", "tracking number emailed when the order ships"], ["Returns", "Order tracking"]
    question = "where can I see the courier reference"
    assert FactRanker(documents, topics).ranked(question, 2) == []  # no word in common with either fact
    courier = "what is the courier reference of my parcel"
    vote = QuestionVote(((courier, "Order tracking"), ("send back boots", "Returns")), neighbours=1, weight=0.5)
    assert FactRanker(documents, topics, vote).ranked(question, 2) == [1]
    # A question left out of the vote (a training dialog's own turn) cannot bring its fact.
    assert FactRanker(documents, topics, vote).ranked(question, 2, exclude=courier) == []
    # The vote re-ranks: a strong own match (1.0) beats a fact backed by the vote alone (0.5).
    assert FactRanker(documents, topics, vote).ranked("returns within 30 days courier", 2) == [0, 1]
    with pytest.raises(ValueError, match="2 fact documents but 1 topics"):
        FactRanker(documents, topics[:1])


def test_a_fact_with_a_small_share_of_the_vote_is_not_sent_on_the_vote_alone() -> None:
    documents, topics = ["returns within 30 days", "tracking number emailed when the order ships"], ["Returns", "Order tracking"]
    questions = tuple(("my parcel is late where is it", "Order tracking") for _ in range(9)) + (("my parcel is late can I send it back", "Returns"),)
    question = "my parcel is late"
    # Any vote at all: the one neighbour asking about returns brings the returns rule.
    assert FactRanker(documents, topics, QuestionVote(questions, neighbours=10)).ranked(question, 2) == [1, 0]
    # A tenth of the vote is under min_share: only the fact most of the neighbours ask about is sent.
    assert FactRanker(documents, topics, QuestionVote(questions, neighbours=10, min_share=0.15)).ranked(question, 2) == [1]


def test_with_a_vote_only_the_best_lexical_match_is_sent_on_its_own_words() -> None:
    documents = ["returns within 30 days of delivery", "express delivery arrives next day", "tracking number emailed"]
    topics = ["Returns", "Express shipping", "Order tracking"]
    vote = QuestionVote((("where is my package", "Order tracking"),), neighbours=5, min_share=0.15)
    question = "where is my package, was it express delivery"
    # BM25 alone sends both facts that share a word; with the vote, the weaker lexical match stays out.
    assert FactRanker(documents, topics).ranked(question, 3) == [1, 0]
    assert FactRanker(documents, topics, vote).ranked(question, 3) == [1, 2]  # 1.0 each: file order


def test_a_clear_emergency_gets_no_ordinary_rule_from_a_few_votes() -> None:
    question = "my husband collapsed and he isn't breathing"
    sent = [fact.topic for fact in retrieved_facts(MEDICAL, question)]
    assert sent[0] == "Emergencies first"
    everything = dataclasses.replace(MEDICAL.retrieval.question_vote, min_share=0.0)
    padded = dataclasses.replace(MEDICAL, retrieval=dataclasses.replace(MEDICAL.retrieval, question_vote=everything))
    assert len(sent) < len(retrieved_facts(padded, question))


def test_an_off_topic_request_gets_the_out_of_scope_rule_first() -> None:
    for question in ("Can you write a poem about the sea for my girlfriend?", "explain photosynthesis for my biology class"):
        assert retrieved_facts(ECOMMERCE, question)[0].topic == "Out of scope"


def test_a_training_dialog_is_retrieved_for_without_its_own_question(tmp_path: Path) -> None:
    """training/hybrid_data.py passes the dialog's first turn as ``exclude``: its rendering must not use it."""
    from training import hybrid_data

    def topics(question: str, exclude: str | None) -> list[str]:
        return [fact.topic for fact in retrieved_facts(ECOMMERCE, question, exclude=exclude)]

    # A training question whose retrieval changes once it cannot vote for itself.
    first = next(q for q, _ in ECOMMERCE.retrieval.question_vote.questions if topics(q, None) != topics(q, q))
    dialog = {"id": "d", "topic": "t", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": first}, {"role": "assistant", "content": "a"}]}
    rendered = hybrid_data.hybrid_dialog(dialog, ECOMMERCE, {})["messages"][0]["content"]
    facts_sent = [line[2:].split(":")[0] for line in rendered.splitlines() if line.startswith("- ")]
    assert facts_sent == topics(first, first) != topics(first, None)


def test_the_shipped_vote_sends_facts_that_bm25_over_the_sheet_misses() -> None:
    alone = dataclasses.replace(ECOMMERCE, retrieval=dataclasses.replace(ECOMMERCE.retrieval, question_vote=None))
    question = "Is there a page in my profile that shows whether the thing I bought is on its way?"  # a dev probe
    assert ECOMMERCE.retrieval.question_vote is not None and len(ECOMMERCE.retrieval.question_vote.questions) > 300
    assert "Order tracking" not in [fact.topic for fact in retrieved_facts(alone, question)]
    assert "Order tracking" in [fact.topic for fact in retrieved_facts(ECOMMERCE, question)]


def _prompt_with_vote(tmp_path: Path, vote: dict) -> Path:
    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "prompts" / "ecommerce.yaml").read_text(encoding="utf-8"))
    pool = yaml.safe_load((Path(__file__).resolve().parents[1] / "prompts" / "retrieval" / "ecommerce.yaml").read_text(encoding="utf-8"))
    pool["question_vote"] = vote
    (tmp_path / "pool.yaml").write_text(yaml.safe_dump(pool), encoding="utf-8")
    raw["retrieval"]["pool"] = "pool.yaml"
    path = tmp_path / "ecommerce.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def test_a_question_vote_reads_the_first_user_turn_of_mapped_dialogs(tmp_path: Path) -> None:
    dialogs = [
        {"topic": "returns", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "send it back?"}, {"role": "assistant", "content": "a"}, {"role": "user", "content": "later turn"}]},
        {"topic": "out_of_scope", "messages": [{"role": "user", "content": "a poem please"}]},
    ]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(d) + "\n" for d in dialogs), encoding="utf-8")
    spec = load_prompt_file(_prompt_with_vote(tmp_path, {"dialogs": "train.jsonl", "neighbours": 5, "topics": {"returns": "Returns"}}))
    assert spec.retrieval.question_vote == QuestionVote((("send it back?", "Returns"),), neighbours=5, weight=1.0)


@pytest.mark.parametrize(
    ("vote", "problem"),
    [
        ({"dialogs": "missing.jsonl", "topics": {"returns": "Returns"}}, "cannot read"),
        ({"dialogs": "train.jsonl", "topics": {"returns": "Gift wrapping"}}, "not in the fact sheet: Gift wrapping"),
        ({"dialogs": "train.jsonl"}, "needs 'topics'"),
        ({"dialogs": "train.jsonl", "topics": {"warranty": "Warranty"}}, "no dialog .* has the topic"),
        ({"dialogs": "broken.jsonl", "topics": {"returns": "Returns"}}, "line 2 is not a dialog"),
        ({"dialogs": "train.jsonl", "topics": {"returns": "Returns", "retuns": "Returns"}}, "no dialog .* has the topic"),
        ({"dialogs": "train.jsonl", "topics": {"returns": "Returns"}, "neighbors": 5}, "unknown key"),
        ({"dialogs": "train.jsonl", "topics": {"returns": "Returns"}, "neighbours": 0}, "'neighbours' must be"),
        ({"dialogs": "train.jsonl", "topics": {"returns": "Returns"}, "neighbours": 2.5}, "'neighbours' must be"),
        ({"dialogs": "train.jsonl", "topics": {"returns": "Returns"}, "weight": -1}, "'weight' must be"),
        ({"dialogs": "train.jsonl", "topics": {"returns": "Returns"}, "weight": float("nan")}, "'weight' must be"),
        ({"dialogs": "train.jsonl", "topics": {"returns": "Returns"}, "min_share": 1.5}, "'min_share' must be"),
        ({"dialogs": "train.jsonl", "topics": {"returns": "Returns"}, "min_share": "half"}, "'min_share' must be"),
    ],
)
def test_a_bad_question_vote_names_the_problem(tmp_path: Path, vote: dict, problem: str) -> None:
    (tmp_path / "train.jsonl").write_text(json.dumps({"topic": "returns", "messages": [{"role": "user", "content": "q"}]}) + "\n", encoding="utf-8")
    (tmp_path / "broken.jsonl").write_text(json.dumps({"topic": "returns", "messages": [{"role": "user", "content": "q"}]}) + "\n[1, 2]\n", encoding="utf-8")
    with pytest.raises(PromptFileError, match=problem):
        load_prompt_file(_prompt_with_vote(tmp_path, vote))


def test_retrieval_recall_counts_the_probe_fact_among_those_sent(tmp_path: Path) -> None:
    assert retrieval_recall.main(["--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / retrieval_recall.RESULT_FILE).read_text(encoding="utf-8"))
    ecommerce = result["domains"]["ecommerce"]["rankers"]
    alone, shipped = ecommerce["facts alone"], ecommerce["facts + question vote"]
    assert result["split"] == "dev" and alone["probes"] == shipped["probes"] > 100
    assert 0 < alone["sent"]["value"] < shipped["sent"]["value"] <= 1
    assert alone["sent"]["ci_low"] < alone["sent"]["value"] < alone["sent"]["ci_high"]
    # The vote's min_share sends fewer distractors than BM25's shared words do.
    assert 0 < shipped["other_facts"] < alone["other_facts"] <= 2
    assert set(result["domains"]["medical"]["always_probe_other_facts"]) == {"facts alone", "facts + question vote"}
    assert "**facts + question vote** (shipped)" in (tmp_path / retrieval_recall.NOTES_FILE).read_text(encoding="utf-8")
    # Probes of a shared file count only for their own domain.
    medical = retrieval_recall.fact_probes(MEDICAL, "dev")
    assert medical and all(p.topic in {f.topic for f in MEDICAL.fact_sheet} for p in medical)
    shared = [json.loads(line) for name in ("out_of_scope.jsonl", "injection.jsonl") for line in (retrieval_recall.PROBES_DIR / name).read_text(encoding="utf-8").splitlines() if line.strip()]
    ecommerce_only = {row["question"] for row in shared if row["domain"] == "ecommerce"} - {row["question"] for row in shared if row["domain"] == "medical"}
    assert ecommerce_only and not ecommerce_only & {p.question for p in medical}
