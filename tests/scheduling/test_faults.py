"""Instances failing under every policy (no executor, no jax): after
fail_instance + resubmit every request ends completed (all its tokens, over its
attempts) or failed with a reason, no KV or slot stays held anywhere, nothing is
routed to or run on a down instance, and the mixed pool covers a lost pool."""

import dataclasses

import pytest
from hypothesis import event, given, settings, strategies as st

from splitjax.scheduling.coordinator import (Coordinator, home_roles, make_instances,
                                             make_policies)
from splitjax.scheduling.records import Phase, Request, Role
from splitjax.serve_config import ClusterPolicy, SchedulerConfig
from tests.scheduling.helpers import assert_counters

POLICIES = [(ClusterPolicy.SPLIT, False), (ClusterPolicy.SPLIT, True),
            (ClusterPolicy.COLOCATED, False), (ClusterPolicy.COLOCATED_CHUNKED, False)]
LAUNCH, COMPLETE, LAND = range(3)


@dataclasses.dataclass
class Driver:
  """A tiny synchronous driver: works and transfers complete when told."""
  coord: Coordinator
  flights: list = dataclasses.field(default_factory=list)
  moving: list = dataclasses.field(default_factory=list)
  emitted: dict = dataclasses.field(default_factory=dict)     # request id -> tokens
  outcome: dict = dataclasses.field(default_factory=dict)     # request id -> str
  wanted: dict = dataclasses.field(default_factory=dict)      # request id -> output tokens

  def submit(self, r: Request) -> None:
    self.wanted[r.request_id], self.emitted[r.request_id] = r.output_tokens, 0
    reason = self.coord.submit(r)
    if reason is not None:
      self.outcome[r.request_id] = "rejected: " + reason
    else:
      self.check_route(r)

  def check_route(self, r: Request) -> None:
    for name in (r.prompt_instance, r.token_instance):
      assert self.coord.by_name[name].role is not Role.DOWN, f"{r.request_id} routed to {name}"

  def launch(self) -> bool:
    self.coord.rebalance()
    launched = False
    for inst in self.coord.instances:
      if not inst.busy:
        w = self.coord.next_work(inst, 0.0)
        if w is not None:
          assert inst.role is not Role.DOWN
          self.flights.append(w)
          launched = True
    return launched

  def complete(self) -> bool:
    if not self.flights:
      return False
    out = self.coord.complete(self.flights.pop(0))
    for r in out.emitted:
      self.emitted[r.request_id] += 1
    for r in out.finished:
      self.outcome[r.request_id] = "completed"
    self.moving += out.transfers
    return True

  def land(self) -> bool:
    if not self.moving:
      return False
    r = self.moving.pop(0)
    if r.phase == Phase.TRANSFERRING:            # else resubmitted meanwhile
      self.coord.transfer_done(r)
    return True

  def fail(self, k: int) -> None:
    live = [i for i in self.coord.instances if i.role is not Role.DOWN]
    if not live:
      return
    name = live[k % len(live)].name
    lost = self.coord.fail_instance(name)
    with pytest.raises(ValueError, match="already down"):
      self.coord.fail_instance(name)
    self.flights = [w for w in self.flights if w.instance.name != name]   # work lost
    for r in lost:
      assert r.phase is not Phase.FINISHED
      event(f"lost while {r.phase.value}" + (" after tokens" if r.generated else ""))
      assert self.emitted[r.request_id] == r.resumed + r.generated
      new = self.coord.resubmit(r)
      assert r.phase is Phase.FINISHED
      if isinstance(new, str):
        self.outcome[r.request_id] = "failed: " + new
      else:
        assert (new.request_id, new.resumed) == (r.request_id, r.resumed + r.generated)
        assert new.prompt_tokens + new.output_tokens == r.prompt_tokens + r.output_tokens
        self.check_route(new)
    assert self.coord.by_name[name].idle

  def drain(self) -> None:
    while self.launch() or self.complete() or self.land():
      pass
    for r in list(self.coord.requests_in_flight()):   # stuck: as the drivers do
      self.coord.fail(r, "could not be scheduled")
      self.outcome[r.request_id] = "failed: could not be scheduled"


def _coord(policy, mixed, n_prompt=2, n_token=2, n_coloc=3):
  cfg = SchedulerConfig(policy=policy, mixed_pool=mixed, borrow_prompt_tokens=200,
                        chunk_token_budget=64)
  insts = make_instances(home_roles(cfg, n_prompt, n_token, n_coloc), 2, 1024, 512)
  return Coordinator(insts, make_policies(cfg), max_prompt_tokens=512)


def _assert_clean(coord: Coordinator, d: Driver) -> None:
  assert set(d.outcome) == set(d.wanted)
  for rid, why in d.outcome.items():
    if why == "completed":
      assert d.emitted[rid] == d.wanted[rid], rid
    else:
      assert why.split(": ", 1)[1], rid                       # a reason
  for i in coord.instances:
    assert i.idle and not i.busy, i.name
    assert i.kv.used_blocks == 0 and sorted(i.free_slots) == list(range(i.decode_slots))
    assert_counters(i)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(POLICIES),
       st.lists(st.tuples(st.integers(1, 400), st.integers(1, 30)), min_size=1, max_size=20),
       st.lists(st.tuples(st.sampled_from([LAUNCH, COMPLETE, LAND]), st.integers(0, 7)),
                max_size=80),
       st.lists(st.floats(0.0, 1.0), min_size=1, max_size=3))
def test_faults_conserve_requests_and_free_everything(policy, reqs, ops, fail_at):
  coord = _coord(*policy)
  d = Driver(coord)
  todo = [Request(i, float(i), p, o) for i, (p, o) in enumerate(reqs)]
  fails = [int(f * len(ops)) for f in fail_at]
  for n, (op, k) in enumerate(ops + [(LAUNCH, 1)]):
    if todo and k % 2:
      d.submit(todo.pop(0))
    for _ in range(fails.count(n)):
      d.fail(k)
    {LAUNCH: d.launch, COMPLETE: d.complete, LAND: d.land}[op]()
  for r in todo:
    d.submit(r)
  d.drain()
  _assert_clean(coord, d)
  if any(i.role is not Role.DOWN for i in coord.instances) and policy[0] != ClusterPolicy.SPLIT:
    assert all(w == "completed" or w.startswith("rejected") for w in d.outcome.values())


def _run_with(coord, n, fail_at, names):
  d = Driver(coord)
  for i in range(n):
    d.submit(Request(i, 0.0, 40 + i, 12))
  for _ in range(fail_at):
    d.launch() or d.complete() or d.land()
  for name in names:
    lost = coord.fail_instance(name)
    d.flights = [w for w in d.flights if w.instance.name != name]
    for r in lost:
      new = coord.resubmit(r)
      if isinstance(new, str):
        d.outcome[r.request_id] = "failed: " + new
  d.drain()
  _assert_clean(coord, d)
  return d


def test_the_mixed_pool_covers_a_lost_token_pool():
  coord = _coord(ClusterPolicy.SPLIT, True)
  d = _run_with(coord, 8, 12, ["token0", "token1"])
  assert set(d.outcome.values()) == {"completed"}
  assert [i.role for i in coord.instances] in ([Role.MIXED, Role.PROMPT, Role.DOWN, Role.DOWN],
                                               [Role.PROMPT, Role.MIXED, Role.DOWN, Role.DOWN])
  assert not any(i.returning for i in coord.instances)    # never goes home: nobody else


def test_the_mixed_pool_covers_a_lost_prompt_pool_with_its_last_token_instance():
  coord = _coord(ClusterPolicy.SPLIT, True, n_prompt=1, n_token=1)
  d = _run_with(coord, 6, 5, ["prompt0"])
  assert set(d.outcome.values()) == {"completed"}
  assert [i.role for i in coord.instances] == [Role.DOWN, Role.MIXED]


def test_without_a_mixed_pool_a_lost_pool_fails_requests_with_a_reason():
  coord = _coord(ClusterPolicy.SPLIT, False)
  d = _run_with(coord, 6, 8, ["token0", "token1"])
  reasons = set(d.outcome.values()) - {"completed"}
  assert reasons == {"failed: no live instance takes tokens"}
  assert coord.submit(Request(99, 1.0, 10, 5)) == "no live instance takes tokens"


def test_a_resubmitted_request_keeps_its_place_and_counts_its_tokens():
  coord = _coord(ClusterPolicy.SPLIT, False)
  d = Driver(coord)
  for i in range(3):
    d.submit(Request(i, float(i), 30, 10))
  while not any(r.phase == Phase.DECODING for r in coord.requests_in_flight()):
    d.launch() or d.complete() or d.land()
  for _ in range(2):
    d.launch() and d.complete()
  victim = next(r for r in coord.requests_in_flight() if r.phase == Phase.DECODING)
  before = victim.generated
  for i in range(3, 6):
    d.submit(Request(i, float(i), 30, 10))       # younger, queued behind
  lost = coord.fail_instance(victim.token_instance)
  assert victim in lost
  new = coord.resubmit(victim)
  assert (new.prompt_tokens, new.output_tokens, new.resumed) == (30 + before, 10 - before, before)
  q = coord.by_name[new.prompt_instance].prompt_queue
  assert [r.arrival_s for r in q] == sorted(r.arrival_s for r in q)
  with pytest.raises(ValueError, match="already finished"):
    coord.resubmit(victim)
  with pytest.raises(KeyError):
    coord.fail_instance("nope")


@pytest.mark.parametrize("mixed", [False, True])
def test_requests_waiting_for_a_slot_on_a_failed_instance_are_recomputed(mixed):
  coord = _coord(ClusterPolicy.SPLIT, mixed)          # 2 decode slots per instance
  d = Driver(coord)
  for i in range(8):
    d.submit(Request(i, float(i), 20, 30))
  for _ in range(200):            # until a landed request finds both slots taken
    d.land() or d.launch() or d.complete()
    waiting = [r for r in coord.requests_in_flight() if r.phase == Phase.WAITING_DECODE]
    if waiting and not coord.by_name[waiting[0].token_instance].free_slots:
      break
  assert waiting
  name = waiting[0].token_instance
  lost = coord.fail_instance(name)
  assert waiting[0] in lost and len(lost) >= 2
  for r in lost:
    assert d.emitted[r.request_id] == r.resumed + r.generated
    assert not isinstance(coord.resubmit(r), str)
  d.drain()
  _assert_clean(coord, d)
  assert set(d.outcome.values()) == {"completed"}
