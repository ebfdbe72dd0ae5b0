"""Convert a PEFT LoRA adapter (safetensors) into a GGUF LoRA file that llama.cpp loads.

The llama.cpp backend serves the same adapters the training path writes. The conversion
is exact up to float rounding:

* tensor names follow llama.cpp's: ``model.layers.3.self_attn.q_proj`` -> ``blk.3.attn_q.weight``,
  with ``.lora_a`` / ``.lora_b`` suffixes;
* llama.cpp stores q and k projections with their rows permuted for its rotary layout
  (as every HF -> GGUF Llama conversion does), so lora_B of q and k gets the same row
  permutation: (P W) + (P B) A = P (W + B A);
* PEFT's scaling (alpha / r, per module, or alpha / sqrt(r) with rsLoRA) is folded into
  lora_B and the file's alpha is 0, which llama.cpp reads as "scale 1".

Converted files are cached by the adapter's content hash, so a warm start converts nothing.
Run by hand::

    python -m bots.gguf_lora bots/adapters/ecommerce out.gguf
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bots.cli_args import CommandParser

CONVERTER_VERSION = 1
"""Bump when the output format changes: cached files of older versions are then rebuilt."""

_PEFT_KEY = re.compile(r"^base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")
_GGUF_NAMES = {
    "q_proj": "attn_q",
    "k_proj": "attn_k",
    "v_proj": "attn_v",
    "o_proj": "attn_output",
    "gate_proj": "ffn_gate",
    "up_proj": "ffn_up",
    "down_proj": "ffn_down",
}


class LoraConversionError(ValueError):
    """The adapter uses something the converter cannot express in GGUF; the message says what."""


@dataclass(frozen=True)
class HeadLayout:
    """Attention head counts of the base model, needed for llama.cpp's q/k row order."""

    n_head: int
    n_head_kv: int


def _permute_rows(rows: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's rotary row order for one projection (the HF -> GGUF Llama permutation)."""
    out_dim = rows.shape[0]
    if out_dim % (2 * n_head):
        raise LoraConversionError(f"cannot permute {out_dim} rows into {n_head} heads")
    return rows.reshape(n_head, 2, out_dim // n_head // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def _module_scaling(config: dict, module: str, rank: int) -> float:
    """PEFT's scaling for one module, honouring rank_pattern / alpha_pattern and rsLoRA."""
    rank = int(_pattern_value(config.get("rank_pattern") or {}, module, config["r"]))
    alpha = float(_pattern_value(config.get("alpha_pattern") or {}, module, config["lora_alpha"]))
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def _pattern_value(patterns: dict, module: str, default: float) -> float:
    # PEFT matches a pattern key against the end of the module's full name.
    for key, value in patterns.items():
        if re.search(rf"(^|\.){key}$", module):
            return value
    return default


def _check_supported(config: dict) -> None:
    if config.get("peft_type") != "LORA":
        raise LoraConversionError(f"not a LoRA adapter (peft_type {config.get('peft_type')!r})")
    unsupported = {
        "use_dora": "DoRA",
        "lora_bias": "LoRA bias",
        "modules_to_save": "modules_to_save",
        "fan_in_fan_out": "fan_in_fan_out",
        "trainable_token_indices": "trainable tokens",
    }
    for key, what in unsupported.items():
        if config.get(key):
            raise LoraConversionError(f"adapters with {what} cannot be converted to GGUF LoRA")


def convert_peft_adapter(adapter_dir: Path, out_path: Path, heads: HeadLayout, dtype: type = np.float32) -> Path:
    """Write ``out_path`` (a GGUF LoRA) from the PEFT adapter in ``adapter_dir``; returns it."""
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    _check_supported(config)
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    pairs: dict[tuple[int, str, str], dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        match = _PEFT_KEY.match(key)
        if not match:
            raise LoraConversionError(f"adapter tensor {key!r} is not a LoRA weight of a decoder layer")
        layer, block, proj, side = match.groups()
        if proj not in _GGUF_NAMES:
            raise LoraConversionError(f"adapter targets {proj!r}, which has no llama.cpp counterpart")
        pairs.setdefault((int(layer), block, proj), {})[side] = value

    writer = gguf.GGUFWriter(str(out_path.with_suffix(out_path.suffix + ".tmp")), "llama")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 0.0)  # 0 means scale 1: PEFT's scaling is in lora_b
    for (layer, block, proj), sides in sorted(pairs.items()):
        if set(sides) != {"A", "B"}:
            raise LoraConversionError(f"layer {layer} {proj}: lora_A and lora_B must both be present")
        lora_a, lora_b = sides["A"].astype(np.float32), sides["B"].astype(np.float32)
        if lora_a.shape[0] != lora_b.shape[1]:
            raise LoraConversionError(f"layer {layer} {proj}: rank of lora_A {lora_a.shape} and lora_B {lora_b.shape} differ")
        lora_b = lora_b * _module_scaling(config, f"model.layers.{layer}.{block}.{proj}", lora_a.shape[0])
        if proj == "q_proj":
            lora_b = _permute_rows(lora_b, heads.n_head)
        elif proj == "k_proj":
            lora_b = _permute_rows(lora_b, heads.n_head_kv)
        name = f"blk.{layer}.{_GGUF_NAMES[proj]}.weight"
        # numpy (r, in) and (out, r) become ggml ne (in, r) and (r, out): what llama.cpp checks.
        writer.add_tensor(f"{name}.lora_a", np.ascontiguousarray(lora_a.astype(dtype)))
        writer.add_tensor(f"{name}.lora_b", np.ascontiguousarray(lora_b.astype(dtype)))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(out_path.with_suffix(out_path.suffix + ".tmp"), out_path)  # atomic: never a half-written cache entry
    return out_path


def read_head_layout(base_gguf: Path) -> HeadLayout:
    """Head counts from a Llama GGUF file's metadata."""
    import gguf

    reader = gguf.GGUFReader(str(base_gguf))
    arch = _field_str(reader, "general.architecture")
    values = {}
    for key in ("attention.head_count", "attention.head_count_kv"):
        field = reader.fields.get(f"{arch}.{key}")
        if field is None:
            raise LoraConversionError(f"{base_gguf.name} has no {arch}.{key}")
        values[key] = int(field.parts[field.data[0]][0])
    return HeadLayout(values["attention.head_count"], values["attention.head_count_kv"])


def _field_str(reader: object, key: str) -> str:
    field = reader.fields[key]  # type: ignore[attr-defined]
    return bytes(field.parts[field.data[0]]).decode()


def cached_gguf_lora(adapter_dir: Path, cache_dir: Path, heads: HeadLayout) -> Path:
    """The GGUF LoRA of ``adapter_dir``, converted on first use and then reused."""
    digest = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        digest.update((adapter_dir / name).read_bytes())
    digest.update(f"{CONVERTER_VERSION}:{heads.n_head}:{heads.n_head_kv}".encode())
    out = cache_dir / "gguf-lora" / f"{adapter_dir.name}-{digest.hexdigest()[:16]}.gguf"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        convert_peft_adapter(adapter_dir, out, heads)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = CommandParser(prog="python -m bots.gguf_lora", description=__doc__.splitlines()[0])
    parser.add_argument("adapter_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--base-gguf", type=Path, help="base model GGUF (default: the embedded SmolLM2)")
    args = parser.parse_args(argv)
    from bots.base_model import embedded_gguf_path

    heads = read_head_layout(args.base_gguf or embedded_gguf_path())
    path = convert_peft_adapter(args.adapter_dir, args.out, heads)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
