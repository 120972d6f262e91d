"""The CPU peak of the benchmarks, from what the CPU is."""

import pytest

from experiments import cpu_peak


def cpuinfo(vendor, family, model, flags):
  return (f"vendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: "
          f"{model}\nflags\t\t: {flags}\n")


@pytest.mark.parametrize("info, flops", [
    # AMD Zen 4 (EPYC 9004 "Genoa"): AVX-512 executed as two 256-bit halves.
    (cpuinfo("AuthenticAMD", 25, 17, "fma avx2 avx512f avx512_bf16"), 32),
    # Zen 3: AVX2, two 256-bit FMA pipes.
    (cpuinfo("AuthenticAMD", 25, 1, "fma avx2"), 32),
    # Zen 2 and Zen 1.
    (cpuinfo("AuthenticAMD", 23, 49, "fma avx2"), 32),
    (cpuinfo("AuthenticAMD", 23, 1, "fma avx2"), 16),
    # Zen 5 server ("Turin") and desktop: full 512-bit pipes; mobile: 256.
    (cpuinfo("AuthenticAMD", 26, 2, "fma avx2 avx512f"), 64),
    (cpuinfo("AuthenticAMD", 26, 68, "fma avx2 avx512f"), 64),
    (cpuinfo("AuthenticAMD", 26, 36, "fma avx2 avx512f"), 32),
    # Intel with AVX-512 (two FMA units assumed) and with AVX2.
    (cpuinfo("GenuineIntel", 6, 143, "fma avx2 avx512f"), 64),
    (cpuinfo("GenuineIntel", 6, 158, "fma avx2"), 32),
])
def test_flops_per_cycle_follow_the_fma_datapath(info, flops):
  got, how = cpu_peak.flops_per_cycle(info)
  assert got == flops, how


def test_peak_of_this_machine_says_how(tmp_path):
  path = tmp_path / "cpuinfo"
  path.write_text(cpuinfo("AuthenticAMD", 25, 17, "fma avx2 avx512f")
                  + "cpu MHz\t\t: 2600.000\n\n")
  peak = cpu_peak.cpu_peak(str(path))
  cores = peak.how.split()[0]
  assert peak.gflops == pytest.approx(int(cores) * 2.6 * 32)
  assert "Zen 4" in peak.how and "256-bit halves" in peak.how
