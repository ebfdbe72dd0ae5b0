"""The ``tune_or_prompt.json`` file next to each adapter: which base and data it was trained on.

``{"domain", "base_name", "base_fingerprint", "data_sha256", "created"}``. The bots refuse an
adapter whose ``base_fingerprint`` differs from the loaded base's, and ``training.train``
refuses to continue training (``--init-adapter``) from such an adapter.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

METADATA_FILE = "tune_or_prompt.json"


class AdapterMismatchError(ValueError):
    """An adapter's metadata is missing, malformed or names a different base model."""


@dataclass(frozen=True)
class AdapterMetadata:
    domain: str
    base_name: str
    base_fingerprint: str
    data_sha256: str
    created: str

    @classmethod
    def now(cls, domain: str, base_name: str, base_fingerprint: str, data_sha256: str) -> AdapterMetadata:
        created = datetime.now(UTC).replace(microsecond=0).isoformat()
        return cls(domain, base_name, base_fingerprint, data_sha256, created)


def write_metadata(folder: Path, metadata: AdapterMetadata) -> Path:
    path = folder / METADATA_FILE
    path.write_text(json.dumps(dataclasses.asdict(metadata), indent=2) + "\n")
    return path


def read_metadata(folder: Path) -> AdapterMetadata:
    path = folder / METADATA_FILE
    try:
        data = json.loads(path.read_text())
        return AdapterMetadata(**{f.name: str(data[f.name]) for f in dataclasses.fields(AdapterMetadata)})
    except FileNotFoundError as exc:
        raise AdapterMismatchError(f"{path} is missing: cannot tell which base model the adapter belongs to") from exc
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise AdapterMismatchError(f"{path} is malformed ({type(exc).__name__}: {exc})") from exc


def check_same_base(folder: Path, base_fingerprint: str) -> AdapterMetadata:
    """The adapter's metadata, if it was trained on the base with this fingerprint; else raise."""
    metadata = read_metadata(folder)
    if metadata.base_fingerprint != base_fingerprint:
        raise AdapterMismatchError(
            f"adapter {folder} was trained on base {metadata.base_fingerprint[:16]}... ({metadata.base_name}), "
            f"but the loaded base is {base_fingerprint[:16]}..."
        )
    return metadata


def files_sha256(paths: list[Path]) -> str:
    """One hash over several files, each contributing its name and its bytes (order matters)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()
