"""One probe of the provisioning search and the cache of outcomes (no jax): a
:class:`ProbeOutcome`, the :class:`Probe` protocol, :class:`CachedProbe` (a
file per outcome keyed by :func:`cache_key`), and the simulator as a probe
(:class:`SimProbe`, run per :class:`ProbeSettings`).

A probe is any callable ``probe(layout, rate) -> ProbeOutcome`` with a
``key(layout, rate)`` describing, as JSON, everything the outcome depends on:
:class:`SimProbe` runs the simulator; tests inject fakes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol

from splitjax.config import to_plain_dict
from splitjax.provision_layout import Layout, ProvisionError
from splitjax.serve_config import ClusterPolicy
from splitjax.sim.sim_config import PerfModelKind, PoolConfig, SimConfig
from splitjax.sim.window import MeasureWindow

# Bump when what a cached outcome means changes (not needed for config or input
# file changes: those change the key). 4: leap mode no longer leaps a borrowed
# instance with prompts queued (StepPolicy.repeats_decode): heavily borrowing
# layouts simulate as stepping does. 5: early stops use sound bounds (tokens a
# running leap emitted were missed, which could overstate a latency bound) and
# also stop once every check is certain to hold. 6: the mixed pool no longer
# returns a lent prompt instance while it prefills a request it decodes itself
# (that request never decoded and failed at the end).
CACHE_VERSION = 6


class CacheMiss(LookupError):
  """An offline :class:`CachedProbe` has no outcome for this probe."""


@dataclasses.dataclass(frozen=True)
class ProbeOutcome:
  """One simulation at ``rate`` (req/s): ``met`` = all nine SLOs held;
  ``requests`` simulated, ``failed`` of them failed or rejected; ``failing``
  names the SLO checks that did not hold (e.g. ``tbt_p90``)."""
  rate: float
  met: bool
  requests: int
  failed: int = 0
  failing: tuple[str, ...] = ()

  @property
  def feasible(self) -> bool:
    """All SLOs met and every request completed."""
    return self.met and self.failed == 0

  def to_dict(self) -> dict:
    return dataclasses.asdict(self) | {"failing": list(self.failing)}

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> ProbeOutcome:
    return cls(float(d["rate"]), bool(d["met"]), int(d["requests"]), int(d["failed"]),
               tuple(d["failing"]))


class Probe(Protocol):
  def __call__(self, layout: Layout, rate: float) -> ProbeOutcome: ...

  def key(self, layout: Layout, rate: float) -> Mapping[str, Any]:
    """Everything the outcome depends on, as JSON-able data."""


def cache_key(probe: Probe, layout: Layout, rate: float) -> str:
  """Stable hash (sha256 hex) of the probe's inputs."""
  text = json.dumps({"version": CACHE_VERSION, "probe": probe.key(layout, rate)},
                    sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class CachedProbe:
  """``probe`` with outcomes kept as ``directory/<cache_key>.json``; ``offline``
  raises CacheMiss instead of running ``probe``. Files are written atomically,
  so concurrent workers may share the directory."""
  probe: Probe
  directory: Path
  offline: bool = False

  def key(self, layout: Layout, rate: float) -> Mapping[str, Any]:
    return self.probe.key(layout, rate)

  def __call__(self, layout: Layout, rate: float) -> ProbeOutcome:
    path = Path(self.directory) / f"{cache_key(self.probe, layout, rate)}.json"
    try:
      return ProbeOutcome.from_dict(json.loads(path.read_text())["outcome"])
    except (OSError, ValueError, KeyError, TypeError):
      pass                                    # absent or unreadable: probe again
    if self.offline:
      raise CacheMiss(path.name)
    out = self.probe(layout, rate)
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {"layout": layout.to_dict(), "rate": rate, "outcome": out.to_dict(),
             "inputs": self.probe.key(layout, rate)}
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
      json.dump(entry, f, sort_keys=True)
    os.replace(tmp, path)
    return out


@dataclasses.dataclass(frozen=True)
class ProbeSettings:
  """One probe: Poisson arrivals at the probed rate, (prompt, output) sizes
  resampled from the base config's trace window (seeded by ``seed``): all
  arrivals within ``requests / rate`` seconds (about ``requests`` of them) but
  at least ``min_duration_s``, or within ``duration_s`` if ``requests`` is 0.

  Judged: the requests arriving from ``measure_from`` to ``measure_to`` x that
  span (``sim.window``); the rest only load the cluster (queues fill at the
  start and drain at the end). The simulation stops once the verdict on the
  judged requests is certain, so a window costs no accuracy.
  """
  requests: int = 1000
  duration_s: float = 0.0
  # Steady state (measured on the conversation trace, whose requests decode for
  # tens of seconds): 120 s of arrivals judged from 25% to 75% gives the max
  # rates of 20,000-request probes; 5000-request whole-probe verdicts were up
  # to 35% high.
  min_duration_s: float = 120.0
  measure_from: float = 0.25
  measure_to: float = 0.75
  seed: int = 0

  def __post_init__(self):
    if self.requests < 0 or self.duration_s < 0 or (self.requests > 0) == (self.duration_s > 0):
      raise ProvisionError("probe: give probe.requests > 0 or probe.duration_s > 0 (not both)")
    if self.min_duration_s < 0:
      raise ProvisionError("probe.min_duration_s must be >= 0")
    if not 0.0 <= self.measure_from < self.measure_to <= 1.0:
      raise ProvisionError("probe: need 0 <= measure_from < measure_to <= 1")

  def horizon_s(self, rate: float) -> float:
    """Seconds of arrivals at ``rate`` req/s."""
    return max(self.requests / rate, self.min_duration_s) if self.requests else self.duration_s

  @property
  def window(self) -> MeasureWindow:
    return MeasureWindow(self.measure_from, self.measure_to)


def probe_config(base: SimConfig, layout: Layout, rate: float,
                 settings: ProbeSettings) -> SimConfig:
  """``base`` with ``layout``'s pools (the others emptied) and the probe's workload."""
  split = base.scheduler.policy == ClusterPolicy.SPLIT
  if split != (layout.colocated is None):
    raise ProvisionError(f"layout {layout.label} ({layout.design.value}) does not fit "
                         f"scheduler.policy={base.scheduler.policy.value}")
  pool = lambda p: PoolConfig(p.machines, p.kind) if p else PoolConfig(0)
  cluster = dataclasses.replace(base.cluster, prompt=pool(layout.prompt),
                                token=pool(layout.token), colocated=pool(layout.colocated))
  workload = dataclasses.replace(base.workload, rate=rate,
                                 rate_duration_s=settings.horizon_s(rate), seed=settings.seed)
  return dataclasses.replace(base, cluster=cluster, workload=workload)


def _fingerprint(path: Path) -> str:
  try:
    return hashlib.sha256(path.read_bytes()).hexdigest()
  except OSError:
    return "missing"


@dataclasses.dataclass(frozen=True)
class SimProbe:
  """Simulates ``probe_config(base, layout, rate, settings)`` and checks the SLOs.
  ``inputs``: (file, sha256) of the trace, the profile and the machine catalog
  (part of the cache key); :meth:`create` fills them in."""
  base: SimConfig
  settings: ProbeSettings = ProbeSettings()
  inputs: tuple[tuple[str, str], ...] = ()
  # Trace windows read so far (the workload with its rate fields zeroed -> the
  # requests sizes are drawn from): a pure function of the trace file, kept so
  # that the probes of one process parse it once.
  windows: dict = dataclasses.field(default_factory=dict, init=False, compare=False,
                                    repr=False)
  # Perf models built so far, by hardware name (for the base config's model and
  # perf settings, which every probe shares): parsed once per process.
  models: dict = dataclasses.field(default_factory=dict, init=False, compare=False, repr=False)

  @classmethod
  def create(cls, base: SimConfig, settings: ProbeSettings = ProbeSettings()) -> SimProbe:
    from splitjax.sim.hardware import DEFAULT_CATALOG
    from splitjax.sim.perf_model import default_profile_path
    from splitjax.workload import shared_trace_path
    w, c = base.workload, base.cluster
    files = [Path(w.trace) if w.trace.endswith(".csv")
             else shared_trace_path(w.trace, w.data_dir or None), DEFAULT_CATALOG]
    if c.perf_model == PerfModelKind.PROFILE:
      files.append(Path(c.profile_path) if c.profile_path else default_profile_path())
    return cls(base, settings, tuple((str(f), _fingerprint(f)) for f in files))

  def key(self, layout: Layout, rate: float) -> Mapping[str, Any]:
    cfg = probe_config(self.base, layout, rate, self.settings)
    w = self.settings.window
    return {"config": to_plain_dict(cfg), "inputs": [list(i) for i in self.inputs],
            "measure": [w.start, w.end]}

  def __call__(self, layout: Layout, rate: float) -> ProbeOutcome:
    """Simulates the probe until the verdict on its judged requests is certain."""
    from splitjax.metrics import RequestStatus
    from splitjax.sim import slo
    from splitjax.sim.build import build
    from splitjax.sim.window import CertainVerdict, shortest_steps
    cfg = probe_config(self.base, layout, rate, self.settings)
    sim, specs = build(cfg, self._window(cfg), self.models)
    judged = self.settings.window.judged(specs, self.settings.horizon_s(rate))
    reference = slo.reference_perf_model(cfg, self.models)
    models = list({id(m): m for m in sim.perf.values()}.values())
    longest = max((s.prompt_tokens + s.output_tokens for s in judged), default=0)
    stop = CertainVerdict(sim, judged, slo.reference_latencies(
        reference, [s.prompt_tokens for s in judged], [s.output_tokens for s in judged]),
        cfg.slo, min_step_s=shortest_steps(models, longest),
        every_s=self.settings.horizon_s(rate) / 40)
    result = sim.run(specs, stop=stop)
    if stop.passed:                     # stopped early: certain to hold
      return ProbeOutcome(rate, True, len(specs))
    ids = {s.request_id for s in judged}
    records = [r for r in result.records if r.request_id in ids]
    failed = sum(r.status != RequestStatus.COMPLETED for r in records)
    if stop.failing:                    # stopped early: certain to fail
      return ProbeOutcome(rate, False, len(specs), failed, (stop.failing,))
    report = slo.check(slo.slowdowns(records, reference), cfg.slo)
    return ProbeOutcome(rate, report.met, len(specs), failed,
                        tuple(c.name for c in report.checks if not c.met))

  def _window(self, cfg: SimConfig):
    """``workload.trace_window`` of ``cfg``'s workload, read once per window."""
    from splitjax import workload
    key = dataclasses.replace(cfg.workload, rate=0.0, rate_duration_s=0.0, seed=0)
    if key not in self.windows:
      self.windows[key] = workload.trace_window(cfg.workload)
    return self.windows[key]

  def check(self, layouts: Iterable[Layout]) -> None:
    """Fails early (ConfigError, TraceError, HardwareError, PerfModelError,
    ProvisionError) on what every probe would fail on: the workload, each machine
    kind's perf model and KV room, the SLO reference machine."""
    from splitjax import workload
    from splitjax.sim import slo
    from splitjax.sim.build import kv_capacity_tokens, perf_model
    from splitjax.sim.hardware import get_hardware
    layouts = list(layouts)
    cfg = probe_config(self.base, layouts[0], 1.0, self.settings)
    workload.build(cfg.workload, cfg.model.max_seq_len)
    slo.reference_perf_model(cfg)
    for kind in dict.fromkeys(p.kind for lay in layouts for p in lay.pools):
      hw = get_hardware(kind)
      perf_model(cfg, hw)
      kv_capacity_tokens(cfg, hw)
