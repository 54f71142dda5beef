"""KV bytes (GQA-aware) and serialized / layer-wise transfer times."""

import pytest
from hypothesis import given, settings, strategies as st

from splitjax.config import TransferMode
from splitjax.model.presets import get_preset
from splitjax.sim.hardware import get_hardware
from splitjax.sim.network import (NetworkError, kv_bytes, kv_bytes_without_gqa,
                                  kv_transfer_exposed_time, layerwise_exposed_time,
                                  link_bytes_per_s, transfer_time)

LLAMA70 = get_preset("llama2-70b")


def test_llama2_70b_kv_bytes_are_gqa_aware():
  per_token = 2 * 80 * 8 * 128 * 2          # K and V, 80 layers, 8 KV heads of 128, bf16
  assert per_token == 327_680
  assert kv_bytes(LLAMA70, 1) == per_token
  assert kv_bytes(LLAMA70, 1469) == 1469 * per_token
  # The paper's simulator sized KV per query head: 64 / 8 = 8x too large.
  assert kv_bytes_without_gqa(LLAMA70, 1469) == 8 * kv_bytes(LLAMA70, 1469)
  mha = get_preset("llama2-7b")             # no GQA: both formulas agree
  assert kv_bytes_without_gqa(mha, 10) == kv_bytes(mha, 10)
  with pytest.raises(NetworkError):
    kv_bytes(LLAMA70, -1)


def test_transfer_time():
  assert transfer_time(25e9, 25e9) == pytest.approx(1.0)
  assert transfer_time(25e9, 25e9, latency_s=0.01) == pytest.approx(1.01)
  assert transfer_time(0, 25e9, latency_s=0.01) == 0.0
  with pytest.raises(NetworkError, match="link_bytes_per_s must be positive"):
    transfer_time(1, 0)
  with pytest.raises(NetworkError, match="nbytes"):
    transfer_time(-1, 1)


def test_layerwise_fast_link_exposes_one_layer():
  nbytes, layers, link = 80e6, 80, 1e9          # 1 ms per layer, 10 ms of compute per layer
  assert layerwise_exposed_time(nbytes, layers, link, prefill_s=0.8) == pytest.approx(1e-3)
  assert layerwise_exposed_time(nbytes, layers, link, 0.8, latency_s=5e-3) == pytest.approx(6e-3)


def test_layerwise_slow_link_exposes_the_overrun():
  nbytes, layers, link, prefill = 80e9, 80, 1e9, 0.8     # 80 s of transfer behind 0.8 s
  serialized = transfer_time(nbytes, link)
  exposed = layerwise_exposed_time(nbytes, layers, link, prefill)
  assert exposed == pytest.approx(serialized - prefill * (layers - 1) / layers)
  assert serialized - exposed < prefill


@settings(max_examples=200, deadline=None)
@given(nbytes=st.integers(0, 10 ** 12), layers=st.integers(1, 200), link=st.floats(1e6, 1e12),
       prefill=st.floats(0, 100), latency=st.floats(0, 1))
def test_layerwise_never_slower_than_serialized(nbytes, layers, link, prefill, latency):
  exposed = layerwise_exposed_time(nbytes, layers, link, prefill, latency)
  serialized = transfer_time(nbytes, link, latency)
  assert exposed <= serialized * (1 + 1e-12)
  if nbytes:
    one_layer = transfer_time(nbytes / layers, link, latency)
    assert exposed >= one_layer * (1 - 1e-12)                # the last layer is always exposed
    assert exposed >= serialized - prefill - 1e-9            # overlap is at most the prefill


def test_layerwise_validation():
  with pytest.raises(NetworkError, match="num_layers"):
    layerwise_exposed_time(1, 0, 1, 1)
  with pytest.raises(NetworkError, match="prefill_s"):
    layerwise_exposed_time(1, 1, 1, -1)


def test_kv_transfer_between_machines():
  a100, h100 = get_hardware("dgx-a100"), get_hardware("dgx-h100")
  link = link_bytes_per_s(h100, a100)
  assert link == a100.network_bytes_per_s == 200e9             # 8 x 200 Gbit/s
  nbytes = kv_bytes(LLAMA70, 1469)                             # ~481 MB
  serialized = kv_transfer_exposed_time(LLAMA70, 1469, h100, a100, 0.1,
                                        TransferMode.SERIALIZED)
  assert serialized == pytest.approx(nbytes / link)
  auto = kv_transfer_exposed_time(LLAMA70, 1469, h100, a100, 0.1)   # layer-wise from 512
  assert auto == pytest.approx(nbytes / 80 / link)
  short = kv_transfer_exposed_time(LLAMA70, 100, h100, a100, 0.05)  # serialized below 512
  assert short == pytest.approx(kv_bytes(LLAMA70, 100) / link)
