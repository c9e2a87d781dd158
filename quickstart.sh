#!/usr/bin/env bash
# entropilot's two commands on a fresh machine:
#   bash quickstart.sh         set up .venv and run the main job
#   bash quickstart.sh test    set up .venv and run the test suite
# The set-up installs the CPU build of torch first (a loose pin would pull a multi-GB CUDA build),
# then entropilot with its test extras; it is skipped when .venv is already up to date.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${ENTROPILOT_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

setup() {
  if [ -x "$VENV/bin/entropilot" ] && [ "$VENV/.installed" -nt pyproject.toml ]; then
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
    mkdir -p out
    "$VENV/bin/entropilot" demo --episodes 3 --plot out/demo_trajectories.png
    ;;
  test)
    shift || true
    "$VENV/bin/python" -m pytest -q "$@"
    ;;
  *)
    echo "usage: bash quickstart.sh [run|test [pytest args...]]" >&2
    exit 2
    ;;
esac
