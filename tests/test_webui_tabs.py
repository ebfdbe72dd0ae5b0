"""The Side by side, Arena and Prompt lab handlers, served on loopback on the tiny model, over gradio_client."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from itertools import permutations
from pathlib import Path

import gradio as gr
import pytest
from gradio_client import Client

from bots.bot import PromptOverride
from bots.registry import VARIANTS
from prompts import FewShotExample, load_prompt_spec
from tests.ui_server import ServedUI, serve_tiny_ui
from webui.arena_tab import draw_pair
from webui.compare_tab import PANES
from webui.lab_tab import NO_CHANGES, few_shot_yaml
from webui.votes import VoteStore, VoteStoreConfig

SETTINGS = (16, 0.0, 0.95, 1.1, 0)  # max new tokens, temperature, top-p, repetition penalty, seed
QUESTION = [{"role": "user", "content": "hello"}]
NO_HISTORIES = [[] for _ in PANES]
ECOMMERCE = tuple(name for name, spec in VARIANTS.items() if spec.domain == "ecommerce")
MEDICAL = tuple(name for name, spec in VARIANTS.items() if spec.domain == "medical")
UNAVAILABLE = ("medical-lora", "medical-hybrid")  # no adapter in the test set-up


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedUI]:
    with serve_tiny_ui(tmp_path_factory.mktemp("ui")) as server:
        yield server


@pytest.fixture()
def client(served: ServedUI) -> Client:
    return Client(served.url, verbose=False)  # a new client is a new browser session


def _text(message: dict) -> str:
    content = message["content"]
    return content if isinstance(content, str) else "".join(part["text"] for part in content)


def _transcript(history: list[dict]) -> list[tuple[str, str]]:
    return [(m["role"], _text(m)) for m in history]


# --- Side by side -------------------------------------------------------------------------------


def test_side_by_side_streams_every_variant_of_a_domain_each_in_its_own_pane(served: ServedUI, client: Client) -> None:
    assert tuple(VARIANTS) == PANES and PANES[:2] == ("ecommerce-lora", "ecommerce-prompt")
    job = client.submit("hello", "ecommerce", *SETTINGS, *NO_HISTORIES, api_name="/compare")
    updates = list(job)
    textbox, *panes_and_stats = job.outputs()[-1]
    panes, stats = dict(zip(PANES, panes_and_stats[: len(PANES)], strict=True)), panes_and_stats[len(PANES) :]
    assert len(updates) > 4 and textbox == ""
    for name in ECOMMERCE:
        expected = served.runtime.bots[name].reply(QUESTION, _settings())
        assert _transcript(panes[name]) == [("user", "hello"), ("assistant", expected.text.strip())]  # the Chatbot strips
    assert all(panes[name] == [] for name in MEDICAL)
    assert all("first token" in line and "tok/s" in line and "tokens" in line for line in stats[: len(ECOMMERCE)])
    # One after the other: the LoRA pane is done before the prompt pane starts, never both at once.
    lora_stats, prompt_stats = [u[1 + len(PANES)] for u in updates], [u[2 + len(PANES)] for u in updates]
    started = prompt_stats.index("generating…")
    assert lora_stats[started].startswith("first token") and "generating…" in lora_stats[:started]
    assert prompt_stats[:started].count("waiting for the model…") == started

    # A second message: each pane sends its own history back.
    histories = [panes[name] for name in ECOMMERCE] + [[] for _ in MEDICAL]
    second = client.predict("thanks", "ecommerce", *SETTINGS, *histories, api_name="/compare")
    assert [len(pane) for pane in second[1 : 1 + len(PANES)]] == [4] * len(ECOMMERCE) + [0] * len(MEDICAL)
    assert _transcript(second[1])[:2] == _transcript(panes["ecommerce-lora"])


def test_side_by_side_all_variants_reports_an_unavailable_variant_in_its_pane(client: Client) -> None:
    textbox, *panes_and_stats = client.predict("hi", "all", *SETTINGS, *NO_HISTORIES, api_name="/compare")
    panes, stats = panes_and_stats[: len(PANES)], panes_and_stats[len(PANES) :]
    assert [len(pane) for pane in panes] == [0 if name in UNAVAILABLE else 2 for name in PANES]
    assert all(("unavailable" in line) == (name in UNAVAILABLE) for name, line in zip(PANES, stats, strict=True))
    cleared = client.predict(api_name="/compare_clear")
    assert list(cleared) == ["", *([] for _ in PANES), *("" for _ in PANES)]


def test_side_by_side_refuses_an_empty_message_and_keeps_the_panes(client: Client) -> None:
    history = [{"role": role, "content": [{"type": "text", "text": text}]} for role, text in (("user", "hi"), ("assistant", "Hello!"))]
    textbox, lora, prompt, *_ = client.predict("  ", "ecommerce", *SETTINGS, history, history, *NO_HISTORIES[2:], api_name="/compare")
    assert _transcript(lora) == _transcript(prompt) == [("user", "hi"), ("assistant", "Hello!")]


# --- Arena --------------------------------------------------------------------------------------


def test_pairs_are_seeded_per_round_and_come_in_both_orders() -> None:
    assert draw_pair("ecommerce", 7) == draw_pair("ecommerce", 7)
    orders = {draw_pair("ecommerce", seed) for seed in range(64)}
    assert orders == set(permutations(ECOMMERCE, 2))  # every pair of the domain's variants, in both orders
    assert {draw_pair("medical", seed, ["medical-prompt", "medical-base"]) for seed in range(32)} == set(permutations(("medical-prompt", "medical-base")))
    with pytest.raises(gr.Error):
        draw_pair("medical", 1, ["medical-prompt"])


def test_arena_round_vote_reveal_leaderboard_and_exports(served: ServedUI, client: Client) -> None:
    store = VoteStore(VoteStoreConfig(served.votes_db))
    before = len(store.votes())
    # Voting before a round does nothing.
    client.predict(api_name="/arena_vote_a")
    assert len(store.votes()) == before

    chat_a, chat_b, textbox, status, reveal = client.predict("my card is 4111 1111 1111 1111", "ecommerce", *SETTINGS, api_name="/arena_send")
    assert _text(chat_a[0]) == _text(chat_b[0]) == "my card is 4111 1111 1111 1111"
    assert "which one is better" in status and reveal == "" and textbox == ""

    status, reveal, ecommerce_board, medical_board, csv_path, jsonl_path = client.predict(api_name="/arena_vote_b")
    vote = store.votes()[-1]
    assert len(store.votes()) == before + 1
    assert f"Model A** was `{vote.variant_a}`" in reveal and f"Model B** was `{vote.variant_b}`" in reveal
    assert vote.variant_a != vote.variant_b and {vote.variant_a, vote.variant_b} <= set(ECOMMERCE)
    assert vote.outcome == "b" and "4111 1111 1111" not in vote.message and "****" in vote.message
    assert (vote.reply_a, vote.reply_b) == (_text(chat_a[1]), _text(chat_b[1]))  # as shown: stripped
    assert vote.settings["max_new_tokens"] == 16 and vote.round_seed > 0 and f"seed {vote.round_seed}" in reveal
    rows = {row[1]: row for row in ecommerce_board["data"]}
    assert rows[vote.variant_b][0] == 1 and rows[vote.variant_b][2] >= 1
    assert all(row[2] == 0 for row in medical_board["data"])

    # The vote is in both exports.
    with open(csv_path, newline="", encoding="utf-8") as handle:
        assert list(csv.DictReader(handle))[-1]["round_seed"] == str(vote.round_seed)
    assert json.loads(Path(jsonl_path).read_text(encoding="utf-8").splitlines()[-1])["outcome"] == "b"

    # One vote per round.
    client.predict(api_name="/arena_vote_a")
    assert len(store.votes()) == before + 1


def test_arena_leaves_an_unavailable_variant_out_of_the_draw(client: Client) -> None:
    met = set()
    for _ in range(8):
        chat_a, chat_b, textbox, status, reveal = client.predict("hi", "medical", *SETTINGS, api_name="/arena_send")
        assert "which one is better" in status and textbox == ""
        status, reveal, *_ = client.predict(api_name="/arena_vote_tie")
        # medical-lora and medical-hybrid have no adapter in the test set-up: only the available ones meet.
        shown = {name for name in MEDICAL if f"`{name}`" in reveal}
        assert len(shown) == 2 and not shown & set(UNAVAILABLE)
        met |= shown
    assert len(met) >= 3  # the draw ranges over every available variant


# --- Prompt lab ---------------------------------------------------------------------------------


def test_lab_edit_shows_a_diff_and_the_chat_uses_it_in_this_session_only(served: ServedUI, client: Client) -> None:
    spec = load_prompt_spec("ecommerce")
    shots = (FewShotExample("Where is my parcel?", "Check Account > Orders."),)
    instruction = spec.retrieval.system_prompt  # the lab edits the prompt method's instruction
    diff, status = client.predict("ecommerce", "You are a terse assistant.", few_shot_yaml(shots), api_name="/lab_apply")
    assert "+  You are a terse assistant." in diff and f"-  {instruction.split('. ')[0]}." in diff
    assert "+  - user: Where is my parcel?" in diff and diff.startswith("--- prompts/ecommerce.yaml (shipped)")
    assert "Using your edit" in status

    history, textbox, chat_status = client.predict("hello", [], "ecommerce", *SETTINGS, api_name="/lab_chat")
    expected = served.runtime.bots["ecommerce-prompt"].reply(QUESTION, _settings(), PromptOverride("You are a terse assistant.", shots))
    assert _transcript(history) == [("user", "hello"), ("assistant", expected.text.strip())]
    assert "with your edit" in chat_status

    # Another session still sees the shipped template.
    other = Client(served.url, verbose=False)
    assert "shipped template" in other.predict("hello", [], "ecommerce", *SETTINGS, api_name="/lab_chat")[2]

    # A broken edit is refused and the previous one stays in use.
    _, status = client.predict("ecommerce", "x", "- user: only a question", api_name="/lab_apply")
    assert "Not applied" in status and "previous edit" in status
    assert "with your edit" in client.predict("hello", [], "ecommerce", *SETTINGS, api_name="/lab_chat")[2]

    # Reset brings back the shipped texts, an empty diff and the shipped behaviour.
    system_prompt, few_shot, diff, status, chat = client.predict("ecommerce", api_name="/lab_reset")
    assert system_prompt == instruction and few_shot == ""  # no fixed examples: selected per message
    assert diff == NO_CHANGES and chat == []
    assert "shipped template" in client.predict("hello", [], "ecommerce", *SETTINGS, api_name="/lab_chat")[2]

    # An edited instruction alone keeps the examples selected per message.
    _, status = client.predict("ecommerce", "Be brief.", "", api_name="/lab_apply")
    assert "selected per message" in status
    history, _, _ = client.predict("Can I pay with PayPal?", [], "ecommerce", *SETTINGS, api_name="/lab_chat")
    question = [{"role": "user", "content": "Can I pay with PayPal?"}]
    expected = served.runtime.bots["ecommerce-prompt"].reply(question, _settings(), PromptOverride("Be brief.", None))
    assert _transcript(history)[-1] == ("assistant", expected.text.strip())


def test_lab_edit_identical_to_the_shipped_template_is_no_edit(client: Client) -> None:
    spec = load_prompt_spec("medical")
    diff, status = client.predict("medical", spec.retrieval.system_prompt, "", api_name="/lab_apply")
    assert diff == NO_CHANGES and "shipped template" in status


def _settings():
    from bots.generation import GenerationSettings

    return GenerationSettings(*SETTINGS)


# --- The API page ---------------------------------------------------------------------------------

PUBLIC_ENDPOINTS = {
    "/chat", "/compare", "/compare_clear", "/arena_send", "/arena_vote_a", "/arena_vote_b", "/arena_vote_tie",
    "/arena_vote_both_bad", "/leaderboard", "/lab_apply", "/lab_reset", "/lab_chat",
}


def test_api_page_lists_only_the_endpoints_a_client_should_call(client: Client) -> None:
    named = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert named == PUBLIC_ENDPOINTS  # no /lambda... or /show_variant helper of the page


def test_a_streaming_pane_sends_its_first_piece_at_once_then_at_most_one_update_per_interval_and_the_end(monkeypatch: pytest.MonkeyPatch) -> None:
    from bots.backbone_base import GenerationError
    from bots.bot import ReplyStream
    from bots.generation import GenerationStats
    from webui import turns

    clock = iter(i * 0.1 for i in range(100))  # each piece arrives 0.1 s after the last
    monkeypatch.setattr(turns.time, "monotonic", lambda: next(clock))

    def pane(pieces: Iterator[str]) -> turns.PaneTurn:
        return turns.PaneTurn("v", [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}], ReplyStream(pieces, GenerationStats()))

    sent = [h[-1]["content"] for h in pane(iter("abcdefg")).updates(interval_s=0.25)]
    assert sent[0] == "a" and sent[-1] == "abcdefg"  # nothing is held back at the start or lost at the end
    assert len(sent) < 7 and sent == sorted(sent, key=len)  # fewer updates than pieces, each longer than the last
    assert [h[-1]["content"] for h in pane(iter("abc")).updates(interval_s=0)] == ["a", "ab", "abc"]

    def failing() -> Iterator[str]:
        yield from "ab"
        raise GenerationError("boom")

    turn = pane(failing())
    assert [h[-1]["content"] for h in turn.updates(interval_s=10)] == ["a", "ab"]  # the partial reply stays
    assert turn.failure == "generation stopped: boom"
