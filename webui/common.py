"""Helpers shared by the UI tabs: registry look-ups and Gradio message formats."""

from __future__ import annotations

import html
from typing import Any

import gradio as gr

from bots.bot import VariantSpec
from bots.registry import METHODS as METHOD_SPECS
from bots.registry import VARIANTS, get_runtime
from prompts import load_prompt_spec

METHODS = {name: method.label[0].upper() + method.label[1:] for name, method in METHOD_SPECS.items()}
"""Method choices of the tabs, in registry order (the headline methods first)."""
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
    """Chatbot history (display text) -> plain user/assistant messages for a bot."""
    return [{"role": m["role"], "content": from_display(message_text(m["content"]))} for m in history if m.get("role") in ("user", "assistant")]


def for_display(text: str) -> str:
    """Message text as the page shows it: HTML escaped, so markup shows as typed and never runs."""
    return html.escape(text, quote=False)


def from_display(text: str) -> str:
    return html.unescape(text)


def chat_pane(label: str, height: int, **kwargs: Any) -> gr.Chatbot:
    """A chat pane that shows messages as text: no Markdown or HTML rendering of what users or models write."""
    return gr.Chatbot(label=label, height=height, render_markdown=False, sanitize_html=True, **kwargs)


def example_samples(domain: str) -> list[list[str]]:
    return [[question] for question in load_prompt_spec(domain).example_questions]


def variant_status(name: str) -> str:
    runtime = get_runtime()
    bot = runtime.bot(name)
    state = "available" if bot.availability.ok else f"**unavailable**: {bot.availability.reason}"
    return f"`{name}` is {state}. Base model: {runtime.backbone.base.name}, served by {runtime.backbone.backend}."
