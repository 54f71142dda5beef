"""Machine kinds (DGX-A100, DGX-H100, ...) as data: ``hardware_catalog.json``.

A :class:`Hardware` describes one *machine* (a server of ``devices_per_machine``
accelerators). Units: FLOP/s, bytes, bytes/s, bits/s, watts (W) and US dollars
per machine-hour. Every number in the catalog carries a ``source`` line saying
where it comes from (the Splitwise paper's Table I, a vendor datasheet, or a
measurement on this machine). Plain Python: no jax.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
from pathlib import Path
from typing import Any, Mapping

DEFAULT_CATALOG = Path(__file__).with_name("hardware_catalog.json")


class HardwareError(ValueError):
  """A catalog file is malformed or a machine kind is unknown."""


@dataclasses.dataclass(frozen=True)
class Hardware:
  """One machine kind.

  Attributes:
    name: catalog key, e.g. ``dgx-a100``.
    description: free text.
    devices_per_machine: accelerators (GPUs) per machine.
    device_name: the device as the profile CSV names it (``a100-80gb``).
    device_flops: dense fp16/bf16 tensor peak per device, FLOP/s (the roofline uses this).
    device_flops_table: the per-GPU "TFLOPs" of the paper's Table I, FLOP/s (kept for reference).
    device_memory_bytes: HBM per device, bytes.
    device_memory_bytes_per_s: HBM bandwidth per device, bytes/s.
    device_power_w: rated power per device, W.
    machine_power_w: rated power of the whole machine (devices + host), W.
    nvlink_bytes_per_s: device-to-device link inside the machine, bytes/s.
    infiniband_bits_per_s: one network link (NIC), bits/s.
    infiniband_links: network links per machine.
    cost_per_hour_usd: $ per machine-hour (0 = not priced).
    power_cap_fraction: machine power cap as a fraction of ``machine_power_w`` (1 = uncapped).
    source: field name -> where its value comes from.
    infiniband_bytes_per_s: one network link, bytes/s (derived).
  """
  name: str
  description: str
  devices_per_machine: int
  device_name: str
  device_flops: float
  device_flops_table: float
  device_memory_bytes: float
  device_memory_bytes_per_s: float
  device_power_w: float
  machine_power_w: float
  nvlink_bytes_per_s: float
  infiniband_bits_per_s: float
  infiniband_links: int
  cost_per_hour_usd: float
  power_cap_fraction: float
  source: Mapping[str, str] = dataclasses.field(repr=False, compare=False)
  infiniband_bytes_per_s: float = dataclasses.field(init=False)

  def __post_init__(self):
    object.__setattr__(self, "source", types.MappingProxyType(dict(self.source)))
    _validate(self)
    object.__setattr__(self, "infiniband_bytes_per_s", self.infiniband_bits_per_s / 8.0)

  @property
  def network_bytes_per_s(self) -> float:
    """All network links of the machine together, bytes/s."""
    return self.infiniband_links * self.infiniband_bytes_per_s

  @property
  def host_power_w(self) -> float:
    """Rated power of everything but the devices (CPUs, switches, fans), W."""
    return self.machine_power_w - self.devices_per_machine * self.device_power_w

  @property
  def provisioned_power_w(self) -> float:
    """Power the machine may draw under its cap, W."""
    return self.machine_power_w * self.power_cap_fraction

  @property
  def machine_flops(self) -> float:
    """Tensor peak of all devices, FLOP/s."""
    return self.devices_per_machine * self.device_flops

  @property
  def machine_memory_bytes(self) -> float:
    """Device memory of all devices, bytes."""
    return self.devices_per_machine * self.device_memory_bytes


_INT_FIELDS = ("devices_per_machine", "infiniband_links")
_TEXT_FIELDS = ("description", "device_name")
_POSITIVE_FIELDS = ("device_flops", "device_flops_table", "device_memory_bytes",
                    "device_memory_bytes_per_s", "device_power_w", "machine_power_w",
                    "nvlink_bytes_per_s", "infiniband_bits_per_s")
_NUMBER_FIELDS = _POSITIVE_FIELDS + ("cost_per_hour_usd", "power_cap_fraction")
_JSON_FIELDS = _TEXT_FIELDS + _INT_FIELDS + _NUMBER_FIELDS + ("source",)


def _validate(hw: Hardware) -> None:
  where = f"hardware '{hw.name}'"
  for f in _INT_FIELDS:
    v = getattr(hw, f)
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
      raise HardwareError(f"{where}: {f} must be a positive integer, got {v!r}")
  for f in _NUMBER_FIELDS:
    v = getattr(hw, f)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
      raise HardwareError(f"{where}: {f} must be a number, got {v!r}")
  for f in _POSITIVE_FIELDS:
    if getattr(hw, f) <= 0:
      raise HardwareError(f"{where}: {f} must be positive, got {getattr(hw, f)!r}")
  if hw.cost_per_hour_usd < 0:
    raise HardwareError(f"{where}: cost_per_hour_usd must be >= 0, got {hw.cost_per_hour_usd}")
  if not 0.0 < hw.power_cap_fraction <= 1.0:
    raise HardwareError(f"{where}: power_cap_fraction must be in (0, 1], "
                        f"got {hw.power_cap_fraction}")
  if hw.host_power_w < 0:
    raise HardwareError(
        f"{where}: machine_power_w ({hw.machine_power_w} W) is below devices_per_machine x "
        f"device_power_w ({hw.devices_per_machine * hw.device_power_w} W)")
  undocumented = [f for f in _INT_FIELDS + _NUMBER_FIELDS if not hw.source.get(f)]
  if undocumented:
    raise HardwareError(f"{where}: source has no entry for {', '.join(undocumented)}")


def _from_json(name: str, entry: Any) -> Hardware:
  if not isinstance(entry, dict):
    raise HardwareError(f"hardware '{name}': expected an object, got {type(entry).__name__}")
  missing = [f for f in _JSON_FIELDS if f not in entry]
  if missing:
    raise HardwareError(f"hardware '{name}': missing field(s) {', '.join(missing)}")
  unknown = sorted(set(entry) - set(_JSON_FIELDS))
  if unknown:
    raise HardwareError(f"hardware '{name}': unknown field(s) {', '.join(unknown)} "
                        f"(known: {', '.join(_JSON_FIELDS)})")
  if not isinstance(entry["source"], dict):
    raise HardwareError(f"hardware '{name}': source must be an object of field -> text")
  for f in _TEXT_FIELDS:
    if not isinstance(entry[f], str):
      raise HardwareError(f"hardware '{name}': {f} must be a string, got {entry[f]!r}")
  return Hardware(name=name, **entry)


def load_catalog(path: str | os.PathLike | None = None) -> dict[str, Hardware]:
  """Machine kinds by name from ``path`` (default: the bundled ``hardware_catalog.json``)."""
  path = Path(path) if path is not None else DEFAULT_CATALOG
  try:
    data = json.loads(path.read_text())
  except FileNotFoundError:
    raise HardwareError(f"hardware catalog not found: {path}") from None
  except json.JSONDecodeError as e:
    raise HardwareError(f"{path}: not valid JSON ({e})") from None
  machines = data.get("machines") if isinstance(data, dict) else None
  if not isinstance(machines, dict) or not machines:
    raise HardwareError(f"{path}: expected an object with a non-empty 'machines' object")
  return {name: _from_json(name, entry) for name, entry in machines.items()}


def get_hardware(name: str, path: str | os.PathLike | None = None) -> Hardware:
  """The machine kind ``name`` (error names the known kinds)."""
  catalog = load_catalog(path)
  if name not in catalog:
    raise HardwareError(f"unknown hardware '{name}' (known: {', '.join(sorted(catalog))})")
  return catalog[name]


def hardware_for_device(device_name: str,
                        path: str | os.PathLike | None = None) -> Hardware:
  """The machine kind whose devices the profile CSV calls ``device_name`` (``a100-80gb``)."""
  catalog = load_catalog(path)
  for hw in catalog.values():
    if hw.device_name == device_name:
      return hw
  known = sorted(hw.device_name for hw in catalog.values())
  raise HardwareError(f"no machine in the catalog has device '{device_name}' "
                      f"(known devices: {', '.join(known)})")


@dataclasses.dataclass(frozen=True)
class PhasePower:
  """Power per phase (prefill / decode / mixed / idle) as a fraction of rated power.

  Defaults, for hardware without measured power: prefill and mixed at rated
  power (the A100 profile's prefill peaks are 0.92-1.09 of GPU TDP), decode 0.45
  (A100 tensor_parallel=8 profile median 0.43), idle 0.15 (assumed: ~60 W of a
  400 W A100, ~100 W of a 700 W H100).
  """
  prefill: float = 1.0
  decode: float = 0.45
  mixed: float = 1.0
  idle: float = 0.15

  def __post_init__(self):
    for f in dataclasses.fields(self):
      v = getattr(self, f.name)
      if not 0.0 <= v <= 1.5:
        raise HardwareError(f"power fraction {f.name} must be in [0, 1.5], got {v}")


def instance_power_w(hw: Hardware, tp: int, fraction: float) -> float:
  """Watts drawn by an instance on ``tp`` of ``hw``'s devices at ``fraction`` of rated.

  The instance owns ``tp / devices_per_machine`` of the machine, host included;
  host components are assumed to scale with the same fraction (there is no data
  on them). The machine's power cap (``provisioned_power_w``) bounds the result,
  so a 70%-capped DGX-H100 loses prefill power (10.2 -> 7.14 kW) but not decode
  power (0.45 x 10.2 = 4.6 kW).
  """
  if not 1 <= tp <= hw.devices_per_machine:
    raise HardwareError(f"tp must be in 1..{hw.devices_per_machine} for '{hw.name}', got {tp}")
  share = tp / hw.devices_per_machine
  return min(fraction * hw.machine_power_w, hw.provisioned_power_w) * share
