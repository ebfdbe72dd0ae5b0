"""A tiny Llama model and byte-level BPE tokenizer, built in-process for hermetic tests.

The tokenizer uses the same ChatML chat template and special tokens as SmolLM2, so
prompt rendering, label masking and streaming behave as with the real model, while
the model (2 layers, width 64) runs a forward pass in milliseconds. No network.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from bots.base_model import LoadedBase

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "You are Northwind Assistant. Returns are accepted within 30 days of delivery.",
    "Standard shipping takes 3-5 business days and is free on orders over $50.",
    "You are CareCompass. Call 911 now or go to the nearest emergency department.",
    "This is general information and does not replace a clinician.",
    "user assistant system hello thanks what how can I return my order?",
    "The quick brown fox jumps over the lazy dog 0123456789 !?.,:;'\"()-",
]
TINY_FINGERPRINT = "tiny-test-model"


def make_tiny_tokenizer(vocab_size: int = 400) -> PreTrainedTokenizerFast:
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(CORPUS * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.model_max_length = 4096
    return tokenizer


def make_tiny_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.eval()
    return model


def make_tiny_base(seed: int = 0) -> LoadedBase:
    tokenizer = make_tiny_tokenizer()
    model = make_tiny_model(tokenizer, seed)
    return LoadedBase(model, tokenizer, "tiny-llama", TINY_FINGERPRINT, 0.0, False)


def save_tiny_adapter(folder: Path, fingerprint: str = TINY_FINGERPRINT, seed: int = 1) -> Path:
    """Write a random (non-zero) LoRA adapter for the tiny model, as training would ship it."""
    from peft import LoraConfig, get_peft_model

    base = make_tiny_base()  # its own copy: get_peft_model changes the model in place
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=False)
    torch.manual_seed(seed)
    peft_model = get_peft_model(base.model, config)
    peft_model.save_pretrained(folder)
    (folder / "tune_or_prompt.json").write_text(json.dumps({"domain": folder.name, "base_fingerprint": fingerprint}))
    (folder / "README.md").write_text(f"# tiny adapter {folder.name}\n")
    return folder
