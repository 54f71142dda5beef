"""KV prefixes moved between processes with ``jax.device_put``, in one layout.

Across processes ``jax.device_put(x, NamedSharding(dst_mesh, spec))`` is a
send on the process that holds ``x`` and a receive on the process that owns
``dst_mesh``; both must call it. JAX supports it only when both shardings are
the same HLO sharding (same mesh shape and spec), and it pairs a sender's and
a receiver's calls **by issue order**: measured on jax 0.10.2 CPU, two
same-shape transfers received in the opposite order swapped their data
silently. So every transfer here is

1. sent only from the canonical layout ``[L, B, K, T, H]``, KV heads over
   ``tp`` (``splitjax.transfer``'s check), between meshes of equal shape;
2. announced by a :class:`Header` under ``xfer/<src>-<dst>/<seq>`` in the
   coordination key-value store (per-pair sequence number, a tag naming what
   it carries, the source mesh, every array's shape and dtype);
3. received only after the receiver has checked the header against what it
   expects next (tag, mesh, its engine's ``KVLayout``, batch shape).

Any mismatch raises :class:`~splitjax.engine.types.KVLayoutError` before a
byte moves. A mismatch leaves the pair's order broken (the sender's call is
pending), so it is fatal to the job: abort, do not retry.

Both calls return at once; a layer-wise prefill's groups are sent as their
programs finish. The receiver gets a Prefix on its mesh (still in flight:
``Control.wait_ready`` waits for it while watching the peers).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from splitjax import mesh as mesh_lib
from splitjax import transfer
from splitjax.config import TransferMode
from splitjax.distributed.control import Control
from splitjax.engine.types import KVGroup, KVLayout, KVLayoutError, Prefix
from splitjax.model.sampling import SamplingParams

# Pytree structure of a prefix's small arrays (first token, lengths, sampling).
_REST = jax.tree.structure((0, 0, SamplingParams(0, 0, 0)))


@dataclasses.dataclass(frozen=True)
class Header:
  """What the sender announces before its device_put (see module doc).

  kv: (shape, dtype) of each group's K (V is the same); rest: (shape, dtype)
  of the first-token, lengths and sampling leaves; devices: source mesh
  device ids (row-major); mesh_shape: (dp, tp)."""
  seq: int
  tag: str
  devices: tuple[int, ...]
  mesh_shape: tuple[int, int]
  kv: tuple[tuple[tuple[int, ...], str], ...]
  rest: tuple[tuple[tuple[int, ...], str], ...]

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, d: dict) -> "Header":
    pairs = lambda xs: tuple((tuple(s), str(t)) for s, t in xs)
    return cls(int(d["seq"]), str(d["tag"]), tuple(d["devices"]), tuple(d["mesh_shape"]),
               pairs(d["kv"]), pairs(d["rest"]))

  @property
  def kv_nbytes(self) -> int:
    return sum(2 * int(np.prod(s)) * np.dtype(t).itemsize for s, t in self.kv)


def _mesh_shape(m: Mesh) -> tuple[int, int]:
  return (m.shape["dp"], m.shape["tp"])


def _device_ids(m: Mesh) -> tuple[int, ...]:
  return tuple(int(d.id) for d in m.devices.flat)


def _check_meshes(src: Mesh, dst: Mesh) -> None:
  if _mesh_shape(src) != _mesh_shape(dst):
    raise KVLayoutError(f"cross-process KV transfer needs meshes of one shape: source "
                        f"(dp, tp)={_mesh_shape(src)}, destination {_mesh_shape(dst)} "
                        "(reshard locally on the receiving side instead)")


def _spec(a) -> tuple[tuple[int, ...], str]:
  return tuple(int(x) for x in a.shape), np.dtype(a.dtype).name


class KVChannel:
  """Numbered KV transfers from and to this process (one sequence per ordered
  pair of processes). Not thread-safe: one driver thread per process."""

  def __init__(self, control: Control):
    self.control = control
    self.me = control.process_id
    self._next: dict[tuple[int, int], int] = {}

  def _seq(self, src: int, dst: int) -> int:
    n = self._next.get((src, dst), 0)
    self._next[(src, dst)] = n + 1
    return n

  def send(self, prefix: Prefix, src_mesh: Mesh, dst_process: int, dst_mesh: Mesh,
           tag: str) -> None:
    """Announces and starts sending ``prefix`` (on ``src_mesh``, this process)
    to ``dst_mesh`` (process ``dst_process``). Returns at once. Raises
    KVLayoutError (nothing announced) unless the KV is canonical on
    ``src_mesh`` and the meshes have one shape."""
    _check_meshes(src_mesh, dst_mesh)
    for i, g in enumerate(prefix.kv):
      for name, arr in (("k", g.k_LBKTH), ("v", g.v_LBKTH)):
        transfer._check_canonical(arr, f"KV group {i} {name}")
        if arr.sharding.mesh != src_mesh:
          raise KVLayoutError(f"KV group {i} {name} is not on the source mesh {src_mesh}")
      if g.k_LBKTH.shape != g.v_LBKTH.shape or g.k_LBKTH.dtype != g.v_LBKTH.dtype:
        raise KVLayoutError(f"KV group {i}: k {g.k_LBKTH.shape} != v {g.v_LBKTH.shape}")
    rest = jax.device_put((prefix.first_token_B, prefix.lengths_B, prefix.sampling),
                          mesh_lib.replicated(src_mesh))
    header = Header(self._seq(self.me, dst_process), tag, _device_ids(src_mesh),
                    _mesh_shape(src_mesh), tuple(_spec(g.k_LBKTH) for g in prefix.kv),
                    tuple(_spec(a) for a in jax.tree.leaves(rest)))
    self.control.publish(f"xfer/{self.me}-{dst_process}/{header.seq}", header.to_json())
    self._put(prefix.kv, rest, dst_mesh)

  def receive(self, layout: KVLayout, src_process: int, src_mesh: Mesh, dst_mesh: Mesh,
              tag: str, batch_shape: tuple[int, int] | None, timeout_s: float) -> Prefix:
    """Waits for the next header from ``src_process``, checks it (see module
    doc; ``batch_shape`` = expected (B, T) or None) and starts receiving onto
    ``dst_mesh``. Returns the in-flight Prefix. Raises KVLayoutError on any
    mismatch, or the control plane's errors (dead peer, abort, timeout)."""
    seq = self._seq(src_process, self.me)
    header = Header.from_json(self.control.read(f"xfer/{src_process}-{self.me}/{seq}", timeout_s))
    self._check_header(header, layout, src_mesh, dst_mesh, tag, batch_shape)
    src_kv = NamedSharding(src_mesh, mesh_lib.kv_spec())
    empty = lambda spec, sh: jax.make_array_from_single_device_arrays(spec[0], sh, [],
                                                                      dtype=np.dtype(spec[1]))
    kv = tuple(KVGroup(empty(s, src_kv), empty(s, src_kv)) for s in header.kv)
    rest = jax.tree.unflatten(_REST, [empty(s, mesh_lib.replicated(src_mesh))
                                      for s in header.rest])
    return self._put(kv, rest, dst_mesh)

  def _check_header(self, h: Header, layout: KVLayout, src_mesh: Mesh, dst_mesh: Mesh,
                    tag: str, batch_shape: tuple[int, int] | None) -> None:
    where = f"transfer #{h.seq} to process {self.me}"
    if h.tag != tag:
      raise KVLayoutError(f"{where} carries {h.tag!r} but {tag!r} was expected next: the "
                          "processes disagree on the order of transfers")
    if h.devices != _device_ids(src_mesh) or h.mesh_shape != _mesh_shape(src_mesh):
      raise KVLayoutError(f"{where} comes from devices {h.devices} {h.mesh_shape}, expected "
                          f"{_device_ids(src_mesh)} {_mesh_shape(src_mesh)}")
    _check_meshes(src_mesh, dst_mesh)
    shapes = [jax.ShapeDtypeStruct(s, np.dtype(t)) for s, t in h.kv]
    layout.check(Prefix(tuple(KVGroup(s, s) for s in shapes), None, None, None))
    if batch_shape is not None:
      for s in shapes:
        if (s.shape[1], s.shape[3]) != tuple(batch_shape):
          raise KVLayoutError(f"{where}: KV batch x length {(s.shape[1], s.shape[3])}, "
                              f"expected {tuple(batch_shape)}")
    if len(h.rest) != _REST.num_leaves:
      raise KVLayoutError(f"{where}: {len(h.rest)} small arrays, expected {_REST.num_leaves}")

  @staticmethod
  def _put(kv, rest, dst_mesh: Mesh) -> Prefix:
    dst_kv = NamedSharding(dst_mesh, mesh_lib.kv_spec())
    groups = tuple(KVGroup(jax.device_put(g.k_LBKTH, dst_kv), jax.device_put(g.v_LBKTH, dst_kv))
                   for g in kv)
    first, lengths, sampling = jax.device_put(rest, mesh_lib.replicated(dst_mesh))
    return Prefix(groups, first, lengths, sampling)


def prefill_and_send(engine, params, batch, key, mode: TransferMode, channel: KVChannel,
                     dst_process: int, dst_mesh: Mesh, tag: str) -> Prefix:
  """Prefill ``batch`` on ``engine`` (this process) and send its KV to
  ``dst_mesh``: SERIALIZED waits for the prefill, then sends; LAYERWISE
  sends each group as the chain produces it (AUTO picks as in-process, see
  ``transfer.use_layerwise``). Returns the local prefix (first tokens)."""
  longest = int(batch.lengths_B[:batch.num_real].max())
  layerwise = transfer.use_layerwise(mode, longest, engine.cfg.layerwise_min_tokens)
  prefix = engine.prefill(params, batch, key, layerwise=layerwise)
  if not layerwise:
    jax.block_until_ready(prefix)
  channel.send(prefix, engine.mesh, dst_process, dst_mesh, tag)
  return prefix
