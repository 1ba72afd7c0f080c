"""A batch as stored and as clients see it: OpenAI's batch object plus the fields only the
runner reads (who owns it, how it was chunked), typed, with the one list of statuses."""

from __future__ import annotations

import time
import uuid
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class BatchStatus(StrEnum):
    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


# a batch in one of these never changes again (clients stop polling, the runner lets go)
TERMINAL: frozenset[str] = frozenset({BatchStatus.COMPLETED, BatchStatus.FAILED,
                                      BatchStatus.EXPIRED, BatchStatus.CANCELLED})
PRIVATE = frozenset({"owner", "chunk_size", "total_chunks"})


class RequestCounts(BaseModel):
    model_config = ConfigDict(extra="forbid")

    total: int = 0
    completed: int = 0
    failed: int = 0


class BatchRecord(BaseModel):
    """``batch.json``: OpenAI's fields, then the private ones (never shown, :meth:`public`).
    Assignments are validated, so a status is always one of :class:`BatchStatus`."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: dict[str, Any] | None = None
    input_file_id: str
    completion_window: str
    status: BatchStatus = BatchStatus.VALIDATING
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts = RequestCounts()
    metadata: dict[str, str] | None = None
    # private: the owning caller (serving.api.auth.caller_id) and the runner's chunking
    owner: str
    chunk_size: int = 0
    total_chunks: int = 0

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def public(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude=set(PRIVATE))


def new_batch(owner: str, *, input_file_id: str, endpoint: str, completion_window: str,
              metadata: dict[str, str] | None, window_s: int) -> BatchRecord:
    now = int(time.time())
    return BatchRecord(id="batch_" + uuid.uuid4().hex, endpoint=endpoint,
                       input_file_id=input_file_id, completion_window=completion_window,
                       created_at=now, expires_at=now + window_s, metadata=metadata or None,
                       owner=owner)
