"""A GGUF copy of the base model that keeps only its first N transformer blocks.

The learned emergency detector (bots/detector.py) reads the hidden state after block N (put
through the model's final norm and averaged over the message), where a linear probe tells
emergencies from ordinary questions better than at the last block (measured on the dev
set: see bots/safety_eval/README.md). llama.cpp returns only the last hidden state, so the
llama.cpp backend embeds with a copy of the GGUF cut after block N: the same weights, the
same quantisation, N/30 of the compute. The transformers backend takes the same vector from
``hidden_states[N]``.

The copy is made once and cached by the source file's hash and N, written atomically:

    python -m bots.gguf_truncate BASE.gguf 21 OUT.gguf
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from bots.cli_args import CommandParser

_BLOCK = re.compile(r"^blk\.(\d+)\.")


def copy_fields(reader: object, writer: object, overrides: dict[str, object] | None = None) -> None:
    """Every metadata field of a GGUF reader into a writer (``overrides`` replace values by key)."""
    import gguf

    for field in reader.fields.values():  # type: ignore[attr-defined]
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue  # written by the writer itself
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        value = (overrides or {}).get(field.name, field.contents())
        writer.add_key_value(field.name, value, value_type, sub_type=sub_type)  # type: ignore[attr-defined]


def truncate_gguf(source: Path, blocks: int, out: Path) -> Path:
    """Write ``out``: ``source`` with blocks ``>= blocks`` removed and the block count set to ``blocks``."""
    import gguf

    reader = gguf.GGUFReader(str(source))
    arch = str(reader.fields[gguf.Keys.General.ARCHITECTURE].contents())
    count_key = gguf.Keys.LLM.BLOCK_COUNT.format(arch=arch)
    total = int(reader.fields[count_key].contents())
    if not 0 < blocks <= total:
        raise ValueError(f"{source.name} has {total} blocks; cannot keep {blocks}")
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(tmp), arch=arch, endianess=reader.endianess)
    copy_fields(reader, writer, {count_key: blocks})
    kept = [t for t in reader.tensors if not (m := _BLOCK.match(t.name)) or int(m.group(1)) < blocks]
    for tensor in kept:
        writer.add_tensor_info(tensor.name, tensor.data.shape, tensor.data.dtype, tensor.data.nbytes, tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in kept:
        writer.write_tensor_data(tensor.data, tensor_endianess=reader.endianess)
    writer.close()
    os.replace(tmp, out)
    return out


def cached_truncated_gguf(source: Path, blocks: int, cache_dir: Path, source_sha256: str) -> Path:
    """The truncated copy in ``cache_dir/detector-gguf``, made on first use."""
    out = cache_dir / "detector-gguf" / f"{source_sha256[:16]}-blocks{blocks}.gguf"
    return out if out.is_file() else truncate_gguf(source, blocks, out)


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(prog="python -m bots.gguf_truncate", description="Copy a GGUF model keeping only its first N blocks.")
    parser.add_argument("source", type=Path)
    parser.add_argument("blocks", type=int)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    if not args.source.is_file():
        parser.error(f"no such file: {args.source}")
    try:
        path = truncate_gguf(args.source, args.blocks, args.out)
    except ValueError as exc:
        parser.error(str(exc))
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
