"""The CPU a benchmark ran on, recorded with every result: one reading of /proc/cpuinfo for all.

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import machine
    machine.describe()  # 'Intel(R) Xeon(R) Processor, 2 cores, AVX-512: yes, bfloat16 (avx512_bf16 / amx_bf16): yes'

Every function takes /proc/cpuinfo's text (default: this machine's), so the parsing is testable.
"""

import os
import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
BFLOAT16_FLAGS = ("avx512_bf16", "amx_bf16")  # bfloat16 arithmetic in hardware: AVX512-BF16 or AMX


def read_cpuinfo() -> str:
    """/proc/cpuinfo's text; empty where there is none (not Linux)."""
    return CPUINFO.read_text() if CPUINFO.exists() else ""


def cpuinfo_field(name: str, cpuinfo: str | None = None) -> str | None:
    """The first processor's `name` field ('model name', 'flags'), None when absent."""
    for line in (read_cpuinfo() if cpuinfo is None else cpuinfo).splitlines():
        key, separator, value = line.partition(":")
        if separator and key.strip() == name:
            return value.strip()
    return None


def cpu_model(cpuinfo: str | None = None) -> str:
    """lscpu's Model name ('model name' in /proc/cpuinfo), else what the platform module says."""
    return cpuinfo_field("model name", cpuinfo) or platform.processor() or platform.machine()


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags ('flags' on x86, 'Features' on ARM)."""
    flags = cpuinfo_field("flags", cpuinfo) or cpuinfo_field("Features", cpuinfo) or ""
    return set(flags.split())


def has_avx512(cpuinfo: str | None = None) -> bool:
    return "avx512f" in cpu_flags(cpuinfo)


def has_bfloat16(cpuinfo: str | None = None) -> bool:
    """True when the CPU has bfloat16 arithmetic (AVX512-BF16 or AMX)."""
    return bool(cpu_flags(cpuinfo) & set(BFLOAT16_FLAGS))


def describe(cpuinfo: str | None = None, cores: int | None = None) -> str:
    """'MODEL, N cores, AVX-512: yes|no, bfloat16 (avx512_bf16 / amx_bf16): yes|no' (cores: os.cpu_count())."""
    cpuinfo = read_cpuinfo() if cpuinfo is None else cpuinfo
    yes_no = {True: "yes", False: "no"}
    return (f"{cpu_model(cpuinfo)}, {cores or os.cpu_count()} cores, AVX-512: {yes_no[has_avx512(cpuinfo)]}, "
            f"bfloat16 ({' / '.join(BFLOAT16_FLAGS)}): {yes_no[has_bfloat16(cpuinfo)]}")
