"""The generated C on a Cortex-M4F: flash, RAM and stack from the cross compiler, and a cycle estimate from the
instructions one policy call executes on an emulated STM32F405 (QEMU's netduinoplus2, the Crazyflie's MCU), each
weighted with its cycle count from the Cortex-M4 Technical Reference Manual. QEMU does not model timing; the trace
gives the exact instruction sequence and the manual the cost of each."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from entropilot.deploy.c_toolchain import CORTEX_M4F_FLAGS, CROSS_COMPILER

QEMU = "qemu-system-arm"
CLOCK_HZ = 168e6  # STM32F405 at its rated clock, as the Crazyflie 2.x runs it
FLASH_WAIT_STATES = 5  # STM32F405 FLASH_ACR latency at 168 MHz and 2.7-3.6 V (reference manual RM0090, table 10)

HARNESS = """\
#include "policy.h"
extern unsigned _estack;
void Reset_Handler(void);
__attribute__((section(".isr_vector"), used)) void (*const vectors[2])(void) = {
    (void (*)(void))&_estack, Reset_Handler};
static const float obs[ENTROPILOT_OBSERVATION_SIZE] = {%(observation)s};
static void semihost(int op, const void *arg)
{
  register int r0 __asm("r0") = op;
  register const void *r1 __asm("r1") = arg;
  __asm volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
}
__attribute__((noinline)) void run_policy(float *action) { entropilot_policy(obs, action); }
void Reset_Handler(void)
{
  *(volatile unsigned *)0xE000ED88 |= 0xFu << 20; /* CPACR: the FPU on */
  __asm volatile("dsb\\n isb");
  float action[ENTROPILOT_ACTION_SIZE];
  run_policy(action);
  char text[9 * ENTROPILOT_ACTION_SIZE + 1];
  for (int i = 0; i < ENTROPILOT_ACTION_SIZE; i++) { /* the bits, in hex, on the semihosting console */
    union { float f; unsigned u; } value = {action[i]};
    const unsigned bits = value.u;
    for (int k = 0; k < 8; k++) text[9 * i + k] = "0123456789abcdef"[(bits >> (28 - 4 * k)) & 0xF];
    text[9 * i + 8] = ' ';
  }
  text[9 * ENTROPILOT_ACTION_SIZE] = 0;
  semihost(0x04, text);            /* SYS_WRITE0 */
  semihost(0x18, (void *)0x20026); /* SYS_EXIT, ADP_Stopped_ApplicationExit */
  for (;;) {}
}
"""
LINKER_SCRIPT = """\
MEMORY { FLASH (rx) : ORIGIN = 0x08000000, LENGTH = 1024K
         RAM (rwx)  : ORIGIN = 0x20000000, LENGTH = 128K }
_estack = ORIGIN(RAM) + LENGTH(RAM);
SECTIONS {
  .isr_vector : { KEEP(*(.isr_vector)) } > FLASH
  .text : { *(.text*) *(.rodata*) } > FLASH
  .bss (NOLOAD) : { *(.bss*) *(COMMON) } > RAM
}
"""

# Cycles per instruction, Cortex-M4 TRM (ARM DDI 0439B) table 3-1 and the FPU's table 7-1. P, the pipeline refill
# after a taken branch, is 1 to 3 cycles: P_TAKEN is its upper end, so the estimate errs high.
P_TAKEN = 3
_FIXED = {
    "vdiv": 14,
    "vsqrt": 14,
    "vmla": 3,
    "vmls": 3,
    "vnmla": 3,
    "vnmls": 3,
    "vfma": 3,
    "vfms": 3,
    "vldr": 2,
    "vstr": 2,
    "ldr": 2,
    "ldrb": 2,
    "ldrh": 2,
    "ldrd": 3,
    "str": 2,
    "strb": 2,
    "strh": 2,
    "strd": 3,
    "sdiv": 12,
    "udiv": 12,
    "mla": 2,
    "mls": 2,
}
_MULTIPLE = ("vldmia", "vldmdb", "vstmia", "vstmdb", "vpush", "vpop", "ldmia", "ldm", "stmia", "stm", "stmdb")
_MULTIPLE += ("push", "pop")
_BRANCHES = ("b", "bl", "bx", "blx", "cbz", "cbnz")
_CONDITIONS = ("eq", "ne", "cs", "hs", "cc", "lo", "mi", "pl", "vs", "vc", "hi", "ls", "ge", "lt", "gt", "le", "al")


@dataclass(frozen=True)
class CycleEstimate:
    instructions: int  # executed by one entropilot_policy call
    core_cycles: int  # with zero-wait memory
    flash_cycles: int  # plus FLASH_WAIT_STATES on every 16-byte line of constants read from flash
    action_bits: list[str]  # the action's float32 bits as the emulated M4F computed them, hex

    @property
    def core_us(self) -> float:
        return self.core_cycles / CLOCK_HZ * 1e6

    @property
    def flash_us(self) -> float:
        return self.flash_cycles / CLOCK_HZ * 1e6


def available() -> str | None:
    """None if the cross compiler and QEMU are installed, else what is missing."""
    missing = [tool for tool in (CROSS_COMPILER, QEMU) if shutil.which(tool) is None]
    return f"{', '.join(missing)} not installed (Debian: gcc-arm-none-eabi, qemu-system-arm)" if missing else None


def estimate(policy_c: Path, observation, workdir: Path) -> CycleEstimate:
    """Build ``policy_c`` (its policy.h beside it) into a bare-metal image, run one call on the emulated STM32F405,
    and weigh the executed instructions."""
    workdir.mkdir(parents=True, exist_ok=True)
    main = workdir / "main.c"
    main.write_text(HARNESS % {"observation": ", ".join(f"{float(v)!r}f" for v in observation)})
    (workdir / "m4.ld").write_text(LINKER_SCRIPT)
    elf = workdir / "m4.elf"
    flags = [f for f in CORTEX_M4F_FLAGS if f != "-pedantic"]  # the harness uses inline assembly
    link = ["-nostdlib", "-nostartfiles", "-T", str(workdir / "m4.ld"), "-Wl,--gc-sections"]
    _run([CROSS_COMPILER, *flags, f"-I{policy_c.parent}", *link, str(main), str(policy_c), "-o", str(elf)])
    trace = workdir / "trace.log"
    qemu = [QEMU, "-M", "netduinoplus2", "-nographic", "-semihosting-config", "enable=on,target=native"]
    # QEMU writes the semihosting console to its stderr.
    console = _run([*qemu, "-kernel", str(elf), "-singlestep", "-d", "exec,nochain", "-D", str(trace)], stderr=True)
    instructions = _disassembly(elf)
    ranges = _policy_ranges(elf)
    pcs = [int(m.group(1), 16) for m in re.finditer(r"\[[0-9a-f]+/([0-9a-f]+)/", trace.read_text())]
    count, cycles = 0, 0
    for pc, following in zip(pcs, pcs[1:]):
        if not any(lo <= pc < hi for lo, hi in ranges):
            continue
        size, mnemonic, operands = instructions[pc]
        count += 1
        cycles += _cycles(mnemonic, operands, taken=following != pc + size)
    constants = _constant_bytes(elf)
    flash = cycles + FLASH_WAIT_STATES * -(-constants // 16)
    return CycleEstimate(count, cycles, flash, console.split())


def _cycles(mnemonic: str, operands: str, taken: bool) -> int:
    name = mnemonic.split(".")[0]
    if name not in _FIXED and name not in _MULTIPLE and name not in _BRANCHES and name[-2:] in _CONDITIONS:
        name = name[:-2]
    if name in _BRANCHES or (name == "pop" and "pc" in operands):
        registers = operands.count(",") + 1 if name == "pop" else 0
        return 1 + registers + (P_TAKEN if taken else 0)
    if name in _MULTIPLE:
        listed = re.search(r"\{(.*)\}", operands)
        registers = sum(_register_count(part) for part in listed.group(1).split(",")) if listed else 1
        return 1 + registers
    return _FIXED.get(name, 1)


def _register_count(part: str) -> int:
    if "-" not in part:
        return 1
    lo, hi = (int(re.sub(r"\D", "", r)) for r in part.split("-"))
    return hi - lo + 1


def _disassembly(elf: Path) -> dict[int, tuple[int, str, str]]:
    out = {}
    for line in _run(["arm-none-eabi-objdump", "-d", str(elf)]).splitlines():
        m = re.match(r"\s*([0-9a-f]+):\s+((?:[0-9a-f]{4} ?)+)\s+(\S+)\s*(.*)", line)
        if m:
            size = 2 * len(m.group(2).split())
            out[int(m.group(1), 16)] = (size, m.group(3), m.group(4))
    return out


def _symbols(elf: Path) -> list[tuple[int, int, str, str]]:
    rows = []
    for line in _run(["arm-none-eabi-nm", "-S", str(elf)]).splitlines():
        parts = line.split()
        if len(parts) == 4:
            rows.append((int(parts[0], 16), int(parts[1], 16), parts[2], parts[3]))
    return rows


def _policy_ranges(elf: Path) -> list[tuple[int, int]]:
    """The code of entropilot_policy and its helpers (ep_*), Thumb bit cleared."""
    return [
        (address & ~1, (address & ~1) + size)
        for address, size, kind, name in _symbols(elf)
        if kind in "tT" and (name == "entropilot_policy" or name.startswith("ep_"))
    ]


def _constant_bytes(elf: Path) -> int:
    """Bytes of the policy's constants (ep_c* arrays) in flash: each is read once per call."""
    return sum(size for _, size, kind, name in _symbols(elf) if kind in "rRtT" and re.fullmatch(r"ep_c\d+", name))


def float_bits(values) -> list[str]:
    return [f"{struct.unpack('<I', struct.pack('<f', float(v)))[0]:08x}" for v in values]


def _run(command: list[str], stderr: bool = False) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])} ... failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return done.stderr if stderr else done.stdout
