"""BatchRunner: drives batch jobs through the same preprocessor and generator as live traffic.

One replica. Jobs are found through their `_active` markers in the object store, so a
restarted runner (crash, SIGKILL, app restart) picks up every unfinished job where its last
written chunk left off. Live traffic comes first twice over: the runner lowers its own
concurrency while live requests are in flight on the generator, and its requests carry a lower
priority in vLLM's scheduler. All jobs share one pool of request slots, taken chunk by chunk,
so several jobs progress side by side.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from serving.api.chat import RemoteGeneration
from serving.api.validation import validate_chat
from serving.batch.record import BatchRecord, BatchStatus, RequestCounts
from serving.batch.store import BatchStore
from serving.batch.validate import parse_batch_input
from serving.config import ServingConfig
from serving.errors import NotFoundError, to_api_error
from serving.logs import route_to_serve_logs
from serving.messages import BATCH_PRIORITY, completion_response
from serving.metrics import BatchMetrics, add
from serving.protocol import ChatCompletionRequest
from serving.roles import BATCH_RUNNER, generator_handle
from serving.storage.factory import open_store
from serving.storage.files import FileStore

logger = logging.getLogger("qvq.batch")

RETRIES_ON_UNAVAILABLE = 5


def output_file_id(batch_id: str, kind: str) -> str:
    """Deterministic, so finalizing twice (after a crash) rewrites the same file."""
    return "file-" + hashlib.sha256(f"{batch_id}:{kind}".encode()).hexdigest()[:32]


class BatchRunner:
    def __init__(self, config: ServingConfig, preprocessor: DeploymentHandle,
                 generator: DeploymentHandle | None):
        route_to_serve_logs()
        self._config = config
        self._cfg = config.batch
        # None: the generator is the ingress of its own application, reached by name
        self._gen = generator or generator_handle(config)
        self._generation = RemoteGeneration(self._gen, preprocessor,
                                            config.server.replica_failure_retries)
        store = open_store(config.storage)
        self._batches = BatchStore(store)
        self._files = FileStore(store, max_bytes=config.files.max_file_bytes,
                                purposes=config.files.purposes)
        self._model_ids = set(config.model.model_ids)
        self._slots = asyncio.Semaphore(self._cfg.max_concurrency)
        self._in_flight = 0
        self._live_seen_at = -1e9
        self._live_checked = 0.0
        self._jobs: dict[str, asyncio.Task] = {}
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.Task | None = None
        self._metrics = BatchMetrics()
        self._remaining: dict[str, int] = {}  # batch id -> lines not finished yet

    # ---------------------------------------------------------------- control

    def _ensure_loop(self) -> None:
        if self._loop is None or self._loop.done():
            self._wake = asyncio.Event()
            self._loop = asyncio.create_task(self._run_forever())

    async def kick(self) -> str:
        """Look for new or cancelled jobs now (the router calls this after changes)."""
        self._ensure_loop()
        assert self._wake is not None
        self._wake.set()
        return "ok"

    async def check_health(self) -> None:
        # Serve calls this every few seconds: it also (re)starts the job loop after a restart.
        self._ensure_loop()

    async def _run_forever(self) -> None:
        while True:
            try:
                active = await asyncio.to_thread(self._batches.active)
                # every poll: Ray stops exporting a gauge that was not set for ~20 s
                self._metrics.active.set(len(active))
                self._metrics.remaining.set(sum(self._remaining.values()))
                for owner, batch_id in active:
                    task = self._jobs.get(batch_id)
                    if task is None or task.done():
                        self._jobs[batch_id] = asyncio.create_task(self._drive(owner, batch_id))
            except Exception:  # noqa: BLE001 - keep the loop alive; the store may be down
                logger.exception("batch scan failed")
            assert self._wake is not None
            try:
                await asyncio.wait_for(self._wake.wait(), self._cfg.poll_interval_s)
            except TimeoutError:
                pass
            self._wake.clear()

    # ---------------------------------------------------------------- one job

    async def _drive(self, owner: str, batch_id: str) -> None:
        try:
            batch = await asyncio.to_thread(self._batches.load, owner, batch_id)
            if batch.terminal:
                await asyncio.to_thread(self._batches.deactivate, batch_id)
                return
            if batch.status == BatchStatus.VALIDATING:
                batch = await self._validate(batch)
                if batch.status == BatchStatus.FAILED:
                    return
            if batch.status == BatchStatus.IN_PROGRESS:
                batch = await self._execute(batch)
            await self._finalize(batch)
        except NotFoundError:
            await asyncio.to_thread(self._batches.deactivate, batch_id)
        except Exception:  # noqa: BLE001 - retried on the next scan
            logger.exception("batch %s failed this round; will retry", batch_id)

    async def _validate(self, batch: BatchRecord) -> BatchRecord:
        owner = batch.owner
        try:
            data = await asyncio.to_thread(self._files.content, owner, batch.input_file_id)
        except NotFoundError:
            return await self._fail(batch, [{"code": "file_not_found", "line": None,
                                             "param": "input_file_id",
                                             "message": "input file not found"}])
        lines, errors = await asyncio.to_thread(
            parse_batch_input, data, max_lines=self._cfg.max_lines,
            max_bytes=self._cfg.max_input_bytes, model_ids=self._model_ids,
            check=lambda chat: validate_chat(self._config, chat, owner))
        if errors:
            return await self._fail(batch, [e.to_dict() for e in errors])
        await asyncio.to_thread(self._batches.write_input, batch, [line.raw for line in lines])
        chunk = self._cfg.chunk_size
        batch.status, batch.in_progress_at = BatchStatus.IN_PROGRESS, int(time.time())
        batch.chunk_size, batch.total_chunks = chunk, (len(lines) + chunk - 1) // chunk
        batch.request_counts = RequestCounts(total=len(lines))
        await asyncio.to_thread(self._batches.save, batch)
        return batch

    async def _fail(self, batch: BatchRecord, errors: list[dict]) -> BatchRecord:
        batch.status, batch.failed_at = BatchStatus.FAILED, int(time.time())
        batch.errors = {"object": "list", "data": errors}
        await asyncio.to_thread(self._batches.save, batch)
        await asyncio.to_thread(self._batches.deactivate, batch.id)
        return batch

    async def _execute(self, batch: BatchRecord) -> BatchRecord:
        lines = await asyncio.to_thread(self._batches.read_input, batch)
        done = await asyncio.to_thread(self._batches.done_chunks, batch)
        size = batch.chunk_size
        for chunk in range(batch.total_chunks):
            if chunk in done:
                continue
            stop = await self._stop_reason(batch)
            if stop:
                batch.status = stop
                break
            results = await asyncio.gather(*(self._run_line(batch, raw)
                                             for raw in lines[chunk * size:(chunk + 1) * size]))
            await asyncio.to_thread(self._batches.write_part, batch, chunk, list(results))
            failed = sum(1 for r in results if r["response"]["status_code"] != 200)
            done[chunk] = (len(results) - failed, failed)
            counts = batch.request_counts
            counts.completed = sum(c for c, _ in done.values())
            counts.failed = sum(f for _, f in done.values())
            add(self._metrics.lines, len(results) - failed, {"status": "completed"})
            add(self._metrics.lines, failed, {"status": "failed"})
            self._remaining[batch.id] = counts.total - counts.completed - counts.failed
            self._metrics.remaining.set(sum(self._remaining.values()))
            await asyncio.to_thread(self._batches.save, batch)  # the checkpoint
        return batch

    async def _stop_reason(self, batch: BatchRecord) -> BatchStatus | None:
        if time.time() > batch.expires_at:
            return BatchStatus.EXPIRED
        if await asyncio.to_thread(self._batches.cancel_requested, batch):
            return BatchStatus.CANCELLING
        return None

    async def _finalize(self, batch: BatchRecord) -> None:
        ending = batch.status
        if ending == BatchStatus.IN_PROGRESS:
            batch.status, batch.finalizing_at = BatchStatus.FINALIZING, int(time.time())
            await asyncio.to_thread(self._batches.save, batch)
        results = await asyncio.to_thread(self._batches.read_parts, batch)
        for kind, rows in (("output", [r for r in results
                                       if r["response"]["status_code"] == 200]),
                           ("error", [r for r in results
                                      if r["response"]["status_code"] != 200])):
            if rows:
                created = await asyncio.to_thread(
                    self._files.create, batch.owner,
                    "".join(json.dumps(r) + "\n" for r in rows).encode(),
                    filename=f"{batch.id}_{kind}.jsonl", purpose="batch_output",
                    file_id=output_file_id(batch.id, kind))
                setattr(batch, f"{kind}_file_id", created.id)
        now = int(time.time())
        final = {BatchStatus.CANCELLING: BatchStatus.CANCELLED,
                 BatchStatus.EXPIRED: BatchStatus.EXPIRED}.get(ending, BatchStatus.COMPLETED)
        batch.status = final
        setattr(batch, f"{final.value}_at", now)
        await asyncio.to_thread(self._batches.save, batch)
        await asyncio.to_thread(self._batches.deactivate, batch.id)
        self._remaining.pop(batch.id, None)
        self._metrics.remaining.set(sum(self._remaining.values()))
        logger.info("batch %s %s: %s", batch.id, final.value, batch.request_counts)

    # ---------------------------------------------------------------- one request

    async def _live_traffic(self) -> bool:
        """Live requests now, or within the last ``live_grace_s`` (they come in waves: a gap
        between two live requests is no invitation to fill the engine with batch work)."""
        now = time.monotonic()
        if now - self._live_checked > 0.1:
            self._live_checked = now
            try:
                live = (await self._gen.load.remote())["live"]
            except Exception:  # noqa: BLE001 - unknown load: be conservative
                live = 1
            if live:
                self._live_seen_at = now
        return now - self._live_seen_at < self._cfg.live_grace_s

    async def _acquire(self) -> None:
        await self._slots.acquire()
        while self._in_flight >= self._cfg.live_concurrency and await self._live_traffic():
            await asyncio.sleep(0.05)  # live traffic first: wait until it has drained
        self._in_flight += 1

    def _release(self) -> None:
        self._in_flight -= 1
        self._slots.release()

    async def _run_line(self, batch: BatchRecord, raw: str) -> dict[str, Any]:
        obj = json.loads(raw)
        request_id = "batch_req_" + uuid.uuid4().hex
        result = {"id": request_id, "custom_id": obj["custom_id"], "error": None}
        for attempt in range(RETRIES_ON_UNAVAILABLE + 1):
            await self._acquire()
            try:
                body = await self._generate(batch, obj["body"], request_id)
                result["response"] = {"status_code": 200, "request_id": request_id,
                                      "body": body}
                return result
            except Exception as exc:  # noqa: BLE001 - becomes this line's error
                api = to_api_error(exc)
                if api.status_code == 503 and attempt < RETRIES_ON_UNAVAILABLE:
                    await asyncio.sleep(min(2 ** attempt, 10))
                    continue
                result["response"] = {"status_code": api.status_code,
                                      "request_id": request_id, "body": api.to_openai()}
                return result
            finally:
                self._release()
        raise AssertionError("unreachable")

    async def _generate(self, batch: BatchRecord, body: dict, request_id: str) -> dict:
        """One line through the same path as a live request (validate_chat, then the
        generation the router uses), at batch priority. The line was checked when the batch
        was validated; this parses the stored copy, which is what survives a restart."""
        chat = ChatCompletionRequest.model_validate(body)
        request = validate_chat(self._config, chat, batch.owner, request_id=request_id)
        completion = await self._generation.complete(request, BATCH_PRIORITY)
        return completion_response(request_id, request.created, chat.model, completion,
                                   with_logprobs=chat.logprobs).model_dump(mode="json")


def runner_deployment(config: ServingConfig) -> serve.Deployment:
    return serve.deployment(
        BatchRunner, name=BATCH_RUNNER, num_replicas=1,
        ray_actor_options={"num_cpus": config.batch.num_cpus,
                           **({"resources": dict(config.batch.resources)}
                              if config.batch.resources else {})},
        max_ongoing_requests=64, health_check_period_s=2,
        logging_config={"enable_access_log": False, "encoding": config.server.log_encoding},
    )



