"""training.py: the learning-rate schedule by hand, the optimizer's decay groups, the device choice."""
import math

import pytest
import torch

from config import ConfigError
from model import Qwen2, Qwen2Config
from training import learning_rate_at, make_optimizer, resolve_device


def test_warmup_then_cosine_to_the_floor():
    assert [learning_rate_at(s, 10, 1.0, 4, 0.1) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert learning_rate_at(4, 10, 1.0, 4, 0.1) == 1.0                          # the peak, then the decay
    assert learning_rate_at(7, 10, 1.0, 4, 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert learning_rate_at(10, 10, 1.0, 4, 0.1) == pytest.approx(0.1)
    assert learning_rate_at(25, 10, 1.0, 4, 0.1) == pytest.approx(0.1)          # stays at the floor
    assert learning_rate_at(9, 10, 2.0, 4, 1.0) == 2.0                          # GRPO: constant after warmup


def test_no_weight_decay_on_norms_and_biases():
    model = Qwen2(Qwen2Config(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                              num_attention_heads=2, num_key_value_heads=1))
    decay, no_decay = make_optimizer(model, 1e-3, 0.1).param_groups
    assert decay["weight_decay"] == 0.1 and all(p.dim() == 2 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.dim() == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_device_choice():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no GPU"):
            resolve_device("cuda")
