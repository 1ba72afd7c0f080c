"""Cluster access for ``kubectl-qvq``: one API client from kubeconfig, and its errors in words.

Callers catch by layer::

    QVQError                      (serving.errors)
    └── KubeError                 anything kubectl-qvq reports about the cluster or its input
        ├── ClusterAccessError    no kubeconfig, API server unreachable, 401, 403
        ├── KubeRayMissingError   ray.io/v1 rayservices is not served (operator/CRDs absent)
        ├── RayServiceNotFoundError  no RayService by that name, none labelled, or several
        ├── ScaleError            a scale request we refuse before sending anything
        └── ConflictError         the object changed between our read and our patch

Every message says what to do next; none carries a traceback or a response body dump.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import urllib3
from kubernetes.client import ApiClient, Configuration
from kubernetes.client.exceptions import ApiException
from kubernetes.config import incluster_config, kube_config
from kubernetes.config.config_exception import ConfigException

from serving.errors import QVQError

IN_CLUSTER_NAMESPACE_FILE = pathlib.Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class KubeError(QVQError):
    """Base of what kubectl-qvq reports as ``kubectl qvq: error: ...`` (exit code 1)."""


class ClusterAccessError(KubeError):
    pass


class KubeRayMissingError(KubeError):
    pass


class RayServiceNotFoundError(KubeError):
    pass


class ScaleError(KubeError):
    pass


class ConflictError(KubeError):
    pass


@dataclass(frozen=True)
class Cluster:
    """An API client bound to one cluster, and the namespace commands default to."""

    api: ApiClient
    namespace: str
    source: str  # "kubeconfig <path> (context <name>)" or "in-cluster service account"

    @property
    def host(self) -> str:
        return self.api.configuration.host


def connect(kubeconfig: str | None = None, context: str | None = None,
            namespace: str | None = None) -> Cluster:
    """Load kubeconfig (``--kubeconfig``, else ``$KUBECONFIG``, else ``~/.kube/config``) like
    kubectl does, or the pod's service account when there is none and we run in a cluster."""
    configuration = Configuration()
    paths = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
    found = [p for p in paths.split(os.pathsep)
             if p and pathlib.Path(p).expanduser().is_file()]
    if kubeconfig and not found:
        raise ClusterAccessError(f"no cluster access: kubeconfig {kubeconfig} does not exist")
    if not found:
        if not os.environ.get(incluster_config.SERVICE_HOST_ENV_NAME):
            raise ClusterAccessError(
                "no cluster access: no kubeconfig found ($KUBECONFIG or ~/.kube/config) and not "
                "running inside a cluster; pass --kubeconfig or set KUBECONFIG")
        try:
            incluster_config.load_incluster_config(client_configuration=configuration)
        except ConfigException as exc:
            raise ClusterAccessError(f"no cluster access: in-cluster config: {exc}") from None
        if namespace is None and IN_CLUSTER_NAMESPACE_FILE.is_file():
            namespace = IN_CLUSTER_NAMESPACE_FILE.read_text().strip()
        return Cluster(ApiClient(configuration), namespace or "default",
                       "in-cluster service account")
    config_file = os.pathsep.join(found)
    try:
        kube_config.load_kube_config(config_file=config_file, context=context,
                                     client_configuration=configuration, persist_config=False)
        contexts, current = kube_config.list_kube_config_contexts(config_file)
    except ConfigException as exc:
        raise ClusterAccessError(f"no cluster access: kubeconfig {config_file}: {exc}") from None
    chosen = next((c for c in contexts if c["name"] == (context or current["name"])), current)
    if namespace is None:
        namespace = (chosen.get("context") or {}).get("namespace")
    return Cluster(ApiClient(configuration), namespace or "default",
                   f"kubeconfig {config_file} (context {chosen['name']})")


def _status_message(exc: ApiException) -> str:
    """The ``message`` of a Kubernetes Status body, else the HTTP reason."""
    import json

    try:
        body = json.loads(exc.body or "")
    except (TypeError, ValueError):
        body = None
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return str(exc.reason or "").strip() or f"HTTP {exc.status}"


@contextlib.contextmanager
def api_errors(cluster: Cluster, action: str) -> Iterator[None]:
    """Turn API failures that escape the block into :class:`KubeError` messages.

    Transport and auth failures become :class:`ClusterAccessError`. Statuses whose meaning
    depends on the call (404, 409, 422) are for the block to catch; any that escape it are
    reported with the API server's own message.
    """
    try:
        yield
    except urllib3.exceptions.HTTPError as exc:
        reason = getattr(exc, "reason", None) or exc
        refused = isinstance(reason, ConnectionRefusedError) or "refused" in str(reason).lower()
        detail = "connection refused" if refused else str(reason)
        raise ClusterAccessError(
            f"no cluster access: cannot reach the Kubernetes API server at {cluster.host} "
            f"({detail}); check the kubeconfig context ({cluster.source})") from None
    except ApiException as exc:
        if exc.status == 0:  # TLS failures come back as status 0
            raise ClusterAccessError(f"no cluster access: {cluster.host}: "
                                     f"{str(exc.reason).splitlines()[0]}") from None
        if exc.status == 401:
            raise ClusterAccessError(
                f"no cluster access: the API server at {cluster.host} rejected our credentials "
                f"(401 Unauthorized) while trying to {action}; log in again or fix the user of "
                f"{cluster.source}") from None
        if exc.status == 403:
            raise ClusterAccessError(
                f"no cluster access: forbidden (403) to {action}: {_status_message(exc)}"
            ) from None
        raise KubeError(f"cannot {action}: the API server answered {exc.status}: "
                        f"{_status_message(exc)}") from None


class ServiceProxyTransport(httpx.BaseTransport):
    """An httpx transport that sends requests through the kube API client's connection pool.

    URLs are API-server URLs (the service proxy path); TLS, client certificates, proxies and
    the bearer token come from the kubeconfig exactly as for every other call, so the batch
    client (:class:`serving.batch.client.BatchClient`) works unchanged over the proxy.
    """

    def __init__(self, cluster: Cluster, timeout_s: float = 300.0):
        self._cluster = cluster
        self._timeout = urllib3.Timeout(connect=10.0, read=timeout_s)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        api = self._cluster.api
        skip = {"host", "content-length", "authorization", "connection", "accept-encoding",
                "user-agent"}  # the kube client's own User-Agent and token replace them
        headers = {k: v for k, v in request.headers.items() if k.lower() not in skip}
        headers.update(api.default_headers)
        api.update_params_for_auth(headers, [], ["BearerToken"], request.url.path,
                                   request.method, None)
        try:
            resp = api.rest_client.pool_manager.request(
                request.method, str(request.url), body=request.read() or None, headers=headers,
                timeout=self._timeout, redirect=False, preload_content=True)
        except urllib3.exceptions.HTTPError as exc:
            raise httpx.ConnectError(
                f"cannot reach the Kubernetes API server at {self._cluster.host}: "
                f"{getattr(exc, 'reason', None) or exc}", request=request) from None
        # urllib3 already decoded the body: drop the headers that describe the wire form.
        wire = {"content-encoding", "content-length", "transfer-encoding", "connection"}
        return httpx.Response(resp.status, content=resp.data, request=request,
                              headers=[(k, v) for k, v in resp.headers.items()
                                       if k.lower() not in wire])
