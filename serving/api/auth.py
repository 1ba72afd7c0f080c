"""Bearer API keys: compare hashes, return the caller's key id (or None when the API is open)."""

from __future__ import annotations

import hashlib
import logging

from serving.config import ApiKeyHash
from serving.errors import AuthenticationError

logger = logging.getLogger("qvq.auth")

ANONYMOUS = "anonymous"  # the caller of an open API (no keys configured)


def caller_id(key_id: str | None) -> str:
    """How limits, metrics and stored files and batches name a caller: its key id, or
    ``anonymous`` when the API is open."""
    return key_id or ANONYMOUS


class ApiKeyAuthenticator:
    def __init__(self, keys: list[ApiKeyHash]):
        self._by_hash = {k.sha256: k.id for k in keys}
        if not self._by_hash:
            logger.warning("No API keys configured: the API is OPEN to anyone who can reach it. "
                           "Set auth.api_keys, $QVQ_API_KEYS or auth.api_keys_file in production.")

    @property
    def open(self) -> bool:
        return not self._by_hash

    def authenticate(self, authorization: str | None) -> str | None:
        """Key id of a valid ``Authorization: Bearer <key>`` header; 401 otherwise."""
        if self.open:
            return None
        if not authorization:
            raise AuthenticationError("Missing API key: send 'Authorization: Bearer <key>'.")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationError("Malformed Authorization header: expected "
                                      "'Authorization: Bearer <key>'.")
        key_id = self._by_hash.get(hashlib.sha256(token.strip().encode()).hexdigest())
        if key_id is None:
            raise AuthenticationError("Incorrect API key provided.")
        return key_id
