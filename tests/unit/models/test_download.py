"""Key -> path safety, source parsing and ETag handling of `qvq model download` (no S3)."""

from __future__ import annotations

import json

import pytest

from serving.errors import ConfigError
from serving.models.download import (
    MARKER,
    RemoteObject,
    S3Location,
    download_prefix,
    s3_config_for,
    safe_path,
)


@pytest.mark.parametrize("relative, expected", [
    ("config.json", "config.json"),
    ("tokenizer/tokenizer.json", "tokenizer/tokenizer.json"),
    ("a/b/c/model-00001-of-00002.safetensors", "a/b/c/model-00001-of-00002.safetensors"),
    ("..hidden", "..hidden"),
    ("dir/.gitattributes", "dir/.gitattributes"),
])
def test_safe_path_keeps_keys_inside_dest(tmp_path, relative, expected):
    assert safe_path(tmp_path, relative) == tmp_path / expected


@pytest.mark.parametrize("relative", [
    "../escape", "a/../../escape", "a/..", "..", "/etc/passwd", "//etc/passwd", "a//b", "./a",
    "a/./b", "", "a/", "nul\0byte",
])
def test_safe_path_refuses_escaping_or_odd_keys(tmp_path, relative):
    with pytest.raises(ConfigError, match="outside the destination"):
        safe_path(tmp_path, relative)


@pytest.mark.parametrize("relative", [MARKER, "x/.model.safetensors.host.qvq-part"])
def test_safe_path_refuses_our_bookkeeping_names(tmp_path, relative):
    with pytest.raises(ConfigError, match="reserved"):
        safe_path(tmp_path, relative)


def test_safe_path_relative_dest_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert safe_path("models", "a/b") == tmp_path / "models" / "a" / "b"


@pytest.mark.parametrize("url, bucket, prefix", [
    ("s3://models/qvq-72b", "models", "qvq-72b/"),
    ("s3://models/qvq-72b/", "models", "qvq-72b/"),
    ("s3://models/org/qvq-72b//", "models", "org/qvq-72b/"),
    ("s3://models", "models", ""),
    ("s3://models/", "models", ""),
])
def test_source_parsing_makes_the_prefix_a_directory(url, bucket, prefix):
    loc = S3Location.parse(url)
    assert (loc.bucket, loc.prefix) == (bucket, prefix)
    assert str(loc) == f"s3://{bucket}/{prefix}"


@pytest.mark.parametrize("url", ["models/qvq", "https://x/y", "s3://", "s3:///prefix"])
def test_source_must_be_an_s3_url(url):
    with pytest.raises(ConfigError, match="s3://"):
        S3Location.parse(url)


def test_md5_only_from_single_part_etags():
    assert RemoteObject("k", "k", 1, '"D41D8CD98F00B204E9800998ECF8427E"').md5 == \
        "d41d8cd98f00b204e9800998ecf8427e"
    assert RemoteObject("k", "k", 1, '"d41d8cd98f00b204e9800998ecf8427e-2"').md5 is None
    assert RemoteObject("k", "k", 1, "").md5 is None


def test_s3_settings_errors_are_config_errors():
    loc = S3Location.parse("s3://ab/x")  # bucket names have 3..63 characters
    with pytest.raises(ConfigError, match="invalid S3 settings: bucket"):
        s3_config_for(loc)
    with pytest.raises(ConfigError, match="multipart_chunk_mib"):
        s3_config_for(S3Location.parse("s3://models/x"), multipart_chunk_mib=1)
    assert s3_config_for(S3Location.parse("s3://models/x"), region=None).region == "us-east-1"


def test_marker_for_the_same_source_returns_without_touching_s3(tmp_path):
    loc = S3Location.parse("s3://models/qvq")
    (tmp_path / MARKER).write_text(json.dumps({"source": str(loc), "objects": 3, "bytes": 10}))
    config = s3_config_for(loc, endpoint_url="http://127.0.0.1:9")  # nothing listens there
    result = download_prefix(loc, tmp_path, config)
    assert result.already_complete and (result.objects, result.bytes) == (3, 10)


def test_marker_for_another_source_is_refused(tmp_path):
    (tmp_path / MARKER).write_text(json.dumps({"source": "s3://models/other/"}))
    loc = S3Location.parse("s3://models/qvq")
    with pytest.raises(ConfigError, match="already holds 's3://models/other/'"):
        download_prefix(loc, tmp_path, s3_config_for(loc, endpoint_url="http://127.0.0.1:9"))


def test_workers_must_be_positive(tmp_path):
    loc = S3Location.parse("s3://models/qvq")
    with pytest.raises(ConfigError, match="--workers"):
        download_prefix(loc, tmp_path, s3_config_for(loc), workers=0)
