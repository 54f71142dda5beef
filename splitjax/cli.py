"""Helpers shared by the absl mains in ``scripts/`` (not used by the library)."""

from __future__ import annotations

import os
import sys
import traceback
from typing import Callable


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


def usable_cpus() -> int:
  """CPUs this process may run on (its affinity mask where the OS has one)."""
  try:
    return len(os.sched_getaffinity(0)) or 1
  except AttributeError:                   # no affinity masks (macOS, Windows)
    return os.cpu_count() or 1


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


def in_background(write: Callable[[], None]) -> Callable[[], None]:
  """Runs ``write()`` (e.g. writing result files from data already in memory)
  in a forked child process, on another core, while the caller goes on; returns
  ``wait()``, which blocks until the child ended and raises RuntimeError if
  ``write`` failed there (its traceback goes to stderr). Where processes cannot
  fork, ``write()`` runs at once and ``wait()`` does nothing. ``write`` must
  only write files: the child's other effects are lost when it exits. For
  processes without threads (e.g. the simulator's, which never imports jax)."""
  if not hasattr(os, "fork"):
    write()
    return lambda: None
  sys.stdout.flush()
  sys.stderr.flush()
  pid = os.fork()
  if pid == 0:                      # the child: write, then leave without cleanup
    code = 0
    try:
      write()
    except BaseException:           # noqa: BLE001 - reported to the parent by the exit code
      traceback.print_exc()
      code = 1
    finally:
      sys.stderr.flush()
      os._exit(code)

  def wait() -> None:
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
      raise RuntimeError(f"writing in the background failed (exit status {status})")

  return wait
