"""A serving cluster whose instances live in several processes.

  cluster = DistributedCluster(cfg, defs, params, layout, control)   # every process
  cluster.warmup(s.prompt_tokens for s in specs)                     # every process
  result = cluster.replay(specs)     # process 0: RunResult; others: None

Every process runs the same program (the single-program model). Instances
are placed by ``placement`` (prompt instances on prompt processes, token
instances on token processes), each process building engines only for its
own. Process 0 runs the unchanged driver loop (``runtime.loop``) with the
coordinator and a :class:`~splitjax.distributed.policy_side.RemoteExecutor`;
every other process applies the published ops to its
:class:`~splitjax.distributed.instance_side.InstanceSide` in order
(:func:`serve_ops`) and publishes what finished, until the STOP op. KV moves
between processes with ``jax.device_put`` in one job-wide order
(``kv_transfer``). Greedy tokens equal the single-process cluster's
(``runtime.Cluster``): same instances, PRNG streams and prompts.

A dead or stopped peer raises :class:`LostPeer` on process 0 (with what had
finished and what was in flight on the dead processes) and ``PeerFailure``
elsewhere.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable, Sequence

import jax

from splitjax import mesh as mesh_lib
from splitjax import transfer
from splitjax.distributed.control import Control, PeerFailure
from splitjax.distributed.instance_side import InstanceSide
from splitjax.distributed.kv_transfer import KVChannel
from splitjax.distributed.launch import process_devices
from splitjax.distributed.layout import COORDINATOR, ProcessLayout
from splitjax.distributed.placement import local_mesh_config, place_instances
from splitjax.distributed.policy_side import RemoteExecutor
from splitjax.distributed.wire import Op, OpKind
from splitjax.engine.engine import Engine
from splitjax.metrics import RequestStatus, summarize
from splitjax.model.params import ModelDefs, Params
from splitjax.runtime.clock import WallClock
from splitjax.runtime.jax_executor import Replica
from splitjax.runtime.loop import Run, RunResult, drive
from splitjax.runtime.online import OnlineEngine
from splitjax.runtime.online_types import EngineObserver, ModelLimits, OnlineLimits
from splitjax.runtime.cluster import scheduling_instances, warm_batch_sizes
from splitjax.scheduling.coordinator import Coordinator, make_policies
from splitjax.scheduling.records import Role
from splitjax.serve_config import ServeConfig
from splitjax.workload import RequestSpec, prompt_token_ids


class LostPeer(Exception):
  """Process 0's view of a dead or stopped peer: ``result`` covers every
  request (those that had not finished end FAILED, saying why) and ``lost``
  maps each dead process to the ids of the requests in flight on its instances."""

  def __init__(self, error: PeerFailure, result: RunResult, lost: dict[int, list[int]]):
    super().__init__(str(error))
    self.error, self.result, self.lost = error, result, lost


class DistributedCluster:
  """The instances of ``cfg`` over the processes of ``layout`` (module doc).
  ``timeout_s`` bounds every wait on a live peer."""

  def __init__(self, cfg: ServeConfig, defs: ModelDefs, params: Params, layout: ProcessLayout,
               control: Control, timeout_s: float = 300.0):
    self.cfg, self.layout, self.control, self.timeout_s = cfg, layout, control, timeout_s
    self.me = control.process_id
    devices = [process_devices(p) for p in range(layout.num_processes)]
    placed = place_instances(cfg, layout, [len(d) for d in devices])
    self.placement = {pl.name: pl for pl in placed}
    self.meshes = {pl.name: mesh_lib.make_mesh(local_mesh_config(cfg.cluster.instance_mesh, pl),
                                               devices[pl.process]) for pl in placed}
    self.local = [pl for pl in placed if pl.process == self.me]
    self.engines = {pl.name: Engine(defs, cfg.engine, self.meshes[pl.name]) for pl in self.local}
    self.params = {n: e.place_params(params) for n, e in self.engines.items()}
    self.channel = KVChannel(control)
    eng = next(iter(self.engines.values()))
    self.vocab_size, self.max_request_tokens = eng.model.vocab_size, eng.max_cache_len
    self.max_prompt_tokens = min(max(cfg.engine.prefill_buckets), eng.max_cache_len)
    self._runs = 0
    self._online: RemoteExecutor | None = None

  @property
  def names(self) -> list[str]:
    return list(self.placement)

  def describe(self) -> list[str]:
    """One line per instance: name, process, local devices."""
    return [f"{pl.name:<10} process {pl.process} devices {list(pl.devices)} "
            f"(dp={self.cfg.cluster.instance_mesh.dp}, tp={self.cfg.cluster.instance_mesh.tp})"
            for pl in self.placement.values()]

  def _replicas(self) -> list[Replica]:
    key = jax.random.key(self.cfg.seed)
    return [Replica(pl.name, e, self.params[pl.name], e.init_decode_state(),
                    jax.random.fold_in(key, pl.index))
            for pl in self.local for e in (self.engines[pl.name],)]

  def _coordinator(self) -> Coordinator:
    instances = scheduling_instances(self.cfg, next(iter(self.engines.values())))
    return Coordinator(instances, make_policies(self.cfg.scheduler), self.max_prompt_tokens)

  # ------------------------------------------------------------------ run
  def replay(self, specs: Sequence[RequestSpec], *,
             progress: Callable[[int, int], None] | None = None,
             on_op: Callable[[int], None] | None = None) -> RunResult | None:
    """Serves ``specs`` on the wall clock (see ``runtime.Cluster.replay``;
    prompts are ``workload.prompt_token_ids``). Every process calls it;
    returns the result on process 0, None elsewhere. Raises LostPeer on
    process 0, control-plane errors elsewhere. ``on_op(n)``: called on
    processes other than 0 after they applied their ``n``-th op (tests)."""
    ns = self._next_ns()
    side = self._side()
    if self.me != COORDINATOR:
      serve_ops(side, self.control, ns, on_op=on_op)
      return None
    by_id = {s.request_id: s for s in specs}
    ids = lambda r: prompt_token_ids(by_id[r.request_id], self.vocab_size, self.cfg.prompt_seed)
    peers = [p for p in range(self.layout.num_processes) if p != self.me]
    ex = RemoteExecutor(self.control, ns, side, peers, ids)
    clock = WallClock()
    run = Run(self._coordinator(), ex, specs, clock, self.cfg.sample_every_s)
    try:
      result = drive(run, progress=progress)
    except PeerFailure as e:
      raise LostPeer(e, _cut_short(run, clock.now(), str(e)), self._in_flight(run, e.dead)) from e
    ex.stop()
    return result

  # ------------------------------------------------------------------ online
  @property
  def model_limits(self) -> ModelLimits:
    return ModelLimits(self.vocab_size, self.max_prompt_tokens, self.max_request_tokens)

  def online(self, limits: OnlineLimits = OnlineLimits(),
             observer: EngineObserver | None = None) -> OnlineEngine:
    """Process 0: an online engine (``runtime.online``) whose executor drives
    every process; the others must call :meth:`serve_instances` meanwhile.
    End with ``engine.stop()`` then :meth:`stop_online`."""
    ns = self._next_ns()
    side = self._side()
    peers = [p for p in range(self.layout.num_processes) if p != self.me]

    def make(ids, sampling):
      self._online = RemoteExecutor(self.control, ns, side, peers, ids, sampling)
      return self._online
    return OnlineEngine(self._coordinator(), make, self.model_limits, limits, observer)

  def serve_instances(self) -> None:
    """Processes other than 0: serve the online engine's ops until it stops."""
    serve_ops(self._side(), self.control, self._next_ns())

  def stop_online(self) -> None:
    """Process 0, after ``engine.stop()``: tells the others to stop serving."""
    if self._online is not None:
      self._online.stop()
      self._online = None

  def _next_ns(self) -> str:
    """Key namespace of the next run (every process counts runs alike)."""
    self._runs += 1
    return f"serve{self._runs - 1}"

  def _side(self) -> InstanceSide:
    return InstanceSide(self.me, self.placement, self.meshes, self._replicas(), self.channel,
                        self.cfg.cluster.transfer, self.timeout_s)

  def _in_flight(self, run: Run, dead: Sequence[int]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {p: [] for p in dead}
    for r in run.coord.requests_in_flight():
      for p in dead:
        where = {self.placement[n].process for n in (r.prompt_instance, r.token_instance) if n}
        if p in where:
          out[p].append(r.request_id)
    return {p: sorted(ids) for p, ids in out.items()}

  # ------------------------------------------------------------------ warm-up
  def warmup(self, prompt_lengths: Iterable[int]) -> tuple[int, float]:
    """Compiles this process's programs for these prompt lengths (as
    ``runtime.Cluster.warmup``, without moving KV between processes): prompt
    instances prefill every bucket (layer-wise too where the transfer mode
    asks) and slice rows for sending; token instances insert a one-row
    prefix of every bucket and decode. Returns (buckets, seconds)."""
    t0 = time.perf_counter()
    s, mode = self.cfg.scheduler, self.cfg.cluster.transfer
    eng0 = next(iter(self.engines.values()))
    buckets = sorted({eng0.bucket_for(n) for n in prompt_lengths if n <= self.max_prompt_tokens})
    for rep in self._replicas():
      eng, role = rep.engine, self.placement[rep.name].role
      for t in buckets:
        # a layer-wise prefill's prefix has one KV group per layer group: the
        # token side inserts (and the prompt side slices) both structures
        lw = (False, True) if transfer.use_layerwise(mode, t, eng.cfg.layerwise_min_tokens) \
            else (False,)
        if role == Role.PROMPT or s.mixed_pool:
          for b in warm_batch_sizes(s, t):
            for layerwise in lw:
              prefix = eng.prefill(rep.params, eng.make_batch([[0] * t] * b), rep.next_key(),
                                   layerwise=layerwise)
              jax.block_until_ready(transfer.row_prefix(prefix, 0))
        if role == Role.TOKEN:
          for layerwise in lw:
            prefix = eng.prefill(rep.params, eng.make_batch([[0] * t]), rep.next_key(),
                                 layerwise=layerwise)
            one = transfer.row_prefix(prefix, 0)
            rep.state = eng.release(eng.insert(one, rep.state, 0, 0), 0)
      rep.state, _ = eng.decode(rep.params, rep.state, rep.next_key())
      rep.state = eng.release(rep.state, 0)
      jax.block_until_ready(rep.state)
    return len(buckets), time.perf_counter() - t0


def _cut_short(run: Run, wall_s: float, why: str) -> RunResult:
  """``run``'s result when it cannot go on: unfinished requests end FAILED with ``why``."""
  records = [run.records[k] for k in sorted(run.records)]
  for rec in records:
    if rec.status == RequestStatus.PENDING:
      rec.finish(RequestStatus.FAILED, f"run stopped: {why}")
  return RunResult(records, summarize(records, wall_s), run.timeline,
                   list(run.coord.role_changes))


def serve_ops(side: InstanceSide, control: Control, ns: str, idle_wait_s: float = 0.05,
              on_op: Callable[[int], None] | None = None) -> None:
  """An instance process's loop: applies ``<ns>/op/<seq>`` in order, publishes
  finished work and landed KV as ``<ns>/ev/<me>/<n>`` batches, until the
  STOP op. Raises PeerFailure / JobAborted (peers are checked between ops;
  an idle process waits for the next op at most ``idle_wait_s`` at a time)."""
  seq, batch, me = 0, 0, control.process_id
  t0 = time.perf_counter()
  while True:
    raw = control.try_get(f"{ns}/op/{seq}")
    if raw is None and not side.busy:
      raw = control.wait_for(f"{ns}/op/{seq}", idle_wait_s)
    now = time.perf_counter() - t0
    if raw is not None:
      op = Op.from_json(raw)
      if op.kind == OpKind.STOP:
        return
      side.apply(op, now)
      seq += 1
      if on_op is not None:
        on_op(seq)
    messages = side.poll(now)
    if messages:
      control.publish(f"{ns}/ev/{me}/{batch}", [m.to_json() for m in messages])
      batch += 1
    control.check()
    if raw is None and side.busy:
      time.sleep(0.001)
