import pathlib

import pytest

from serving.config import ServingConfig, config_from_dict, hash_api_key, load_config
from serving.errors import ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["local-cpu.yaml", "qvq-72b.yaml"])
def test_shipped_configs_validate(name):
    config = load_config(ROOT / "configs" / name, environ={})
    assert isinstance(config, ServingConfig)


def test_qvq_72b_config_is_production_shaped():
    config = load_config(ROOT / "configs" / "qvq-72b.yaml", environ={})
    assert config.model.tensor_parallel_size == 4
    assert config.image.min_pixels == 256 * 28 * 28 and config.image.max_pixels == 1280 * 28 * 28
    assert config.deployments.generator.autoscaling.max_replicas >= 1


def test_unknown_field_rejected_with_path():
    with pytest.raises(ConfigError, match=r"model\.max_model_lenn: unknown field"):
        config_from_dict({"model": {"path": "m", "max_model_lenn": 5}}, environ={})


def test_every_field_is_described():
    def walk(model_cls):
        for name, field in model_cls.model_fields.items():
            if name not in ("id", "sha256"):
                assert field.description, f"{model_cls.__name__}.{name} has no description"
            ann = field.annotation
            if isinstance(ann, type) and hasattr(ann, "model_fields"):
                walk(ann)
    walk(ServingConfig)


def test_env_overrides_win_and_parse_scalars():
    config = config_from_dict({"model": {"path": "m", "max_model_len": 4096}},
                              environ={"QVQ__MODEL__MAX_MODEL_LEN": "8192",
                                       "QVQ__SERVER__PORT": "9000",
                                       "QVQ__FETCH__ALLOWED_CIDRS": "[127.0.0.1/32]"})
    assert config.model.max_model_len == 8192
    assert config.server.port == 9000
    assert config.fetch.allowed_cidrs == ["127.0.0.1/32"]


def test_bad_values_name_the_field():
    with pytest.raises(ConfigError, match="image"):
        config_from_dict({"model": {"path": "m"},
                          "image": {"min_pixels": 10_000, "max_pixels": 5_000}}, environ={})
    with pytest.raises(ConfigError, match="allowed_cidrs"):
        config_from_dict({"model": {"path": "m"}, "fetch": {"allowed_cidrs": ["nope"]}},
                         environ={})
    with pytest.raises(ConfigError, match="min_replicas"):
        config_from_dict({"model": {"path": "m"}, "deployments": {"generator": {
            "autoscaling": {"min_replicas": 3, "max_replicas": 1}}}}, environ={})


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml", environ={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad, environ={})


def test_api_keys_from_hashes_env_and_file(tmp_path):
    secret = tmp_path / "keys"
    secret.write_text("# team keys\nteam-a:sk-file-a\nsk-file-b\n")
    auth = config_from_dict({"model": {"path": "m"}, "auth": {
        "api_keys": [{"id": "ops", "sha256": hash_api_key("sk-ops")}],
        "api_keys_file": str(secret)}}, environ={}).auth
    keys = auth.resolve_keys({"QVQ_API_KEYS": "ci:sk-env, sk-anon"})
    by_id = {k.id: k.sha256 for k in keys}
    assert by_id["ops"] == hash_api_key("sk-ops")
    assert by_id["ci"] == hash_api_key("sk-env")
    assert by_id["team-a"] == hash_api_key("sk-file-a")
    assert by_id[f"key-{hash_api_key('sk-anon')[:8]}"] == hash_api_key("sk-anon")
    assert hash_api_key("sk-file-b") in by_id.values()
    assert all("sk-" not in k.sha256 for k in keys)


def test_partial_deployment_sections_keep_the_role_defaults():
    from serving.config import config_from_dict

    config = config_from_dict({"model": {"path": "/m"},
                               "deployments": {"router": {"num_cpus": 2},
                                               "preprocessor": {"max_ongoing_requests": 4},
                                               "generator": {"num_cpus": 3}}}, environ={})
    assert (config.deployments.router.num_cpus,
            config.deployments.router.max_ongoing_requests) == (2, 512)
    assert (config.deployments.preprocessor.num_cpus,
            config.deployments.preprocessor.max_ongoing_requests) == (1.0, 4)
    assert config.deployments.generator.max_ongoing_requests == 256
    # a dumped config loads back to itself
    again = config_from_dict(config.model_dump(mode="json"), environ={})
    assert again == config


def test_admission_cap_must_leave_the_chat_entry_room_to_refuse():
    import pytest

    from serving.config import config_from_dict
    from serving.errors import ConfigError

    base = {"model": {"path": "m"}}
    default = config_from_dict(base, environ={})
    assert default.server.chat_entry == "generator"
    assert default.max_in_flight_chats == 256 * 7 // 8  # of the generator's 256 ongoing
    with pytest.raises(ConfigError, match="must be below deployments.generator.max_ongoing"):
        config_from_dict({**base, "server": {"max_in_flight_requests": 256}}, environ={})
    routed = config_from_dict({**base, "server": {"chat_entry": "router",
                                                  "max_in_flight_requests": 448}}, environ={})
    assert routed.max_in_flight_chats == 448  # below the router's 512
    with pytest.raises(ConfigError, match="must be below deployments.router.max_ongoing"):
        config_from_dict({**base, "server": {"chat_entry": "router",
                                             "max_in_flight_requests": 512}}, environ={})
    limits = config_from_dict({**base, "limits": {"default": {"requests_per_minute": 5},
                                                  "per_key": {"a": {}}}}, environ={}).limits
    assert limits.any_limits and limits.for_key("a").requests_per_minute is None
    assert limits.for_key("b").requests_per_minute == 5 == limits.for_key(None).requests_per_minute


def test_detail_ceilings_default_to_the_deployment_bounds():
    image = config_from_dict({"model": {"path": "m"},
                              "image": {"min_pixels": 3136, "max_pixels": 200704}},
                             environ={}).image
    assert [image.detail_ceiling(d) for d in ("low", "auto", "high")] == [3136, 200704, 200704]
    tuned = config_from_dict({"model": {"path": "m"}, "image": {
        "min_pixels": 3136, "max_pixels": 200704,
        "detail_max_pixels": {"low": 50176, "auto": 100352}}}, environ={}).image
    assert [tuned.detail_ceiling(d) for d in ("low", "auto", "high")] == [50176, 100352, 200704]


@pytest.mark.parametrize("detail,value", [("low", 3135), ("auto", 200705), ("high", 10**7)])
def test_detail_ceiling_outside_the_bounds_names_the_field(detail, value):
    with pytest.raises(ConfigError, match=rf"image\.detail_max_pixels\.{detail} is {value}.*"
                                          r"3136\.\.200704"):
        config_from_dict({"model": {"path": "m"}, "image": {
            "min_pixels": 3136, "max_pixels": 200704,
            "detail_max_pixels": {detail: value}}}, environ={})


def test_detail_ceilings_reject_unknown_details():
    with pytest.raises(ConfigError, match=r"detail_max_pixels\.medium: unknown field"):
        config_from_dict({"model": {"path": "m"},
                          "image": {"detail_max_pixels": {"medium": 300_000}}}, environ={})
