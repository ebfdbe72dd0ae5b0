"""The Arena tab: two anonymous variants of a domain answer the same message; the user votes.

A round draws its seed at random; the seed alone decides which variant is "A" and which is "B",
and is stored with the vote. Names and timings stay hidden until the vote (speed would give the
LoRA variant away). Votes go to the SQLite store of webui/votes.py; the leaderboard of each
domain (webui/leaderboard.py) and the CSV/JSONL exports are refreshed after every vote.
"""

from __future__ import annotations

import os
import random
import secrets
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import gradio as gr

from bots.registry import DOMAINS, VARIANTS, get_runtime
from prompts import load_prompt_spec
from webui.admission import admitted, generation_events
from webui.common import chat_pane
from webui.leaderboard import TABLE_HEADERS, LeaderboardConfig, standings, standings_table
from webui.turns import SETTINGS_COUNT, TURN_ERRORS, PaneTurn, build_settings_controls, settings_from, settings_record
from webui.votes import OUTCOMES, Vote, default_store, export_csv, export_jsonl

SIDES = ("A", "B")
EXPLANATION = (
    "Two variants of the chosen domain answer your message, in a random order, under the names **Model A** and **Model B**. "
    "Vote for the better answer; the names (and timings) show after the vote. Each message starts a new round. "
    "Votes are stored (card-like numbers masked) and feed the leaderboard below."
)


@dataclass(frozen=True)
class ArenaRound:
    """One message, two anonymous replies, and (after the vote) the verdict."""

    domain: str
    seed: int
    variant_a: str
    variant_b: str
    message: str = ""
    reply_a: str = ""
    reply_b: str = ""
    stats_a: str = ""
    stats_b: str = ""
    settings: dict[str, object] = field(default_factory=dict)
    verdict: str | None = None


def domain_variants(domain: str) -> list[str]:
    return [name for name, spec in VARIANTS.items() if spec.domain == domain]


def draw_pair(domain: str, seed: int, names: list[str] | None = None) -> tuple[str, str]:
    """The round's (A, B): two of the domain's variants (or of ``names``), in an order fixed by the seed."""
    names = domain_variants(domain) if names is None else names
    if len(names) < 2:
        raise gr.Error(f"The arena needs two variants of '{domain}'; it has {len(names)}.")
    first, second = random.Random(seed).sample(names, 2)
    return first, second


def available_variants(domain: str) -> list[str]:
    """The domain's variants that can answer; with fewer than two, all of them (the round then says which cannot)."""
    runtime = get_runtime()
    names = domain_variants(domain)
    available = [name for name in names if runtime.bot(name).availability.ok]
    return available if len(available) >= 2 else names


def _busy(text: str, message: str, domain: str, *settings_and_round: object) -> tuple[object, ...]:
    """Refused: both panes and the previous round stay, the message stays typed."""
    return gr.skip(), gr.skip(), message, text, gr.skip(), settings_and_round[SETTINGS_COUNT]


def _waiting(text: str, *_: object) -> tuple[object, ...]:
    return gr.skip(), gr.skip(), gr.skip(), text, gr.skip(), gr.skip()


@admitted(_busy, _waiting)
def arena_send(message: str, domain: str, *settings_and_round: object) -> Iterator[tuple[object, ...]]:
    """Start a round and stream A's reply, then B's. Yields (chat A, chat B, textbox, status, reveal, round)."""
    settings_values, previous = settings_and_round[:SETTINGS_COUNT], settings_and_round[SETTINGS_COUNT]
    seed = secrets.randbits(32)
    # An unavailable variant (a missing adapter) sits out: the others still meet.
    variant_a, variant_b = draw_pair(domain, seed, available_variants(domain))
    runtime = get_runtime()
    try:
        settings = settings_from(*settings_values)
        turns = [PaneTurn.start(runtime.bot(name), [], message, settings) for name in (variant_a, variant_b)]
    except TURN_ERRORS as exc:
        gr.Warning(str(exc))
        yield gr.skip(), gr.skip(), message, f"⚠️ No round: {exc}", gr.skip(), previous
        return
    chats = [turn.history for turn in turns]
    # No round until both replies are complete: a vote before that is refused.
    yield chats[0], chats[1], "", "Model A is answering…", "", None
    for index, (side, turn) in enumerate(zip(SIDES, turns, strict=True)):
        for history in turn.updates():
            chats[index] = history
            yield chats[0], chats[1], "", f"Model {side} is answering…", "", None
    round_ = ArenaRound(domain, seed, variant_a, variant_b, message, turns[0].stream.text.strip(), turns[1].stream.text.strip(),
                        turns[0].stats_line(), turns[1].stats_line(), settings_record(settings))
    yield chats[0], chats[1], "", "Both answers are in: **which one is better?**", "", round_


def reveal(round_: ArenaRound) -> str:
    lines = [f"**Your verdict: {OUTCOMES[round_.verdict or '']}.** Round seed {round_.seed}."]
    for side, name, stats in (("A", round_.variant_a, round_.stats_a), ("B", round_.variant_b, round_.stats_b)):
        lines.append(f"- **Model {side}** was `{name}` ({VARIANTS[name].label}): {stats}")
    return "\n".join(lines)


def cast_vote(outcome: str, round_: ArenaRound | None) -> tuple[object, ...]:
    """Store the verdict and reveal the names. Returns (round, status, reveal, *leaderboards, csv, jsonl)."""
    if round_ is None:
        gr.Warning("Send a message first, and wait for both answers.")
        return (round_, gr.skip(), gr.skip(), *leaderboard_outputs())
    if round_.verdict is not None:
        gr.Warning("This round already has your vote: send a new message for a new round.")
        return (round_, gr.skip(), gr.skip(), *leaderboard_outputs())
    round_ = replace(round_, verdict=outcome)
    default_store().add(Vote(round_.domain, round_.message, round_.variant_a, round_.variant_b, round_.reply_a, round_.reply_b,
                             outcome, dict(round_.settings), round_.seed))  # type: ignore[arg-type]
    return (round_, "Thanks! Send another message for a new round.", reveal(round_), *leaderboard_outputs())


_EXPORT_DIR = Path(tempfile.mkdtemp(prefix="tune-or-prompt-votes-"))


def _export(votes: list[Vote], name: str, write: Callable[[list[Vote], Path], Path]) -> Path:
    """Write a fresh export under a temporary name, then swap it in: sessions never read a half-written file."""
    final = _EXPORT_DIR / name
    with tempfile.NamedTemporaryFile(dir=_EXPORT_DIR, prefix=f".{name}.", delete=False) as handle:
        partial = Path(handle.name)
    os.replace(write(votes, partial), final)
    return final


def leaderboard_outputs() -> tuple[object, ...]:
    """One table per domain, then fresh CSV and JSONL exports of every vote."""
    votes = default_store().votes()
    tables = [standings_table(standings([v for v in votes if v.domain == domain], domain_variants(domain))) for domain in DOMAINS]
    return (*tables, _export(votes, "votes.csv", export_csv), _export(votes, "votes.jsonl", export_jsonl))


def build_arena_tab(demo: gr.Blocks) -> None:
    """Lay out the tab inside the current gr.Blocks and wire its events."""
    gr.Markdown(EXPLANATION)
    domain = gr.Radio([(load_prompt_spec(d).title, d) for d in DOMAINS], value=DOMAINS[0], label="Domain")
    round_state = gr.State(None)
    with gr.Row(equal_height=True):
        chat_a = chat_pane("Model A", 320, elem_id="arena-chat-a")
        chat_b = chat_pane("Model B", 320, elem_id="arena-chat-b")
    with gr.Row():
        message = gr.Textbox(placeholder="Ask both models…", show_label=False, scale=5, max_lines=6, elem_id="arena-message")
        send = gr.Button("Send", variant="primary", scale=1, elem_id="arena-send")
    status = gr.Markdown(elem_id="arena-status")
    with gr.Row():
        vote_buttons = {outcome: gr.Button(label, elem_id=f"arena-vote-{outcome}") for outcome, label in OUTCOMES.items()}
    revealed = gr.Markdown(elem_id="arena-reveal")
    with gr.Accordion("Generation settings (the same for both models)", open=False, elem_id="arena-settings"):
        settings = build_settings_controls()
    gr.Markdown(
        "### Leaderboard\nWin rate counts ties and both-bad verdicts as half a win. The Bradley-Terry rating (Elo scale, "
        f"mean 1000) is fitted on the votes; its interval comes from {LeaderboardConfig().bootstrap_rounds} bootstrap resamples "
        "of the votes (with only a handful of votes the interval is too narrow to trust)."
    )
    tables = []
    for d in DOMAINS:
        tables.append(gr.Dataframe(headers=TABLE_HEADERS, label=load_prompt_spec(d).title, interactive=False, elem_id=f"leaderboard-{d}"))
    with gr.Row():
        refresh = gr.Button("Refresh leaderboard", scale=1)
        csv_button = gr.DownloadButton("Download votes (CSV)", scale=1, elem_id="arena-export-csv")
        jsonl_button = gr.DownloadButton("Download votes (JSONL)", scale=1, elem_id="arena-export-jsonl")

    board = [*tables, csv_button, jsonl_button]
    send_inputs = [message, domain, *settings, round_state]
    send_outputs = [chat_a, chat_b, message, status, revealed, round_state]
    message.submit(arena_send, send_inputs, send_outputs, **generation_events(), api_name="arena_send")
    send.click(arena_send, send_inputs, send_outputs, **generation_events(), api_visibility="private")
    for outcome, button in vote_buttons.items():
        button.click(partial(cast_vote, outcome), round_state, [round_state, status, revealed, *board], api_name=f"arena_vote_{outcome}")
    refresh.click(leaderboard_outputs, None, board, api_name="leaderboard")
    domain.change(lambda: ([], [], "", "", None), None, [chat_a, chat_b, status, revealed, round_state], queue=False, api_visibility="private")
    demo.load(leaderboard_outputs, None, board, api_visibility="private")
