"""Helpers shared by the absl mains in ``scripts/`` (not used by the library)."""

from __future__ import annotations

import os


def use_cpu_devices(n: int) -> None:
  """Asks for ``n`` virtual CPU devices; must run before JAX initialises.

  Only the CPU platform reads this option; on GPU/TPU hosts it is inert.
  """
  import jax
  jax.config.update("jax_num_cpu_devices", n)


def use_compilation_cache(path: str) -> None:
  """Persists compiled programs under ``path`` (any backend), so a second run
  with the same shapes and devices loads them instead of compiling."""
  import jax
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


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


def parse_flags(argv: list[str]) -> list[str]:
  """absl flags parser that turns bad ``--config.*`` overrides into one-line errors.

  Use as ``app.run(main, flags_parser=cli.parse_flags)``.
  """
  import sys

  from absl import flags
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.stderr.write(f"error: {e}\nPass --helpfull to see the flags.\n")
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    sys.stderr.write(f"error: bad --config override: {_one_line(e)}\n")
  sys.exit(2)


def define_config(default: str, help_text: str):
  """``config_flags.DEFINE_config_file('config', ...)`` with clean errors.

  ml_collections reads ``--config.*`` overrides from ``sys.argv`` while
  defining the flag, so an unknown field fails here, before absl parsing.
  """
  import sys

  from ml_collections import config_flags
  try:
    return config_flags.DEFINE_config_file("config", default, help_text)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    sys.stderr.write(f"error: bad --config override: {_one_line(e)}\n")
    sys.exit(2)


def _one_line(e: Exception) -> str:
  """ml_collections wraps its messages in repr quotes with escaped newlines."""
  return str(e).strip("'\"").replace("\\n", " ").replace('\\"', '"').replace("\\'", "'")
