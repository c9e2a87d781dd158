"""The C compilers the C export uses: the host's (a shared library that ``CPolicy`` loads, for parity checks and
``fly --runtime c``) and the Cortex-M4F cross compiler (the flash, RAM and stack a Crazyflie build would take)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from entropilot.errors import EntropilotError

__all__ = [
    "CORTEX_M4F_FLAGS",
    "CROSS_COMPILER",
    "Footprint",
    "HOST_FLAGS",
    "ToolchainError",
    "build_shared_library",
    "cortex_m4f_footprint",
    "find_host_compiler",
]

# No -ffast-math and no contraction into fused multiply-adds: every result is the one the C source spells, so the
# library gives the same bits at -O0, -O2 or -O3 on this machine (a test checks it). Warnings are errors: the
# generated code must be clean pedantic C99.
HOST_FLAGS = ("-std=c99", "-pedantic", "-O2", "-ffp-contract=off", "-fPIC", "-shared", "-Wall", "-Wextra", "-Werror")
CROSS_COMPILER = "arm-none-eabi-gcc"
# The Crazyflie's STM32F405: Cortex-M4 with the single-precision FPU, hard-float ABI (the firmware's own
# ARCH_CFLAGS), at the -O2 the issue asks for; sections per function so the size counts only what is linked.
CORTEX_M4F_FLAGS = (
    "-mcpu=cortex-m4",
    "-mthumb",
    "-mfpu=fpv4-sp-d16",
    "-mfloat-abi=hard",
    "-O2",
    "-std=c99",
    "-pedantic",
    "-ffp-contract=off",
    "-ffunction-sections",
    "-fdata-sections",
    "-Wall",
    "-Werror",
)


class ToolchainError(EntropilotError, RuntimeError):
    """A compiler is missing or failed; the message carries its diagnostics."""


def find_host_compiler() -> str | None:
    """``$CC``, else ``cc``, ``gcc`` or ``clang`` on the PATH; None when there is none."""
    for candidate in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if candidate and shutil.which(candidate):
            return candidate
    return None


def build_shared_library(
    sources: list[Path], output: Path, *, flags: tuple[str, ...] = HOST_FLAGS, compiler: str | None = None
) -> Path:
    """Compile ``sources`` into the shared library ``output`` (linked with libm for expf where an activation needs
    it). ToolchainError if there is no compiler or it fails."""
    compiler = compiler or find_host_compiler()
    if compiler is None:
        raise ToolchainError("no C compiler found (set CC, or install gcc or clang)")
    output.parent.mkdir(parents=True, exist_ok=True)
    _run([compiler, *flags, *map(str, sources), "-o", str(output), "-lm"])
    return output


@dataclass(frozen=True)
class Footprint:
    """What one object file takes on the Cortex-M4F, from ``arm-none-eabi-size`` and ``-fstack-usage``."""

    text: int  # bytes of code and const data (flash), the weights included
    data: int  # bytes of initialized data (flash and RAM)
    bss: int  # bytes of zeroed static data (RAM)
    stack: int  # bytes of stack the policy function uses at most (its locals; it calls no function on this target)
    compiler: str  # the compiler's --version first line
    flags: tuple[str, ...]

    @property
    def flash(self) -> int:
        return self.text + self.data

    @property
    def static_ram(self) -> int:
        return self.data + self.bss


def cortex_m4f_footprint(
    source: Path, workdir: Path, function: str = "entropilot_policy", flags: tuple[str, ...] = CORTEX_M4F_FLAGS
) -> Footprint:
    """Cross-compile ``source`` for the Cortex-M4F and measure it. ToolchainError if ``arm-none-eabi-gcc`` is absent
    (Debian: ``apt-get install gcc-arm-none-eabi``)."""
    if shutil.which(CROSS_COMPILER) is None:
        raise ToolchainError(f"{CROSS_COMPILER} not found (Debian/Ubuntu: apt-get install gcc-arm-none-eabi)")
    workdir.mkdir(parents=True, exist_ok=True)
    obj = workdir / (Path(source).stem + ".o")
    _run([CROSS_COMPILER, *flags, "-fstack-usage", "-c", str(source), "-o", str(obj)])
    sizes = _run(["arm-none-eabi-size", "-A", str(obj)])
    sections: dict[str, int] = {}
    for line in sizes.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].startswith(".") and parts[1].isdigit():
            sections[parts[0]] = int(parts[1])

    def total(*prefixes: str) -> int:
        return sum(size for name, size in sections.items() if name.startswith(prefixes))

    usage = obj.with_suffix(".su").read_text()
    match = re.search(rf":{re.escape(function)}\t(\d+)\t", usage)
    if match is None:
        raise ToolchainError(f"no stack usage for {function} in {obj.with_suffix('.su')}:\n{usage}")
    version = _run([CROSS_COMPILER, "--version"]).splitlines()[0]
    return Footprint(
        text=total(".text", ".rodata"),
        data=total(".data"),
        bss=total(".bss"),
        stack=int(match.group(1)),
        compiler=version,
        flags=tuple(flags),
    )


def _run(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise ToolchainError(f"{command[0]}: not found") from None
    if done.returncode != 0:
        raise ToolchainError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr.strip()}")
    return done.stdout
