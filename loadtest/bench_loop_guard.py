"""Loop guard on ordinary prose and on synthetic loops: false stops, detection delay, cost.

    python -m loadtest.bench_loop_guard [--min-bytes 5000000]

Prose, all shipped on this machine: Python's reference topics (``pydoc_data``), the .md/.rst
documentation of installed packages, and the distinct docstrings of installed third-party
packages (one document per file or module, at least 2 kB each), until ``--min-bytes``.

Two tokenizers, because the guard counts tokens:
  * ``bpe-32k``: a byte-level BPE with 32k merges trained here on the standard library's source
    (disjoint from the prose), close to how Qwen2's 151k BPE cuts English;
  * ``tiny``: the tiny test model's ~500-token vocabulary, nearly one token per character,
    which makes every repeated line many tokens long: a harsh case.
Each runs the guard with the serving defaults (filler ids from that tokenizer's vocabulary).

Loops: a prose head followed by one prose span repeated, for several span lengths; delay =
tokens generated after the cycle began until the guard fired. Cost: microseconds per token
overall and per 4k-token slice of one long stream (flat = independent of answer length).
With ``--engine-prompts N`` it also decodes N prompts greedily with the real vLLM engine on the
tiny model (``configs/local-cpu.yaml``), whose random weights loop, and reports where the guard
fires and how many of ``--engine-max-tokens`` it saves. Writes
``loadtest/results/loop-guard-<stamp>.json``.
"""

from __future__ import annotations

import argparse
import ast
import json
import pathlib
import random
import sys
import sysconfig
import time

from loadtest import records
from loadtest.servers import ROOT
from serving.config import LoopGuardConfig
from serving.generate.reasoning.loop_guard import LoopGuard

MIN_DOC_BYTES = 2000
SPAN_PERIODS = (1, 3, 10, 30, 100, 200, 250)


def _site_packages() -> pathlib.Path:
    return pathlib.Path(next(p for p in sys.path if p.endswith("site-packages")))


def _module_docstrings(path: pathlib.Path) -> str:
    try:
        tree = ast.parse(path.read_text(errors="replace"))
    except (SyntaxError, ValueError, RecursionError):
        return ""
    docs: dict[str, None] = {}  # distinct, in order: overloads repeat one docstring verbatim
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node)
            if doc:
                docs[doc] = None
    return "\n\n".join(docs)


def documents(min_bytes: int) -> dict[str, str]:
    """name -> text: Python's reference topics, package docs, then package docstrings."""
    from pydoc_data.topics import topics

    found = {f"pydoc:{name}": text for name, text in sorted(topics.items())
             if len(text) >= MIN_DOC_BYTES}
    total = sum(len(t.encode()) for t in found.values())
    site = _site_packages()
    for path in sorted(site.rglob("*")):
        if path.suffix in (".md", ".rst") and path.is_file() \
                and path.stat().st_size >= MIN_DOC_BYTES and "LICENSE" not in path.name.upper():
            found[f"doc:{path.relative_to(site)}"] = path.read_text(errors="replace")
            total += path.stat().st_size
    for path in sorted(site.rglob("*.py")):
        if total >= min_bytes:
            break
        text = _module_docstrings(path)
        if len(text.encode()) >= MIN_DOC_BYTES:
            found[f"docstrings:{path.relative_to(site)}"] = text
            total += len(text.encode())
    return found


def train_bpe(vocab_size: int = 32000):
    """Byte-level BPE trained on the standard library's sources (not on the prose)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    stdlib = pathlib.Path(sysconfig.get_paths()["stdlib"])
    files = [str(p) for p in sorted(stdlib.glob("*.py"))]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train(files, trainer)
    return tok


def filler_ids(tok) -> frozenset[int]:
    """Same rule as serving.generate.reasoning.vocab.filler_token_ids, for a bare
    tokenizers.Tokenizer."""
    out = set()
    for i in range(tok.get_vocab_size()):
        text = tok.decode([i])
        if text and not any(ch.isalnum() for ch in text):
            out.add(i)
    return frozenset(out)


def guard(settings: LoopGuardConfig, filler: frozenset[int]) -> LoopGuard:
    return LoopGuard(max_period=settings.max_period, repeats=settings.repeats,
                     min_repeated_tokens=settings.min_repeated_tokens,
                     min_filler_repeated_tokens=settings.min_filler_repeated_tokens,
                     filler_ids=filler)


def measure(name: str, tok, docs: dict[str, str], settings: LoopGuardConfig) -> dict:
    filler = filler_ids(tok)
    encoded = {doc: tok.encode(text).ids for doc, text in docs.items()}
    stopped, tokens_total, seconds = [], 0, 0.0
    for doc, ids in encoded.items():
        g = guard(settings, filler)
        t0 = time.perf_counter()
        found = g.feed_many(ids)
        seconds += time.perf_counter() - t0
        tokens_total += len(ids)
        if found:
            start = found.cycle_started_at
            span = tok.decode(ids[max(start, 0):found.at_token + 1])
            stopped.append({"doc": doc, "period": found.period, "at_token": found.at_token,
                            "text": span[:160]})
    # one long stream of everything: cost per 4k-token slice must not grow with position
    stream = [t for ids in encoded.values() for t in ids][:65536]
    g = LoopGuard(max_period=settings.max_period, repeats=10**6,
                  min_repeated_tokens=10**9, min_filler_repeated_tokens=10**9)
    slices = []
    for i in range(0, len(stream), 4096):
        t0 = time.perf_counter()
        g.feed_many(stream[i:i + 4096])
        slices.append(round((time.perf_counter() - t0) / len(stream[i:i + 4096]) * 1e6, 2))
    # synthetic loops: a prose head, then one prose span repeated
    rng = random.Random(0)
    long_docs = [ids for ids in encoded.values() if len(ids) > 3000]
    delays: dict[int, list[int | None]] = {}
    for period in SPAN_PERIODS:
        delays[period] = []
        for _ in range(5):
            ids = long_docs[rng.randrange(len(long_docs))]
            cut = rng.randrange(600, len(ids) - period - 1)
            head, span = ids[cut - 500:cut], ids[cut:cut + period]
            g = guard(settings, filler)
            g.feed_many(head)
            found = g.feed_many(span * (3000 // period + 4))
            delays[period].append(None if found is None else found.at_token - len(head) + 1)
    return {
        "tokenizer": name, "vocab": tok.get_vocab_size(), "filler_tokens": len(filler),
        "documents": len(encoded), "tokens": tokens_total,
        "documents_stopped": len(stopped),
        "false_stop_rate": round(len(stopped) / len(encoded), 5),
        "us_per_token": round(seconds / tokens_total * 1e6, 3),
        "us_per_token_per_4k_slice": slices,
        "detection_delay_tokens": {str(p): d for p, d in delays.items()},
        "stopped": stopped,
    }


async def _engine_loops(prompts: int, max_tokens: int, settings: LoopGuardConfig) -> dict:
    from serving.config import load_config
    from serving.generate.engine.protocol import SamplingOptions
    from serving.generate.engine.vllm_engine import VLLMEngine
    from serving.generate.reasoning.vocab import filler_token_ids

    config = load_config(ROOT / "configs" / "local-cpu.yaml", environ={})
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(ROOT / config.model.path))
    filler = filler_token_ids(tokenizer)
    engine = VLLMEngine(config)
    rng = random.Random(1)
    words = ["apples", "count", "image", "table", "three", "red", "how", "many", "the", "on"]
    found = []
    try:
        for i in range(prompts):
            text = " ".join(rng.choice(words) for _ in range(12)) + "?"
            ids = tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                tokenize=True, add_generation_prompt=True,
                                                return_dict=False)
            out: list[int] = []
            async for step in engine.generate(list(ids), [], SamplingOptions(
                    max_tokens=max_tokens, temperature=0.0), f"bench-{i}"):
                out.extend(step.token_ids)
            detection = guard(settings, filler).feed_many(out)
            found.append(None if detection is None else detection.to_dict())
    finally:
        engine.shutdown()
    hits = [d for d in found if d]
    return {"prompts": prompts, "max_tokens": max_tokens, "looping": len(hits),
            "periods": sorted(d["period"] for d in hits),
            "detected_at_token": sorted(d["at_token"] for d in hits),
            "delay_after_cycle_start": sorted(d["at_token"] - d["cycle_started_at"]
                                              for d in hits),
            "share_of_max_tokens_saved": round(
                sum(max_tokens - 1 - d["at_token"] for d in hits) / (prompts * max_tokens), 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--min-bytes", type=int, default=5_000_000)
    parser.add_argument("--model-dir", default=str(ROOT / ".qvq" / "models" / "tiny-qwen2vl"))
    parser.add_argument("--engine-prompts", type=int, default=0)
    parser.add_argument("--engine-max-tokens", type=int, default=2000)
    args = parser.parse_args(argv)
    from tokenizers import Tokenizer

    settings = LoopGuardConfig()
    docs = documents(args.min_bytes)
    total_bytes = sum(len(t.encode()) for t in docs.values())
    print(f"{len(docs)} documents, {total_bytes / 1e6:.2f} MB of prose", flush=True)
    tokenizers = {"bpe-32k": train_bpe(),
                  "tiny": Tokenizer.from_file(str(pathlib.Path(args.model_dir)
                                                  / "tokenizer.json"))}
    runs = []
    for name, tok in tokenizers.items():
        runs.append(measure(name, tok, docs, settings))
        summary = {k: v for k, v in runs[-1].items() if k != "stopped"}
        print(json.dumps(summary), flush=True)
        for s in runs[-1]["stopped"][:8]:
            print(f"  stopped: {s['doc']} period {s['period']}: {s['text']!r}")
    report = {"benchmark": "loop-guard", "settings": settings.model_dump(),
              "documents": len(docs), "bytes": total_bytes, "runs": runs}
    if args.engine_prompts:
        import asyncio

        report["tiny_engine"] = asyncio.run(_engine_loops(args.engine_prompts,
                                                          args.engine_max_tokens, settings))
        print(json.dumps(report["tiny_engine"]), flush=True)
    out = records.write(records.result_path("loop-guard", records.stamp()), report)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
