"""Random-weight Qwen2-VL checkpoints with the real Qwen2-VL-2B / -7B-Instruct shapes, offline.

GPU benchmarks need the compute and memory profile of a real model (the 32-block vision tower,
28 text layers, the full ~152k-row embedding and LM head) while no model hub is reachable. This
module writes such a checkpoint from nothing: the published config values, random bf16 weights
and the same offline tokenizer, chat template and processor files as :mod:`serving.models.tiny`.

How it stays correct and cheap:

- The list of tensors (names and shapes) comes from transformers' own
  ``Qwen2VLForConditionalGeneration`` built on the ``meta`` device (no memory), renamed to the
  names ``save_pretrained`` writes (``model.layers.*``, ``visual.*``, ``lm_head.weight``; the tied
  LM head of the 2B model is not written, as in the published checkpoint).
- Weights are materialised shard by shard (``max_shard_bytes``, 2 GiB by default) and written
  with safetensors plus ``model.safetensors.index.json``, so memory stays near one shard:
  7B (~16.6 GB of bf16) builds on a 24 GB machine. Norm weights are 1, biases 0, everything
  else N(0, 0.02), the initialisation transformers itself uses.
- The tokenizer is the small BPE trained on the spot, padded with filler tokens (" tok123") to
  151,643 entries so that the 14 special tokens get the real Qwen2 ids (``<|endoftext|>`` =
  151643 … ``<|video_pad|>`` = 151656) and every id a random model can emit below that decodes
  to text (a streaming benchmark needs non-empty deltas). The ids above 151656 up to
  ``vocab_size`` are unused, as in the real checkpoints.

``--no-weights`` writes everything but the weights (seconds): enough to check configs, the
tokenizer and the processor without the memory or the disk.
"""

from __future__ import annotations

import json
import pathlib
import shutil
from dataclasses import dataclass

from serving.models.tiny import (
    SPECIAL_TOKENS,
    build_tiny_qwen2vl,
    hf_tokenizer,
    save_tokenizer_and_processors,
    train_bpe,
)

MARKER = "qvq-random.json"
FIRST_SPECIAL_ID = 151643  # <|endoftext|> in every Qwen2 / Qwen2-VL tokenizer
INIT_STD = 0.02
DEFAULT_SHARD_BYTES = 2 * 2**30


@dataclass(frozen=True)
class Qwen2VLShape:
    """The published ``config.json`` values of one Qwen2-VL-Instruct size."""

    name: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    tie_word_embeddings: bool
    max_position_embeddings: int = 32768
    rope_theta: float = 1_000_000.0
    mrope_section: tuple[int, int, int] = (16, 24, 24)
    rms_norm_eps: float = 1e-6
    vision_depth: int = 32
    vision_embed_dim: int = 1280
    vision_num_heads: int = 16
    vision_mlp_ratio: int = 4
    # The published preprocessor_config.json bounds (servers override them per request).
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 16384


SHAPES: dict[str, Qwen2VLShape] = {
    # Qwen/Qwen2-VL-2B-Instruct: ~2.21B parameters, embeddings tied to the LM head.
    "qwen2-vl-2b": Qwen2VLShape("qwen2-vl-2b", hidden_size=1536, intermediate_size=8960,
                                num_hidden_layers=28, num_attention_heads=12,
                                num_key_value_heads=2, vocab_size=151936,
                                tie_word_embeddings=True),
    # Qwen/Qwen2-VL-7B-Instruct: ~8.29B parameters; the Qwen2-7B vocabulary (152064 rows).
    "qwen2-vl-7b": Qwen2VLShape("qwen2-vl-7b", hidden_size=3584, intermediate_size=18944,
                                num_hidden_layers=28, num_attention_heads=28,
                                num_key_value_heads=4, vocab_size=152064,
                                tie_word_embeddings=False),
}
SHAPE_NAMES = ("tiny", *SHAPES)


def special_token_ids() -> dict[str, int]:
    return {token: FIRST_SPECIAL_ID + i for i, token in enumerate(SPECIAL_TOKENS)}


def build_config(shape: Qwen2VLShape):
    """The ``Qwen2VLConfig`` of ``shape`` (the published values, our token ids = the real ones)."""
    from transformers import Qwen2VLConfig

    ids = special_token_ids()
    head_dim = shape.hidden_size // shape.num_attention_heads
    if sum(shape.mrope_section) * 2 != head_dim:
        raise ValueError(f"{shape.name}: mrope_section {shape.mrope_section} does not cover "
                         f"head_dim {head_dim}")
    tokens = dict(bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                  pad_token_id=ids["<|endoftext|>"])
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=shape.vocab_size, hidden_size=shape.hidden_size,
            intermediate_size=shape.intermediate_size,
            num_hidden_layers=shape.num_hidden_layers,
            num_attention_heads=shape.num_attention_heads,
            num_key_value_heads=shape.num_key_value_heads,
            max_position_embeddings=shape.max_position_embeddings,
            max_window_layers=shape.num_hidden_layers, use_sliding_window=False,
            rms_norm_eps=shape.rms_norm_eps, hidden_act="silu",
            rope_parameters={"rope_type": "default", "rope_theta": shape.rope_theta,
                             "mrope_section": list(shape.mrope_section)},
            tie_word_embeddings=shape.tie_word_embeddings, **tokens,
        ),
        vision_config=dict(depth=shape.vision_depth, embed_dim=shape.vision_embed_dim,
                           hidden_size=shape.hidden_size, num_heads=shape.vision_num_heads,
                           mlp_ratio=shape.vision_mlp_ratio, in_channels=3, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, hidden_act="quick_gelu"),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=shape.tie_word_embeddings, **tokens,
    )
    config.architectures = ["Qwen2VLForConditionalGeneration"]
    config.dtype = "bfloat16"
    return config


def _meta_model(config):
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    with torch.device("meta"):
        return Qwen2VLForConditionalGeneration(config)


def count_parameters(config) -> int:
    """Parameters of the model ``config`` describes (tied weights once), without memory."""
    return sum(p.numel() for p in _meta_model(config).parameters())


def _checkpoint_name(name: str) -> str:
    """transformers' module path -> the name ``save_pretrained`` writes (and vLLM maps)."""
    for prefix, saved in (("model.language_model.", "model."), ("model.visual.", "visual.")):
        if name.startswith(prefix):
            return saved + name[len(prefix):]
    return name


def weight_specs(config) -> list[tuple[str, tuple[int, ...]]]:
    """(checkpoint name, shape) of every tensor a checkpoint of ``config`` holds, in order."""
    specs = []
    for name, tensor in _meta_model(config).state_dict().items():
        if config.tie_word_embeddings and name == "lm_head.weight":
            continue
        specs.append((_checkpoint_name(name), tuple(tensor.shape)))
    return specs


def _random_tensor(name: str, shape: tuple[int, ...], generator):
    import torch

    if name.endswith(".bias"):
        return torch.zeros(shape, dtype=torch.bfloat16)
    if len(shape) == 1:  # RMSNorm / LayerNorm scales
        return torch.ones(shape, dtype=torch.bfloat16)
    return torch.empty(shape, dtype=torch.bfloat16).normal_(0.0, INIT_STD, generator=generator)


def _shards(specs, max_shard_bytes: int) -> list[list[tuple[str, tuple[int, ...]]]]:
    shards: list[list] = [[]]
    size = 0
    for name, shape in specs:
        nbytes = 2 * _numel(shape)
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    return shards


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def write_random_weights(out: pathlib.Path, config, *, seed: int = 0,
                         max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> tuple[int, int]:
    """Random bf16 safetensors shards (+ index when more than one); returns (bytes, shards)."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    shards = _shards(weight_specs(config), max_shard_bytes)
    total = 0
    weight_map: dict[str, str] = {}
    for i, shard in enumerate(shards, start=1):
        filename = ("model.safetensors" if len(shards) == 1
                    else f"model-{i:05d}-of-{len(shards):05d}.safetensors")
        tensors = {name: _random_tensor(name, shape, generator) for name, shape in shard}
        save_file(tensors, out / filename, metadata={"format": "pt"})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        weight_map.update(dict.fromkeys(tensors, filename))
        del tensors
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return total, len(shards)


def _padded_tokenizer(seed: int):
    """The tiny BPE, padded with unreachable filler tokens up to the real special-token ids."""
    from tokenizers import Tokenizer

    data = json.loads(train_bpe(seed).to_str())
    vocab: dict[str, int] = data["model"]["vocab"]
    i = 0
    while len(vocab) < FIRST_SPECIAL_ID:
        token = f"\u0120tok{i}"  # byte-level "Ġ" = a leading space: decodes to " tok<i>"
        if token not in vocab:
            vocab[token] = len(vocab)
        i += 1
    tokenizer = Tokenizer.from_str(json.dumps(data))
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    return tokenizer


def build_random_qwen2vl(out_dir: str | pathlib.Path, shape: str, *, seed: int = 0,
                         weights: bool = True,
                         max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> pathlib.Path:
    """Write a random-weight checkpoint of ``shape`` to ``out_dir``.

    A complete checkpoint of the same shape already there is kept (one without weights counts
    only when ``weights`` is false). The files are written to ``<out_dir>.partial`` and renamed
    at the end, so ``out_dir`` never holds a torn checkpoint.
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}")
    out = pathlib.Path(out_dir)
    if _complete(out, shape, weights):
        return out
    spec = SHAPES[shape]
    config = build_config(spec)
    tokenizer = hf_tokenizer(_padded_tokenizer(seed))
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    if ids != special_token_ids() or len(tokenizer) > spec.vocab_size:
        raise RuntimeError(f"tokenizer ids {ids} / size {len(tokenizer)} do not fit {shape}")

    from transformers import GenerationConfig

    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    config.save_pretrained(tmp)
    GenerationConfig(bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                     pad_token_id=ids["<|endoftext|>"]).save_pretrained(tmp)
    save_tokenizer_and_processors(tmp, tokenizer, min_pixels=spec.min_pixels,
                                  max_pixels=spec.max_pixels)
    nbytes, nshards = (write_random_weights(tmp, config, seed=seed,
                                            max_shard_bytes=max_shard_bytes)
                       if weights else (0, 0))
    (tmp / MARKER).write_text(json.dumps({
        "shape": shape, "weights": weights, "params": count_parameters(config),
        "weight_bytes": nbytes, "shards": nshards, "vocab_size": spec.vocab_size,
        "tokenizer_size": len(tokenizer), "special_token_ids": ids, "seed": seed}, indent=1))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def _complete(out: pathlib.Path, shape: str, weights: bool) -> bool:
    try:
        marker = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("shape") == shape and (marker.get("weights") or not weights)


def build_random(out_dir: str | pathlib.Path, shape: str, *, seed: int = 0,
                 weights: bool = True) -> pathlib.Path:
    """``qvq model build-random``: ``tiny`` (always with its weights: seconds) or a real shape."""
    if shape == "tiny":
        return build_tiny_qwen2vl(out_dir, seed=seed)
    return build_random_qwen2vl(out_dir, shape, seed=seed, weights=weights)
