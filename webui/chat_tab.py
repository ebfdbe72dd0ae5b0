"""The Chat tab: pick a domain and a method, chat with that variant, replies streamed."""

from __future__ import annotations

from collections.abc import Iterator

import gradio as gr

from bots.registry import DOMAINS, get_runtime
from webui.admission import admitted, chat_busy, chat_waiting, generation_events
from webui.common import METHODS, ChatHistory, chat_pane, example_samples, variant_for, variant_status
from webui.turns import TURN_ERRORS, PaneTurn, build_settings_controls, settings_from


def describe_variant(domain: str, method: str) -> str:
    return get_runtime().bot(variant_for(domain, method).name).describe()


@admitted(chat_busy, chat_waiting)
def respond(message: str, history: ChatHistory, domain: str, method: str, max_new_tokens: float, temperature: float, top_p: float, repetition_penalty: float, seed: float = 0, guard: bool = True) -> Iterator[tuple[ChatHistory, str, str]]:
    """Stream the selected variant's reply into the chat; errors keep the history and the text."""
    history = list(history or [])
    try:
        settings = settings_from(max_new_tokens, temperature, top_p, repetition_penalty, seed)
        bot = get_runtime().bot(variant_for(domain, method).name)
        turn = PaneTurn.start(bot, history, message, settings, guard=bool(guard))
    except TURN_ERRORS as exc:
        gr.Warning(str(exc))
        yield history, message, f"⚠️ {exc}"
        return
    for updated in turn.updates():
        yield updated, "", f"generating…{turn.notes()}"
    yield turn.history, "", f"{bot.spec.name}: {turn.stats_line()} · prompt {turn.stream.stats.prompt_tokens} tokens"


def build_chat_tab(demo: gr.Blocks) -> None:
    """Lay out the tab inside the current gr.Blocks and wire its events."""
    first_domain = DOMAINS[0]
    with gr.Row():
        domain = gr.Radio(list(DOMAINS), value=first_domain, label="Domain")
        method = gr.Radio([(label, key) for key, label in METHODS.items()], value="prompt", label="Method")
    status = gr.Markdown()
    chatbot = chat_pane("Conversation", 420)
    with gr.Row():
        message = gr.Textbox(placeholder="Ask something…", show_label=False, scale=5, max_lines=6)
        send = gr.Button("Send", variant="primary", scale=1)
        stop = gr.Button("Stop", scale=1)
        clear = gr.Button("Clear", scale=1)
    examples = gr.Dataset(components=[message], samples=example_samples(first_domain), label="Example questions")
    with gr.Accordion("Generation settings", open=False):
        settings = build_settings_controls()
        guard = gr.Checkbox(value=True, label="Safety guards (emergency escalation first, injection and off-topic replies); off shows the model alone")
    with gr.Accordion("What is this variant?", open=False):
        description = gr.Markdown()

    inputs = [message, chatbot, domain, method, *settings, guard]
    outputs = [chatbot, message, status]
    submit_event = message.submit(respond, inputs, outputs, **generation_events(), api_name="chat")
    click_event = send.click(respond, inputs, outputs, **generation_events(), api_visibility="private")
    # Only /chat is for API clients; the page's own helper events stay off the API page.
    internal = {"api_visibility": "private"}
    stop.click(None, None, None, cancels=[submit_event, click_event], **internal)
    clear.click(lambda: ([], "", ""), None, [chatbot, message, status], queue=False, api_name="chat_clear", **internal)
    examples.click(lambda sample: sample[0], examples, message, queue=False, api_name="chat_example", **internal)

    def show_variant(domain_value: str, method_value: str) -> tuple[str, str]:
        name = variant_for(domain_value, method_value).name
        return variant_status(name), describe_variant(domain_value, method_value)

    domain.change(lambda d: gr.Dataset(samples=example_samples(d)), domain, examples, queue=False, api_name="chat_examples_of_domain", **internal)
    for control in (domain, method):
        control.change(lambda d, m: ([], *show_variant(d, m)), [domain, method], [chatbot, status, description], api_name=f"chat_{control.label.lower()}_change", **internal)
    demo.load(show_variant, [domain, method], [status, description], api_name="chat_show_variant", **internal)
