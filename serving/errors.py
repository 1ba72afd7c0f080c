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
    │   ├── PayloadTooLargeError   413 (image over the byte limit)
    │   ├── AuthenticationError    401
    │   ├── ModelNotFoundError     404 model_not_found
    │   ├── NotFoundError          404
    │   └── ServiceUnavailableError 503 (engine down or overloaded)
    └── (anything else)            500 with a generic message; details only in logs

Messages say what the caller should change. They never carry stack traces, file paths or other
callers' data. Every exception here pickles with its fields, so it survives a hop through Ray.
"""

from __future__ import annotations

from typing import Any


class QVQError(Exception):
    status_code = 500
    error_type = "internal_error"
    default_code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.param, self.code))

    def to_openai(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.error_type,
                          "param": self.param, "code": self.code}}


def _rebuild(cls: type[QVQError], message: str, param: str | None,
             code: str | None) -> QVQError:
    return cls(message, param=param, code=code)


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
    if isinstance(exc, ActorDiedError | ActorUnavailableError):
        return ServiceUnavailableError("A serving replica became unavailable; retry shortly.",
                                       code="replica_unavailable")
    return QVQError(INTERNAL_MESSAGE)
