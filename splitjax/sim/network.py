"""KV-cache size and transfer time between a prompt and a token machine.

Bytes, bytes/s and seconds. Two ways to ship a prompt's KV cache:

- serialized: after the prefill finished, one transfer (``transfer_time``);
- layer-wise: each layer's KV leaves as soon as that layer is computed, so
  only the part that does not fit behind the remaining compute is exposed
  (``layerwise_exposed_time``).

Unlike the paper's simulator, KV size is GQA-aware (Llama2-70B: 8 KV heads of
64, so 8x smaller than a per-head formula) and transfers can be layer-wise.
Plain Python: no jax.
"""

from __future__ import annotations

from splitjax.config import ModelConfig, TransferMode
from splitjax.sim.hardware import Hardware


class NetworkError(ValueError):
  """An invalid size, rate or duration."""


def kv_bytes(model: ModelConfig, tokens: int) -> int:
  """Bytes of K and V cache for ``tokens`` tokens over all layers (GQA-aware)."""
  if tokens < 0:
    raise NetworkError(f"tokens must be >= 0, got {tokens}")
  return tokens * model.kv_bytes_per_token()


def kv_bytes_without_gqa(model: ModelConfig, tokens: int) -> int:
  """What the paper's simulator charged: K and V for every *query* head
  (2 x layers x hidden x bytes per token). For comparison only."""
  if tokens < 0:
    raise NetworkError(f"tokens must be >= 0, got {tokens}")
  return tokens * 2 * model.num_layers * model.q_size * model.bytes_per_param


def _check(nbytes: float, link_bytes_per_s: float, latency_s: float) -> None:
  if nbytes < 0:
    raise NetworkError(f"nbytes must be >= 0, got {nbytes}")
  if link_bytes_per_s <= 0:
    raise NetworkError(f"link_bytes_per_s must be positive, got {link_bytes_per_s}")
  if latency_s < 0:
    raise NetworkError(f"latency_s must be >= 0, got {latency_s}")


def transfer_time(nbytes: float, link_bytes_per_s: float, latency_s: float = 0.0) -> float:
  """Seconds to move ``nbytes`` in one go: latency + bytes / bandwidth (0 for 0 bytes)."""
  _check(nbytes, link_bytes_per_s, latency_s)
  if nbytes == 0:
    return 0.0
  return latency_s + nbytes / link_bytes_per_s


def layerwise_exposed_time(nbytes: float, num_layers: int, link_bytes_per_s: float,
                           prefill_s: float, latency_s: float = 0.0) -> float:
  """Seconds a layer-by-layer transfer adds after the prefill ends.

  The prefill computes ``num_layers`` equal layers in ``prefill_s`` seconds;
  layer i's KV (``nbytes / num_layers``) is sent once layer i is done, one layer
  after the other on the link; messages are streamed, so ``latency_s`` is paid
  once. With per-layer compute p and per-layer send s, the last byte arrives
  max(s, L*s - (L-1)*p) + latency after the prefill ends: one layer's send when
  the link keeps up (s <= p), else the serialized time minus the overlapped
  compute. Never more than :func:`transfer_time` of the same bytes.
  """
  _check(nbytes, link_bytes_per_s, latency_s)
  if num_layers < 1:
    raise NetworkError(f"num_layers must be >= 1, got {num_layers}")
  if prefill_s < 0:
    raise NetworkError(f"prefill_s must be >= 0, got {prefill_s}")
  if nbytes == 0:
    return 0.0
  send = nbytes / num_layers / link_bytes_per_s
  compute = prefill_s / num_layers
  exposed = latency_s + max(send, num_layers * send - (num_layers - 1) * compute)
  return min(exposed, transfer_time(nbytes, link_bytes_per_s, latency_s))   # rounding


def link_bytes_per_s(src: Hardware, dst: Hardware) -> float:
  """Network bandwidth between two machines (all NICs), bytes/s: the slower side."""
  return min(src.network_bytes_per_s, dst.network_bytes_per_s)


def kv_transfer_exposed_time(model: ModelConfig, prompt_tokens: int, src: Hardware,
                             dst: Hardware, prefill_s: float,
                             mode: TransferMode = TransferMode.AUTO,
                             layerwise_min_tokens: int = 512,
                             latency_s: float = 0.0) -> float:
  """Seconds between the end of a prompt's prefill on ``src`` and its KV being on ``dst``.

  AUTO is layer-wise from ``layerwise_min_tokens`` prompt tokens (the paper's
  choice, also ``EngineConfig.layerwise_min_tokens``), serialized below.
  """
  return KVLink(model, src, dst, mode, layerwise_min_tokens,
                latency_s).exposed_time(prompt_tokens, prefill_s)


class KVLink:
  """Prompt-KV transfers from one machine kind to another for one model: what
  :func:`kv_transfer_exposed_time` and :func:`kv_bytes` compute, with the
  per-pair constants (bytes per token, link bandwidth, mode) worked out once."""

  def __init__(self, model: ModelConfig, src: Hardware, dst: Hardware,
               mode: TransferMode = TransferMode.AUTO, layerwise_min_tokens: int = 512,
               latency_s: float = 0.0):
    self.bytes_per_token = model.kv_bytes_per_token()
    self.num_layers = model.num_layers
    self.link = link_bytes_per_s(src, dst)
    self.latency_s = latency_s
    # Prompts of at least this many tokens go layer-wise.
    self.layerwise_from = (0 if mode == TransferMode.LAYERWISE else
                           layerwise_min_tokens if mode == TransferMode.AUTO else None)
    self._exposed: dict[tuple[int, float], float] = {}    # memo of exposed_time

  def nbytes(self, prompt_tokens: int) -> int:
    """Bytes of the prompt's KV (GQA-aware), as :func:`kv_bytes`."""
    if prompt_tokens < 0:
      raise NetworkError(f"tokens must be >= 0, got {prompt_tokens}")
    return prompt_tokens * self.bytes_per_token

  def exposed_time(self, prompt_tokens: int, prefill_s: float) -> float:
    """Seconds from the prefill's end until the KV is on the destination
    (remembered per (prompt_tokens, prefill_s): prompts alone repeat both)."""
    key = (prompt_tokens, prefill_s)
    seconds = self._exposed.get(key)
    if seconds is None:
      seconds = self._exposed[key] = self._exposed_time(prompt_tokens, prefill_s)
    return seconds

  def _exposed_time(self, prompt_tokens: int, prefill_s: float) -> float:
    nbytes = self.nbytes(prompt_tokens)
    start = self.layerwise_from
    if start is not None and prompt_tokens >= start:
      return layerwise_exposed_time(nbytes, self.num_layers, self.link, prefill_s,
                                    self.latency_s)
    return transfer_time(nbytes, self.link, self.latency_s)
