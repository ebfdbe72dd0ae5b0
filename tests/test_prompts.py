"""The prompt files parse, and both templates render to exactly the expected messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from prompts import PromptFileError, available_domains, load_prompt_spec, render_lora, render_prompted
from prompts.loader import load_prompt_file

SPECS = Path(__file__).resolve().parents[2] / "shared" / "domain_specs.md"


def test_every_domain_has_a_prompt_file() -> None:
    assert available_domains() == ["ecommerce", "medical"]


def test_prompted_rendering_is_exact() -> None:
    spec = load_prompt_spec("ecommerce")
    conversation = [
        {"role": "user", "content": "hi {not a variable}"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Return window?"},
    ]
    # Rules the instruction already states (retrieval_only) are not repeated on the static sheet.
    expected_system = spec.system_prompt + "\n\nStore facts:\n" + "\n".join(f"- {f.topic}: {f.fact}" for f in spec.fact_sheet if not f.retrieval_only)
    assert any(f.retrieval_only for f in spec.fact_sheet) and "- Security:" not in expected_system
    expected = [{"role": "system", "content": expected_system}]
    for shot in spec.few_shot:
        expected += [{"role": "user", "content": shot.user}, {"role": "assistant", "content": shot.assistant}]
    expected += conversation
    assert render_prompted(spec, conversation) == expected


def test_lora_rendering_is_short_system_prompt_plus_conversation() -> None:
    spec = load_prompt_spec("medical")
    conversation = [{"role": "user", "content": "I feel dizzy"}]
    assert render_lora(spec, conversation) == [{"role": "system", "content": spec.lora_system_prompt}, *conversation]
    assert "Rules:" not in spec.lora_system_prompt


def test_prompt_lab_overrides_replace_system_prompt_and_few_shot() -> None:
    spec = load_prompt_spec("medical")
    rendered = render_prompted(spec, [{"role": "user", "content": "q"}], system_prompt="Be brief.", few_shot=())
    assert rendered[0]["content"].startswith("Be brief.\n\nRules:\n- Emergencies first:")
    assert rendered[1:] == [{"role": "user", "content": "q"}]


def test_rendering_requires_a_final_user_message() -> None:
    spec = load_prompt_spec("ecommerce")
    with pytest.raises(ValueError):
        render_prompted(spec, [{"role": "assistant", "content": "hi"}])


@pytest.mark.skipif(not SPECS.is_file(), reason="shared/domain_specs.md is not beside the checkout")
def test_ecommerce_fact_sheet_is_copied_from_the_spec() -> None:
    spec_text = SPECS.read_text(encoding="utf-8")
    for fact in load_prompt_spec("ecommerce").fact_sheet:
        assert f"| {fact.topic} | {fact.fact} |" in spec_text


def test_malformed_prompt_file_names_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("domain: x\ntitle: t\n")
    with pytest.raises(PromptFileError, match="missing keys: assistant_name"):
        load_prompt_file(bad)
    bad.write_text("domain: [unclosed\n")
    with pytest.raises(PromptFileError, match="invalid YAML"):
        load_prompt_file(bad)
