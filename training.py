"""What both training loops share: the device, the optimizer and the learning-rate schedule.

AI-Salesman (arXiv 2511.12133) trains in two places here: pretrain.py makes the tiny base model (and the
SFT baseline) by causal-LM training, and grpo.py runs GRPO on it. Both set up training the same way:

* `resolve_device`: "auto" means the GPU when torch sees one, else the CPU; asking for "cuda" without
  one is a configuration error, not a silent fallback;
* `make_optimizer`: AdamW with weight decay on weight matrices only;
* `learning_rate_at`: linear warmup, then cosine decay to a floor (pretraining decays to
  `min_lr_ratio`; GRPO passes a floor of 1.0, a constant rate after warmup);
* `save_trainer_state` / `load_trainer_state`: what a checkpoint needs besides the weights to resume
  exactly (the optimizer's moment estimates, the step, the RNG state), in safetensors and JSON;
* `differences`: what differs between what a checkpoint recorded and what a resumed run is given.

Left out on purpose: other optimizers and schedules (one of each, their knobs in config.py), gradient
accumulation and mixed-precision scaling (the lean loop of the method), and pickle in any form: a
`torch.save`d trainer state runs whatever code a tampered file names when it is loaded, while
safetensors and JSON can only hold wrong numbers.
"""

import json
import math
import os
import re

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from config import ConfigError
from files import write_json
from model import CheckpointError


TRAINER_STATE_FILE = "trainer_state.json"     # {"step": ...}
OPTIMIZER_STATE_FILE = "optimizer.safetensors"  # state.<parameter index>.<key> tensors, and the torch RNG state
RNG_TENSOR = "torch_rng_state"


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


# ----------------------------------------------------------------------------------------------
# The trainer state of a checkpoint.

def save_trainer_state(folder, optimizer, step):
    """Write the optimizer state, the CPU RNG state and `step` into `folder` (a checkpoint's staging folder).

    Only the per-parameter state is saved (AdamW: exp_avg, exp_avg_sq and its step count, all tensors),
    keyed by the parameter's index in the optimizer. The hyperparameters are not: they come from the
    config, which a resumed run must match (grpo.py checks it), and the learning rate is set every step.
    """
    tensors = {RNG_TENSOR: torch.get_rng_state()}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"optimizer state {index}.{key} is a {type(value).__name__}, not a tensor: "
                                "save_trainer_state only writes tensors")
            tensors[f"state.{index}.{key}"] = value.detach().to("cpu").contiguous()
    save_file(tensors, os.path.join(folder, OPTIMIZER_STATE_FILE))
    write_json(os.path.join(folder, TRAINER_STATE_FILE), {"step": step})


def load_trainer_state(folder, optimizer):
    """Restore what save_trainer_state wrote into `optimizer` and the CPU RNG; returns the step.

    A damaged or tampered file is a CheckpointError naming it; nothing in it can run code.
    """
    json_path, tensor_path = os.path.join(folder, TRAINER_STATE_FILE), os.path.join(folder, OPTIMIZER_STATE_FILE)
    try:
        with open(json_path, encoding="utf-8") as handle:
            step = json.load(handle)["step"]
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ValueError(f"step is {step!r}, not a count")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{json_path}: unreadable trainer state ({error})") from None
    try:
        tensors = load_file(tensor_path)
    except (OSError, SafetensorError) as error:
        raise CheckpointError(f"{tensor_path}: unreadable optimizer state ({error})") from None

    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    state = {}
    for name, tensor in tensors.items():
        if name == RNG_TENSOR:
            continue
        match = re.fullmatch(r"state\.(\d+)\.(\w+)", name)
        if not match or int(match[1]) >= len(parameters):
            raise CheckpointError(f"{tensor_path}: tensor {name} belongs to no parameter of this model's optimizer")
        index, key = int(match[1]), match[2]
        if key.startswith("exp_avg") and tensor.shape != parameters[index].shape:
            raise CheckpointError(f"{tensor_path}: tensor {name} has shape {tuple(tensor.shape)}, but parameter "
                                  f"{index} has shape {tuple(parameters[index].shape)}")
        state.setdefault(index, {})[key] = tensor
    if RNG_TENSOR not in tensors:
        raise CheckpointError(f"{tensor_path}: no tensor {RNG_TENSOR}")
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})
    torch.set_rng_state(tensors[RNG_TENSOR])
    return step


def differences(recorded, current, prefix=""):
    """`key: A when recorded, B now` for every leaf where two nested dicts differ, in key order."""
    lines = []
    for key in sorted(set(recorded) | set(current)):
        name = f"{prefix}{key}"
        then, now = recorded.get(key, "(absent)"), current.get(key, "(absent)")
        if isinstance(then, dict) and isinstance(now, dict):
            lines += differences(then, now, f"{name}.")
        elif then != now:
            lines.append(f"{name}: {then!r} when recorded, {now!r} now")
    return lines
