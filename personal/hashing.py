"""Stable hashes for cache keys and unit inputs (the bottom layer: no project imports)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable


def stable_hash(*parts: Any) -> str:
    """A short hash of JSON-able parts (dict keys sorted), for cache keys and unit inputs."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def files_fingerprint(paths: Iterable[Path]) -> str:
    """Hash of the bytes of the given files (missing files hash as absent)."""
    h = hashlib.sha256()
    for p in sorted(Path(x) for x in paths):
        h.update(str(p.name).encode())
        h.update(p.read_bytes() if p.is_file() else b"<absent>")
    return h.hexdigest()[:16]
