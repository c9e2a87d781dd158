#!/usr/bin/env bash
# entropilot's two commands on a fresh machine:
#   bash quickstart.sh         set up .venv and run the main job
#   bash quickstart.sh test    set up .venv and run the test suite (both tiers)
#   bash quickstart.sh unit    the unit tier only: no Ray, no MLflow server, about a minute
#   bash quickstart.sh lint    ruff's lint and format checks and mypy's type check (CI runs them before the tests)
# The set-up installs the CPU build of torch first (a loose pin would pull a multi-GB CUDA build),
# then entropilot with its test extras (compiling the simulator's hot path with Cython: see setup.py);
# it is skipped when .venv is already up to date.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${ENTROPILOT_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

setup() {
  if [ -x "$VENV/bin/entropilot" ] && [ "$VENV/.installed" -nt pyproject.toml ] && [ "$VENV/.installed" -nt setup.py ]; then
    return
  fi
  echo "==> creating $VENV (Python: $("$PYTHON" --version))"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -qq --upgrade pip
  echo "==> installing torch 2.13.0 (CPU build)"
  "$VENV/bin/pip" install -qq "torch==2.13.0"
  echo "==> installing entropilot and its dependencies"
  "$VENV/bin/pip" install -qq -e ".[test]"
  touch "$VENV/.installed"
}

setup
case "${1:-run}" in
  run)
    # Physics check (PID baseline) -> train hover until flight-ready or 15 min -> export ONNX (and C) -> readiness report
    # (exit status 1 when the policy fails the readiness gate: said, not fatal here) -> fly it in simulation.
    run="runs/quickstart-$(date +%Y%m%d-%H%M%S)"
    mkdir -p out
    "$VENV/bin/entropilot" demo --episodes 1
    "$VENV/bin/entropilot" train configs/hover.yaml --set checkpoint.dir="$run"
    "$VENV/bin/entropilot" export "$run" -o out/hover_policy.onnx
    "$VENV/bin/entropilot" export out/hover_policy.onnx --format c -o out/hover_policy_c
    "$VENV/bin/entropilot" evaluate out/hover_policy.onnx --output-dir out/readiness \
      || echo "==> the policy does not clear the readiness gate: see out/readiness/readiness.md"
    "$VENV/bin/entropilot" fly out/hover_policy.onnx --link sim --episodes 5 --seed 5000 \
      --plot out/hover_flights.png --video out/hover_flight.gif
    ;;
  test)
    shift || true
    # The slowest tests listed at the end: the suite's budget is 15 minutes on CI's 2 cores.
    "$VENV/bin/python" -m pytest -q --durations=25 "$@"
    ;;
  unit)
    shift || true
    "$VENV/bin/python" -m pytest -q -m "not integration" "$@"
    ;;
  lint)
    "$VENV/bin/ruff" check .
    "$VENV/bin/ruff" format --check .
    "$VENV/bin/mypy"  # what and how: [tool.mypy] in pyproject.toml
    ;;
  *)
    echo "usage: bash quickstart.sh [run|test|unit [pytest args...]|lint]" >&2
    exit 2
    ;;
esac
