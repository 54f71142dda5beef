"""Strict config conversion: unknown / missing / ill-typed keys are named."""

import ml_collections
import pytest

from splitjax.config import (ConfigError, EngineConfig, GenerateConfig, GenerateMode,
                             ModelConfig, TransferMode, from_config_dict, to_plain_dict)
from splitjax.config_defaults import generate_config
from splitjax.config import MeshConfig
from splitjax.model.presets import get_preset, preset_config_dict


def _cfg():
  return generate_config("tiny", MeshConfig(), MeshConfig(first_device=4), EngineConfig())


def test_default_config_round_trips():
  cfg = from_config_dict(GenerateConfig, _cfg())
  assert cfg.model == get_preset("tiny")
  assert cfg.mode == GenerateMode.SPLIT and cfg.transfer == TransferMode.AUTO
  assert from_config_dict(GenerateConfig, to_plain_dict(cfg)) == cfg


def test_unknown_key_named_with_suggestion():
  c = _cfg().to_dict()
  c["engine"]["decode_slotz"] = 4
  with pytest.raises(ConfigError, match=r"unknown config key 'engine.decode_slotz'.*decode_slots"):
    from_config_dict(GenerateConfig, c)


def test_ill_typed_key_named():
  c = _cfg().to_dict()
  c["model"]["num_layers"] = "four"
  with pytest.raises(ConfigError, match=r"'model.num_layers': expected int, got str"):
    from_config_dict(GenerateConfig, c)


def test_bool_is_not_an_int():
  c = _cfg().to_dict()
  c["max_new_tokens"] = True
  with pytest.raises(ConfigError, match="max_new_tokens"):
    from_config_dict(GenerateConfig, c)


def test_bad_enum_value_lists_choices():
  c = _cfg().to_dict()
  c["transfer"] = "teleport"
  with pytest.raises(ConfigError, match=r"'transfer'.*layerwise"):
    from_config_dict(GenerateConfig, c)


def test_missing_required_key():
  c = preset_config_dict("tiny").to_dict()
  del c["vocab_size"]
  with pytest.raises(ConfigError, match="missing required config key 'vocab_size'"):
    from_config_dict(ModelConfig, c)


def test_inconsistent_values():
  with pytest.raises(ConfigError, match="multiple of"):
    get_preset("tiny", num_kv_heads=3)
  with pytest.raises(ConfigError, match="prefill_buckets"):
    EngineConfig(prefill_buckets=(128, 64))


def test_command_line_style_override_is_type_checked():
  c = _cfg()
  c.engine.decode_slots = 4           # as --config.engine.decode_slots=4 would
  assert from_config_dict(GenerateConfig, c).engine.decode_slots == 4
  with pytest.raises(TypeError):
    c.engine.decode_slots = "x"       # ml_collections itself refuses the type change


def test_overriding_shape_rederives_head_dim():
  assert get_preset("tiny", num_heads=4, num_kv_heads=4).head_dim == 64
  assert get_preset("tiny", hidden_size=512).head_dim == 64


def test_flops_and_kv_bytes():
  cfg = get_preset("small")
  assert cfg.kv_bytes_per_token() == 2 * 12 * 4 * 64 * 4
  # per-token FLOPs at zero context: 2 x (matmul params incl. LM head)
  matmul_params = cfg.param_count() - cfg.vocab_size * cfg.hidden_size - cfg.hidden_size * 25
  assert cfg.flops_per_token(0) == pytest.approx(2 * matmul_params)
