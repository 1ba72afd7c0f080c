"""``build_app(config)`` and ``build_chat_app(config)``: the functions that bind the deployments.

With ``server.chat_entry: generator`` (the default) a deployment is two Serve applications
(:mod:`serving.roles`): ``build_app`` makes the main one at ``/`` (router, preprocessor, batch
runner, rate limiter) and ``build_chat_app`` the one at ``/v1/chat`` whose ingress is the
generator. With ``chat_entry: router`` ``build_app`` alone binds everything, the generator
included. :func:`applications` lists what to run.

Used by ``qvq serve``, by ``serve run serving.app:app_builder config_path=...``, by Serve config
YAML (``import_path: serving.app:app_builder`` and ``serving.app:chat_app_builder``, each with
the same ``args``) and by a RayService's ``serveConfigV2``.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from serving.api.limits import limiter_deployment
from serving.api.router import router_deployment
from serving.batch.runner import runner_deployment
from serving.config import ServingConfig, config_from_dict, load_config
from serving.generate.generator import generator_deployment
from serving.preprocess.preprocessor import preprocessor_deployment
from serving.roles import applications as application_names


def build_app(config: ServingConfig) -> Application:
    preprocessor = preprocessor_deployment(config).bind(config)
    # chat_entry generator: the generator is the other application's ingress, found by name
    generator = generator_deployment(config).bind(config) \
        if config.server.chat_entry == "router" else None
    runner = runner_deployment(config).bind(config, preprocessor, generator)
    # The shared rate limiter exists only when some key has limits: no extra hop otherwise.
    limiter = limiter_deployment(config).bind(config) if config.limits.any_limits else None
    return router_deployment(config).bind(config, preprocessor, generator, runner, limiter)


def build_chat_app(config: ServingConfig) -> Application:
    if config.server.chat_entry != "generator":
        raise ValueError("the chat application exists only with server.chat_entry: generator")
    return generator_deployment(config).bind(config)


def applications(config: ServingConfig) -> list[tuple[str, str, Application]]:
    """(name, route prefix, application) of everything a deployment runs, main one first."""
    builders = [build_app, build_chat_app]
    return [(name, prefix, build(config))
            for (name, prefix), build in zip(application_names(config), builders, strict=False)]


def _config_of(args: dict[str, Any]) -> ServingConfig:
    """Serve's application-builder args: either ``{config_path: ...}`` or a config."""
    args = dict(args)
    path = args.pop("config_path", None)
    if path is not None:
        if args:
            raise ValueError(f"app args: give config_path or an inline config, not both "
                             f"(extra: {sorted(args)})")
        return load_config(path)
    return config_from_dict(args, source="serve app args")


def app_builder(args: dict[str, Any]) -> Application:
    """Serve's application-builder hook of the main application."""
    return build_app(_config_of(args))


def chat_app_builder(args: dict[str, Any]) -> Application:
    """Serve's application-builder hook of the chat application (the same args)."""
    return build_chat_app(_config_of(args))
