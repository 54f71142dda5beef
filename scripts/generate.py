"""Prefill on one device mesh, move the KV cache, decode on another.

  python scripts/generate.py --config configs/generate_tiny.py \
      --prompt_ids 1,2,3,4 --prompt_ids 9,8,7 --max_new_tokens 16 \
      --mode split --transfer layerwise --output_json out.json

Across processes (prompt pool in some, token pool in others; see
``splitjax.distributed``), e.g. two local processes:

  python scripts/launch_local.py -n 2 -- scripts/generate.py --mode split \
      --prompt_ids 1,2,3,4 --output_json out.json

Every process runs this same program; process 0 plans, prints and writes
``--output_json``. The job's coordinates come from ``--coordinator_address``
/ ``--num_processes`` / ``--process_id`` (or the ``SPLITJAX_*`` variables the
launcher sets, or ``--detect_cluster``); ``--process_pools`` says which pool
each process serves (default: first half prompt, rest token). If a process
dies or stops, the others exit with code 3 naming it, process 0 lists the
requests that were in flight on it and writes the finished ones.

``--checkpoint DIR`` loads a Hugging Face Llama directory (config.json +
*.safetensors) or a splitjax orbax checkpoint; without it the config's model
preset gets random weights (seeded by --config.seed).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import signal
import sys
from pathlib import Path

from absl import app, flags, logging

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from splitjax import cli  # noqa: E402
from splitjax.distributed import launch  # noqa: E402

_CONFIG = cli.define_config(cli.repo_path("configs", "generate_tiny.py"), "Generation config file.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "HF Llama dir or splitjax checkpoint dir.")
_PROMPTS = flags.DEFINE_multi_string("prompt_ids", ["1,2,3,4,5,6,7,8"],
                                     "Comma-separated token ids; repeat for a batch.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", None, "Overrides config.max_new_tokens.")
_MODE = flags.DEFINE_enum("mode", None, ["split", "single"], "Overrides config.mode.")
_TRANSFER = flags.DEFINE_enum("transfer", None, ["serialized", "layerwise", "auto"],
                              "Overrides config.transfer.")
_OUTPUT = flags.DEFINE_string("output_json", None, "Write {'tokens': [[...], ...]} here.")
_DEVICES = flags.DEFINE_integer("num_cpu_devices", 8, "Virtual CPU devices (CPU only; in a "
                                "multi-process job $SPLITJAX_CPU_DEVICES wins).")
_WARMUP = flags.DEFINE_bool("warmup", True, "Run once first so printed timings exclude "
                            "compilation.")
_DIST = launch.define_flags()
_POOLS = flags.DEFINE_string("process_pools", None, "Multi-process: pool of each process, e.g. "
                             "prompt,token (default: first half prompt, the rest token).")
_WAIT = flags.DEFINE_float("wait_timeout_s", 300.0, "Multi-process: longest wait on another "
                           "process that is alive.")


class Fault(enum.Enum):
  """Testing aid: what --fault_process does to itself after --fault_after_wave."""
  NONE = "none"
  KILL = "kill"    # SIGKILL: the process dies
  STOP = "stop"    # SIGSTOP: the process hangs (stops heart-beating)


_FAULT = flags.DEFINE_enum_class("fault", Fault.NONE, Fault, "Testing: fault to inject.")
_FAULT_PROCESS = flags.DEFINE_integer("fault_process", 1, "Testing: process that faults.")
_FAULT_WAVE = flags.DEFINE_integer("fault_after_wave", 0, "Testing: fault once this process "
                                   "finished its part of this wave (of the measured run).")
FAILED_EXIT = 3


def load_model(checkpoint: str | None, cfg):
  """(ModelDefs, Params, GenerateConfig with the model actually loaded)."""
  from splitjax.model.loading import load_model as load
  defs, params, model = load(checkpoint, cfg.model, cfg.seed)
  return defs, params, dataclasses.replace(cfg, model=model)


def load_inputs():
  """(cfg, prompts, defs, params) from the flags."""
  from splitjax.config import GenerateConfig, from_config_dict
  overrides = {"max_new_tokens": _MAX_NEW.value, "mode": _MODE.value, "transfer": _TRANSFER.value}
  cfg = from_config_dict(GenerateConfig, {**_CONFIG.value.to_dict(),
                                          **{k: v for k, v in overrides.items() if v is not None}})
  prompts = [cli.parse_ids(p) for p in _PROMPTS.value]
  defs, params, cfg = load_model(_CHECKPOINT.value, cfg)
  return cfg, prompts, defs, params


def report(cfg, prompts, result, meshes: str, timing: str) -> None:
  """Prints the run and writes --output_json."""
  print(f"model {cfg.model.name}: {cfg.model.num_layers} layers, {cfg.model.param_count() / 1e6:.1f}M "
        f"params, {cfg.model.dtype.value}")
  print(meshes)
  for p, toks in zip(prompts, result.tokens):
    print(f"prompt[{len(p)}] -> {toks}")
  print(timing)
  if _OUTPUT.value:
    Path(_OUTPUT.value).write_text(json.dumps({"tokens": result.tokens}))
    print(f"wrote {_OUTPUT.value}")


def describe_meshes(cfg, gen) -> str:
  devices = lambda e: [d.id for d in e.mesh.devices.flat]
  pe, de = gen.prefill_engine, gen.decode_engine
  lines = [f"prefill mesh: devices {devices(pe)} {dict(pe.mesh.shape)}"]
  if cfg.mode.value == "split":
    how = {"serialized": "serialized after prefill",
           "layerwise": f"layer-wise, {pe.group_size} layer(s) per prefill program",
           "auto": f"layer-wise ({pe.group_size} layer(s) per program) from "
                   f"{cfg.engine.layerwise_min_tokens} tokens, serialized below"}[cfg.transfer.value]
    lines.append(f"decode mesh:  devices {devices(de)} {dict(de.mesh.shape)}; KV transfer: {how}")
  else:
    lines.append("decode on the same mesh (single mode, no transfer)")
  return "\n".join(lines)


def run_single() -> int:
  from splitjax.engine.generate import Generator
  cfg, prompts, defs, params = load_inputs()
  gen = Generator(cfg, defs, params)
  if _WARMUP.value:
    gen.generate(prompts)
  result = gen.generate(prompts)
  report(cfg, prompts, result, describe_meshes(cfg, gen),
         f"prefill+transfer {result.prefill_s * 1e3:.1f} ms, decode {result.decode_s * 1e3:.1f} ms "
         f"({len(prompts) * (len(result.tokens[0]) - 1) / max(result.decode_s, 1e-9):.1f} tok/s), "
         f"KV {result.kv_bytes / 2**20:.2f} MiB")
  return 0


def fault_hook(process_id: int):
  """on_wave_done callback injecting --fault (install it after the warm-up)."""
  if _FAULT.value == Fault.NONE or process_id != _FAULT_PROCESS.value:
    return None
  seen = []
  def hook(wave: int):
    seen.append(wave)
    if len(seen) == _FAULT_WAVE.value + 1:
      print(f"process {process_id}: injecting fault {_FAULT.value.value}", flush=True)
      os.kill(os.getpid(), signal.SIGKILL if _FAULT.value == Fault.KILL else signal.SIGSTOP)
  return hook


def on_failure(err, gen, control, prompts) -> None:
  """Reports a dead / stopped peer or an abort and ends this process (code 3)."""
  from splitjax.distributed.control import PeerFailure
  from splitjax.distributed.layout import COORDINATOR
  me = control.process_id
  if me != COORDINATOR or gen is None:
    print(f"error: process {me}: {err}", file=sys.stderr, flush=True)
    control.leave(FAILED_EXIT)
  lost = gen.lost_requests(err.dead) if isinstance(err, PeerFailure) else {}
  done = gen.completed()
  lines = [f"error: {err}"]
  lines += [f"  requests in flight on process {p} ({gen.layout.pools[p].value} pool): {rs}"
            for p, rs in lost.items()]
  lines.append(f"  completed: {len(done)} of {len(prompts)} requests")
  control.abort("; ".join(lines))
  if _OUTPUT.value:
    tokens = [done.get(i) for i in range(len(prompts))]
    Path(_OUTPUT.value).write_text(json.dumps(
        {"tokens": tokens, "error": str(err), "lost": {str(p): r for p, r in lost.items()}}))
    lines.append(f"  wrote the completed requests to {_OUTPUT.value}")
  print("\n".join(lines), file=sys.stderr, flush=True)
  control.leave(FAILED_EXIT)


def run_distributed(spec: launch.DistributedSpec) -> int:
  """This process's part of a multi-process run; bad input aborts every process."""
  from splitjax.config import ConfigError
  from splitjax.distributed.control import Control, ControlError
  from splitjax.distributed.generate import DistributedGenerator
  from splitjax.distributed.layout import COORDINATOR, ProcessLayout
  from splitjax.engine.engine import PromptError
  from splitjax.model.hf_import import CheckpointError
  info = launch.initialize(spec)
  control = Control.from_jax(heartbeat_timeout_s=spec.heartbeat_timeout_s)
  control.start()
  gen, prompts = None, []
  try:
    cfg, prompts, defs, params = load_inputs()
    layout = ProcessLayout.parse(_POOLS.value, info.num_processes)
    gen = DistributedGenerator(cfg, defs, params, layout, control, _WAIT.value)
    if _WARMUP.value:
      gen.generate(prompts)
    gen.on_wave_done = fault_hook(info.process_id)
    result = gen.generate(prompts)
  except ControlError as e:
    on_failure(e, gen, control, prompts)
  except (ConfigError, PromptError, CheckpointError, ValueError) as e:
    control.abort(f"process {info.process_id}: {e}")
    print(f"error: {e}", file=sys.stderr, flush=True)
    # Every process finds bad input itself; process 0 waits (bounded) for slow
    # peers to say so too before it takes the coordination service down.
    control.leave(2, timeout_s=45.0)
  if info.process_id == COORDINATOR:
    where = lambda pool: [f"p{p}: devices {[d.id for d in gen.meshes[p].devices.flat]}"
                          for p in getattr(layout, f"{pool}_processes")]
    report(cfg, prompts, result,
           f"{info.num_processes} processes ({layout.describe()}); prompt meshes "
           f"{where('prompt')}, token meshes {where('token')} {dict(gen.engine.mesh.shape)}; "
           f"KV transfer across processes: {cfg.transfer.value}",
           f"wall {result.wall_s * 1e3:.1f} ms from plan to last tokens (waves overlap), "
           f"KV {result.kv_bytes / 2**20:.2f} MiB moved across processes")
  control.finish()
  return 0


def main(argv):
  del argv
  from splitjax.config import ConfigError
  from splitjax.engine.engine import PromptError
  from splitjax.model.hf_import import CheckpointError
  cli.use_cpu_devices(_DEVICES.value)
  try:
    spec = launch.spec_from_flags(_DIST)
    return run_distributed(spec) if spec.multi_process else run_single()
  except (ConfigError, PromptError, CheckpointError, ValueError) as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
