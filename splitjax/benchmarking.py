"""Measurement helpers for ``scripts/bench_*.py`` (never used by tests).

The machines we run on are shared: another busy process slowed decode 4-8x.
Every benchmark therefore first checks that the machine is quiet (CPU time
used by *other* processes), says so in its output, and reports speeds as
ratios to peaks measured in the same run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:                  # the quiet check and best_time need no jax
  import jax


@dataclasses.dataclass(frozen=True)
class QuietCheck:
  """Other processes' CPU use over a sampling window, in cores (0 = idle)."""
  other_cores: float
  window_s: float
  cores: int

  @property
  def quiet(self) -> bool:
    return self.other_cores < 0.15

  def describe(self) -> str:
    state = "quiet" if self.quiet else "BUSY: timings are unreliable"
    return (f"machine check: other processes used {self.other_cores:.2f} of {self.cores} "
            f"cores over {self.window_s:.1f}s ({state})")


def _proc_busy_ticks() -> tuple[int, int]:
  """(busy ticks of the whole machine, ticks of this process) from /proc."""
  with open("/proc/stat") as f:
    fields = [int(x) for x in f.readline().split()[1:]]
  idle = fields[3] + fields[4]  # idle + iowait
  with open("/proc/self/stat") as f:
    own = f.read().rsplit(")", 1)[1].split()
  return sum(fields[:8]) - idle, int(own[11]) + int(own[12])


def check_quiet(window_s: float = 2.0) -> QuietCheck:
  """Measures CPU used by other processes while this one sleeps.

  Reads /proc (Linux). Elsewhere falls back to the 1-minute load average.
  """
  cores = os.cpu_count() or 1
  try:
    busy0, own0 = _proc_busy_ticks()
    time.sleep(window_s)
    busy1, own1 = _proc_busy_ticks()
  except OSError:
    return QuietCheck(os.getloadavg()[0], 60.0, cores)
  hz = os.sysconf("SC_CLK_TCK")
  other = max(0, (busy1 - busy0) - (own1 - own0)) / hz / window_s
  return QuietCheck(other, window_s, cores)


def write_results(path: str | os.PathLike, results: dict) -> None:
  """Writes a benchmark's results as indented JSON (creating the folder) and says so."""
  out = Path(path)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(results, indent=2))
  print(f"wrote {out}")


def best_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
  """Minimum wall seconds of ``fn()`` (which must block until done)."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return min(times)


def matmul_peak_flops(device: jax.Device, n: int = 2048, dtype=None) -> float:
  """Achieved FLOP/s of one n x n x n matmul on ``device`` (best of 5; float32 default)."""
  import jax
  import jax.numpy as jnp
  dtype = jnp.float32 if dtype is None else dtype
  a = jax.device_put(jnp.ones((n, n), dtype) * 0.5, device)
  b = jax.device_put(jnp.ones((n, n), dtype) * 0.25, device)
  mm = jax.jit(lambda x, y: x @ y)
  t = best_time(lambda: mm(a, b).block_until_ready())
  return 2.0 * n ** 3 / t


def stream_read_bandwidth(device: jax.Device, nbytes: int = 512 * 2 ** 20) -> float:
  """Bytes/s of a jitted full reduction over an ``nbytes`` float32 array."""
  import jax
  import jax.numpy as jnp
  x = jax.device_put(jnp.ones((nbytes // 4,), jnp.float32), device)
  total = jax.jit(jnp.sum)
  t = best_time(lambda: total(x).block_until_ready())
  return nbytes / t


def dispatch_overhead(device: jax.Device) -> float:
  """Seconds to dispatch and finish a trivial jitted program on ``device``."""
  import jax
  import jax.numpy as jnp
  x = jax.device_put(jnp.ones((8,), jnp.float32), device)
  f = jax.jit(lambda v: v + 1)
  return best_time(lambda: f(x).block_until_ready(), repeats=50, warmup=5)
