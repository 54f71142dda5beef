"""Engine speed on this machine, as ratios to peaks measured in the same run.

  python scripts/bench_engine.py --output_json bench_results/bench_engine.json

Sections (each prints a table; all go into the JSON):
  peaks     f32 matmul FLOP/s and streaming-read bytes/s of one device
  prefill   tokens/s at T = 128/512/2048 (batch 1), FLOP/s as a fraction of peak
  decode    step time at batch 1/8/32 with 1024 cached positions per sequence;
            bytes actually needed (weights + live KV) / time as a fraction of
            the streaming-read bandwidth
  transfer  KV transfer serialized vs layer-wise: time to KV-on-decode-mesh and
            the fraction of the copy hidden behind the prefill
  vs_hf     the same `small` weights under transformers' greedy generate vs our
            split pipeline on the same requests (prompt 512, 128 new tokens)

Meshes are one device each (prefill on device 0, decode on device 4): with 2
physical cores, tensor parallelism over virtual devices only adds collectives.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from splitjax import cli  # noqa: E402

_OUT = flags.DEFINE_string("output_json", "bench_results/bench_engine.json", "JSON output.")
_MODELS = flags.DEFINE_list("models", ["tiny", "small"], "Presets for prefill/decode.")
_SECTIONS = flags.DEFINE_multi_enum("sections", ["prefill", "decode", "transfer", "vs_hf"],
                                    ["prefill", "decode", "transfer", "vs_hf"],
                                    "Sections to run (repeatable).")
_HF_BATCHES = flags.DEFINE_list("hf_batches", ["1", "8", "32"], "Batches for vs_hf.")
_REQUIRE_QUIET = flags.DEFINE_bool("require_quiet", False, "Abort if the machine is busy.")


def table(title: str, rows: list[dict]) -> None:
  print(f"\n== {title}")
  if not rows:
    return
  cols = list(rows[0])
  fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)
  widths = [max(len(c), *(len(fmt(r[c])) for r in rows)) for c in cols]
  print("  ".join(c.rjust(w) for c, w in zip(cols, widths)))
  for r in rows:
    print("  ".join(fmt(r[c]).rjust(w) for c, w in zip(cols, widths)))


def _engine(preset: str, first_device: int, **engine_kw):
  from splitjax import mesh as mesh_lib
  from splitjax.config import EngineConfig, MeshConfig
  from splitjax.engine.engine import Engine
  from splitjax.model.llama import init_model
  from splitjax.model.params import split_model
  from splitjax.model.presets import get_preset
  defs, params = split_model(init_model(get_preset(preset)))
  e = Engine(defs, EngineConfig(**engine_kw), mesh_lib.make_mesh(MeshConfig(first_device=first_device)))
  return e, e.place_params(params)


def bench_prefill(preset: str, peak: float) -> list[dict]:
  import jax
  from splitjax.benchmarking import best_time
  e, p = _engine(preset, 0, decode_slots=1, max_cache_len=2048)
  rows = []
  for t in (128, 512, 2048):
    batch = e.make_batch([list(range(1, t + 1))])
    key = jax.random.key(0)
    s = best_time(lambda: jax.block_until_ready(e.prefill(p, batch, key)), repeats=3)
    flops = e.model.prefill_flops(t)
    rows.append(dict(model=preset, T=t, ms=s * 1e3, tok_per_s=t / s,
                     gflop_per_s=flops / s / 1e9, frac_of_peak=flops / s / peak))
  return rows


def bench_decode(preset: str, bandwidth: float) -> list[dict]:
  import jax
  import jax.numpy as jnp
  from splitjax.benchmarking import best_time
  rows = []
  for b in (1, 8, 32):
    e, p = _engine(preset, 4, decode_slots=b, max_cache_len=1024)
    state = e.init_decode_state()
    # every slot holds 1023 cached positions; the step writes the 1024th
    state = dataclasses.replace(state, lengths_B=jnp.full((b,), 1023, jnp.int32),
                                active_B=jnp.zeros((b,), bool))
    holder = [state]
    key = jax.random.key(0)

    def step():
      holder[0], toks = e.decode(p, holder[0], key)
      toks.block_until_ready()
    s = best_time(step, repeats=10, warmup=2)
    m = e.model
    weights = (m.param_count() - (0 if m.tie_embeddings else m.vocab_size * m.hidden_size)) \
        * m.bytes_per_param  # the embedding table is gathered (B rows), not streamed
    kv = b * 1024 * m.kv_bytes_per_token()
    rows.append(dict(model=preset, batch=b, step_ms=s * 1e3, tok_per_s=b / s,
                     gb_needed=(weights + kv) / 1e9, gb_per_s=(weights + kv) / s / 1e9,
                     frac_of_bw=(weights + kv) / s / bandwidth))
  return rows


def bench_transfer(preset: str = "small", prompt: int = 2048) -> tuple[list[dict], dict]:
  import jax
  from splitjax import transfer
  from splitjax.benchmarking import best_time, dispatch_overhead
  rows = []
  key = jax.random.key(0)
  dst, _ = _engine(preset, 4, decode_slots=1, max_cache_len=prompt)
  for group in (1, 2, 4, dst.model.num_layers):
    src, p = _engine(preset, 0, decode_slots=1, max_cache_len=prompt, layer_group_size=group)
    batch = src.make_batch([list(range(1, prompt + 1))])
    single = best_time(lambda: jax.block_until_ready(src.prefill(p, batch, key)), repeats=3)
    chain = best_time(lambda: jax.block_until_ready(src.prefill(p, batch, key, layerwise=True)),
                      repeats=3)
    ready = src.prefill(p, batch, key)
    jax.block_until_ready(ready)
    copy = best_time(lambda: jax.block_until_ready(transfer.to_engine(ready, dst)), repeats=3)

    def exposed(layerwise: bool) -> float:
      """Seconds from the prefill's own outputs being ready to the KV being
      ready on the decode mesh: the part of the copy not hidden by compute."""
      best = float("inf")
      for _ in range(3):
        pre = src.prefill(p, batch, key, layerwise=layerwise)
        if layerwise:   # copies are issued at once, before the chain finishes
          moved = transfer.to_engine(pre, dst)
          jax.block_until_ready(pre)
          t0 = time.perf_counter()
        else:           # the copy starts after the prefill
          jax.block_until_ready(pre)
          t0 = time.perf_counter()
          moved = transfer.to_engine(pre, dst)
        jax.block_until_ready(moved)
        best = min(best, time.perf_counter() - t0)
      return best
    exp_ser, exp_lw = exposed(False), exposed(True)
    rows.append(dict(model=preset, T=prompt, layers_per_group=group, kv_mib=ready.kv_nbytes / 2**20,
                     prefill_ms=single * 1e3, chain_ms=chain * 1e3, copy_ms=copy * 1e3,
                     exposed_serialized_ms=exp_ser * 1e3, exposed_layerwise_ms=exp_lw * 1e3,
                     hidden=max(0.0, 1 - exp_lw / copy)))
  return rows, dict(dispatch_us=dispatch_overhead(jax.devices()[0]) * 1e6)


def bench_vs_hf(batches: list[int], prompt: int = 512, new: int = 128) -> list[dict]:
  import numpy as np
  import torch
  from transformers import LlamaConfig, LlamaForCausalLM

  from splitjax.config import (EngineConfig, GenerateConfig, GenerateMode, MeshConfig,
                               TransferMode)
  from splitjax.engine.generate import Generator
  from splitjax.model.hf_import import load_hf_llama
  from splitjax.model.params import split_model
  from splitjax.model.presets import get_preset

  s = get_preset("small")
  torch.manual_seed(0)
  hf = LlamaForCausalLM(LlamaConfig(
      vocab_size=s.vocab_size, hidden_size=s.hidden_size, intermediate_size=s.mlp_hidden,
      num_hidden_layers=s.num_layers, num_attention_heads=s.num_heads,
      num_key_value_heads=s.num_kv_heads, max_position_embeddings=s.max_seq_len,
      rms_norm_eps=s.rms_norm_eps, rope_theta=s.rope_theta)).eval()
  hf.generation_config.eos_token_id = None
  hf.generation_config.pad_token_id = 0
  with tempfile.TemporaryDirectory() as d:
    hf.save_pretrained(d, safe_serialization=True)
    model = load_hf_llama(d)
  defs, params = split_model(model)
  rng = np.random.default_rng(0)
  rows = []
  for b in batches:
    prompts = rng.integers(0, s.vocab_size, size=(b, prompt))
    ids = torch.tensor(prompts)
    with torch.no_grad():
      hf.generate(ids[:, :16], attention_mask=torch.ones_like(ids[:, :16]), max_new_tokens=2,
                  do_sample=False)  # warm-up
      t = time.perf_counter()
      out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                        min_new_tokens=new, do_sample=False)
      t_hf = time.perf_counter() - t
    cfg = GenerateConfig(model=model.cfg, prefill_mesh=MeshConfig(first_device=0),
                         decode_mesh=MeshConfig(first_device=4),
                         engine=EngineConfig(decode_slots=b, max_cache_len=prompt + new),
                         mode=GenerateMode.SPLIT, transfer=TransferMode.AUTO, max_new_tokens=new)
    gen = Generator(cfg, defs, params)
    gen.generate(prompts.tolist())  # compile
    t = time.perf_counter()
    res = gen.generate(prompts.tolist())
    t_ours = time.perf_counter() - t
    want = out[:, prompt:].tolist()
    agree = float(np.mean(np.array(res.tokens) == np.array(want)))
    rows.append(dict(batch=b, hf_s=t_hf, ours_s=t_ours, hf_tok_per_s=b * new / t_hf,
                     ours_tok_per_s=b * new / t_ours, ratio=t_hf / t_ours,
                     ours_prefill_s=res.prefill_s, ours_decode_s=res.decode_s,
                     token_agreement=agree))
  return rows


def main(argv):
  del argv
  cli.use_cpu_devices(8)
  import jax
  from splitjax import benchmarking as bm

  quiet = bm.check_quiet()
  print(quiet.describe())
  if _REQUIRE_QUIET.value and not quiet.quiet:
    print("error: machine is busy (--require_quiet)", file=sys.stderr)
    return 3
  dev = jax.devices()[0]
  peak, bw = bm.matmul_peak_flops(dev), bm.stream_read_bandwidth(dev)
  results = dict(machine=dataclasses.asdict(quiet) | {"quiet": quiet.quiet},
                 peaks=dict(matmul_gflop_per_s=peak / 1e9, stream_read_gb_per_s=bw / 1e9))
  table("peaks (device 0, measured now)", [results["peaks"]])
  sections = set(_SECTIONS.value)
  if "prefill" in sections:
    results["prefill"] = [r for m in _MODELS.value for r in bench_prefill(m, peak)]
    table("prefill (batch 1)", results["prefill"])
  if "decode" in sections:
    results["decode"] = [r for m in _MODELS.value for r in bench_decode(m, bw)]
    table("decode step (1024 cached positions per sequence)", results["decode"])
  if "transfer" in sections:
    rows, extra = bench_transfer()
    results["transfer"], results["dispatch_us"] = rows, extra["dispatch_us"]
    table(f"KV transfer, prefill mesh -> decode mesh (dispatch of a trivial program: "
          f"{extra['dispatch_us']:.1f} us)", rows)
  if "vs_hf" in sections:
    results["vs_hf"] = bench_vs_hf([int(b) for b in _HF_BATCHES.value])
    table("small: transformers greedy generate vs our split pipeline "
          "(prompt 512, 128 new tokens)", results["vs_hf"])
  after = bm.check_quiet(1.0)
  print("\n" + after.describe().replace("machine check", "machine check after the run"))
  results["machine_after"] = dataclasses.asdict(after)
  bm.write_results(_OUT.value, results)
  return 0


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
