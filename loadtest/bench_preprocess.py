"""Preprocessing benchmark: our CPU image path vs transformers' Qwen2-VL processors.

    python -m loadtest.bench_preprocess [--repeats 7] [--skip-e2e]

For photo-like JPEGs of 1024x1024, 2048x1536 and 4000x3000 and a 2048x2048 PNG (generated
locally), single-threaded (so ms per image is per core):
  (a)  ours: decode_image (safe decode, reduced-scale JPEG decode, exact smart_resize dims)
  (a+) ours followed by the processor's normalize/patchify on the already-resized pixels
       (what the engine still does), i.e. raw bytes -> model-ready input
  (b)  transformers Qwen2VLImageProcessor (torchvision backend, the default) and
       Qwen2VLImageProcessorPil, from raw bytes to model-ready input
  (c)  naive Pillow: full decode + RGB + bicubic resize to the same dims
  (d)  the entropy-decode floor: Pillow decoding the same file at 1/8 scale (full decode for
       PNG, which has no reduced-scale decode)
plus PSNR of (a) against (c). With the app running (unless --skip-e2e): end-to-end latency of
a first request with a fresh 4000x3000 photo vs the same request repeated (cache hit).
Writes loadtest/results/preprocess-<timestamp>.json.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import base64  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from loadtest import records  # noqa: E402
from loadtest.photos import photo, photo_jpeg  # noqa: E402
from loadtest.records import machine_facts  # noqa: E402
from loadtest.servers import ROOT  # noqa: E402
from serving.preprocess.decode import decode_image  # noqa: E402
from serving.preprocess.geometry import smart_resize  # noqa: E402

MIN_PIXELS, MAX_PIXELS = 256 * 28 * 28, 1280 * 28 * 28  # QVQ-72B-Preview's model card
FORMATS = ["JPEG", "PNG", "WEBP", "GIF", "BMP"]


def timed(fn, repeats: int) -> tuple[float, object]:
    fn()  # warm-up
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def inputs(cache) -> dict[str, bytes]:
    png = io.BytesIO()
    photo(2048, 2048, seed=7).save(png, "PNG")
    return {"jpeg-1024x1024": photo_jpeg(1024, 1024, seed=21, cache_dir=cache),
            "jpeg-2048x1536": photo_jpeg(2048, 1536, seed=22, cache_dir=cache),
            "jpeg-4000x3000": photo_jpeg(4000, 3000, seed=23, cache_dir=cache),
            "png-2048x2048": png.getvalue()}


def bench_images(repeats: int, cache) -> list[dict]:
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    from transformers import Qwen2VLImageProcessor, Qwen2VLImageProcessorPil

    processors = {"transformers-default": Qwen2VLImageProcessor(min_pixels=MIN_PIXELS,
                                                                max_pixels=MAX_PIXELS),
                  "transformers-pil": Qwen2VLImageProcessorPil(min_pixels=MIN_PIXELS,
                                                              max_pixels=MAX_PIXELS)}
    return [bench_one(name, data, processors, repeats)
            for name, data in inputs(cache).items()]


def bench_one(name: str, data: bytes, processors: dict, repeats: int) -> dict:
    src = Image.open(io.BytesIO(data))
    w, h = src.size
    th, tw = smart_resize(h, w, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)

    def ours():
        return decode_image(data, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS,
                            max_source_pixels=100_000_000, allowed_formats=FORMATS).pixels

    def naive():
        img = Image.open(io.BytesIO(data)).convert("RGB")
        return np.asarray(img.resize((tw, th), Image.Resampling.BICUBIC))

    def floor():
        img = Image.open(io.BytesIO(data))
        if img.format == "JPEG":
            img.draft("RGB", (max(w // 8, 1), max(h // 8, 1)))
        img.load()
        return img.size

    row: dict = {"image": name, "bytes": len(data), "target": [tw, th]}
    row["ours_ms"], ours_px = timed(ours, repeats)
    row["naive_pillow_ms"], naive_px = timed(naive, repeats)
    row["floor_ms"], floor_size = timed(floor, repeats)
    row["floor_decoded_size"] = list(floor_size)
    default = processors["transformers-default"]
    row["ours_plus_patchify_ms"], _ = timed(
        lambda: default(images=Image.fromarray(ours()), return_tensors="pt"), repeats)
    for label, proc in processors.items():
        row[f"{label}_ms"], out = timed(
            lambda proc=proc: proc(images=Image.open(io.BytesIO(data)).convert("RGB"),
                                   return_tensors="pt"), repeats)
        grid = out["image_grid_thw"][0].tolist()
        assert grid[1] * 14 == th and grid[2] * 14 == tw, (grid, th, tw)
    assert ours_px.shape == naive_px.shape == (th, tw, 3)
    row["psnr_ours_vs_full_decode_db"] = round(psnr(ours_px, naive_px), 2)
    for key in [k for k in row if k.endswith("_ms")]:
        row[key] = round(row[key], 2)
    row["ours_images_per_s_per_core"] = round(1000 / row["ours_ms"], 1)
    row["ratios"] = {
        "ours_over_transformers_default": round(row["ours_ms"]
                                                / row["transformers-default_ms"], 3),
        "ours_over_transformers_pil": round(row["ours_ms"] / row["transformers-pil_ms"], 3),
        "ours_over_floor": round(row["ours_ms"] / row["floor_ms"], 3),
        "ours_plus_patchify_over_transformers_default": round(
            row["ours_plus_patchify_ms"] / row["transformers-default_ms"], 3)}
    print(f"{name:16s} ours {row['ours_ms']:7.1f} ms  "
          f"(+patchify {row['ours_plus_patchify_ms']:6.1f})"
          f"  hf-default {row['transformers-default_ms']:7.1f}  hf-pil "
          f"{row['transformers-pil_ms']:7.1f}  naive {row['naive_pillow_ms']:7.1f}  floor "
          f"{row['floor_ms']:6.1f}  PSNR {row['psnr_ours_vs_full_decode_db']:.1f} dB",
          flush=True)
    return row


def bench_cache_e2e(cache, images: int = 8) -> dict:
    import httpx

    from loadtest.servers import ours
    from serving.models.tiny import build_tiny_qwen2vl

    work = ROOT / ".qvq" / "bench" / records.stamp()
    server = ours(build_tiny_qwen2vl(ROOT / ".qvq" / "models" / "tiny-qwen2vl"), work,
                  ROOT / "configs" / "local-cpu.yaml",
                  overrides={"storage": {"local": {"root": str(work / "store")}}})
    server.start("/v1/models")
    try:
        firsts, repeats = [], []
        with httpx.Client(base_url=server.base, timeout=300) as client:
            for i in range(images + 1):
                jpeg = photo_jpeg(4000, 3000, seed=500 + i, cache_dir=cache)
                url = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
                body = {"model": server.model_id, "max_tokens": 1, "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": url},
                                                 {"type": "text", "text": "What is it?"}]}]}
                payload = json.dumps(body).encode()  # encoded once, outside the timing
                lat = []
                for attempt in range(2):
                    if attempt:
                        # let the first request's background store writes finish: a repeated
                        # image arrives later in practice, not on the same millisecond
                        time.sleep(0.5)
                    t0 = time.perf_counter()
                    resp = client.post("/v1/chat/completions", content=payload,
                                       headers={"Content-Type": "application/json"})
                    lat.append((time.perf_counter() - t0) * 1000)
                    resp.raise_for_status()
                if i == 0:
                    continue  # warm-up image
                assert resp.headers.get("x-qvq-image-cache") == "memory"
                firsts.append(lat[0])
                repeats.append(lat[1])
    finally:
        server.stop()
    first, hit = statistics.median(firsts), statistics.median(repeats)
    print(f"cache e2e (4000x3000): first {first:.1f} ms, repeat {hit:.1f} ms, "
          f"ratio {hit / first:.3f}", flush=True)
    return {"image": "jpeg-4000x3000", "first_request_ms": round(first, 1),
            "repeat_request_ms": round(hit, 1), "repeat_over_first": round(hit / first, 3),
            "samples": len(firsts)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    cache = ROOT / ".qvq" / "bench" / "photos"
    stamp = records.stamp()
    report = {"benchmark": "preprocess", "timestamp": stamp, "machine": machine_facts(),
              "settings": {"min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS,
                           "repeats": args.repeats, "threads": 1},
              "images": bench_images(args.repeats, cache)}
    if not args.skip_e2e:
        report["cache_e2e"] = bench_cache_e2e(cache)
    out = records.write(records.result_path("preprocess", stamp, args.out), report)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
