"""Process layout: which pool each process's devices serve.

Every process runs the same program; the layout tells each one which engine
it hosts. Process 0 additionally runs the policy (the coordinator) and is the
only one that writes output files.
"""

from __future__ import annotations

import dataclasses
import enum

from splitjax.config import ConfigError

COORDINATOR = 0   # the process that runs the policy and writes outputs


class Pool(enum.Enum):
  """What a process's devices serve."""
  PROMPT = "prompt"
  TOKEN = "token"


@dataclasses.dataclass(frozen=True)
class ProcessLayout:
  """pools[p] is the pool of process p; at least one prompt and one token process."""
  pools: tuple[Pool, ...]

  def __post_init__(self):
    if Pool.PROMPT not in self.pools or Pool.TOKEN not in self.pools:
      raise ConfigError(f"a process layout needs at least one prompt and one token process, "
                        f"got {[p.value for p in self.pools]}")

  @property
  def num_processes(self) -> int:
    return len(self.pools)

  @property
  def prompt_processes(self) -> tuple[int, ...]:
    return tuple(i for i, p in enumerate(self.pools) if p == Pool.PROMPT)

  @property
  def token_processes(self) -> tuple[int, ...]:
    return tuple(i for i, p in enumerate(self.pools) if p == Pool.TOKEN)

  @classmethod
  def default(cls, num_processes: int) -> "ProcessLayout":
    """The first half (at least one) prompt processes, the rest token processes."""
    if num_processes < 2:
      raise ConfigError(f"a split layout needs at least 2 processes, got {num_processes}")
    n_prompt = max(1, num_processes // 2)
    return cls((Pool.PROMPT,) * n_prompt + (Pool.TOKEN,) * (num_processes - n_prompt))

  @classmethod
  def parse(cls, text: str | None, num_processes: int) -> "ProcessLayout":
    """'prompt,token,token' -> layout (``default`` when ``text`` is empty or None).

    Raises ConfigError naming a bad item or a count that is not ``num_processes``.
    """
    if not text:
      return cls.default(num_processes)
    items = [t.strip().lower() for t in text.split(",")]
    pools = []
    for i, t in enumerate(items):
      try:
        pools.append(Pool(t))
      except ValueError:
        raise ConfigError(f"process pool {i} {t!r} is not one of "
                          f"{[p.value for p in Pool]}") from None
    if len(pools) != num_processes:
      raise ConfigError(f"process layout names {len(pools)} pools for {num_processes} processes")
    return cls(tuple(pools))

  def describe(self) -> str:
    return ", ".join(f"p{i}={p.value}" for i, p in enumerate(self.pools))
