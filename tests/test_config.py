"""Config validation: every bad value is rejected with a message naming the file and the key."""
import dataclasses
import glob
import json
import os

import pytest

from config import TINY_MODEL, ConfigError, GRPOConfig, RewardConfig, load_config


def write(tmp_path, content):
    path = tmp_path / "c.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def test_defaults_and_overrides(tmp_path):
    config = load_config(write(tmp_path, {"grpo": {"beta": 0, "loss_type": "grpo"}, "reward": {"bayes": 0}}))
    assert config.grpo.beta == 0.0 and isinstance(config.grpo.beta, float)
    assert config.grpo.loss_type == "grpo"
    assert config.grpo.num_generations == GRPOConfig().num_generations
    assert config.reward.format == RewardConfig().format and config.reward.bayes == 0.0


@pytest.mark.parametrize("content, message", [
    ({"grpo": {"epsilon": 2.0}}, r"grpo\.epsilon must lie in \[0, 1\]"),
    ({"grpo": {"loss_type": "ppo"}}, r"grpo\.loss_type must be one of"),
    ({"grpo": {"scale_rewards": True}}, r"grpo\.scale_rewards must be str"),
    ({"grpo": {"num_generations": 1}}, r"grpo\.num_generations must be >= 2"),
    ({"grpo": {"num_generations": 4.5}}, r"grpo\.num_generations must be int"),
    ({"grpo": {"mask_truncated_completions": 1}}, r"grpo\.mask_truncated_completions must be bool"),
    ({"grpo": {"beta": -0.1}}, r"grpo\.beta must be >= 0"),
    ({"grpo": {"epsilon": 0.3, "epsilon_high": 0.2}}, r"grpo\.epsilon_high \(0\.2\) must be >= grpo\.epsilon"),
    ({"grpo": {"lerning_rate": 1e-5}}, r"grpo\.lerning_rate is not a known key"),
    ({"pretrain": {"steps": 0}}, r"pretrain\.steps must be > 0"),
    ({"reward": {"bayes": "high"}}, r"reward\.bayes must be float"),
    ({"reward": {"similarity": float("nan")}}, r"reward\.similarity must be finite"),
    ({"trainer": {}}, r"unknown section\(s\) \['trainer'\]"),
    ({"grpo": []}, r"section 'grpo' must be an object"),
    ({"reward": {"bayes_floor": 0}}, r"reward\.bayes_floor must be < 0"),
    ({"model": {"hiden_size": 64}}, r"model\.hiden_size is not a known key"),
    ({"model": {"num_attention_heads": 0}}, r"model\.num_attention_heads must be a number > 0"),
    ({"model": {"hidden_size": 64.5}}, r"model\.hidden_size must be a whole number, got 64\.5"),
    ({"model": {"num_hidden_layers": 2.0}}, r"model\.num_hidden_layers must be a whole number, got 2\.0"),
    ({"calls": {"calls_per_group": 1}}, r"calls\.calls_per_group must be >= 2"),
    ({"calls": {"session_weight": 0, "turn_weight": 0}}, r"calls\.session_weight and calls\.turn_weight are both 0"),
    ({"calls": {"loss_type": "ppo"}}, r"calls\.loss_type must be one of"),
    ({"calls": {"epsilon": 0.3, "epsilon_high": 0.2}}, r"calls\.epsilon_high \(0\.2\) must be >= calls\.epsilon"),
    ({"calls": {"max_turns": 0}}, r"calls\.max_turns must be > 0"),
    ("{oops", r"not valid JSON"),
])
def test_bad_values_name_file_and_key(tmp_path, content, message):
    path = write(tmp_path, content)
    with pytest.raises(ConfigError, match=message) as error:
        load_config(path)
    assert path in str(error.value)


def test_no_file_is_the_default_recipe_and_a_model_section_overrides_key_by_key(tmp_path):
    """`make train` passes no config: the defaults are the recipe, the tiny model included. A file's model
    section replaces only the keys it names, as every other section does."""
    default = load_config()
    assert dataclasses.replace(load_config(write(tmp_path, {})), source=default.source) == default
    assert default.model == TINY_MODEL and default.source == "<defaults>"
    narrow = load_config(write(tmp_path, {"model": {"hidden_size": 64, "intermediate_size": 192}}))
    assert narrow.model == {**TINY_MODEL, "hidden_size": 64, "intermediate_size": 192}


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "nope.json"))


def test_shipped_configs_load():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    shipped = glob.glob(os.path.join(root, "configs", "*.json"))
    plans = [path for path in shipped if os.path.basename(path) == "ablations.json"]  # a plan, not a config
    assert len(shipped) - len(plans) >= 2
    for path in shipped:
        if path not in plans:
            load_config(path)


def test_negative_floor_is_accepted(tmp_path):
    assert load_config(write(tmp_path, {"reward": {"bayes_floor": -8}})).reward.bayes_floor == -8.0
