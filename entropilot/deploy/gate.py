"""The readiness gate: does a policy's flight-readiness report clear the bar for registering it or flying it on a
vehicle? Pure Python over the report's numbers, so the vehicle side checks the report export wrote into the policy
file without a simulator or MLflow (see docs/flight-readiness.md)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from entropilot.deploy.contract import READINESS_KEY
from entropilot.errors import EntropilotError

logger = logging.getLogger(__name__)


class GateRefused(EntropilotError, RuntimeError):
    """The policy has no readiness report, a report made for another network, or one that fails its gate."""


def judge(stats: dict[str, Any], gate: dict[str, Any]) -> dict[str, Any]:
    """The gate (``condition``, ``max_crashes``, ``min_success_lower_bound``) applied to the policy's statistics in
    that condition -> the gate with ``passed`` and the ``reasons`` it failed (empty when it passed)."""
    reasons = []
    if stats["crashes"] > gate["max_crashes"]:
        reasons.append(f"{stats['crashes']} crash(es), at most {gate['max_crashes']} allowed")
    low = stats["success_interval"][0]
    if low < gate["min_success_lower_bound"]:
        reasons.append(f"success lower bound {low:.3f} < {gate['min_success_lower_bound']}")
    return {**gate, "passed": not reasons, "reasons": reasons}


def verdict_line(report: dict[str, Any]) -> str:
    """One line: PASS or FAIL, the gated condition's numbers, and why it failed."""
    gate = report["gate"]
    stats = report["conditions"][gate["condition"]]["policy"]
    low, high = stats["success_interval"]
    line = (
        f"{'PASS' if gate['passed'] else 'FAIL'}: {gate['condition']} success {stats['successes']}/{stats['episodes']} "
        f"({100 * report['confidence']:.0f} % interval {low:.3f}-{high:.3f}), {stats['crashes']} crash(es)"
    )
    return line if gate["passed"] else f"{line}; {'; '.join(gate['reasons'])}"


def report_problems(metadata: dict[str, Any], policy_sha256: str) -> tuple[dict | None, list[str]]:
    """The readiness report in a policy file's metadata and why it does not clear the gate (empty: it does). The
    report must name this very network (``policy_sha256``): a report copied from another file does not count."""
    report = metadata.get(READINESS_KEY)
    if not isinstance(report, dict) or "gate" not in report:
        return None, [
            "the policy file carries no readiness report: evaluate it with `entropilot evaluate POLICY --stamp`, "
            "or register it with `entropilot export ... --register NAME` (which evaluates and stamps it)"
        ]
    evaluated = report.get("policy", {}).get("policy_sha256")
    if evaluated != policy_sha256:
        return report, [f"its readiness report was made for another network (policy_sha256 {str(evaluated)[:12]}...)"]
    return report, list(report["gate"]["reasons"]) if not report["gate"]["passed"] else []


def enforce(
    report: dict | None, problems: list[str], *, force: bool, what: str, echo: Callable[[str], None] = print
) -> None:
    """Refuse (GateRefused) ``what`` if there are ``problems``, unless ``force``: then warn on the console and in the
    log, and go on."""
    if report is not None and not problems:
        echo(f"readiness gate: {verdict_line(report)}")
        return
    message = f"{what}: the readiness gate refuses this policy: {'; '.join(problems)}"
    if not force:
        raise GateRefused(f"{message} (--force overrides it, and is recorded)")
    echo(f"WARNING: {message}; going on because of --force")
    logger.warning("%s; overridden with --force", message)
