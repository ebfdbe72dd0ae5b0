"""A thin, typed layer over llama-cpp-python's C API: one model, its vocabulary, contexts, adapters.

Only what the llama.cpp backend (bots.llama_backbone) needs: tokenize and detokenize,
GGUF metadata, LoRA adapters, and contexts that decode a batch of token runs for several
sequences at once and hand back the last logits of each run. llama-cpp-python's
high-level ``Llama`` class keeps one sequence and one adapter set per instance; the
backend needs several sequences with their own prefix caches, so it uses the C API.

Importing this module imports llama_cpp; callers check ``llama_cpp_installed()`` first.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def llama_cpp_installed() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


class LlamaEngineError(RuntimeError):
    """llama.cpp refused a model, adapter or batch; the message says which."""


@dataclass(frozen=True)
class Run:
    """Tokens to append to one sequence, starting at position ``start``."""

    seq: int
    tokens: Sequence[int]
    start: int
    want_logits: bool = True
    """False for a chunk of a longer prompt: nobody needs its logits."""


class LlamaModel:
    """A GGUF model loaded once (memory-mapped), with its vocabulary and adapters."""

    def __init__(self, gguf_path: Path, threads: int | None = None) -> None:
        import llama_cpp

        self._lib = llama_cpp
        _quiet_llama_logs(llama_cpp)
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        self.model = llama_cpp.llama_model_load_from_file(str(gguf_path).encode(), params)
        if not self.model:
            raise LlamaEngineError(f"llama.cpp could not load {gguf_path}")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self.vocab))
        self.threads = threads or os.cpu_count() or 1
        self.n_head = int(llama_cpp.llama_model_n_head(self.model))
        self.n_head_kv = int(llama_cpp.llama_model_n_head_kv(self.model))
        self.n_layer = int(llama_cpp.llama_model_n_layer(self.model))
        self.n_embd = int(llama_cpp.llama_model_n_embd(self.model))
        self.path = Path(gguf_path)
        self._piece_cache: dict[int, bytes] = {}

    # --- metadata and vocabulary ------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        size = 1 << 16
        buf = ctypes.create_string_buffer(size)
        n = self._lib.llama_model_meta_val_str(self.model, key.encode(), buf, size)
        return None if n < 0 else buf.value.decode("utf-8", errors="replace")

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        """Token ids of ``text``; ``special``: chat markup such as <|im_start|> becomes its token."""
        data = text.encode("utf-8")
        capacity = len(data) + 16
        out = (self._lib.llama_token * capacity)()
        n = self._lib.llama_tokenize(self.vocab, data, len(data), out, capacity, False, special)
        if n < 0:  # the buffer was too small: -n is the size needed
            capacity = -n
            out = (self._lib.llama_token * capacity)()
            n = self._lib.llama_tokenize(self.vocab, data, len(data), out, capacity, False, special)
        return list(out[:n])

    def piece(self, token: int) -> bytes:
        """The bytes of one token; special tokens (chat markup) give b''."""
        cached = self._piece_cache.get(token)
        if cached is None:
            buf = ctypes.create_string_buffer(64)
            n = self._lib.llama_token_to_piece(self.vocab, token, buf, 64, 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = self._lib.llama_token_to_piece(self.vocab, token, buf, -n, 0, False)
            cached = self._piece_cache[token] = buf.raw[:n]
        return cached

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        """Text of the tokens (special tokens left out), like a Hugging Face tokenizer's decode."""
        return b"".join(self.piece(t) for t in token_ids).decode("utf-8", errors="replace")

    def is_end_of_generation(self, token: int) -> bool:
        return bool(self._lib.llama_vocab_is_eog(self.vocab, token))

    # --- adapters and contexts ----------------------------------------------------------------

    def load_adapter(self, gguf_lora: Path) -> int:
        """Load a GGUF LoRA for this model; returns an opaque handle for ``Context.set_adapter``."""
        handle = self._lib.llama_adapter_lora_init(self.model, str(gguf_lora).encode())
        if not handle:
            raise LlamaEngineError(f"llama.cpp refused the LoRA adapter {gguf_lora.name} (wrong base model or format)")
        return handle

    def new_context(self, tokens_per_sequence: int, sequences: int, batch_tokens: int = 512) -> Context:
        """A context with ``sequences`` sequences of up to ``tokens_per_sequence`` positions each."""
        return Context(self, tokens_per_sequence, sequences, batch_tokens)


class Context:
    """A KV cache for ``sequences`` sequences; decodes batches of runs."""

    def __init__(self, model: LlamaModel, tokens_per_sequence: int, sequences: int, batch_tokens: int) -> None:
        lib = model._lib
        self._lib = lib
        self.model = model
        params = lib.llama_context_default_params()
        params.n_ctx = tokens_per_sequence * sequences
        params.n_batch = batch_tokens
        params.n_ubatch = batch_tokens
        params.n_seq_max = sequences
        params.n_threads = model.threads
        params.n_threads_batch = model.threads
        # A KV buffer per sequence: a sequence's cells then sit in the order of their positions,
        # as in a fresh context, so its results do not depend on what other sequences hold.
        params.kv_unified = False
        # Flash attention makes a token's result depend on how the prompt was split into
        # batches (differences of ~0.5 in the logits); without it, with the llamafile GEMM off
        # at build time, a reply is the same however requests were chunked, cached or batched.
        # Measured here: no speed difference on the CPU either way.
        params.flash_attn_type = 0  # LLAMA_FLASH_ATTN_TYPE_DISABLED
        params.no_perf = True
        self.ctx = lib.llama_init_from_model(model.model, params)
        if not self.ctx:
            raise LlamaEngineError("llama.cpp could not create a context (out of memory?)")
        self.memory = lib.llama_get_memory(self.ctx)
        self.batch_tokens = batch_tokens
        self._batch = lib.llama_batch_init(batch_tokens, 0, 1)
        self._adapter: int | None = None
        self._adapter_array = (lib.llama_adapter_lora_p_ctypes * 1)()
        self._scale_array = (ctypes.c_float * 1)(1.0)

    def set_adapter(self, handle: int | None) -> None:
        """The LoRA applied to everything this context decodes from now on (None: the bare base)."""
        if handle == self._adapter:
            return
        if handle is None:
            rc = self._lib.llama_set_adapters_lora(self.ctx, None, 0, None)
        else:
            self._adapter_array[0] = handle
            rc = self._lib.llama_set_adapters_lora(self.ctx, self._adapter_array, 1, self._scale_array)
        if rc != 0:
            raise LlamaEngineError(f"llama.cpp could not switch the LoRA adapter (code {rc})")
        self._adapter = handle

    def forget(self, seq: int, from_position: int = 0) -> None:
        """Drop a sequence's cached tokens from ``from_position`` on."""
        self._lib.llama_memory_seq_rm(self.memory, seq, from_position, -1)

    def save_sequence(self, seq: int, tokens: Sequence[int], path: Path) -> bool:
        """Write a sequence's KV cache and its tokens to ``path`` (atomically); False on failure."""
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        array = (self._lib.llama_token * len(tokens))(*tokens)
        written = self._lib.llama_state_seq_save_file(self.ctx, str(tmp).encode(), seq, array, len(tokens))
        if not written:
            tmp.unlink(missing_ok=True)
            return False
        os.replace(tmp, path)
        return True

    def load_sequence(self, seq: int, path: Path, capacity: int) -> list[int] | None:
        """Fill an empty sequence from a file of ``save_sequence``; its tokens, or None if unusable."""
        tokens = (self._lib.llama_token * capacity)()
        count = ctypes.c_size_t(0)
        read = self._lib.llama_state_seq_load_file(self.ctx, str(path).encode(), seq, tokens, capacity, ctypes.byref(count))
        if not read:
            self.forget(seq, 0)
            return None
        return list(tokens[: count.value])

    def share(self, source: int, target: int, length: int) -> None:
        """Give sequence ``target`` the first ``length`` cached positions of ``source``.

        Separate KV buffers can only be copied whole (llama.cpp asserts otherwise): copy it
        all, then drop what follows the prefix."""
        self._lib.llama_memory_seq_cp(self.memory, source, target, -1, -1)
        self.forget(target, length)

    def decode(self, runs: Sequence[Run]) -> list[np.ndarray | None]:
        """Append every run to its sequence; returns the logits after each run's last token
        (None for runs that do not want them).

        Runs longer than the batch are fed in chunks; all runs must fit the context.
        """
        if any(not run.tokens for run in runs):
            raise LlamaEngineError("every run needs at least one token")
        logits: list[np.ndarray | None] = [None] * len(runs)
        pending = [(index, 0) for index in range(len(runs))]  # (run index, tokens already fed)
        batch = self._batch
        while pending:
            n = 0
            wanted: list[tuple[int, int]] = []  # (run index, row of the batch whose logits we need)
            carry: list[tuple[int, int]] = []
            for index, done in pending:
                run = runs[index]
                take = min(self.batch_tokens - n, len(run.tokens) - done)
                for i in range(done, done + take):
                    last = i == len(run.tokens) - 1
                    batch.token[n] = run.tokens[i]
                    batch.pos[n] = run.start + i
                    batch.n_seq_id[n] = 1
                    batch.seq_id[n][0] = run.seq
                    batch.logits[n] = last and run.want_logits
                    if last and run.want_logits:
                        wanted.append((index, n))
                    n += 1
                if done + take < len(run.tokens):
                    carry.append((index, done + take))
            batch.n_tokens = n
            rc = self._lib.llama_decode(self.ctx, batch)
            if rc != 0:
                raise LlamaEngineError(f"llama.cpp decode failed (code {rc}; 1 means the context is full)")
            for index, row in wanted:
                logits[index] = self._logits(row)
            pending = carry
        return logits

    def decode_every(self, seq: int, tokens: Sequence[int], start: int) -> np.ndarray:
        """Append ``tokens`` to sequence ``seq`` from position ``start``; the logits after *every*
        token, shape (len(tokens), n_vocab): teacher forcing, for scoring a known continuation."""
        if not tokens:
            raise LlamaEngineError("nothing to decode")
        rows: list[np.ndarray] = []
        batch = self._batch
        for offset in range(0, len(tokens), self.batch_tokens):
            chunk = tokens[offset : offset + self.batch_tokens]
            for n, token in enumerate(chunk):
                batch.token[n] = token
                batch.pos[n] = start + offset + n
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = seq
                batch.logits[n] = True
            batch.n_tokens = len(chunk)
            rc = self._lib.llama_decode(self.ctx, batch)
            if rc != 0:
                raise LlamaEngineError(f"llama.cpp decode failed (code {rc}; 1 means the context is full)")
            rows += [self._logits(n) for n in range(len(chunk))]
        return np.stack(rows)

    def _logits(self, index: int) -> np.ndarray:
        pointer = self._lib.llama_get_logits_ith(self.ctx, index)
        return np.ctypeslib.as_array(pointer, shape=(self.model.n_vocab,)).copy()

    def close(self) -> None:
        if self.ctx:
            self._lib.llama_batch_free(self._batch)
            self._lib.llama_free(self.ctx)
            self.ctx = None


def quantize_model(source: Path, target: Path, weight_type: str) -> Path:
    """Write ``source`` with its weights quantised again to ``weight_type`` ('Q4_0', 'IQ4_NL', ...)
    by llama.cpp's own quantiser (from already quantised weights: lossy, for measurements)."""
    import llama_cpp

    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{weight_type.upper()}", None)
    if ftype is None:
        raise LlamaEngineError(f"llama.cpp has no weight type {weight_type!r}")
    _quiet_llama_logs(llama_cpp)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.allow_requantize, params.nthread = ftype, True, 1
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    if llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(), ctypes.byref(params)) != 0:
        partial.unlink(missing_ok=True)
        raise LlamaEngineError(f"llama.cpp could not quantise {source} to {weight_type}")
    os.replace(partial, target)  # a reader never sees half a file
    return target


EXPECTED_WARNINGS: tuple[bytes, ...] = (
    b"but [1] was specified",  # the detector's context asks for mean pooling, as it should
    b"dummy tokens",  # the detector's headless copy has a one-token placeholder vocabulary
)
"""llama.cpp warnings that our own choices cause every time: not shown."""


def shown_log(level: int, text: bytes) -> bool:
    """Whether a llama.cpp log line reaches stderr: warnings and errors, less the expected ones."""
    if level not in (3, 4):  # GGML_LOG_LEVEL_WARN, GGML_LOG_LEVEL_ERROR (ggml.h; llama-cpp-python's own table is older)
        return False
    return level == 4 or not any(part in text for part in EXPECTED_WARNINGS)


def _quiet_llama_logs(llama_cpp: object) -> None:
    """llama.cpp logs every tensor it loads to stderr; keep warnings and errors only."""
    if getattr(_quiet_llama_logs, "installed", False):
        return

    @llama_cpp.llama_log_callback  # type: ignore[attr-defined]
    def _log(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
        if shown_log(level, text):
            os.write(2, text)

    llama_cpp.llama_log_set(_log, ctypes.c_void_p(0))  # type: ignore[attr-defined]
    _quiet_llama_logs.installed = True  # type: ignore[attr-defined]
    _quiet_llama_logs.callback = _log  # type: ignore[attr-defined]  # keep it alive: C holds the pointer


class EmbeddingContext:
    """A one-sequence context that returns the mean of the final hidden states of a text
    (llama.cpp's mean pooling), for the learned emergency detector. No adapter is ever set.

    With ``token_rows`` (for a headless model: bots/gguf_truncate.py) the batch carries each
    token's input vector instead of its id, and the model needs no vocabulary."""

    POOLING_MEAN = 1  # LLAMA_POOLING_TYPE_MEAN

    def __init__(self, model: LlamaModel, max_tokens: int = 256, threads: int = 1, token_rows: Callable[[Sequence[int]], np.ndarray] | None = None) -> None:
        lib = model._lib
        self._lib = lib
        self.model = model
        self.max_tokens = max_tokens
        self.token_rows = token_rows
        params = lib.llama_context_default_params()
        params.n_ctx = max_tokens
        params.n_batch = max_tokens
        params.n_ubatch = max_tokens
        params.n_seq_max = 1
        # The backbone runs it between generation rounds (its lock), so it may use every core.
        params.n_threads = threads
        params.n_threads_batch = threads
        params.embeddings = True
        params.pooling_type = self.POOLING_MEAN
        params.flash_attn_type = 0  # as the generation contexts: results independent of batching
        params.no_perf = True
        self.ctx = lib.llama_init_from_model(model.model, params)
        if not self.ctx:
            raise LlamaEngineError("llama.cpp could not create an embedding context (out of memory?)")
        self.memory = lib.llama_get_memory(self.ctx)
        self.width = int(lib.llama_model_n_embd(model.model))
        self._batch = lib.llama_batch_init(max_tokens, self.width if token_rows else 0, 1)

    def embed(self, tokens: Sequence[int]) -> np.ndarray:
        """Mean final hidden state over ``tokens`` (the last ``max_tokens`` of them)."""
        if not tokens:
            raise LlamaEngineError("nothing to embed: no tokens")
        tokens = list(tokens)[-self.max_tokens :]
        batch = self._batch
        if self.token_rows is not None:
            rows = self.token_rows(tokens)
            if rows.shape != (len(tokens), self.width) or rows.dtype != np.float32 or not rows.flags.c_contiguous:
                raise LlamaEngineError(f"token vectors must be C-ordered float32 of shape ({len(tokens)}, {self.width})")
            ctypes.memmove(batch.embd, rows.ctypes.data, rows.nbytes)
        self._lib.llama_memory_clear(self.memory, True)
        for i, token in enumerate(tokens):
            if self.token_rows is None:
                batch.token[i] = token
            batch.pos[i] = i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = True  # pooling reads every position's output
        batch.n_tokens = len(tokens)
        rc = self._lib.llama_decode(self.ctx, batch)
        if rc != 0:
            raise LlamaEngineError(f"llama.cpp embedding decode failed (code {rc})")
        pointer = self._lib.llama_get_embeddings_seq(self.ctx, 0)
        if not pointer:
            raise LlamaEngineError("llama.cpp returned no pooled embedding")
        return np.ctypeslib.as_array(pointer, shape=(self.width,)).copy()

    def close(self) -> None:
        if self.ctx:
            self._lib.llama_batch_free(self._batch)
            self._lib.llama_free(self.ctx)
            self.ctx = None
