"""The Side by side tab: one message to a domain's variants (LoRA, prompt, base) or to all of them, answers next to each other.

Each variant has its own pane (a gr.Chatbot) with its own history and its own timings: time
to first token, decode tokens/s and the reply's token count. The llama.cpp backbone generates
several replies at once (batched), so all panes stream together. The transformers backbone
generates one reply at a time (it holds a lock for a whole reply, and two streams in one
thread would wait on each other forever), so there the variants answer one after the other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import gradio as gr

from bots.registry import DOMAINS, VARIANTS, get_runtime
from prompts import load_prompt_spec
from webui.admission import admitted, generation_events
from webui.common import ChatHistory, chat_pane
from webui.turns import SETTINGS_COUNT, TURN_ERRORS, PaneTurn, build_settings_controls, settings_from

ALL = "all"
PANES: tuple[str, ...] = tuple(VARIANTS)
"""One pane per variant, in registry order; handler inputs and outputs follow this order."""
EXPLANATION = (
    "One message goes to every variant shown; each pane keeps its own conversation. "
    "The variants share one base model. With the llama.cpp backend (the default when installed) they answer "
    "**together**: their replies are decoded in the same batches, so each pane's timings include sharing the CPU "
    "with the others. With the transformers backend they answer **one after the other**, each timed alone."
)


def scope_choices() -> list[tuple[str, str]]:
    return [(load_prompt_spec(domain).title, domain) for domain in DOMAINS] + [("All variants", ALL)]


def variants_in(scope: str) -> list[str]:
    """The variants a scope (a domain, or 'all') sends the message to, in pane order."""
    if scope != ALL and scope not in DOMAINS:
        raise gr.Error(f"Unknown scope '{scope}': choose one of {', '.join([*DOMAINS, ALL])}.")
    return [name for name in PANES if scope == ALL or VARIANTS[name].domain == scope]


def _busy(text: str, message: str, scope: str, *settings_and_histories: object) -> tuple[object, ...]:
    """Refused: every pane keeps its conversation, the message stays typed, the shown panes say why."""
    histories = settings_and_histories[SETTINGS_COUNT:]
    shown = set(variants_in(scope))
    return (message, *(list(h or []) for h in histories), *(text if name in shown else gr.skip() for name in PANES))


def _waiting(text: str, message: str, scope: str, *_: object) -> tuple[object, ...]:
    shown = set(variants_in(scope))
    return (gr.skip(), *(gr.skip() for _ in PANES), *(text if name in shown else gr.skip() for name in PANES))


@admitted(_busy, _waiting)
def compare(message: str, scope: str, *settings_and_histories: object) -> Iterator[tuple[object, ...]]:
    """Stream each variant's reply into its pane. Yields (textbox, *pane histories, *pane stats)."""
    settings_values, histories = settings_and_histories[:SETTINGS_COUNT], settings_and_histories[SETTINGS_COUNT:]
    panes: dict[str, ChatHistory] = {name: list(history or []) for name, history in zip(PANES, histories, strict=True)}
    stats: dict[str, object] = {name: gr.skip() for name in PANES}  # panes outside the scope keep theirs

    def frame(textbox: str) -> tuple[object, ...]:
        return (textbox, *(panes[name] for name in PANES), *(stats[name] for name in PANES))

    names = variants_in(scope)
    runtime = get_runtime()
    try:
        settings = settings_from(*settings_values)
    except TURN_ERRORS as exc:
        gr.Warning(str(exc))
        stats.update(dict.fromkeys(names, f"⚠️ {exc}"))
        yield frame(message)
        return
    turns: list[PaneTurn] = []
    problems: list[str] = []  # one variant's problem (unavailable, prompt too long) does not stop the others
    for name in names:
        try:
            turns.append(PaneTurn.start(runtime.bot(name), panes[name], message, settings))
        except TURN_ERRORS as exc:
            stats[name] = f"⚠️ {exc}"
            problems.append(str(exc))
    if not turns:
        gr.Warning("; ".join(dict.fromkeys(problems)))
        yield frame(message)
        return
    for turn in turns:
        panes[turn.name] = turn.history  # the question shows at once in every pane
        stats[turn.name] = "waiting for the model…"
    if runtime.backbone.parallel_replies > 1:
        yield from _interleaved(turns, panes, stats, frame)
        return
    for turn in turns:
        stats[turn.name] = "generating…"
        yield frame("")
        for history in turn.updates():
            panes[turn.name] = history
            yield frame("")
        panes[turn.name] = turn.history
        stats[turn.name] = turn.stats_line()
        yield frame("")


def _interleaved(turns: list[PaneTurn], panes: dict[str, ChatHistory], stats: dict[str, object], frame: Callable[[str], tuple[object, ...]]) -> Iterator[tuple[object, ...]]:
    """All panes at once: the backbone batches their replies, so each pane gets a piece per round."""
    # Every piece, whatever STREAM_INTERVAL_S: waiting out one pane's interval would hold back the panes after it.
    live = {turn.name: (turn, turn.updates(interval_s=0)) for turn in turns}
    for turn in turns:
        stats[turn.name] = "generating…"
    yield frame("")
    try:
        while live:
            for name, (turn, updates) in list(live.items()):
                history = next(updates, None)
                if history is None:
                    del live[name]
                    panes[name] = turn.history
                    stats[name] = turn.stats_line()
                else:
                    panes[name] = history
            yield frame("")
    finally:
        for _, updates in live.values():
            updates.close()  # Stop or a disconnect: every pane's reply frees its lane


def clear_all() -> tuple[object, ...]:
    return ("", *([] for _ in PANES), *("" for _ in PANES))


def build_compare_tab(demo: gr.Blocks) -> None:
    """Lay out the tab inside the current gr.Blocks and wire its events."""
    gr.Markdown(EXPLANATION)
    scope = gr.Radio(scope_choices(), value=DOMAINS[0], label="Send to")
    chatbots: dict[str, gr.Chatbot] = {}
    stats: dict[str, gr.Markdown] = {}
    rows: dict[str, gr.Row] = {}
    for domain in DOMAINS:
        with gr.Row(visible=domain == DOMAINS[0], equal_height=True) as rows[domain]:
            for name in (n for n in PANES if VARIANTS[n].domain == domain):
                with gr.Column(elem_id=f"compare-{name}"):
                    chatbots[name] = chat_pane(VARIANTS[name].label, 360, elem_id=f"compare-chat-{name}")
                    stats[name] = gr.Markdown(elem_id=f"compare-stats-{name}")
    with gr.Row():
        message = gr.Textbox(placeholder="One message for every variant shown…", show_label=False, scale=5, max_lines=6, elem_id="compare-message")
        send = gr.Button("Send to all", variant="primary", scale=1, elem_id="compare-send")
        stop = gr.Button("Stop", scale=1)
        clear = gr.Button("Clear all", scale=1, elem_id="compare-clear")
    with gr.Accordion("Generation settings (the same for every variant)", open=False, elem_id="compare-settings"):
        settings = build_settings_controls()

    panes = [chatbots[name] for name in PANES]
    inputs = [message, scope, *settings, *panes]
    outputs = [message, *panes, *(stats[name] for name in PANES)]
    submit_event = message.submit(compare, inputs, outputs, **generation_events(), api_name="compare")
    click_event = send.click(compare, inputs, outputs, **generation_events(), api_visibility="private")
    stop.click(None, None, None, cancels=[submit_event, click_event])
    clear.click(clear_all, None, outputs, queue=False, api_name="compare_clear")
    scope.change(lambda s: [gr.Row(visible=s in (ALL, domain)) for domain in DOMAINS], scope, list(rows.values()), queue=False, api_visibility="private")
