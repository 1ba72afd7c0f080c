"""A local-directory object store: the embedded default for `make run` (under `.qvq/`)."""

from __future__ import annotations

import json
import os
import pathlib
import tempfile

from serving.errors import ConfigError, InvalidRequestError
from serving.storage.base import ObjectInfo, ObjectNotFound, PresignedRequest

_META_SUFFIX = ".qvqmeta"


class LocalObjectStore:
    name = "local"

    def __init__(self, root: str | os.PathLike[str]):
        self._root = pathlib.Path(root)

    def _path(self, key: str) -> pathlib.Path:
        if not key or key.startswith("/") or ".." in key.split("/") or key.endswith(_META_SUFFIX):
            raise ValueError(f"invalid object key {key!r}")
        return self._root / key

    def _atomic_write(self, path: pathlib.Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            pathlib.Path(tmp).unlink(missing_ok=True)
            raise

    def put(self, key: str, data: bytes, *, content_type: str = "application/octet-stream",
            metadata: dict[str, str] | None = None) -> None:
        path = self._path(key)
        meta = {"content_type": content_type, "metadata": dict(metadata or {}),
                "size": len(data)}
        # Metadata first, data last: the data file's presence is what makes the object exist.
        self._atomic_write(path.with_name(path.name + _META_SUFFIX), json.dumps(meta).encode())
        self._atomic_write(path, data)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise ObjectNotFound(key) from None

    def head(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            meta = json.loads(path.with_name(path.name + _META_SUFFIX).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            meta = {}
        return ObjectInfo(key=key, size=path.stat().st_size,
                          content_type=meta.get("content_type", "application/octet-stream"),
                          metadata=meta.get("metadata", {}))

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        path.with_name(path.name + _META_SUFFIX).unlink(missing_ok=True)

    def list_keys(self, prefix: str) -> list[str]:
        base = self._root
        # Walk only the directory the prefix names: the batch runner lists its markers every
        # poll, and walking every stored image instead cost ~5% of the CPU under load
        # (loadtest.profile).
        start = base / prefix.rpartition("/")[0] if "/" in prefix else base
        if not start.exists():
            return []
        keys = []
        for p in start.rglob("*"):
            if p.is_file() and not p.name.endswith(_META_SUFFIX) and not p.name.startswith(".tmp-"):
                key = p.relative_to(base).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def presign_put(self, key: str, expires_in_s: int, content_type: str) -> PresignedRequest:
        raise InvalidRequestError("presigned uploads need the S3 storage backend; POST the "
                                  "bytes to /v1/images instead", code="not_supported")

    def check(self) -> None:
        try:
            self._root.mkdir(parents=True, exist_ok=True)
            probe = self._root / ".qvq-write-probe"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            raise ConfigError(f"storage.local.root {self._root} is not writable: "
                              f"{exc.strerror}") from exc
