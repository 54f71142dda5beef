"""Process layout, job coordinates and the control plane (no processes, no jax)."""

import json
import threading
import time

import pytest

from splitjax.config import ConfigError
from splitjax.distributed import control as control_lib
from splitjax.distributed.launch import DistributedSpec, EnvVar
from splitjax.distributed.layout import Pool, ProcessLayout
from tests.distributed.fake_client import FakeClient


def test_layout_default_and_parse():
  assert ProcessLayout.default(2).pools == (Pool.PROMPT, Pool.TOKEN)
  four = ProcessLayout.default(4)
  assert (four.prompt_processes, four.token_processes) == ((0, 1), (2, 3))
  assert ProcessLayout.parse("token, Prompt,token", 3).prompt_processes == (1,)
  with pytest.raises(ConfigError, match="'decode' is not one of"):
    ProcessLayout.parse("prompt,decode", 2)
  with pytest.raises(ConfigError, match="3 pools for 2 processes"):
    ProcessLayout.parse("prompt,token,token", 2)
  with pytest.raises(ConfigError, match="at least one prompt and one token"):
    ProcessLayout.parse("prompt,prompt", 2)


def test_spec_from_env_and_back():
  env = {EnvVar.COORDINATOR.value: "10.0.0.1:1234", EnvVar.NUM_PROCESSES.value: "4",
         EnvVar.PROCESS_ID.value: "2", EnvVar.CPU_DEVICES.value: "2"}
  spec = DistributedSpec.from_env(env, process_id=3)          # an explicit value wins
  assert (spec.coordinator_address, spec.num_processes, spec.process_id) == ("10.0.0.1:1234", 4, 3)
  assert spec.multi_process and not DistributedSpec.from_env({}).multi_process
  assert DistributedSpec.from_env(spec.env()) == spec
  with pytest.raises(ValueError, match="SPLITJAX_NUM_PROCESSES='two'"):
    DistributedSpec.from_env({EnvVar.NUM_PROCESSES.value: "two"})


def _controls(n, **kw):
  client = FakeClient()
  return [control_lib.Control(client, p, n, heartbeat_interval_s=0.05,
                              heartbeat_timeout_s=0.3, poll_s=0.05, **kw) for p in range(n)]


def test_broadcast_and_barrier():
  cs = _controls(3)
  for c in cs:
    c.start()
  assert cs[0].broadcast("plan", lambda: [1, 2], 0, 5) == [1, 2]
  assert cs[2].broadcast("plan", lambda: pytest.fail("not the root"), 0, 5) == [1, 2]
  done = []
  threads = [threading.Thread(target=lambda c=c: (c.barrier("b", 5), done.append(c.process_id)))
             for c in cs]
  for t in threads:
    t.start()
  for t in threads:
    t.join(5)
  assert sorted(done) == [0, 1, 2]
  for c in cs:
    c.stop()


def test_silent_peer_is_noticed_within_the_timeout():
  c0, c1 = _controls(2)
  c0.start()
  c1.start()
  c1.stop()                        # process 1 goes silent
  t = time.monotonic()
  with pytest.raises(control_lib.PeerFailure) as err:
    c0.read("never", timeout_s=10)
  assert err.value.dead == (1,)
  assert 0.3 <= time.monotonic() - t < 1.5
  c0.stop()


def test_abort_reaches_every_wait_and_timeouts_are_bounded():
  c0, c1 = _controls(2)
  c0.start()
  c1.start()
  with pytest.raises(control_lib.ControlTimeout, match="no 'x' after"):
    c1.read("x", timeout_s=0.2)
  c0.abort("process 0 gave up")
  c0.abort("a second abort does not replace the first")
  with pytest.raises(control_lib.JobAborted, match="process 0 gave up"):
    c1.read("x", timeout_s=5)
  assert json.loads(c0.client.kv["splitjax/abort"]) == "process 0 gave up"
  c0.stop()
  c1.stop()
