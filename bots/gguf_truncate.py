"""A GGUF copy of the base model that keeps only its first N transformer blocks.

The learned emergency detector (bots/detector.py) reads the hidden state after block N (put
through the model's final norm and averaged over the message), where a linear probe tells
emergencies from ordinary questions better than at the last block (measured on the dev
set: see bots/safety_eval/README.md). llama.cpp returns only the last hidden state, so the
llama.cpp backend embeds with a copy of the GGUF cut after block N: the same weights, the
same quantisation, N/30 of the compute. The transformers backend takes the same vector from
``hidden_states[N]``.

The detector's copy is also *headless*: no vocabulary and a one-row token embedding. llama.cpp
computes the output layer for every position of an embedding batch even though pooling reads
only the hidden states; over 49,152 tokens that was a third of the detector's time (22 ms of
a 20-token message, measured). A headless copy's output layer has one row, and it is fed the
message's token vectors (``TokenRows``, read from the source file) instead of token ids: the
same numbers, bit for bit, for less work.

A copy may also take its block weights in another format (``weights="Q4_0"``): dequantised
from the source's and quantised again. A Q4_0 copy, whose weights llama.cpp repacks for its
AVX2 kernels, ran its forward pass in 0.57-0.62x the time of the Q4_1 copy (33-34 against 54-59
ms at block 15, messages of tiers_dev, two runs of benchmarks.detector), for features at cosine 0.99 to the Q4_1 ones; a
detector must then be fitted on them (``train_detector --copy-weights Q4_0``). The shipped
detector is not: see training/train_detector.py, DEFAULT_COPY_WEIGHTS.

The copy is made once and cached by the source file's hash, N and the kind, written atomically:

    python -m bots.gguf_truncate BASE.gguf 21 OUT.gguf [--headless] [--weights Q4_0]
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from bots.cli_args import CommandParser

_BLOCK = re.compile(r"^blk\.(\d+)\.")
TOKEN_EMBD = "token_embd.weight"
OUTPUT = "output.weight"


def copy_fields(reader: object, writer: object, overrides: dict[str, object] | None = None, skip: Callable[[str], bool] | None = None) -> None:
    """Every metadata field of a GGUF reader into a writer (``overrides`` replace values by
    key; fields whose name ``skip`` accepts stay out)."""
    import gguf

    for field in reader.fields.values():  # type: ignore[attr-defined]
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue  # written by the writer itself
        if skip is not None and skip(field.name):
            continue
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        value = (overrides or {}).get(field.name, field.contents())
        writer.add_key_value(field.name, value, value_type, sub_type=sub_type)  # type: ignore[attr-defined]


def _kept(reader: object, blocks: int, headless: bool) -> list:
    dropped = {TOKEN_EMBD, OUTPUT} if headless else set()
    return [
        t
        for t in reader.tensors  # type: ignore[attr-defined]
        if t.name not in dropped and (not (m := _BLOCK.match(t.name)) or int(m.group(1)) < blocks)
    ]


def requantised(tensor: object, weights: str | None) -> tuple[np.ndarray, object]:
    """A tensor's data and type in the copy: as in the source, or, for a quantised matrix whose
    rows fit the target's blocks, dequantised and quantised again as ``weights``."""
    import gguf
    from gguf.quants import dequantize, quantize

    data, kind = np.asarray(tensor.data), tensor.tensor_type  # type: ignore[attr-defined]
    if weights is None:
        return data, kind
    target = gguf.GGMLQuantizationType[weights]
    unquantised = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.BF16)
    shape = tuple(int(n) for n in reversed(tensor.shape))  # type: ignore[attr-defined]  # GGUF shapes run innermost first
    block = gguf.GGML_QUANT_SIZES[target][0]
    if kind in unquantised or kind == target or len(shape) != 2 or shape[-1] % block:
        return data, kind  # norms and biases stay exact
    return quantize(dequantize(data, kind).reshape(shape), target), target


def truncate_gguf(source: Path, blocks: int, out: Path, headless: bool = False, weights: str | None = None) -> Path:
    """Write ``out``: ``source`` with blocks ``>= blocks`` removed and the block count set to
    ``blocks``. ``headless``: also without the vocabulary, the token embedding and the output
    layer, which become one placeholder row (the tied output of a one-token vocabulary); such
    a copy is fed token vectors (``TokenRows``), never token ids. ``weights`` (a GGML type name
    such as ``Q4_0``): the quantised matrices of the kept blocks in that format (``requantised``)."""
    import gguf

    if weights is not None and weights not in gguf.GGMLQuantizationType.__members__:
        raise ValueError(f"unknown weight format {weights!r} (a GGML type such as Q4_0)")

    reader = gguf.GGUFReader(str(source))
    arch = str(reader.fields[gguf.Keys.General.ARCHITECTURE].contents())
    count_key = gguf.Keys.LLM.BLOCK_COUNT.format(arch=arch)
    vocab_key = gguf.Keys.LLM.VOCAB_SIZE.format(arch=arch)
    total = int(reader.fields[count_key].contents())
    if not 0 < blocks <= total:
        raise ValueError(f"{source.name} has {total} blocks; cannot keep {blocks}")
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(tmp), arch=arch, endianess=reader.endianess)
    if headless:
        placeholder = np.zeros((1, int(_token_embedding(reader, source).shape[0])), dtype=np.float32)  # (n_embd, n_vocab)
        writer.add_key_value("tokenizer.ggml.model", "none", gguf.GGUFValueType.STRING)  # llama.cpp: no vocabulary
        writer.add_key_value(vocab_key, 1, gguf.GGUFValueType.UINT32)
    vocabulary = (lambda name: name.startswith("tokenizer.") or name == vocab_key) if headless else None
    copy_fields(reader, writer, {count_key: blocks}, skip=vocabulary)
    kept = [(tensor.name, *requantised(tensor, weights)) for tensor in _kept(reader, blocks, headless)]
    if headless:
        writer.add_tensor_info(TOKEN_EMBD, placeholder.shape, placeholder.dtype, placeholder.nbytes, gguf.GGMLQuantizationType.F32)
    for name, data, kind in kept:
        writer.add_tensor_info(name, data.shape, data.dtype, data.nbytes, kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    if headless:
        writer.write_tensor_data(placeholder)
    for _, data, _ in kept:
        writer.write_tensor_data(data, tensor_endianess=reader.endianess)
    writer.close()
    os.replace(tmp, out)
    return out


def cached_truncated_gguf(source: Path, blocks: int, cache_dir: Path, source_sha256: str, headless: bool = False, weights: str | None = None) -> Path:
    """The truncated copy in ``cache_dir/detector-gguf``, made on first use."""
    kind = ("-headless" if headless else "") + (f"-{weights.lower()}" if weights else "")
    out = cache_dir / "detector-gguf" / f"{source_sha256[:16]}-blocks{blocks}{kind}.gguf"
    return out if out.is_file() else truncate_gguf(source, blocks, out, headless, weights)


def _token_embedding(reader: object, source: Path) -> object:
    """The token-embedding tensor of a GGUF reader; ValueError when the file has none."""
    tensor = next((t for t in reader.tensors if t.name == TOKEN_EMBD), None)  # type: ignore[attr-defined]
    if tensor is None:
        raise ValueError(f"{source.name} has no {TOKEN_EMBD}")
    return tensor


class TokenRows:
    """The token-embedding rows of a GGUF file, dequantised on demand to float32: the input
    of a headless copy. The file is memory-mapped (the pages llama.cpp maps too); a message's
    rows take well under a millisecond."""

    def __init__(self, source: Path) -> None:
        import gguf

        tensor = _token_embedding(gguf.GGUFReader(str(source)), source)
        self._data = tensor.data
        self._type = tensor.tensor_type
        self.width = int(tensor.shape[0])  # GGUF shapes run innermost first: (n_embd, n_vocab)
        self.count = int(tensor.shape[1])

    def __call__(self, tokens: Sequence[int]) -> np.ndarray:
        """Rows ``tokens`` as a C-ordered (len(tokens), width) float32 array."""
        from gguf.quants import dequantize

        ids = np.asarray(tokens, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.count):
            raise ValueError(f"token ids must be in [0, {self.count})")
        rows = np.asarray(self._data[ids])
        values = rows if rows.dtype in (np.float32, np.float16) else dequantize(rows, self._type)
        return np.ascontiguousarray(values.reshape(len(ids), self.width), dtype=np.float32)


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(prog="python -m bots.gguf_truncate", description="Copy a GGUF model keeping only its first N blocks.")
    parser.add_argument("source", type=Path)
    parser.add_argument("blocks", type=int)
    parser.add_argument("out", type=Path)
    parser.add_argument("--headless", action="store_true", help="no vocabulary, token embedding or output layer: fed token vectors (the detector's copy)")
    parser.add_argument("--weights", default=None, help="the kept blocks' quantised matrices in this GGML format, e.g. Q4_0 (default: as in the source)")
    args = parser.parse_args(argv)
    if not args.source.is_file():
        parser.error(f"no such file: {args.source}")
    try:
        path = truncate_gguf(args.source, args.blocks, args.out, args.headless, args.weights)
    except ValueError as exc:
        parser.error(str(exc))
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
