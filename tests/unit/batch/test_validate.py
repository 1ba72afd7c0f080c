import json

from serving.batch.validate import parse_batch_input

MODELS = {"qvq"}


def line(cid="a", **over):
    obj = {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
           "body": {"model": "qvq", "messages": [{"role": "user", "content": "hi"}]}}
    obj.update(over)
    return json.dumps(obj)


def parse(text: str, **limits):
    return parse_batch_input(text.encode(), max_lines=limits.get("max_lines", 100),
                             max_bytes=limits.get("max_bytes", 10**6), model_ids=MODELS)


def test_valid_file_with_trailing_newline():
    lines, errors = parse(line("a") + "\n" + line("b") + "\n")
    assert errors == [] and [x.custom_id for x in lines] == ["a", "b"]
    assert [x.line for x in lines] == [1, 2]


def test_every_bad_line_is_reported_with_its_number():
    text = "\n".join([line("a"), "{oops", line("a"), line("c", url="/v1/embeddings"),
                      line("d", method="GET"), line("e", body={"model": "qvq"}),
                      line("f", body={"model": "other", "messages": [
                          {"role": "user", "content": "x"}]}),
                      line("g", body={"model": "qvq", "stream": True, "messages": [
                          {"role": "user", "content": "x"}]}),
                      json.dumps({"method": "POST"}), line("h", extra=1)])
    _, errors = parse(text)
    got = {e.line: e.code for e in errors}
    assert got == {2: "invalid_json", 3: "duplicate_custom_id", 4: "invalid_url",
                   5: "invalid_method", 6: "invalid_body", 7: "model_not_found",
                   8: "invalid_body", 9: "missing_custom_id", 10: "invalid_request"}
    assert next(e for e in errors if e.line == 6).param == "body.messages"


def test_file_level_limits():
    assert parse("")[1][0].code == "empty_file"
    assert parse("\n".join(line(str(i)) for i in range(5)), max_lines=4)[1][0].code == \
        "too_many_lines"
    assert parse(line("a"), max_bytes=10)[1][0].code == "file_too_large"
    _, errors = parse_batch_input(b"\xff\xfe", max_lines=10, max_bytes=100, model_ids=MODELS)
    assert errors[0].code == "invalid_encoding"


def test_errors_serialise_like_openai():
    _, errors = parse("{bad")
    assert errors[0].to_dict() == {"code": "invalid_json", "message": errors[0].message,
                                   "param": None, "line": 1}


def test_deployment_rules_reject_lines_at_validation():
    from serving.config import ReasoningConfig
    from serving.generate.reasoning.options import resolve_reasoning_options

    config = ReasoningConfig(max_reasoning_tokens_ceiling=100)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    data = b"\n".join(json.dumps({"custom_id": f"c{i}", "method": "POST",
                                  "url": "/v1/chat/completions",
                                  "body": {**body, "max_reasoning_tokens": n}}).encode()
                      for i, n in enumerate((50, 500)))
    lines, errors = parse_batch_input(
        data, max_lines=10, max_bytes=10_000, model_ids={"m"},
        check=lambda chat: resolve_reasoning_options(config, chat, "team"))
    assert [line.custom_id for line in lines] == ["c0"]
    assert [(e.line, e.param) for e in errors] == [(2, "body.max_reasoning_tokens")]
    assert "at most 100" in errors[0].message


def test_lone_surrogate_escape_is_invalid_json_as_on_the_live_endpoint():
    # Found by tests/unit/test_fuzz_requests.py: json.loads accepts "\ud800", so the line passed
    # validation with text no tokenizer can encode and failed only when the batch ran.
    text = line("a", body={"model": "qvq", "messages": [{"role": "user", "content": "\ud800"}]})
    assert "\\ud800" in text
    lines, errors = parse(text)
    assert lines == [] and [(e.line, e.code) for e in errors] == [(1, "invalid_json")]
    emoji = line("b", body={"model": "qvq",
                            "messages": [{"role": "user", "content": "\U0001f600"}]})
    assert "\\ud83d\\ude00" in emoji  # a valid surrogate pair still decodes
    assert parse(emoji)[0][0].body.messages[0].content == "\U0001f600"


def test_image_budgets_are_checked_per_line_as_live():
    from serving.api.validation import validate_chat
    from serving.config import config_from_dict

    config = config_from_dict({"model": {"path": "m", "served_name": "qvq"},
                               "image": {"min_pixels": 3136, "max_pixels": 200704}},
                              environ={})

    def with_image(cid, **image_url):
        return line(cid, body={"model": "qvq", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://x/a.png", **image_url}}]}]})

    text = "\n".join([with_image("low", detail="low"), with_image("cap", max_pixels=50176),
                      with_image("big", max_pixels=10**6), with_image("tiny", min_pixels=1)])
    lines, errors = parse_batch_input(text.encode(), max_lines=10, max_bytes=10**6,
                                      model_ids=MODELS,
                                      check=lambda chat: validate_chat(config, chat, None))
    assert [x.custom_id for x in lines] == ["low", "cap"]
    assert [(e.line, e.param) for e in errors] == [
        (3, "body.messages[0].content[0].image_url.max_pixels"),
        (4, "body.messages[0].content[0].image_url.min_pixels")]
    assert "between 3136 and 200704 pixels" in errors[0].message
