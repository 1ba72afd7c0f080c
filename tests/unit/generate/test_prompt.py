import numpy as np
import pytest
from transformers import AutoTokenizer

from serving.config import ModelConfig
from serving.errors import ContextLengthError
from serving.generate.prompt import PromptBuilder, to_template_messages
from serving.messages import PreparedImage
from serving.protocol import ChatCompletionRequest


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def chat(content, **kwargs):
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": content}], **kwargs})


def image(h=56, w=84):
    return PreparedImage(pixels=np.zeros((h, w, 3), np.uint8), source_width=w, source_height=h,
                         source_format="PNG", sha256="0" * 64)


def test_default_system_prompt_added_only_when_missing():
    msgs = to_template_messages(chat("hi"), "Think step-by-step.")
    assert msgs[0] == {"role": "system", "content": "Think step-by-step."}
    with_system = ChatCompletionRequest.model_validate({"model": "m", "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]})
    assert to_template_messages(with_system, "Think.")[0]["content"] == "Be brief."


def test_image_tokens_counted(tokenizer):
    builder = PromptBuilder(ModelConfig(path="x", max_model_len=4096, default_system_prompt=None),
                            tokenizer)
    text_only = builder.render(chat([{"type": "text", "text": "describe"}]), [])
    one = builder.render(chat([{"type": "image_url", "image_url": "data:,"},
                               {"type": "text", "text": "describe"}]), [image()])
    vision_tokens = tokenizer.convert_tokens_to_ids(["<|vision_start|>", "<|image_pad|>",
                                                     "<|vision_end|>"])
    assert all(t in one.token_ids for t in vision_tokens)
    # 56x84 -> 2x3 = 6 visual tokens, plus vision_start/end
    assert one.num_tokens == text_only.num_tokens + 6 + 2


def test_max_tokens_default_and_context_limit(tokenizer):
    model = ModelConfig(path="x", max_model_len=300, default_max_tokens=8192)
    builder = PromptBuilder(model, tokenizer)
    rendered = builder.render(chat("hi"), [])
    assert rendered.max_tokens == 300 - rendered.num_tokens
    with pytest.raises(ContextLengthError, match="maximum context length is 300") as info:
        builder.render(chat("hi", max_tokens=299), [])
    assert info.value.param == "max_tokens"
    with pytest.raises(ContextLengthError, match="prompt alone"):
        builder.render(chat([{"type": "image_url", "image_url": "data:,"}]), [image(560, 560)])


@pytest.mark.parametrize("content", [
    "describe", "  spaces  and\nnewlines\t", "汉字 émoji 🍎 <|im_end|> as text",
    [{"type": "image_url", "image_url": "data:,"}, {"type": "text", "text": "compare"},
     {"type": "image_url", "image_url": "data:,"}]])
def test_token_ids_equal_the_chat_templates_own_tokenization(tokenizer, content):
    builder = PromptBuilder(ModelConfig(path="x", max_model_len=4096), tokenizer)
    request = chat(content)
    images = [image()] * len(request.image_urls())
    expected = tokenizer.apply_chat_template(
        to_template_messages(request, builder._model.default_system_prompt), tokenize=True,
        add_generation_prompt=True, return_dict=False)
    assert builder.render(request, images).token_ids == list(expected)


def test_truncate_prompt_tokens_keeps_the_last_tokens(tokenizer):
    builder = PromptBuilder(ModelConfig(path="x", max_model_len=4096), tokenizer)
    whole = builder.render(chat("tell me more " * 50), [])
    cut = builder.render(chat("tell me more " * 50, truncate_prompt_tokens=40), [])
    assert cut.num_tokens == len(cut.token_ids) == 40
    assert cut.token_ids == whole.token_ids[-40:]
    short = builder.render(chat("hi", truncate_prompt_tokens=4000), [])
    assert short.token_ids == builder.render(chat("hi"), []).token_ids


def test_truncate_to_the_context_keeps_room_for_the_answer(tokenizer):
    builder = PromptBuilder(ModelConfig(path="x", max_model_len=256), tokenizer)
    cut = builder.render(chat("tell me more " * 100, truncate_prompt_tokens=-1, max_tokens=30),
                         [])
    assert cut.num_tokens == 226 and cut.max_tokens == 30


def test_truncation_never_cuts_into_an_image(tokenizer):
    from serving.errors import InvalidRequestError

    builder = PromptBuilder(ModelConfig(path="x", max_model_len=4096), tokenizer)
    content = [{"type": "text", "text": "before " * 20},
               {"type": "image_url", "image_url": "data:,"},
               {"type": "text", "text": "after"}]
    whole = builder.render(chat(content), [image()])
    before_image = whole.token_ids.index(tokenizer.convert_tokens_to_ids("<|vision_start|>"))
    fits = builder.render(chat(content, truncate_prompt_tokens=whole.num_tokens - before_image),
                          [image()])
    assert fits.token_ids[0] == tokenizer.convert_tokens_to_ids("<|vision_start|>")
    with pytest.raises(InvalidRequestError, match="first image") as info:
        builder.render(chat(content, truncate_prompt_tokens=whole.num_tokens - before_image - 1),
                       [image()])
    assert info.value.param == "truncate_prompt_tokens"
