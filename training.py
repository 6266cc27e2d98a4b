"""What both training loops share: the device, the optimizer and the learning-rate schedule.

AI-Salesman (arXiv 2511.12133) trains in two places here: pretrain.py makes the tiny base model (and the
SFT baseline) by causal-LM training, and grpo.py runs GRPO on it. Both set up training the same way:

* `resolve_device`: "auto" means the GPU when torch sees one, else the CPU; asking for "cuda" without
  one is a configuration error, not a silent fallback;
* `make_optimizer`: AdamW with weight decay on weight matrices only;
* `learning_rate_at`: linear warmup, then cosine decay to a floor (pretraining decays to
  `min_lr_ratio`; GRPO passes a floor of 1.0, a constant rate after warmup).

Left out on purpose: other optimizers and schedules (one of each, their knobs in config.py), gradient
accumulation and mixed-precision scaling (the lean loop of the method).
"""

import math

import torch

from config import ConfigError


def resolve_device(name):
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for, but torch sees no GPU")
    return name


def make_optimizer(model, learning_rate, weight_decay):
    """AdamW; weight decay on matrices only (norm gains and biases are not decayed)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=learning_rate, betas=(0.9, 0.95), eps=1e-8)


def learning_rate_at(step, total_steps, peak, warmup_steps, min_ratio):
    """Linear warmup to `peak`, then cosine decay to `min_ratio * peak` at `total_steps`."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))
