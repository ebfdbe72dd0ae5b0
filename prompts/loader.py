"""Load a domain's prompt file (prompts/<domain>.yaml) and render it into chat messages.

Messages are built with langchain-core: a system message, few-shot dialogs
(FewShotChatMessagePromptTemplate), the conversation history (MessagesPlaceholder) and the
new user message. The result is a plain list of ``{"role", "content"}`` dicts for the
tokenizer's chat template. Two prompt designs:

- ``render_retrieval`` (the prompt method): a short instruction, the few facts ranked first
  for the conversation (BM25, and the vote of labelled questions), and the few-shot dialogs a BM25 example selector picks from a pool
  (``prompts/retrieval/<domain>.yaml``; see prompts/bm25.py);
- ``render_prompted`` (the static ablation): the whole fact sheet and fixed few-shot dialogs.

Run ``python -m prompts ecommerce`` to print the rendered messages of a sample turn.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.prompts import ChatPromptTemplate, FewShotChatMessagePromptTemplate, MessagesPlaceholder

import domains
from prompts.bm25 import BM25ExampleSelector, FactRanker, QuestionVote, RetrievalSettings

PROMPTS_DIR = Path(__file__).resolve().parent
RETRIEVAL_DIR = PROMPTS_DIR / "retrieval"
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
    keywords: str = ""
    """Words users say for this topic (retrieval only; never shown to the model)."""
    retrieval_only: bool = False
    """Left out of the static sheet, whose instruction already states the rule (its ``retrieval_only``)."""


@dataclass(frozen=True)
class RetrievalPrompt:
    """The prompt method's design: a short instruction, retrieved facts and selected examples."""

    system_prompt: str
    facts_header: str
    settings: RetrievalSettings
    example_pool: tuple[FewShotExample, ...]
    question_vote: QuestionVote | None = None
    """Labelled questions that re-rank the facts (the pool's ``question_vote``); None: BM25 over the facts alone."""


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
    label: str = ""
    """Short name of the domain in variant labels ('E-commerce')."""
    emergency_guard: bool = False
    """Whether the emergency guard (rules + detector) opens replies to red-flag messages."""
    retrieval: RetrievalPrompt | None = None
    """None: the file has no retrieval section (the prompt method then falls back to the static design)."""

    def fact_sheet_text(self) -> str:
        return "\n".join(f"- {item.topic}: {item.fact}" for item in self.fact_sheet if not item.retrieval_only)

    def system_message(self) -> str:
        # str.replace, not str.format: the texts may hold braces of their own.
        return self.system_template.replace("{system_prompt}", self.system_prompt).replace("{fact_sheet}", self.fact_sheet_text())


def available_domains() -> list[str]:
    return list(domains.names())  # the one list: the domain packs (domains/<name>/pack.yaml)


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
        facts = tuple(Fact(str(item["topic"]).strip(), str(item["fact"]).strip(), retrieval_only=item.get("retrieval_only") is True) for item in raw["fact_sheet"])
        shots = tuple(FewShotExample(str(item["user"]).strip(), str(item["assistant"]).strip()) for item in raw["few_shot"])
    except (KeyError, TypeError) as exc:
        raise PromptFileError(f"{path}: fact_sheet items need 'topic' and 'fact', few_shot items 'user' and 'assistant' ({exc!r})") from exc
    questions = raw["example_questions"]
    if not isinstance(questions, list) or not all(isinstance(q, str) and q.strip() for q in questions):
        raise PromptFileError(f"{path}: example_questions must be a list of non-empty strings")
    domain = _require_text(raw, "domain", path)
    retrieval, keywords = _parse_retrieval(raw.get("retrieval"), path, domain, {fact.topic for fact in facts})
    facts = tuple(Fact(fact.topic, fact.fact, keywords.get(fact.topic, ""), fact.retrieval_only) for fact in facts)
    return PromptSpec(
        domain=domain,
        title=_require_text(raw, "title", path),
        assistant_name=_require_text(raw, "assistant_name", path),
        base_system_prompt=_require_text(raw, "base_system_prompt", path),
        lora_system_prompt=_require_text(raw, "lora_system_prompt", path),
        system_prompt=_require_text(raw, "system_prompt", path),
        system_template=template,
        fact_sheet=facts,
        few_shot=shots,
        example_questions=tuple(q.strip() for q in questions),
        label=str(raw.get("label") or domain).strip(),
        emergency_guard=bool(raw.get("emergency_guard", False)),
        retrieval=retrieval,
    )


def _parse_retrieval(raw: object, path: Path, domain: str, topics: set[str]) -> tuple[RetrievalPrompt | None, dict[str, str]]:
    """The ``retrieval`` section and its pool file (example pool and fact keywords)."""
    if raw is None:
        return None, {}
    if not isinstance(raw, dict):
        raise PromptFileError(f"{path}: 'retrieval' must be a mapping")
    system_prompt = _require_text(raw, "system_prompt", path)
    pool_path = path.parent / str(raw.get("pool", f"retrieval/{domain}.yaml"))
    try:
        pool = yaml.safe_load(pool_path.read_text(encoding="utf-8")) or {}
        examples = tuple(FewShotExample(str(item["user"]).strip(), str(item["assistant"]).strip()) for item in pool["example_pool"])
        keywords = {str(topic): " ".join(str(words).split()) for topic, words in (pool.get("fact_keywords") or {}).items()}
        always = tuple(str(topic) for topic in raw.get("always", ()))
        settings = RetrievalSettings(int(raw.get("facts", 3)), int(raw.get("examples", 2)), always, float(raw.get("min_score", 0.0)))
    except OSError as exc:
        raise PromptFileError(f"{pool_path}: cannot read the retrieval pool ({exc.strerror})") from exc
    except (yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise PromptFileError(f"{pool_path}: needs 'example_pool' (user, assistant) and 'fact_keywords' ({exc!r})") from exc
    unknown = sorted((set(keywords) | set(always)) - topics)
    if unknown:
        raise PromptFileError(f"{path}: retrieval names fact topics that are not in the fact sheet: {', '.join(unknown)}")
    if not examples or settings.facts < 0 or settings.examples < 0:
        raise PromptFileError(f"{path}: retrieval needs a non-empty example pool and non-negative 'facts' and 'examples'")
    header = str(raw.get("facts_header", "Facts:")).strip()
    vote = _parse_question_vote(pool.get("question_vote"), pool_path, domain, topics)
    return RetrievalPrompt(system_prompt, header, settings, examples, vote), keywords


VOTE_KEYS = frozenset({"dialogs", "topics", "neighbours", "weight", "min_share"})


def _parse_question_vote(raw: object, pool_path: Path, domain: str, topics: set[str]) -> QuestionVote | None:
    """The pool's ``question_vote``: the first user turn of each dialog whose topic it maps to a fact.

    The dialogs are the domain pack's training split (``dialogs``/train.jsonl), unless the vote
    names a file (``dialogs``, relative to the pool file)."""
    if raw is None:
        return None
    where = f"{pool_path}: question_vote"
    if not isinstance(raw, dict) or not isinstance(raw.get("topics"), dict) or not raw["topics"] or not isinstance(raw.get("dialogs", ""), str):
        raise PromptFileError(f"{where} needs 'topics' (dialog topic: fact topic) and, if given, 'dialogs' as a path")
    unknown_keys = sorted(set(raw) - VOTE_KEYS)
    if unknown_keys:
        raise PromptFileError(f"{where}: unknown key(s) {', '.join(unknown_keys)} (known: {', '.join(sorted(VOTE_KEYS))})")
    defaults = QuestionVote(())
    neighbours, weight = raw.get("neighbours", defaults.neighbours), raw.get("weight", defaults.weight)
    if isinstance(neighbours, bool) or not isinstance(neighbours, int) or neighbours < 1:
        raise PromptFileError(f"{where}: 'neighbours' must be a whole number of at least 1, not {neighbours!r}")
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight) or weight < 0:
        raise PromptFileError(f"{where}: 'weight' must be a finite number of at least 0, not {weight!r}")
    min_share = raw.get("min_share", defaults.min_share)
    if isinstance(min_share, bool) or not isinstance(min_share, int | float) or not 0 <= min_share <= 1:
        raise PromptFileError(f"{where}: 'min_share' must be a number from 0 to 1, not {min_share!r}")
    mapping = {str(key): str(value) for key, value in raw["topics"].items()}
    unknown = sorted(set(mapping.values()) - topics)
    if unknown:
        raise PromptFileError(f"{where} maps to fact topics that are not in the fact sheet: {', '.join(unknown)}")
    if raw.get("dialogs"):
        dialogs_path = pool_path.parent / raw["dialogs"]
    else:
        try:
            dialogs_path = domains.pack(domain).file("dialogs") / "train.jsonl"
        except domains.PackError as exc:
            raise PromptFileError(f"{where}: no 'dialogs' given and no domain pack names them ({exc})") from None
    questions, seen = _labelled_questions(dialogs_path, mapping, where)
    unmatched = sorted(set(mapping) - seen)
    if unmatched:
        raise PromptFileError(f"{where}: no dialog of {dialogs_path} has the topic(s) {', '.join(unmatched)}")
    return QuestionVote(tuple(questions), neighbours, float(weight), float(min_share))


def _labelled_questions(path: Path, mapping: dict[str, str], where: str) -> tuple[list[tuple[str, str]], set[str]]:
    """(first user turn, fact topic) of each dialog whose topic is mapped, and the topics met."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise PromptFileError(f"{where}: cannot read {path} ({exc.strerror})") from exc
    questions, seen = [], set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            dialog = json.loads(line)
            topic, messages = dialog["topic"], dialog["messages"]
            first_user = next((m["content"] for m in messages if m["role"] == "user"), None)
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise PromptFileError(f"{where}: {path} line {number} is not a dialog with 'topic' and 'messages' ({exc!r})") from exc
        fact_topic = mapping.get(str(topic))
        if fact_topic is None:
            continue
        if not isinstance(first_user, str) or not first_user.strip():
            raise PromptFileError(f"{where}: {path} line {number} has no user turn with text")
        questions.append((first_user.strip(), fact_topic))
        seen.add(str(topic))
    return questions, seen


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
    """The prompt file its domain pack names."""
    try:
        path = domains.pack(domain).file("prompt")
    except domains.PackError as exc:
        raise PromptFileError(str(exc)) from None
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


@dataclass(frozen=True)
class RetrievalTools:
    """A domain's BM25 fact index and example selector, built once per prompt spec."""

    facts: FactRanker
    selector: BM25ExampleSelector
    template: ChatPromptTemplate


@cache
def retrieval_tools(spec: PromptSpec) -> RetrievalTools:
    design = spec.retrieval
    if design is None:
        raise PromptFileError(f"prompts/{spec.domain}.yaml has no 'retrieval' section")
    documents = [f"{fact.topic}. {fact.fact} {fact.keywords}" for fact in spec.fact_sheet]
    facts = FactRanker(documents, [fact.topic for fact in spec.fact_sheet], design.question_vote)
    examples = [{"user": shot.user, "assistant": shot.assistant} for shot in design.example_pool]
    selector = BM25ExampleSelector(examples, design.settings.examples, min_score=design.settings.min_score)
    example_prompt = ChatPromptTemplate.from_messages([("human", "{user}"), ("ai", "{assistant}")])
    few_shot = FewShotChatMessagePromptTemplate(example_selector=selector, example_prompt=example_prompt, input_variables=["query"])
    template = ChatPromptTemplate.from_messages([("system", "{system}"), few_shot, MessagesPlaceholder("history"), ("human", "{question}")])
    return RetrievalTools(facts, selector, template)


def without_question_vote(spec: PromptSpec) -> PromptSpec:
    """The same prompt with its facts ranked by BM25 over the sheet alone (the vote's ablation)."""
    if spec.retrieval is None:
        raise PromptFileError(f"prompts/{spec.domain}.yaml has no 'retrieval' section")
    return dataclasses.replace(spec, retrieval=dataclasses.replace(spec.retrieval, question_vote=None))


def retrieval_query(conversation: list[Message]) -> str:
    """What retrieval matches on: the last two user turns (a follow-up keeps its topic)."""
    users = [message["content"] for message in conversation if message["role"] == "user"]
    return " ".join(users[-2:])


def retrieved_facts(spec: PromptSpec, query: str, exclude: str | None = None) -> list[Fact]:
    """The facts always sent, then the best-ranked others for ``query``.

    ``exclude``: a labelled question left out of the vote (training/hybrid_data.py passes a
    training dialog's own first turn, so its retrieval is as a new message's would be).
    """
    design = spec.retrieval
    assert design is not None
    always = [fact for fact in spec.fact_sheet if fact.topic in design.settings.always]
    ranked = retrieval_tools(spec).facts.ranked(query, len(spec.fact_sheet), design.settings.min_score, exclude)
    others = [spec.fact_sheet[i] for i in ranked if spec.fact_sheet[i].topic not in design.settings.always]
    return always + others[: design.settings.facts]


def retrieval_system_message(spec: PromptSpec, facts: list[Fact], system_prompt: str | None = None) -> str:
    design = spec.retrieval
    assert design is not None
    text = system_prompt if system_prompt is not None else design.system_prompt
    if not facts:
        return text
    return f"{text}\n\n{design.facts_header}\n" + "\n".join(f"- {fact.topic}: {fact.fact}" for fact in facts)


def render_retrieval(spec: PromptSpec, conversation: list[Message], system_prompt: str | None = None, few_shot: tuple[FewShotExample, ...] | None = None) -> list[Message]:
    """Messages for the prompt method: short instruction + retrieved facts, selected examples, history, question.

    ``system_prompt`` replaces the instruction and ``few_shot`` the selected examples (the prompt lab).
    """
    if not conversation or conversation[-1]["role"] != "user":
        raise ValueError("the conversation must end with a user message")
    if spec.retrieval is None:
        return render_prompted(spec, conversation, system_prompt, few_shot)
    query = retrieval_query(conversation)
    system = retrieval_system_message(spec, retrieved_facts(spec, query), system_prompt)
    history, question = to_langchain(conversation[:-1]), conversation[-1]["content"]
    if few_shot is not None:
        fixed = _with_overrides(spec, None, few_shot)
        rendered = build_chat_prompt(fixed).format_messages(system=system, history=history, question=question)
    else:
        rendered = retrieval_tools(spec).template.format_messages(system=system, history=history, question=question, query=query)
    return to_chat_dicts(rendered)


def render_hybrid(spec: PromptSpec, conversation: list[Message], exclude: str | None = None) -> list[Message]:
    """Messages for the hybrid method: the prompt method's instruction and retrieved facts, then the
    conversation (no example dialogs: its adapter learned the style). Training renders its dialogs
    with this same function (training/hybrid_data.py), leaving the dialog's own first turn out of
    the question vote (``exclude``)."""
    if not conversation or conversation[-1]["role"] != "user":
        raise ValueError("the conversation must end with a user message")
    if spec.retrieval is None:
        raise PromptFileError(f"prompts/{spec.domain}.yaml has no 'retrieval' section: the hybrid method needs one")
    system = retrieval_system_message(spec, retrieved_facts(spec, retrieval_query(conversation), exclude))
    return [{"role": "system", "content": system}, *conversation]


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
