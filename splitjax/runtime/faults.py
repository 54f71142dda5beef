"""Fault vocabulary of the runtime (no jax): what can be injected and what is counted.

Two faults exist in-process:

- an instance fails (``loop.Run.fail_instance``; scheduled in ``replay`` by
  :class:`InstanceFault`, online by ``OnlineEngine.fail_instance`` or the
  server's ``POST /admin/fail_instance``): the executor drops its programs and
  every transfer from or to it, the coordinator takes it down, and every
  request that had state on it is resubmitted: re-routed, its prompt plus the
  tokens it already emitted prefilled again (recomputed), so its stream goes
  on where it stopped;
- a KV transfer fails (injected by :class:`TransferFaults`, an executor's
  ``transfer_faults``): the executor reports ``TransferFailed`` and keeps the
  prefill output, the driver re-sends it up to ``transfer_retries`` times and
  then falls back to recomputing (resubmitting) the request.

Drivers count what happened per :class:`FaultEvent`.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Iterable


class FaultEvent(enum.Enum):
  """What the driver counts (server: a Prometheus counter each)."""
  INSTANCE_FAILED = "instance_failed"        # an instance was taken down
  RESUBMITTED = "resubmitted"                # a request re-routed to be recomputed
  TRANSFER_RETRIED = "transfer_retried"      # a failed KV transfer sent again
  TRANSFER_FALLBACK = "transfer_fallback"    # retries used up: the request recomputed


@dataclasses.dataclass(frozen=True)
class InstanceFault:
  """Instance ``instance`` fails at ``at_s`` (seconds on the run's clock)."""
  at_s: float
  instance: str


@dataclasses.dataclass(frozen=True)
class InstanceFailure:
  """What failing an instance did: the requests it touched, resubmitted
  (recomputed elsewhere) or failed (no instance could take them any more)."""
  instance: str
  resubmitted: tuple[int, ...]
  failed: tuple[int, ...]


@dataclasses.dataclass
class TransferFaults:
  """Test / config hook: which KV transfers fail instead of landing.

  ``next``: that many of the next transfers (of any request) fail;
  ``requests``: request id -> how many of that request's next transfers fail
  (checked first). Each firing uses one up. Executors consult :meth:`take`
  once per transfer attempt (a retry is a new attempt).
  """
  next: int = 0
  requests: dict[int, int] = dataclasses.field(default_factory=dict)

  def add(self, count: int = 0, request_ids: Iterable[int] = ()) -> None:
    """``count`` more of the next transfers fail, and one more of each id's."""
    if count < 0:
      raise ValueError(f"count must be >= 0, got {count}")
    self.next += count
    for rid in request_ids:
      self.requests[rid] = self.requests.get(rid, 0) + 1

  def take(self, request_id: int) -> bool:
    """Whether this transfer of ``request_id`` fails (using the fault up)."""
    n = self.requests.get(request_id, 0)
    if n:
      if n == 1:
        del self.requests[request_id]
      else:
        self.requests[request_id] = n - 1
      return True
    if self.next:
      self.next -= 1
      return True
    return False
