"""Print the rendered prompt-template messages of a sample turn: ``python -m prompts [domain]``."""

from prompts.loader import main

main()
