"""Choose the object-store backend from config."""

from __future__ import annotations

from serving.config import StorageConfig
from serving.storage.base import ObjectStore


def open_store(config: StorageConfig) -> ObjectStore:
    if config.backend == "s3":
        from serving.storage.s3 import S3ObjectStore

        assert config.s3 is not None  # guaranteed by StorageConfig validation
        return S3ObjectStore(config.s3)
    from serving.storage.local import LocalObjectStore

    return LocalObjectStore(config.local.root)
