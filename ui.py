"""Gradio UI of Tune or Prompt: chat with any of the four variants, streamed.

    python ui.py                       # serves on 0.0.0.0:7860
    python ui.py --port 8080 --host 127.0.0.1 --base-model embedded

The page is built from the variant registry; the model is loaded once, on the first
page load or request (``--preload`` loads it before serving). ``demo`` is module-level
so that ``gradio ui.py`` and Hugging Face Spaces find it.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from typing import Any

import gradio as gr

from bots.base_model import BaseModelSpec
from bots.bot import VariantSpec, VariantUnavailable
from bots.conversation import ConversationError
from bots.generation import GenerationSettings, SettingsError
from bots.registry import DOMAINS, VARIANTS, get_runtime
from prompts import load_prompt_spec

DEFAULT_PORT = 7860
METHODS = {"lora": "LoRA adapter (fine-tuned)", "prompt": "Prompt template (system prompt + facts + few-shot)"}
ChatHistory = list[dict[str, Any]]


def variant_for(domain: str, method: str) -> VariantSpec:
    """The registry entry for a domain and a method."""
    for spec in VARIANTS.values():
        if spec.domain == domain and spec.method == method:
            return spec
    raise gr.Error(f"No variant for domain '{domain}' and method '{method}'.")


def message_text(content: Any) -> str:
    """Gradio 6 gives message content as a string or a list of typed parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    if isinstance(content, dict):
        return str(content.get("text", ""))
    return ""


def to_conversation(history: ChatHistory) -> list[dict[str, str]]:
    return [{"role": m["role"], "content": message_text(m["content"])} for m in history if m.get("role") in ("user", "assistant")]


def describe_variant(domain: str, method: str) -> str:
    spec = variant_for(domain, method)
    return get_runtime().bot(spec.name).describe()


def variant_status(domain: str, method: str) -> str:
    bot = get_runtime().bot(variant_for(domain, method).name)
    base = get_runtime().backbone.base
    state = "available" if bot.availability.ok else f"**unavailable**: {bot.availability.reason}"
    return f"`{bot.spec.name}` is {state}. Base model: {base.name}."


def example_samples(domain: str) -> list[list[str]]:
    return [[question] for question in load_prompt_spec(domain).example_questions]


def respond(message: str, history: ChatHistory, domain: str, method: str, max_new_tokens: float, temperature: float, top_p: float, repetition_penalty: float) -> Iterator[tuple[ChatHistory, str, str]]:
    """Stream the selected variant's reply into the chat; errors keep the history and the text."""
    history = list(history or [])
    try:
        settings = GenerationSettings(int(max_new_tokens), float(temperature), float(top_p), float(repetition_penalty)).validate()
        bot = get_runtime().bot(variant_for(domain, method).name)
        stream = bot.stream(to_conversation(history) + [{"role": "user", "content": message or ""}], settings)
    except (ConversationError, SettingsError, VariantUnavailable) as exc:
        gr.Warning(str(exc))
        yield history, message, f"⚠️ {exc}"
        return
    history = history + [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
    notice = f" · ⚠️ {stream.notice}" if stream.notice else ""
    for piece in stream:
        history[-1] = {"role": "assistant", "content": stream.text}
        yield history, "", f"generating…{notice}"
    stats = stream.stats
    status = f"{bot.spec.name}: {stats.new_tokens} tokens · first token {stats.ttft_s:.2f}s · {stats.decode_tokens_per_s:.1f} tok/s · prompt {stats.prompt_tokens} tokens{notice}"
    yield history, "", status


def build_demo() -> gr.Blocks:
    first_domain = DOMAINS[0]
    with gr.Blocks(title="Tune or Prompt") as demo:
        gr.Markdown(
            "# Tune or Prompt\nTwo domain chatbots, each built two ways on one small base model "
            "(SmolLM2-135M-Instruct): a **LoRA adapter** trained on domain dialogs, or a **prompt template** "
            "with the same facts. Pick a domain and a method and chat."
        )
        with gr.Tab("Chat"):
            with gr.Row():
                domain = gr.Radio(list(DOMAINS), value=first_domain, label="Domain")
                method = gr.Radio([(label, key) for key, label in METHODS.items()], value="prompt", label="Method")
            status = gr.Markdown()
            chatbot = gr.Chatbot(label="Conversation", height=420)
            with gr.Row():
                message = gr.Textbox(placeholder="Ask something…", show_label=False, scale=5, max_lines=6)
                send = gr.Button("Send", variant="primary", scale=1)
                stop = gr.Button("Stop", scale=1)
                clear = gr.Button("Clear", scale=1)
            examples = gr.Dataset(components=[message], samples=example_samples(first_domain), label="Example questions")
            with gr.Accordion("Generation settings", open=False):
                max_new_tokens = gr.Slider(16, 512, value=160, step=16, label="Max new tokens")
                temperature = gr.Slider(0.0, 1.5, value=0.0, step=0.05, label="Temperature (0 = greedy)")
                top_p = gr.Slider(0.05, 1.0, value=0.95, step=0.05, label="Top-p")
                repetition_penalty = gr.Slider(1.0, 1.5, value=1.1, step=0.05, label="Repetition penalty (on the reply's own tokens)")
            with gr.Accordion("What is this variant?", open=False):
                description = gr.Markdown()

        inputs = [message, chatbot, domain, method, max_new_tokens, temperature, top_p, repetition_penalty]
        outputs = [chatbot, message, status]
        submit_event = message.submit(respond, inputs, outputs, concurrency_limit=4, api_name="chat")
        click_event = send.click(respond, inputs, outputs, concurrency_limit=4, api_visibility="private")
        stop.click(None, None, None, cancels=[submit_event, click_event])
        clear.click(lambda: ([], "", ""), None, [chatbot, message, status], queue=False)
        examples.click(lambda sample: sample[0], examples, message, queue=False)

        def on_variant_change(domain_value: str, method_value: str) -> tuple:
            return [], variant_status(domain_value, method_value), describe_variant(domain_value, method_value)

        domain.change(lambda d: gr.Dataset(samples=example_samples(d)), domain, examples, queue=False)
        for control in (domain, method):
            control.change(on_variant_change, [domain, method], [chatbot, status, description])
        demo.load(lambda d, m: (variant_status(d, m), describe_variant(d, m)), [domain, method], [status, description])
    demo.queue(max_size=32, default_concurrency_limit=4)
    return demo


demo = build_demo()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the Tune or Prompt UI.")
    parser.add_argument("--host", default=os.environ.get("TOP_HOST", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("TOP_PORT", os.environ.get("PORT", DEFAULT_PORT))))
    parser.add_argument("--base-model", default=None, help="'embedded' (default), a hub id or a local folder")
    parser.add_argument("--no-preload", action="store_true", help="load the model on the first request instead of at start")
    args = parser.parse_args(argv)
    if not args.no_preload or args.base_model:
        get_runtime(BaseModelSpec.from_env(args.base_model))
    demo.launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
