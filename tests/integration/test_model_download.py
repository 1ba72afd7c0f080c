"""`qvq model download` against a real S3 server (SeaweedFS on 127.0.0.1): no Ray, no engine.

The CLI runs in-process; a hook on the S3 client it builds records every GetObject (key and
Range), so the tests see what was fetched, in how many parts, and what was skipped.
"""

from __future__ import annotations

import hashlib
import io
import json
import socket
import uuid

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

import serving.models.download as download
from serving.cli import main
from tests.s3_server import ACCESS_KEY, SECRET_KEY

BUCKET = "qvq-test"
MIB = 2**20


def checkpoint() -> dict[str, bytes]:
    """A fake checkpoint: small configs, nested dirs, one shard above the 5 MiB part size."""
    big = hashlib.sha256(b"seed").digest() * (6 * MIB // 32 + 1000)  # ~6 MiB, not all zeros
    return {
        "config.json": json.dumps({"architectures": ["Qwen2VLForConditionalGeneration"]}).encode(),
        "tokenizer/tokenizer.json": b'{"model": {"type": "BPE"}}' * 100,
        "tokenizer/special/tokens.txt": b"<|im_start|>\n<|im_end|>\n",
        "model-00001-of-00002.safetensors": big,
        "model-00002-of-00002.safetensors": bytes(range(256)) * 4096,  # 1 MiB
        "empty.txt": b"",
    }


@pytest.fixture
def s3(s3_server):
    return boto3.client("s3", endpoint_url=s3_server.endpoint, aws_access_key_id=ACCESS_KEY,
                        aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
                        config=Config(s3={"addressing_style": "path"}))


@pytest.fixture
def uploaded(s3):
    """A unique prefix holding checkpoint(); the big shard uploaded in parts (ETag "...-2")."""
    prefix = f"models/ckpt-{uuid.uuid4().hex[:8]}"
    files = checkpoint()
    parts = TransferConfig(multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB)
    for name, data in files.items():
        s3.upload_fileobj(io.BytesIO(data), BUCKET, f"{prefix}/{name}",
                          Config=parts)
    assert s3.head_object(Bucket=BUCKET, Key=f"{prefix}/model-00001-of-00002.safetensors")[
        "ETag"].strip('"').endswith("-2")
    return prefix, files


@pytest.fixture
def gets(monkeypatch):
    """Every GetObject / ListObjectsV2 the download's S3 client sends: (operation, key, range)."""
    calls: list[tuple[str, str | None, str | None]] = []
    real = download.make_client

    def counting(*args, **kwargs):
        client = real(*args, **kwargs)
        for op in ("GetObject", "ListObjectsV2"):
            client.meta.events.register(
                f"provide-client-params.s3.{op}",
                lambda params, _op=op, **_: calls.append((_op, params.get("Key"),
                                                          params.get("Range"))))
        return client

    monkeypatch.setattr(download, "make_client", counting)
    return calls


def run(s3_server, source: str, dest, *extra: str) -> int:
    return main(["model", "download", "--source", source, "--dest", str(dest),
                 "--endpoint-url", s3_server.endpoint, "--part-mib", "5", *extra])


def fetched(calls) -> list[str]:
    return sorted({key.rsplit("/", 1)[-1] for op, key, _ in calls if op == "GetObject"})


def assert_same_files(dest, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        assert (dest / name).read_bytes() == data, name
    on_disk = {str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()}
    assert on_disk == set(files) | {download.MARKER}  # no temporary files left behind


def test_download_writes_files_marker_and_summary(s3_server, uploaded, gets, tmp_path, capsys):
    prefix, files = uploaded
    dest = tmp_path / "model"
    assert run(s3_server, f"s3://{BUCKET}/{prefix}", dest, "--workers", "3") == 0
    assert_same_files(dest, files)
    marker = json.loads((dest / download.MARKER).read_text())
    assert marker == {"source": f"s3://{BUCKET}/{prefix}/", "objects": len(files),
                      "bytes": sum(map(len, files.values()))}
    out = capsys.readouterr().out
    assert f"{len(files)} files, {marker['bytes']} bytes" in out and " s\n" in out
    # the 6 MiB shard came in two ranged parts of 5 MiB, the small ones in one GET each
    big = [rng for op, key, rng in gets
           if op == "GetObject" and key.endswith("model-00001-of-00002.safetensors")]
    assert sorted(big) == [f"bytes=0-{5 * MIB - 1}", f"bytes={5 * MIB}-"]
    assert fetched(gets) == sorted(name.rsplit("/", 1)[-1] for name in files)


def test_second_run_returns_at_once(s3_server, uploaded, gets, tmp_path, capsys):
    prefix, files = uploaded
    dest = tmp_path / "model"
    assert run(s3_server, f"s3://{BUCKET}/{prefix}/", dest) == 0
    mtimes = {p: p.stat().st_mtime_ns for p in dest.rglob("*")}
    gets.clear()
    capsys.readouterr()
    assert run(s3_server, f"s3://{BUCKET}/{prefix}", dest) == 0
    assert gets == []  # not even a listing
    assert {p: p.stat().st_mtime_ns for p in dest.rglob("*")} == mtimes
    assert "already holds" in capsys.readouterr().out


def test_restart_repairs_partial_state(s3_server, uploaded, gets, tmp_path, capsys):
    """An init container killed mid-way: no marker, one file missing, one truncated, one with
    the right size but wrong bytes, a temporary file left over. Only those are fetched again."""
    prefix, files = uploaded
    dest = tmp_path / "model"
    assert run(s3_server, f"s3://{BUCKET}/{prefix}", dest) == 0
    (dest / download.MARKER).unlink()
    (dest / "tokenizer/special/tokens.txt").unlink()
    shard = dest / "model-00001-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[: 3 * MIB])
    config = dest / "config.json"
    config.write_bytes(b"X" * len(files["config.json"]))  # same size: the MD5 catches it
    leftover = dest / f".model-00002-of-00002.safetensors.{socket.gethostname()}.qvq-part"
    leftover.write_bytes(b"half")
    kept = dest / "tokenizer/tokenizer.json"
    kept_mtime = kept.stat().st_mtime_ns
    gets.clear()
    capsys.readouterr()
    assert run(s3_server, f"s3://{BUCKET}/{prefix}", dest) == 0
    assert fetched(gets) == ["config.json", "model-00001-of-00002.safetensors", "tokens.txt"]
    assert kept.stat().st_mtime_ns == kept_mtime
    assert not leftover.exists()  # this host's leftover from the interrupted run
    assert_same_files(dest, files)
    assert "(3 downloaded" in capsys.readouterr().out


def test_listing_is_paginated(s3_server, uploaded, gets, tmp_path):
    prefix, files = uploaded
    source = download.S3Location.parse(f"s3://{BUCKET}/{prefix}")
    config = download.s3_config_for(source, endpoint_url=s3_server.endpoint)
    result = download.download_prefix(source, tmp_path / "m", config, page_size=2)
    assert result.objects == result.downloaded == len(files)
    assert sum(op == "ListObjectsV2" for op, _, _ in gets) == 3  # 6 objects, 2 per page
    assert_same_files(tmp_path / "m", files)


def test_prefix_is_a_directory_not_a_string_prefix(s3_server, uploaded, s3, tmp_path):
    prefix, files = uploaded
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}-old/stale.bin", Body=b"old")
    assert run(s3_server, f"s3://{BUCKET}/{prefix}", tmp_path / "m") == 0
    assert not (tmp_path / "m" / "stale.bin").exists()
    assert_same_files(tmp_path / "m", files)


def test_empty_prefix_is_a_clear_error(s3_server, tmp_path, capsys):
    source = f"s3://{BUCKET}/models/none-{uuid.uuid4().hex[:8]}"
    assert run(s3_server, source, tmp_path / "m") == 2
    assert f"no objects under {source}/" in capsys.readouterr().err
    assert not (tmp_path / "m" / download.MARKER).exists()


def test_missing_bucket_is_a_clear_error(s3_server, tmp_path, capsys):
    assert run(s3_server, "s3://qvq-no-such-bucket/models/x", tmp_path / "m") == 2
    assert "does not exist" in capsys.readouterr().err


def test_wrong_credentials_are_a_clear_error(s3_server, uploaded, tmp_path, capsys):
    prefix, _ = uploaded
    creds = tmp_path / "creds"
    creds.write_text("[loader]\naws_access_key_id = wrong\naws_secret_access_key = nope\n")
    assert run(s3_server, f"s3://{BUCKET}/{prefix}", tmp_path / "m",
               "--credentials-file", str(creds), "--profile", "loader") == 2
    err = capsys.readouterr().err
    assert "S3 refused listing" in err and "check the access key" in err
    assert "nope" not in err and not (tmp_path / "m" / download.MARKER).exists()


def test_unreadable_credentials_file(s3_server, tmp_path, capsys):
    assert run(s3_server, f"s3://{BUCKET}/models/x", tmp_path / "m",
               "--credentials-file", str(tmp_path / "absent")) == 2
    assert "cannot read" in capsys.readouterr().err


def test_unreachable_endpoint_is_a_clear_error(tmp_path, capsys, s3_server):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    assert main(["model", "download", "--source", f"s3://{BUCKET}/models/x", "--dest",
                 str(tmp_path / "m"), "--endpoint-url", f"http://127.0.0.1:{port}"]) == 1
    assert "cannot reach the S3 endpoint" in capsys.readouterr().err


def test_unsafe_key_is_refused_before_any_download(s3_server, s3, gets, tmp_path, capsys):
    """SeaweedFS rejects keys with `..` on upload (unit tests cover those); a key that would
    overwrite the completion marker is refused the same way, before anything is fetched."""
    prefix = f"models/evil-{uuid.uuid4().hex[:8]}"
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}/ok.json", Body=b"{}")
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}/{download.MARKER}", Body=b"{}")
    assert run(s3_server, f"s3://{BUCKET}/{prefix}", tmp_path / "m") == 2
    assert f"refusing object key '{download.MARKER}'" in capsys.readouterr().err
    assert not any(op == "GetObject" for op, _, _ in gets)
    assert not (tmp_path / "m" / "ok.json").exists()
