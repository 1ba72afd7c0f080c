"""Router: the OpenAI-compatible HTTP surface on CPU nodes (:mod:`serving.api.routes`): files,
batches, images, models, health, and chat completions when ``server.chat_entry`` is ``router``.

With the default ``chat_entry: generator`` the generator replicas serve
``/v1/chat/completions`` themselves (a Serve application at ``/v1/chat``, see
:mod:`serving.api.chat`), and HTTP requests for that route never reach this deployment. The
route stays here for the other placement, and so that ``/openapi.json`` describes it.

Hops are kept to the minimum: a request with images sends the URLs to the ImagePreprocessor
and passes its *pending* response straight into the generator call, so pixels flow
preprocessor -> generator through Ray's object store without ever visiting the router.
"""

from __future__ import annotations

from ray import serve
from ray.serve.handle import DeploymentHandle

from serving.api.ingress import build_router_app
from serving.config import ServingConfig
from serving.logs import route_to_serve_logs
from serving.roles import ROUTER, generator_handle


@serve.ingress()
class Router:
    """Builds its app in the replica, around handles of the deployments it calls; Serve
    takes it from ``__serve_build_asgi_app__`` after the constructor."""

    def __init__(self, config: ServingConfig, preprocessor: DeploymentHandle,
                 generator: DeploymentHandle | None, runner: DeploymentHandle,
                 limiter: DeploymentHandle | None = None):
        route_to_serve_logs()
        # None: the generator is the ingress of its own application (chat_entry:
        # generator), reached by name
        self._app = build_router_app(config, preprocessor=preprocessor,
                                     generator=generator or generator_handle(config),
                                     batch_runner=runner, limiter=limiter)

    def __serve_build_asgi_app__(self):
        return self._app


def router_deployment(config: ServingConfig) -> serve.Deployment:
    return serve.deployment(Router, name=ROUTER, **config.deployments.router.serve_options(
        log_encoding=config.server.log_encoding, access_log_default=True))
