"""Short content digests: the one helper behind resume fingerprints, model ids and input identities."""

from __future__ import annotations

import hashlib
import json
from typing import Any

DIGEST_CHARS = 16  # 64 bits: collisions are out of reach for the units of any one output root


def digest_bytes(*chunks: bytes) -> str:
    """SHA-256 of the concatenated ``chunks``, as ``DIGEST_CHARS`` hex characters."""
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return h.hexdigest()[:DIGEST_CHARS]


def digest(obj: Any) -> str:
    """Digest of a JSON-able value in canonical form (sorted keys; dates and paths as strings)."""
    return digest_bytes(json.dumps(obj, sort_keys=True, default=str, separators=(",", ":")).encode())
