"""The real runtime on 8 CPU devices: every policy gives the tokens of the
single-instance reference (disaggregation, batching and preemption change
timing, never tokens), and requests are conserved."""

import dataclasses

import pytest

from splitjax.config import EngineConfig, GenerateConfig, GenerateMode, MeshConfig, TransferMode
from splitjax.engine.engine import PromptError
from splitjax.engine.generate import Generator
from splitjax.metrics import RequestStatus
from splitjax.model.hf_import import load_hf_llama
from splitjax.model.params import split_model
from splitjax.runtime.cluster import Cluster
from splitjax.serve_config import (ClusterConfig, ClusterPolicy, SchedulerConfig, ServeConfig)
from splitjax.workload import RequestSpec

ENGINE = EngineConfig(prefill_buckets=(16, 32, 64, 128), attention_chunk=32, decode_slots=4,
                      max_cache_len=128, layer_group_size=1, layerwise_min_tokens=32)
PROMPTS = [[1, 2, 3, 4, 5], [300, 7], list(range(10, 50)), [42] * 17, [8, 9, 10],
           list(range(100, 170)), [5] * 33, [77, 78], list(range(200, 226)), [9] * 60]
NEW = 10

CONFIGS = {
    "split": SchedulerConfig(policy=ClusterPolicy.SPLIT),
    "split_mixed": SchedulerConfig(policy=ClusterPolicy.SPLIT, mixed_pool=True,
                                   borrow_prompt_tokens=1, max_preemptions=1),
    "colocated": SchedulerConfig(policy=ClusterPolicy.COLOCATED, prompt_token_budget=96),
    "colocated_chunked": SchedulerConfig(policy=ClusterPolicy.COLOCATED_CHUNKED,
                                         chunk_token_budget=24),
}


@pytest.fixture(scope="module")
def model(hf_gqa_dir):
  return split_model(load_hf_llama(hf_gqa_dir))


@pytest.fixture(scope="module")
def reference(model):
  defs, params = model
  cfg = GenerateConfig(model=defs.cfg, prefill_mesh=MeshConfig(tp=2), engine=ENGINE,
                       mode=GenerateMode.SINGLE, max_new_tokens=NEW)
  return Generator(cfg, defs, params).generate(PROMPTS).tokens


def _cluster(model, name, **cluster_kw):
  defs, params = model
  cluster = ClusterConfig(prompt_instances=1 if name == "split_mixed" else 2,
                          token_instances=3 if name == "split_mixed" else 2,
                          instance_mesh=MeshConfig(tp=2), **cluster_kw)
  cfg = ServeConfig(model=defs.cfg, engine=ENGINE, cluster=cluster, scheduler=CONFIGS[name])
  return Cluster(cfg, defs, params)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_policy_matches_the_single_instance_reference(model, reference, name):
  cluster = _cluster(model, name)
  # Staggered arrivals so queues, batching, borrowing and preemption happen.
  specs = [RequestSpec(i, 0.002 * i, len(p), NEW) for i, p in enumerate(PROMPTS)]
  result = cluster.replay(specs, lambda r: PROMPTS[r.request_id])
  assert [r.status for r in result.records] == [RequestStatus.COMPLETED] * len(PROMPTS)
  assert [r.token_ids for r in result.records] == reference
  s = result.summary
  assert s.completed == s.submitted == len(PROMPTS)
  if name.startswith("split"):
    assert s.transfer_bytes > 0
  assert all(len(r.token_times_s) == NEW for r in result.records)
  if name == "split_mixed":   # a borrowed token instance really ran prompts
    assert result.to_dict()["mixed_pool"]["borrowings"] >= 1
    assert any(r.prompt_instance.startswith("token") for r in result.records)


def test_generate_api_and_transfer_modes(model, reference):
  for mode in (TransferMode.SERIALIZED, TransferMode.LAYERWISE):
    cluster = _cluster(model, "split", transfer=mode)
    assert cluster.generate(PROMPTS, NEW) == reference
  with pytest.raises(PromptError, match="out of vocabulary"):
    cluster.generate([[1, 10**6]], 4)


def test_requests_that_cannot_fit_are_rejected_and_the_rest_finish(model, reference):
  cluster = _cluster(model, "split")
  specs = [RequestSpec(0, 0.0, 5, NEW), RequestSpec(1, 0.0, 120, 20),   # 140 > 128 cache
           RequestSpec(2, 0.0, 2, NEW)]
  prompts = {0: PROMPTS[0], 1: list(range(120)), 2: PROMPTS[1]}
  result = cluster.replay(specs, lambda r: prompts[r.request_id])
  by_id = {r.request_id: r for r in result.records}
  assert by_id[1].status == RequestStatus.REJECTED and "140 tokens" in by_id[1].reason
  assert by_id[0].token_ids == reference[0] and by_id[2].token_ids == reference[1]
  d = result.to_dict()
  assert d["requests"]["submitted"] == 3 and d["requests"]["completed"] == 2


def test_a_failing_batch_fails_its_requests_with_the_reason_and_the_run_goes_on(model, reference):
  cluster = _cluster(model, "colocated")
  specs = [RequestSpec(0, 0.0, 5, NEW), RequestSpec(1, 0.5, 3, NEW), RequestSpec(2, 1.0, 2, NEW)]
  prompts = {0: PROMPTS[0], 1: [1, 2, 10**6], 2: PROMPTS[1]}    # request 1: id out of vocab
  result = cluster.replay(specs, lambda r: prompts[r.request_id])
  by_id = {r.request_id: r for r in result.records}
  assert by_id[1].status == RequestStatus.FAILED and "out of vocabulary" in by_id[1].reason
  assert by_id[0].token_ids == reference[0] and by_id[2].token_ids == reference[1]
  assert result.summary.completed + result.summary.failed == 3
