"""Build a tiny random-weight Qwen2-VL checkpoint, fully offline.

Tests and the local default need a model that vLLM loads through the same code path as
QVQ-72B-Preview (``Qwen2VLForConditionalGeneration``: same config layout, the 14 Qwen2-VL
special tokens with their roles, the Qwen2-VL chat template, processor configs) but that runs in
seconds on two CPU cores and needs no model hub. The tokenizer is a byte-level BPE trained here
on a small synthetic corpus, so any text round-trips. Output text is random by design.
"""

from __future__ import annotations

import json
import pathlib
import random

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>",
    "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]

# The chat template shipped with Qwen2-VL-Instruct checkpoints (and QVQ-72B-Preview).
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_WORDS = (
    "the a an image picture photo shows describe what is in of cat dog red blue green user "
    "assistant system you are helpful answer question color shape square circle hello world "
    "this that there here small large tiny model test vision language think step by final "
    "answer therefore so let us look at first second next because number count one two three"
).split()

MARKER = "qvq-tiny.json"


def train_bpe(seed: int):
    """A byte-level BPE (no special tokens yet) trained on a small synthetic corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    rng = random.Random(seed)
    corpus = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(5, 20))) + "."
              for _ in range(800)]
    corpus += ["You are a helpful assistant.", "Describe this image.", "**Final Answer**"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(corpus, trainer)
    return tokenizer


def _train_tokenizer(seed: int):
    tokenizer = train_bpe(seed)
    tokenizer.add_special_tokens(SPECIAL_TOKENS)  # after the BPE vocab, as in Qwen2
    return tokenizer


def hf_tokenizer(tokenizer_object):
    """The transformers tokenizer of a Qwen2-VL checkpoint around a `tokenizers` object."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer_object,
        eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None, bos_token=None,
        additional_special_tokens=SPECIAL_TOKENS[1:], model_max_length=32768,
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )


def save_tokenizer_and_processors(out: pathlib.Path, tokenizer, *, min_pixels: int,
                                  max_pixels: int) -> None:
    """Tokenizer, chat template and image/video processor configs, so that
    ``AutoProcessor.from_pretrained(out)`` works offline."""
    from transformers import Qwen2VLImageProcessorPil, Qwen2VLProcessor, Qwen2VLVideoProcessor

    geometry = dict(min_pixels=min_pixels, max_pixels=max_pixels, patch_size=14,
                    temporal_patch_size=2, merge_size=2)
    image_processor = Qwen2VLImageProcessorPil(**geometry)
    video_processor = Qwen2VLVideoProcessor(**geometry)
    processor = Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                 video_processor=video_processor,
                                 chat_template=QWEN2_VL_CHAT_TEMPLATE)
    processor.save_pretrained(out)
    image_processor.save_pretrained(out)
    video_processor.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "chat_template.jinja").write_text(QWEN2_VL_CHAT_TEMPLATE)


def build_tiny_qwen2vl(out_dir: str | pathlib.Path, *, seed: int = 0,
                       min_pixels: int = 4 * 28 * 28,
                       max_pixels: int = 1280 * 28 * 28) -> pathlib.Path:
    """Write the checkpoint to ``out_dir`` (skipped when a complete one is already there)."""
    out = pathlib.Path(out_dir)
    if (out / MARKER).exists():
        return out
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    torch.manual_seed(seed)
    tokenizer = hf_tokenizer(_train_tokenizer(seed))
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    vocab_size = (len(tokenizer) + 63) // 64 * 64  # every token id < vocab_size

    hidden, heads, kv_heads = 128, 2, 1  # head_dim 64: supported by vLLM's CPU attention
    head_dim = hidden // heads
    mrope_section = [head_dim // 8, head_dim * 3 // 16, head_dim * 3 // 16]
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=vocab_size, hidden_size=hidden, intermediate_size=256,
            num_hidden_layers=2, num_attention_heads=heads, num_key_value_heads=kv_heads,
            max_position_embeddings=32768, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0,
                             "mrope_section": mrope_section},
            bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=False,
        ),
        vision_config=dict(depth=2, embed_dim=64, hidden_size=hidden, num_heads=2, mlp_ratio=2,
                           in_channels=3, patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=False,
    )
    model = Qwen2VLForConditionalGeneration(config).to(torch.bfloat16).eval()
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]

    tmp = out.with_name(out.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp, safe_serialization=True)
    save_tokenizer_and_processors(tmp, tokenizer, min_pixels=min_pixels, max_pixels=max_pixels)
    params = sum(p.numel() for p in model.parameters())
    (tmp / MARKER).write_text(json.dumps({"params": params, "vocab_size": vocab_size,
                                          "special_token_ids": ids, "seed": seed}, indent=1))
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
    return out
