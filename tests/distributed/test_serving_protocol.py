"""The multi-process serving protocol in one process: the policy's ops and the
instances' messages go through the (in-memory) key-value store and the JSON
wire format, with every instance placed on process 0, so no KV crosses
processes. Tokens equal the single-process cluster's, requests are conserved,
and nothing is left behind on the instances."""

import json

import jax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitjax import mesh as mesh_lib
from splitjax.config import ConfigError, MeshConfig
from splitjax.distributed.control import Control
from splitjax.distributed.instance_side import InstanceSide
from splitjax.distributed.kv_transfer import KVChannel
from splitjax.distributed.layout import ProcessLayout
from splitjax.distributed.placement import InstancePlacement, place_instances
from splitjax.distributed.policy_side import RemoteExecutor
from splitjax.distributed.wire import ChunkRef, Message, MessageKind, Op, OpKind, ReqRef
from splitjax.engine.engine import Engine
from splitjax.metrics import RequestStatus
from splitjax.runtime.cluster import Cluster
from splitjax.runtime.clock import WallClock
from splitjax.runtime.jax_executor import Replica
from splitjax.runtime.loop import Run, drive
from splitjax.scheduling.coordinator import Coordinator, make_instances, make_policies
from splitjax.scheduling.records import Role, WorkKind
from splitjax.serve_config import ClusterConfig, ClusterPolicy, SchedulerConfig, ServeConfig
from splitjax.workload import RequestSpec
from tests.distributed.fake_client import FakeClient
from splitjax.model.hf_import import load_hf_llama
from splitjax.model.params import split_model
from tests.runtime.test_cluster import ENGINE, NEW, PROMPTS

@pytest.fixture(scope="module")
def model(hf_gqa_dir):
  return split_model(load_hf_llama(hf_gqa_dir))


SCHEDULERS = {
    "split": SchedulerConfig(policy=ClusterPolicy.SPLIT),
    "split_mixed": SchedulerConfig(policy=ClusterPolicy.SPLIT, mixed_pool=True,
                                   borrow_prompt_tokens=1, max_preemptions=1),
}


def _cfg(model, name):
  defs, _ = model
  cluster = ClusterConfig(prompt_instances=1 if name == "split_mixed" else 2,
                          token_instances=3 if name == "split_mixed" else 2,
                          instance_mesh=MeshConfig(tp=2))
  return ServeConfig(model=defs.cfg, engine=ENGINE, cluster=cluster, scheduler=SCHEDULERS[name])


class _KillAfterTokens(Run):
  """Fails ``victim`` at the pass after one of its requests emitted 3 tokens."""
  victim = "token0"

  def emit(self, r, token, at_s):
    super().emit(r, token, at_s)
    if r.token_instance == self.victim and len(self.records[r.request_id].token_ids) == 3:
      self.kill = getattr(self, "kill", None) or "due"

  def advance(self, now):
    if getattr(self, "kill", None) == "due":
      self.kill = self.fail_instance(self.victim, now)
    return super().advance(now)


def _one_process_run(model, cfg, specs, run_cls=Run):
  """Policy and every instance on process 0, through ops and messages."""
  defs, params = model
  c = cfg.cluster
  roles = [Role.PROMPT] * c.prompt_instances + [Role.TOKEN] * c.token_instances
  names = [f"prompt{i}" for i in range(c.prompt_instances)] + [
      f"token{i}" for i in range(c.token_instances)]
  placement = {n: InstancePlacement(n, i, role, 0, (2 * i, 2 * i + 1))
               for i, (n, role) in enumerate(zip(names, roles))}
  meshes = {n: mesh_lib.make_mesh(MeshConfig(tp=2, first_device=pl.devices[0]))
            for n, pl in placement.items()}
  key = jax.random.key(cfg.seed)
  replicas = []
  for n, pl in placement.items():
    eng = Engine(defs, cfg.engine, meshes[n])
    replicas.append(Replica(n, eng, eng.place_params(params), eng.init_decode_state(),
                            jax.random.fold_in(key, pl.index)))
  control = Control(FakeClient(), 0, 1)
  side = InstanceSide(0, placement, meshes, replicas, KVChannel(control), c.transfer)
  ex = RemoteExecutor(control, "t", side, [], lambda r: PROMPTS[r.request_id])
  eng = replicas[0].engine
  instances = make_instances(roles, eng.cfg.decode_slots, eng.cfg.decode_slots * eng.max_cache_len,
                             eng.max_cache_len, cfg.scheduler.kv_block_tokens)
  coord = Coordinator(instances, make_policies(cfg.scheduler), max(cfg.engine.prefill_buckets))
  run = run_cls(coord, ex, specs, WallClock(), 0.05)
  result = drive(run)
  ex.stop()
  return result, ex, side, control, run


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_ops_and_messages_give_the_single_process_tokens(model, name):
  cfg = _cfg(model, name)
  specs = [RequestSpec(i, 0.01 * i, len(p), NEW) for i, p in enumerate(PROMPTS)]
  result, ex, side, control, _ = _one_process_run(model, cfg, specs)
  reference = Cluster(cfg, *model).replay(specs, lambda r: PROMPTS[r.request_id])
  assert [r.status for r in result.records] == [RequestStatus.COMPLETED] * len(PROMPTS)
  assert [r.token_ids for r in result.records] == [r.token_ids for r in reference.records]
  assert sum(r.transfer_bytes for r in result.records) > 0
  # every attempt released on both sides; every op is in the store, in order
  assert not ex.busy and not ex._keys and not side._requests and not side.busy
  ops = [Op.from_json(json.loads(v)) for k, v in control.client.kv.items() if "/op/" in k]
  assert [op.seq for op in ops] == list(range(len(ops)))
  assert ops[-1].kind == OpKind.STOP
  if name == "split_mixed":
    assert result.to_dict()["mixed_pool"]["borrowings"] > 0


def test_a_failed_instance_is_dropped_everywhere_and_its_requests_recomputed(model):
  cfg = _cfg(model, "split")
  specs = [RequestSpec(i, 0.0, len(p), NEW) for i, p in enumerate(PROMPTS)]
  result, ex, side, _, run = _one_process_run(model, cfg, specs, _KillAfterTokens)
  reference = Cluster(cfg, *model).replay(specs, lambda r: PROMPTS[r.request_id])
  assert run.kill.instance == "token0" and run.kill.resubmitted
  assert [r.status for r in result.records] == [RequestStatus.COMPLETED] * len(PROMPTS)
  assert [r.token_ids for r in result.records] == [r.token_ids for r in reference.records]
  assert result.to_dict()["faults"]["instance_failed"] == 1
  assert not ex.busy and not ex._keys and not side._requests and not side.busy


refs = st.builds(ReqRef, st.integers(0, 10**6), st.integers(0, 10**6), st.integers(1, 4096),
                 st.integers(1, 4096), st.sampled_from(["token0", "prompt1"]),
                 st.none() | st.integers(0, 63),
                 st.lists(st.integers(0, 32000), max_size=5).map(tuple))


@settings(max_examples=60, deadline=None)
@given(seq=st.integers(0, 10**6), kind=st.sampled_from(list(OpKind)),
       work_kind=st.none() | st.sampled_from(list(WorkKind)), prefill=st.lists(refs, max_size=3),
       decode=st.lists(refs, max_size=3), chunks=st.lists(st.tuples(refs, st.integers(0, 99),
                                                                   st.integers(100, 200)),
                                                         max_size=2),
       keys=st.lists(st.integers(0, 10**6), max_size=3))
def test_ops_survive_the_wire(seq, kind, work_kind, prefill, decode, chunks, keys):
  op = Op(seq, kind, "prompt0", work_kind, tuple(prefill), tuple(r.key for r in prefill[:1]),
          tuple(decode[:1]), tuple(decode), tuple(ChunkRef(*c) for c in chunks), tuple(keys))
  assert Op.from_json(json.loads(json.dumps(op.to_json()))) == op


@given(tokens=st.dictionaries(st.integers(0, 10**6), st.integers(0, 32000), max_size=4))
def test_messages_survive_the_wire(tokens):
  for m in (Message(MessageKind.WORK_DONE, seq=3, tokens=tokens),
            Message(MessageKind.WORK_FAILED, seq=4, reason="PromptError: too long"),
            Message(MessageKind.TRANSFER_DONE, key=9, nbytes=1 << 20)):
    assert Message.from_json(json.loads(json.dumps(m.to_json()))) == m


def test_placement_round_robin_over_each_pool(model):
  defs, _ = model
  cfg = ServeConfig(model=defs.cfg, engine=ENGINE,
                    cluster=ClusterConfig(prompt_instances=3, token_instances=2,
                                          instance_mesh=MeshConfig(tp=2)))
  layout = ProcessLayout.parse("prompt,token,prompt", 3)
  placed = place_instances(cfg, layout, [4, 4, 4])
  assert [(p.name, p.process, p.devices) for p in placed] == [
      ("prompt0", 0, (0, 1)), ("prompt1", 2, (0, 1)), ("prompt2", 0, (2, 3)),
      ("token0", 1, (0, 1)), ("token1", 1, (2, 3))]
  assert [p.index for p in placed] == list(range(5))
  with pytest.raises(ConfigError, match="process 0 .* hosts 2 instances of 2 devices but has 2"):
    place_instances(cfg, layout, [2, 4, 4])
  with pytest.raises(ConfigError, match="process 3 .* hosts no instance"):
    place_instances(cfg, ProcessLayout.parse("prompt,token,token,token", 4), [8] * 4)
  colocated = ServeConfig(model=defs.cfg, engine=ENGINE,
                          scheduler=SchedulerConfig(policy=ClusterPolicy.COLOCATED))
  with pytest.raises(ConfigError, match="needs scheduler.policy=split"):
    place_instances(colocated, layout, [4, 4, 4])


def test_a_cancelled_transfer_moves_nothing_and_keeps_the_order():
  client = FakeClient()
  controls = [Control(client, p, 3) for p in range(3)]
  chans = [KVChannel(c) for c in controls]
  src, dst = (mesh_lib.make_mesh(MeshConfig(tp=2, first_device=d)) for d in (0, 2))
  chans[0].cancel(src, 1, "kv/7/3")
  assert chans[1].receive(None, 0, src, dst, "kv/7/3", None, 5.0) is None
  chans[2].skip(0, src, 1, dst, "kv/7/3", 5.0)
  assert [c._next for c in chans] == [1, 1, 1]     # every process moved past it
  with pytest.raises(Exception, match="disagree on the order"):
    chans[0].cancel(src, 1, "kv/8/4")
    chans[1].receive(None, 0, src, dst, "kv/9/9", None, 5.0)
