"""The Generator's waves with prefill and decode in different processes.

Every process runs :meth:`DistributedGenerator.generate` with the same
arguments (the single-program model). Process 0 (``layout.COORDINATOR``)
plans: wave ``w`` (up to ``decode_slots`` prompts, as in
``engine.generate.Generator``) is prefilled by prompt process
``P[w % |P|]`` and decoded by token process ``T[(w // |P|) % |T|]``; the plan
is broadcast through the coordination key-value store. Then every process
walks every wave's transfers (one per prefill group) in plan order, because
JAX needs every process to issue every cross-process transfer in one order
(see ``kv_transfer``):

- the wave's prompt process prefills the group and sends its prefix to the
  wave's token process (serialized or layer-wise as ``cfg.transfer`` says),
  without waiting;
- the wave's token process receives it and inserts the rows; once the wave's
  groups are in, it dispatches ``max_new_tokens - 1`` decode steps and moves
  on, publishing the wave's tokens as soon as they are computed;
- every other process skips the transfer (same device_put, no data);
- finally process 0 collects every wave's tokens.

Each prompt process gets its own engine on the first ``prefill_mesh.size``
devices of that process, each token process on the first
``decode_mesh.size`` of its own (``first_device`` is a single-process
setting and is ignored); both meshes must have one shape. PRNG keys are
derived as in the Generator, so tokens equal a single-process run.

A dead or stopped process surfaces as ``control.PeerFailure`` from any
process's wait; :meth:`DistributedGenerator.lost_requests` then says which
requests were in flight on it and :meth:`completed` what is already done.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import jax
import numpy as np

from splitjax import mesh as mesh_lib
from splitjax.config import ConfigError, GenerateConfig, GenerateMode, SamplingConfig
from splitjax.distributed import kv_transfer
from splitjax.distributed.control import Control
from splitjax.distributed.launch import process_devices
from splitjax.distributed.layout import COORDINATOR, Pool, ProcessLayout
from splitjax.engine import generate as gen_lib
from splitjax.engine.engine import Engine
from splitjax.model.params import ModelDefs, Params


@dataclasses.dataclass(frozen=True)
class DistributedResult:
  """tokens: new token ids per prompt; wall_s: plan to last tokens collected
  (waves overlap: no prefill / decode split); kv_bytes: KV moved across processes."""
  tokens: list[list[int]]
  wall_s: float
  kv_bytes: int


@dataclasses.dataclass(frozen=True)
class WavePlan:
  """Wave ``wave``: requests ``rows`` (indices into the prompts), prefill groups
  (row positions within the wave), and the processes that serve it."""
  wave: int
  rows: tuple[int, ...]
  groups: tuple[tuple[int, ...], ...]
  prompt_process: int
  token_process: int

  @classmethod
  def from_json(cls, d: dict) -> "WavePlan":
    return cls(d["wave"], tuple(d["rows"]), tuple(tuple(g) for g in d["groups"]),
               d["prompt_process"], d["token_process"])


class DistributedGenerator:
  """Generation over a process layout (see module doc). One per process."""

  def __init__(self, cfg: GenerateConfig, defs: ModelDefs, params: Params,
               layout: ProcessLayout, control: Control, timeout_s: float = 300.0,
               on_wave_done: Callable[[int], None] | None = None):
    """``timeout_s`` bounds every wait on another process (with peers alive);
    ``on_wave_done(wave)`` runs after this process finished its part of a wave."""
    if cfg.mode != GenerateMode.SPLIT:
      raise ConfigError("a multi-process run needs mode=split (single runs in one process)")
    if (cfg.prefill_mesh.dp, cfg.prefill_mesh.tp) != (cfg.decode_mesh.dp, cfg.decode_mesh.tp):
      raise ConfigError(f"prompt and token meshes must have one shape across processes, got "
                        f"prefill (dp, tp)=({cfg.prefill_mesh.dp}, {cfg.prefill_mesh.tp}) and "
                        f"decode ({cfg.decode_mesh.dp}, {cfg.decode_mesh.tp})")
    if layout.num_processes != control.num_processes:
      raise ConfigError(f"process layout has {layout.num_processes} processes, the job "
                        f"{control.num_processes}")
    self.cfg, self.layout, self.control = cfg, layout, control
    self.me, self.timeout_s, self.on_wave_done = control.process_id, timeout_s, on_wave_done
    self.channel = kv_transfer.KVChannel(control)
    local = lambda mc: dataclasses.replace(mc, first_device=0)
    self.meshes = {p: mesh_lib.make_mesh(local(cfg.prefill_mesh if pool == Pool.PROMPT
                                               else cfg.decode_mesh), process_devices(p))
                   for p, pool in enumerate(layout.pools)}
    self.pool = layout.pools[self.me]
    self.engine = Engine(defs, cfg.engine, self.meshes[self.me])
    self.params = self.engine.place_params(params)
    self.planner = (self.engine if self.pool == Pool.PROMPT else
                    Engine(defs, cfg.engine, self.meshes[layout.prompt_processes[0]]))
    self._run = 0
    self.plan: list[WavePlan] = []
    self.results: dict[int, dict] = {}

  # ------------------------------------------------------------------ plan
  def _make_plan(self, prompts: list[list[int]]) -> list[dict]:
    """Waves of ``decode_slots`` prompts, prompt / token process round robin."""
    prompt_ps, token_ps = self.layout.prompt_processes, self.layout.token_processes
    slots, plan = self.cfg.engine.decode_slots, []
    for w, start in enumerate(range(0, len(prompts), slots)):
      rows = list(range(start, min(start + slots, len(prompts))))
      groups = gen_lib.prefill_groups(self.planner, [prompts[r] for r in rows],
                                      self.cfg.prefill_token_budget)
      plan.append(dict(wave=w, rows=rows, groups=groups,
                       prompt_process=prompt_ps[w % len(prompt_ps)],
                       token_process=token_ps[(w // len(prompt_ps)) % len(token_ps)]))
    return plan

  def generate(self, prompts: list[list[int]], max_new_tokens: int | None = None,
               sampling: SamplingConfig | None = None) -> "DistributedResult | None":
    """Runs every wave (see module doc). Returns the result on process 0 and
    None elsewhere. Raises engine.PromptError before any work, or the control
    plane's errors (a peer died / stopped, the job was aborted, a timeout)."""
    n_new = max_new_tokens or self.cfg.max_new_tokens
    sampling = sampling or self.cfg.sampling
    for p in prompts:
      self.engine.validate_prompt(p, n_new)
    run, self._run = self._run, self._run + 1
    ns = f"run{run}"
    self.results = {}
    t0 = time.perf_counter()
    plan = self.control.broadcast(f"{ns}/plan", lambda: self._make_plan(prompts), COORDINATOR,
                                  self.timeout_s)
    self.plan = [WavePlan.from_json(w) for w in plan]
    self._walk(ns, prompts, n_new, sampling)
    if self.me == COORDINATOR:
      for w in self.plan:
        self.results[w.wave] = self.control.read(f"{ns}/result/{w.wave}", self.timeout_s)
    self.control.barrier(f"{ns}/done", self.timeout_s)
    if self.me != COORDINATOR:
      return None
    done = self.completed()
    return DistributedResult([done[i] for i in range(len(prompts))], time.perf_counter() - t0,
                             sum(r["kv_bytes"] for r in self.results.values()))

  def _walk(self, ns: str, prompts, n_new: int, sampling: SamplingConfig) -> None:
    """This process's part of every transfer, in plan order: prefill and send,
    receive and decode, or skip; a decoded wave's tokens are published as soon
    as they are ready."""
    key = jax.random.key(sampling.seed)
    decoding: list[_Decoding] = []
    for w in self.plan:
      decoding = [d for d in decoding if not (d.ready() and self._publish(ns, d))]
      wkey = gen_lib.wave_key(key, w.wave)
      if self.me == w.token_process:
        decoding.append(self._receive_and_decode(ns, w, prompts, n_new, wkey))
      elif self.me == w.prompt_process:
        self._prefill_and_send(ns, w, prompts, sampling, wkey)
      else:
        for j in range(len(w.groups)):
          self.channel.skip(w.prompt_process, self.meshes[w.prompt_process], w.token_process,
                            self.meshes[w.token_process], _tag(ns, w, j), self.timeout_s)
    for d in decoding:
      self.control.wait_ready((d.steps, d.firsts), self.timeout_s, f"wave {d.wave.wave}")
      self._publish(ns, d)

  # ------------------------------------------------------------------ waves
  def _prefill_and_send(self, ns: str, w: WavePlan, prompts, sampling, key) -> None:
    """Prefill every group of ``w`` and send it to the wave's token process."""
    dst = self.meshes[w.token_process]
    for j, group in enumerate(w.groups):
      batch = self.engine.make_batch([prompts[w.rows[i]] for i in group],
                                     [sampling] * len(group))
      kv_transfer.prefill_and_send(self.engine, self.params, batch, gen_lib.group_key(key, j),
                                   self.cfg.transfer, self.channel, w.token_process, dst,
                                   _tag(ns, w, j))
    if self.on_wave_done:
      self.on_wave_done(w.wave)

  def _receive_and_decode(self, ns: str, w: WavePlan, prompts, n_new: int, key) -> "_Decoding":
    """Receive ``w``'s prefixes into fresh decode slots and dispatch its decode
    steps (not waiting for them)."""
    de, src = self.engine, self.meshes[w.prompt_process]
    t0 = time.perf_counter()
    state = de.init_decode_state()
    firsts, kv_bytes = [], 0
    for j, group in enumerate(w.groups):
      shape = self.planner.padded_shape([len(prompts[w.rows[i]]) for i in group])
      prefix = self.channel.receive(de.kv_layout, w.prompt_process, src, de.mesh,
                                    _tag(ns, w, j), shape, self.timeout_s)
      for i, slot in enumerate(group):
        state = de.insert(prefix, state, i, slot)
      firsts.append((group, prefix.first_token_B))
      kv_bytes += prefix.kv_nbytes
    steps = []
    for i in range(n_new - 1):
      state, toks = de.decode(self.params, state, gen_lib.step_key(key, i))
      steps.append(toks)
    return _Decoding(w, firsts, steps, kv_bytes, t0)

  def _publish(self, ns: str, d: "_Decoding") -> bool:
    """Publishes a decoded wave's tokens (blocks until they are computed)."""
    n = len(d.wave.rows)
    first = np.zeros(n, np.int64)
    for group, toks in d.firsts:
      first[list(group)] = np.asarray(toks)[:len(group)]
    host = np.concatenate([first[:, None]] + [np.asarray(s)[:n, None] for s in d.steps], axis=1)
    self.control.publish(f"{ns}/result/{d.wave.wave}",
                         dict(tokens=host.tolist(), seconds=time.perf_counter() - d.t0,
                              kv_bytes=d.kv_bytes))
    print(f"process {self.me}: wave {d.wave.wave} (requests {list(d.wave.rows)}) decoded",
          flush=True)
    if self.on_wave_done:
      self.on_wave_done(d.wave.wave)
    return True

  # ------------------------------------------------------------------ failures
  def completed(self) -> dict[int, list[int]]:
    """Request index -> tokens of every wave whose tokens reached this process."""
    by_wave = {w.wave: w for w in self.plan}
    return {r: toks for wave, res in self.results.items()
            for r, toks in zip(by_wave[wave].rows, res["tokens"])}

  def lost_requests(self, dead: tuple[int, ...]) -> dict[int, list[int]]:
    """Dead process -> requests in flight on it (prefilling or decoding there,
    tokens not yet collected)."""
    out: dict[int, list[int]] = {p: [] for p in dead}
    for w in self.plan:
      if w.wave in self.results:
        continue
      for p in dead:
        if p in (w.prompt_process, w.token_process):
          out[p].extend(w.rows)
    return out


def _tag(ns: str, w: WavePlan, group: int) -> str:
  return f"{ns}/wave{w.wave}/group{group}"


@dataclasses.dataclass
class _Decoding:
  """A wave whose decode steps are dispatched on this (token) process."""
  wave: WavePlan
  firsts: list          # (row positions, first tokens of the group)
  steps: list           # per step: tokens_B
  kv_bytes: int
  t0: float

  def ready(self) -> bool:
    return all(a.is_ready() for a in jax.tree.leaves((self.steps, self.firsts))
               if hasattr(a, "is_ready"))
