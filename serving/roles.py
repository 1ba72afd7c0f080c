"""The Serve applications and deployments of a qvq deployment, and handles across them.

Two applications when the generator serves chat itself (``server.chat_entry: generator``,
the default):

- ``<app_name>`` at ``/``: Router (ingress), ImagePreprocessor, BatchRunner, RateLimiter;
- ``<app_name>-chat`` at ``/v1/chat``: QVQGenerator (ingress of ``/v1/chat/completions``).

With ``chat_entry: router`` there is one application, the generator bound inside it. A
deployment reaches one of another application by name (Serve's cross-application handles),
resolved when first called, so the two can start in any order.
"""

from __future__ import annotations

from typing import Any

from serving.config import ServingConfig

ROUTER = "Router"
PREPROCESSOR = "ImagePreprocessor"
GENERATOR = "QVQGenerator"
BATCH_RUNNER = "BatchRunner"
LIMITER = "RateLimiter"

CHAT_ROUTE_PREFIX = "/v1/chat"  # the generator app's FastAPI serves "/completions" under it
# Serve's import paths of the two application builders (serving/app.py)
APP_IMPORT_PATH = "serving.app:app_builder"
CHAT_APP_IMPORT_PATH = "serving.app:chat_app_builder"


def chat_app_name(config: ServingConfig) -> str:
    return f"{config.app_name}-chat"


def generator_app_name(config: ServingConfig) -> str:
    """The application that holds the QVQGenerator deployment."""
    return chat_app_name(config) if config.server.chat_entry == "generator" \
        else config.app_name


def applications(config: ServingConfig) -> list[tuple[str, str]]:
    """(name, route prefix) of every application, the main one first."""
    apps = [(config.app_name, "/")]
    if config.server.chat_entry == "generator":
        apps.append((chat_app_name(config), CHAT_ROUTE_PREFIX))
    return apps


def _handle(name: str, app_name: str) -> Any:
    from ray import serve

    return serve.get_deployment_handle(name, app_name=app_name, _check_exists=False)


def generator_handle(config: ServingConfig) -> Any:
    return _handle(GENERATOR, generator_app_name(config))


def preprocessor_handle(config: ServingConfig) -> Any:
    return _handle(PREPROCESSOR, config.app_name)


def limiter_handle(config: ServingConfig) -> Any | None:
    """The shared rate limiter, which exists only when some key has limits."""
    return _handle(LIMITER, config.app_name) if config.limits.any_limits else None
