"""What a training run asks of the Ray cluster (the driver, env runners, remote learners, GPUs; where its learners
train) and whether the cluster can hold it: checked before anything starts, as Ray would leave it waiting forever."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

from entropilot.errors import EntropilotError
from entropilot.platform.config import ExperimentConfig

logger = logging.getLogger(__name__)

GPU_MODES = ("auto", "on", "off")


class DoesNotFit(EntropilotError, ValueError):
    """A run needs more of a resource than the cluster has."""


def run_bundles(cfg: ExperimentConfig) -> list[dict[str, float]]:
    """The Ray resource bundles one training run (a sweep's trial) takes, as RLlib's
    `Algorithm.default_resource_request` lays them out for our build: the driver (it is also the learner unless
    there are remote learners), one bundle per env runner, one per remote learner. GPUs are counted as the run's own
    build counts them (`count_available_gpus`)."""
    r = cfg.resources
    learners = resolve_learner_resources(r.gpu, r.num_learners)
    gpus = learners["num_gpus_per_learner"]
    main = {"CPU": 1.0}
    if learners["num_learners"] == 0 and gpus:
        main["GPU"] = float(gpus)
    bundles = [main] + [{"CPU": float(r.num_cpus_per_env_runner)} for _ in range(r.num_env_runners)]
    for _ in range(learners["num_learners"]):
        bundles.append({"CPU": 0.0, "GPU": float(gpus)} if gpus else {"CPU": 1.0})
    return bundles


def runs_that_fit(bundles: Sequence[Mapping[str, float]], cluster: Mapping[str, float]) -> int:
    """How many runs of `bundles` the cluster's resources hold at once; DoesNotFit if not even one, since such a
    run would wait for its resources forever."""
    need: dict[str, float] = {}
    for bundle in bundles:
        for resource, amount in bundle.items():
            need[resource] = need.get(resource, 0.0) + amount
    fit = math.inf
    for resource, amount in need.items():
        if amount <= 0:
            continue
        have = float(cluster.get(resource, 0.0))
        if amount > have + 1e-9:
            layout = " + ".join(bundle_text(b) for b in bundles)
            raise DoesNotFit(
                f"one training run needs {amount:g} {resource} ({layout}) but the Ray cluster has {have:g}: lower "
                "resources.num_env_runners or resources.num_cpus_per_env_runner (fractions work, e.g. 0.5), "
                "or use a bigger cluster"
            )
        fit = min(fit, math.floor(have / amount + 1e-9))
    return int(fit) if fit != math.inf else 1


def bundle_text(bundle: Mapping[str, float]) -> str:
    return "/".join(f"{amount:g} {resource}" for resource, amount in bundle.items() if amount)


class GpuUnavailable(EntropilotError, RuntimeError):
    """resources.gpu is "on" but there is no GPU for the learner."""


def resolve_learner_resources(gpu: str, num_learners: int, available_gpus: int | None = None) -> dict:
    """`num_learners` and `num_gpus_per_learner` for `config.learners(...)`.

    GPUs are counted in `ray.cluster_resources()` (or given as `available_gpus`); none is ever
    requested where there is none ("auto" falls back to CPU, "on" raises). With k GPUs: k learners
    (or `num_learners`, if positive and smaller) with one GPU each; a single GPU learner is the local
    one (`num_learners=0, num_gpus_per_learner=1`), because one remote GPU learner hangs in Ray 2.60.
    """
    if gpu not in GPU_MODES:
        raise ValueError(f"gpu must be one of {GPU_MODES}; got {gpu!r}")
    if num_learners < 0:
        raise ValueError(f"num_learners must be >= 0; got {num_learners}")
    if gpu == "off":
        return {"num_learners": num_learners, "num_gpus_per_learner": 0}
    if available_gpus is None:
        available_gpus = count_available_gpus()
    if available_gpus == 0:
        if gpu == "on":
            raise GpuUnavailable(f"resources.gpu 'on': {_where()} has no GPU; use gpu='auto' or 'off'")
        return {"num_learners": num_learners, "num_gpus_per_learner": 0}
    gpu_learners = min(num_learners, available_gpus) if num_learners > 0 else available_gpus
    return {"num_learners": 0 if gpu_learners == 1 else gpu_learners, "num_gpus_per_learner": 1}


def count_available_gpus() -> int:
    """The GPUs a run can use: the Ray cluster's while Ray is up, else this process's (a run without Ray, see
    `train.needs_ray`, learns in this process)."""
    import ray

    if ray.is_initialized():
        return int(ray.cluster_resources().get("GPU", 0))
    import torch

    return torch.cuda.device_count()


def _where() -> str:
    import ray

    return "the Ray cluster" if ray.is_initialized() else "this machine"


def local_gpu_learner_or_cpu(learners: dict, gpu: str, visible_gpus: int | None = None) -> dict:
    """`learners` (from `resolve_learner_resources`), unless they put one GPU learner in this process and this
    process sees no GPU: the cluster's GPU is on another node (a job's driver on a CPU head). Then "auto" trains on
    the CPU, with a warning, and "on" raises, saying how to run the driver on the GPU node.

    ``visible_gpus``: the CUDA devices this process can use (default: torch's count; Ray sets CUDA_VISIBLE_DEVICES
    for a job whose entrypoint asked for a GPU, and for a Tune trial's GPU bundle)."""
    if learners["num_learners"] != 0 or not learners["num_gpus_per_learner"]:
        return learners
    if visible_gpus is None:
        import torch

        visible_gpus = torch.cuda.device_count()
    if visible_gpus:
        return learners
    where = (
        "the Ray cluster has a GPU, but not on this node; one GPU learner runs in this process (one remote GPU "
        "learner hangs in Ray 2.60)"
    )
    if gpu == "on":
        raise GpuUnavailable(
            f"gpu='on': {where}. Run the driver on the GPU node (`entropilot submit` does so for "
            "gpu: on; a RayJob sets entrypointNumGpus: 1), or use gpu='auto' or 'off'"
        )
    logger.warning("gpu='auto': %s: training on the CPU. Submit with resources.gpu=on to train on the GPU", where)
    return {**learners, "num_gpus_per_learner": 0}
