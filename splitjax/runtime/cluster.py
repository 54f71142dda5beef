"""A serving cluster built from a ServeConfig: the programmatic entry point.

  cluster = Cluster(cfg, defs, params)                 # meshes, engines, weights placed
  result = cluster.replay(specs)                       # a workload on the wall clock
  tokens = cluster.generate([[1, 2, 3], [4, 5]], 8)    # prompts in, greedy tokens out

Instances are carved from the devices in order, ``cfg.cluster.instance_mesh``
devices each (prompt instances first in SPLIT). Scheduling state is fresh for
every call; engines, placed weights and compiled programs are kept.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Iterable, Sequence

import jax

from splitjax import mesh as mesh_lib
from splitjax import transfer
from splitjax.config import MeshConfig
from splitjax.engine.chunked import ChunkSpec
from splitjax.engine.engine import Engine, PromptError
from splitjax.model.params import ModelDefs, Params
from splitjax.runtime.clock import WallClock
from splitjax.runtime.faults import InstanceFault, TransferFaults
from splitjax.runtime.jax_executor import JaxExecutor, Replica
from splitjax.runtime.loop import RunResult, replay
from splitjax.runtime.online import OnlineEngine
from splitjax.runtime.online_types import EngineObserver, ModelLimits, OnlineLimits
from splitjax.scheduling.coordinator import (Coordinator, home_roles, make_instances,
                                             make_policies)
from splitjax.scheduling.records import Request, Role
from splitjax.serve_config import ClusterPolicy, ServeConfig
from splitjax.metrics import RequestStatus
from splitjax.workload import RequestSpec, prompt_token_ids


class Cluster:
  """Replicas on disjoint meshes plus the policies of ``cfg.scheduler``."""

  def __init__(self, cfg: ServeConfig, defs: ModelDefs, params: Params,
               devices: Sequence[jax.Device] | None = None):
    self.cfg = cfg
    c, s = cfg.cluster, cfg.scheduler
    self.roles = home_roles(s, c.prompt_instances, c.token_instances, c.colocated_instances)
    meshes = [mesh_lib.make_mesh(m, devices) for m in instance_mesh_configs(cfg)]
    mesh_lib.check_disjoint(*meshes)
    self.engines = [Engine(defs, cfg.engine, m) for m in meshes]
    self.params = [e.place_params(params) for e in self.engines]
    self.names = [i.name for i in self._instances()]
    eng = self.engines[0]
    self.max_request_tokens = eng.max_cache_len
    self.max_prompt_tokens = min(max(cfg.engine.prefill_buckets), eng.max_cache_len)

  # ------------------------------------------------------------------ build
  def _instances(self):
    return scheduling_instances(self.cfg, self.engines[0])

  def _replicas(self) -> list[Replica]:
    key = jax.random.key(self.cfg.seed)
    return [Replica(n, e, p, e.init_decode_state(), jax.random.fold_in(key, i))
            for i, (n, e, p) in enumerate(zip(self.names, self.engines, self.params))]

  # ------------------------------------------------------------------ run
  def replay(self, specs: Sequence[RequestSpec],
             prompt_ids: Callable[[Request], list[int]] | None = None, *,
             progress: Callable[[int, int], None] | None = None,
             faults: Sequence[InstanceFault] = (),
             transfer_faults: TransferFaults | None = None,
             transfer_retries: int = 2) -> RunResult:
    """Serves ``specs`` (arrivals in seconds from now) on the wall clock.

    Prompts are ``workload.prompt_token_ids`` (random, seeded by
    ``cfg.prompt_seed``) unless ``prompt_ids`` is given; generation is greedy
    and forced to each request's output length. ``faults`` / ``transfer_faults``
    inject instance and KV-transfer failures (``runtime.faults``).
    """
    vocab = self.engines[0].model.vocab_size
    if prompt_ids is None:
      by_id = {s.request_id: s for s in specs}
      prompt_ids = lambda r: prompt_token_ids(by_id[r.request_id], vocab, self.cfg.prompt_seed)
    coord = Coordinator(self._instances(), make_policies(self.cfg.scheduler),
                        self.max_prompt_tokens)
    executor = JaxExecutor(self._replicas(), prompt_ids, self.cfg.cluster.transfer,
                           transfer_faults=transfer_faults)
    with _CompileCounter() as compiled:
      result = replay(coord, executor, specs, WallClock(),
                      sample_every_s=self.cfg.sample_every_s, progress=progress,
                      faults=faults, transfer_retries=transfer_retries)
    result.compiles, result.compile_s = compiled.count, compiled.seconds
    return result

  def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[list[int]]:
    """Greedy ``max_new_tokens`` tokens for every prompt (all arrive at once).

    Raises PromptError (before any work) if a prompt is empty, has an id out
    of the vocabulary, or cannot fit with its new tokens.
    """
    if max_new_tokens <= 0:
      raise PromptError(f"max_new_tokens must be positive, got {max_new_tokens}")
    prompts = [list(p) for p in prompts]
    for p in prompts:
      self.engines[0].validate_prompt(p, max_new_tokens)
      if len(p) > self.max_prompt_tokens:
        raise PromptError(f"prompt of {len(p)} tokens exceeds the longest prompt an instance "
                          f"prefills ({self.max_prompt_tokens})")
    specs = [RequestSpec(i, 0.0, len(p), max_new_tokens) for i, p in enumerate(prompts)]
    result = self.replay(specs, lambda r: prompts[r.request_id])
    bad = [r for r in result.records if r.status != RequestStatus.COMPLETED]
    if bad:
      raise RuntimeError(f"{len(bad)} prompts did not complete, e.g. request "
                         f"{bad[0].request_id}: {bad[0].status.value}: {bad[0].reason}")
    return [r.token_ids for r in result.records]

  @property
  def model_limits(self) -> ModelLimits:
    """What one request may ask of this cluster (vocabulary, prompt, context)."""
    return ModelLimits(self.engines[0].model.vocab_size, self.max_prompt_tokens,
                       self.max_request_tokens)

  def online(self, limits: OnlineLimits = OnlineLimits(),
             observer: EngineObserver | None = None) -> OnlineEngine:
    """An online engine over this cluster (fresh scheduling state and decode
    states; weights and compiled programs shared). Call ``start()`` on it."""
    coord = Coordinator(self._instances(), make_policies(self.cfg.scheduler),
                        self.max_prompt_tokens)
    replicas = self._replicas()
    return OnlineEngine(
        coord, lambda ids, sampling: JaxExecutor(replicas, ids, self.cfg.cluster.transfer,
                                                 sampling=sampling),
        self.model_limits, limits, observer)

  # ------------------------------------------------------------------ warm-up
  def warmup(self, prompt_lengths: Iterable[int]) -> tuple[int, float]:
    """Compiles (by running once on dummy data) the programs a workload with
    these prompt lengths will use, so compile time stays out of the
    measurements. Returns (prompt buckets warmed, seconds). Rare shapes
    (unusual batch paddings) still compile on first use."""
    t0 = time.perf_counter()
    e0, s = self.engines[0], self.cfg.scheduler
    buckets = sorted({e0.bucket_for(n) for n in prompt_lengths if n <= self.max_prompt_tokens})
    replicas = self._replicas()
    split = s.policy == ClusterPolicy.SPLIT
    tokens = [r for r, role in zip(replicas, self.roles) if role == Role.TOKEN]
    for rep, role in zip(replicas, self.roles):
      if s.policy == ClusterPolicy.COLOCATED_CHUNKED:
        self._warm_chunks(rep)
      elif role != Role.TOKEN or s.mixed_pool:     # mixed-pool token instances prefill too
        for t in buckets:
          self._warm_prefill(rep, t, tokens if split else [rep])
      rep.state, tok = rep.engine.decode(rep.params, rep.state, rep.next_key())
      rep.state = rep.engine.release(rep.state, 0)
    jax.block_until_ready([r.state for r in replicas])
    return len(buckets), time.perf_counter() - t0

  def _batch_sizes(self, t: int) -> list[int]:
    return warm_batch_sizes(self.cfg.scheduler, t)

  def _warm_prefill(self, rep: Replica, t: int, dsts: list[Replica]) -> None:
    eng = rep.engine
    layerwise_too = any(d is not rep for d in dsts) and transfer.use_layerwise(
        self.cfg.cluster.transfer, t, eng.cfg.layerwise_min_tokens)
    for b in self._batch_sizes(t):
      batch = eng.make_batch([[0] * t] * b)
      for lw in ((False, True) if layerwise_too else (False,)):
        prefix = eng.prefill(rep.params, batch, rep.next_key(), layerwise=lw)
        for dst in dsts:
          one = prefix if dst is rep else transfer.to_engine(transfer.row_prefix(prefix, 0),
                                                             dst.engine)
          dst.state = dst.engine.insert(one, dst.state, 0, 0)
          dst.state = dst.engine.release(dst.state, 0)
        jax.block_until_ready(prefix)

  def _warm_chunks(self, rep: Replica) -> None:
    eng, budget = rep.engine, self.cfg.scheduler.chunk_token_budget
    sizes = [b for b in self.cfg.engine.prefill_buckets if b <= budget] or [budget]
    for c in sizes:
      for p in (1, 2, 4):
        specs = [ChunkSpec(slot=i, tokens=[0] * c, start=0, last=False) for i in range(p)]
        rep.state, _, first = eng.mixed_step(rep.params, rep.state, eng.make_chunks(specs),
                                             rep.next_key())
        jax.block_until_ready(first)
    for i in range(4):
      rep.state = eng.release(rep.state, i)


class _CompileCounter:
  """Counts XLA compilations (and their seconds) while the block runs, via
  ``jax.monitoring`` (persistent-cache hits are not compilations)."""
  EVENT = "/jax/core/compile/backend_compile_duration"

  def __enter__(self):
    self.count, self.seconds = 0, 0.0
    jax.monitoring.register_event_duration_secs_listener(self._on_event)
    return self

  def __exit__(self, *exc):
    jax.monitoring.unregister_event_duration_listener(self._on_event)

  def _on_event(self, event: str, duration: float, **_):
    if event == self.EVENT:
      self.count += 1
      self.seconds += duration


def scheduling_instances(cfg: ServeConfig, engine: Engine):
  """The coordinator's instances of ``cfg`` (home roles, slots and KV capacity
  of ``engine``, which every instance shares)."""
  c, s = cfg.cluster, cfg.scheduler
  roles = home_roles(s, c.prompt_instances, c.token_instances, c.colocated_instances)
  cap = c.kv_capacity_tokens or engine.cfg.decode_slots * engine.max_cache_len
  return make_instances(roles, engine.cfg.decode_slots, cap, engine.max_cache_len,
                        s.kv_block_tokens)


def warm_batch_sizes(scheduler, t: int) -> list[int]:
  """Padded prefill batch sizes warmed for prompts of bucket ``t``: powers of
  two up to 4 that the token budget allows (larger batches are rare with
  trace-like lengths and compile on first use)."""
  most = max(1, min(4, scheduler.max_prefill_batch, scheduler.prompt_token_budget // t))
  return [b for b in (1, 2, 4) if b <= most]


def instance_mesh_configs(cfg: ServeConfig) -> list[MeshConfig]:
  """The mesh of every instance, in order (for display)."""
  size = cfg.cluster.instance_mesh.size
  return [dataclasses.replace(cfg.cluster.instance_mesh,
                              first_device=cfg.cluster.instance_mesh.first_device + i * size)
          for i in range(cfg.num_instances)]
