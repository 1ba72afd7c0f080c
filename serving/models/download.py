"""Put a checkpoint from S3 on a local volume: the init step of a GPU pod (`qvq model download`).

Every object under ``s3://BUCKET/PREFIX/`` lands at ``DEST/<key relative to PREFIX>``, fetched
with boto3's managed transfer (ranged GETs in parallel above the part size, several files at
once). Each file is written to a temporary name in its own directory and renamed when complete,
so DEST never holds a torn file under a real name.

Restarts are cheap: a file already present with the object's size (and, where the object's ETag
is a plain MD5, the same MD5) is kept. When every object is in place, ``DEST/.qvq-download-
complete`` records the source, the object count and the bytes; a later run for the same source
returns at once. A marker for another source is an error: two checkpoints in one directory would
load as one.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import logging
import os
import pathlib
import re
import socket
import time
from dataclasses import dataclass

from boto3.exceptions import RetriesExceededError
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
from pydantic import ValidationError

from serving.config import S3Config
from serving.errors import ConfigError, QVQError, ServiceUnavailableError
from serving.storage.s3 import NO_BUCKET_CODES, REJECTED_CODES, UNREACHABLE, make_client

logger = logging.getLogger("qvq.models")

MARKER = ".qvq-download-complete"
PART_SUFFIX = ".qvq-part"
MAX_FILES_AT_ONCE = 4
_MD5_ETAG = re.compile(r'^"?([0-9a-fA-F]{32})"?$')  # multipart ETags end in "-<parts>"


@dataclass(frozen=True)
class S3Location:
    """``s3://bucket/prefix/``; the prefix is empty or ends in ``/`` (a directory, not a
    string prefix: ``models/qvq`` must not also match ``models/qvq-old/...``)."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> S3Location:
        if not url.startswith("s3://"):
            raise ConfigError(f"--source must be an s3://BUCKET/PREFIX URL, not {url!r}")
        bucket, _, prefix = url[len("s3://"):].partition("/")
        if not bucket:
            raise ConfigError(f"--source {url!r} has no bucket")
        prefix = prefix.strip("/")
        return cls(bucket, prefix + "/" if prefix else "")

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


@dataclass(frozen=True)
class RemoteObject:
    key: str
    relative: str
    size: int
    etag: str

    @property
    def md5(self) -> str | None:
        """The content MD5 when the ETag is one (single-part upload), else None."""
        match = _MD5_ETAG.match(self.etag)
        return match.group(1).lower() if match else None


@dataclass(frozen=True)
class DownloadResult:
    source: str
    dest: pathlib.Path
    objects: int
    bytes: int
    downloaded: int
    skipped: int
    bytes_downloaded: int
    seconds: float
    already_complete: bool = False

    def summary(self) -> str:
        if self.already_complete:
            return (f"{self.dest} already holds {self.source} ({self.objects} files, "
                    f"{self.bytes} bytes); nothing to do")
        return (f"{self.source} -> {self.dest}: {self.objects} files, {self.bytes} bytes "
                f"({self.downloaded} downloaded, {self.bytes_downloaded} bytes; "
                f"{self.skipped} already present) in {self.seconds:.1f} s")


def s3_config_for(location: S3Location, **fields) -> S3Config:
    """An S3Config for the source bucket; fields left as None keep S3Config's defaults."""
    try:
        return S3Config(bucket=location.bucket,
                        **{k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 's3'}: {e['msg']}"
                             for e in exc.errors())
        raise ConfigError(f"invalid S3 settings: {problems}") from None


def safe_path(dest: pathlib.Path, relative: str) -> pathlib.Path:
    """Where object ``relative`` (its key below the prefix) goes under ``dest``; ConfigError for
    a key that would land outside it (``..``, absolute, empty parts) or on our own files."""
    parts = relative.split("/")
    if relative.startswith("/") or "\0" in relative or any(p in ("", ".", "..") for p in parts):
        raise ConfigError(f"refusing object key {relative!r}: it would be written outside the "
                          "destination directory")
    if relative == MARKER or parts[-1].endswith(PART_SUFFIX):
        raise ConfigError(f"refusing object key {relative!r}: the name is reserved for "
                          "download bookkeeping")
    root = pathlib.Path(os.path.abspath(dest))
    path = pathlib.Path(os.path.abspath(root.joinpath(*parts)))
    if os.path.commonpath([root, path]) != str(root) or path == root:
        raise ConfigError(f"refusing object key {relative!r}: it would be written outside the "
                          "destination directory")
    return path


def read_marker(dest: pathlib.Path) -> dict | None:
    try:
        data = json.loads((dest / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def download_prefix(source: S3Location, dest: str | os.PathLike[str], config: S3Config, *,
                    workers: int = 8, page_size: int = 1000) -> DownloadResult:
    """Download every object under ``source`` into ``dest`` (see the module docstring).

    ``workers`` is the number of parallel ranged GETs per file; up to ``MAX_FILES_AT_ONCE`` files
    download at once. Raises ConfigError (bad source, credentials, unsafe keys),
    ServiceUnavailableError (endpoint unreachable, transfer failed) or QVQError (local disk).
    """
    if workers < 1:
        raise ConfigError("--workers must be at least 1")
    started = time.monotonic()
    dest = pathlib.Path(dest)
    marker = read_marker(dest)
    if marker is not None:
        if marker.get("source") == str(source):
            return DownloadResult(str(source), dest, int(marker.get("objects", 0)),
                                  int(marker.get("bytes", 0)), 0, 0, 0,
                                  time.monotonic() - started, already_complete=True)
        raise ConfigError(f"{dest} already holds {marker.get('source')!r}, not {source}; use "
                          "another --dest or empty it first")

    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise QVQError(f"cannot create {dest}: {exc.strerror or exc}") from None
    files_at_once = min(MAX_FILES_AT_ONCE, workers)
    client = make_client(config, max_pool_connections=files_at_once * workers + 2)
    where = f"{source} at {config.endpoint_url or 'AWS S3'}"
    objects = _list(client, source, page_size, where)
    if not objects:
        raise ConfigError(f"no objects under {source} (endpoint {config.endpoint_url or 'AWS'});"
                          " check the bucket and prefix")
    targets = [(obj, safe_path(dest, obj.relative)) for obj in objects]  # all checked first

    transfer = TransferConfig(multipart_threshold=config.multipart_threshold_mib * 2**20,
                              multipart_chunksize=config.multipart_chunk_mib * 2**20,
                              max_concurrency=workers, use_threads=True)
    _remove_own_leftovers(dest)
    todo = [(obj, path) for obj, path in targets if not _present(obj, path)]
    logger.info("%s: %d objects, %d to download", source, len(objects), len(todo))
    with concurrent.futures.ThreadPoolExecutor(files_at_once,
                                               thread_name_prefix="qvq-download") as pool:
        futures = [pool.submit(_fetch, client, source.bucket, obj, path, transfer, where)
                   for obj, path in todo]
        try:
            for future in concurrent.futures.as_completed(futures):
                future.result()
        except BaseException:
            for f in futures:
                f.cancel()
            raise

    total = sum(obj.size for obj in objects)
    _write_marker(dest, {"source": str(source), "objects": len(objects), "bytes": total})
    return DownloadResult(str(source), dest, len(objects), total, len(todo),
                          len(objects) - len(todo), sum(obj.size for obj, _ in todo),
                          time.monotonic() - started)


def _list(client, source: S3Location, page_size: int, where: str) -> list[RemoteObject]:
    out: list[RemoteObject] = []
    try:
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=source.bucket, Prefix=source.prefix, PaginationConfig={"PageSize": page_size})
        for page in pages:
            for item in page.get("Contents", []):
                key = item["Key"]
                if key.endswith("/"):  # "directory" placeholder objects
                    continue
                out.append(RemoteObject(key, key[len(source.prefix):], int(item["Size"]),
                                        item.get("ETag", "")))
    except Exception as exc:  # noqa: BLE001 - mapped to our tree, others re-raised
        _reraise(exc, where, "listing")
    return out


def _reraise(exc: Exception, where: str, action: str) -> None:
    mapped = _s3_error(exc, where, action)
    if mapped is exc:
        raise exc
    raise mapped from None


def _s3_error(exc: Exception, where: str, action: str) -> Exception:
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code"))
        if code in REJECTED_CODES:
            return ConfigError(f"S3 refused {action} {where} ({code}): check the access key, "
                               "secret and their permissions on this bucket")
        if code in NO_BUCKET_CODES and action == "listing":
            return ConfigError(f"S3 bucket of {where} does not exist ({code})")
        return ServiceUnavailableError(f"S3 {action} {where} failed ({code}); retry",
                                       code="storage_unavailable")
    if isinstance(exc, NoCredentialsError):
        return ConfigError("no S3 credentials found: set AWS_ACCESS_KEY_ID / "
                           "AWS_SECRET_ACCESS_KEY, a profile, or --credentials-file")
    if isinstance(exc, UNREACHABLE):
        return ServiceUnavailableError(f"cannot reach the S3 endpoint for {where}: {exc}",
                                       code="storage_unavailable")
    if isinstance(exc, BotoCoreError | RetriesExceededError):
        return ServiceUnavailableError(f"S3 {action} {where} failed: {exc}",
                                       code="storage_unavailable")
    return exc


def _part_name(path: pathlib.Path) -> pathlib.Path:
    # Named by host (the pod), so a restarted init container finds its own leftovers and two
    # pods sharing a volume never write the same temporary file.
    return path.with_name(f".{path.name}.{socket.gethostname()}{PART_SUFFIX}")


def _remove_own_leftovers(dest: pathlib.Path) -> None:
    """Temporary files an earlier, interrupted run on this host left (others' may be live)."""
    for leftover in dest.rglob(f"*.{socket.gethostname()}{PART_SUFFIX}"):
        with contextlib.suppress(OSError):
            leftover.unlink()


def _present(obj: RemoteObject, path: pathlib.Path) -> bool:
    try:
        if not path.is_file() or path.stat().st_size != obj.size:
            return False
        if obj.md5 is None:
            return True
        with path.open("rb") as f:
            return hashlib.file_digest(f, "md5").hexdigest() == obj.md5
    except OSError:
        return False


def _fetch(client, bucket: str, obj: RemoteObject, path: pathlib.Path,
           transfer: TransferConfig, where: str) -> None:
    tmp = _part_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("wb") as f:
            try:
                client.download_fileobj(bucket, obj.key, f, Config=transfer)
            except Exception as exc:  # noqa: BLE001 - mapped to our tree, others re-raised
                if isinstance(exc, ClientError) and str(exc.response.get("Error", {}).get(
                        "Code")) in ("404", "NoSuchKey", "NotFound"):
                    raise QVQError(f"{obj.key} vanished from {where} during the download; "
                                   "rerun when the upload is complete") from None
                _reraise(exc, f"s3://{bucket}/{obj.key}", "downloading")
            f.flush()
            os.fsync(f.fileno())
        size = tmp.stat().st_size
        if size != obj.size:
            raise QVQError(f"{obj.key}: got {size} bytes, listed {obj.size}; the object "
                           "changed during the download, rerun")
        os.replace(tmp, path)
    except OSError as exc:
        raise QVQError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    logger.info("downloaded %s (%d bytes)", obj.relative, obj.size)


def _write_marker(dest: pathlib.Path, record: dict) -> None:
    tmp = dest / f"{MARKER}{PART_SUFFIX}"
    try:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, dest / MARKER)
    except OSError as exc:
        raise QVQError(f"cannot write {dest / MARKER}: {exc.strerror or exc}") from None
