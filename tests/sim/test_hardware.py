"""Hardware catalog: the paper's Table I, derived quantities, validation errors."""

import dataclasses
import json
import subprocess
import sys

import pytest

from splitjax.sim.hardware import (DEFAULT_CATALOG, Hardware, HardwareError, PhasePower,
                                   get_hardware, hardware_for_device, instance_power_w,
                                   load_catalog)


def test_sim_modules_do_not_import_jax():
  code = ("import sys\n"
          "import splitjax.sim.perf_model, splitjax.sim.network, splitjax.sim.hardware\n"
          "import splitjax.sim\n"
          "bad = [m for m in sys.modules if m == 'jax' or m.startswith(('jax.', 'jaxlib', 'flax'))]\n"
          "assert not bad, bad\n")
  subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_catalog_has_the_paper_machines_and_this_host():
  catalog = load_catalog()
  assert set(catalog) == {"dgx-a100", "dgx-h100", "dgx-h100-pcap", "cpu-host"}
  a100, h100 = catalog["dgx-a100"], catalog["dgx-h100"]
  # Table I of the paper.
  assert a100.devices_per_machine == h100.devices_per_machine == 8
  assert a100.device_flops_table == 19.5e12 and h100.device_flops_table == 66.9e12
  assert a100.device_memory_bytes_per_s == 2039e9 and h100.device_memory_bytes_per_s == 3352e9
  assert a100.device_power_w == 400 and h100.device_power_w == 700
  assert a100.nvlink_bytes_per_s == 50e9 and h100.nvlink_bytes_per_s == 100e9
  assert a100.cost_per_hour_usd == 17.6 and h100.cost_per_hour_usd == 38.0
  # The roofline uses the dense fp16 tensor peaks.
  assert a100.device_flops == 312e12 and h100.device_flops == 989e12
  # InfiniBand: bits/s -> bytes/s, one NIC per GPU.
  assert a100.infiniband_bytes_per_s == 25e9 and h100.infiniband_bytes_per_s == 50e9
  assert a100.network_bytes_per_s == 8 * 25e9
  assert a100.host_power_w == 6500 - 8 * 400
  assert a100.machine_flops == 8 * 312e12
  assert a100.machine_memory_bytes == 8 * 80 * 2 ** 30


def test_power_capped_h100():
  h100, cap = get_hardware("dgx-h100"), get_hardware("dgx-h100-pcap")
  assert cap.power_cap_fraction == 0.7 and h100.power_cap_fraction == 1.0
  assert cap.provisioned_power_w == pytest.approx(7140.0)   # splitwise-sim's dgx-h100-pcap tdp
  assert h100.provisioned_power_w == h100.machine_power_w
  assert cap.device_name == "h100-80gb-pcap"


def test_cpu_host_is_this_machine():
  cpu = get_hardware("cpu-host")
  assert 300e9 < cpu.device_flops < 400e9
  assert 25e9 < cpu.device_memory_bytes_per_s < 32e9
  assert 23 * 2 ** 30 < cpu.device_memory_bytes < 25 * 2 ** 30


def test_every_number_has_a_source():
  for hw in load_catalog().values():
    for f in dataclasses.fields(Hardware):
      if f.type in ("int", "float") and f.init:
        assert hw.source.get(f.name), (hw.name, f.name)


def test_hardware_is_frozen_and_hashable():
  hw = get_hardware("dgx-a100")
  with pytest.raises(dataclasses.FrozenInstanceError):
    hw.device_power_w = 1
  assert hw == get_hardware("dgx-a100") and hash(hw) == hash(get_hardware("dgx-a100"))


def test_unknown_kind_names_the_known_ones():
  with pytest.raises(HardwareError, match=r"unknown hardware 'dgx-b200'.*cpu-host, dgx-a100"):
    get_hardware("dgx-b200")
  assert hardware_for_device("a100-80gb").name == "dgx-a100"
  with pytest.raises(HardwareError, match=r"'tpu'.*a100-80gb"):
    hardware_for_device("tpu")


def _write(tmp_path, machines):
  path = tmp_path / "catalog.json"
  path.write_text(json.dumps({"machines": machines}))
  return path


def _a100_entry():
  return json.loads(DEFAULT_CATALOG.read_text())["machines"]["dgx-a100"]


def test_missing_field_is_named(tmp_path):
  entry = _a100_entry()
  del entry["device_power_w"]
  with pytest.raises(HardwareError, match=r"hardware 'x': missing field\(s\) device_power_w"):
    load_catalog(_write(tmp_path, {"x": entry}))


def test_unknown_field_is_named(tmp_path):
  entry = dict(_a100_entry(), tflops=1)
  with pytest.raises(HardwareError, match=r"unknown field\(s\) tflops"):
    load_catalog(_write(tmp_path, {"x": entry}))


@pytest.mark.parametrize("field, value, message", [
    ("device_flops", 0, "device_flops must be positive"),
    ("devices_per_machine", 2.5, "devices_per_machine must be a positive integer"),
    ("power_cap_fraction", 1.2, r"power_cap_fraction must be in \(0, 1\]"),
    ("cost_per_hour_usd", -1, "cost_per_hour_usd must be >= 0"),
    ("machine_power_w", 1000, "machine_power_w .* is below"),
    ("device_name", 3, "device_name must be a string"),
    ("infiniband_bits_per_s", "fast", "infiniband_bits_per_s must be a number"),
])
def test_bad_values_are_named(tmp_path, field, value, message):
  entry = dict(_a100_entry(), **{field: value})
  with pytest.raises(HardwareError, match=message):
    load_catalog(_write(tmp_path, {"x": entry}))


def test_undocumented_number_is_rejected(tmp_path):
  entry = _a100_entry()
  del entry["source"]["cost_per_hour_usd"]
  with pytest.raises(HardwareError, match="source has no entry for cost_per_hour_usd"):
    load_catalog(_write(tmp_path, {"x": entry}))


def test_malformed_files(tmp_path):
  with pytest.raises(HardwareError, match="not found"):
    load_catalog(tmp_path / "nope.json")
  bad = tmp_path / "bad.json"
  bad.write_text("{")
  with pytest.raises(HardwareError, match="not valid JSON"):
    load_catalog(bad)
  with pytest.raises(HardwareError, match="non-empty 'machines'"):
    load_catalog(_write(tmp_path, {}))


def test_instance_power_scales_with_share_and_respects_the_cap():
  a100, cap = get_hardware("dgx-a100"), get_hardware("dgx-h100-pcap")
  assert instance_power_w(a100, 8, 1.0) == 6500
  assert instance_power_w(a100, 4, 0.5) == pytest.approx(6500 * 0.5 / 2)
  # The 70% cap bounds prefill power but leaves decode (0.45 of rated) alone.
  assert instance_power_w(cap, 8, 1.0) == pytest.approx(7140)
  assert instance_power_w(cap, 8, 0.45) == pytest.approx(0.45 * 10200)
  with pytest.raises(HardwareError, match="tp must be in 1..8"):
    instance_power_w(a100, 16, 1.0)
  with pytest.raises(HardwareError, match="decode"):
    PhasePower(decode=-0.1)
