"""Checking and cleaning a conversation before it reaches a bot.

A conversation is a list of ``{"role": "user"|"assistant", "content": str}`` that
alternates, starts with the user and ends with the user's new message. Control
characters, unpaired surrogates (they break tokenisers and logs) and chat-template markup
like ``<|im_start|>`` (it would forge turns) are removed;
anything else wrong raises ConversationError with a message fit for the user.
"""

from __future__ import annotations

import re
import unicodedata

Message = dict[str, str]
ROLES = ("user", "assistant")
# C0/C1 control characters except tab and newline.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# Chat-template markup such as <|im_start|>: typed by a user it would become real special
# tokens and forge turns (a fake system message), so it is removed from user text.
_CHAT_MARKUP = re.compile(r"<\|[A-Za-z0-9_]{1,32}\|>")


class ConversationError(ValueError):
    """The conversation cannot be answered as it is; the message says why."""


def clean_text(text: str) -> str:
    """Drop control characters, invalid Unicode and chat-template markup; normalise line ends."""
    text = text.encode("utf-8", errors="replace").decode("utf-8") if _has_surrogates(text) else text
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = _CHAT_MARKUP.sub("", text)
    return unicodedata.normalize("NFC", text)


def _has_surrogates(text: str) -> bool:
    return any("\ud800" <= char <= "\udfff" for char in text)


def clean_conversation(messages: list[Message]) -> list[Message]:
    """Validated copy of ``messages`` with cleaned text."""
    if not isinstance(messages, list) or not messages:
        raise ConversationError("there is no message to answer")
    cleaned: list[Message] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES or not isinstance(message.get("content"), str):
            raise ConversationError(f"message {index + 1} must have a role (user or assistant) and text content")
        expected = ROLES[index % 2]
        if message["role"] != expected:
            raise ConversationError(f"message {index + 1} should be from the {expected}: turns must alternate, starting with the user")
        text = clean_text(message["content"]).strip()
        if not text and message["role"] == "user":
            raise ConversationError("the message is empty: please type a question")
        cleaned.append({"role": message["role"], "content": text})
    if cleaned[-1]["role"] != "user":
        raise ConversationError("the last message must be the user's")
    return cleaned
