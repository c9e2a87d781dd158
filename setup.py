"""Builds the simulator's hot path with Cython. The modules ``entropilot/envs/compiled.py`` lists are plain
Python whose ``cython.*`` annotations become C types here (Cython's pure-Python mode). Without a C compiler
the build skips them (``optional``) and they run as the Python they are: the same numbers, slower."""

import runpy

from Cython.Build import cythonize
from setuptools import Extension, setup

COMPILED = runpy.run_path("entropilot/envs/compiled.py")["COMPILED"]

setup(
    ext_modules=cythonize(
        [
            Extension(
                f"entropilot.envs.{name}",
                [f"entropilot/envs/{name}.py"],
                # No fused multiply-add: compiled and interpreted formulas give the same numbers to the bit.
                extra_compile_args=["-ffp-contract=off"],
                optional=True,
            )
            for name in COMPILED
        ],
        build_dir="build/cython",
        compiler_directives={"language_level": 3},
    )
)
