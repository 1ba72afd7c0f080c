# syntax=docker/dockerfile:1
# The serving image of qvq-serving: every KubeRay pod of the RayService (head, CPU workers,
# GPU workers) runs it, so it is a Ray image with the pinned Ray, CUDA vLLM and our package.
# The model weights are not in it: a GPU pod's init container runs
#   qvq model download --source s3://BUCKET/PREFIX --dest /models/qvq-72b
# with this same image.
#
# Build and push (from the repository root; needs a Docker engine with network):
#   docker build -t ghcr.io/qvq-serving/qvq-serving:0.1.0 .
#   docker push ghcr.io/qvq-serving/qvq-serving:0.1.0
# Versions must agree with pyproject.toml (the Ray pin, the gpu extra's vLLM pin,
# requires-python 3.11) and with the Helm chart's image and rayVersion.

ARG RAY_VERSION=2.60.0
FROM rayproject/ray:${RAY_VERSION}-py311-cu128

# An ARG before FROM is out of scope after it: declare it again for the RUN steps.
ARG RAY_VERSION
ARG VERSION=0.1.0
ARG REVISION=unknown

LABEL org.opencontainers.image.title="qvq-serving" \
      org.opencontainers.image.description="Ray Serve + vLLM serving of QVQ-72B-Preview (OpenAI-compatible API)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://github.com/qvq-serving/qvq-serving" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/rayproject/ray:${RAY_VERSION}-py311-cu128"

# PYTHONUNBUFFERED: logs reach `kubectl logs` as they happen.
# RAY_SERVE_ENABLE_HA_PROXY: Serve's HAProxy ingress (bundled with ray[serve]) on every node,
# matching ServerConfig.ingress's default "haproxy"; `qvq serve` sets it for a local Ray only,
# so on a cluster the nodes must carry it. Set it to 0 in the pod env for the Python proxy.
# HF_HUB_OFFLINE: weights come from S3 through `qvq model download`, never from a model hub.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RAY_SERVE_ENABLE_HA_PROXY=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    VLLM_NO_USAGE_STATS=1 \
    HF_HUB_OFFLINE=1

# The base image's non-root `ray` user (uid 1000, group users/100) owns its Python; numeric so
# that a pod with runAsNonRoot can verify it.
USER 1000
# Made by the user, not by WORKDIR (which may create it owned by root).
RUN mkdir -p /home/ray/qvq-serving
WORKDIR /home/ray/qvq-serving

# Layers from the least to the most often changed. 1) CUDA vLLM (the big one), with Ray pinned
# in the same resolve so pip cannot move the image's Ray.
RUN pip install --no-cache-dir \
        "vllm==0.32.0" \
        "ray[serve]==${RAY_VERSION}"

# 2) Our dependencies, from pyproject.toml alone: a stub package lets pip resolve `.[gpu]`
# without the source, so editing serving/ does not reinstall them.
COPY --chown=1000:100 pyproject.toml README.md ./
RUN mkdir -p serving loadtest \
    && touch serving/__init__.py loadtest/__init__.py \
    && pip install --no-cache-dir ".[gpu]" "ray[serve]==${RAY_VERSION}" \
    && pip uninstall -y qvq-serving \
    && rm -rf serving loadtest build ./*.egg-info

# 3) Our code (no dependency changes possible here) and the shipped configs.
COPY --chown=1000:100 serving/ serving/
COPY --chown=1000:100 loadtest/ loadtest/
COPY --chown=1000:100 configs/ configs/
RUN pip install --no-cache-dir --no-deps . \
    && rm -rf build ./*.egg-info \
    && python -c "import ray, serving.app; assert ray.__version__ == '${RAY_VERSION}'" \
    && qvq --help > /dev/null

# KubeRay supplies each pod's command (ray start ...); this is for `docker run IMAGE`.
CMD ["qvq", "--help"]
