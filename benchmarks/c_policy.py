"""The exported policy as generated C against onnxruntime, in the same run: single-call latency on this machine,
the bits each build computes, and what it takes on the Crazyflie's Cortex-M4F (flash, RAM, stack, cycles).

Re-run (about a minute with an exported file; add ~40 s to train a tiny policy without one):

    .venv/bin/python benchmarks/c_policy.py out/hover_policy.onnx     # an exported file (the quickstart's)
    .venv/bin/python benchmarks/c_policy.py runs/hover                # a checkpoint, run folder or MLflow run id
    .venv/bin/python benchmarks/c_policy.py                           # no argument: trains a tiny policy first

Latency, one call at a time on real observations (met flying the policy in its env), after a warm-up; median and
99th percentile; the process pinned to one core:

1. ``OnnxPolicy(obs)`` from Python: onnxruntime, one thread, its checks included (the baseline of the ratios).
2. ``CPolicy(obs)`` from Python: the generated C through ctypes, the same checks (the library `fly --runtime c` uses).
3. ``entropilot_policy(obs, action)`` called from C, each call timed with clock_gettime, under several flag sets.

Every C build's actions are compared bit for bit with the ctypes library's (-O2); the Cortex-M4F's, from an emulated
STM32F405 (QEMU), too, when arm-none-eabi-gcc and qemu-system-arm are installed. Footprint and cycles: see
benchmarks/_cortex_m4.py.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from _machine import cpu_name, pin_to_one_core

pin_to_one_core()

import numpy as np  # noqa: E402

HARNESS = r"""
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "policy.h"
/* argv: observations (float32 rows), count, calls, warm-up, latencies out (float64 ns), actions out (float32 rows) */
int main(int argc, char **argv)
{
  if (argc != 7) return 2;
  const long n = atol(argv[2]), calls = atol(argv[3]), warmup = atol(argv[4]);
  float *obs = malloc(sizeof(float) * ENTROPILOT_OBSERVATION_SIZE * n);
  float *actions = malloc(sizeof(float) * ENTROPILOT_ACTION_SIZE * n);
  double *ns = malloc(sizeof(double) * calls);
  FILE *f = fopen(argv[1], "rb");
  if (!f || fread(obs, sizeof(float) * ENTROPILOT_OBSERVATION_SIZE, n, f) != (size_t)n) return 3;
  fclose(f);
  for (long i = 0; i < warmup; i++) entropilot_policy(obs + ENTROPILOT_OBSERVATION_SIZE * (i % n), actions);
  for (long i = 0; i < calls; i++) {
    struct timespec t0, t1;
    const long k = i % n;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    entropilot_policy(obs + ENTROPILOT_OBSERVATION_SIZE * k, actions + ENTROPILOT_ACTION_SIZE * k);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    ns[i] = (double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec);
  }
  f = fopen(argv[5], "wb");
  fwrite(ns, sizeof(double), calls, f);
  fclose(f);
  f = fopen(argv[6], "wb");
  fwrite(actions, sizeof(float) * ENTROPILOT_ACTION_SIZE, n, f);
  fclose(f);
  return 0;
}
"""
# (label, flags): the library's own flags first; -ffast-math last, as the flags whose bits may differ.
C_BUILDS = (
    ("-O2", ("-O2",)),
    ("-O3", ("-O3",)),
    ("-O3 -march=native", ("-O3", "-march=native")),
    ("-O3 -ffast-math (not reproducible)", ("-O3", "-ffast-math")),
)
COMMON_FLAGS = ("-std=c99", "-ffp-contract=off")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", nargs="?", help=".onnx file, checkpoint, run folder or MLflow run id")
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--warmup", type=int, default=2000)
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="entropilot-c-bench-")))
        source = args.source
        if source is None:
            from inference_latency import tiny_checkpoint

            print("no policy given: training a tiny hover policy (1 iteration) ...", file=sys.stderr)
            source = str(tiny_checkpoint(tmp))
        onnx_path = Path(source)
        if onnx_path.suffix != ".onnx":
            from entropilot.deploy.export import export_policy

            onnx_path = export_policy(source, tmp / "policy.onnx").path
        run(onnx_path, tmp, args.calls, args.warmup, args.source or "")


def run(onnx_path: Path, tmp: Path, calls: int, warmup: int, display_source: str) -> None:
    import onnxruntime as ort
    from inference_latency import latencies_us

    from entropilot.deploy.c_export import build_c_policy, generate_c
    from entropilot.deploy.c_toolchain import find_host_compiler
    from entropilot.deploy.export import _rollout
    from entropilot.deploy.onnx_policy import OnnxPolicy
    from entropilot.envs import make_env

    onnx_policy = OnnxPolicy(onnx_path)
    meta = onnx_policy.metadata
    env = make_env(meta["env_id"], **meta["env_kwargs"])
    observations, _ = _rollout(env, onnx_policy, 2000, seed=0)
    env.close()
    observations = np.ascontiguousarray(observations[:2000], dtype=np.float32)

    sources = generate_c(onnx_path)
    c_policy = build_c_policy(onnx_path, tmp / "lib", sources=sources)
    reference = c_policy.batch(observations)
    parity = float(np.abs(reference - onnx_policy.batch(observations)).max())

    rows = {
        "`OnnxPolicy` from Python (onnxruntime, checks included; baseline)": latencies_us(
            onnx_policy, observations, calls, warmup
        ),
        "`CPolicy` from Python (the C through ctypes, checks included)": latencies_us(
            c_policy, observations, calls, warmup
        ),
    }
    compiler = find_host_compiler()
    bits = {}
    obs_file = tmp / "observations.f32"
    observations.tofile(obs_file)
    (tmp / "harness.c").write_text(HARNESS)
    for label, flags in C_BUILDS:
        exe = tmp / f"harness{len(bits)}"
        subprocess.run(
            [compiler, *COMMON_FLAGS, *flags, f"-I{tmp / 'lib'}", str(tmp / "harness.c"), str(tmp / "lib" / "policy.c")]
            + ["-o", str(exe), "-lm"],
            check=True,
        )
        ns_file, actions_file = tmp / "ns.f64", tmp / "actions.f32"
        command = [str(exe), str(obs_file), str(len(observations)), str(calls), str(warmup)]
        subprocess.run([*command, str(ns_file), str(actions_file)], check=True)
        rows[f"`entropilot_policy` from C, `{label}`"] = np.fromfile(ns_file) / 1e3
        actions = np.fromfile(actions_file, dtype=np.float32).reshape(reference.shape)
        same = np.array_equal(actions.view(np.uint32), reference.view(np.uint32))
        bits[label] = (same, float(np.abs(actions - reference).max()))

    base = rows["`OnnxPolicy` from Python (onnxruntime, checks included; baseline)"]
    base_median, base_p99 = float(np.median(base)), float(np.percentile(base, 99))
    print(
        f"\nGenerated C vs onnxruntime, single-sample latency, 1 thread, {calls} calls on {len(observations)} real "
        f"observations; graph {' -> '.join(sources.ops)} ({sources.parameters} float32 constants); {cpu_name()}, "
        f"{_version(compiler)}, Python {platform.python_version()}, onnxruntime {ort.__version__}; "
        f"max |C - onnxruntime| {parity:.1e}.\n"
    )
    print("| path | median µs | p99 µs | onnxruntime / this, median | onnxruntime / this, p99 |")
    print("|---|---:|---:|---:|---:|")
    for name, t in rows.items():
        median, p99 = float(np.median(t)), float(np.percentile(t, 99))
        print(f"| {name} | {median:.2f} | {p99:.2f} | {base_median / median:.1f}x | {base_p99 / p99:.1f}x |")
    flags = " ".join(COMMON_FLAGS)
    print(f"\nC builds (all `{flags}`): actions bit for bit equal to the ctypes library's (-O2)?")
    for label, (same, diff) in bits.items():
        print(f"  {label}: {'yes' if same else f'no (max difference {diff:.1e})'}")
    _cortex_m4(sources, observations[0], tmp, reference[0])
    print(f"\nRe-run: python benchmarks/c_policy.py {display_source}")


def _cortex_m4(sources, observation, tmp: Path, host_action) -> None:
    import _cortex_m4 as m4

    from entropilot.deploy.c_toolchain import CORTEX_M4F_FLAGS, ToolchainError, cortex_m4f_footprint

    folder = tmp / "m4"
    _, source = sources.write(folder)
    print("\nCortex-M4F (the Crazyflie 2.x's STM32F405, 168 MHz):")
    for label, flags in (("-O2", CORTEX_M4F_FLAGS), ("-Os (the firmware's)", _with_level(CORTEX_M4F_FLAGS, "-Os"))):
        try:
            f = cortex_m4f_footprint(source, folder / label.split()[0], flags=flags)
        except ToolchainError as err:
            print(f"  footprint: not measured ({err})")
            return
        print(
            f"  {label}: flash {f.flash} B (code + weights), RAM {f.static_ram} B static (scratch rows) + "
            f"{f.stack} B stack; {f.compiler}"
        )
    missing = m4.available()
    if missing:
        print(f"  cycles: not estimated ({missing})")
        return
    e = m4.estimate(source, observation, folder / "qemu")
    same = e.action_bits == m4.float_bits(host_action)
    print(
        f"  one call (-O2): {e.instructions} instructions executed (QEMU netduinoplus2 trace); estimated "
        f"{e.core_cycles} cycles = {e.core_us:.0f} µs with zero-wait memory, {e.flash_cycles} cycles = "
        f"{e.flash_us:.0f} µs with {m4.FLASH_WAIT_STATES} flash wait states on every weight line "
        f"(Cortex-M4 TRM cycle counts, taken branches at the worst refill)"
    )
    print(f"  the emulated M4F's action has the same bits as this machine's: {'yes' if same else 'NO'}")


def _with_level(flags: tuple[str, ...], level: str) -> tuple[str, ...]:
    return tuple(level if f.startswith("-O") else f for f in flags)


def _version(compiler: str) -> str:
    out = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    return out.splitlines()[0] if out else compiler


if __name__ == "__main__":
    main()
