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

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from serving.config import ServingConfig

ROUTER = "Router"
PREPROCESSOR = "ImagePreprocessor"
GENERATOR = "QVQGenerator"
BATCH_RUNNER = "BatchRunner"
LIMITER = "RateLimiter"


@dataclass(frozen=True)
class Role:
    """A deployment users size and scale: its config section (``deployments.<section>``),
    its Serve name, and its defaults where they differ from ``DeploymentConfig``'s."""

    section: str
    deployment: str
    defaults: Mapping[str, Any] = field(default_factory=dict)


# The one table of the scaled roles: the config's sections and defaults, the apps' deployment
# names, the chart's serveConfigV2 overrides (helm/qvq-serving/files/roles.yaml, generated from
# it) and `kubectl qvq scale` all read it.
ROLES: tuple[Role, ...] = (
    Role("router", ROUTER, {"num_cpus": 0.5, "max_ongoing_requests": 512}),
    Role("preprocessor", PREPROCESSOR,
         {"num_cpus": 1.0, "max_ongoing_requests": 16, "max_queued_requests": 256}),
    Role("generator", GENERATOR, {"max_ongoing_requests": 256, "max_queued_requests": 512}),
)
DEPLOYMENT_OF: dict[str, str] = {role.section: role.deployment for role in ROLES}
SECTION_OF: dict[str, str] = {role.deployment: role.section for role in ROLES}

CHAT_APP_SUFFIX = "-chat"
CHAT_ROUTE_PREFIX = "/v1/chat"  # the generator app's FastAPI serves "/completions" under it
# Serve's import paths of the two application builders (serving/app.py)
APP_IMPORT_PATH = "serving.app:app_builder"
CHAT_APP_IMPORT_PATH = "serving.app:chat_app_builder"


def chat_entry(config: ServingConfig) -> str:
    """The deployment that serves ``/v1/chat/completions``."""
    return GENERATOR if config.server.chat_entry == "generator" else ROUTER


def chat_app_name(config: ServingConfig) -> str:
    return config.app_name + CHAT_APP_SUFFIX


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
