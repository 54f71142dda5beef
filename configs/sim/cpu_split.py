"""configs/split.py as a simulation: 2 prompt + 2 token `cpu-host` instances of
`tiny` on the same slice of the Azure conversation trace, priced by a profile of
our engine on this machine (``scripts/sim_vs_real.py`` writes it, then compares).

  python scripts/sim_vs_real.py --output_dir runs/sim_vs_real
  python scripts/simulate.py --config configs/sim/cpu_split.py --output_dir runs/sim_cpu_split \\
      --config.cluster.profile_path=runs/sim_vs_real/profile_solo.csv

Every setting comes from the serving config (:func:`mirror_serve_config`), so the
two cannot drift apart:
- model: the serving preset with max_seq_len = the engine's max_cache_len (what one
  real instance holds per request: prompt + output fit one decode slot);
- cluster: one `cpu-host` machine per serving instance; max_batch = the engine's
  decode_slots; transfer mode and layerwise_min_tokens as served; KV capacity per
  instance = the serving cluster's (cluster.kv_capacity_tokens, or decode_slots x
  max_cache_len tokens), set explicitly (the real engine's cache is far smaller than
  the machine's memory);
- scheduler and workload: copied; the SLO reference is the same `cpu-host`.
"""

from splitjax.config_defaults import section, serve_config
from splitjax.serve_config_presets import cpu_engine, cpu_workload


def get_config():
  c = serve_config("tiny", cpu_engine(), policy="split")
  c.workload.update(cpu_workload())
  return mirror_serve_config(c)


def mirror_serve_config(serve, profile_path: str = "", hardware: str = "cpu-host"):
  """The SimConfig ConfigDict of the serving ConfigDict ``serve``, any policy (split:
  its prompt / token instance counts; co-located: its colocated count): each serving
  instance becomes one ``hardware`` machine. ``profile_path`` "" ->
  runs/sim_vs_real/profile_solo.csv in the repository."""
  import dataclasses

  import ml_collections

  from splitjax import cli
  from splitjax.config import from_config_dict
  from splitjax.serve_config import ServeConfig
  from splitjax.sim.sim_config import PoolConfig, SimClusterConfig, SLOConfig

  s = from_config_dict(ServeConfig, serve)
  slots, positions = s.engine.decode_slots, s.engine.max_cache_len or s.model.max_seq_len
  model = dataclasses.replace(s.model, max_seq_len=positions)
  kv_tokens = s.cluster.kv_capacity_tokens or slots * positions
  c = ml_collections.ConfigDict()
  c.model = section(model)
  c.cluster = section(SimClusterConfig(
      prompt=PoolConfig(s.cluster.prompt_instances, hardware),
      token=PoolConfig(s.cluster.token_instances, hardware),
      colocated=PoolConfig(s.cluster.colocated_instances, hardware),
      profile_path=profile_path or cli.repo_path("runs", "sim_vs_real", "profile_solo.csv"),
      transfer=s.cluster.transfer, layerwise_min_tokens=s.engine.layerwise_min_tokens,
      kv_capacity_tokens=kv_tokens, max_batch=slots))
  c.scheduler = section(s.scheduler)
  c.workload = section(s.workload)
  c.slo = section(SLOConfig(reference_hardware=hardware))
  c.leap = True
  c.sample_every_s = s.sample_every_s
  return c
