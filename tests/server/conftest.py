"""A live server on a loopback port over a tiny random-weight split cluster
(2 prompt + 2 token instances, tp=2, 8 CPU devices), shared by the server tests."""

import dataclasses

import pytest

pytest.importorskip("fastapi")

from splitjax.config import EngineConfig, MeshConfig  # noqa: E402
from splitjax.model.hf_import import load_hf_llama  # noqa: E402
from splitjax.model.params import split_model  # noqa: E402
from splitjax.runtime.cluster import Cluster  # noqa: E402
from splitjax.runtime.online_types import OnlineLimits  # noqa: E402
from splitjax.serve_config import ClusterConfig, SchedulerConfig, ServeConfig  # noqa: E402
from splitjax.server.launch import Server, ServerThread, build_server  # noqa: E402
from splitjax.server.tokenizer import ByteTokenizer  # noqa: E402

MODEL_NAME = "tiny-test"
ENGINE = EngineConfig(prefill_buckets=(16, 32, 64, 128), attention_chunk=32, decode_slots=4,
                      max_cache_len=128, layer_group_size=1, layerwise_min_tokens=32)


@dataclasses.dataclass
class Live:
  url: str
  server: Server
  cluster: Cluster


@pytest.fixture(scope="session")
def cluster(hf_gqa_dir):
  defs, params = split_model(load_hf_llama(hf_gqa_dir))
  cfg = ServeConfig(model=defs.cfg, engine=ENGINE,
                    cluster=ClusterConfig(prompt_instances=2, token_instances=2,
                                          instance_mesh=MeshConfig(tp=2)),
                    scheduler=SchedulerConfig())
  return Cluster(cfg, defs, params)


def start(cluster, limits=OnlineLimits(max_waiting=8, max_open=16), **kw) -> tuple[Live, object]:
  server = build_server(cluster, ByteTokenizer(cluster.model_limits.vocab_size),
                        model_name=MODEL_NAME, limits=limits, **kw)
  http = ServerThread(server.app, server.engine).start()
  return Live(http.url, server, cluster), http


@pytest.fixture(scope="session")
def live(cluster):
  lv, http = start(cluster)
  yield lv
  http.stop()
