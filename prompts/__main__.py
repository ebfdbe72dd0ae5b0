"""Print the rendered prompt-template messages of a sample turn.

    python -m prompts                      # ecommerce, its first example question
    python -m prompts medical --question "Is a fever of 38 C dangerous?"
"""

from __future__ import annotations

import sys

from bots.cli_args import CommandParser
from prompts.loader import PromptFileError, available_domains, load_prompt_spec, render_prompted


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(prog="python -m prompts", description="Print the messages the prompt variant of a domain sends for one question.")
    parser.add_argument("domain", nargs="?", default="ecommerce", choices=available_domains())
    parser.add_argument("--question", help="the user's message (default: the domain's first example question)")
    args = parser.parse_args(argv)
    try:
        spec = load_prompt_spec(args.domain)
    except PromptFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    question = args.question or spec.example_questions[0]
    for message in render_prompted(spec, [{"role": "user", "content": question}]):
        print(f"--- {message['role']}\n{message['content']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
