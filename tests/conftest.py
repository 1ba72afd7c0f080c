import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> pathlib.Path:
    """The tiny checkpoint: the project's built copy when present, else built for this session."""
    from serving.models.tiny import MARKER, build_tiny_qwen2vl

    built = ROOT / ".qvq" / "models" / "tiny-qwen2vl"
    if (built / MARKER).exists():
        return built
    return build_tiny_qwen2vl(tmp_path_factory.mktemp("models") / "tiny-qwen2vl")
