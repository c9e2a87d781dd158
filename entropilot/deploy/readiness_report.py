"""A flight-readiness report (``readiness.evaluate_policy``'s dict) as a person reads it: the console table, Markdown
(``readiness.md``), JSON (``readiness.json``) and a plot of every condition's success rate and crashes, policy beside
the PID (``readiness.png``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from entropilot.deploy.gate import verdict_line

FILES = ("readiness.md", "readiness.json", "readiness.png")
_COLUMNS = (
    ("condition", "<"),
    ("policy success", ">"),
    ("interval", ">"),
    ("crashes", "<"),
    ("final m p50/p90", ">"),
    ("settled s p50", ">"),
    ("tilt deg p95", ">"),
    ("saturated", ">"),
    ("PID success", ">"),
    ("PID interval", ">"),
    ("PID crashes", "<"),
)


def _crashes(stats: dict[str, Any]) -> str:
    reasons = ", ".join(f"{reason} {n}" for reason, n in stats["crash_reasons"].items())
    return f"{stats['crashes']}" + (f" ({reasons})" if reasons else "")


def _success(stats: dict[str, Any]) -> str:
    return f"{stats['successes']}/{stats['episodes']}"


def _interval(stats: dict[str, Any]) -> str:
    low, high = stats["success_interval"]
    return f"{low:.3f}-{high:.3f}"


def rows(report: dict[str, Any]) -> list[list[str]]:
    """One row of cells per condition, in ``_COLUMNS`` order."""
    out = []
    for name, c in report["conditions"].items():
        p, pid = c["policy"], c["pid"]
        settle = p["settling_time_s"]
        out.append(
            [
                name,
                _success(p),
                _interval(p),
                _crashes(p),
                f"{p['final_distance_m']['p50']:.3f}/{p['final_distance_m']['p90']:.3f}",
                "-" if settle is None else f"{settle['p50']:.2f} ({p['settled']})",
                f"{p['max_tilt_deg']['p95']:.0f}",
                f"{100 * p['saturated_fraction']:.1f} %",
                _success(pid),
                _interval(pid),
                _crashes(pid),
            ]
        )
    return out


def table(report: dict[str, Any]) -> str:
    """The console table: one line per condition, then the gate's verdict."""
    header = [name for name, _ in _COLUMNS]
    body = rows(report)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(f"{cell:{align}{width}}" for cell, (_, align), width in zip(r, _COLUMNS, widths)).rstrip()
        for r in [header, *body]
    ]
    return "\n".join([*lines, f"gate: {verdict_line(report)}"])


def markdown(report: dict[str, Any], plot_name: str | None = "readiness.png") -> str:
    p = report["policy"]
    lines = [
        f"# Flight readiness: {p['source']}",
        "",
        f"- **Verdict**: {verdict_line(report)}",
        f"- Policy: {p['env_id']} ({p['action_mode']}, {p['control_hz']} Hz), training run {p['training_run_id']}, "
        f"iteration {p['training_iteration']}; file SHA-256 `{p['sha256']}`, network (policy_sha256) "
        f"`{p['policy_sha256']}`",
        f"- {report['episodes']} held-out episodes per condition, seeds {report['seeds'][0]} to "
        f"{report['seeds'][1] - 1} (the same starts in every condition), policy and cascaded PID on the same seeds; "
        f"success interval: {report['interval']}, {100 * report['confidence']:.0f} %",
        "- Settled: the time from which the drone stayed within the success radius to the end (median of the "
        "episodes that settled, their count in brackets); saturated: steps with an action component at +-1",
        *[f"- Note: {note}" for note in report["notes"]],
        "",
        "| " + " | ".join(name for name, _ in _COLUMNS) + " |",
        "|" + "|".join("---" if align == "<" else "---:" for _, align in _COLUMNS) + "|",
        *["| " + " | ".join(r) + " |" for r in rows(report)],
        "",
        "Conditions (env options over the policy's own env, after the base "
        f"`{json.dumps(report['base'], sort_keys=True)}`):",
        "",
        *[f"- `{name}`: `{json.dumps(c['options'], sort_keys=True)}`" for name, c in report["conditions"].items()],
    ]
    lines += _saturation_by_component(report)
    lines += crashed_flights(report)
    if plot_name:
        lines += ["", f"![readiness]({plot_name})"]
    return "\n".join(lines) + "\n"


def _saturation_by_component(report: dict[str, Any]) -> list[str]:
    """Markdown: per condition, the share of steps each action component of the policy sat at a bound. A share near 1
    on one component is a bang-bang channel (full and zero thrust in turn, say), which the any-component column hides
    behind a single number. Reports written before the breakdown existed have none."""
    shares = {name: c["policy"].get("saturated_by_component") for name, c in report["conditions"].items()}
    if not all(shares.values()):
        return []
    width = max(len(v) for v in shares.values())
    components = [f"a{i}" for i in range(width)]
    return [
        "",
        "Steps with the policy's action component at a bound (a0 ... in the order of the ONNX file's "
        "`entropilot.action_meaning`):",
        "",
        "| condition | " + " | ".join(components) + " |",
        "|---|" + "---:|" * width,
        *[f"| {name} | " + " | ".join(f"{100 * v:.1f} %" for v in values) + " |" for name, values in shares.items()],
    ]


def crashed_flights(report: dict[str, Any], most: int = 20) -> list[str]:
    """Markdown lines: per condition, the seeds whose flights crashed and why (the policy's, then the PID's), at most
    ``most`` each. A seed starts the same flight again, so a crash named here can be flown and looked at. Reports
    written before the seeds were kept have none."""
    lines = []
    for name, c in report["conditions"].items():
        for who in ("policy", "pid"):
            crashed = c[who].get("crashed_seeds")
            if crashed:
                listed = ", ".join(f"{seed} ({reason})" for seed, reason in crashed[:most])
                more = f" and {len(crashed) - most} more" if len(crashed) > most else ""
                lines.append(f"- `{name}`, {'policy' if who == 'policy' else 'PID'}: {listed}{more}")
    if not lines:
        return []
    return ["", "Crashed flights, by seed (a seed starts the same flight again):", "", *lines]


def plot(report: dict[str, Any], path: str | Path) -> None:
    """Success rate with its interval, policy beside the PID, one pair of bars per condition; crashes written on the
    bars; the final-distance median and 90th percentile beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    names = list(report["conditions"])
    y = np.arange(len(names))
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 0.45 * len(names) + 2.0), sharey=True)
    for offset, who, color in ((-0.2, "policy", "tab:blue"), (0.2, "pid", "tab:gray")):
        stats = [report["conditions"][n][who] for n in names]
        rate = np.array([s["success_rate"] for s in stats])
        low = np.maximum(rate - np.array([s["success_interval"][0] for s in stats]), 0.0)
        high = np.maximum(np.array([s["success_interval"][1] for s in stats]) - rate, 0.0)
        label = "policy" if who == "policy" else "PID baseline"
        left.barh(y + offset, rate, 0.38, xerr=[low, high], color=color, label=label, capsize=2)
        for yi, r, top, s in zip(y, rate, rate + high, stats):
            if s["crashes"]:
                inside = r > 0.5  # at the bar's start, else past its error bar
                left.text(
                    0.02 if inside else top + 0.02,
                    yi + offset,
                    f"{s['crashes']} crash{'es' if s['crashes'] > 1 else ''}",
                    va="center",
                    ha="left",
                    fontsize=7,
                    color="white" if inside else "darkred",
                )
        p50 = np.array([s["final_distance_m"]["p50"] for s in stats])
        p90 = np.array([s["final_distance_m"]["p90"] for s in stats])
        right.barh(y + offset, p50, 0.38, color=color, label=f"{label} median")
        right.scatter(
            p90, y + offset, marker="|", color="black", s=60, label="90th percentile" if who == "pid" else None
        )
    left.set_yticks(y, names)
    left.invert_yaxis()
    left.set_xlim(0, 1.05)
    left.set_xlabel(f"success rate ({100 * report['confidence']:.0f} % {report['interval']} interval)")
    left.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2, fontsize=8, frameon=False)
    right.set_xscale("log")
    # Labels at 1, 2 and 5 of each decade in plain numbers: matplotlib's own put crowded "4x10^-2"-style labels on
    # every minor tick when the distances span less than a decade.
    right.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    right.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    right.xaxis.set_minor_formatter(NullFormatter())
    right.set_xlabel("final distance to target (m)")
    right.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=3, fontsize=8, frameon=False)
    gate = report["gate"]
    fig.suptitle(
        f"{report['policy']['env_id']} ({report['policy']['action_mode']}): {report['episodes']} held-out episodes "
        f"per condition; gate {'PASS' if gate['passed'] else 'FAIL'}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_files(report: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """``readiness.md``, ``readiness.json`` and ``readiness.png`` in ``out_dir`` (created); their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md, js, png = (out / name for name in FILES)
    md.write_text(markdown(report, png.name))
    js.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, png)
    return [md, js, png]
