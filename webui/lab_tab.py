"""The Prompt lab tab: edit the prompt variant's system prompt and few-shot dialogs, try them, diff them.

Edits live in a gr.State of this browser session only (a LabDraft); nothing is written to
prompts/. The chat sends them to the prompt variant as a PromptOverride. The fact sheet and
the system template stay as shipped. The diff is a unified diff of the shipped template
against the edit, with the system prompt one sentence per line so that a changed sentence
shows as one changed line.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from dataclasses import dataclass

import gradio as gr
import yaml

from bots.bot import PromptOverride
from bots.registry import DOMAINS, VARIANTS, get_runtime
from prompts import FewShotExample, PromptSpec, load_prompt_spec
from webui.admission import admitted, chat_busy, chat_waiting, generation_events
from webui.common import ChatHistory, chat_pane
from webui.turns import SETTINGS_COUNT, TURN_ERRORS, PaneTurn, build_settings_controls, settings_from

NO_CHANGES = "(no changes: this is the shipped template)"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


class LabEditError(ValueError):
    """The few-shot text is not a list of user/assistant pairs; the message says what is wrong."""


@dataclass(frozen=True)
class LabDraft:
    """A session's edit of one domain's prompt variant."""

    domain: str
    system_prompt: str
    few_shot: tuple[FewShotExample, ...]

    def override(self) -> PromptOverride:
        # No examples typed: the prompt method keeps selecting them by similarity.
        return PromptOverride(self.system_prompt, self.few_shot or None)


def prompt_variant(domain: str) -> str:
    return next(name for name, spec in VARIANTS.items() if spec.domain == domain and spec.method == "prompt")


def few_shot_yaml(shots: tuple[FewShotExample, ...]) -> str:
    return yaml.safe_dump([{"user": s.user, "assistant": s.assistant} for s in shots], sort_keys=False, allow_unicode=True, width=88)


def parse_few_shot(text: str) -> tuple[FewShotExample, ...]:
    """A yaml list of {user, assistant} -> examples; an empty text means no examples."""
    try:
        raw = yaml.safe_load(text) if text.strip() else []
    except yaml.YAMLError as exc:
        raise LabEditError(f"the few-shot examples are not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(raw, list):
        raise LabEditError("the few-shot examples must be a YAML list of items with 'user' and 'assistant'")
    shots = []
    for number, item in enumerate(raw, start=1):
        if not isinstance(item, dict) or set(item) != {"user", "assistant"} or not all(isinstance(v, str) and v.strip() for v in item.values()):
            raise LabEditError(f"few-shot example {number} needs exactly a non-empty 'user' and 'assistant' text")
        shots.append(FewShotExample(item["user"].strip(), item["assistant"].strip()))
    return tuple(shots)


def shipped(domain: str) -> PromptSpec:
    if domain not in DOMAINS:
        raise gr.Error(f"Unknown domain '{domain}': choose one of {', '.join(DOMAINS)}.")
    return load_prompt_spec(domain)


def shipped_texts(domain: str) -> tuple[str, tuple[FewShotExample, ...]]:
    """What the lab starts from: the prompt method's instruction, and no fixed examples (it selects
    them per message from its pool). A domain file without a retrieval design: its static template."""
    spec = shipped(domain)
    if spec.retrieval is None:
        return spec.system_prompt, spec.few_shot
    return spec.retrieval.system_prompt, ()


def _document(system_prompt: str, shots: tuple[FewShotExample, ...]) -> list[str]:
    """The editable part of a prompt as diffable lines."""
    sentences = [s for line in system_prompt.strip().splitlines() for s in _SENTENCE_END.split(line.strip()) if s]
    return ["system_prompt:", *(f"  {s}" for s in sentences), "few_shot:", *(f"  {line}" for line in few_shot_yaml(shots).splitlines())]


def prompt_diff(draft: LabDraft) -> str:
    instruction, shots = shipped_texts(draft.domain)
    lines = difflib.unified_diff(
        _document(instruction, shots), _document(draft.system_prompt, draft.few_shot),
        fromfile=f"prompts/{draft.domain}.yaml (shipped)", tofile="your edit (this browser session only)", lineterm="",
    )
    return "\n".join(lines) or NO_CHANGES


def apply_edits(domain: str, system_prompt: str, few_shot_text: str, draft: LabDraft | None) -> tuple[object, str, str]:
    """Parse the edit into the session's draft. Returns (draft, diff, status); a bad edit keeps the previous draft."""
    try:
        shots = parse_few_shot(few_shot_text or "")
    except LabEditError as exc:
        in_use = "your previous edit" if draft is not None and draft.domain == domain else "the shipped template"
        return draft, gr.skip(), f"⚠️ Not applied: {exc}. The chat still uses {in_use}."
    instruction, shipped_shots = shipped_texts(domain)
    new = LabDraft(domain, system_prompt or "", shots)
    if new.system_prompt.strip() == instruction and shots == shipped_shots:
        return None, NO_CHANGES, "Using the shipped template."
    examples = f"{len(shots)} fixed few-shot example(s)" if shots else "the examples selected per message"
    return new, prompt_diff(new), f"Using your edit with {examples}. Only this browser session sees it."


def reset_lab(domain: str) -> tuple[object, ...]:
    """Back to the shipped template: (system prompt, few-shot text, draft, diff, status, chat)."""
    instruction, shots = shipped_texts(domain)
    return instruction, few_shot_yaml(shots) if shots else "", None, NO_CHANGES, "Using the shipped template.", []


@admitted(chat_busy, chat_waiting)
def lab_chat(message: str, history: ChatHistory, domain: str, *settings_and_draft: object) -> Iterator[tuple[ChatHistory, str, str]]:
    """Chat with the domain's prompt variant under the session's draft. Yields (chat, textbox, status)."""
    settings_values, draft = settings_and_draft[:SETTINGS_COUNT], settings_and_draft[SETTINGS_COUNT]
    history = list(history or [])
    name = prompt_variant(domain)
    override = draft.override() if isinstance(draft, LabDraft) and draft.domain == domain else None
    try:
        turn = PaneTurn.start(get_runtime().bot(name), history, message, settings_from(*settings_values), override)
    except TURN_ERRORS as exc:
        gr.Warning(str(exc))
        yield history, message, f"⚠️ {exc}"
        return
    source = "your edit" if override else "the shipped template"
    for grown in turn.updates():
        yield grown, "", f"{name} with {source}: generating…"
    yield turn.history, "", f"{name} with {source}: {turn.stats_line()}"


def build_lab_tab(demo: gr.Blocks) -> None:
    """Lay out the tab inside the current gr.Blocks and wire its events."""
    gr.Markdown(
        "Edit the **prompt method**'s instruction and, if you like, fix its few-shot dialogs, then try them in the chat. "
        "The facts are still retrieved per message from the shipped fact sheet; with the examples box empty, the examples "
        "are still selected per message from the pool. Edits apply to this browser session only and are never saved."
    )
    first_instruction, first_shots = shipped_texts(DOMAINS[0])
    domain = gr.Radio([(load_prompt_spec(d).title, d) for d in DOMAINS], value=DOMAINS[0], label="Domain")
    draft = gr.State(None)
    with gr.Row():
        with gr.Column():
            system_prompt = gr.Textbox(first_instruction, lines=8, max_lines=20, label="Instruction (system prompt)", elem_id="lab-system-prompt")
            few_shot = gr.Textbox(few_shot_yaml(first_shots) if first_shots else "", lines=12, max_lines=30,
                                  label="Fixed few-shot dialogs (YAML: a list of user/assistant; empty: selected per message)",
                                  placeholder="- user: ...\n  assistant: ...", elem_id="lab-few-shot")
            with gr.Row():
                reset = gr.Button("Reset to the shipped template", elem_id="lab-reset")
            lab_status = gr.Markdown("Using the shipped template.", elem_id="lab-status")
            diff = gr.Code(NO_CHANGES, language=None, label="Diff against the shipped template", interactive=False, wrap_lines=True, lines=8,
                           elem_id="lab-diff")
        with gr.Column():
            chatbot = chat_pane("Try it (prompt variant)", 420, elem_id="lab-chat")
            with gr.Row():
                message = gr.Textbox(placeholder="Ask something…", show_label=False, scale=5, max_lines=6, elem_id="lab-message")
                send = gr.Button("Send", variant="primary", scale=1, elem_id="lab-send")
                clear = gr.Button("Clear", scale=1)
            chat_status = gr.Markdown(elem_id="lab-chat-status")
            with gr.Accordion("Generation settings", open=False, elem_id="lab-settings"):
                settings = build_settings_controls()

    edit_inputs = [domain, system_prompt, few_shot, draft]
    edit_outputs = [draft, diff, lab_status]
    # .change rather than .input: it also sees pasted or script-filled text; after a reset it finds the shipped texts, a no-op.
    gr.on([system_prompt.change, few_shot.change], apply_edits, edit_inputs, edit_outputs, trigger_mode="always_last", api_name="lab_apply")
    reset_outputs = [system_prompt, few_shot, draft, diff, lab_status, chatbot]
    reset.click(reset_lab, domain, reset_outputs, api_name="lab_reset")
    domain.change(reset_lab, domain, reset_outputs, api_visibility="private")
    chat_inputs = [message, chatbot, domain, *settings, draft]
    chat_outputs = [chatbot, message, chat_status]
    message.submit(lab_chat, chat_inputs, chat_outputs, **generation_events(), api_name="lab_chat")
    send.click(lab_chat, chat_inputs, chat_outputs, **generation_events(), api_visibility="private")
    clear.click(lambda: ([], "", ""), None, [chatbot, message, chat_status], queue=False, api_visibility="private")
