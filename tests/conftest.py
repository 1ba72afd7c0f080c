import importlib.util
import pathlib

import pytest

if importlib.util.find_spec("hypothesis") is not None:  # property tests' settings profiles
    import tests.hypothesis_profiles  # noqa: F401

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> pathlib.Path:
    """The tiny checkpoint: the project's built copy when present, else built for this session."""
    from serving.models.tiny import MARKER, build_tiny_qwen2vl

    built = ROOT / ".qvq" / "models" / "tiny-qwen2vl"
    if (built / MARKER).exists():
        return built
    return build_tiny_qwen2vl(tmp_path_factory.mktemp("models") / "tiny-qwen2vl")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """One real S3 server (weed mini) for the whole session, with its test buckets."""
    import os

    from tests.s3_server import ACCESS_KEY, SECRET_KEY, WeedServer

    server = WeedServer(tmp_path_factory.mktemp("weed") / "data",
                        buckets=("qvq-test", "qvq-sources", "qvq-private")).start()
    old = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"] = ACCESS_KEY, SECRET_KEY
    try:
        yield server
    finally:
        server.stop()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
