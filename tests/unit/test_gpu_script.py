"""`loadtest/gpu/run.sh --dry-run`: everything the GPU run does that needs no CUDA."""

import os
import pathlib
import subprocess
import sys

from serving.config import load_config

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "loadtest" / "gpu" / "run.sh"


def dry_run(tmp_path, **env):
    environ = {**os.environ, "VENV": sys.prefix, "WORK": str(tmp_path / "work"),
               "WHEELS": str(tmp_path / "no-wheels"), "CPUS": "16", **env}
    return subprocess.run(["bash", str(SCRIPT), "--dry-run"], env=environ, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_script_is_executable_bash():
    assert os.access(SCRIPT, os.X_OK)
    assert SCRIPT.read_text().startswith("#!/usr/bin/env bash")
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_dry_run_prints_the_benchmark_and_writes_a_valid_config(tmp_path):
    proc = dry_run(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    config_path = tmp_path / "work" / "gpu-qwen2-vl-2b.yaml"
    model_dir = tmp_path / "work" / "models" / "qwen2-vl-2b"
    bench = [ln for ln in out.splitlines() if "loadtest.compare" in ln and "--servers" in ln]
    assert len(bench) == 1, out
    for part in ("--servers ours,bare-vllm", f"--config {config_path}", f"--model-dir {model_dir}",
                 "--scenarios photo-2048x1536,photo-4000x3000", "--concurrency 64",
                 "timeout --foreground -s INT"):
        assert part in bench[0], part
    assert "pip install --no-index --find-links" in out
    assert f"model build-random --shape qwen2-vl-2b --out {model_dir}" in out
    assert "builder ok" in out and "vocab 151936" in out and "dry run ok" in out

    config = load_config(config_path)
    assert config.model.path == str(model_dir)
    assert config.model.tensor_parallel_size == 1
    assert config.model.max_model_len == 8192
    assert config.model.enforce_eager is False
    assert config.deployments.generator.num_gpus_per_worker == 1
    assert config.deployments.preprocessor.autoscaling.max_replicas == 6  # 16 CPUs
    assert config.server.host == "127.0.0.1"
    assert config.storage.local.root.startswith(str(tmp_path / "work"))
    # The dry run builds without weights, and never where a real run keeps its checkpoint.
    assert not model_dir.exists()
    assert not list((tmp_path / "work" / "dry-run").rglob("*.safetensors"))


def test_dry_run_rejects_bad_settings(tmp_path):
    proc = dry_run(tmp_path, SHAPE="qwen2-vl-72b")
    assert proc.returncode != 0 and "SHAPE=qwen2-vl-72b" in proc.stderr
    proc = dry_run(tmp_path, SCENARIOS="text,photo-8k")
    assert proc.returncode != 0 and "unknown photo-8k" in proc.stderr


def test_dry_run_checks_the_wheel_directory(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "numpy-2.3.0-cp312-cp312-manylinux_2_28_x86_64.whl").touch()
    proc = dry_run(tmp_path, WHEELS=str(wheels), SHAPE="tiny")
    assert proc.returncode != 0
    assert "vllm-0.32.0-*.whl" in proc.stderr and "cp312" in proc.stderr
