"""The one exception tree of qvq-serving, and its mapping to OpenAI error bodies.

Callers catch by layer::

    QVQError                       (500 internal_error; base of everything we raise on purpose)
    ├── ConfigError                startup: bad configuration (never sent to a client)
    ├── APIError                   anything a client sees, with HTTP status and OpenAI type
    │   ├── InvalidRequestError    400 invalid_request_error (schema, values, unsupported parts)
    │   │   ├── ContextLengthError 400 context_length_exceeded
    │   │   └── ImageError         400 invalid_image (undecodable, bad data URL, too many pixels)
    │   │       ├── ImageFetchError    400 image_fetch_failed (http error, timeout)
    │   │       └── BlockedURLError    400 image_url_blocked (SSRF guard, bad scheme)
    │   ├── PayloadTooLargeError   413 (image or request body over the byte limit)
    │   ├── RateLimitError         429 rate_limit_exceeded (per-key limits; Retry-After)
    │   ├── AuthenticationError    401
    │   ├── ModelNotFoundError     404 model_not_found
    │   ├── NotFoundError          404
    │   └── ServiceUnavailableError 503 (engine down or overloaded)
    └── (anything else)            500 with a generic message; details only in logs

``retry_after_s`` (any error) becomes the ``Retry-After`` header; 503s without one say 5 s.

Messages say what the caller should change. They never carry stack traces, file paths or other
callers' data. Every exception here pickles with its fields, so it survives a hop through Ray.
"""

from __future__ import annotations

import math
from typing import Any


class QVQError(Exception):
    status_code = 500
    error_type = "internal_error"
    default_code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 retry_after_s: float | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.retry_after_s = retry_after_s

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.param, self.code,
                           self.retry_after_s))

    def to_openai(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.error_type,
                          "param": self.param, "code": self.code}}

    def response_headers(self) -> dict[str, str]:
        if self.retry_after_s is not None:
            return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}
        return {"Retry-After": "5"} if self.status_code == 503 else {}


def elide(text: str, limit: int) -> str:
    """Client text echoed in a message, cut in the middle to ``limit`` characters so a huge
    input cannot make a huge error body (the tail is kept: it often says what to do)."""
    if len(text) <= limit:
        return text
    keep = (limit - 5) // 2
    return f"{text[:keep]} ... {text[-keep:]}"


def _rebuild(cls: type[QVQError], message: str, param: str | None,
             code: str | None, retry_after_s: float | None = None) -> QVQError:
    return cls(message, param=param, code=code, retry_after_s=retry_after_s)


class ConfigError(QVQError):
    error_type = "configuration_error"


class APIError(QVQError):
    pass


class InvalidRequestError(APIError):
    status_code = 400
    error_type = "invalid_request_error"


class ContextLengthError(InvalidRequestError):
    default_code = "context_length_exceeded"


class ImageError(InvalidRequestError):
    default_code = "invalid_image"


class ImageFetchError(ImageError):
    default_code = "image_fetch_failed"


class BlockedURLError(ImageError):
    default_code = "image_url_blocked"


class PayloadTooLargeError(APIError):
    status_code = 413
    error_type = "invalid_request_error"
    default_code = "payload_too_large"


class RateLimitError(APIError):
    """A per-key limit; ``limit`` names it (requests, tokens, images, concurrency, batches).

    ``error_type`` is OpenAI's: "tokens" for token limits, else "requests".
    """

    status_code = 429
    default_code = "rate_limit_exceeded"

    def __init__(self, message: str, *, limit: str = "requests", param: str | None = None,
                 code: str | None = None, retry_after_s: float | None = None):
        super().__init__(message, param=param, code=code, retry_after_s=retry_after_s)
        self.limit = limit

    @property
    def error_type(self) -> str:  # type: ignore[override]
        return "tokens" if self.limit == "tokens" else "requests"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_rate_limit, (self.message, self.limit, self.code, self.retry_after_s))


def _rebuild_rate_limit(message: str, limit: str, code: str | None,
                        retry_after_s: float | None) -> RateLimitError:
    return RateLimitError(message, limit=limit, code=code, retry_after_s=retry_after_s)


class AuthenticationError(APIError):
    status_code = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"


class ModelNotFoundError(APIError):
    status_code = 404
    error_type = "invalid_request_error"
    default_code = "model_not_found"


class NotFoundError(APIError):
    status_code = 404
    error_type = "invalid_request_error"
    default_code = "not_found"


class ServiceUnavailableError(APIError):
    status_code = 503
    error_type = "service_unavailable"
    default_code = "service_unavailable"


INTERNAL_MESSAGE = "The server hit an internal error; the request was not completed. Retry later."


def unwrap(exc: BaseException) -> BaseException:
    """The exception a replica raised, without Ray's wrappers (RayTaskError keeps it in .cause)."""
    seen = 0
    while seen < 8:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BaseException) and cause is not exc:
            exc = cause
            seen += 1
            continue
        break
    return exc


def replica_died(exc: BaseException) -> bool:
    """The request failed because a Ray actor (a replica) or an object it owned is gone, not
    because of the request: sending it again can succeed."""
    from ray.exceptions import ObjectLostError, RayActorError, WorkerCrashedError

    dead = RayActorError | ObjectLostError | WorkerCrashedError
    # Serve raises its own exception *from* the Ray one ("an upstream actor died before
    # finishing a dependent task"), so follow __cause__ as well as Ray's .cause
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, dead):
            return True
        ray_cause = getattr(seen, "cause", None)
        seen = ray_cause if isinstance(ray_cause, BaseException) else seen.__cause__
    return False


def to_api_error(exc: BaseException) -> APIError | QVQError:
    """Map any exception to the error a client may see (unknown ones become a generic 500)."""
    exc = unwrap(exc)
    if isinstance(exc, APIError):
        return exc
    from ray.exceptions import ActorDiedError, ActorUnavailableError  # local: keep import light

    try:
        from ray.serve.exceptions import BackPressureError
    except ImportError:  # pragma: no cover - older Ray
        BackPressureError = ()  # type: ignore[assignment]  # noqa: N806
    if isinstance(exc, BackPressureError):
        return ServiceUnavailableError("The server is at capacity; retry shortly.",
                                       code="overloaded")
    if isinstance(exc, ActorDiedError | ActorUnavailableError) or replica_died(exc):
        return ServiceUnavailableError("A serving replica became unavailable; retry shortly.",
                                       code="replica_unavailable")
    return QVQError(INTERNAL_MESSAGE)
