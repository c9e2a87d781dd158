"""The onboard autopilot loop in real time: achieved control rate and timing jitter of `Autopilot` flying an exported
policy over the sim link at the policy's control rate (48 Hz) on the wall clock, beside the same pacing loop with no
work in it (what the sleep-based timer alone achieves), measured in the same run.

Re-run (about 1 minute at the default 20 s per row):

    .venv/bin/python benchmarks/control_loop.py out/hover_policy.onnx      # the quickstart's policy, or any export
    .venv/bin/python benchmarks/control_loop.py out/hover_policy.onnx --seconds 60

Rows, each `--seconds` long in all, taking turns in `--block`-second blocks in one process. Not pinned to a core
(unlike the throughput
benchmarks): on a shared machine a pinned loop waits for its one core while another is free, which is not what a
control loop on a companion computer meets.

1. the autopilot's pacing alone (baseline): absolute deadlines t0 + k / rate, `WallClock.sleep_until` (time.sleep),
   nothing else in the loop;
2. the same deadlines, sleeping until 1 ms before each and spinning on the clock for the rest (the "better pacing"
   candidate: costs up to ~5 % of a core at 48 Hz);
3. `Autopilot.run` with `OnnxPolicy` on `SimLink(realtime=True)` (PyBullet stepped once per tick, more if the
   loop skipped ticks) and `WallClock`: telemetry, guards, inference, one physics step, logging.

Per row, from each tick's start time: achieved rate; lateness (start - its deadline) p50 / p99 / max; period (start to
start) deviation from nominal p50 / p99 / max; missed ticks (deadlines that passed without a tick: a gap over 1.5
periods counts its missing ticks). The ratio column is the row's p99 lateness over the baseline's.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import numpy as np
from _machine import cpu_name  # benchmarks/ is on sys.path when run as a script

SPIN_S = 1e-3  # row 2 sleeps until this long before the deadline, then spins


def pacing_alone(rate_hz: int, seconds: float, spin_s: float = 0.0) -> np.ndarray:
    """Tick start times of the Autopilot's pacing (absolute deadlines, ``WallClock.sleep_until``) with no work;
    ``spin_s`` > 0: sleep to that long before each deadline, then spin."""
    from entropilot.deploy.links.base import WallClock

    clock, period = WallClock(), 1.0 / rate_hz
    ticks = int(round(seconds * rate_hz))
    starts = np.empty(ticks)
    t0 = clock.now()
    for k in range(ticks):
        due = t0 + k * period
        if spin_s:
            clock.sleep_until(due - spin_s)
            while clock.now() < due:  # busy-wait the last spin_s: what this variant measures
                pass
        else:
            clock.sleep_until(due)
        starts[k] = clock.now()
    return starts


def autopilot_ticks(policy, seconds: float) -> tuple[np.ndarray, object]:
    """Tick start times of ``Autopilot.run`` flying ``policy`` for ``seconds`` on the sim link in real time; its log."""
    from entropilot.deploy.autopilot import Autopilot
    from entropilot.deploy.links.base import WallClock
    from entropilot.deploy.links.sim import SimLink

    with SimLink.from_policy_metadata(policy.metadata, clock=WallClock(), realtime=True) as link:
        log = Autopilot(policy, link, link.target).run(duration_s=seconds, end="hold")
    return log.times, log


def timing(blocks: list[np.ndarray], rate_hz: int) -> dict[str, float]:
    """Rate and jitter over blocks of tick start times (each block a run of the loop with its own start)."""
    period = 1.0 / rate_hz
    lateness, deviation, missed, ticks, elapsed = [], [], 0, 0, 0.0
    for starts in blocks:
        since = starts - starts[0]
        # Against the block's first tick's grid t0 + k / rate. A tick never starts before its deadline (sleep does not
        # wake early), so one up to 3/4 of a period late is still read as late, not as early for the next deadline.
        lateness.append(since - np.floor(since / period + 0.25) * period)
        gaps = np.diff(starts)
        deviation.append(np.abs(gaps - period))
        missed += int(sum(round(g / period) - 1 for g in gaps if g > 1.5 * period))
        ticks, elapsed = ticks + len(starts), elapsed + float(since[-1]) + period
    lateness, deviation = np.concatenate(lateness), np.concatenate(deviation)
    return {
        "ticks": ticks,
        "hz": ticks / elapsed,
        "late_p50": float(np.percentile(lateness, 50)),
        "late_p99": float(np.percentile(lateness, 99)),
        "late_max": float(lateness.max()),
        "dev_p50": float(np.percentile(deviation, 50)),
        "dev_p99": float(np.percentile(deviation, 99)),
        "dev_max": float(deviation.max()),
        "missed": missed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("policy", help="an exported policy (.onnx), e.g. out/hover_policy.onnx from quickstart.sh")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each row (default 20)")
    parser.add_argument("--block", type=float, default=2.0, help="the rows take turns in blocks this long (default 2)")
    args = parser.parse_args()
    if not Path(args.policy).is_file():
        sys.exit(
            f"{args.policy}: no such file; export one (`entropilot export RUN -o policy.onnx`) or run quickstart.sh"
        )

    import onnxruntime as ort

    from entropilot.deploy.onnx_policy import OnnxPolicy

    policy = OnnxPolicy(args.policy)
    rate = policy.control_hz
    names = (
        "sleep pacing alone (baseline)",
        f"sleep + {SPIN_S * 1e3:g} ms spin pacing alone",
        "`Autopilot` + `OnnxPolicy` + `SimLink` (sleep pacing)",
    )
    blocks: dict[str, list[np.ndarray]] = {name: [] for name in names}
    logs, compute = [], []
    # The rows take turns in blocks, so that a shared machine's load changes fall on all of them alike.
    for _ in range(max(1, round(args.seconds / args.block))):
        blocks[names[0]].append(pacing_alone(rate, args.block))
        blocks[names[1]].append(pacing_alone(rate, args.block, SPIN_S))
        starts, log = autopilot_ticks(policy, args.block)
        blocks[names[2]].append(starts)
        logs.append(log)
        compute += [s.compute_s * 1e6 for s in log.steps if s.compute_s is not None]
    rows = {name: timing(b, rate) for name, b in blocks.items()}
    failsafes = [str(t) for log in logs for t in log.failsafes]

    print(
        f"\nControl loop timing at {rate} Hz (nominal period {1e3 / rate:.2f} ms), wall clock, "
        f"{args.seconds:g} s per row; "
        f"{cpu_name()}, Python {platform.python_version()}, onnxruntime {ort.__version__}, {Path(args.policy).name}.\n"
    )
    print(
        "| loop | ticks | achieved Hz | lateness p50 / p99 / max µs | period deviation p50 / p99 / max µs "
        "| missed ticks | p99 lateness ÷ baseline |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    base = rows[names[0]]["late_p99"]
    for name, r in rows.items():
        print(
            f"| {name} | {r['ticks']} | {r['hz']:.2f} | {r['late_p50'] * 1e6:.0f} / {r['late_p99'] * 1e6:.0f} / "
            f"{r['late_max'] * 1e6:.0f} | {r['dev_p50'] * 1e6:.0f} / {r['dev_p99'] * 1e6:.0f} / "
            f"{r['dev_max'] * 1e6:.0f} "
            f"| {r['missed']} | {r['late_p99'] / base:.2f}x |"
        )
    print(
        f"\nAutopilot: {len(logs)} flights of {args.block:g} s, failsafes: {'; '.join(failsafes) or 'none'}; last: "
        f"{logs[-1].summary()}"
    )
    print(
        f"policy inference inside the loop (perf_counter around the call): median {np.median(compute):.1f} µs, "
        f"p99 {np.percentile(compute, 99):.1f} µs ({len(compute)} calls)"
    )
    print(
        f"\nRe-run: python benchmarks/control_loop.py {args.policy} --seconds {args.seconds:g} --block {args.block:g}"
    )


if __name__ == "__main__":
    main()
