"""Human-readable tables of a run's summary.json (shared by serve.py and simulate.py)."""

from __future__ import annotations


def summary_table(d: dict) -> str:
  """The final table printed after a replay or a simulation."""
  out: list[str] = []
  r = d["requests"]
  out.append(f"requests: {r['submitted']} submitted, {r['completed']} completed, "
             f"{r['failed'] - r['rejected']} failed, {r['rejected']} rejected")
  out.append(f"{'latency (s)':<14}{'p50':>10}{'p90':>10}{'p99':>10}{'mean':>10}")
  for name, key in (("queue", "queue_s"), ("TTFT", "ttft_s"), ("TBT (mean)", "tbt_s"),
                    ("ITL (each)", "itl_s"), ("E2E", "e2e_s")):
    p = d[key]
    out.append(f"{name:<14}" + "".join(f"{p[k]:>10.4f}" for k in ("p50", "p90", "p99", "mean")))
  t, x = d["throughput"], d["transfer"]
  out.append(f"throughput: {t['requests_per_s']:.2f} req/s, {t['output_tokens_per_s']:.1f} "
             f"output tok/s over {d['wall_s']:.1f} s")
  out.append(f"KV transfer: {x['bytes'] / 2**20:.1f} MiB, {x['seconds']:.3f} s exposed "
             "(landed after the first token), summed over requests")
  o = d.get("occupancy")       # replays and simulations; not the HTTP server's records
  if o:
    out.append(f"occupancy (mean / max): queued prompts {o['queued_prompts']['mean']:.1f} / "
               f"{o['queued_prompts']['max']}, decoding {o['decoding']['mean']:.1f} / "
               f"{o['decoding']['max']}, KV used {o['kv_used_fraction']['mean']:.0%} / "
               f"{o['kv_used_fraction']['max']:.0%}, busy instances "
               f"{o['busy_instances']['mean']:.1f}")
  c = d.get("compiled_during_run")
  if c and c["programs"]:
    out.append(f"note: {c['programs']} programs compiled during the run ({c['seconds']:.1f} s of "
          "stalls inside the latencies); a re-run loads them from the compilation cache")
  m = d.get("mixed_pool")
  if m and o:
    out.append(f"mixed pool: {m['borrowings']} borrowings, {m['returns']} returns, "
               f"mean mixed instances {o['mixed_instances']['mean']:.2f}; "
               f"preemptions {d['preemptions']}")
  return "\n".join(out)
