"""Test-only: vLLM's own Ray executor on CPU workers, so tensor parallelism through Ray runs on
a machine without GPUs. Never imported by ``serving``; a test config names
:class:`CpuRayExecutor` as ``model.distributed_executor_backend``.

vLLM 0.32's CPU platform declares no Ray device resource (``ray_device_key`` is empty), so its
Ray executor refuses CPU ("current platform cpu does not support ray"). Two changes make it run:

1. ``CpuPlatform.ray_device_key`` names a custom Ray resource, ``$QVQ_TEST_RAY_DEVICE_KEY``:
   the one our generator's worker bundles hold (``deployments.generator.worker_resource``),
   as the CUDA platform's ``GPU`` is in production. Ray refuses ``CPU`` as a custom key.
2. A TP worker asks Ray for its accelerator ids under that key, which Ray only knows for real
   accelerators; on CPU each worker gets its rank as its "device id".

They must hold in every process that runs vLLM's executor code: the engine core (a
multiprocessing child of the replica, not a Ray worker) and each TP worker actor. Both import
this module before they run any of it: the engine core unpickles its config, which names
:class:`CpuRayExecutor` by reference; every TP worker is a :class:`CpuRayWorkerProc`, also
pickled by reference. (A ``worker_process_setup_hook`` would not reach the engine core.)

What stays production code: the generator's placement group (bundle 0 for the replica, one
``{worker_resource: n, CPU: 1}`` bundle per TP worker, STRICT_PACK), vLLM's Ray executor
finding that placement group and placing its workers into the device bundles, the engine
core joining the replica's cluster (``share_ray_cluster``), health checks and replacement.
What this changes: which resource name vLLM looks for, and the device ids on CPU.
"""

from __future__ import annotations

import os

DEVICE_KEY = os.environ.get("QVQ_TEST_RAY_DEVICE_KEY", "qvq_tp_slot")


def _apply() -> None:
    import ray
    from vllm.platforms.cpu import CpuPlatform
    from vllm.v1.executor import ray_executor_v2

    CpuPlatform.ray_device_key = DEVICE_KEY

    def node_and_device_ids(self):
        return ray.get_runtime_context().get_node_id(), [int(self._init_kwargs["rank"])]

    ray_executor_v2.RayWorkerProc.get_node_and_physical_gpu_ids = node_and_device_ids


_apply()

from vllm.v1.executor.ray_executor_v2 import RayExecutorV2, RayWorkerProc  # noqa: E402


class CpuRayWorkerProc(RayWorkerProc):
    """A TP worker actor: defined here, so its process imports this module first."""


class CpuRayExecutor(RayExecutorV2):
    """vLLM's Ray executor, starting :class:`CpuRayWorkerProc` workers."""

    uses_ray = True

    def _init_executor(self) -> None:
        from vllm.v1.executor import ray_executor_v2

        ray_executor_v2.RayWorkerProc = CpuRayWorkerProc  # looked up by _init_executor
        super()._init_executor()
