"""KV prefixes moved between processes with ``jax.device_put``, in one layout.

Across processes ``jax.device_put(x, NamedSharding(dst_mesh, spec))`` is a
send on the process that holds ``x`` and a receive on the process that owns
``dst_mesh``. JAX supports it only between shardings that are one HLO
sharding (same mesh shape and spec), and it pairs sends with receives by a
transfer key that is a counter in each process, bumped by *every*
cross-process ``device_put`` whether or not the process takes part (XLA's
``PjRtTransferServer``: "the transfer key must be incremented in all
processes"). So all processes must issue every transfer, in one global
order, with one structure. Measured on jax 0.10.2 CPU: two same-shape
transfers received in the opposite order swapped their data silently, and a
process that skipped a transfer it had no part in hung a later one.

Every transfer here is therefore

1. sent only from the canonical layout ``[L, B, K, T, H]``, KV heads over
   ``tp`` (``splitjax.transfer``'s check), between meshes of equal shape;
2. announced by its sender with a :class:`Header` under ``xfer/<seq>`` in the
   coordination key-value store: a job-wide sequence number, source and
   destination processes, a tag naming what it carries, the source mesh,
   every array's shape and dtype;
3. issued by every process in sequence order: the sender sends, the receiver
   checks the header against what it expects next (tag, processes, mesh, its
   engine's ``KVLayout``, batch shape) and receives, every other process
   checks the tag and issues the same ``device_put`` on placeholders
   (:meth:`KVChannel.skip`, which moves nothing).

Any mismatch raises :class:`~splitjax.engine.types.KVLayoutError` before a
byte moves. A mismatch leaves the job's transfer order broken (a send is
pending), so it is fatal to the job: abort, do not retry.

All calls return at once; a layer-wise prefill's groups are sent as their
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

  seq: job-wide transfer number; src / dst: processes; kv: (shape, dtype) of each group's K (V is the same); rest: (shape, dtype)
  of the first-token, lengths and sampling leaves; devices: source mesh
  device ids (row-major); mesh_shape: (dp, tp)."""
  seq: int
  src: int
  dst: int
  tag: str
  devices: tuple[int, ...]
  mesh_shape: tuple[int, int]
  kv: tuple[tuple[tuple[int, ...], str], ...]
  rest: tuple[tuple[tuple[int, ...], str], ...]
  cancelled: bool = False     # the sender could not produce the KV: nothing moves

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, d: dict) -> "Header":
    pairs = lambda xs: tuple((tuple(s), str(t)) for s, t in xs)
    return cls(int(d["seq"]), int(d["src"]), int(d["dst"]), str(d["tag"]), tuple(d["devices"]),
               tuple(d["mesh_shape"]), pairs(d["kv"]), pairs(d["rest"]),
               bool(d.get("cancelled", False)))

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
  """The job's numbered cross-process KV transfers, seen from this process.
  Every process must call :meth:`send`, :meth:`receive` or :meth:`skip` for
  every transfer, in one order (see module doc). Not thread-safe."""

  def __init__(self, control: Control):
    self.control = control
    self.me = control.process_id
    self._next = 0

  def _take_seq(self) -> int:
    self._next += 1
    return self._next - 1

  def send(self, prefix: Prefix, src_mesh: Mesh, dst_process: int, dst_mesh: Mesh,
           tag: str, after_ready: bool = False) -> None:
    """Announces and starts sending ``prefix`` (on ``src_mesh``, this process)
    to ``dst_mesh`` (process ``dst_process``). Returns at once, or with
    ``after_ready`` once the prefix is computed (a serialized transfer: the
    header still goes out first, so the other processes move on). Raises
    KVLayoutError (nothing announced, no number used) unless the KV is
    canonical on ``src_mesh`` and the meshes have one shape."""
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
    header = Header(self._take_seq(), self.me, dst_process, tag, _device_ids(src_mesh),
                    _mesh_shape(src_mesh), tuple(_spec(g.k_LBKTH) for g in prefix.kv),
                    tuple(_spec(a) for a in jax.tree.leaves(rest)))
    self.control.publish(f"xfer/{header.seq}", header.to_json())
    if after_ready:
      jax.block_until_ready((prefix.kv, rest))
    self._put(prefix.kv, rest, dst_mesh)

  def cancel(self, src_mesh: Mesh, dst_process: int, tag: str) -> None:
    """Announces that this process's next transfer (``tag``) will not happen
    (its prefill failed): every process moves past it without a device_put."""
    header = Header(self._take_seq(), self.me, dst_process, tag, _device_ids(src_mesh),
                    _mesh_shape(src_mesh), (), (), cancelled=True)
    self.control.publish(f"xfer/{header.seq}", header.to_json())

  def receive(self, layout: KVLayout, src_process: int, src_mesh: Mesh, dst_mesh: Mesh,
              tag: str, batch_shape: tuple[int, int] | None,
              timeout_s: float) -> Prefix | None:
    """Waits for the next transfer's header, checks that it is ``tag`` from
    ``src_process`` to this process and matches ``layout`` / ``batch_shape``
    (expected (B, T), or None) and the meshes, and starts receiving onto
    ``dst_mesh``. Returns the in-flight Prefix, or None if the sender
    cancelled it. Raises KVLayoutError on any mismatch, or the control
    plane's errors (dead peer, abort, timeout)."""
    header = self._next_header(src_process, self.me, tag, timeout_s)
    if header.cancelled:
      return None
    self._check_header(header, layout, src_mesh, dst_mesh, batch_shape)
    return self._put(*self._placeholders(header, src_mesh), dst_mesh)

  def skip(self, src_process: int, src_mesh: Mesh, dst_process: int, dst_mesh: Mesh, tag: str,
           timeout_s: float) -> None:
    """Takes part in the next transfer (``tag``, between two other processes)
    without moving data: the same device_put on placeholders, so this
    process's transfer keys stay in step (see module doc)."""
    header = self._next_header(src_process, dst_process, tag, timeout_s)
    if header.cancelled:
      return
    if header.devices != _device_ids(src_mesh):
      raise KVLayoutError(f"transfer #{header.seq} comes from devices {header.devices}, "
                          f"expected {_device_ids(src_mesh)}")
    self._put(*self._placeholders(header, src_mesh), dst_mesh)

  def _next_header(self, src: int, dst: int, tag: str, timeout_s: float) -> Header:
    seq = self._take_seq()
    h = Header.from_json(self.control.read(f"xfer/{seq}", timeout_s))
    if (h.tag, h.src, h.dst) != (tag, src, dst):
      raise KVLayoutError(f"transfer #{seq} is {h.tag!r} from process {h.src} to {h.dst} but "
                          f"process {self.me} expected {tag!r} from {src} to {dst}: the "
                          "processes disagree on the order of transfers")
    return h

  @staticmethod
  def _placeholders(h: Header, src_mesh: Mesh):
    """Arrays of the header's shapes on ``src_mesh`` with no data here."""
    src_kv = NamedSharding(src_mesh, mesh_lib.kv_spec())
    empty = lambda spec, sh: jax.make_array_from_single_device_arrays(spec[0], sh, [],
                                                                      dtype=np.dtype(spec[1]))
    kv = tuple(KVGroup(empty(s, src_kv), empty(s, src_kv)) for s in h.kv)
    if len(h.rest) != _REST.num_leaves:
      raise KVLayoutError(f"transfer #{h.seq}: {len(h.rest)} small arrays, expected "
                          f"{_REST.num_leaves}")
    rest = jax.tree.unflatten(_REST, [empty(s, mesh_lib.replicated(src_mesh)) for s in h.rest])
    return kv, rest

  def _check_header(self, h: Header, layout: KVLayout, src_mesh: Mesh, dst_mesh: Mesh,
                    batch_shape: tuple[int, int] | None) -> None:
    where = f"transfer #{h.seq} to process {self.me}"
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

  @staticmethod
  def _put(kv, rest, dst_mesh: Mesh) -> Prefix:
    """One device_put per K / V group and one for the small arrays (the same
    calls on every process: each consumes transfer keys)."""
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
  channel.send(prefix, engine.mesh, dst_process, dst_mesh, tag, after_ready=not layerwise)
  return prefix
