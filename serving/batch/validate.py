"""Batch input validation: every line checked before anything runs.

A batch whose input has any bad line fails as a whole (OpenAI's behaviour) with an ``errors``
list naming each line and what is wrong with it, so the caller fixes the file in one pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pydantic import ValidationError
from pydantic_core import from_json

from serving.api.errors import validation_to_error
from serving.errors import InvalidRequestError
from serving.protocol import ChatCompletionRequest

ENDPOINT = "/v1/chat/completions"
MAX_REPORTED_ERRORS = 100


@dataclass(frozen=True, slots=True)
class BatchLine:
    line: int  # 1-based line number in the input file
    custom_id: str
    body: ChatCompletionRequest
    raw: str  # the line as given: what the runner stores and replays


@dataclass(frozen=True, slots=True)
class LineError:
    line: int | None
    code: str
    message: str
    param: str | None = None

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message, "param": self.param,
                "line": self.line}


def parse_batch_input(data: bytes, *, max_lines: int, max_bytes: int, model_ids: set[str],
                      check: Callable[[ChatCompletionRequest], None] | None = None,
                      ) -> tuple[list[BatchLine], list[LineError]]:
    """Every line checked like a live request; ``check`` adds the deployment's own rules
    (reasoning budget ceilings for the batch's owner), raising InvalidRequestError."""
    if len(data) > max_bytes:
        return [], [LineError(None, "file_too_large",
                              f"input file is {len(data)} bytes; at most {max_bytes} allowed")]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return [], [LineError(None, "invalid_encoding", f"input file is not UTF-8: {exc}")]
    raw_lines = text.split("\n")
    if raw_lines and raw_lines[-1].strip() == "":
        raw_lines.pop()
    if not raw_lines:
        return [], [LineError(None, "empty_file", "input file has no requests")]
    if len(raw_lines) > max_lines:
        return [], [LineError(None, "too_many_lines",
                              f"input file has {len(raw_lines)} lines; at most {max_lines}")]
    lines: list[BatchLine] = []
    errors: list[LineError] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(raw_lines, start=1):
        if len(errors) >= MAX_REPORTED_ERRORS:
            break
        err = _check_line(number, raw, seen, model_ids, check)
        if isinstance(err, LineError):
            errors.append(err)
        else:
            lines.append(err)
    return lines, errors


def _check_line(number: int, raw: str, seen: dict[str, int], model_ids: set[str],
                check: Callable[[ChatCompletionRequest], None] | None) -> BatchLine | LineError:
    try:
        # pydantic's parser, as for live requests: json.loads would accept lone surrogate
        # escapes ("\ud800") that the live endpoint rejects and no tokenizer can encode.
        obj = from_json(raw)
    except ValueError as exc:
        return LineError(number, "invalid_json", f"line is not valid JSON: {exc}")
    if not isinstance(obj, dict):
        return LineError(number, "invalid_request", "line must be a JSON object")
    extra = set(obj) - {"custom_id", "method", "url", "body"}
    if extra:
        return LineError(number, "invalid_request", f"unknown field(s) {sorted(extra)}")
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return LineError(number, "missing_custom_id", "custom_id must be a non-empty string",
                         "custom_id")
    if len(custom_id) > 512:
        return LineError(number, "invalid_custom_id", "custom_id is longer than 512 characters",
                         "custom_id")
    if custom_id in seen:
        return LineError(number, "duplicate_custom_id",
                         f"custom_id {custom_id!r} already used on line {seen[custom_id]}",
                         "custom_id")
    seen[custom_id] = number
    if obj.get("method") != "POST":
        return LineError(number, "invalid_method", "method must be POST", "method")
    if obj.get("url") != ENDPOINT:
        return LineError(number, "invalid_url", f"url must be {ENDPOINT}", "url")
    body = obj.get("body")
    if not isinstance(body, dict):
        return LineError(number, "invalid_body", "body must be a JSON object", "body")
    try:
        chat = ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        api = validation_to_error(exc)
        return LineError(number, "invalid_body", api.message,
                         f"body.{api.param}" if api.param else "body")
    if chat.stream:
        return LineError(number, "invalid_body", "streaming is not supported in batches",
                         "body.stream")
    if chat.model not in model_ids:
        return LineError(number, "model_not_found", f"model {chat.model!r} is not served here",
                         "body.model")
    if check is not None:
        try:
            check(chat)
        except InvalidRequestError as exc:
            return LineError(number, "invalid_body", exc.message,
                             f"body.{exc.param}" if exc.param else "body")
    return BatchLine(number, custom_id, chat, raw)
