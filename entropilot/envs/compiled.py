"""Which simulator modules run compiled, and running them from their Python sources when asked or when stale.

The modules in ``COMPILED`` are plain Python whose ``cython.*`` annotations Cython turns into C when the
package is built (``setup.py``; an editable install puts each ``.so`` beside its ``.py``). Python imports a
module's ``.so`` before its ``.py``, so in a source checkout an edit to the ``.py`` would silently not run
until the next build. ``prefer_current_sources`` (called first thing by ``entropilot.envs``) therefore
imports from the ``.py`` every module whose source is newer than its build, with a warning that says how to
rebuild, and every module when ``ENTROPILOT_PURE_PYTHON=1`` (for a debugger or a profiler, or to check that
both give the same numbers). This file imports only the standard library: ``setup.py`` reads ``COMPILED``.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import warnings
from pathlib import Path

PACKAGE = "entropilot.envs"
COMPILED = ("physics", "pybullet_world", "simulator", "tasks", "observation")
# module -> the modules whose C functions it calls (their .pxd): it can run compiled only while they do.
CIMPORTS = {"simulator": ("physics",), "tasks": ("observation",)}
PURE_PYTHON_VARIABLE = "ENTROPILOT_PURE_PYTHON"
UNPACKING_S = 2.0  # s: files written this close together came out of one archive
_HERE = Path(__file__).parent


def built_module(name: str, package_dir: Path = _HERE) -> Path | None:
    """The compiled file of ``name`` in the package directory, if there is one."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = package_dir / f"{name}{suffix}"
        if path.exists():
            return path
    return None


def stale_modules(package_dir: Path = _HERE) -> list[str]:
    """Compiled modules whose ``.py`` was edited after they were built, in a source checkout (``setup.py`` two
    levels up, where an editable install builds in place). An installed package's files all come from one
    build, and a wheel's installer may well write a ``.py`` after its ``.so``: there the times mean nothing.
    A checkout can be unpacked too (a Ray job's working_dir), so a ``.py`` written within ``UNPACKING_S`` of
    its build counts as the same unpacking, not an edit."""
    if not (package_dir.parents[1] / "setup.py").exists():
        return []
    stale = []
    for name in COMPILED:
        built = built_module(name, package_dir)
        if built is not None and (package_dir / f"{name}.py").stat().st_mtime > built.stat().st_mtime + UNPACKING_S:
            stale.append(name)
    return stale


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Finds the listed modules of this package as their ``.py`` source, ahead of any compiled file."""

    def __init__(self, names: set[str]):
        self.names = names

    def find_spec(self, fullname, path=None, target=None):
        package, _, name = fullname.rpartition(".")
        if package != PACKAGE or name not in self.names:
            return None
        return importlib.util.spec_from_file_location(fullname, _HERE / f"{name}.py")


def with_dependents(names: set[str]) -> set[str]:
    """``names`` and every compiled module that calls into one of them at C level (``CIMPORTS``), which cannot find
    their C functions in a module run from source."""
    names = set(names)
    while True:
        dependents = {module for module, used in CIMPORTS.items() if names & set(used)} - names
        if not dependents:
            return names
        names |= dependents


def prefer_current_sources() -> None:
    """Import stale modules (all of them with ``ENTROPILOT_PURE_PYTHON=1``) from their ``.py``, with the modules
    that call into them."""
    if any(isinstance(finder, _SourceFinder) for finder in sys.meta_path):
        return
    if os.environ.get(PURE_PYTHON_VARIABLE, "") not in ("", "0"):
        names = set(COMPILED)
    else:
        stale = set(stale_modules())
        names = with_dependents(stale)
        if names:
            callers = f" (and {', '.join(sorted(names - stale))}, which call into it)" if names - stale else ""
            warnings.warn(
                f"entropilot.envs: the source of {', '.join(sorted(stale))} is newer than its compiled build, so it "
                f"runs as plain Python{callers} (same numbers, the env steps ~1.7x slower); rebuild with "
                "`pip install -e .`",
                stacklevel=3,
            )
    if names:
        sys.meta_path.insert(0, _SourceFinder(names))


def status() -> dict[str, bool]:
    """Whether each module in ``COMPILED`` runs compiled in this process (imports them)."""
    modules = [importlib.import_module(f"{PACKAGE}.{name}") for name in COMPILED]
    return {module.__name__.rpartition(".")[2]: not module.__file__.endswith(".py") for module in modules}
