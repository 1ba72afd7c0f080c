"""``build_app(config)``: the one function that binds the deployments.

Used by ``qvq serve``, by ``serve run serving.app:app_builder config_path=...``, by Serve config
YAML (``import_path: serving.app:app_builder`` with ``args``) and by a RayService's
``serveConfigV2``.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from serving.batch.runner import runner_deployment
from serving.config import ServingConfig, config_from_dict, load_config
from serving.generator import generator_deployment
from serving.limits import limiter_deployment
from serving.preprocessor import preprocessor_deployment
from serving.router import router_deployment


def build_app(config: ServingConfig) -> Application:
    preprocessor = preprocessor_deployment(config).bind(config)
    generator = generator_deployment(config).bind(config)
    runner = runner_deployment(config).bind(config, preprocessor, generator)
    # The shared rate limiter exists only when some key has limits: no extra hop otherwise.
    limiter = limiter_deployment(config).bind(config) if config.limits.any_limits else None
    return router_deployment(config).bind(config, preprocessor, generator, runner, limiter)


def app_builder(args: dict[str, Any]) -> Application:
    """Serve's application-builder hook: ``args`` is either ``{config_path: ...}`` or a config."""
    args = dict(args)
    path = args.pop("config_path", None)
    if path is not None:
        if args:
            raise ValueError(f"app args: give config_path or an inline config, not both "
                             f"(extra: {sorted(args)})")
        return build_app(load_config(path))
    return build_app(config_from_dict(args, source="serve app args"))
