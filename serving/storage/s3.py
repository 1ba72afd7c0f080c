"""S3-compatible object store (AWS S3, MinIO, SeaweedFS, Ceph RGW, GCS interop...) via boto3."""

from __future__ import annotations

import configparser
import io
import logging

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config as BotoConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from serving.config import S3Config
from serving.errors import ConfigError, ServiceUnavailableError
from serving.storage.base import ObjectInfo, ObjectNotFound, PresignedRequest

logger = logging.getLogger("qvq.storage")

UNREACHABLE = (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError,
               ConnectionClosedError)
_NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound"}
# Codes with which S3-compatible servers reject a key id or secret.
REJECTED_CODES = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
NO_BUCKET_CODES = {"404", "NoSuchBucket", "NotFound"}


def storage_unavailable(detail: str = "") -> ServiceUnavailableError:
    return ServiceUnavailableError(
        "The object store is unreachable; nothing was stored. Retry shortly."
        + (f" ({detail})" if detail else ""), code="storage_unavailable")


def _credentials(config: S3Config) -> dict[str, str]:
    if not config.credentials_file:
        return {}  # boto3's standard chain: env, shared config, instance/pod identity
    parser = configparser.ConfigParser()
    try:
        with open(config.credentials_file) as f:
            parser.read_file(f)
    except OSError as exc:
        raise ConfigError(f"storage.s3.credentials_file: cannot read "
                          f"{config.credentials_file}: {exc.strerror}") from exc
    if not parser.has_section(config.profile):
        raise ConfigError(f"storage.s3.credentials_file has no [{config.profile}] section")
    section = parser[config.profile]
    try:
        creds = {"aws_access_key_id": section["aws_access_key_id"],
                 "aws_secret_access_key": section["aws_secret_access_key"]}
    except KeyError as exc:
        raise ConfigError(f"storage.s3.credentials_file [{config.profile}] lacks {exc}") from None
    if section.get("aws_session_token"):
        creds["aws_session_token"] = section["aws_session_token"]
    return creds


def make_client(config: S3Config, *, max_pool_connections: int = 10):
    """A boto3 S3 client for ``config`` (endpoint, addressing, timeouts, retries, credentials).

    Its own session, so threads and processes never share boto3's default session. Raise
    ``max_pool_connections`` to at least the number of threads that use the client at once.
    """
    boto_config = BotoConfig(
        region_name=config.region,
        connect_timeout=config.connect_timeout_s, read_timeout=config.read_timeout_s,
        retries={"max_attempts": config.max_attempts, "mode": "standard"},
        s3={"addressing_style": "path" if config.path_style else "auto"},
        signature_version="s3v4", max_pool_connections=max_pool_connections,
    )
    return boto3.session.Session().client(
        "s3", endpoint_url=config.endpoint_url, config=boto_config, **_credentials(config))


class S3ObjectStore:
    name = "s3"

    def __init__(self, config: S3Config, *, bucket: str | None = None):
        self._config = config
        self.bucket = bucket or config.bucket
        self._client = make_client(config)
        self._transfer = TransferConfig(
            multipart_threshold=config.multipart_threshold_mib * 2**20,
            multipart_chunksize=config.multipart_chunk_mib * 2**20, use_threads=True,
            max_concurrency=4)

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code"))
            if code in _NOT_FOUND_CODES or getattr(fn, "__name__", "") == "head_bucket":
                raise
            logger.warning("object store error %s on %s", code, getattr(fn, "__name__", fn))
            raise ServiceUnavailableError(
                f"The object store refused the request ({code}); nothing was stored. Retry "
                "shortly; if it persists the operator should check the storage settings.",
                code="storage_unavailable") from None
        except UNREACHABLE as exc:
            logger.warning("object store unreachable: %r", exc)
            raise storage_unavailable() from None
        except S3UploadFailedError as exc:  # multipart/transfer failure: already aborted
            logger.warning("object store upload failed: %r", exc)
            raise storage_unavailable() from None
        except NoCredentialsError:
            raise ConfigError("no S3 credentials found: set AWS_ACCESS_KEY_ID / "
                              "AWS_SECRET_ACCESS_KEY, a profile, or "
                              "storage.s3.credentials_file") from None

    def put(self, key: str, data: bytes, *, content_type: str = "application/octet-stream",
            metadata: dict[str, str] | None = None) -> None:
        extra = {"ContentType": content_type, "Metadata": dict(metadata or {})}
        # upload_fileobj switches to multipart above the threshold and aborts the upload on
        # failure, so an interrupted put never leaves a partial object behind.
        self._call(self._client.upload_fileobj, io.BytesIO(data), self.bucket, key,
                   ExtraArgs=extra, Config=self._transfer)

    def get(self, key: str) -> bytes:
        try:
            resp = self._call(self._client.get_object, Bucket=self.bucket, Key=key)
            return resp["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _NOT_FOUND_CODES:
                raise ObjectNotFound(key) from None
            raise

    def head(self, key: str) -> ObjectInfo | None:
        try:
            resp = self._call(self._client.head_object, Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _NOT_FOUND_CODES:
                return None
            raise
        return ObjectInfo(key=key, size=int(resp.get("ContentLength", 0)),
                          content_type=resp.get("ContentType", "application/octet-stream"),
                          metadata=dict(resp.get("Metadata", {})))

    def delete(self, key: str) -> None:
        self._call(self._client.delete_object, Bucket=self.bucket, Key=key)

    def list_keys(self, prefix: str) -> list[str]:
        keys: list[str] = []
        paginator = self._client.get_paginator("list_objects_v2")
        pages = self._call(lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=prefix)))
        for page in pages:
            keys += [obj["Key"] for obj in page.get("Contents", [])]
        return keys

    def presign_put(self, key: str, expires_in_s: int, content_type: str) -> PresignedRequest:
        url = self._client.generate_presigned_url(
            "put_object", Params={"Bucket": self.bucket, "Key": key, "ContentType": content_type},
            ExpiresIn=expires_in_s)
        return PresignedRequest(url=url, method="PUT", headers={"Content-Type": content_type},
                                expires_in_s=expires_in_s)

    def check(self) -> None:
        where = f"bucket {self.bucket!r} at {self._config.endpoint_url or 'AWS'}"
        try:
            self._call(self._client.head_bucket, Bucket=self.bucket)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code"))
            if code in REJECTED_CODES:
                raise ConfigError(f"S3 credentials were rejected for {where} ({code}); check "
                                  "the access key and secret") from None
            if code in NO_BUCKET_CODES:
                raise ConfigError(f"S3 {where} does not exist; create it or fix "
                                  "storage.s3.bucket") from None
            raise ConfigError(f"S3 check of {where} failed: {code}") from None
        except BotoCoreError as exc:
            raise ConfigError(f"S3 check of {where} failed: {exc}") from None
