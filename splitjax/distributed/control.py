"""The control plane: JAX's coordination-service key-value store, no collectives.

Decisions (which request goes where, which transfer comes next) are made by
one process and published as JSON under a key; the others read them. gloo
collectives are never used here: one issued while a cross-process transfer
is pending deadlocked in our tests.

Every wait is bounded and watches for failures between short polls:

- heartbeats: a daemon thread writes ``<ns>/hb/<pid>`` (a counter) every
  ``heartbeat_interval_s``; a peer whose counter has not moved for
  ``heartbeat_timeout_s`` (seen from here) is dead: crashed, killed or stopped.
  (``DistributedRuntimeClient.get_live_nodes`` cannot serve here: it blocks
  until every live process calls it.)
- abort: any process may publish ``<ns>/abort`` with a message; every wait
  then raises :class:`JobAborted` with it.

A wait raises :class:`PeerFailure` (naming the dead processes),
:class:`JobAborted` or :class:`ControlTimeout`; callers report and exit
(``Control.leave``: process 0, which hosts the service, last) instead of hanging.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Callable, Iterable, Sequence


class ControlError(RuntimeError):
  """Base of the control plane's failures."""


class PeerFailure(ControlError):
  """Processes ``dead`` stopped heart-beating."""

  def __init__(self, dead: Sequence[int], silent_s: float):
    self.dead = tuple(sorted(dead))
    super().__init__(f"process(es) {list(self.dead)} stopped heart-beating "
                     f"(silent for >= {silent_s:.1f} s): dead, killed or stopped")


class JobAborted(ControlError):
  """Another process aborted the job; the message is theirs."""


class ControlTimeout(ControlError):
  """A wait ran past its deadline with every peer alive."""


class Control:
  """Key-value control plane of one process (see module doc).

  ``client`` is a ``DistributedRuntimeClient`` (``Control.from_jax()`` takes
  JAX's). Call :meth:`start` before waiting on peers and :meth:`stop` at the end.
  """

  def __init__(self, client, process_id: int, num_processes: int, *,
               heartbeat_interval_s: float = 0.5, heartbeat_timeout_s: float = 10.0,
               poll_s: float = 0.2, namespace: str = "splitjax"):
    if heartbeat_timeout_s <= 2 * heartbeat_interval_s:
      raise ValueError(f"heartbeat_timeout_s ({heartbeat_timeout_s}) must exceed twice the "
                       f"interval ({heartbeat_interval_s})")
    self.client, self.process_id, self.num_processes = client, process_id, num_processes
    self.interval_s, self.timeout_s, self.poll_s = heartbeat_interval_s, heartbeat_timeout_s, poll_s
    self.ns = namespace
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    now = time.monotonic()
    # peer -> (last counter seen, local time it last changed)
    self._seen: dict[int, tuple[str | None, float]] = {
        p: (None, now) for p in range(num_processes) if p != process_id}
    self._last_check = 0.0

  @classmethod
  def from_jax(cls, **kw) -> "Control":
    """Control over the client ``jax.distributed.initialize`` created."""
    from jax._src import distributed as jax_distributed
    st = jax_distributed.global_state
    if st.client is None:
      raise ControlError("jax.distributed is not initialized")
    return cls(st.client, st.process_id, st.num_processes, **kw)

  # ------------------------------------------------------------------ heartbeats
  def start(self) -> None:
    """Starts heart-beating (idempotent)."""
    if self._thread is None:
      self._beat(0)
      self._thread = threading.Thread(target=self._beat_loop, daemon=True,
                                      name=f"splitjax-heartbeat-p{self.process_id}")
      self._thread.start()

  def stop(self) -> None:
    """Stops heart-beating (peers will soon consider this process dead)."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=2 * self.interval_s)

  def _beat(self, n: int) -> None:
    self.client.key_value_set(f"{self.ns}/hb/{self.process_id}", str(n), allow_overwrite=True)

  def _beat_loop(self) -> None:
    n = 1
    while not self._stop.wait(self.interval_s):
      try:
        self._beat(n)
      except Exception:   # the service is gone: the main thread's waits will say so
        return
      n += 1

  def dead_peers(self) -> list[int]:
    """Peers whose heartbeat has not moved for ``heartbeat_timeout_s``."""
    now = time.monotonic()
    beats = dict(self.client.key_value_dir_get(f"{self.ns}/hb/"))
    dead = []
    for p, (value, since) in self._seen.items():
      current = beats.get(f"{self.ns}/hb/{p}")
      if current != value:
        self._seen[p] = (current, now)
      elif now - since > self.timeout_s:
        dead.append(p)
    return dead

  def check(self, force: bool = False) -> None:
    """Raises JobAborted / PeerFailure if the job is over (at most every poll_s)."""
    now = time.monotonic()
    if not force and now - self._last_check < self.poll_s:
      return
    self._last_check = now
    message = self.try_get("abort")
    if message is not None:
      raise JobAborted(message)
    dead = self.dead_peers()
    if dead:
      raise PeerFailure(dead, self.timeout_s)

  def abort(self, message: str) -> None:
    """Tells every process to stop with ``message`` (the first abort wins)."""
    try:
      self.client.key_value_set(f"{self.ns}/abort", json.dumps(message))
    except Exception:   # already aborted, or the service is gone
      pass

  # ------------------------------------------------------------------ values
  def publish(self, key: str, value: Any) -> None:
    """Sets ``key`` to JSON ``value`` (once: a key is never overwritten)."""
    self.client.key_value_set(f"{self.ns}/{key}", json.dumps(value))

  def try_get(self, key: str) -> Any | None:
    """The JSON value of ``key``, or None if unset."""
    try:
      return json.loads(self.client.key_value_try_get(f"{self.ns}/{key}"))
    except Exception as e:   # NOT_FOUND comes back as a runtime error
      if "NOT_FOUND" in str(e) or "not found" in str(e).lower():
        return None
      raise

  def wait_for(self, key: str, wait_s: float) -> Any | None:
    """The JSON value of ``key``, waiting at most ``wait_s`` for it (None if
    still unset then); one call to the service, no failure checks."""
    try:
      return json.loads(self.client.blocking_key_value_get(f"{self.ns}/{key}",
                                                           max(1, int(wait_s * 1000))))
    except Exception as e:
      if "DEADLINE_EXCEEDED" in str(e):
        return None
      raise

  def delete(self, key: str) -> None:
    """Removes ``key`` (values read once by their only reader)."""
    self.client.key_value_delete(f"{self.ns}/{key}")

  def read(self, key: str, timeout_s: float) -> Any:
    """Waits for ``key`` (JSON); raises PeerFailure / JobAborted / ControlTimeout."""
    deadline = time.monotonic() + timeout_s
    full = f"{self.ns}/{key}"
    while True:
      try:
        return json.loads(self.client.blocking_key_value_get(full, int(self.poll_s * 1000)))
      except Exception as e:
        if "DEADLINE_EXCEEDED" not in str(e):
          raise
      self.check(force=True)
      if time.monotonic() > deadline:
        raise ControlTimeout(f"process {self.process_id}: no {key!r} after {timeout_s:.0f} s")

  def broadcast(self, key: str, make: Callable[[], Any], root: int, timeout_s: float) -> Any:
    """``make()`` on ``root``, published under ``key``; every process returns it."""
    if self.process_id == root:
      value = make()
      self.publish(key, value)
      return value
    return self.read(key, timeout_s)

  def barrier(self, name: str, timeout_s: float, processes: Iterable[int] | None = None) -> None:
    """Waits until every process in ``processes`` (default all) reached ``name``,
    watching for failures. Not for the very end of a job: see :meth:`finish`."""
    procs = sorted(range(self.num_processes) if processes is None else processes)
    self.publish(f"barrier/{name}/{self.process_id}", True)
    deadline = time.monotonic() + timeout_s
    prefix = f"{self.ns}/barrier/{name}/"
    while True:
      arrived = {k[len(prefix):] for k, _ in self.client.key_value_dir_get(prefix)}
      if all(str(p) in arrived for p in procs):
        return
      self.check(force=True)
      if time.monotonic() > deadline:
        missing = [p for p in procs if str(p) not in arrived]
        raise ControlTimeout(f"barrier {name!r}: processes {missing} missing after "
                             f"{timeout_s:.0f} s")
      time.sleep(self.poll_s / 4)

  def sync(self, name: str, timeout_s: float) -> None:
    """The coordination service's own barrier: every process is released at
    once (for timing), but a dead peer only shows as a timeout here."""
    self.client.wait_at_barrier(f"{self.ns}/sync/{name}", int(timeout_s * 1000))

  def wait_ready(self, arrays, timeout_s: float, what: str) -> None:
    """Polls ``is_ready()`` on every array of the pytree ``arrays`` (e.g. the
    arrival of a cross-process transfer) while watching for failures."""
    import jax
    leaves = [a for a in jax.tree.leaves(arrays) if hasattr(a, "is_ready")]
    deadline = time.monotonic() + timeout_s
    while not all(a.is_ready() for a in leaves):
      self.check()
      if time.monotonic() > deadline:
        raise ControlTimeout(f"process {self.process_id}: {what} not ready after {timeout_s:.0f} s")
      time.sleep(0.002)

  def leave(self, code: int, timeout_s: float | None = None) -> None:
    """Ends this process without the orderly shutdown (after a failure, or
    with transfers still pending); never returns. Process 0 hosts the
    coordination service, and JAX aborts every process still connected when
    it goes, so process 0 leaves last: it waits (at most ``timeout_s``, default
    the heartbeat timeout) until every other process has said it is leaving
    or counts as dead."""
    from splitjax.distributed.launch import exit_now
    try:
      if self.process_id != 0:
        self.publish(f"left/{self.process_id}", code)
      else:
        deadline = time.monotonic() + (timeout_s or self.timeout_s) + self.interval_s
        prefix = f"{self.ns}/left/"
        while time.monotonic() < deadline:
          left = {k[len(prefix):] for k, _ in self.client.key_value_dir_get(prefix)}
          waiting = {p for p in range(1, self.num_processes) if str(p) not in left}
          if waiting <= set(self.dead_peers()):
            break
          time.sleep(0.05)
    except Exception:   # the service is gone or broken: nothing left to wait for
      pass
    exit_now(code)

  def finish(self, timeout_s: float = 60.0) -> None:
    """Successful end: a barrier (every process has finished reading), then
    ``jax.distributed.shutdown``, process 0 last: it hosts the service, and a
    process still disconnecting when the service goes away is aborted by the
    runtime. (With ``jax_enable_recoverability`` JAX's own shutdown barrier
    does not hold the processes together, see ``launch``.)"""
    import jax
    self.barrier("finish", timeout_s)
    self.client.wait_at_barrier(f"{self.ns}/exit", int(timeout_s * 1000))
    self.stop()
    if self.process_id == 0 and self.num_processes > 1:
      # returns once no other process is connected (each has shut down)
      waiter = threading.Thread(target=self.client.get_live_nodes,
                                args=(list(range(self.num_processes)),), daemon=True)
      waiter.start()
      waiter.join(timeout_s)
    jax.distributed.shutdown()
