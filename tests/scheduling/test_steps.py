"""Per-instance step policies: mixed-pool preemption, co-located prefill priority,
chunked prefill under a token budget."""

from splitjax.scheduling.batchers import ContinuousTokenBatcher, FCFSPromptBatcher
from splitjax.scheduling.records import Phase, Role, WorkKind
from splitjax.scheduling.steps import ChunkedColocatedStep, ColocatedStep, MixedStep
from tests.scheduling.helpers import inst, req


def _decoding(i, r):
  i.take_slot(r)
  r.phase = Phase.DECODING
  i.decoding[r.request_id] = r


def test_mixed_step_prompts_first_with_a_cap_on_consecutive_preemptions():
  m = inst("m", Role.TOKEN)
  m.role = Role.MIXED
  old = req(0, 10, 100, token_inst="m")
  _decoding(m, old)
  step = MixedStep(FCFSPromptBatcher(2048), ContinuousTokenBatcher(), max_preemptions=2)
  kinds = []
  for i in range(1, 5):
    m.prompt_queue.append(req(i, 50, 5, token_inst="x"))
    w = step.next_work(m, 0.0)
    kinds.append(w.kind)
    if w.kind == WorkKind.PREFILL:            # the prompt ran; its KV leaves
      for r in w.prefill:
        del m.prefilling[r.request_id]
        del m.held[r.request_id]
        m.kv.free(r.request_id)
  # Two prompt batches in a row, then the overdue token batch, then prompts again.
  assert kinds == [WorkKind.PREFILL, WorkKind.PREFILL, WorkKind.DECODE, WorkKind.PREFILL]
  assert old.preemptions == 3 and old.stalled == 1 and not m.prompt_queue


def test_colocated_prefers_prefill_then_decodes():
  c = inst("c", Role.COLOCATED, slots=2)
  step = ColocatedStep(FCFSPromptBatcher(2048))
  for i in range(3):
    r = req(i, 100, 10, token_inst="c")
    c.incoming[i] = r
    c.prompt_queue.append(r)
  w = step.next_work(c, 0.0)
  assert w.kind == WorkKind.PREFILL and len(w.prefill) == 2 and not w.transfers
  for r in w.prefill:                          # as the coordinator does on completion
    del c.prefilling[r.request_id]
    r.phase = Phase.DECODING
    c.decoding[r.request_id] = r
  w = step.next_work(c, 0.0)                   # third prompt has no slot: decode instead
  assert w.kind == WorkKind.DECODE and len(w.decode) == 2


def test_chunked_step_fills_the_budget_after_decodes():
  c = inst("c", Role.COLOCATED, slots=4)
  step = ChunkedColocatedStep(token_budget=64)
  d = req(9, 5, 10, token_inst="c")
  _decoding(c, d)
  for i in range(2):
    r = req(i, 40, 3, token_inst="c")
    c.incoming[i] = r
    c.prompt_queue.append(r)
  w = step.next_work(c, 0.0)
  assert w.kind == WorkKind.MIXED and w.decode == (d,)
  assert [(x.request.request_id, x.start, x.end) for x in w.chunks] == [(0, 0, 40), (1, 0, 23)]
  assert 1 + sum(x.end - x.start for x in w.chunks) == 64
  for x in w.chunks:                            # applied by the coordinator on completion
    x.request.prefilled = x.end
  del c.prefilling[0]                           # request 0 finished its prompt
  w = step.next_work(c, 0.0)
  assert [(x.request.request_id, x.start, x.end) for x in w.chunks] == [(1, 23, 40)]
