"""Print the messages a prompt method sends for one question (retrieved facts and selected dialogs included).

    python -m prompts                      # ecommerce, its first example question, the prompt method
    python -m prompts medical --question "Is a fever of 38 C dangerous?"
    python -m prompts ecommerce --design static    # the static full-sheet ablation (or: hybrid)
"""

from __future__ import annotations

import sys

from bots.cli_args import CommandParser
from prompts.loader import PromptFileError, available_domains, load_prompt_spec, render_hybrid, render_prompted, render_retrieval

RENDERERS = {"prompt": render_retrieval, "hybrid": render_hybrid, "static": render_prompted}


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(prog="python -m prompts", description="Print the messages the prompt variant of a domain sends for one question.")
    parser.add_argument("domain", nargs="?", default="ecommerce", choices=available_domains())
    parser.add_argument("--question", help="the user's message (default: the domain's first example question)")
    parser.add_argument("--design", choices=sorted(RENDERERS), default="prompt", help="which method's messages (default: prompt, the retrieval design)")
    args = parser.parse_args(argv)
    try:
        spec = load_prompt_spec(args.domain)
    except PromptFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    question = args.question or spec.example_questions[0]
    for message in RENDERERS[args.design](spec, [{"role": "user", "content": question}]):
        print(f"--- {message['role']}\n{message['content']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
