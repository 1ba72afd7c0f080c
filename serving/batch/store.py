"""Durable batch state in the object store, owned by the creating API key.

Layout::

    batches/<owner>/<batch id>/batch.json        the OpenAI batch object (+ private fields)
    batches/<owner>/<batch id>/parts/<n>.jsonl   results of chunk n, written once it is whole
    batches/_active/<batch id>                   marker: a job the runner must drive (owner)

``<owner>`` is the caller that created the batch (:func:`serving.api.auth.caller_id`: its key
id, ``anonymous`` on an open API). A chunk's results land in one atomic write, so after a
crash a chunk is either complete or absent: the runner resumes by skipping the chunks that
exist, and the final output, assembled from the parts in order, holds every custom_id exactly
once.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from serving.batch.record import BatchRecord, BatchStatus
from serving.errors import InvalidRequestError, NotFoundError
from serving.protocol import list_page
from serving.storage.base import ObjectNotFound, ObjectStore

BATCH_ID_RE = re.compile(r"^batch_[0-9a-f]{32}$")
ACTIVE_PREFIX = "batches/_active/"


class BatchStore:
    def __init__(self, store: ObjectStore):
        self.store = store

    @staticmethod
    def _prefix(owner: str, batch_id: str) -> str:
        return f"batches/{owner}/{batch_id}/"

    def save(self, batch: BatchRecord) -> None:
        self.store.put(self._prefix(batch.owner, batch.id) + "batch.json",
                       batch.model_dump_json().encode(), content_type="application/json")

    def create(self, batch: BatchRecord) -> None:
        self.save(batch)
        self.store.put(ACTIVE_PREFIX + batch.id, batch.owner.encode(),
                       content_type="text/plain")

    def load(self, owner: str, batch_id: str) -> BatchRecord:
        if not BATCH_ID_RE.match(batch_id):
            raise NotFoundError(f"No such batch: {batch_id!r}", param="batch_id")
        try:
            data = self.store.get(self._prefix(owner, batch_id) + "batch.json")
        except ObjectNotFound:
            raise NotFoundError(f"No such batch: {batch_id!r}", param="batch_id") from None
        return BatchRecord.model_validate_json(data)

    def request_cancel(self, batch: BatchRecord) -> None:
        """A separate object, so it never races the runner's writes of batch.json."""
        self.store.put(self._prefix(batch.owner, batch.id) + "cancel",
                       str(int(time.time())).encode(), content_type="text/plain")

    def cancel_requested(self, batch: BatchRecord) -> int | None:
        info = self.store.head(self._prefix(batch.owner, batch.id) + "cancel")
        if info is None:
            return None
        return int(self.store.get(self._prefix(batch.owner, batch.id) + "cancel"))

    def view(self, batch: BatchRecord) -> dict[str, Any]:
        """The batch as clients see it: a pending cancel shows as ``cancelling``."""
        out = batch.public()
        if not batch.terminal:
            requested = self.cancel_requested(batch)
            if requested is not None:
                out.update(status=BatchStatus.CANCELLING.value, cancelling_at=requested)
        return out

    def deactivate(self, batch_id: str) -> None:
        self.store.delete(ACTIVE_PREFIX + batch_id)

    def active(self) -> list[tuple[str, str]]:
        out = []
        for key in self.store.list_keys(ACTIVE_PREFIX):
            batch_id = key[len(ACTIVE_PREFIX):]
            try:
                out.append((self.store.get(key).decode(), batch_id))
            except ObjectNotFound:
                continue
        return out

    def list(self, owner: str, *, limit: int = 20, after: str | None = None) -> dict[str, Any]:
        if not 1 <= limit <= 100:
            raise InvalidRequestError("limit must be between 1 and 100", param="limit")
        prefix = f"batches/{owner}/"
        ids = {k[len(prefix):].split("/", 1)[0] for k in self.store.list_keys(prefix)
               if k.endswith("/batch.json")}
        batches = sorted((self.load(owner, i) for i in ids if BATCH_ID_RE.match(i)),
                         key=lambda b: (b.created_at, b.id), reverse=True)
        return list_page(batches, limit=limit, after=after, what="batch", render=self.view)

    # ---------------------------------------------------------------- input and parts

    def write_input(self, batch: BatchRecord, lines: list[str]) -> None:
        """The validated lines, so resumption never depends on the input file staying put."""
        self.store.put(self._prefix(batch.owner, batch.id) + "input.jsonl",
                       "\n".join(lines).encode(), content_type="application/jsonl")

    def read_input(self, batch: BatchRecord) -> list[str]:
        data = self.store.get(self._prefix(batch.owner, batch.id) + "input.jsonl")
        return data.decode().split("\n") if data else []

    def part_key(self, batch: BatchRecord, chunk: int) -> str:
        return self._prefix(batch.owner, batch.id) + f"parts/{chunk:06d}.jsonl"

    def write_part(self, batch: BatchRecord, chunk: int, results: list[dict]) -> None:
        body = "".join(json.dumps(r) + "\n" for r in results).encode()
        failed = sum(1 for r in results if r["response"]["status_code"] != 200)
        self.store.put(self.part_key(batch, chunk), body, content_type="application/jsonl",
                       metadata={"completed": str(len(results) - failed),
                                 "failed": str(failed)})

    def done_chunks(self, batch: BatchRecord) -> dict[int, tuple[int, int]]:
        """chunk -> (completed, failed) for every chunk already written."""
        prefix = self._prefix(batch.owner, batch.id) + "parts/"
        done = {}
        for key in self.store.list_keys(prefix):
            info = self.store.head(key)
            if info is None:
                continue
            chunk = int(key[len(prefix):].split(".", 1)[0])
            done[chunk] = (int(info.metadata.get("completed", 0)),
                           int(info.metadata.get("failed", 0)))
        return done

    def read_parts(self, batch: BatchRecord) -> list[dict]:
        results = []
        for chunk in range(batch.total_chunks):
            try:
                data = self.store.get(self.part_key(batch, chunk))
            except ObjectNotFound:
                continue  # cancelled or expired before this chunk ran
            results += [json.loads(line) for line in data.decode().splitlines() if line]
        return results
