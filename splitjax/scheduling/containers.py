"""Request containers that keep their token totals (no jax).

An instance's queues are a :class:`TokenDeque` (the prompt queue) and
:class:`TokenDict` s (prefilling, incoming, decoding). Each keeps ``tokens``
(the sum of a weight over its requests) so load measures cost O(1), adds
every change to its :class:`~splitjax.scheduling.tally.Tally` (cluster-wide
sums, ``Instance.feed``) and calls ``notify`` after it (``Instance`` change
tracking).
"""

from __future__ import annotations

import collections

from splitjax.scheduling.tally import Tally


class TokenDeque(collections.deque):
  """A deque of requests that keeps ``tokens`` = the sum of ``weight(request)``
  over its items, so load measures cost O(1) instead of a walk of the queue.
  Every change of ``tokens`` is also added to ``tally`` (see :meth:`Instance.feed`)."""

  def __init__(self, weight):
    super().__init__()
    self.weight, self.tokens = weight, 0
    self.tally = Tally()
    self.notify = _nothing      # called after every change (Instance change tracking)

  def _grew(self, w: int) -> None:
    self.tokens += w
    self.tally.value += w
    self.notify()

  def append(self, r):           # (append / popleft: _grew inlined, the hot paths)
    super().append(r)
    w = self.weight(r)
    self.tokens += w
    self.tally.value += w
    self.notify()

  def appendleft(self, r):
    super().appendleft(r)
    self._grew(self.weight(r))

  def insert(self, i, r):
    super().insert(i, r)
    self._grew(self.weight(r))

  def extend(self, rs):
    for r in rs:
      self.append(r)

  def popleft(self):
    r = super().popleft()
    w = self.weight(r)
    self.tokens -= w
    self.tally.value -= w
    self.notify()
    return r

  def pop(self):
    r = super().pop()
    self._grew(-self.weight(r))
    return r

  def remove(self, r):
    super().remove(r)
    self._grew(-self.weight(r))

  def clear(self):
    super().clear()
    self._grew(-self.tokens)


class TokenDict(dict):
  """request id -> request, keeping ``tokens`` = the sum of ``weight(request)``
  as it was when each entry was (re)weighed; call :meth:`reweigh` after a
  change to a request that alters its weight. Every change is also added to
  ``tally`` (tokens) and ``rows`` (entries), see :meth:`Instance.feed`."""

  def __init__(self, weight):
    super().__init__()
    self.weight, self.tokens, self._w = weight, 0, {}
    self.tally, self.rows = Tally(), Tally()
    self.notify = _nothing      # called after every change (Instance change tracking)

  def __setitem__(self, key, r):
    old = self._w.get(key)
    self._w[key] = w = self.weight(r)
    if old is None:
      self.rows.value += 1
    else:
      w -= old
    self.tokens += w
    self.tally.value += w
    super().__setitem__(key, r)
    self.notify()

  def _dropped(self, key) -> None:
    w = self._w.pop(key)
    self.tokens -= w
    self.tally.value -= w
    self.rows.value -= 1
    self.notify()

  def __delitem__(self, key):
    super().__delitem__(key)
    self._dropped(key)

  def pop(self, key, *default):
    if key in self:
      r = super().pop(key)
      self._dropped(key)
      return r
    if default:
      return default[0]
    raise KeyError(key)

  def clear(self):
    self.tally.value -= self.tokens
    self.rows.value -= len(self)
    super().clear()
    self._w.clear()
    self.tokens = 0
    self.notify()

  def reweigh(self, key) -> None:
    self[key] = self[key]

  def popitem(self):
    key, r = super().popitem()
    self._dropped(key)
    return key, r

  def update(self, *args, **kw):
    for k, v in dict(*args, **kw).items():
      self[k] = v

  def setdefault(self, key, default=None):
    if key not in self:
      self[key] = default
    return self[key]


def _nothing() -> None:
  pass
