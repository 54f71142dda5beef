"""KV block accounting: can_allocate before allocate, never over-committed."""

import pytest
from hypothesis import given, strategies as st

from splitjax.scheduling.kv_memory import KVMemory, KVMemoryError


def test_blocks_round_up_and_refuse_overcommit():
  kv = KVMemory(capacity_tokens=100, block_tokens=16)   # 6 whole blocks
  assert kv.total_blocks == 6 and kv.blocks_for(17) == 2
  kv.allocate(1, 64)                                     # 4 blocks
  assert kv.can_allocate(32) and not kv.can_allocate(33)
  with pytest.raises(KVMemoryError, match="needs 3 blocks, 2 free"):
    kv.allocate(2, 33)
  with pytest.raises(KVMemoryError, match="already holds"):
    kv.allocate(1, 1)
  kv.free(1)
  with pytest.raises(KVMemoryError, match="holds no"):
    kv.free(1)
  assert kv.free_blocks == 6 and not kv.fits_ever(97)


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 9), st.integers(1, 300)), max_size=80))
def test_random_sequences_never_overcommit(ops):
  kv = KVMemory(capacity_tokens=1000, block_tokens=16)
  for alloc, rid, tokens in ops:
    if alloc and not kv.holds(rid) and kv.can_allocate(tokens):
      kv.allocate(rid, tokens)
    elif not alloc and kv.holds(rid):
      kv.free(rid)
    assert 0 <= kv.used_blocks <= kv.total_blocks
