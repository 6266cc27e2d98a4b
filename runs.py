"""The run folder: what a training run records, which folder it may write into, and how it ends.

AI-Salesman's training engine (docs/design.md, "GRPO") writes each run into one folder, for a long time
and perhaps over several attempts. This module keeps that folder honest, so that grpo.py and pretrain.py
hold their algorithms and loops and nothing else:

* `RunLock`: one run per folder, an exclusive `fcntl.flock` on `<folder>/.lock` that names its holder;
* the run record, `run.json`: the config sections a GRPO run reads and its inputs (the base model's
  weights, the corpus, the DOGA script library), each with its path and a fingerprint of its content
  (`run_identity`). Written when the run starts, and into every checkpoint and the final model
  (`save_checkpoint`), so that whatever loads a trained model reads the config it was trained with
  (`recorded_config`): the prompt and answer lengths above all;
* the claim: a fresh GRPO run refuses a folder that already holds a run, `--resume` refuses a checkpoint
  recorded with other inputs and names each difference (`claim_run_folder`); pretraining refuses a folder
  that already holds a model (`claim_model_folder`);
* the end of an interrupted run: one line saying how far it got and how to go on (`interruption_note`).

Left out on purpose: locks across machines on file systems without flock; resuming a pretraining run (it
is started again: GRPO is the long stage); reading a run record of another code version, whose config
holds a key this code does not know (refused with the key named, never guessed at).
"""

import fcntl
import json
import os
import re
import socket
import time
from dataclasses import asdict

import torch.distributed as dist

from config import parse_config
from files import fingerprint, last_logged_step, remove_stale_staging, replace_folder, write_json
from model import CONFIG_FILE, WEIGHTS_FILE, CheckpointError, save_pretrained, weights_fingerprint
from training import TRAINER_STATE_FILE, differences, save_trainer_state


# ----------------------------------------------------------------------------------------------
# One run per folder.

class RunLocked(RuntimeError):
    """Another live process holds the run folder; the message names it."""


class RunLock:
    """One run per folder: an exclusive `fcntl.flock` on `<folder>/.lock`, which names its holder.

    Two runs writing one folder would interleave their metrics lines and overwrite each other's
    checkpoints. The holder writes its pid, host and start time into the lock file, so the second run
    can say who is in the way. The kernel drops a flock when its process dies, however it dies (kill -9
    included), so a lock left by a dead run is simply taken over; its file still names the dead run
    until the new holder rewrites it. Use as `with RunLock(folder):` or acquire()/release().
    """

    NAME = ".lock"

    def __init__(self, folder):
        self.folder = folder
        self.path = os.path.join(folder, self.NAME)
        self.handle = None

    def acquire(self):
        os.makedirs(self.folder, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            handle.close()
            try:
                who = json.loads(holder)
                who = f"pid {who['pid']} on {who['host']}, running since {who['started']}"
            except (json.JSONDecodeError, KeyError, TypeError):
                who = "a process that has not written its name yet"
            raise RunLocked(f"{self.folder}: another run is using this folder ({who}; lock file {self.path}). "
                            "Wait for it to end, or choose another output folder") from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}) + "\n")
        handle.flush()
        self.handle = handle
        return self

    def release(self):
        if self.handle is not None:
            self.handle.truncate(0)
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def on_main_process(action, main_process):
    """Run `action` on rank 0 alone and give every rank its result; an error it raises is raised on every
    rank, so that no rank is left waiting in a collective for one that stopped. Rank 0 alone locks and
    claims the folder: the other ranks write nothing into it."""
    outcome = [None, None]
    if main_process:
        try:
            outcome[0] = action()
        except (CheckpointError, RunLocked, OSError) as error:
            outcome[1] = error
    if dist.is_initialized():
        dist.broadcast_object_list(outcome, src=0)
    if outcome[1] is not None:
        raise outcome[1]
    return outcome[0]


# ----------------------------------------------------------------------------------------------
# What a GRPO run is made of: recorded when it starts and with every model it saves, checked on --resume.

RUN_RECORD = "run.json"
# What makes a folder hold a run: a fresh run refuses such a folder instead of mixing with it.
RUN_FILES = (RUN_RECORD, "metrics.jsonl", "checkpoints", "final")
# Knobs a resumed run may change: they decide how long it runs, what is logged, saved or evaluated, or
# on which device, not what a step does. (`steps` too: after warmup GRPO's learning rate is constant and a
# step's prompts depend on the step alone, so a longer run continues a shorter one exactly.)
RESUMABLE_CHANGES = {"steps", "save_steps", "log_completion_steps", "eval_prompts", "device"}
RUN_INPUTS = {"base_model": "base model weights", "data": "training data", "library": "DOGA script library"}


def run_identity(config, model_dir, data_dir, library_dir=None):
    """What a GRPO run is made of: the config sections it reads (grpo, reward) and its inputs, each with its
    path and a fingerprint of its content: the base model's weights, the training corpus, and the DOGA
    script library when some prompts carry its outlines (None otherwise)."""
    train_file = os.path.join(data_dir, "train.jsonl")
    uses_library = library_dir is not None and config.grpo.outline_share > 0
    return {"config": {"grpo": asdict(config.grpo), "reward": asdict(config.reward)},
            "base_model": {"path": os.path.abspath(model_dir), "fingerprint": weights_fingerprint(model_dir)},
            "data": {"path": os.path.abspath(train_file), "fingerprint": fingerprint(train_file)},
            "library": ({"path": os.path.abspath(library_dir), "fingerprint": fingerprint(library_dir)}
                        if uses_library else None)}


def identity_differences(recorded, current):
    """What differs between a recorded run identity and this run's, one line each. Inputs are compared by
    content: a base model or corpus that moved to another folder is the same input."""
    def knobs(identity):
        return {section: {k: v for k, v in values.items() if k not in RESUMABLE_CHANGES}
                for section, values in identity["config"].items()}

    def described(source):
        return "none" if source is None else f"{source['path']} ({source['fingerprint'][:19]}...)"

    lines = differences(knobs(recorded), knobs(current))
    for key, what in RUN_INPUTS.items():
        then, now = recorded.get(key), current[key]
        if (then and then["fingerprint"]) != (now and now["fingerprint"]):
            lines.append(f"{what}: {described(then)} when recorded, {described(now)} now")
    return lines


def recorded_config(folder):
    """The config a trained model or run folder recorded (`<folder>/run.json`) -> config.Config: its grpo and
    reward sections as the run had them, the other sections at their defaults. None when the folder holds
    no record (a pretrained base, a downloaded checkpoint)."""
    path = os.path.join(folder, RUN_RECORD)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            sections = json.load(handle)["config"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise CheckpointError(f"{path}: unreadable run record ({error!r})") from None
    return parse_config(sections, f"{path} (config)")


# ----------------------------------------------------------------------------------------------
# Which folder a run may write into.

def latest_checkpoint(out_dir):
    """The newest complete checkpoint of a run folder (one whose trainer state was written), or None."""
    root = os.path.join(out_dir, "checkpoints")
    if not os.path.isdir(root):
        return None
    done = sorted(d for d in os.listdir(root)
                  if re.fullmatch(r"step-\d+", d) and os.path.exists(os.path.join(root, d, TRAINER_STATE_FILE)))
    return os.path.join(root, done[-1]) if done else None


def claim_run_folder(out_dir, identity, resume):
    """Take `out_dir` for a GRPO run made of `identity`; returns the checkpoint to resume from (None: start
    from the base model). A fresh run refuses a folder that already holds a run; --resume refuses a run
    recorded with another config, base model, corpus or library, naming what differs. The folders a save
    killed last time left behind are removed first, and the run record is written when there is none."""
    for folder in (out_dir, os.path.join(out_dir, "checkpoints")):
        remove_stale_staging(folder)
    if resume:
        checkpoint = _checkpoint_to_resume(out_dir, identity)
    else:
        checkpoint = None
        found = [name for name in RUN_FILES if os.path.exists(os.path.join(out_dir, name))]
        if found:
            raise CheckpointError(f"{out_dir}: already holds a run ({', '.join(found)}): continue it with --resume, "
                                  "or choose another --out")
    if not os.path.exists(os.path.join(out_dir, RUN_RECORD)):
        write_json(os.path.join(out_dir, RUN_RECORD), identity, indent=1)
    return checkpoint


def _checkpoint_to_resume(out_dir, identity):
    """The latest checkpoint, when it was recorded with this identity (CheckpointError otherwise)."""
    checkpoint = latest_checkpoint(out_dir)
    record = os.path.join(checkpoint or out_dir, RUN_RECORD)
    if not os.path.exists(record):
        if checkpoint or any(os.path.exists(os.path.join(out_dir, name)) for name in RUN_FILES):
            raise CheckpointError(f"{record}: missing, so nothing says which config, base model and data this run "
                                  "was made with (it predates run records); start a fresh run in another --out")
        return None
    try:
        with open(record, encoding="utf-8") as handle:
            recorded = json.load(handle)
        lines = identity_differences(recorded, identity)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
        raise CheckpointError(f"{record}: unreadable run record ({error!r})") from None
    if lines:
        raise CheckpointError(f"{record}: --resume refused, this run was made with other inputs:\n  "
                              + "\n  ".join(lines) + "\nResume with the same config, base model and data, or start "
                              "a fresh run in another --out")
    return checkpoint


def claim_model_folder(out_dir):
    """Refuse an `out_dir` that already holds a model: pretraining would replace it, and with it the base
    of a GRPO run that started from it. Removes what a save killed last time left beside it."""
    found = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if os.path.exists(os.path.join(out_dir, name))]
    if found:
        raise ValueError(f"{out_dir}: already holds a model ({', '.join(found)}); pretraining would replace it. "
                         "Delete the folder, or choose another --out")
    remove_stale_staging(os.path.dirname(os.path.abspath(out_dir)))


def save_checkpoint(folder, model, tokenizer, identity, optimizer=None, step=None):
    """The model and its tokenizer in the Hugging Face layout (model.save_pretrained) and the run record,
    swapped into place as one folder (files.replace_folder). With the optimizer, a checkpoint to resume
    from: also the trainer state at `step` (training.save_trainer_state). The final model has none."""
    with replace_folder(folder) as staging:
        save_pretrained(model, staging, tokenizer)
        if optimizer is not None:
            save_trainer_state(staging, optimizer, step)
        write_json(os.path.join(staging, RUN_RECORD), identity, indent=1)


# ----------------------------------------------------------------------------------------------
# How an interrupted run ends: one line, how far it got and how to go on.

def interruption_note(out_dir, total_steps, trained):
    """A Ctrl-C during GRPO: the step its metrics log reached and how to continue (--resume)."""
    if trained:
        return f"interrupted during the held-out summary; training had finished: the model is in {out_dir}/final"
    done = _steps_done(out_dir)
    checkpoint = latest_checkpoint(out_dir)
    since = (f"from its latest checkpoint, {checkpoint}" if checkpoint else
             "from the base model (no checkpoint was saved yet)")
    return (f"interrupted after {done}{f' of {total_steps}' if total_steps else ''} steps: run the same command "
            f"with --resume to continue {since}")


def pretraining_interruption_note(out_dir, total_steps):
    """A Ctrl-C during pretraining, which does not resume: how far it got, and that it starts over."""
    return (f"interrupted after {_steps_done(out_dir)}{f' of {total_steps}' if total_steps else ''} steps; no model "
            "was saved (pretraining does not resume): run the same command again to start over")


def _steps_done(out_dir):
    last = last_logged_step(os.path.join(out_dir, "metrics.jsonl"))
    return 0 if last is None else last + 1
