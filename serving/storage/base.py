"""The object-store interface every backend implements.

Synchronous on purpose: boto3 is synchronous, and batch jobs and CLI tools call the store
outside any event loop. Async callers wrap calls in ``asyncio.to_thread``.

Every write is all-or-nothing: after a failed ``put`` the key either holds its previous
complete object or nothing, never a partial one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    content_type: str
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PresignedRequest:
    url: str
    method: str
    headers: dict[str, str]
    expires_in_s: int


class ObjectNotFound(KeyError):
    """No object under that key (backends raise this; callers turn it into an API error)."""


class ObjectStore(Protocol):
    name: str

    def put(self, key: str, data: bytes, *, content_type: str = "application/octet-stream",
            metadata: dict[str, str] | None = None) -> None: ...

    def get(self, key: str) -> bytes: ...

    def head(self, key: str) -> ObjectInfo | None: ...

    def delete(self, key: str) -> None: ...

    def list_keys(self, prefix: str) -> list[str]: ...

    def presign_put(self, key: str, expires_in_s: int,
                    content_type: str) -> PresignedRequest: ...

    def check(self) -> None:
        """Raise ConfigError naming what is wrong: bad credentials, no such bucket, unreachable."""
        ...
