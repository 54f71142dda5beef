"""What the driver loop needs from whatever runs the work (no jax here).

An executor runs :class:`~splitjax.scheduling.records.Work` on instances and
reports back with events; it never changes scheduling records. The real one
(``jax_executor.JaxExecutor``) runs compiled programs on device meshes; the
fake one (``fake_executor.FakeExecutor``) takes hand-checkable times and tokens.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, Sequence

from splitjax.runtime.faults import TransferFaults
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


@dataclasses.dataclass(frozen=True)
class TransferFailed:
  """The KV transfer of ``request`` failed at ``at_s`` (reported after its
  prefill, as TransferDone would have been). The executor keeps the prefill
  output: the driver may ``retry_transfer`` it or give the request up."""
  request: Request
  at_s: float
  reason: str


Event = WorkDone | TransferDone | WorkFailed | TransferFailed


class Executor(Protocol):
  def launch(self, work: Work, now: float) -> None:
    """Starts ``work`` without waiting for it. Requests in ``work.transfers``
    have their KV moved to their token instance (layer-wise during the
    prefill or after it, as the executor's transfer mode says)."""

  def poll(self, now: float) -> list[Event]:
    """Events that happened by ``now`` (non-blocking), in time order."""

  def release(self, request: Request) -> None:
    """``request`` finished or failed: drop whatever it holds on devices.
    Executors key their state by the Request object, so releasing an earlier
    attempt of a resubmitted request never touches the new one."""

  def fail_instance(self, name: str) -> None:
    """Instance ``name`` is gone: drop its work in flight and every transfer
    from or to it; no event follows for any of them."""

  def resume(self, request: Request, emitted: Sequence[int]) -> None:
    """``request`` continues an earlier attempt (``request.resumed`` > 0): its
    prompt ids are the original ones followed by ``emitted`` (that many ids)."""

  def retry_transfer(self, request: Request, now: float) -> None:
    """Sends again the KV of ``request`` whose transfer failed (TransferFailed);
    a TransferDone or TransferFailed follows."""

  transfer_faults: TransferFaults

  def next_event_s(self, now: float) -> float | None:
    """When to poll next: a known completion time (virtual executors), a short
    poll interval (real ones), or None when nothing is in flight."""

  @property
  def busy(self) -> bool:
    """Some work or transfer is in flight."""


def resumed_ids(request: Request, emitted: Sequence[int]) -> list[int]:
  """``emitted`` as the ids ``request`` resumes after (``Executor.resume``);
  raises ValueError unless there are exactly ``request.resumed`` of them."""
  if len(emitted) != request.resumed:
    raise ValueError(f"request {request.request_id} resumes after {request.resumed} tokens, "
                     f"got {len(emitted)}")
  return list(emitted)
