"""What the policy process and the instance processes tell each other (JSON).

The policy (process 0) turns every executor call into an :class:`Op` with a
job-wide sequence number, published under ``op/<seq>``; every process applies
every op in sequence order (that order is also the order of cross-process KV
transfers). Instance processes answer with :class:`Message` s (work done or
failed, KV landed), published in batches under ``ev/<process>/<n>``.

A request attempt is named by its ``key`` (a job-wide integer the policy gives
each ``Request`` object), so a resubmitted request never meets its earlier
attempt's state; requests travel as :class:`ReqRef` s with what the instance
needs (slot, token instance, output length, prompt ids where it prefills).
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from splitjax.scheduling.records import WorkKind


class OpKind(enum.Enum):
  LAUNCH = "launch"      # run a Work on one instance (and its KV transfers)
  RELEASE = "release"    # request attempts ended: drop their device state
  FAIL = "fail"          # an instance is down
  STOP = "stop"          # the run is over


class MessageKind(enum.Enum):
  WORK_DONE = "work_done"          # seq, tokens
  WORK_FAILED = "work_failed"      # seq, reason
  TRANSFER_DONE = "transfer_done"  # key, nbytes


@dataclasses.dataclass(frozen=True)
class ReqRef:
  """One request attempt as an instance sees it. ``prompt_ids``: the ids it
  prefills (the original prompt, then tokens of earlier attempts); empty
  where the op does not prefill it. ``sampling``: (temperature, top_k,
  top_p, seed) where it prefills and the policy samples (None: greedy)."""
  key: int
  request_id: int
  prompt_tokens: int
  output_tokens: int
  token_instance: str
  slot: int | None
  prompt_ids: tuple[int, ...] = ()
  sampling: tuple[float, int, float, int] | None = None

  @classmethod
  def from_json(cls, d: dict) -> "ReqRef":
    s = d.get("sampling")
    return cls(d["key"], d["request_id"], d["prompt_tokens"], d["output_tokens"],
               d["token_instance"], d["slot"], tuple(d["prompt_ids"]),
               None if s is None else (float(s[0]), int(s[1]), float(s[2]), int(s[3])))


@dataclasses.dataclass(frozen=True)
class ChunkRef:
  """Prompt tokens [start, end) of ``request`` in a MIXED step."""
  request: ReqRef
  start: int
  end: int


@dataclasses.dataclass(frozen=True)
class Op:
  """One step of the job-wide log (see module doc).

  LAUNCH: ``work`` (kind, instance and its requests; ``transfers`` are the
  keys, in order, whose KV moves to their token instance). RELEASE: ``keys``.
  FAIL: ``instance``. STOP: nothing."""
  seq: int
  kind: OpKind
  instance: str = ""
  work_kind: WorkKind | None = None
  prefill: tuple[ReqRef, ...] = ()
  transfers: tuple[int, ...] = ()
  admitted: tuple[ReqRef, ...] = ()
  decode: tuple[ReqRef, ...] = ()
  chunks: tuple[ChunkRef, ...] = ()
  keys: tuple[int, ...] = ()

  def to_json(self) -> dict:
    d = dataclasses.asdict(self)
    d["kind"] = self.kind.value
    d["work_kind"] = self.work_kind.value if self.work_kind else None
    return d

  @classmethod
  def from_json(cls, d: dict) -> "Op":
    refs = lambda xs: tuple(ReqRef.from_json(x) for x in xs)
    return cls(d["seq"], OpKind(d["kind"]), d["instance"],
               WorkKind(d["work_kind"]) if d["work_kind"] else None, refs(d["prefill"]),
               tuple(d["transfers"]), refs(d["admitted"]), refs(d["decode"]),
               tuple(ChunkRef(ReqRef.from_json(c["request"]), c["start"], c["end"])
                     for c in d["chunks"]), tuple(d["keys"]))

  def transfer_refs(self) -> list[ReqRef]:
    """The prefill ReqRefs whose KV moves, in transfer order."""
    by_key = {r.key: r for r in self.prefill}
    return [by_key[k] for k in self.transfers]


@dataclasses.dataclass(frozen=True)
class Message:
  """An instance process's report. WORK_DONE: op ``seq`` finished, request id
  -> token in ``tokens``; WORK_FAILED: op ``seq`` could not run (``reason``);
  TRANSFER_DONE: the KV of attempt ``key`` (``nbytes``) is on its token instance."""
  kind: MessageKind
  seq: int = -1
  key: int = -1
  tokens: dict[int, int] = dataclasses.field(default_factory=dict)
  reason: str = ""
  nbytes: int = 0

  def to_json(self) -> dict:
    return dict(kind=self.kind.value, seq=self.seq, key=self.key,
                tokens=[[k, v] for k, v in self.tokens.items()], reason=self.reason,
                nbytes=self.nbytes)

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> "Message":
    return cls(MessageKind(d["kind"]), d["seq"], d["key"], {int(k): int(v) for k, v in d["tokens"]},
               d["reason"], d["nbytes"])
