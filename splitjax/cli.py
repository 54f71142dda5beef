"""Helpers shared by the absl mains in ``scripts/`` (not used by the library)."""

from __future__ import annotations

import os


def use_cpu_devices(n: int) -> None:
  """Asks for ``n`` virtual CPU devices; must run before JAX initialises.

  Only the CPU platform reads this option; on GPU/TPU hosts it is inert.
  """
  import jax
  jax.config.update("jax_num_cpu_devices", n)


def parse_ids(text: str, what: str = "--prompt_ids") -> list[int]:
  """'1,2,3' -> [1, 2, 3]; raises ValueError naming the bad item."""
  if not text.strip():
    raise ValueError(f"{what}: empty prompt (give comma-separated token ids)")
  items = [t.strip() for t in text.split(",")]
  out = []
  for i, t in enumerate(items):
    try:
      out.append(int(t))
    except ValueError:
      raise ValueError(f"{what}: item {i} {t!r} is not an integer token id") from None
  return out


def repo_path(*parts: str) -> str:
  """Path inside the repository (for default config files)."""
  return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), *parts)
