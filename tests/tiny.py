"""Small models several test modules build the same way."""
import torch

from corpus import render_call_text
from model import Qwen2, Qwen2Config
from tokenizer import ChatTokenizer


def move_weights_off_init_(module, std):
    """Every norm weight drawn from [0.5, 1.5] and every other parameter from N(0, std), in place: at their
    init (norms 1, biases 0) some code paths would be exercised by zeros and ones only."""
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if name.endswith("norm.weight"):
                parameter.uniform_(0.5, 1.5)
            else:
                parameter.normal_(0.0, std)
    return module


def tiny_chat_model(calls, vocab_size=400):
    """A byte-level BPE trained on `calls` and a 2-layer, 32-wide Qwen2 (GQA 4:2) at its seed-0 init, in eval
    mode: the reward and the evaluation need a model and a tokenizer, not a trained one."""
    tokenizer = ChatTokenizer.train([render_call_text(c) for c in calls], vocab_size=vocab_size)
    torch.manual_seed(0)
    model = Qwen2(Qwen2Config(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                              rope_theta=1e4)).eval()
    return tokenizer, model
