"""The llama.cpp backbone: the same GGUF weights and adapters as the reference, at llama.cpp speed.

One llama.cpp model and one context serve all four variants. The PEFT adapters are
converted to GGUF LoRA once (bots.gguf_lora, cached) and switched per decode call, so
memory is one base model plus two small adapters.

A single scheduler thread owns the context and runs continuous batching: every active
reply advances one token per round, and replies that share an adapter (both prompt
variants, or many users of one variant) go through llama.cpp in the same batch. A long
prompt is fed in chunks between rounds so it never stalls the others.

Each reply runs in a lane (a llama.cpp sequence) that keeps its KV cache afterwards: the
next request with the same adapter and a common prefix (the prompt variants' 700-token
system prompt and few-shot dialogs) reuses it and only feeds the new tokens.

With ``merge_adapters`` (the product's default, BaseModelSpec; env TOP_MERGE_ADAPTERS=0 turns it
off) each LoRA variant is served instead from a
copy of the base with its adapter folded in (bots/gguf_merge.py, cached), in a context and
lanes of its own (a pool), made on first use: no run-time adapter products, so it decodes at
the base's speed, for a base-sized file and a context's KV cache per adapter.

Run ``python -m benchmarks.serving`` to compare it with the transformers path and plain llama.cpp.
"""

from __future__ import annotations

import atexit
import hashlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from jinja2.sandbox import ImmutableSandboxedEnvironment

from bots.backbone_base import (
    DEFAULT_CONTEXT_TOKENS,
    EMBED_MAX_TOKENS,
    AdapterError,
    BackboneBase,
    ContextOverflow,
    GenerationError,
    Message,
)
from bots.base_source import (
    DEFAULT_LANES,
    DEFAULT_RUNNING,
    EMBEDDED,
    EMBEDDED_NAME,
    BaseModelError,
    BaseModelSpec,
    cached_file_sha256,
    embedded_gguf_path,
)
from bots.generation import GenerationSettings, GenerationStats, TokenPicker, stream_text
from bots.gguf_lora import HeadLayout, cached_gguf_lora
from bots.gguf_merge import cached_merged_gguf
from bots.gguf_truncate import TokenRows, cached_truncated_gguf
from bots.llama_engine import Context, EmbeddingContext, LlamaEngineError, LlamaModel, Run

T = TypeVar("T")

KV_FORMAT = "llama-cpp-python-0.3.36-f16-v4"
"""Part of a prefix KV file's key: a new llama.cpp or a new layout makes new files (v2: files are
never saved after a share; v3: 8 lanes by default; v4: every key names its pool's lane count)."""


@dataclass(frozen=True)
class LlamaServingConfig:
    """How the llama.cpp backbone uses the machine."""

    lanes: int = DEFAULT_LANES
    """KV caches of the base's pool, each for a whole context (2048 tokens: 47 MB in f16). More
    lanes than ``running`` keep other prompts' prefixes while replies run: with as many lanes as
    replies, each new reply had to take the lane just freed, whatever it held, and under a mix of
    variants almost every prompt token was computed again (measured: 16,845 of 17,223 prompt
    tokens with 4 replies at once, against 8,811 one at a time)."""
    running: int = DEFAULT_RUNNING
    """Replies decoded at once (more wait their turn); at most ``lanes``. A decode step of k
    sequences costs far less than k steps of one (``benchmarks.batch_scaling``), and the
    adapter groups split the batch, so the more run at once the more each group batches:
    engine alone, 16 concurrent requests gave 1.48x one at a time with 16 running in 24
    lanes, 1.43x with 4 in 8 (README, *Under load*)."""
    merged_lanes: int = 8
    """Lanes of each merged adapter's pool (at most ``lanes``): one variant's prompts, so fewer
    prefixes to keep, and each lane's KV cache is memory (47 MB)."""
    batch_tokens: int = 256
    """Most prompt tokens fed per round: bounds how long other replies wait for a long prompt."""
    burst_steps: int = 8
    """Rounds an adapter group runs before the next group's turn (see LlamaCppBackbone._round)."""
    merge_adapters: bool = False
    """Serve each adapter from a merged copy of the base (see the module docstring). Off for a
    backbone built directly (tests compare both ways); the product turns it on through
    BaseModelSpec.merge_adapters (bots.backends)."""
    merged_weight_type: str = "Q8_0"
    """How merged weights are stored. Re-quantising to the base's Q4_1 rounds most of an
    adapter's small changes away (greedy replies then agree with the base's, not the
    adapter's); Q8_0 keeps them and decodes as fast as Q4_1 here (measured)."""


@dataclass
class LoadedGguf:
    """The base as the llama.cpp backbone knows it (same fields the UI reads from LoadedBase)."""

    model: LlamaModel
    name: str
    fingerprint: str
    load_seconds: float
    from_cache: bool
    cache_dir: Path
    """Where converted adapters and prompt-prefix KV caches are kept (the spec's cache folder)."""
    path: Path | None = None
    """The GGUF file (the detector's truncated copy is made from it)."""


def load_gguf_base(spec: BaseModelSpec) -> LoadedGguf:
    """Load the embedded GGUF (or a .gguf file given as the source) with llama.cpp."""
    started = time.perf_counter()
    if spec.source == EMBEDDED:
        path, name = embedded_gguf_path(), EMBEDDED_NAME
    elif spec.source.endswith(".gguf") and Path(spec.source).expanduser().is_file():
        path = Path(spec.source).expanduser()
        name = path.name
    else:
        raise BaseModelError(f"the llama.cpp backend runs GGUF files; '{spec.source}' is not one (use --backend transformers)")
    try:
        model = LlamaModel(path, spec.threads)
    except LlamaEngineError as exc:
        raise BaseModelError(str(exc)) from exc
    hashes_known = (spec.cache_dir / "file_hashes.json").is_file()
    fingerprint = cached_file_sha256(path, spec.cache_dir)
    return LoadedGguf(model, name, fingerprint, time.perf_counter() - started, hashes_known, spec.cache_dir, path)


@dataclass
class _Job:
    """One reply being generated; the scheduler thread fills ``tokens``."""

    prompt_ids: list[int]
    adapter: str | None
    settings: GenerationSettings
    stats: GenerationStats
    picker: TokenPicker
    tokens: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    """Token ids, then None at the end (or an exception)."""
    cancelled: threading.Event = field(default_factory=threading.Event)
    lane: _Lane | None = None
    fed: int = 0
    """Prompt tokens already in the lane's KV cache."""
    next_token: int | None = None
    """The token picked last, fed to the model in the next round."""
    prefill_only: bool = False
    """Fill the lane's cache with the prompt and stop: no reply (a warm-up)."""
    kv_file: Path | None = None
    """For a warm-up: where its KV cache is kept between runs (loaded if there, else saved)."""
    started: float = 0.0


@dataclass
class _Call:
    """One piece of llama.cpp work handed to the scheduler thread, and its outcome."""

    work: Callable[[], Any]
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


@dataclass
class _Lane:
    """A llama.cpp sequence and the tokens its KV cache holds (reused as a prefix cache)."""

    seq: int
    context: Context
    adapter: str | None = None
    cached: list[int] = field(default_factory=list)
    """Exactly the tokens whose keys and values the KV cache holds for this sequence."""
    busy: bool = False
    last_used: float = 0.0


@dataclass
class _Pool:
    """A model with a context and its lanes: the base's (bare, and adapters applied at run
    time), or one merged adapter's. The context is made on first use."""

    model: LlamaModel
    lane_count: int
    merged: bool = False
    context: Context | None = None
    lanes: list[_Lane] = field(default_factory=list)

    def open(self, context_tokens: int, batch_tokens: int) -> Context:
        if self.context is None:
            self.context = self.model.new_context(context_tokens, self.lane_count, batch_tokens)
            self.lanes = [_Lane(seq, self.context) for seq in range(self.lane_count)]
        return self.context

    def close(self) -> None:
        if self.context is not None:
            self.context.close()
            self.context = None
            self.lanes = []


class LlamaCppBackbone(BackboneBase):
    backend = "llamacpp"

    def __init__(self, base: LoadedGguf, context_tokens: int = DEFAULT_CONTEXT_TOKENS, config: LlamaServingConfig | None = None) -> None:
        self.config = config or LlamaServingConfig()
        super().__init__(base, context_tokens)
        self.cache_dir = base.cache_dir
        self.parallel_replies = min(self.config.running, self.config.lanes)
        self.model = base.model
        # Pools by adapter: None is the base's; a merged adapter has its own.
        self._pools: dict[str | None, _Pool] = {None: _Pool(self.model, self.config.lanes)}
        self.context: Context = self._pools[None].open(context_tokens, self.config.batch_tokens)
        template = self.model.meta("tokenizer.chat_template")
        if not template:
            raise BaseModelError(f"{base.name} has no chat template in its GGUF metadata")
        self._template = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(template)
        self._heads = HeadLayout(self.model.n_head, self.model.n_head_kv)
        self._adapter_handles: dict[str, int] = {}
        self._waiting: list[_Job] = []
        self._active: list[_Job] = []
        self._turn: str | None = None
        self._burst_left = 0
        self._wake = threading.Condition()
        self._closed = False
        # Scoring (continuation_nll) has a context of its own, made on first use: it never touches the lanes.
        self._score_lock = threading.Lock()
        self._score_contexts: dict[str | None, Context] = {}
        """A one-sequence context per pool, with the adapter and tokens it last scored."""
        self._score_state: dict[str | None, tuple[str | None, list[int]]] = {}
        self._embed_lock = threading.Lock()
        self._embed_contexts: dict[tuple[int | None, str | None], EmbeddingContext] = {}
        self._calls: list[_Call] = []
        """Work for llama.cpp from other threads (embedding, scoring), run by the scheduler between rounds."""
        self._worker = threading.Thread(target=self._run, name="llama-scheduler", daemon=True)
        self._worker.start()
        # A daemon thread inside llama_decode while the interpreter tears down crashes the process.
        atexit.register(self.close)

    # --- prompts ----------------------------------------------------------------------------

    def encode(self, messages: list[Message]) -> list[int]:
        text = self._template.render(messages=messages, add_generation_prompt=True, bos_token="", eos_token="")
        return self.model.tokenize(text, special=True)

    def encode_text(self, text: str) -> list[int]:
        return self.model.tokenize(text, special=False)

    def decode_text(self, token_ids: list[int]) -> str:
        return self.model.decode(token_ids)

    def embed(self, text: str, blocks: int | None = None, copy_weights: str | None = None) -> np.ndarray:
        """Mean hidden state after ``blocks`` blocks (all: None), normed (llama.cpp's pooling).

        Runs on a context of its own, made on first use; for ``blocks`` it is a context of the
        GGUF cut after that block, headless (bots/gguf_truncate.py, cached), which costs
        blocks/30 of a pass and no output layer, with its weights in ``copy_weights`` (None:
        the base file's format).
        """
        ids = self.encode_text(text)
        key = (blocks, copy_weights if blocks is not None else None)  # the whole model has no copy
        with self._embed_lock:
            if self._closed:
                raise GenerationError("the backbone is closed")
            context = self._embed_contexts.get(key)
            if context is None:
                model, rows = self.model, None
                if blocks is not None:
                    if self.base.path is None:
                        raise NotImplementedError("the base GGUF file is unknown: no truncated copy for the detector")
                    # Headless: no output layer over the vocabulary, fed the token vectors.
                    truncated = cached_truncated_gguf(self.base.path, blocks, self.cache_dir, self.base.fingerprint, headless=True, weights=copy_weights)
                    model, rows = LlamaModel(truncated, self.model.threads), TokenRows(self.base.path)
                context = self._embed_contexts[key] = EmbeddingContext(model, EMBED_MAX_TOKENS, threads=self.model.threads, token_rows=rows)
            return self._on_scheduler(lambda: context.embed(ids))

    # --- adapters ---------------------------------------------------------------------------

    def load_adapter(self, name: str, path: Path) -> None:
        """Convert (once, cached) and load a PEFT adapter; on failure nothing changes."""
        self.check_adapter(path)
        try:
            gguf_lora = cached_gguf_lora(path, self.cache_dir, self._heads)
            handle = self.model.load_adapter(gguf_lora)
            pool = self._merged_pool(gguf_lora) if self.config.merge_adapters else None
        except Exception as exc:  # conversion, safetensors and llama.cpp raise many kinds; all mean "unusable"
            raise AdapterError(f"adapter {path.name} could not be loaded: {exc}") from exc
        with self._wake:  # the scheduler reads the pools
            if any(lane.busy for lane in self._pool_of(name).lanes if lane.adapter == name):
                raise AdapterError(f"adapter {name} is answering requests: load it again when they are done")
            old = self._pools.pop(name, None)
            if pool is not None:
                self._pools[name] = pool
        if old is not None and old is not pool:
            with self._score_lock, self.lock:  # its scoring context held the old weights too
                old.close()
                stale = self._score_contexts.pop(name, None)
                if stale is not None:
                    stale.close()
                self._score_state.pop(name, None)
        self._adapter_handles[name] = handle
        self.adapters[name] = path

    def _merged_pool(self, gguf_lora: Path) -> _Pool:
        if self.base.path is None:
            raise NotImplementedError("the base GGUF file is unknown: nothing to merge the adapter into")
        merged = cached_merged_gguf(self.base.path, self.base.fingerprint, gguf_lora, self.cache_dir, self.config.merged_weight_type)
        return _Pool(LlamaModel(merged, self.model.threads), min(self.config.merged_lanes, self.config.lanes), merged=True)

    def adapter_serving(self, name: str | None) -> str | None:
        pool = self._pools.get(name) if name is not None else None
        return f"merged {self.config.merged_weight_type}" if pool is not None and pool.merged else None

    def kv_bytes_per_lane(self) -> int:
        """The f16 KV cache of one lane: keys and values of every layer for a whole context."""
        kv_width = self.model.n_head_kv * (self.model.n_embd // self.model.n_head)
        return self.context_tokens * self.model.n_layer * 2 * kv_width * 2

    @property
    def lanes(self) -> list[_Lane]:
        """Every lane of every pool (those made so far)."""
        return [lane for pool in list(self._pools.values()) for lane in pool.lanes]

    def _pool_of(self, adapter: str | None) -> _Pool:
        return self._pools.get(adapter) or self._pools[None]

    # --- generation -------------------------------------------------------------------------

    def stream(self, prompt_ids: list[int], adapter: str | None, settings: GenerationSettings, stats: GenerationStats) -> Iterator[str]:
        if adapter is not None and adapter not in self._adapter_handles:
            raise AdapterError(f"adapter '{adapter}' is not loaded")
        if len(prompt_ids) + settings.max_new_tokens > self.context_tokens:
            raise ContextOverflow(
                f"{len(prompt_ids)} prompt tokens plus {settings.max_new_tokens} new ones exceed the {self.context_tokens}-token context"
            )
        job = _Job(list(prompt_ids), adapter, settings, stats, TokenPicker(settings))
        stats.prompt_tokens = len(prompt_ids)
        stats.stopped_by = "cancelled"  # until the scheduler ends it by itself
        self._submit(job)
        return _JobStream(job, stream_text(self.model, self._tokens_of(job)), self._wake)

    def prefill(self, prompt_ids: list[int], adapter: str | None) -> None:
        """Warm a lane with a prompt prefix (the prompt variants' system prompt and few-shot
        dialogs), so that the first real request only feeds its own tokens."""
        if len(prompt_ids) < 2 or len(prompt_ids) > self.context_tokens:
            return
        settings = GenerationSettings(max_new_tokens=1)
        job = _Job(list(prompt_ids), adapter, settings, GenerationStats(), TokenPicker(settings), prefill_only=True)
        job.kv_file = self._kv_file(prompt_ids, adapter)
        self._submit(job)

    def _kv_file(self, prompt_ids: list[int], adapter: str | None) -> Path:
        """The prefix KV cache file of a prompt: keyed by the base, the adapter's weights and the tokens."""
        pool = self._pool_of(adapter)
        merged = f":merged-{self.config.merged_weight_type}" if adapter is not None and pool.merged else ""
        # The lane count is in the key: llama.cpp refuses a sequence file saved by a context
        # with another number of sequences (its KV streams), so each count keeps its own files.
        digest = hashlib.sha256(f"{self.base.fingerprint}:{adapter}:{KV_FORMAT}{merged}:lanes={pool.lane_count}".encode())
        if adapter is not None:
            digest.update(cached_file_sha256(self.adapters[adapter] / "adapter_model.safetensors", self.cache_dir).encode())
        digest.update(np.asarray(prompt_ids, dtype=np.int32).tobytes())
        return self.cache_dir / "prefix-kv" / f"{digest.hexdigest()[:24]}.kv"

    # --- scoring ----------------------------------------------------------------------------

    def continuation_nll(self, prompt_ids: list[int], continuation_ids: list[int], adapter: str | None) -> tuple[float, int]:
        """Summed negative log-likelihood of ``continuation_ids`` after ``prompt_ids`` from llama.cpp's
        logits (teacher forcing), and its token count, as ``bots.backbone.Backbone.continuation_nll``.

        Runs on a one-sequence context of its own, beside the scheduler's lanes; the prompt
        prefix of the previous call is reused (the prompt variants' fixed part is fed once).
        llama.cpp computes with 8-bit activations, so the values are close to the reference's, not equal.
        """
        if not continuation_ids:
            raise ValueError("nothing to score: the continuation is empty")
        if not prompt_ids:
            raise ValueError("nothing to condition on: the prompt is empty")
        if adapter is not None and adapter not in self._adapter_handles:
            raise AdapterError(f"adapter '{adapter}' is not loaded")
        ids = list(prompt_ids) + list(continuation_ids)
        if len(ids) > self.context_tokens:
            raise ContextOverflow(f"{len(ids)} tokens exceed the {self.context_tokens}-token context")
        split = len(prompt_ids) - 1  # the last prompt token's logits predict the first continuation token
        with self._score_lock:
            if self._closed:
                raise GenerationError("the backbone is closed")

            def score() -> np.ndarray:
                # Score with the weights that generate: a merged adapter's own model, bare.
                key = adapter if adapter in self._pools else None
                context = self._score_contexts.get(key)
                if context is None:
                    context = self._score_contexts[key] = self._pools[key].model.new_context(self.context_tokens, 1, self.config.batch_tokens)
                applied = adapter if key is None else None
                last_applied, cached = self._score_state.get(key, (None, []))
                if last_applied != applied:
                    cached = []
                context.set_adapter(self._adapter_handles[applied] if applied else None)
                keep = min(_common_prefix(cached, ids), split)
                context.forget(0, keep)
                self._score_state[key] = (applied, [])  # unknown until the decode below succeeds
                if keep < split:
                    context.decode([Run(0, ids[keep:split], keep, want_logits=False)])
                rows = context.decode_every(0, ids[split:-1], split).astype(np.float64)
                self._score_state[key] = (applied, ids[:-1])
                return rows

            rows = self._on_scheduler(score)
        top = rows.max(axis=1)
        log_norm = top + np.log(np.exp(rows - top[:, None]).sum(axis=1))
        nll = float(np.sum(log_norm - rows[np.arange(len(continuation_ids)), continuation_ids]))
        return nll, len(continuation_ids)

    def wait_idle(self, timeout_s: float = 60.0) -> bool:
        """Block until no job runs or waits (warm-ups included); False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._wake:
            while self._active or self._waiting:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._wake.wait(min(left, 0.1))
        return True

    def _submit(self, job: _Job) -> None:
        with self._wake:
            self._waiting.append(job)
            self._wake.notify_all()

    def _tokens_of(self, job: _Job) -> Iterator[int]:
        try:
            while True:
                item = job.tokens.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            job.cancelled.set()  # a consumer that stops early frees its lane at the next round
            with self._wake:
                self._wake.notify()

    def close(self) -> None:
        """Stop the scheduler (replies in flight end) and free the context; idempotent."""
        with self._wake:
            if self._closed:
                return
            self._closed = True
            self._wake.notify_all()
        self._worker.join(timeout=10)
        for job in self._active + self._waiting:
            job.tokens.put(GenerationError("the server is shutting down"))
        with self._score_lock:
            for context in self._score_contexts.values():
                context.close()
            self._score_contexts.clear()
        with self._embed_lock:
            for context in self._embed_contexts.values():
                context.close()
            self._embed_contexts.clear()
        for pool in self._pools.values():
            pool.close()
        atexit.unregister(self.close)

    # --- the scheduler thread ---------------------------------------------------------------

    def run_on_scheduler(self, work: Callable[[], T]) -> T:
        """Run a caller's own llama.cpp work (a benchmark's context, say) on the scheduler
        thread, for the reason ``_on_scheduler`` gives; returns its result."""
        return self._on_scheduler(work)

    def _on_scheduler(self, work: Callable[[], T]) -> T:
        """Run llama.cpp work on the scheduler thread, between two rounds, and return its result.

        Every llama.cpp computation of the process happens on this one thread. Each host
        thread that computes gets an OpenMP thread team of its own, and once more OpenMP
        threads exist than cores, libgomp stops spinning between the graph's barriers and
        sleeps instead: one detector call from a request thread halved every later decode
        (131 -> 50 tok/s, measured; OMP_WAIT_POLICY=active gave the speed back, at the price of
        spinning idle threads)."""
        if threading.current_thread() is self._worker:
            return work()
        call = _Call(work)
        with self._wake:
            if self._closed:
                raise GenerationError("the backbone is closed")
            self._calls.append(call)
            self._wake.notify_all()
        call.done.wait()
        if call.error is not None:
            raise call.error
        return call.result

    def _run_calls(self) -> None:
        with self._wake:
            calls, self._calls = self._calls, []
        for call in calls:
            try:
                with self.lock:
                    call.result = call.work()
            except BaseException as exc:  # noqa: BLE001  handed to the caller, who raises it
                call.error = exc
            call.done.set()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._closed and not self._active and not self._waiting and not self._calls:
                    self._wake.wait()
                if self._closed:
                    for call in self._calls:
                        call.error = GenerationError("the backbone is closed")
                        call.done.set()
                    self._calls = []
                    return
            self._run_calls()
            with self._wake:
                self._admit()
            if not self._active:
                continue
            try:
                with self.lock:
                    self._round()
            except Exception as exc:  # noqa: BLE001  a failed decode ends the replies in flight, not the server
                for job in list(self._active):
                    self._finish(job, error=GenerationError(f"llama.cpp failed: {exc}"))

    def _admit(self) -> None:
        """Caller holds _wake. Give waiting jobs a lane, preferring the one with the longest reusable prefix."""
        still_waiting = []
        for job in self._waiting:
            if job.cancelled.is_set():
                job.tokens.put(None)
                continue
            if len(self._active) >= self.parallel_replies:
                still_waiting.append(job)
                continue
            try:
                lane = self._pick_lane(job)
            except LlamaEngineError as exc:  # no memory for a merged pool's context: this job fails, the server goes on
                job.tokens.put(GenerationError(f"llama.cpp could not open a context for adapter {job.adapter}: {exc}"))
                continue
            if lane is None:
                still_waiting.append(job)
                continue
            lane.busy = True
            context = lane.context
            if job.prefill_only and job.kv_file is not None:
                # A warm-up whose cache goes to a file is computed in its lane from scratch: cells
                # shared from another lane are not all written by llama_state_seq_save_file (a file
                # saved after a share reloads into a different reply; measured).
                context.forget(lane.seq, 0)
                lane.cached = []
            reuse = _common_prefix(lane.cached, job.prompt_ids) if lane.adapter == job.adapter else 0
            donor, shared = (None, 0) if job.prefill_only else self._best_donor(job, exclude=lane)
            limit = len(job.prompt_ids) - 1  # the last prompt token must be fed to get logits
            if donor is not None and min(shared, limit) > min(reuse, limit):
                # Another lane holds a longer prefix of this prompt: share its cells instead of recomputing.
                reuse = min(shared, limit)
                context.forget(lane.seq, 0)
                context.share(donor.seq, lane.seq, reuse)
                lane.cached = donor.cached[:reuse]
            reuse = min(reuse, limit)
            context.forget(lane.seq, reuse)
            lane.cached = lane.cached[:reuse]
            lane.adapter = job.adapter
            job.lane, job.fed, job.started = lane, reuse, time.perf_counter()
            if job.prefill_only and job.kv_file is not None and job.kv_file.is_file() and self._restore(job, lane):
                continue
            job.stats.cached_prompt_tokens = job.fed  # 0 again if a prefix file could not be loaded
            self._active.append(job)
        self._waiting = still_waiting

    def _restore(self, job: _Job, lane: _Lane) -> bool:
        """Load a warm-up's KV cache from its file instead of computing it; False if unusable."""
        lane.context.forget(lane.seq, 0)
        tokens = lane.context.load_sequence(lane.seq, job.kv_file, len(job.prompt_ids)) if job.kv_file else None
        if tokens != job.prompt_ids:
            lane.context.forget(lane.seq, 0)
            lane.cached = []
            job.fed = 0
            return False
        lane.cached = list(tokens)
        job.fed = len(tokens)
        job.stats.cached_prompt_tokens = len(tokens)
        self._finish(job)
        return True

    def _best_donor(self, job: _Job, exclude: _Lane) -> tuple[_Lane | None, int]:
        best, length = None, 0
        for lane in self._pool_of(job.adapter).lanes:
            if lane is not exclude and lane.adapter == job.adapter:
                common = _common_prefix(lane.cached, job.prompt_ids)
                if common > length:
                    best, length = lane, common
        return best, length

    def _pick_lane(self, job: _Job) -> _Lane | None:
        pool = self._pool_of(job.adapter)
        pool.open(self.context_tokens, self.config.batch_tokens)
        free = [lane for lane in pool.lanes if not lane.busy]
        if not free:
            return None

        def score(lane: _Lane) -> tuple[int, float]:
            # Reuse as much as possible, destroy as little cached work as possible (a lane
            # holding another prompt's 700-token prefix is worth keeping over saving 5 tokens),
            # then the least recently used.
            reuse = _common_prefix(lane.cached, job.prompt_ids) if lane.adapter == job.adapter else 0
            return 2 * reuse - len(lane.cached), -lane.last_used

        return max(free, key=score)

    def _round(self) -> None:
        """Advance the jobs of one adapter group by one step: a chunk of a prompt or one new token.

        Groups take turns in bursts of ``burst_steps`` rounds: switching the adapter makes
        llama.cpp rebuild its compute graph (~6 ms here, half a token's time), so switching
        every round would cost more than the batching gains.
        """
        for job in [j for j in self._active if j.cancelled.is_set()]:
            self._finish(job)
        by_adapter: dict[str | None, list[_Job]] = {}
        for job in self._active:
            by_adapter.setdefault(job.adapter, []).append(job)
        if not by_adapter:
            return
        order = list(by_adapter)
        if self._turn not in by_adapter or self._burst_left <= 0:
            later = order[(order.index(self._turn) + 1) % len(order)] if self._turn in by_adapter else order[0]
            self._turn, self._burst_left = later, self.config.burst_steps
        self._burst_left -= 1
        jobs = by_adapter[self._turn]
        pool = self._pool_of(self._turn)
        assert pool.context is not None  # opened when its jobs got their lanes
        pool.context.set_adapter(self._adapter_handles[self._turn] if self._turn and not pool.merged else None)
        # One llama_decode call for the group: prompt chunks share what the decoding jobs leave.
        budget = self.config.batch_tokens - sum(1 for job in jobs if job.next_token is not None)
        runs: list[tuple[_Job, Run]] = []
        for job in jobs:
            lane = job.lane
            assert lane is not None
            if job.next_token is not None:
                runs.append((job, Run(lane.seq, [job.next_token], len(lane.cached))))
            elif budget > 0:
                chunk = job.prompt_ids[job.fed : job.fed + budget]
                budget -= len(chunk)
                last = job.fed + len(chunk) == len(job.prompt_ids)
                runs.append((job, Run(lane.seq, chunk, len(lane.cached), want_logits=last and not job.prefill_only)))
        if not runs:
            return
        logits = pool.context.decode([run for _, run in runs])
        for (job, run), row in zip(runs, logits, strict=True):
            self._advance(job, run, row)

    def _advance(self, job: _Job, run: Run, row: np.ndarray | None) -> None:
        lane = job.lane
        assert lane is not None
        lane.cached.extend(run.tokens)
        if job.next_token is None:
            job.fed += len(run.tokens)
        if job.prefill_only and job.fed == len(job.prompt_ids):
            job.stats.stopped_by = "length"
            if job.kv_file is not None:
                job.kv_file.parent.mkdir(parents=True, exist_ok=True)
                lane.context.save_sequence(lane.seq, lane.cached, job.kv_file)
            self._finish(job)
            return
        if row is None:
            return  # more prompt to feed
        token = job.picker(row, job.stats.token_ids)
        stats, now = job.stats, time.perf_counter()
        if not stats.token_ids and stats.ttft_s == 0.0:
            stats.ttft_s = now - job.started
        stats.latency_s = now - job.started
        if self.model.is_end_of_generation(token):
            stats.stopped_by = "eos"
            self._finish(job)
            return
        stats.token_ids.append(token)
        stats.new_tokens = len(stats.token_ids)
        job.next_token = token
        job.tokens.put(token)
        if stats.new_tokens >= job.settings.max_new_tokens:
            stats.stopped_by = "length"
            self._finish(job)

    def _finish(self, job: _Job, error: BaseException | None = None) -> None:
        if job in self._active:
            self._active.remove(job)
        lane = job.lane
        if lane is not None:
            if error is not None:  # the cache may hold part of a failed batch: start the lane afresh
                lane.context.forget(lane.seq, 0)
                lane.cached = []
            lane.busy, lane.last_used = False, time.perf_counter()
            job.lane = None
        if job.started:
            job.stats.latency_s = time.perf_counter() - job.started
        job.tokens.put(error)  # None: the reply ended normally
        with self._wake:
            self._wake.notify_all()


class _JobStream(Iterator[str]):
    """The text of a job's reply. The job starts at once (so several start together);
    closing the stream, even before reading it, cancels the job."""

    def __init__(self, job: _Job, pieces: Iterator[str], wake: threading.Condition) -> None:
        self._job, self._pieces, self._wake = job, pieces, wake

    def __next__(self) -> str:
        return next(self._pieces)

    def close(self) -> None:
        self._job.cancelled.set()
        close = getattr(self._pieces, "close", None)
        if close:
            close()
        with self._wake:
            self._wake.notify()


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
