"""One set of engine arguments: our AsyncEngineArgs and the `vllm serve` flags the bare-vLLM
baseline gets are the same settings, for every shipped config (a benchmark stays fair)."""

from __future__ import annotations

import pathlib

import pytest

from serving.config import load_config
from serving.generate.engine.args import engine_cli_args, engine_kwargs

ROOT = pathlib.Path(__file__).resolve().parents[3]
CONFIGS = sorted(p.name for p in (ROOT / "configs").glob("*.yaml") if p.name != "serve-local.yaml")


@pytest.mark.parametrize("name", CONFIGS)
def test_cli_flags_give_vllm_the_same_engine_args(name):
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    config = load_config(ROOT / "configs" / name, environ={})
    kwargs = engine_kwargs(config)
    parser = AsyncEngineArgs.add_cli_args(FlexibleArgumentParser())
    parsed = AsyncEngineArgs.from_cli_args(parser.parse_args(
        ["--model", config.model.path, *engine_cli_args(config)]))
    ours = AsyncEngineArgs(**kwargs)
    for field in kwargs:
        assert getattr(parsed, field) == getattr(ours, field), field


def test_scheduling_policy_and_prefix_caching_reach_the_flags():
    config = load_config(ROOT / "configs" / "local-cpu.yaml", environ={})
    flags = engine_cli_args(config)
    assert flags[flags.index("--scheduling-policy") + 1] == config.model.scheduling_policy
    assert ("--enable-prefix-caching" if config.model.enable_prefix_caching
            else "--no-enable-prefix-caching") in flags
    assert config.model.path not in flags  # the positional argument, given by the caller
