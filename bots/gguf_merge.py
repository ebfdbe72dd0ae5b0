"""Fold a GGUF LoRA into the base model's weights: one GGUF per adapter, served at base speed.

llama.cpp applies a LoRA as two extra small matrix products per adapted weight (210 in
the shipped adapters); on 2 cores those extra graph nodes make an adapter variant decode
slower than the bare base (``python -m benchmarks.serving``). A merged copy has the base's
shapes, so it decodes at the base's speed; the price is one file per adapter
(memory-mapped) and a context of its own in the backbone (bots/llama_backbone.py,
``merge_adapters``).

Each adapted weight W becomes W + B A (the GGUF LoRA already holds B with PEFT's scaling
and the q/k row order folded in: bots/gguf_lora.py), computed in float32 from the
dequantised base, then stored as ``weight_type``. Which type matters: stored back as the
base's Q4_1, most of an adapter's small changes round away (measured here: greedy replies
then follow the bare base, not the adapter); Q8_0 keeps them, at 1.5x the file size.

Merged files are cached by the base's and the adapter's content hashes:

    python -m bots.gguf_merge BASE.gguf ADAPTER.gguf OUT.gguf
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from bots.cli_args import CommandParser
from bots.gguf_truncate import copy_fields

MERGE_VERSION = 1
"""Bump when the merged output changes: cached files of older versions are then rebuilt."""


class MergeError(ValueError):
    """The adapter does not fit the base model; the message says where."""


def merge_lora_gguf(base_gguf: Path, lora_gguf: Path, out: Path, weight_type: str | None = None) -> Path:
    """Write ``out``: ``base_gguf`` with every weight the LoRA adapts replaced by W + B A.

    ``weight_type`` (a GGML type name such as "Q8_0"): how the merged weights are stored;
    None keeps each weight's own type."""
    import gguf
    from gguf.quants import dequantize

    if weight_type is not None and weight_type not in gguf.GGMLQuantizationType.__members__:
        raise MergeError(f"unknown GGML weight type {weight_type!r} (for example Q8_0, Q4_1, F16, F32)")
    lora = _lora_pairs(lora_gguf)
    reader = gguf.GGUFReader(str(base_gguf))
    arch = str(reader.fields[gguf.Keys.General.ARCHITECTURE].contents())
    missing = sorted(set(lora) - {t.name for t in reader.tensors})
    if missing:
        raise MergeError(f"{lora_gguf.name} adapts {missing[0]}, which {base_gguf.name} does not have")
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        writer = gguf.GGUFWriter(str(tmp), arch=arch, endianess=reader.endianess)
        copy_fields(reader, writer)
        data: list[np.ndarray] = []
        for tensor in reader.tensors:
            raw = tensor.data
            if tensor.name in lora:
                lora_a, lora_b = lora[tensor.name]
                weight = dequantize(raw, tensor.tensor_type).astype(np.float32)
                if weight.shape != (lora_b.shape[0], lora_a.shape[1]):
                    raise MergeError(f"{tensor.name}: weight {weight.shape} does not match LoRA B {lora_b.shape} A {lora_a.shape}")
                merged = weight + lora_b @ lora_a
                qtype = gguf.GGMLQuantizationType[weight_type] if weight_type else tensor.tensor_type
                raw = _store(merged, qtype)
                writer.add_tensor_info(tensor.name, raw.shape, raw.dtype, raw.nbytes, qtype)
            else:
                writer.add_tensor_info(tensor.name, raw.shape, raw.dtype, raw.nbytes, tensor.tensor_type)
            data.append(raw)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for raw in data:
            writer.write_tensor_data(raw, tensor_endianess=reader.endianess)
        writer.close()
    except BaseException:
        tmp.unlink(missing_ok=True)  # a refused adapter leaves nothing behind
        raise
    os.replace(tmp, out)  # atomic: never a half-written cache entry
    return out


def _lora_pairs(lora_gguf: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """weight name -> (A of shape (r, in), B of shape (out, r)), float32, scale folded into B."""
    import gguf

    reader = gguf.GGUFReader(str(lora_gguf))
    alpha_field = reader.fields.get(gguf.Keys.Adapter.LORA_ALPHA)
    alpha = float(alpha_field.contents()) if alpha_field is not None else 0.0
    sides: dict[str, dict[str, np.ndarray]] = {}
    for tensor in reader.tensors:
        name, _, side = tensor.name.rpartition(".")
        if side not in ("lora_a", "lora_b"):
            raise MergeError(f"{lora_gguf.name}: {tensor.name} is not a LoRA tensor")
        sides.setdefault(name, {})[side] = np.asarray(tensor.data, dtype=np.float32)
    pairs = {}
    for name, pair in sides.items():
        if set(pair) != {"lora_a", "lora_b"}:
            raise MergeError(f"{lora_gguf.name}: {name} needs both lora_a and lora_b")
        lora_a, lora_b = pair["lora_a"], pair["lora_b"]
        if alpha:  # llama.cpp's rule: a non-zero alpha scales the product by alpha / rank
            lora_b = lora_b * (alpha / lora_a.shape[0])
        pairs[name] = (lora_a, lora_b)
    return pairs


def _store(weights: np.ndarray, qtype: object) -> np.ndarray:
    import gguf
    from gguf.quants import quantize

    plain = {gguf.GGMLQuantizationType.F32: np.float32, gguf.GGMLQuantizationType.F16: np.float16}
    return weights.astype(plain[qtype]) if qtype in plain else quantize(weights, qtype)


def cached_merged_gguf(base_gguf: Path, base_fingerprint: str, lora_gguf: Path, cache_dir: Path, weight_type: str | None = None) -> Path:
    """The merged GGUF of base and adapter, built on first use and then reused."""
    digest = hashlib.sha256(f"{MERGE_VERSION}:{base_fingerprint}:{weight_type}:".encode())
    digest.update(lora_gguf.read_bytes())
    out = cache_dir / "merged-gguf" / f"{lora_gguf.stem}-{digest.hexdigest()[:16]}.gguf"
    if not out.is_file():
        merge_lora_gguf(base_gguf, lora_gguf, out, weight_type)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = CommandParser(prog="python -m bots.gguf_merge", description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path, help="the base model GGUF")
    parser.add_argument("adapter", type=Path, help="a GGUF LoRA of that base (python -m bots.gguf_lora makes one)")
    parser.add_argument("out", type=Path)
    parser.add_argument("--weight-type", default=None, help="GGML type of the merged weights, e.g. Q8_0 (default: each weight's own)")
    args = parser.parse_args(argv)
    path = merge_lora_gguf(args.base, args.adapter, args.out, args.weight_type)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
