"""benchmarks/machine.py: the CPU line every benchmark records, read from /proc/cpuinfo's text."""

from helpers import benchmark

machine = benchmark("machine")

PROCESSOR = """processor\t: {index}
vendor_id\t: GenuineIntel
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse sse2 avx avx2 {extra}
vmx flags\t: vnmi preemption_timer avx512f
bugs\t\t: spectre_v1
"""


def cpuinfo(extra, processors=2):
    return "\n".join(PROCESSOR.format(index=index, extra=extra) for index in range(processors))


def test_describe_reads_model_avx512_and_bfloat16():
    text = cpuinfo("avx512f avx512bw amx_bf16 amx_tile")
    assert machine.describe(text, cores=2) == (
        "Intel(R) Xeon(R) Platinum 8480+, 2 cores, AVX-512: yes, bfloat16 (avx512_bf16 / amx_bf16): yes")


def test_describe_says_no_for_flags_that_are_absent_or_only_alike():
    text = cpuinfo("avx512fx avx512_bf16x")  # neither avx512f nor a bfloat16 flag, only names that contain them
    assert machine.describe(text, cores=16).endswith(", 16 cores, AVX-512: no, bfloat16 (avx512_bf16 / amx_bf16): no")
    assert machine.has_bfloat16(cpuinfo("avx512_bf16"))
    assert not machine.has_avx512(cpuinfo("avx512_bf16"))


def test_flags_and_model_are_the_first_processors():
    text = cpuinfo("avx512f") + "\n" + PROCESSOR.format(index=2, extra="other").replace("Platinum 8480+", "Other")
    assert machine.cpu_flags(text) == {"fpu", "sse", "sse2", "avx", "avx2", "avx512f"}
    assert machine.cpu_model(text) == "Intel(R) Xeon(R) Platinum 8480+"


def test_without_a_model_name_the_platform_names_the_cpu(monkeypatch):
    monkeypatch.setattr(machine.platform, "processor", lambda: "")
    monkeypatch.setattr(machine.platform, "machine", lambda: "aarch64")
    text = "processor\t: 0\nFeatures\t: fp asimd sve\nCPU implementer\t: 0x41\n"
    assert machine.cpu_model(text) == "aarch64"
    assert machine.cpu_flags(text) == {"fp", "asimd", "sve"}
    assert machine.describe(text, cores=4) == "aarch64, 4 cores, AVX-512: no, bfloat16 (avx512_bf16 / amx_bf16): no"
