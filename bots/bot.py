"""The Bot interface and its kinds, one per method: RetrievalBot (the prompt method: retrieved facts
and selected examples, adapters off), LoraBot, HybridBot (an adapter trained with retrieved facts
in its context, served with the same retrieval), BaseBot (the control) and PromptedBot (the static
full-sheet template, kept as an ablation).

A bot turns a conversation into chat messages for the backbone, fits them into the
context budget and streams the reply. ``bot.stream(...)`` returns a ReplyStream: iterate
it for text pieces; its ``stats`` and ``text`` are complete once it is exhausted.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bots.backbone_base import BackboneBase
from bots.conversation import clean_conversation
from bots.generation import GenerationSettings, GenerationStats
from bots.guard import RULES_ONLY, EmergencyGuard, GuardDecision
from bots.safety import Screening, screen
from prompts import FewShotExample, PromptSpec, render_lora, render_prompted
from prompts.loader import RetrievalPrompt, render_base, render_hybrid, render_retrieval, retrieval_query, retrieved_facts

Message = dict[str, str]


class VariantUnavailable(RuntimeError):
    """The variant cannot answer (for example its adapter is missing); the message says why."""


@dataclass(frozen=True)
class VariantSpec:
    """One entry of the registry: a domain built with one method."""

    name: str
    domain: str
    method: str
    """A key of bots.registry.METHODS: 'lora', 'prompt', 'hybrid', 'base' (the control), 'static' (ablation)."""
    label: str
    emergency_guard: bool = False
    """Open the reply with the escalation when a message matches a red flag (bots/safety.py)."""


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str = ""


@dataclass(frozen=True)
class PromptOverride:
    """Prompt-lab edits of a prompted variant, for one browser session only."""

    system_prompt: str | None = None
    few_shot: tuple[FewShotExample, ...] | None = None


@dataclass
class ReplyStream:
    """Iterate for text pieces; ``text`` and ``stats`` are filled in as it goes."""

    pieces: Iterator[str]
    stats: GenerationStats
    notice: str = ""
    """Context trimming, if any, for the user to see."""
    guard_note: str = ""
    """What a safety guard did to this reply ('' when none acted)."""
    triage: GuardDecision | None = None
    """The emergency guard's decision (medical variants with guards on): tier, who decided, score."""
    text: str = ""

    def __iter__(self) -> Iterator[str]:
        try:
            for piece in self.pieces:
                self.text += piece
                yield piece
        finally:
            self.close()  # a consumer that stops early must free the model at once

    def close(self) -> None:
        close = getattr(self.pieces, "close", None)
        if close:
            close()

    def consume(self) -> ReplyStream:
        for _ in self:
            pass
        return self


@dataclass(frozen=True)
class GuardOutcome:
    """The guards' decision on one user message: the rules' screening and the emergency triage."""

    screening: Screening | None
    """None: the guards are off."""
    triage: GuardDecision | None
    """The emergency guard's decision (variants with ``emergency_guard``); None otherwise."""

    @property
    def canned_reply(self) -> str | None:
        """A fixed reply sent instead of the model's (injection, off-topic), unless an emergency was triaged."""
        if self.screening is None or (self.triage is not None and self.triage.acted):
            return None
        return self.screening.canned_reply

    @property
    def prefix(self) -> str:
        """Text the reply opens with before the model continues ('' for none)."""
        return self.triage.prefix if self.triage else ""

    @property
    def changes_reply(self) -> bool:
        """Whether the reply differs from the model alone's."""
        return self.canned_reply is not None or bool(self.prefix)


@dataclass
class Bot(ABC):
    spec: VariantSpec
    backbone: BackboneBase
    prompt: PromptSpec
    availability: Availability = field(default_factory=lambda: Availability(True))
    emergency: EmergencyGuard = RULES_ONLY
    """Rules + learned detector (bots/guard.py); the runtime gives each bot the process's one guard."""

    @property
    @abstractmethod
    def adapter(self) -> str | None:
        """Adapter name to activate while this bot generates; None: the bare base model."""

    @abstractmethod
    def render(self, conversation: list[Message], override: PromptOverride | None = None) -> list[Message]:
        """All chat messages for the model: fixed part (system, few-shot) then the conversation."""

    @abstractmethod
    def describe(self) -> str:
        """Markdown shown in the UI: what this variant is."""

    def stream(self, conversation: list[Message], settings: GenerationSettings | None = None, override: PromptOverride | None = None, guard: bool = True) -> ReplyStream:
        """Stream the reply; ``guard=False`` switches the model-independent safety guards off."""
        if not self.availability.ok:
            raise VariantUnavailable(f"{self.spec.name} is unavailable: {self.availability.reason}")
        settings = (settings or GenerationSettings()).validate()
        conversation = clean_conversation(conversation)
        outcome = self.guard_outcome(conversation) if guard else GuardOutcome(None, None)
        screening, triage = outcome.screening, outcome.triage
        if outcome.canned_reply is not None and screening is not None:
            # Injection or clearly off-topic (and no emergency): answered without the model.
            stats = GenerationStats(stopped_by="guard")
            return ReplyStream(iter([outcome.canned_reply]), stats, guard_note=_guard_note(screening), triage=triage)
        prefix = outcome.prefix
        messages = self.render(conversation, override)
        fixed = messages[: len(messages) - len(conversation)]
        trimmed = self.backbone.fit_to_context(fixed, messages[len(fixed) :], settings.max_new_tokens)
        stats = GenerationStats()
        if not prefix:
            return ReplyStream(self.backbone.stream(trimmed.prompt_ids, self.adapter, settings, stats), stats, trimmed.notice, triage=triage)
        # The escalation opens the reply and the model continues after it, so what follows reads on.
        prefix_ids = self.backbone.encode_text(prefix)
        pieces = _Prefixed(prefix, self.backbone.stream(trimmed.prompt_ids + prefix_ids, self.adapter, settings, stats))
        return ReplyStream(pieces, stats, trimmed.notice, triage.note() if triage else "", triage=triage)

    def guard_outcome(self, conversation: list[Message]) -> GuardOutcome:
        """What the guards decide about the conversation's last message, before any generation.

        Where it does not act, ``stream(..., guard=True)`` is the very reply of ``guard=False``
        (the evaluation relies on this to reuse a model-alone reply).
        """
        text = clean_conversation(conversation)[-1]["content"]
        screening = screen(self.spec.domain, text)
        triage = self.emergency.assess(text, screening.emergency) if self.spec.emergency_guard else None
        return GuardOutcome(screening, triage)

    def reply(self, conversation: list[Message], settings: GenerationSettings | None = None, override: PromptOverride | None = None, guard: bool = True) -> ReplyStream:
        """The whole reply at once (a consumed stream)."""
        return self.stream(conversation, settings, override, guard).consume()


class _Prefixed(Iterator[str]):
    """``prefix`` then the pieces of ``inner``; closing it closes ``inner`` (started or not)."""

    def __init__(self, prefix: str, inner: Iterator[str]) -> None:
        self._pending: str | None = prefix
        self._inner = inner

    def __next__(self) -> str:
        if self._pending is not None:
            piece, self._pending = self._pending, None
            return piece
        return next(self._inner)

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if close:
            close()


def _guard_note(screening: Screening) -> str:
    if screening.emergency:
        return f"Emergency guard acted (red flag: {screening.emergency.red_flag.replace('_', ' ')}): the reply opens with the escalation."
    if screening.injection:
        return "Injection guard acted: the message looked like an attempt to change the bot's instructions; a fixed reply was sent."
    return "Out-of-scope guard acted: the message is unrelated to this bot; a fixed redirect was sent."


class PromptedBot(Bot):
    """The static template (an ablation of the prompt method): full system prompt, whole fact sheet, fixed few-shot; no adapter."""

    @property
    def adapter(self) -> str | None:
        return None

    def render(self, conversation: list[Message], override: PromptOverride | None = None) -> list[Message]:
        override = override or PromptOverride()
        return render_prompted(self.prompt, conversation, override.system_prompt, override.few_shot)

    def describe(self) -> str:
        shots = "\n\n".join(f"**User:** {shot.user}\n\n**Assistant:** {shot.assistant}" for shot in self.prompt.few_shot)
        return (
            f"### {self.spec.label}\n"
            "Base model with **no adapter**. Every request carries this system message and "
            f"{len(self.prompt.few_shot)} few-shot dialogs (from `prompts/{self.prompt.domain}.yaml`).\n\n"
            f"#### System message\n```text\n{self.prompt.system_message()}\n```\n\n#### Few-shot dialogs\n{shots}"
        )


def _vote_note(design: RetrievalPrompt) -> str:
    if design.question_vote is None:
        return " by BM25"
    return f" by BM25 and the vote of {len(design.question_vote.questions)} labelled questions from the training dialogs"


class RetrievalBot(Bot):
    """The prompt method: a short instruction, the facts ranked first for the conversation (BM25
    and the question vote) and the most similar example dialogs (prompts/bm25.py); no adapter."""

    @property
    def adapter(self) -> str | None:
        return None

    def render(self, conversation: list[Message], override: PromptOverride | None = None) -> list[Message]:
        override = override or PromptOverride()
        return render_retrieval(self.prompt, conversation, override.system_prompt, override.few_shot)

    def describe(self) -> str:
        design = self.prompt.retrieval
        if design is None:
            return PromptedBot.describe(self)  # type: ignore[arg-type]
        example = self.prompt.example_questions[0]
        facts = retrieved_facts(self.prompt, retrieval_query([{"role": "user", "content": example}]))
        return (
            f"### {self.spec.label}\n"
            "Base model with **no adapter**. Each request carries a short instruction, the "
            f"{design.settings.facts} facts ranked first for the conversation{_vote_note(design)} (plus "
            f"{', '.join(design.settings.always) or 'none'} always) and the {design.settings.examples} most similar of "
            f"{len(design.example_pool)} example dialogs (from `prompts/{self.prompt.domain}.yaml` and "
            f"`prompts/retrieval/{self.prompt.domain}.yaml`).\n\n"
            f"#### Instruction\n```text\n{design.system_prompt}\n```\n\n"
            f"#### Retrieved for \"{example}\"\n" + "\n".join(f"- {fact.topic}: {fact.fact}" for fact in facts)
        )


@dataclass
class LoraBot(Bot):
    """The fine-tuning method: the domain's LoRA adapter on, a short system prompt only."""

    adapter_path: Path | None = None
    adapter_name: str | None = None
    """The backbone's name for the adapter; None: the domain's (the data-efficiency curve loads others)."""

    @property
    def adapter(self) -> str | None:
        return self.adapter_name or self.spec.domain

    @classmethod
    def adapter_folder_of(cls, domain: str) -> str:
        """The folder of this method's adapter for ``domain``, under the adapters directory."""
        return domain

    @property
    def adapter_folder(self) -> str:
        """The adapter's folder under the adapters directory."""
        return self.adapter_folder_of(self.spec.domain)

    def render(self, conversation: list[Message], override: PromptOverride | None = None) -> list[Message]:
        # No fact sheet, no few-shot: what it knows it must have learned. Overrides do not apply.
        return render_lora(self.prompt, conversation)

    def describe(self) -> str:
        header = (
            f"### {self.spec.label}\n"
            f"Base model + the **{self.spec.domain} LoRA adapter**. The only prompt is this short system message:\n"
            f"```text\n{self.prompt.lora_system_prompt}\n```\n"
        )
        if not self.availability.ok:
            return header + f"\n**Unavailable:** {self.availability.reason}"
        card = self.adapter_path / "README.md" if self.adapter_path else None
        card_text = card.read_text(encoding="utf-8") if card and card.is_file() else "(this adapter has no model card)"
        return header + f"\n#### Adapter card (`{self.adapter_path}`)\n\n{card_text}"


@dataclass
class HybridBot(LoraBot):
    """Both methods together: an adapter trained with retrieved facts (and distractors) in its
    context (training/hybrid_data.py), served with the same retrieval, so it reads the facts
    rather than recalls them. No example dialogs: the adapter learned the style."""

    @property
    def adapter(self) -> str | None:
        return self.adapter_name or f"{self.spec.domain}-hybrid"

    @classmethod
    def adapter_folder_of(cls, domain: str) -> str:
        return f"{domain}-hybrid"

    def render(self, conversation: list[Message], override: PromptOverride | None = None) -> list[Message]:
        return render_hybrid(self.prompt, conversation)

    def describe(self) -> str:
        header = (
            f"### {self.spec.label}\n"
            f"Base model + the **{self.spec.domain} hybrid adapter**, trained with the prompt method's retrieved facts in "
            "its system message; each request carries the same short instruction and retrieved facts, no example dialogs.\n"
        )
        if not self.availability.ok:
            return header + f"\n**Unavailable:** {self.availability.reason}"
        return header


class BaseBot(Bot):
    """The control: the bare base model with a one-line system prompt; no adapter, no facts, no few-shot.

    What the other methods are measured against: what each buys over nothing.
    """

    @property
    def adapter(self) -> str | None:
        return None

    def render(self, conversation: list[Message], override: PromptOverride | None = None) -> list[Message]:
        # Overrides do not apply: the control stays the control.
        return render_base(self.prompt, conversation)

    def describe(self) -> str:
        return (
            f"### {self.spec.label}\n"
            "The **bare base model**: no adapter, no fact sheet, no few-shot dialogs. It is the control the other "
            "methods are measured against. The only prompt is this one-line system message:\n"
            f"```text\n{self.prompt.base_system_prompt}\n```"
        )
