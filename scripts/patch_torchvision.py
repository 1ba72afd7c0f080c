"""Guard torchvision's fake-kernel registrations so it imports beside CPU torch.

PyPI's torchvision wheel is a CUDA build; its C++ ops cannot load next to torch 2.13.0+cpu, and
``torchvision/_meta_registrations.py`` then fails at import with
"operator torchvision::nms does not exist" because two ``register_fake`` decorators are not
guarded by ``torchvision.extension._has_ops()``. Only torchvision's pure-Python transforms are
used (by transformers' Qwen2-VL image processor), so skipping those registrations is safe.
Idempotent: running it twice leaves the file as after the first run.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys

UNGUARDED = '@torch.library.register_fake("torchvision::'
GUARDED = (
    "@(torch.library.register_fake if torchvision.extension._has_ops() "
    'else (lambda *a, **k: (lambda f: f)))("torchvision::'
)


def main() -> int:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        print("torchvision is not installed; nothing to patch")
        return 0
    target = pathlib.Path(spec.origin).parent / "_meta_registrations.py"
    source = target.read_text()
    lines = source.splitlines(keepends=True)
    patched = [GUARDED + line[len(UNGUARDED):] if line.startswith(UNGUARDED) else line
               for line in lines]
    count = sum(1 for a, b in zip(lines, patched, strict=True) if a != b)
    if count:
        target.write_text("".join(patched))
    print(f"torchvision: guarded {count} fake-kernel registration(s) in {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
