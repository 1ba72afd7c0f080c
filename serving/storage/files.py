"""OpenAI-compatible files in the object store, owned by the API key that created them.

Layout: ``files/<owner>/<file id>`` holds the bytes; object metadata holds the filename,
purpose and creation time. The owner is a key id (``anonymous`` when the API is open), so a
listing is a prefix scan and another key can neither read nor see a file: it gets 404, the
same answer as for a file that does not exist.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import asdict, dataclass

from serving.api.auth import caller_id
from serving.errors import InvalidRequestError, NotFoundError
from serving.protocol import list_page
from serving.storage.base import ObjectNotFound, ObjectStore

FILE_ID_RE = re.compile(r"^file-[0-9a-f]{32}$")


@dataclass(frozen=True, slots=True)
class FileObject:
    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    object: str = "file"
    status: str = "processed"
    expires_at: int | None = None
    status_details: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _key(owner: str, file_id: str) -> str:
    return f"files/{owner}/{file_id}"


def _safe_filename(name: str) -> str:
    name = name.replace("\\", "/").rsplit("/", 1)[-1].strip()
    return "".join(c for c in name if c.isprintable())[:255] or "upload"


class FileStore:
    def __init__(self, store: ObjectStore, *, max_bytes: int, purposes: list[str]):
        self._store = store
        self._max_bytes = max_bytes
        self._purposes = purposes

    def create(self, key_id: str | None, data: bytes, *, filename: str, purpose: str,
               file_id: str | None = None) -> FileObject:
        """Store a file; ``file_id`` is only for server-made files (batch output)."""
        if file_id is None and purpose not in self._purposes:
            raise InvalidRequestError(f"purpose {purpose!r} is not accepted; use one of: "
                                      f"{', '.join(self._purposes)}", param="purpose")
        if not data:
            raise InvalidRequestError("the file is empty", param="file")
        file_id = file_id or "file-" + uuid.uuid4().hex
        created = int(time.time())
        meta = {"filename": _safe_filename(filename), "purpose": purpose,
                "created-at": str(created)}
        self._store.put(_key(caller_id(key_id), file_id), data,
                        content_type="application/jsonl", metadata=meta)
        return FileObject(id=file_id, bytes=len(data), created_at=created,
                          filename=meta["filename"], purpose=purpose)

    def _check_id(self, file_id: str) -> None:
        if not FILE_ID_RE.match(file_id):
            raise NotFoundError(f"No such file: {file_id!r}", param="file_id")

    def get(self, key_id: str | None, file_id: str) -> FileObject:
        self._check_id(file_id)
        info = self._store.head(_key(caller_id(key_id), file_id))
        if info is None:
            raise NotFoundError(f"No such file: {file_id!r}", param="file_id")
        m = info.metadata
        return FileObject(id=file_id, bytes=info.size, created_at=int(m.get("created-at", 0)),
                          filename=m.get("filename", ""), purpose=m.get("purpose", ""))

    def content(self, key_id: str | None, file_id: str) -> bytes:
        self._check_id(file_id)
        try:
            return self._store.get(_key(caller_id(key_id), file_id))
        except ObjectNotFound:
            raise NotFoundError(f"No such file: {file_id!r}", param="file_id") from None

    def delete(self, key_id: str | None, file_id: str) -> dict:
        self.get(key_id, file_id)
        self._store.delete(_key(caller_id(key_id), file_id))
        return {"id": file_id, "object": "file", "deleted": True}

    def list(self, key_id: str | None, *, purpose: str | None = None, limit: int = 10000,
             after: str | None = None, order: str = "desc") -> dict:
        if order not in ("asc", "desc"):
            raise InvalidRequestError("order must be 'asc' or 'desc'", param="order")
        if not 1 <= limit <= 10000:
            raise InvalidRequestError("limit must be between 1 and 10000", param="limit")
        prefix = f"files/{caller_id(key_id)}/"
        files = [self.get(key_id, k[len(prefix):]) for k in self._store.list_keys(prefix)
                 if FILE_ID_RE.match(k[len(prefix):])]
        if purpose:
            files = [f for f in files if f.purpose == purpose]
        files.sort(key=lambda f: (f.created_at, f.id), reverse=order == "desc")
        return list_page(files, limit=limit, after=after, what="file",
                         render=lambda f: f.to_dict())

    @property
    def max_bytes(self) -> int:
        return self._max_bytes
