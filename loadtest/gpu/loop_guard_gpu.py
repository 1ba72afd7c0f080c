"""The loop guard next to real GPU decoding: its cost per step against the step time, and the
loops a random-weight Qwen2-VL-shaped language model falls into under greedy decoding.

    python3 loadtest/gpu/loop_guard_gpu.py --out /tmp/loop-guard-gpu.json
    python3 loadtest/gpu/loop_guard_gpu.py --shapes tiny --device cpu   # a check anywhere

Needs only torch and transformers (the GPU machines have them; vLLM is not needed): it builds
the language model of each shape (Qwen2-VL-2B / 7B text dimensions, random weights, bf16) on
the device, decodes ``--batch`` random prompts greedily for ``--new-tokens`` steps, times the
steps, then feeds every generated sequence through :class:`LoopGuard` (default settings) and
times that. Prints one JSON object and writes it to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from serving.generate.reasoning.loop_guard import LoopGuard  # noqa: E402

SHAPES = {  # text-model dimensions of Qwen2-VL (config.json of the released checkpoints)
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=1024),
    "qwen2-vl-2b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                        num_attention_heads=12, num_key_value_heads=2, vocab_size=151936),
    "qwen2-vl-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                        num_attention_heads=28, num_key_value_heads=4, vocab_size=152064),
}


def run_shape(name: str, device: str, batch: int, new_tokens: int, prompt_len: int) -> dict:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(**SHAPES[name], max_position_embeddings=32768, rope_theta=1e6,
                         tie_word_embeddings=name == "qwen2-vl-2b")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    t0 = time.perf_counter()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Qwen2ForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(previous)
    build_s = time.perf_counter() - t0
    low = min(1000, config.vocab_size // 4)
    prompts = torch.randint(low, config.vocab_size - low, (batch, prompt_len), device=device)
    kwargs = dict(do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                  eos_token_id=None, pad_token_id=0, use_cache=True)
    with torch.inference_mode():
        model.generate(prompts[:, :8], **{**kwargs, "max_new_tokens": 4, "min_new_tokens": 4})
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = model.generate(prompts, attention_mask=torch.ones_like(prompts), **kwargs)
        if device == "cuda":
            torch.cuda.synchronize()
        decode_s = time.perf_counter() - t0
    sequences = out[:, prompt_len:].tolist()
    step_ms = decode_s / new_tokens * 1e3

    detections, guard_s = [], 0.0
    for seq in sequences:
        guard = LoopGuard()
        t0 = time.perf_counter()
        found = guard.feed_many(seq)
        guard_s += time.perf_counter() - t0
        detections.append(found)
    tokens = sum(len(s) for s in sequences)
    found = [d for d in detections if d is not None]
    us_per_token = guard_s / tokens * 1e6
    report = {
        "shape": name, "device": device, "batch": batch, "new_tokens": new_tokens,
        "prompt_tokens": prompt_len, "build_s": round(build_s, 2),
        "decode_s": round(decode_s, 2), "step_ms": round(step_ms, 3),
        "tokens_per_s": round(tokens / decode_s, 1),
        "guard_us_per_token": round(us_per_token, 3),
        "guard_ms_per_step_for_batch": round(us_per_token * batch / 1e3, 4),
        "guard_share_of_step": round(us_per_token * batch / 1e3 / step_ms, 5),
        "sequences_looping": len(found),
        "periods": sorted(d.period for d in found),
        "detection_delay_tokens": sorted(d.at_token - d.cycle_started_at for d in found),
        "tokens_saved_of_budget": round(sum(new_tokens - 1 - d.at_token for d in found)
                                        / tokens, 4),
    }
    if found:
        report["median_detected_at_token"] = statistics.median(d.at_token for d in found)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="qwen2-vl-2b,qwen2-vl-7b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=768)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    import torch

    facts = {"torch": torch.__version__}
    if args.device == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(0)
    results = []
    for shape in args.shapes.split(","):
        results.append(run_shape(shape, args.device, args.batch, args.new_tokens,
                                 args.prompt_tokens))
        print(json.dumps(results[-1]), flush=True)
    report = {"benchmark": "loop-guard-gpu", "facts": facts, "results": results}
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report["facts"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
