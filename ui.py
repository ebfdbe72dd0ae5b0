"""Gradio UI of Tune or Prompt: chat with a variant, compare them side by side, vote blind, edit prompts.

    python ui.py                       # serves on 0.0.0.0:7860
    python ui.py --port 8080 --host 127.0.0.1 --base-model embedded

The page is built from the variant registry, one module per tab in webui/. The same port
serves the OpenAI-compatible API under /v1 (bots/api.py, mounted by webui/api_mount.py). The model is
loaded once per process, before serving (``--no-preload``: on the first request).
``demo`` is module-level so that ``gradio ui.py`` and Hugging Face Spaces find it.
"""

from __future__ import annotations

import os

import gradio as gr

from bots.backends import BACKEND_NAMES
from bots.base_source import BaseModelSpec
from bots.cli_args import CommandParser
from bots.registry import get_runtime
from webui.admission import current_gate
from webui.api_mount import ApiBlocks
from webui.arena_tab import build_arena_tab
from webui.chat_tab import build_chat_tab
from webui.compare_tab import build_compare_tab
from webui.lab_tab import build_lab_tab
from webui.report_tab import build_report_tab

DEFAULT_PORT = 7860
INTRO = (
    "# Tune or Prompt\nTwo domain chatbots, each built two ways on one small base model "
    "(SmolLM2-135M-Instruct): a **LoRA adapter** trained on domain dialogs, or a **prompt template** "
    "with the same facts. Chat with one variant, compare them side by side, judge them blind in the arena, "
    "or edit the prompt variant in the prompt lab."
)


def build_demo() -> gr.Blocks:
    with ApiBlocks(title="Tune or Prompt") as demo:
        gr.Markdown(INTRO)
        with gr.Tab("Chat"):
            build_chat_tab(demo)
        with gr.Tab("Side by side"):
            build_compare_tab(demo)
        with gr.Tab("Arena"):
            build_arena_tab(demo)
        with gr.Tab("Prompt lab"):
            build_lab_tab(demo)
        with gr.Tab("Report"):
            build_report_tab()
    # Generation requests are admitted by webui/admission.py (a clear 'busy' answer); Gradio's queue is only the last resort.
    demo.queue(max_size=current_gate().config.gradio_queue_max_size, default_concurrency_limit=4)
    return demo


demo = build_demo()


def main(argv: list[str] | None = None) -> None:
    parser = CommandParser(prog="python ui.py", description="Serve the Tune or Prompt UI.")
    parser.add_argument("--host", default=os.environ.get("TOP_HOST", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("TOP_PORT", DEFAULT_PORT)))
    parser.add_argument("--base-model", default=None, help="'embedded' (default), a hub id or a local folder; env TOP_BASE_MODEL")
    parser.add_argument("--backend", choices=BACKEND_NAMES, default=None, help="serving backend (default auto: the fastest installed); env TOP_BACKEND")
    parser.add_argument("--no-preload", action="store_true", help="load the model on the first request instead of before serving")
    args = parser.parse_args(argv)
    if args.base_model or args.backend or not args.no_preload:
        get_runtime(BaseModelSpec.from_env(args.base_model, backend=args.backend), warm_prompts=True)
    demo.launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
