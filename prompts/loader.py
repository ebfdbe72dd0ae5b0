"""Load a domain's prompt file (prompts/<domain>.yaml) and render it into chat messages.

The prompt-template variant's messages are built with langchain-core: a system message
(system prompt + fact sheet), the few-shot dialogs (FewShotChatMessagePromptTemplate),
the conversation history (MessagesPlaceholder) and the new user message. The result is a
plain list of ``{"role", "content"}`` dicts for the tokenizer's chat template.

Run ``python -m prompts ecommerce`` to print the rendered messages of a sample turn.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.prompts import ChatPromptTemplate, FewShotChatMessagePromptTemplate, MessagesPlaceholder

PROMPTS_DIR = Path(__file__).resolve().parent
REQUIRED_KEYS = (
    "domain",
    "title",
    "assistant_name",
    "base_system_prompt",
    "lora_system_prompt",
    "system_prompt",
    "system_template",
    "fact_sheet",
    "few_shot",
    "example_questions",
)

Message = dict[str, str]


class PromptFileError(ValueError):
    """A prompt file is missing or malformed; the message names the file and the problem."""


@dataclass(frozen=True)
class Fact:
    topic: str
    fact: str


@dataclass(frozen=True)
class FewShotExample:
    user: str
    assistant: str


@dataclass(frozen=True)
class PromptSpec:
    """One domain's prompt data, exactly as in its yaml file."""

    domain: str
    title: str
    assistant_name: str
    base_system_prompt: str
    """The control variant's only prompt: one line, no facts, no examples."""
    lora_system_prompt: str
    system_prompt: str
    system_template: str
    fact_sheet: tuple[Fact, ...]
    few_shot: tuple[FewShotExample, ...]
    example_questions: tuple[str, ...]

    def fact_sheet_text(self) -> str:
        return "\n".join(f"- {item.topic}: {item.fact}" for item in self.fact_sheet)

    def system_message(self) -> str:
        # str.replace, not str.format: the texts may hold braces of their own.
        return self.system_template.replace("{system_prompt}", self.system_prompt).replace("{fact_sheet}", self.fact_sheet_text())


def available_domains() -> list[str]:
    return sorted(path.stem for path in PROMPTS_DIR.glob("*.yaml"))


def _require_text(raw: dict, key: str, path: Path) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value.strip():
        raise PromptFileError(f"{path}: '{key}' must be a non-empty string")
    return value.strip()


def parse_prompt_spec(raw: object, path: Path) -> PromptSpec:
    if not isinstance(raw, dict):
        raise PromptFileError(f"{path}: expected a mapping at the top level")
    missing = [key for key in REQUIRED_KEYS if key not in raw]
    if missing:
        raise PromptFileError(f"{path}: missing keys: {', '.join(missing)}")
    template = _require_text(raw, "system_template", path)
    for placeholder in ("{system_prompt}", "{fact_sheet}"):
        if placeholder not in template:
            raise PromptFileError(f"{path}: system_template must contain {placeholder}")
    try:
        facts = tuple(Fact(str(item["topic"]).strip(), str(item["fact"]).strip()) for item in raw["fact_sheet"])
        shots = tuple(FewShotExample(str(item["user"]).strip(), str(item["assistant"]).strip()) for item in raw["few_shot"])
    except (KeyError, TypeError) as exc:
        raise PromptFileError(f"{path}: fact_sheet items need 'topic' and 'fact', few_shot items 'user' and 'assistant' ({exc!r})") from exc
    questions = raw["example_questions"]
    if not isinstance(questions, list) or not all(isinstance(q, str) and q.strip() for q in questions):
        raise PromptFileError(f"{path}: example_questions must be a list of non-empty strings")
    return PromptSpec(
        domain=_require_text(raw, "domain", path),
        title=_require_text(raw, "title", path),
        assistant_name=_require_text(raw, "assistant_name", path),
        base_system_prompt=_require_text(raw, "base_system_prompt", path),
        lora_system_prompt=_require_text(raw, "lora_system_prompt", path),
        system_prompt=_require_text(raw, "system_prompt", path),
        system_template=template,
        fact_sheet=facts,
        few_shot=shots,
        example_questions=tuple(q.strip() for q in questions),
    )


def load_prompt_file(path: Path) -> PromptSpec:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PromptFileError(f"{path}: cannot read ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise PromptFileError(f"{path}: invalid YAML ({exc})") from exc
    return parse_prompt_spec(raw, path)


@cache
def load_prompt_spec(domain: str) -> PromptSpec:
    path = PROMPTS_DIR / f"{domain}.yaml"
    if not path.is_file():
        raise PromptFileError(f"no prompt file for domain '{domain}' (expected {path}); known: {', '.join(available_domains())}")
    return load_prompt_file(path)


def build_chat_prompt(spec: PromptSpec) -> ChatPromptTemplate:
    """The langchain template: system, few-shot turns, history, then the new user message."""
    example_prompt = ChatPromptTemplate.from_messages([("human", "{user}"), ("ai", "{assistant}")])
    few_shot = FewShotChatMessagePromptTemplate(
        examples=[{"user": shot.user, "assistant": shot.assistant} for shot in spec.few_shot],
        example_prompt=example_prompt,
    )
    return ChatPromptTemplate.from_messages(
        [("system", "{system}"), few_shot, MessagesPlaceholder("history"), ("human", "{question}")]
    )


_ROLE_OF = {"system": "system", "human": "user", "ai": "assistant"}
_MESSAGE_OF = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}


def to_langchain(messages: list[Message]) -> list[BaseMessage]:
    return [_MESSAGE_OF[message["role"]](content=message["content"]) for message in messages]


def to_chat_dicts(messages: list[BaseMessage]) -> list[Message]:
    return [{"role": _ROLE_OF[message.type], "content": str(message.content)} for message in messages]


def render_prompted(spec: PromptSpec, conversation: list[Message], system_prompt: str | None = None, few_shot: tuple[FewShotExample, ...] | None = None) -> list[Message]:
    """Messages for the prompt-template variant; ``conversation`` ends with the user's turn.

    ``system_prompt`` and ``few_shot`` override the shipped ones (the prompt lab).
    """
    if not conversation or conversation[-1]["role"] != "user":
        raise ValueError("the conversation must end with a user message")
    if system_prompt is not None or few_shot is not None:
        spec = _with_overrides(spec, system_prompt, few_shot)
    template = build_chat_prompt(spec)
    rendered = template.format_messages(
        system=spec.system_message(), history=to_langchain(conversation[:-1]), question=conversation[-1]["content"]
    )
    return to_chat_dicts(rendered)


def render_lora(spec: PromptSpec, conversation: list[Message]) -> list[Message]:
    """Messages for the LoRA variant: the short system prompt, then the conversation as is."""
    if not conversation or conversation[-1]["role"] != "user":
        raise ValueError("the conversation must end with a user message")
    return [{"role": "system", "content": spec.lora_system_prompt}, *conversation]


def render_base(spec: PromptSpec, conversation: list[Message]) -> list[Message]:
    """Messages for the control variant: the one-line base system prompt, then the conversation as is."""
    if not conversation or conversation[-1]["role"] != "user":
        raise ValueError("the conversation must end with a user message")
    return [{"role": "system", "content": spec.base_system_prompt}, *conversation]


def _with_overrides(spec: PromptSpec, system_prompt: str | None, few_shot: tuple[FewShotExample, ...] | None) -> PromptSpec:
    from dataclasses import replace

    return replace(
        spec,
        system_prompt=spec.system_prompt if system_prompt is None else system_prompt,
        few_shot=spec.few_shot if few_shot is None else few_shot,
    )
