"""Turn a SimConfig into a ready Simulator and its workload (no jax)."""

from __future__ import annotations

from typing import Sequence

from splitjax import workload
from splitjax.config import ConfigError
from splitjax.scheduling.coordinator import Coordinator, make_policies
from splitjax.scheduling.kv_memory import KVMemory
from splitjax.scheduling.records import Instance, Request, Role
from splitjax.serve_config import ClusterPolicy
from splitjax.sim import network
from splitjax.sim.driver import Simulator
from splitjax.sim.hardware import Hardware, get_hardware
from splitjax.sim.perf_model import PerfModel, ProfilePerfModel
from splitjax.sim.roofline import RooflineModel
from splitjax.sim.sim_config import DecodeModel, PerfModelKind, SimConfig


def kv_capacity_tokens(cfg: SimConfig, hw: Hardware) -> int:
  """KV tokens one machine holds: ``cluster.kv_capacity_tokens`` if set, else the
  memory after the weights x kv_memory_fraction."""
  m = cfg.model
  free = hw.machine_memory_bytes - m.param_count() * m.bytes_per_param
  if free <= 0:
    raise ConfigError(f"{m.name} weights ({m.param_count() * m.bytes_per_param / 1e9:.0f} GB) "
                      f"do not fit a {hw.name} ({hw.machine_memory_bytes / 1e9:.0f} GB)")
  fixed = cfg.cluster.kv_capacity_tokens
  if fixed and fixed * m.kv_bytes_per_token() > free:
    raise ConfigError(f"cluster.kv_capacity_tokens={fixed} needs "
                      f"{fixed * m.kv_bytes_per_token() / 1e9:.1f} GB of KV; a {hw.name} has "
                      f"{free / 1e9:.1f} GB after the weights")
  return fixed or int(free * cfg.cluster.kv_memory_fraction) // m.kv_bytes_per_token()


def perf_model(cfg: SimConfig, hw: Hardware) -> PerfModel:
  """The run's perf-model kind (profile / roofline) for ``cfg.model`` on one whole
  ``hw`` machine (tp = its devices): what every instance of that kind uses, and
  what the SLO reference machine uses (``splitjax.sim.slo``)."""
  c = cfg.cluster
  if c.perf_model == PerfModelKind.ROOFLINE:
    return RooflineModel(cfg.model, hw, tp=hw.devices_per_machine)
  return ProfilePerfModel.from_csv(c.profile_path or None, model=cfg.model.name,
                                   hardware=hw.device_name, tp=hw.devices_per_machine,
                                   machine=hw,
                                   batch_only_decode=c.decode_model == DecodeModel.BATCH_ONLY)


def build(cfg: SimConfig, window: Sequence[workload.RequestSpec] | None = None,
          models: dict[str, PerfModel] | None = None
          ) -> tuple[Simulator, list[workload.RequestSpec]]:
  """Instances (one per machine), the coordinator, perf models, the workload
  (``window``: ``workload.trace_window(cfg.workload)`` if the caller has it;
  ``models``: hardware name -> :func:`perf_model` already built for ``cfg``'s
  model and perf settings, filled in with the ones built here)."""
  c, s = cfg.cluster, cfg.scheduler
  specs = workload.build(cfg.workload, cfg.model.max_seq_len, window)   # bad traces fail first
  pools = ([(Role.PROMPT, c.prompt), (Role.TOKEN, c.token)] if s.policy == ClusterPolicy.SPLIT
           else [(Role.COLOCATED, c.colocated)])
  instances, hardware = [], {}
  models = {} if models is None else models
  for role, pool in pools:
    hw = get_hardware(pool.hardware)
    if hw.name not in models:
      models[hw.name] = perf_model(cfg, hw)
    cap = kv_capacity_tokens(cfg, hw)
    for n in range(pool.machines):
      inst = Instance(f"{role.value}{n}", role, KVMemory(cap, s.kv_block_tokens), c.max_batch,
                      cfg.model.max_seq_len)
      instances.append(inst)
      hardware[inst.name] = hw
  coord = Coordinator(instances, make_policies(s), max_prompt_tokens=cfg.model.max_seq_len)

  links: dict[tuple[str, str], network.KVLink] = {}

  def transfer(r: Request, src: Instance, dst: Instance, prefill_s: float):
    kinds = hardware[src.name], hardware[dst.name]
    link = links.get((kinds[0].name, kinds[1].name))
    if link is None:
      link = links[kinds[0].name, kinds[1].name] = network.KVLink(
          cfg.model, *kinds, c.transfer, c.layerwise_min_tokens)
    return link.exposed_time(r.prompt_tokens, prefill_s), link.nbytes(r.prompt_tokens)

  perf = {i.name: models[hardware[i.name].name] for i in instances}
  sim = Simulator(coord, perf, transfer, leap=cfg.leap, sample_every_s=cfg.sample_every_s,
                  check_memory=cfg.check_memory)
  return sim, specs
