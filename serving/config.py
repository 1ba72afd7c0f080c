"""The one typed configuration of a qvq-serving deployment.

Everything the app does is decided by :class:`ServingConfig`: which model, how vLLM runs it,
how images are limited and fetched, how each Ray Serve deployment scales, and who may call.
Every model rejects unknown fields, so a typo in YAML fails at load time with the field's path
instead of surfacing when replicas start.

Sources, later wins: the YAML file, then environment variables ``QVQ__SECTION__FIELD=value``
(values parsed as YAML scalars, e.g. ``QVQ__MODEL__MAX_MODEL_LEN=4096``).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import pathlib
from collections.abc import Mapping
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from serving.errors import ConfigError
from serving.roles import ROLES

ENV_PREFIX = "QVQ__"

QVQ_SYSTEM_PROMPT = (
    "You are a helpful and harmless assistant. You are Qwen developed by Alibaba. "
    "You should think step-by-step."
)


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(StrictModel):
    """The model and the vLLM engine options we rely on."""

    path: str = Field(description="Local directory (or hub id where a hub is reachable) of the "
                                  "Qwen2-VL-architecture checkpoint.")
    served_name: str = Field(default="qvq-72b-preview",
                             description="Model id clients send in `model` and see in /v1/models.")
    aliases: list[str] = Field(default_factory=list,
                               description="Other model ids accepted as the same model.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="bfloat16", description="Weight and activation dtype passed to vLLM.")
    tensor_parallel_size: int = Field(default=1, ge=1, le=16,
                                      description="GPUs per generator replica (vLLM tensor "
                                                  "parallel); also the placement-group size.")
    distributed_executor_backend: str = Field(
        default="ray", min_length=1,
        description="vLLM's executor when tensor_parallel_size > 1: 'ray' runs the TP workers "
                    "as Ray actors in the replica's placement group; 'mp' as subprocesses of "
                    "the replica; or the qualified name of an executor class.")
    max_model_len: int = Field(default=32768, ge=256,
                               description="Context window: prompt (text + image tokens) plus "
                                           "generated tokens.")
    max_num_seqs: int = Field(default=64, ge=1, description="vLLM: sequences batched at once.")
    max_num_batched_tokens: int | None = Field(
        default=None, ge=256, description="vLLM: tokens per scheduler step (None = vLLM default).")
    gpu_memory_utilization: float = Field(default=0.92, gt=0.0, le=1.0,
                                          description="vLLM: fraction of GPU memory to use.")
    enforce_eager: bool = Field(default=False,
                                description="vLLM: disable CUDA graphs / torch.compile.")
    enable_prefix_caching: bool = Field(default=True,
                                        description="vLLM: reuse KV cache of shared prefixes.")
    cpu_kv_cache_gib: int = Field(default=1, ge=1,
                                  description="KV cache size on the CPU backend "
                                              "(VLLM_CPU_KVCACHE_SPACE); ignored on GPUs.")
    default_max_tokens: int = Field(default=8192, ge=1,
                                    description="max_tokens when a request gives none (QVQ's "
                                                "answers run to ~8k tokens); capped by the "
                                                "room left in the context.")
    default_system_prompt: str | None = Field(
        default=QVQ_SYSTEM_PROMPT,
        description="System message added when a request has none (None adds nothing and "
                    "leaves the chat template's own default).")
    seed: int = Field(default=0, description="vLLM engine seed.")
    scheduling_policy: Literal["priority", "fcfs"] = Field(
        default="priority", description="vLLM scheduling: 'priority' lets live requests "
                                        "overtake queued batch-job requests.")

    @property
    def model_ids(self) -> list[str]:
        return [self.served_name, *self.aliases]


class DetailPixelsConfig(StrictModel):
    """The pixel ceiling of each OpenAI ``image_url.detail`` value: an image is resized to at
    most this many pixels (one visual token per 28x28 block, so the ceiling bounds what the image
    costs in context and prefill). Each lies within [image.min_pixels, image.max_pixels];
    unset takes the default named in its description."""

    low: int | None = Field(
        default=None, ge=28 * 28,
        description="Ceiling for `detail: low`; None: image.min_pixels (a small fixed budget, "
                    "256 tokens with the model card's bounds). A ceiling this tight is met "
                    "only as closely as the 28-pixel grid allows: the grid may need one more "
                    "row or column of tokens to stay at or above image.min_pixels.")
    auto: int | None = Field(
        default=None, ge=28 * 28,
        description="Ceiling for `detail: auto` and for images that send no detail; None: "
                    "image.max_pixels (every image at the deployment's full budget).")
    high: int | None = Field(
        default=None, ge=28 * 28,
        description="Ceiling for `detail: high`; None: image.max_pixels (the model card's "
                    "largest).")


class ImageConfig(StrictModel):
    """Limits and geometry of request images (qwen-vl-utils' smart_resize rules)."""

    min_pixels: int = Field(default=256 * 28 * 28, ge=28 * 28,
                            description="Lower bound of the resized pixel count.")
    max_pixels: int = Field(default=1280 * 28 * 28, ge=28 * 28,
                            description="Upper bound of the resized pixel count; each 28x28 "
                                        "block is one visual token.")
    max_images_per_request: int = Field(default=8, ge=0,
                                        description="More image parts than this -> 400.")
    max_image_bytes: int = Field(default=20 * 1024 * 1024, ge=1024,
                                 description="Encoded size limit of one image inline, fetched "
                                             "or POSTed to /v1/images -> 413 above it.")
    max_upload_bytes: int = Field(default=100 * 1024 * 1024, ge=1024,
                                  description="Size limit of an image uploaded through a "
                                              "presigned URL (large files), and of uploaded "
                                              "images read back for a request.")
    max_source_pixels: int = Field(default=64_000_000, ge=1,
                                   description="Decompression-bomb guard: width x height of the "
                                               "encoded image, checked before decoding.")
    jpeg_draft_coverage: float = Field(
        default=0.85, ge=0.5, le=1.0,
        description="A JPEG may be decoded at 1/2, 1/4 or 1/8 scale when that still covers "
                    "this fraction of the target size per side (the last step scales up). "
                    "0.85 kept >= 44 dB PSNR vs full decode at about half the time; 1.0 never "
                    "upscales.")
    allowed_formats: list[Literal["JPEG", "PNG", "WEBP", "GIF", "BMP"]] = Field(
        default=["JPEG", "PNG", "WEBP", "GIF", "BMP"],
        description="Pillow decoders that may run on request bytes.")
    detail_max_pixels: DetailPixelsConfig = Field(
        default_factory=DetailPixelsConfig,
        description="Pixel ceiling per `image_url.detail` value (low, auto, high); a request's "
                    "own image_url.min_pixels / max_pixels win over it.")

    @model_validator(mode="after")
    def _bounds(self) -> ImageConfig:
        if self.min_pixels > self.max_pixels:
            raise ValueError("image.min_pixels must not exceed image.max_pixels")
        # vLLM resizes again to [min_pixels, max_pixels] (engine args): a ceiling outside
        # them would be undone by the engine, behind the prompt's token count.
        for detail, ceiling in self.detail_max_pixels.model_dump().items():
            if ceiling is not None and not self.min_pixels <= ceiling <= self.max_pixels:
                raise ValueError(f"image.detail_max_pixels.{detail} is {ceiling}; it must lie "
                                 f"within image.min_pixels..image.max_pixels "
                                 f"({self.min_pixels}..{self.max_pixels})")
        return self

    def detail_ceiling(self, detail: Literal["auto", "low", "high"]) -> int:
        """The pixel ceiling of one ``image_url.detail`` value, defaults resolved."""
        ceiling = getattr(self.detail_max_pixels, detail)
        if ceiling is not None:
            return ceiling
        return self.min_pixels if detail == "low" else self.max_pixels


class FetchConfig(StrictModel):
    """How http(s) image URLs are fetched (SSRF guard included)."""

    enabled: bool = Field(default=True, description="Allow http(s) image URLs at all.")
    connect_timeout_s: float = Field(default=5.0, gt=0, description="TCP/TLS connect timeout.")
    read_timeout_s: float = Field(default=10.0, gt=0, description="Timeout between reads.")
    total_timeout_s: float = Field(default=30.0, gt=0, description="Deadline for the whole fetch.")
    max_redirects: int = Field(default=3, ge=0, description="Redirects followed, each re-checked.")
    allowed_cidrs: list[str] = Field(
        default_factory=list,
        description="Networks exempt from the SSRF block (e.g. 127.0.0.1/32 for a test server). "
                    "Empty: only public addresses are fetched.")
    user_agent: str = Field(default="qvq-serving/0.1", description="User-Agent header sent.")

    @model_validator(mode="after")
    def _cidrs(self) -> FetchConfig:
        for cidr in self.allowed_cidrs:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as exc:
                raise ValueError(f"fetch.allowed_cidrs: {cidr!r} is not a network: {exc}") from exc
        return self


class AutoscalingConfig(StrictModel):
    """Ray Serve autoscaling of one deployment."""

    min_replicas: int = Field(default=1, ge=0, description="Replicas kept when idle.")
    max_replicas: int = Field(default=1, ge=1, description="Upper bound under load.")
    target_ongoing_requests: float = Field(
        default=2.0, gt=0,
        description="Requests in flight per replica the autoscaler aims at. For CPU-bound "
                    "replicas (the preprocessor) use about the replica's CPUs: more in flight "
                    "only queues, and a higher target never triggers a scale-up "
                    "(loadtest/README.md, 'Autoscaling').")
    upscale_delay_s: float = Field(default=30.0, ge=0, description="Load must persist this long "
                                                                    "before adding replicas.")
    downscale_delay_s: float = Field(default=600.0, ge=0, description="Idle this long before "
                                                                       "removing replicas.")
    look_back_period_s: float = Field(
        default=30.0, gt=10.0,
        description="Window over which in-flight requests are averaged before a decision; "
                    "more than Serve's 10 s metrics interval. Shorter follows bursts sooner "
                    "and flaps more (measurements: loadtest/README.md, 'Autoscaling').")

    @model_validator(mode="after")
    def _order(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        return self

    def to_serve(self) -> dict[str, Any]:
        return {
            "min_replicas": self.min_replicas,
            "initial_replicas": max(self.min_replicas, 1),
            "max_replicas": self.max_replicas,
            "target_ongoing_requests": self.target_ongoing_requests,
            "upscale_delay_s": self.upscale_delay_s,
            "downscale_delay_s": self.downscale_delay_s,
            "look_back_period_s": self.look_back_period_s,
        }


class DeploymentConfig(StrictModel):
    """Resources and scaling of one Ray Serve deployment."""

    num_cpus: float = Field(default=1.0, ge=0, description="Ray CPUs per replica (fractional ok).")
    memory_gib: float | None = Field(default=None, gt=0, description="Ray memory per replica.")
    max_ongoing_requests: int = Field(default=64, ge=1,
                                      description="Concurrent requests one replica accepts.")
    max_queued_requests: int = Field(
        default=-1, ge=-1, description="Requests a caller may queue for this deployment beyond "
        "what its replicas are running; more are refused with 503 + Retry-After (-1: no bound).")
    access_log: bool | None = Field(
        default=None, description="Serve's per-request access log line on this hop (each "
                                  "costs CPU on every request). None: on for the router, off "
                                  "for the inner hops.")
    autoscaling: AutoscalingConfig = Field(default_factory=AutoscalingConfig,
                                           description="Replica bounds and autoscaling policy.")
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="Ray custom resources per replica. On Kubernetes the chart has the CPU "
                    "worker group advertise `qvq-cpu-worker`, and the CPU deployments ask for a "
                    "sliver of it, so they never take the CPUs of GPU pods.")

    def actor_options(self) -> dict[str, Any]:
        """Ray actor options of one replica (CPUs, memory, custom resources)."""
        options: dict[str, Any] = {"num_cpus": self.num_cpus}
        if self.memory_gib:
            options["memory"] = int(self.memory_gib * 2**30)
        if self.resources:
            options["resources"] = dict(self.resources)
        return options

    def serve_options(self, *, log_encoding: str, access_log_default: bool) -> dict[str, Any]:
        """``serve.deployment`` options every role shares: actor resources, the ongoing and
        queued bounds, autoscaling, logging (``access_log`` unset takes the role's default)."""
        access_log = access_log_default if self.access_log is None else self.access_log
        return {"ray_actor_options": self.actor_options(),
                "max_ongoing_requests": self.max_ongoing_requests,
                "max_queued_requests": self.max_queued_requests,
                "autoscaling_config": self.autoscaling.to_serve(),
                "logging_config": {"enable_access_log": access_log, "encoding": log_encoding}}


class GeneratorDeploymentConfig(DeploymentConfig):
    """The GPU (or local CPU) generator deployment."""

    num_gpus_per_worker: float = Field(default=1.0, ge=0,
                                       description="GPUs of each tensor-parallel worker bundle "
                                                   "(0 on the CPU backend): the amount of "
                                                   "`worker_resource` each worker holds.")
    worker_resource: str = Field(
        default="GPU", min_length=1,
        description="The Ray resource a tensor-parallel worker's bundle (and a TP=1 replica) "
                    "holds `num_gpus_per_worker` of, and vLLM's Ray executor places its "
                    "workers by: GPU in production; a custom resource where the workers "
                    "compute on CPU (the cluster tests).")
    accelerator_type: str | None = Field(default=None,
                                         description="Ray accelerator type, e.g. H100.")
    stream_interval_ms: float = Field(
        default=50.0, ge=0, le=1000,
        description="A streamed answer crosses to the router at most once per this interval, "
                    "with what the engine produced since merged into one message (the first "
                    "token goes at once). Each message costs CPU on both sides, which the "
                    "generator's node would otherwise spend on decoding. 0: one message per "
                    "engine step.")


# Per-role defaults that differ from DeploymentConfig's (serving.roles.ROLES); a partial
# section in YAML keeps them.
_ROLE_DEFAULTS: dict[str, dict[str, Any]] = {role.section: dict(role.defaults)
                                             for role in ROLES}


class DeploymentsConfig(StrictModel):
    router: DeploymentConfig = Field(
        default_factory=lambda: DeploymentConfig(**_ROLE_DEFAULTS["router"]),
        description="HTTP ingress/router replicas (default 0.5 CPU, 512 ongoing requests).")
    preprocessor: DeploymentConfig = Field(
        default_factory=lambda: DeploymentConfig(**_ROLE_DEFAULTS["preprocessor"]),
        description="CPU image preprocessing replicas (default 1 CPU, 16 ongoing requests).")
    generator: GeneratorDeploymentConfig = Field(
        default_factory=lambda: GeneratorDeploymentConfig(**_ROLE_DEFAULTS["generator"]),
        description="vLLM generator replicas, one engine each (default 256 ongoing requests).")

    @model_validator(mode="before")
    @classmethod
    def _keep_role_defaults(cls, data: Any) -> Any:
        """`router: {num_cpus: 1}` changes the CPUs, not the router's other defaults."""
        if isinstance(data, Mapping):
            data = dict(data)
            for role, defaults in _ROLE_DEFAULTS.items():
                if isinstance(data.get(role), Mapping):
                    data[role] = {**defaults, **data[role]}
        return data


class ApiKeyHash(StrictModel):
    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$",
                    description="Key id carried through the pipeline (quotas, ownership, logs).")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$",
                        description="Hex SHA-256 of the key (`qvq auth hash-key`).")


class AuthConfig(StrictModel):
    """API keys: stored as hashes; raw keys only come from the environment or a secret file."""

    api_keys: list[ApiKeyHash] = Field(default_factory=list,
                                       description="Accepted keys as (id, sha256) pairs.")
    api_keys_env: str | None = Field(default="QVQ_API_KEYS",
                                     description="Env var with raw keys, comma separated, each "
                                                 "`key` or `id:key`.")
    api_keys_file: str | None = Field(default=None,
                                      description="Secret file with raw keys, one per line, "
                                                  "`key` or `id:key`; # comments allowed.")

    def resolve_keys(self, environ: Mapping[str, str] | None = None) -> list[ApiKeyHash]:
        """All accepted keys: configured hashes plus hashed raw keys from env and file."""
        environ = os.environ if environ is None else environ
        entries: list[str] = []
        if self.api_keys_env and environ.get(self.api_keys_env):
            entries += [e.strip() for e in environ[self.api_keys_env].split(",")]
        if self.api_keys_file:
            try:
                text = pathlib.Path(self.api_keys_file).read_text()
            except OSError as exc:
                raise ConfigError(f"auth.api_keys_file: cannot read {self.api_keys_file}: "
                                  f"{exc.strerror}") from exc
            entries += [ln.strip() for ln in text.splitlines()
                        if ln.strip() and not ln.lstrip().startswith("#")]
        keys = list(self.api_keys)
        for entry in entries:
            if not entry:
                continue
            key_id, sep, raw = entry.partition(":")
            if not sep:
                raw = entry
            digest = hash_api_key(raw)
            keys.append(ApiKeyHash(id=key_id if sep else f"key-{digest[:8]}", sha256=digest))
        return keys


class LocalStoreConfig(StrictModel):
    root: str = Field(default=".qvq/store", description="Directory holding the objects.")


class S3Config(StrictModel):
    """An S3-compatible endpoint (AWS S3, MinIO, SeaweedFS, Ceph RGW, ...)."""

    endpoint_url: str | None = Field(default=None,
                                     description="Endpoint URL (None: AWS S3 for the region).")
    region: str = Field(default="us-east-1", description="Signing region.")
    bucket: str = Field(min_length=3, max_length=63, description="Bucket for images, "
                                                                  "files and batch state.")
    path_style: bool = Field(default=True, description="Path-style addressing "
                                                       "(endpoint/bucket/key), which "
                                                       "self-hosted servers need.")
    credentials_file: str | None = Field(
        default=None, description="AWS shared-credentials file (a mounted secret); None uses "
                                  "boto3's standard chain (env, profile, pod identity).")
    profile: str = Field(default="default", description="Section of credentials_file to use.")
    multipart_threshold_mib: int = Field(default=16, ge=5,
                                         description="Objects above this upload in parts.")
    multipart_chunk_mib: int = Field(default=16, ge=5, description="Multipart part size.")
    connect_timeout_s: float = Field(default=5.0, gt=0, description="Connect timeout.")
    read_timeout_s: float = Field(default=30.0, gt=0, description="Read timeout.")
    max_attempts: int = Field(default=3, ge=1, description="Attempts per call (with backoff).")


class StorageConfig(StrictModel):
    """Where images (and later files and batch state) are stored, content-addressed."""

    backend: Literal["local", "s3"] = Field(default="local",
                                            description="Object-store backend.")
    local: LocalStoreConfig = Field(default_factory=LocalStoreConfig,
                                    description="Local-directory backend settings.")
    s3: S3Config | None = Field(default=None, description="S3 backend settings.")
    store_request_images: bool = Field(
        default=True, description="Keep every request image (content-addressed, stored once) "
                                  "so batch jobs and audits can replay requests.")
    require_request_image_store: bool = Field(
        default=False, description="Fail a request (503) when its images cannot be stored; "
                                   "false: serve it anyway and log the store failure.")
    allowed_source_buckets: list[str] = Field(
        default_factory=list, description="Buckets that s3://bucket/key image URLs may read "
                                          "(same endpoint and credentials as storage.s3).")
    presign_expiry_s: int = Field(default=900, ge=60, le=7 * 86400,
                                  description="Lifetime of presigned upload URLs.")

    @model_validator(mode="after")
    def _backend(self) -> StorageConfig:
        if self.backend == "s3" and self.s3 is None:
            raise ValueError("storage.backend is s3 but storage.s3 is not set")
        if self.allowed_source_buckets and self.s3 is None:
            raise ValueError("storage.allowed_source_buckets needs storage.s3 (endpoint and "
                             "credentials to read them)")
        return self


class CacheConfig(StrictModel):
    """Preprocessed-image cache: key = image SHA-256 + resize bounds."""

    memory_mib: int = Field(default=512, ge=0, description="In-memory LRU per preprocessor "
                                                             "replica, bounded by pixel bytes "
                                                             "(0 disables it).")
    store_tier: bool = Field(default=True, description="Also keep preprocessed pixels in the "
                                                       "object store (preprocessed/...), so "
                                                       "any replica skips the decode.")


class FilesConfig(StrictModel):
    """OpenAI-compatible Files API (batch input/output files) in the object store."""

    max_file_bytes: int = Field(default=200 * 1024 * 1024, ge=1024,
                                description="Largest file accepted by POST /v1/files -> 413.")
    purposes: list[str] = Field(default_factory=lambda: ["batch"],
                                description="Purposes clients may upload files for.")


class BatchConfig(StrictModel):
    """OpenAI-compatible batch jobs run behind live traffic."""

    max_lines: int = Field(default=50_000, ge=1, description="Requests per input file.")
    max_input_bytes: int = Field(default=200 * 1024 * 1024, ge=1024,
                                 description="Size of an input file.")
    chunk_size: int = Field(default=16, ge=1, le=1024,
                            description="Lines per checkpointed chunk (the work redone after "
                                        "a crash is at most one chunk per job).")
    max_concurrency: int = Field(default=8, ge=1,
                                 description="Batch requests in flight, all jobs together.")
    live_concurrency: int = Field(default=0, ge=0,
                                  description="Batch requests in flight while live requests "
                                              "are running (live traffic comes first; 0 "
                                              "pauses batch dispatch until live traffic has "
                                              "been quiet for live_grace_s, so a job uses idle "
                                              "capacity only).")
    live_grace_s: float = Field(default=2.0, ge=0,
                                description="After the last live request is seen, batch "
                                            "concurrency stays at live_concurrency this long.")
    poll_interval_s: float = Field(default=2.0, gt=0,
                                   description="How often the runner looks for new jobs.")
    num_cpus: float = Field(default=0.25, ge=0, description="Ray CPUs of the runner replica.")
    resources: dict[str, float] = Field(default_factory=dict,
                                        description="Ray custom resources of the runner replica "
                                                    "(see deployments.router.resources).")


class ServerConfig(StrictModel):
    host: str = Field(default="127.0.0.1", description="HTTP bind address of Serve's proxy.")
    port: int = Field(default=8000, ge=1, le=65535, description="HTTP port.")
    request_timeout_s: float = Field(default=900.0, gt=0,
                                     description="End-to-end timeout of one request.")
    max_request_body_bytes: int = Field(
        default=64 * 2**20, ge=1024, description="JSON request bodies larger than this are "
        "refused with 413 before they are parsed (images beyond it: upload them first).")
    chat_entry: Literal["generator", "router"] = Field(
        default="generator",
        description="Where /v1/chat/completions is served. generator: the generator replicas "
                    "are its HTTP ingress (a Serve application of their own at /v1/chat), so "
                    "tokens go from vLLM to the client's socket in one process (the fastest "
                    "token path; if a generator replica dies, its clients' connections drop). "
                    "router: the router replicas serve it and relay the tokens from the "
                    "generator through Serve in batches (more CPU per token; a stream whose "
                    "generator dies ends with an error event, and a request that had "
                    "produced nothing is sent to another replica).")
    max_in_flight_requests: int | None = Field(
        default=None, ge=1, description="Chat requests one replica of the chat entry (see "
        "chat_entry) works on at once; more are refused at once with 503 + Retry-After "
        "instead of queueing without bound. Must stay below that deployment's "
        "max_ongoing_requests, or requests queue in front of it before this check sees them. "
        "None: 7/8 of its max_ongoing_requests.")
    replica_failure_retries: int = Field(
        default=2, ge=0, le=5, description="A request whose preprocessor replica (or, with "
        "chat_entry router, generator replica) died before it produced anything is sent "
        "again this many times (Serve routes it to a healthy or replacement replica); a "
        "stream that already sent text gets an error event instead.")
    log_encoding: Literal["JSON", "TEXT"] = Field(
        default="JSON", description="Replica log format; JSON lines carry the request id "
                                    "(`x-request-id`) of every request through every deployment.")
    ingress: Literal["haproxy", "python"] = Field(
        default="haproxy",
        description="HTTP ingress of a local Ray: Serve's HAProxy ingress (C load balancer "
                    "straight to the ingress replicas; less CPU per request than the Python "
                    "proxy, loadtest/README.md) or Serve's Python proxy. On a cluster "
                    "(ray.address set) set RAY_SERVE_ENABLE_HA_PROXY on the nodes instead.")


class RayConfig(StrictModel):
    address: str | None = Field(default=None,
                                description="Existing cluster to join (None: start local Ray).")
    num_cpus: int | None = Field(default=None, ge=1,
                                 description="Logical CPUs of a local Ray (None: all cores).")
    object_store_memory_mib: int | None = Field(default=None, ge=75,
                                                description="Object store of a local Ray.")
    resources: dict[str, float] = Field(
        default_factory=dict, description="Custom resources of a local Ray's node (e.g. the "
                                          "generator's worker_resource for TP on CPU).")


class KeyLimits(StrictModel):
    """Limits of one API key (None: unlimited). Per minute limits refill continuously."""

    requests_per_minute: int | None = Field(default=None, ge=1,
                                            description="Chat requests per minute.")
    tokens_per_minute: int | None = Field(
        default=None, ge=1, description="Prompt + completion tokens per minute; a request "
        "reserves its estimate (prompt text/4 + image tokens + max_tokens) and is settled with "
        "its real usage.")
    images_per_minute: int | None = Field(default=None, ge=1,
                                          description="Images in chat requests per minute.")
    concurrent_requests: int | None = Field(default=None, ge=1,
                                            description="Chat requests in flight at once.")
    max_active_batches: int | None = Field(default=None, ge=1,
                                           description="Batches validating or in progress.")
    max_active_batch_bytes: int | None = Field(
        default=None, ge=1, description="Bytes of input files of the key's active batches.")

    @property
    def limited(self) -> bool:
        return any(v is not None for v in self.model_dump().values())


class LimitsConfig(StrictModel):
    """Per-key limits, shared by every router replica through one RateLimiter replica."""

    default: KeyLimits = Field(default_factory=KeyLimits,
                               description="Limits of keys without their own entry (and of "
                                           "the open API's anonymous caller).")
    per_key: dict[str, KeyLimits] = Field(default_factory=dict,
                                          description="Limits by API key id (replace default).")
    limiter_timeout_s: float = Field(
        default=0.5, gt=0, description="When the limiter does not answer in time (it is "
        "restarting) requests are let through and counted as unlimited: availability first.")

    def for_key(self, key_id: str | None) -> KeyLimits:
        return self.per_key.get(key_id, self.default) if key_id is not None else self.default

    @property
    def any_limits(self) -> bool:
        return self.default.limited or any(k.limited for k in self.per_key.values())


class LoopGuardConfig(StrictModel):
    """Circular-reasoning guard: stops (or flags) output that repeats one span back to back."""

    mode: Literal["off", "detect", "stop"] = Field(
        default="stop", description="off: no guard; detect: report the loop in the response "
                                    "and metrics, keep generating; stop: end generation there.")
    allow_request_override: bool = Field(
        default=True, description="Requests may choose their own mode (`loop_guard` field).")
    max_period: int = Field(default=256, ge=1, le=4096,
                            description="Longest repeating span, in tokens, that is looked for.")
    repeats: int = Field(default=3, ge=2, le=64,
                         description="Back-to-back copies of a span that make a loop.")
    min_repeated_tokens: int = Field(
        default=64, ge=1, description="Short spans must keep repeating this many tokens.")
    min_filler_repeated_tokens: int = Field(
        default=256, ge=1, description="Same, for spans of whitespace/punctuation tokens only "
                                       "(rules, table borders).")


class ReasoningBudgetPolicy(StrictModel):
    """Thinking budget for one API key (overrides the deployment's)."""

    default_max_reasoning_tokens: int | None = Field(
        default=None, ge=1, description="Budget when the request sets none (None: the "
                                        "deployment default).")
    max_reasoning_tokens_ceiling: int | None = Field(
        default=None, ge=1, description="Largest budget a request may ask for (None: the "
                                        "deployment ceiling).")


class ReasoningConfig(StrictModel):
    """QVQ reasoning operations: final-answer split, loop guard, thinking budget, language."""

    split_final_answer: bool = Field(
        default=False, description="Default for requests without `split_reasoning`: reasoning "
                                   "in message.reasoning_content, conclusion in content.")
    loop_guard: LoopGuardConfig = Field(default_factory=LoopGuardConfig,
                                        description="Circular-reasoning guard.")
    default_max_reasoning_tokens: int | None = Field(
        default=None, ge=1, description="Thinking budget for requests that set none (None: no "
                                        "budget).")
    max_reasoning_tokens_ceiling: int | None = Field(
        default=None, ge=1, description="Largest `max_reasoning_tokens` a request may ask for.")
    answer_budget_tokens: int = Field(
        default=512, ge=1, description="Tokens the model gets to conclude after the budget "
                                       "ran out and the final-answer cue was appended.")
    final_answer_cue: str = Field(
        default="\n\n**Final Answer**\n\n", min_length=1,
        description="Appended when the thinking budget runs out; must hold a final-answer "
                    "marker so the split recognises it.")
    per_key: dict[str, ReasoningBudgetPolicy] = Field(
        default_factory=dict, description="Thinking budget per API key id.")
    structured_after_reasoning: bool = Field(
        default=True, description="With a JSON response_format in split mode: reason freely "
                                  "first, then decode the answer under the schema after the "
                                  "final-answer marker. Off (or without split mode): the "
                                  "schema constrains the output from its first token.")
    structured_answer_tokens: int = Field(
        default=1024, ge=1, description="Tokens kept back from max_tokens for the "
                                        "schema-constrained answer after free reasoning.")
    include_language_stats: bool = Field(
        default=False, description="Default for requests without `include_language_stats`: "
                                   "add the script-mix counts to each choice.")

    @model_validator(mode="after")
    def _budgets(self) -> ReasoningConfig:
        from serving.generate.reasoning.final_answer import has_marker

        if not has_marker(self.final_answer_cue):
            raise ValueError("final_answer_cue must contain a final-answer marker on its own "
                             "line, e.g. '\\n\\n**Final Answer**\\n\\n'")
        pairs = [("", self.default_max_reasoning_tokens, self.max_reasoning_tokens_ceiling)]
        for key_id, policy in self.per_key.items():
            pairs.append((f"per_key.{key_id}.",
                          policy.default_max_reasoning_tokens
                          or self.default_max_reasoning_tokens,
                          policy.max_reasoning_tokens_ceiling
                          or self.max_reasoning_tokens_ceiling))
        for where, default, ceiling in pairs:
            if default is not None and ceiling is not None and default > ceiling:
                raise ValueError(f"{where}default_max_reasoning_tokens ({default}) is above "
                                 f"the ceiling ({ceiling})")
        return self


class StructuredOutputConfig(StrictModel):
    """Limits on ``response_format`` schemas, checked at the edge (400 before any engine work),
    and how the constrained answer is decoded."""

    max_schema_bytes: int = Field(default=32 * 1024, ge=64,
                                  description="Largest JSON schema (serialized) accepted.")
    max_schema_depth: int = Field(default=16, ge=2,
                                  description="Deepest nesting of objects/arrays in a schema.")
    backend: Literal["guidance", "xgrammar"] = Field(
        default="guidance", description="vLLM's grammar backend: guidance (llguidance) covers "
                                        "the most of JSON Schema; xgrammar refuses more "
                                        "schemas (a 400 before any answer).")
    compact_json: bool = Field(
        default=True, description="Decode JSON without optional whitespace: fewer tokens, and "
                                  "no model can pad an answer with whitespace until max_tokens "
                                  "(an engine argument: vLLM's grammar backends read it "
                                  "engine-wide).")


class RequestsConfig(StrictModel):
    """What a single chat request may ask for beyond one plain answer."""

    max_choices: int = Field(default=8, ge=1,
                             description="Largest `n` (choices per request).")
    priority_key_ids: list[str] = Field(
        default_factory=list, description="API key ids allowed to set `priority` (others get "
                                          "a 400 naming it).")
    structured_output: StructuredOutputConfig = Field(
        default_factory=StructuredOutputConfig, description="response_format limits.")


class ServingConfig(StrictModel):
    """Root configuration: one model, its deployments, limits and callers."""

    app_name: str = Field(default="qvq", description="Ray Serve application name.")
    model: ModelConfig = Field(description="The model and vLLM engine options.")
    image: ImageConfig = Field(default_factory=ImageConfig, description="Image limits/geometry.")
    fetch: FetchConfig = Field(default_factory=FetchConfig, description="http(s) image fetching.")
    deployments: DeploymentsConfig = Field(default_factory=DeploymentsConfig,
                                           description="Per-deployment resources and scaling.")
    auth: AuthConfig = Field(default_factory=AuthConfig, description="Who may call.")
    server: ServerConfig = Field(default_factory=ServerConfig, description="HTTP server.")
    ray: RayConfig = Field(default_factory=RayConfig, description="Local Ray or cluster address.")
    storage: StorageConfig = Field(default_factory=StorageConfig,
                                   description="Object storage (images, files, batch state).")
    cache: CacheConfig = Field(default_factory=CacheConfig,
                               description="Preprocessed-image cache.")
    files: FilesConfig = Field(default_factory=FilesConfig,
                               description="Files API (batch input and output files).")
    batch: BatchConfig = Field(default_factory=BatchConfig, description="Batch jobs.")
    reasoning: ReasoningConfig = Field(default_factory=ReasoningConfig,
                                       description="QVQ reasoning operations.")
    limits: LimitsConfig = Field(default_factory=LimitsConfig,
                                 description="Per-key rate limits and batch quotas.")
    requests: RequestsConfig = Field(default_factory=RequestsConfig,
                                     description="Choices, priority and structured output.")
    data_dir: str = Field(default=".qvq", description="Caches and local state (vLLM, torch).")

    @property
    def chat_entry_deployment(self) -> DeploymentConfig:
        """The deployment whose replicas serve /v1/chat/completions (server.chat_entry)."""
        return getattr(self.deployments, self.server.chat_entry)

    @property
    def max_in_flight_chats(self) -> int:
        """Chat requests one replica of the chat entry admits at once."""
        explicit = self.server.max_in_flight_requests
        return explicit if explicit is not None \
            else max(1, self.chat_entry_deployment.max_ongoing_requests * 7 // 8)

    @model_validator(mode="after")
    def _admission_before_ingress_queue(self) -> ServingConfig:
        entry = self.server.chat_entry
        ongoing = self.chat_entry_deployment.max_ongoing_requests
        if self.max_in_flight_chats >= ongoing:
            raise ValueError(
                f"server.max_in_flight_requests ({self.max_in_flight_chats}) must be below "
                f"deployments.{entry}.max_ongoing_requests ({ongoing}), the chat entry "
                f"(server.chat_entry: {entry}): it must be free to answer 503 while it is full")
        return self

    @model_validator(mode="after")
    def _fits(self) -> ServingConfig:
        one_image_tokens = self.image.min_pixels // (28 * 28)
        if one_image_tokens >= self.model.max_model_len:
            raise ValueError("one image at image.min_pixels does not fit model.max_model_len")
        return self


def hash_api_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX):].split("__") if p]
        if not path:
            continue
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{name}: {part} is set both as a value and as a section")
        node[path[-1]] = yaml.safe_load(raw) if raw != "" else None
    return tree


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def _format_validation(exc: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def config_from_dict(data: Mapping[str, Any], *, source: str = "dict",
                     environ: Mapping[str, str] | None = None) -> ServingConfig:
    """Validate a mapping (plus env overrides) into a config; ConfigError lists each problem."""
    merged = _merge(dict(data), _env_overrides(os.environ if environ is None else environ))
    try:
        return ServingConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_format_validation(exc, source)) from None


def load_config(path: str | os.PathLike[str], *,
                environ: Mapping[str, str] | None = None) -> ServingConfig:
    p = pathlib.Path(path)
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config {p}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {p} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config {p} must be a mapping at the top level")
    return config_from_dict(data, source=str(p), environ=environ)
