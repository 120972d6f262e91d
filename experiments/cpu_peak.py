"""The single-precision peak of the CPU the benchmarks run on.

Peak = cores x clock x FLOPs per cycle per core, where FLOPs per cycle are
2 (a fused multiply-add) x the float32 lanes of the FMA datapath x the FMA
pipes. The datapath is not the instruction width: AMD's Zen 4 runs AVX-512
instructions as two 256-bit halves (8 lanes, so 32 FLOPs per cycle with its
two FMA pipes), while Zen 5's server and desktop cores have full 512-bit
pipes (64). So the figure is derived from what the CPU is (vendor, family,
model in ``/proc/cpuinfo``), and said with the reason; a benchmark's
``--peak_gflops`` replaces it where the table is wrong.
"""

from __future__ import annotations

import dataclasses
import os
import statistics


@dataclasses.dataclass(frozen=True)
class Peak:
  gflops: float
  how: str  # How the figure was derived, for the benchmark's report.


def flops_per_cycle(cpuinfo: str) -> tuple[int, str]:
  """float32 FLOPs per cycle of one core, and the reason.

  >>> flops_per_cycle("vendor_id : AuthenticAMD\\ncpu family : 25\\n"
  ...                 "model : 17\\nflags : fma avx2 avx512f")
  (32, 'AMD family 0x19 (Zen 4): AVX-512 on 256-bit halves, 2 FMA pipes x 8 lanes x 2')
  >>> flops_per_cycle("vendor_id : AuthenticAMD\\ncpu family : 26\\n"
  ...                 "model : 2\\nflags : fma avx2 avx512f")[0]
  64
  """
  fields = {}
  for line in cpuinfo.splitlines():
    key, _, value = line.partition(":")
    fields.setdefault(key.strip(), value.strip())
  flags = set(fields.get("flags", "").split())
  vendor = fields.get("vendor_id", "")
  family = int(fields.get("cpu family", "0") or 0)
  model = int(fields.get("model", "0") or 0)
  fma = "fma" in flags

  def pipes(lanes: int, what: str) -> tuple[int, str]:
    return 2 * lanes * (2 if fma else 1), (
        f"{what}, 2 {'FMA' if fma else 'add/multiply'} pipes x {lanes} lanes"
        + (" x 2" if fma else ""))

  where = f"AMD family {family:#x}"
  if vendor == "AuthenticAMD" and family == 0x17:
    return pipes(4 if model < 0x30 else 8,
                 f"{where} (Zen {'1' if model < 0x30 else '2'}): "
                 f"{'128' if model < 0x30 else '256'}-bit FMA datapath")
  if vendor == "AuthenticAMD" and family == 0x19:
    if "avx512f" in flags:
      return pipes(8, f"{where} (Zen 4): AVX-512 on 256-bit halves")
    return pipes(8, f"{where} (Zen 3): 256-bit FMA datapath")
  if vendor == "AuthenticAMD" and family == 0x1A:
    # Mobile Zen 5 (models 0x20-0x2f, 0x60-0x7f) keeps 256-bit pipes.
    if 0x20 <= model <= 0x2F or 0x60 <= model <= 0x7F:
      return pipes(8, f"{where} model {model:#x} (mobile Zen 5): 256-bit "
                      "FMA datapath")
    return pipes(16, f"{where} model {model:#x} (Zen 5): full 512-bit FMA "
                     "datapath")
  if "avx512f" in flags:
    return pipes(16, f"{vendor or 'CPU'} with AVX-512, assuming two 512-bit "
                     "FMA units (some Xeon Silver/Bronze have one)")
  if "avx2" in flags or "avx" in flags:
    return pipes(8, f"{vendor or 'CPU'} with AVX2")
  return pipes(4, f"{vendor or 'CPU'} with SSE")


def cpu_peak(path: str = "/proc/cpuinfo") -> Peak | None:
  """The float32 peak of the CPUs this process may use; None off Linux."""
  try:
    with open(path, encoding="utf-8") as f:
      info = f.read()
  except OSError:
    return None
  mhz = [float(line.split(":")[1]) for line in info.splitlines()
         if line.startswith("cpu MHz")]
  if not mhz:
    return None
  per_cycle, reason = flops_per_cycle(info.split("\n\n")[0])
  cores = len(os.sched_getaffinity(0))
  ghz = statistics.median(mhz) / 1e3
  return Peak(gflops=cores * ghz * per_cycle,
              how=f"{cores} cores x {ghz:.2f} GHz x {per_cycle} FLOPs/cycle: "
                  f"{reason}")
