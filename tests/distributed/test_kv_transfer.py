"""KV prefixes between two processes: received == sent, wrong layouts are errors."""

from splitjax.distributed import kv_transfer
from tests.distributed.launcher import ROOT, launch, results


def test_header_json_round_trip():
  h = kv_transfer.Header(3, 0, 1, "wave0/group1", (0, 1), (1, 2), (((4, 2, 2, 64, 8), "float32"),),
                         (((2,), "int32"),) * 5)
  back = kv_transfer.Header.from_json(h.to_json())
  assert back == h
  assert back.kv_nbytes == 2 * 4 * 2 * 2 * 64 * 8 * 4


def test_two_processes_kv_equal_and_layout_errors():
  proc = launch(2, ROOT / "tests" / "distributed" / "transfer_worker.py")
  assert proc.returncode == 0, proc.stdout + proc.stderr
  res = results(proc.stdout)
  assert set(res) == {0, 1}, proc.stdout
  # received KV == sent KV, one program and a layer-wise chain of 4 groups
  assert res[1]["equal"] == {"prefill/serialized": {"groups": 1, "equal": True},
                             "prefill/layerwise": {"groups": 4, "equal": True}}
  errors = res[0]["errors"] | res[1]["errors"]
  assert "canonical KV layout" in errors["not_canonical"]
  assert "meshes of one shape" in errors["mesh_shapes"]
  assert "dtype float32, expected bfloat16" in errors["dtype"]
  assert "disagree on the order of transfers" in errors["order"]
