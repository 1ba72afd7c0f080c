import json

import pytest

from serving.cli import main
from serving.models import shapes

# Published config.json values of Qwen/Qwen2-VL-{2B,7B}-Instruct.
PUBLISHED = {
    "qwen2-vl-2b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                        num_attention_heads=12, num_key_value_heads=2, vocab_size=151936,
                        tie=True, params=2.21e9),
    "qwen2-vl-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                        num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                        tie=False, params=8.29e9),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_configs_have_the_published_shapes(name, tmp_path):
    from transformers import Qwen2VLConfig

    want = PUBLISHED[name]
    shapes.build_config(shapes.SHAPES[name]).save_pretrained(tmp_path)
    config = Qwen2VLConfig.from_pretrained(tmp_path)
    text, vision = config.text_config, config.vision_config
    for field in ("hidden_size", "intermediate_size", "num_hidden_layers",
                  "num_attention_heads", "num_key_value_heads", "vocab_size"):
        assert getattr(text, field) == want[field], field
    assert text.max_position_embeddings == 32768
    assert text.rope_parameters["mrope_section"] == [16, 24, 24]
    assert text.rope_parameters["rope_theta"] == 1_000_000.0
    assert config.tie_word_embeddings is want["tie"]
    assert (vision.depth, vision.embed_dim, vision.num_heads, vision.mlp_ratio) == (32, 1280, 16, 4)
    assert (vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size,
            vision.in_channels) == (14, 2, 2, 3)
    assert vision.hidden_size == want["hidden_size"]
    assert config.architectures == ["Qwen2VLForConditionalGeneration"]
    # The real Qwen2-VL special-token ids.
    assert (config.vision_start_token_id, config.vision_end_token_id, config.image_token_id,
            config.video_token_id) == (151652, 151653, 151655, 151656)
    assert (text.bos_token_id, text.eos_token_id) == (151643, 151645)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_on_the_meta_device(name):
    params = shapes.count_parameters(shapes.build_config(shapes.SHAPES[name]))
    assert abs(params / PUBLISHED[name]["params"] - 1) < 0.05, params


def test_tensor_names_are_those_save_pretrained_writes(tiny_model_dir):
    from safetensors import safe_open
    from transformers import AutoConfig

    with safe_open(tiny_model_dir / "model.safetensors", "pt") as f:
        saved = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    assert dict(shapes.weight_specs(AutoConfig.from_pretrained(tiny_model_dir))) == saved


def test_tied_head_is_not_written():
    names = [n for n, _ in shapes.weight_specs(shapes.build_config(shapes.SHAPES["qwen2-vl-2b"]))]
    assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names
    names = [n for n, _ in shapes.weight_specs(shapes.build_config(shapes.SHAPES["qwen2-vl-7b"]))]
    assert "lm_head.weight" in names


def test_weights_are_sharded_with_an_index(tiny_model_dir, tmp_path):
    from safetensors import safe_open
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_model_dir)
    specs = dict(shapes.weight_specs(config))
    total, nshards = shapes.write_random_weights(tmp_path, config, max_shard_bytes=300_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert nshards > 1 and len(set(index["weight_map"].values())) == nshards
    assert index["metadata"]["total_size"] == total == 2 * sum(
        shapes._numel(s) for s in specs.values())
    assert set(index["weight_map"]) == set(specs)
    tensors = {}
    for filename in set(index["weight_map"].values()):
        with safe_open(tmp_path / filename, "pt") as f:
            tensors.update({k: f.get_tensor(k) for k in f.keys()})
    assert {k: tuple(t.shape) for k, t in tensors.items()} == specs
    assert all(str(t.dtype) == "torch.bfloat16" for t in tensors.values())
    assert tensors["model.norm.weight"].float().eq(1).all()
    assert tensors["visual.blocks.0.attn.qkv.bias"].float().eq(0).all()
    std = tensors["model.embed_tokens.weight"].float().std().item()
    assert 0.015 < std < 0.025


def test_build_without_weights_has_real_token_ids_and_decodable_vocab(tmp_path):
    from transformers import AutoProcessor, AutoTokenizer

    out = shapes.build_random_qwen2vl(tmp_path / "m", "qwen2-vl-2b", weights=False)
    marker = json.loads((out / shapes.MARKER).read_text())
    assert marker["weights"] is False and marker["shape"] == "qwen2-vl-2b"
    assert not list(out.glob("*.safetensors"))
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert len(tokenizer) == 151657 <= marker["vocab_size"] == 151936
    assert tokenizer.convert_tokens_to_ids("<|image_pad|>") == 151655
    assert tokenizer.eos_token_id == 151645
    # Every id below the special tokens decodes to text (streamed deltas are never empty).
    assert all(tokenizer.decode([i]) for i in (0, 255, 1000, 100_000, 151_642))
    text = "Describe this image, step by step."
    assert tokenizer.decode(tokenizer.encode(text)) == text
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}],
        add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    assert [151652, 151655, 151653] == ids[ids.index(151652):ids.index(151652) + 3]
    assert type(AutoProcessor.from_pretrained(out)).__name__ == "Qwen2VLProcessor"
    # Kept when complete for the request; rebuilt for another shape.
    stamp = (out / shapes.MARKER).stat().st_mtime_ns
    shapes.build_random_qwen2vl(out, "qwen2-vl-2b", weights=False)
    assert (out / shapes.MARKER).stat().st_mtime_ns == stamp
    shapes.build_random_qwen2vl(out, "qwen2-vl-7b", weights=False)
    assert json.loads((out / shapes.MARKER).read_text())["vocab_size"] == 152064


def test_tiny_path_is_unchanged(tmp_path, capsys):
    from serving.models.tiny import MARKER

    assert main(["model", "build-random", "--shape", "tiny", "--out", str(tmp_path / "t")]) == 0
    marker = json.loads((tmp_path / "t" / MARKER).read_text())
    assert (marker["params"], marker["vocab_size"]) == (668160, 512)
    assert marker["special_token_ids"]["<|endoftext|>"] == 496
    assert marker["special_token_ids"]["<|image_pad|>"] == 508


def test_cli_rejects_no_weights_for_tiny(tmp_path, capsys):
    assert main(["model", "build-random", "--shape", "tiny", "--no-weights",
                 "--out", str(tmp_path)]) == 2
    assert "--no-weights" in capsys.readouterr().err


@pytest.mark.slow
def test_build_2b_loads_in_vllm_config(tmp_path):
    """The full 2B checkpoint: 4.4 GB, 35-65 s and < 3 GB of memory on 2 cores."""
    from vllm.transformers_utils.config import get_config

    out = shapes.build_random_qwen2vl(tmp_path / "2b", "qwen2-vl-2b")
    config = get_config(str(out), trust_remote_code=False)
    text = config.get_text_config()
    assert (text.hidden_size, text.num_hidden_layers, text.vocab_size) == (1536, 28, 151936)
    assert text.tie_word_embeddings is True
    index = json.loads((out / "model.safetensors.index.json").read_text())
    specs = dict(shapes.weight_specs(config))
    assert set(index["weight_map"]) == set(specs)
    assert index["metadata"]["total_size"] == 2 * sum(shapes._numel(s) for s in specs.values())
    marker = json.loads((out / shapes.MARKER).read_text())
    assert marker["weights"] is True and marker["shards"] == len(set(index["weight_map"].values()))
