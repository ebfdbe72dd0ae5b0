"""Prompt data (one yaml file per domain) and its langchain-core renderer; see prompts/README.md."""

from prompts.loader import (
    FewShotExample,
    PromptFileError,
    PromptSpec,
    available_domains,
    load_prompt_spec,
    render_lora,
    render_prompted,
)

__all__ = ["FewShotExample", "PromptFileError", "PromptSpec", "available_domains", "load_prompt_spec", "render_lora", "render_prompted"]
