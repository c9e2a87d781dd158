"""Single-sample policy latency on one thread: the exported ONNX file through `OnnxPolicy` (what flies)
against the same network in torch eager, measured in the same run.

Re-run (about a minute with a checkpoint; add ~40 s without one, for a 1-iteration training run):

    .venv/bin/python benchmarks/inference_latency.py runs/hover          # a checkpoint, run folder or MLflow run id
    .venv/bin/python benchmarks/inference_latency.py                     # no argument: trains a tiny policy first

What it measures, one call at a time on real observations (met while flying the policy in its env),
each call timed alone with ``perf_counter_ns`` after a warm-up; median and 99th percentile:

1. ``OnnxPolicy(obs)``: onnxruntime CPU, intra/inter-op threads 1, with its finiteness checks and copies.
2. ``InferenceSession.run`` on the same file and the same options, nothing around it (the runtime's floor).
3. The export's torch module (normalization, RLModule ``forward_inference``, mean, clip: the computation
   the file holds) in eager mode under ``torch.inference_mode()``, ``torch.set_num_threads(1)``,
   numpy in and out: the baseline of the ratio column.
4. ``GreedyPolicy`` as training evaluates with it (numpy normalization, ``forward_inference``, clip).

The ratio is the torch eager median over each row's median (above 1: faster than torch eager).
The process is pinned to one core.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from _machine import cpu_name, pin_to_one_core

pin_to_one_core()

import numpy as np  # noqa: E402


def latencies_us(call, observations: np.ndarray, calls: int, warmup: int) -> np.ndarray:
    """Per-call latency [µs] of ``call(obs)`` cycling through ``observations``."""
    n = len(observations)
    for i in range(warmup):
        call(observations[i % n])
    out = np.empty(calls)
    clock = time.perf_counter_ns
    for i in range(calls):
        obs = observations[i % n]
        start = clock()
        call(obs)
        out[i] = clock() - start
    return out / 1e3


def tiny_checkpoint(root: Path) -> Path:
    """Train PPO on hover for one small iteration (real Ray, MLflow in a sqlite file under ``root``)."""
    import ray

    from entropilot.platform.config import parse_config
    from entropilot.platform.train import train

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=10**9, logging_level="ERROR", log_to_driver=False)
    cwd = os.getcwd()
    os.chdir(root)  # MLflow's sqlite store puts artifacts under the working directory
    try:
        cfg = parse_config(
            {
                "name": "latency-benchmark",
                "env": {"id": "entropilot/Hover-v0"},
                "algorithm": {"train_batch_size": 200, "minibatch_size": 100, "num_epochs": 1},
                "entropy": {"init": {"enabled": False}},
                "resources": {"envs_per_runner": 1, "num_cpus_per_env_runner": 0.5},
                "mlflow": {"tracking_uri": f"sqlite:///{root}/mlflow.db", "experiment": "latency-benchmark"},
                "stop": {"iterations": 1},
                "evaluation": {"interval": None},
                "checkpoint": {"interval": None, "dir": str(root / "runs")},
            }
        )
        return train(cfg, echo=lambda line: None).checkpoint
    finally:
        os.chdir(cwd)
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "source", nargs="?", help="checkpoint folder, run folder or MLflow run id (default: train a tiny one)"
    )
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--warmup", type=int, default=2000)
    args = parser.parse_args()

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="entropilot-latency-")))
        source = args.source
        if source is None:
            print("no checkpoint given: training a tiny hover policy (1 iteration) ...", file=sys.stderr)
            source = str(tiny_checkpoint(tmp))
        run(source, tmp / "policy.onnx", args.calls, args.warmup, display_source=args.source or "")


def run(source: str, onnx_path: Path, calls: int, warmup: int, display_source: str) -> None:
    import onnxruntime as ort
    import torch

    from entropilot.deploy.export import PolicyGraph, _greedy_policy, _rollout, export_policy, load_rl_module
    from entropilot.deploy.onnx_policy import OnnxPolicy
    from entropilot.envs import make_env
    from entropilot.platform.algorithm import observation_filter_stats
    from entropilot.platform.train import MODULE_ID

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    result = export_policy(source, onnx_path)
    checkpoint = result.checkpoint
    meta = result.metadata
    policy = OnnxPolicy(onnx_path, expected={"sha256": result.sha256})

    module = load_rl_module(checkpoint, MODULE_ID)
    stats = observation_filter_stats(checkpoint)
    graph = PolicyGraph(module, stats).eval()
    greedy = _greedy_policy(module, stats)

    env = make_env(meta["env_id"], **meta["env_kwargs"])
    observations, _ = _rollout(env, policy, 2000, seed=0)
    env.close()
    observations = observations[:2000]

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])
    raw_input = np.zeros((1, observations.shape[1]), dtype=np.float32)

    def raw_ort(obs):
        raw_input[0] = obs
        return session.run(["action"], {"observation": raw_input})[0][0]

    def torch_eager(obs):
        with torch.inference_mode():
            return graph(torch.from_numpy(obs[None])).numpy()[0]

    def torch_greedy(obs):
        with torch.inference_mode():
            return greedy(obs)

    # Same answers first: the rows time the same computation.
    sample = observations[:64]
    reference = np.stack([torch_eager(o) for o in sample])
    for name, fn in (("OnnxPolicy", policy), ("raw ORT", raw_ort), ("GreedyPolicy", torch_greedy)):
        diff = float(np.abs(np.stack([fn(o) for o in sample]) - reference).max())
        assert diff <= 1e-5, f"{name} differs from torch eager by {diff}"

    rows = [
        ("`OnnxPolicy` (onnxruntime, checks included)", policy),
        ("`InferenceSession.run` alone", raw_ort),
        ("torch eager, same network (baseline)", torch_eager),
        ("`GreedyPolicy` (training-side evaluation)", torch_greedy),
    ]
    timings = {name: latencies_us(fn, observations, calls, warmup) for name, fn in rows}
    baseline = float(np.median(timings["torch eager, same network (baseline)"]))

    model_config = module.model_config
    print(
        f"\nSingle-sample policy latency, 1 thread, {calls} calls on real observations; policy MLP "
        f"{observations.shape[1]} -> {' -> '.join(map(str, model_config['fcnet_hiddens']))} -> 4 "
        f"({model_config['fcnet_activation']}); "
        f"{cpu_name()}, Python {platform.python_version()}, onnxruntime {ort.__version__}, torch {torch.__version__}; "
        f"parity {result.parity_error:.1e}; {result.size_bytes} byte file.\n"
    )
    print("| path | median µs | p99 µs | torch eager / this (median) |")
    print("|---|---:|---:|---:|")
    for name, _ in rows:
        t = timings[name]
        median, p99 = float(np.median(t)), float(np.percentile(t, 99))
        print(f"| {name} | {median:.1f} | {p99:.1f} | {baseline / median:.1f}x |")
    print(f"\nRe-run: python benchmarks/inference_latency.py {display_source}")


if __name__ == "__main__":
    main()
