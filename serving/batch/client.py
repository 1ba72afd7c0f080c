"""A small HTTP client for the batch CLI (`qvq batch ...`): files and batches over the API."""

from __future__ import annotations

import pathlib
import sys
import time
from typing import Any

import httpx

from serving.batch.record import TERMINAL


class BatchClient:
    def __init__(self, base_url: str, api_key: str | None, timeout_s: float = 300, *,
                 transport: httpx.BaseTransport | None = None):
        """``transport`` replaces the network (kubectl-qvq sends through the API server's
        service proxy with it; tests can pass ``httpx.MockTransport``)."""
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers,
                                  timeout=timeout_s, transport=transport)

    def _check(self, resp: httpx.Response) -> Any:
        if resp.status_code >= 400:
            try:
                message = resp.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = resp.text[:200]
            raise RuntimeError(f"HTTP {resp.status_code}: {message}")
        return resp.json() if resp.headers.get("content-type", "").startswith(
            "application/json") else resp.content

    def submit(self, path: pathlib.Path, metadata: dict[str, str] | None = None) -> dict:
        with path.open("rb") as f:
            uploaded = self._check(self._http.post("/files", files={"file": (path.name, f)},
                                                   data={"purpose": "batch"}))
        return self._check(self._http.post("/batches", json={
            "input_file_id": uploaded["id"], "endpoint": "/v1/chat/completions",
            "completion_window": "24h", "metadata": metadata}))

    def models(self) -> dict:
        return self._check(self._http.get("/models"))

    def status(self, batch_id: str) -> dict:
        return self._check(self._http.get(f"/batches/{batch_id}"))

    def cancel(self, batch_id: str) -> dict:
        return self._check(self._http.post(f"/batches/{batch_id}/cancel"))

    def download(self, batch_id: str, out_dir: pathlib.Path) -> list[pathlib.Path]:
        batch = self.status(batch_id)
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for kind in ("output_file_id", "error_file_id"):
            file_id = batch.get(kind)
            if file_id:
                target = out_dir / f"{batch_id}_{kind.split('_')[0]}.jsonl"
                target.write_bytes(self._check(self._http.get(f"/files/{file_id}/content")))
                written.append(target)
        return written

    def wait(self, batch_id: str, *, interval_s: float = 1.0, out=sys.stderr) -> dict:
        """Poll until the batch ends, drawing a one-line progress bar."""
        started = time.monotonic()
        while True:
            batch = self.status(batch_id)
            counts = batch["request_counts"]
            done = counts["completed"] + counts["failed"]
            total = counts["total"] or 0
            elapsed = time.monotonic() - started
            rate = done / elapsed if elapsed > 0 else 0.0
            eta = (total - done) / rate if rate > 0 and total else float("nan")
            width = 30
            filled = int(width * done / total) if total else 0
            out.write(f"\r{batch['status']:>11} [{'#' * filled}{'.' * (width - filled)}] "
                      f"{counts['completed']} ok / {counts['failed']} failed / {total} "
                      f"| {rate:5.1f} req/s | ETA {eta:5.0f}s ")
            out.flush()
            if batch["status"] in TERMINAL:
                out.write("\n")
                return batch
            time.sleep(interval_s)
