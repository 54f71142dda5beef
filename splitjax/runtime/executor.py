"""What the driver loop needs from whatever runs the work (no jax here).

An executor runs :class:`~splitjax.scheduling.records.Work` on instances and
reports back with events; it never changes scheduling records. The real one
(``jax_executor.JaxExecutor``) runs compiled programs on device meshes; the
fake one (``fake_executor.FakeExecutor``) takes hand-checkable times and tokens.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

from splitjax.scheduling.records import Request, Work


@dataclasses.dataclass(frozen=True)
class WorkDone:
  """``work`` finished at ``at_s``; ``tokens`` maps request id -> the token it emitted."""
  work: Work
  at_s: float
  tokens: dict


@dataclasses.dataclass(frozen=True)
class TransferDone:
  """The KV of ``request`` (``nbytes`` moved) is usable on its token instance at ``at_s``.
  Reported only after the prefill that produced it was reported done."""
  request: Request
  at_s: float
  nbytes: int


@dataclasses.dataclass(frozen=True)
class WorkFailed:
  """``work`` could not run; its requests must fail with ``reason``."""
  work: Work
  at_s: float
  reason: str


Event = WorkDone | TransferDone | WorkFailed


class Executor(Protocol):
  def launch(self, work: Work, now: float) -> None:
    """Starts ``work`` without waiting for it. Requests in ``work.transfers``
    have their KV moved to their token instance (layer-wise during the
    prefill or after it, as the executor's transfer mode says)."""

  def poll(self, now: float) -> list[Event]:
    """Events that happened by ``now`` (non-blocking), in time order."""

  def release(self, request: Request) -> None:
    """``request`` finished or failed: drop whatever it holds on devices."""

  def next_event_s(self, now: float) -> float | None:
    """When to poll next: a known completion time (virtual executors), a short
    poll interval (real ones), or None when nothing is in flight."""

  @property
  def busy(self) -> bool:
    """Some work or transfer is in flight."""
