"""What a training run asks of the Ray cluster (the driver, env runners, remote learners, GPUs), and whether the cluster
can hold it: checked before anything starts, because Ray would leave a run that cannot fit waiting forever."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from entropilot.errors import EntropilotError
from entropilot.platform.config import ExperimentConfig


class DoesNotFit(EntropilotError, ValueError):
    """A run needs more of a resource than the cluster has."""


def run_bundles(cfg: ExperimentConfig) -> list[dict[str, float]]:
    """The Ray resource bundles one training run (a sweep's trial) takes, as RLlib's
    `Algorithm.default_resource_request` lays them out for our build: the driver (it is also the learner unless
    there are remote learners), one bundle per env runner, one per remote learner. With resources.gpu auto/on, Ray
    must be up (GPUs are counted in the cluster, as the run's own build will)."""
    from entropilot.platform.algorithm import resolve_learner_resources

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
