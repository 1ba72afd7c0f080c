"""Loop guard on real prose and on synthetic loops: false stops, detection delay, cost.

    python -m loadtest.bench_loop_guard [--min-bytes 1500000]

Prose: Python's reference topics (``pydoc_data``) and documentation shipped with installed
packages (.md and .rst under site-packages), tokenized with the tiny model's tokenizer
(`.qvq/models/tiny-qwen2vl`), each topic or file one document. Loops: a prose head followed by
one span repeated, for several span lengths; delay = tokens generated after the cycle began
until the guard fired. Writes ``loadtest/results/loop-guard-<stamp>.json``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import random
import sys
import time

from loadtest.servers import ROOT
from serving.reasoning.loop_guard import LoopGuard


def documents(min_bytes: int) -> dict[str, str]:
    """name -> text: Python's own reference topics (``pydoc_data``), then package docs."""
    from pydoc_data.topics import topics

    found = {f"pydoc:{name}": text for name, text in sorted(topics.items()) if len(text) > 500}
    total = sum(len(t.encode()) for t in found.values())
    site = pathlib.Path(next(p for p in sys.path if p.endswith("site-packages")))
    for path in sorted(site.rglob("*")):
        if total >= min_bytes:
            break
        if path.suffix in (".md", ".rst") and path.is_file() and path.stat().st_size > 2000 \
                and "LICENSE" not in path.name.upper():
            found[str(path.relative_to(site))] = path.read_text(errors="replace")
            total += path.stat().st_size
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--min-bytes", type=int, default=1_500_000)
    parser.add_argument("--model-dir", default=str(ROOT / ".qvq" / "models" / "tiny-qwen2vl"))
    args = parser.parse_args(argv)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(pathlib.Path(args.model_dir) / "tokenizer.json"))
    docs = documents(args.min_bytes)
    stopped, tokens_total, seconds = [], 0, 0.0
    for name, text in docs.items():
        ids = tok.encode(text).ids
        guard = LoopGuard()
        t0 = time.perf_counter()
        found = guard.feed_many(ids)
        seconds += time.perf_counter() - t0
        tokens_total += len(ids)
        if found:
            stopped.append({"doc": name, "period": found.period, "at_token": found.at_token})
    rng = random.Random(0)
    delays = {}
    prose_ids = tok.encode(next(iter(docs.values()))).ids[:2000]
    for period in (1, 3, 10, 30, 100, 200):
        span = [rng.randrange(5000) for _ in range(period)]
        guard = LoopGuard()
        guard.feed_many(prose_ids[:500])
        found = guard.feed_many(span * (2000 // period + 3))
        delays[period] = None if found is None else found.at_token - 500 + 1
    report = {"benchmark": "loop-guard", "settings": {"max_period": 256, "repeats": 3,
                                                      "min_repeated_tokens": 64},
              "documents": len(docs), "bytes": sum(len(t.encode()) for t in docs.values()),
              "tokens": tokens_total, "stopped": stopped,
              "false_stop_rate": round(len(stopped) / len(docs), 4),
              "us_per_token": round(seconds / tokens_total * 1e6, 2),
              "detection_delay_tokens": delays}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = ROOT / "loadtest" / "results" / f"loop-guard-{stamp}.json"
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "stopped"}, indent=2))
    for s in stopped[:10]:
        print("stopped:", s)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
