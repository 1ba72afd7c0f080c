"""What every API request gets, whatever its route: one ASGI middleware around an ingress app.

- a :class:`~serving.api.admission.RequestScope` for the request (who called, which
  ``x-ratelimit-*`` headers its response carries), open while the route and its body run;
- every exception a route raises before its response started becomes one OpenAI-style error
  (:func:`serving.api.errors.error_response`), never a trace; a stream that fails later ends
  with an error event instead (:mod:`serving.api.chat`);
- the rate-limit headers of a limited caller on every response, error or not;
- the API metrics: responses by route, status and caller when the response starts, latency
  when its last byte is sent (for a stream, when the stream ends).

Pure ASGI rather than Starlette's ``BaseHTTPMiddleware``: a streamed answer passes through
here chunk by chunk on the generator's CPU, so each chunk costs one function call, not a
task hop through a memory stream.
"""

from __future__ import annotations

import time

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.api.admission import close_scope, open_scope
from serving.api.errors import error_response


def route_name(scope: Scope) -> str:
    """The matched route's name (its endpoint function), ``unmatched`` for a 404."""
    return getattr(scope.get("route"), "name", None) or "unmatched"


class ApiMiddleware:
    """Wraps an app whose ``state.services`` are :class:`serving.api.services.ApiServices`."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chat = scope["app"].state.services.chat
        request_scope, token = open_scope()
        started = False

        async def respond(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if not request_scope.headers:  # not charged by admission: the key's limits
                    request_scope.headers.update(await chat.gate.headers_for(request_scope))
                headers = MutableHeaders(scope=message)
                for name, value in request_scope.headers.items():
                    headers[name] = value
                chat.metrics.requests.inc(tags={"route": route_name(scope),
                                                "status": str(message["status"]),
                                                "code": request_scope.error_code,
                                                "key": request_scope.caller})
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                chat.metrics.latency.observe(time.monotonic() - request_scope.started,
                                             tags={"route": route_name(scope)})
            await send(message)

        try:
            await self.app(scope, receive, respond)
        except Exception as exc:  # noqa: BLE001 - the one error mapping
            if started:  # headers are out: nothing left to answer with
                raise
            await error_response(exc)(scope, receive, respond)
        finally:
            close_scope(token)
