"""Busy-time ledger: hand-checkable intervals, windows, coarsening, conservation."""

import pytest
from hypothesis import given, strategies as st

from splitjax.scheduling.records import Role, WorkKind
from splitjax.utilization import BusyLedger
from tests.scheduling.helpers import inst


def test_intervals_split_across_windows():
  p, t = inst("p0", Role.PROMPT), inst("t0", Role.TOKEN)
  ledger = BusyLedger([p, t], window_s=1.0)
  ledger.add(0, WorkKind.PREFILL, 0.5, 2.5)       # spans three windows
  ledger.add(1, WorkKind.DECODE, 1.0, 1.5)
  ledger.add(1, WorkKind.DECODE, 1.5, 1.5)        # empty
  pools = ledger.pools(3.0)
  assert pools["prompt"].over_time == pytest.approx([0.5, 1.0, 0.5])
  assert pools["token"].over_time == pytest.approx([0.0, 0.5, 0.0])
  assert pools["prompt"].busy_fraction == pytest.approx(2 / 3)
  assert pools["prompt"].busy_s == {"prefill": 2.0} and pools["token"].busy_s == {"decode": 0.5}
  assert ledger.busy_s() == {"p0": {WorkKind.PREFILL: 2.0}, "t0": {WorkKind.DECODE: 0.5}}
  coarse = ledger.pools(3.0, max_points=2)["prompt"]
  assert coarse.window_s == 2.0 and coarse.over_time == pytest.approx([1.5 / 2, 0.5 / 1])


@given(st.lists(st.tuples(st.integers(0, 2), st.sampled_from(list(WorkKind)),
                          st.floats(0, 50), st.floats(0, 5)), max_size=40),
       st.floats(0.1, 7), st.integers(1, 30))
def test_busy_seconds_are_conserved(intervals, window, max_points):
  insts = [inst("p0", Role.PROMPT), inst("p1", Role.PROMPT), inst("t0", Role.TOKEN)]
  ledger = BusyLedger(insts, window)
  run_s = 60.0
  for i, kind, start, length in intervals:
    ledger.add(i, kind, start, start + length)
  total = sum(length for *_, length in intervals)
  pools = ledger.pools(run_s, max_points)
  busy = sum(sum(u.busy_s.values()) for u in pools.values())
  assert busy == pytest.approx(total)
  for u in pools.values():
    assert len(u.over_time) <= max_points
    spans = [min(run_s, (k + 1) * u.window_s) - k * u.window_s for k in range(len(u.over_time))]
    assert sum(f * s * u.machines for f, s in zip(u.over_time, spans)) == pytest.approx(
        sum(u.busy_s.values()))
