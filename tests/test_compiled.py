"""The simulator's compiled hot path (setup.py, entropilot/envs/compiled.py): it is what runs after an install
with a C compiler, it gives the interpreted sources' numbers to the bit, and a stale build is not used."""

from __future__ import annotations

import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from entropilot.envs import HOVER_ID, SWARM_ID, WAYPOINT_ID, compiled, make_env, make_vector_env

HAS_COMPILER = bool(shutil.which("cc") or shutil.which("gcc"))
EXTENSION_SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]
ENVS_DIR = Path(compiled.__file__).parent


def run_python(code: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k != compiled.PURE_PYTHON_VARIABLE}
    return subprocess.run(
        [sys.executable, "-W", "always", "-c", code],
        env={**clean, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def rollouts() -> dict[str, np.ndarray]:
    """Observations, rewards and episode ends of every task and action mode, with noise, randomization and
    gusty wind on, of the single envs, the vector env and the swarm: every compiled formula is on the path. Random
    actions, resets included."""
    hard = dict(
        sensor_noise=dict(position=0.01, velocity=0.02, attitude=0.01, angular_velocity=0.05),
        randomization=dict(
            mass=0.1,
            inertia=0.1,
            kf=0.1,
            km=0.1,
            motor_time_constant=0.2,
            noise=0.3,
            action_delay_steps=1,
            wind_speed=1.0,
        ),
        wind=dict(mean=(0.3, -0.2, 0.0), gust_std=0.4),
        start_tilt_deg=20.0,
        true_airframe=dict(mass=1.1, kf=0.9, max_rpm=0.95),
        action_delay_steps=1,
    )
    out = {}
    for env_id in (HOVER_ID, WAYPOINT_ID):
        for mode in ("ctbr", "motors"):
            for name, options in (("plain", {}), ("hard", hard)):
                env = gym.make(env_id, action_mode=mode, **options)
                rng = np.random.default_rng(1)
                obs, _ = env.reset(seed=3)
                rows = [np.concatenate([obs, [0.0, 0.0, 0.0]])]
                for _ in range(150):
                    obs, reward, terminated, truncated, info = env.step(rng.uniform(-1, 1, 4).astype(np.float32))
                    rows.append(np.concatenate([obs, [reward, info["distance"], terminated or truncated]]))
                    if terminated or truncated:
                        obs, _ = env.reset()
                out[f"{env_id} {mode} {name}"] = np.array(rows)
                env.close()
    for env_id in (HOVER_ID, WAYPOINT_ID):  # the vector env's loop (tasks.EpisodeBatch), autoresets included
        env = make_vector_env(env_id, 5, action_mode="ctbr", **hard)
        rng = np.random.default_rng(5)
        obs, info = env.reset(seed=6)
        rows = [np.concatenate([obs, info["distance"][:, None], np.zeros((5, 3))], axis=1)]
        for _ in range(150):
            obs, reward, terminated, truncated, info = env.step(rng.uniform(-1, 1, (5, 4)))
            rows.append(np.column_stack([obs, info["distance"], reward, terminated, truncated]))
        out[f"vector {env_id}"] = np.concatenate(rows)
        env.close()
    env = make_env(SWARM_ID, num_drones=3, action_mode="motors", downwash=True)
    rng = np.random.default_rng(2)
    env.reset(seed=4)
    rows = []
    for _ in range(100):
        obs, rewards, terminated, truncated, _ = env.step({a: rng.uniform(-0.2, 0.6, 4) for a in env.agents})
        rows += [np.concatenate([obs[a], [rewards[a]]]) for a in sorted(obs)]
        if terminated["__all__"] or truncated["__all__"]:
            env.reset()
    out["swarm"] = np.array(rows)
    env.close()
    return out


@pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler: the install runs the modules as plain Python")
def test_an_install_with_a_c_compiler_runs_the_hot_path_compiled():
    result = run_python("import json, entropilot.envs.compiled as c; print(json.dumps(c.status()))")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == {name: True for name in compiled.COMPILED}, (
        "rebuild with `pip install -e .`: " + result.stderr
    )


@pytest.mark.skipif(compiled.built_module("physics") is None, reason="no compiled build in this checkout")
def test_compiled_and_interpreted_modules_give_the_same_numbers(tmp_path):
    saved = tmp_path / "interpreted.npz"
    code = f"import numpy as np, runpy; np.savez({str(saved)!r}, **runpy.run_path({__file__!r})['rollouts']())"
    result = run_python(code, **{compiled.PURE_PYTHON_VARIABLE: "1"})
    assert result.returncode == 0, result.stderr
    interpreted, this_process = np.load(saved), rollouts()
    assert sorted(interpreted.files) == sorted(this_process)
    for key, values in this_process.items():
        np.testing.assert_array_equal(values, interpreted[key], err_msg=key)
    # what was compared crosses episode ends (the vector env's autoresets too) and moves
    assert this_process[f"{HOVER_ID} motors hard"][:, -1].sum() >= 2 and np.ptp(this_process["swarm"][:, 0]) > 0.01
    assert this_process[f"vector {WAYPOINT_ID}"][:, -2:].sum() >= 5


@pytest.mark.skipif(compiled.built_module("tasks") is None, reason="no compiled build in this checkout")
def test_a_module_edited_after_the_build_runs_from_its_source_with_a_warning():
    source = ENVS_DIR / "tasks.py"
    before = source.stat()
    try:
        os.utime(source, (before.st_atime, time.time() + 60))  # as if just edited
        result = run_python("import json, entropilot.envs.compiled as c; print(json.dumps(c.status()))")
    finally:
        os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert result.returncode == 0, result.stderr
    assert "the source of tasks is newer than its compiled build" in result.stderr
    assert "pip install -e ." in result.stderr
    status = json.loads(result.stdout.splitlines()[-1])
    assert status.pop("tasks") is False and all(status.values()), status
    assert compiled.stale_modules() == []


@pytest.mark.skipif(compiled.built_module("observation") is None, reason="no compiled build in this checkout")
def test_a_module_edited_after_the_build_takes_the_modules_calling_into_it_along():
    """tasks calls observation's writers as C functions (observation.pxd): with observation run from its source, a
    compiled tasks would not find them, so it runs from its source too, and the envs work."""
    source = ENVS_DIR / "observation.py"
    before = source.stat()
    code = (
        "import json, numpy as np, entropilot.envs.compiled as c; from entropilot.envs import make_vector_env; "
        "env = make_vector_env('entropilot/Hover-v0', 2); env.reset(seed=0); env.step(np.zeros((2, 4))); "
        "print(json.dumps(c.status()))"
    )
    try:
        os.utime(source, (before.st_atime, time.time() + 60))  # as if just edited
        result = run_python(code)
    finally:
        os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert result.returncode == 0, result.stderr
    assert "the source of observation is newer" in result.stderr and "(and tasks, which call into it)" in result.stderr
    status = json.loads(result.stdout.splitlines()[-1])
    assert status.pop("observation") is False and status.pop("tasks") is False and all(status.values()), status
    assert compiled.with_dependents({"physics"}) == {"physics", "simulator"}


@pytest.mark.parametrize("pure_python", ["0", "1"])
def test_entropilot_envs_says_how_the_simulator_runs(pure_python):
    code = (
        "from click.testing import CliRunner; from entropilot.cli import main; "
        "print(CliRunner().invoke(main, ['envs']).output)"
    )
    result = run_python(code, **{compiled.PURE_PYTHON_VARIABLE: pure_python})
    assert result.returncode == 0, result.stderr
    assert "entropilot/Hover-v0" in result.stdout and "make_vector_env(id, N)" in result.stdout
    if pure_python == "1":
        assert f"{', '.join(compiled.COMPILED)} run as plain Python" in result.stdout
    elif HAS_COMPILER:
        assert "simulator: compiled (Cython)" in result.stdout


def test_only_a_source_checkout_judges_builds_by_file_times(tmp_path):
    package = tmp_path / "entropilot" / "envs"
    package.mkdir(parents=True)
    built = package / f"physics{EXTENSION_SUFFIX}"
    built.write_bytes(b"")
    (package / "physics.py").write_text("")
    os.utime(built, (1_000_000, 1_000_000))  # built long before the source was last written
    assert compiled.stale_modules(package) == []  # installed: a wheel's installer writes files in any order
    (tmp_path / "setup.py").write_text("")
    assert compiled.stale_modules(package) == ["physics"]  # a checkout: the .py was edited after the build
    os.utime(package / "physics.py", (1_000_001, 1_000_001))
    assert compiled.stale_modules(package) == []  # a second apart: one unpacking (a Ray job's working_dir)


@pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler to build the wheel with")
@pytest.mark.integration
def test_an_installed_wheel_runs_the_hot_path_compiled(tmp_path):
    """What `pip install .` (the Docker image) gets: the wheel's files land in any order, and still nothing is
    taken for stale."""
    repo = Path(__file__).resolve().parents[1]
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(repo / name, source / name)
    shutil.copytree(repo / "entropilot", source / "entropilot", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    # Unoptimized C (CFLAGS come after Python's own -O flags, before setup.py's -ffp-contract=off): this test is about
    # which files the wheel ships and which modules load from it, not the machine code, and gcc's optimizer on the
    # generated C was ~50 of the build's ~60 s. The in-place build the other tests run keeps the default flags.
    cflags = f"{os.environ.get('CFLAGS', '')} -O0".strip()
    build = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "wheel"), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "CFLAGS": cflags},
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "wheel").glob("entropilot-*.whl")
    install = subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(tmp_path / "site"), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr
    result = run_python(
        "import json, entropilot.envs.compiled as c; print(c.__file__); print(json.dumps(c.status()))",
        cwd=tmp_path,  # not the checkout, whose entropilot/ would come first on sys.path
        PYTHONPATH=str(tmp_path / "site"),
    )
    assert result.returncode == 0, result.stderr
    where, status = result.stdout.splitlines()[-2:]
    assert where.startswith(str(tmp_path / "site")), where
    assert json.loads(status) == {name: True for name in compiled.COMPILED}, result.stderr
