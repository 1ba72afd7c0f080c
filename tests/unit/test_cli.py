import json

from serving.cli import main
from serving.config import hash_api_key


def test_validate_shipped_configs(capsys):
    assert main(["config", "validate", "configs/local-cpu.yaml", "configs/qvq-72b.yaml"]) == 0
    assert "tp=4" in capsys.readouterr().out


def test_bad_config_exit_code_and_message(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {path: m, nope: 1}\n")
    assert main(["config", "validate", str(bad)]) == 2
    assert "model.nope: unknown field" in capsys.readouterr().err


def test_hash_key(capsys):
    assert main(["auth", "hash-key", "--id", "team", "--key", "sk-1"]) == 0
    assert json.loads(capsys.readouterr().out) == {"id": "team", "sha256": hash_api_key("sk-1")}


def test_storage_check_local(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("QVQ__STORAGE__LOCAL__ROOT", str(tmp_path / "store"))
    assert main(["storage", "check", "--config", "configs/local-cpu.yaml"]) == 0
    assert "storage ok: local" in capsys.readouterr().out


def test_storage_check_wrong_s3_credentials(s3_server, tmp_path, capsys, monkeypatch):
    creds = tmp_path / "creds"
    creds.write_text("[default]\naws_access_key_id = x\naws_secret_access_key = y\n")
    monkeypatch.setenv("QVQ__STORAGE__BACKEND", "s3")
    monkeypatch.setenv("QVQ__STORAGE__S3__ENDPOINT_URL", s3_server.endpoint)
    monkeypatch.setenv("QVQ__STORAGE__S3__BUCKET", "qvq-test")
    monkeypatch.setenv("QVQ__STORAGE__S3__CREDENTIALS_FILE", str(creds))
    assert main(["storage", "check", "--config", "configs/local-cpu.yaml"]) == 2
    assert "credentials were rejected" in capsys.readouterr().err
