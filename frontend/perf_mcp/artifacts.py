"""In-memory store of large tool artifacts, served as MCP resources.

URIs look like perf-mcp://artifacts/<id>/<name>. Entries expire after a TTL and
the store never holds more than max_total_bytes: the oldest entries are evicted
first. An artifact larger than the whole cap is refused (the tool then warns).
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable

import msgspec

from .contract import ArtifactRef

URI_PREFIX = "perf-mcp://artifacts/"
DEFAULT_TTL_S = 30 * 60
DEFAULT_MAX_TOTAL_BYTES = 128 * 1024 * 1024


class Artifact(msgspec.Struct, kw_only=True):
    uri: str
    name: str
    mime_type: str
    content: bytes
    description: str
    created: float  # clock() seconds
    expires: float

    @property
    def size(self) -> int:
        return len(self.content)

    def is_text(self) -> bool:
        return self.mime_type.startswith("text/") or self.mime_type in ("image/svg+xml", "application/json")


class ArtifactStore:
    def __init__(
        self,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_total_bytes = max_total_bytes
        self._clock = clock
        self._items: OrderedDict[str, Artifact] = OrderedDict()  # oldest first
        self._total = 0
        self._seq = itertools.count(1)

    def new_group(self, prefix: str) -> str:
        """An id grouping one call's artifacts: unguessable and unique within this server."""
        return f"{prefix}-{next(self._seq)}-{secrets.token_hex(4)}"

    def put(self, group: str, name: str, mime_type: str, content: bytes | str, description: str = "") -> ArtifactRef | None:
        """Store an artifact; None when it is larger than the whole store."""
        data = content.encode() if isinstance(content, str) else bytes(content)
        if len(data) > self.max_total_bytes:
            return None
        self.expire()
        while self._items and self._total + len(data) > self.max_total_bytes:
            self._drop(next(iter(self._items)))
        now = self._clock()
        uri = f"{URI_PREFIX}{group}/{name}"
        if uri in self._items:
            self._drop(uri)
        art = Artifact(uri=uri, name=name, mime_type=mime_type, content=data, description=description,
                       created=now, expires=now + self.ttl_s)
        self._items[uri] = art
        self._total += len(data)
        return self.ref(art)

    def ref(self, art: Artifact) -> ArtifactRef:
        return ArtifactRef(uri=art.uri, name=art.name, mime_type=art.mime_type, size=art.size,
                           expires_in_s=max(0, int(art.expires - self._clock())), description=art.description)

    def get(self, uri: str) -> Artifact | None:
        self.expire()
        return self._items.get(uri)

    def list(self) -> list[Artifact]:
        self.expire()
        return list(self._items.values())

    @property
    def total_bytes(self) -> int:
        return self._total

    def expire(self) -> None:
        now = self._clock()
        for uri in [u for u, a in self._items.items() if a.expires <= now]:
            self._drop(uri)

    def _drop(self, uri: str) -> None:
        art = self._items.pop(uri)
        self._total -= art.size
