"""The Batches API's rules, apart from HTTP: what a create must hold, the per-key batch
quotas, what can be cancelled. The routes (:mod:`serving.api.routes.batches`) call it; the
runner (:mod:`serving.batch.runner`) drives what it created."""

from __future__ import annotations

from typing import Any

from serving.api.auth import caller_id
from serving.batch.record import new_batch
from serving.batch.store import BatchStore
from serving.batch.validate import ENDPOINT
from serving.config import ServingConfig
from serving.errors import InvalidRequestError, NotFoundError, RateLimitError
from serving.metrics import ApiMetrics
from serving.preprocess.sources import describe_size
from serving.protocol import BatchCreateRequest
from serving.storage.files import FileStore

COMPLETION_WINDOW = "24h"
COMPLETION_WINDOW_S = 24 * 3600


class BatchService:
    def __init__(self, config: ServingConfig, batches: BatchStore, files: FileStore,
                 metrics: ApiMetrics):
        self._config = config
        self.batches = batches
        self._files = files
        self._metrics = metrics

    def create(self, key_id: str | None, body: BatchCreateRequest) -> dict[str, Any]:
        if body.endpoint != ENDPOINT:
            raise InvalidRequestError(f"endpoint must be {ENDPOINT}", param="endpoint")
        if body.completion_window != COMPLETION_WINDOW:
            raise InvalidRequestError(f"completion_window must be '{COMPLETION_WINDOW}'",
                                      param="completion_window")
        try:
            input_file = self._files.get(key_id, body.input_file_id)
        except NotFoundError:
            raise InvalidRequestError(f"input_file_id {body.input_file_id!r} is not one of your "
                                      "files", param="input_file_id") from None
        if input_file.purpose != "batch":
            raise InvalidRequestError("the input file must have purpose 'batch'",
                                      param="input_file_id")
        self._check_quota(key_id, input_file.bytes)
        batch = new_batch(caller_id(key_id), input_file_id=body.input_file_id,
                          endpoint=body.endpoint, completion_window=body.completion_window,
                          metadata=body.metadata, window_s=COMPLETION_WINDOW_S)
        self.batches.create(batch)
        return batch.public()

    def _check_quota(self, key_id: str | None, new_bytes: int) -> None:
        """Active batches and their input bytes per key (a soft quota: two creates racing
        can both pass; the next one sees them)."""
        limits = self._config.limits.for_key(key_id)
        if limits.max_active_batches is None and limits.max_active_batch_bytes is None:
            return
        caller = caller_id(key_id)
        mine = [batch_id for owner, batch_id in self.batches.active() if owner == caller]
        if limits.max_active_batches is not None and len(mine) >= limits.max_active_batches:
            self._metrics.rate_limited.inc(tags={"key": caller, "limit": "batches"})
            raise RateLimitError(
                f"Batch quota reached for key {caller!r}: {len(mine)} active batches, limit "
                f"{limits.max_active_batches}. Wait for one to finish or cancel one.",
                limit="batches", code="batch_quota_exceeded", retry_after_s=60)
        if limits.max_active_batch_bytes is not None:
            active_bytes = 0
            for batch_id in mine:
                try:
                    batch = self.batches.load(caller, batch_id)
                    active_bytes += self._files.get(key_id, batch.input_file_id).bytes
                except NotFoundError:
                    continue
            if active_bytes + new_bytes > limits.max_active_batch_bytes:
                self._metrics.rate_limited.inc(tags={"key": caller, "limit": "batches"})
                raise RateLimitError(
                    f"Batch quota reached for key {caller!r}: active batches hold "
                    f"{describe_size(active_bytes)} of input and this one "
                    f"{describe_size(new_bytes)}, over the "
                    f"{describe_size(limits.max_active_batch_bytes)} limit. Wait for a batch "
                    "to finish.", limit="batches", code="batch_quota_exceeded",
                    retry_after_s=60)

    def get(self, key_id: str | None, batch_id: str) -> dict[str, Any]:
        return self.batches.view(self.batches.load(caller_id(key_id), batch_id))

    def list(self, key_id: str | None, *, limit: int, after: str | None) -> dict[str, Any]:
        return self.batches.list(caller_id(key_id), limit=limit, after=after)

    def cancel(self, key_id: str | None, batch_id: str) -> dict[str, Any]:
        batch = self.batches.load(caller_id(key_id), batch_id)
        if batch.terminal:
            raise InvalidRequestError(f"batch {batch_id} is already {batch.status.value}; only "
                                      "validating or in-progress batches can be cancelled",
                                      code="batch_not_cancellable")
        self.batches.request_cancel(batch)
        return self.batches.view(batch)
