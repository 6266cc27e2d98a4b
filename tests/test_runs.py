"""runs.py: one run per folder (the lock names its holder; a dead holder's lock is taken over), and the
config a run recorded, read back as the run had it. The run record itself, the claim of a folder and
resume are tested through the training loops (test_grpo_train.py, test_pretrain.py)."""
import json
import os
import socket
import subprocess
import sys
from dataclasses import asdict

import pytest

from config import ConfigError, GRPOConfig, RewardConfig
from files import write_json
from runs import RunLock, RunLocked, recorded_config


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


HOLD = """
import sys, time
sys.path.insert(0, {root!r})
from runs import RunLock
lock = RunLock({folder!r}).acquire()
print("locked", flush=True)
time.sleep(60)
"""


def test_run_lock_names_its_holder_and_a_dead_holder_is_taken_over(tmp_path):
    folder = str(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", HOLD.format(root=ROOT, folder=folder)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLocked, match=rf"another run is using this folder \(pid {holder.pid} on "
                                            rf"{socket.gethostname()}, running since"):
            RunLock(folder).acquire()
    finally:
        holder.kill()                                              # kill -9: no chance to clean up
        holder.wait()
    assert str(holder.pid) in (tmp_path / "run" / ".lock").read_text()   # the dead holder's name stays
    with RunLock(folder):
        assert json.loads((tmp_path / "run" / ".lock").read_text())["pid"] == os.getpid()
        with pytest.raises(RunLocked):
            RunLock(folder).acquire()                              # one holder even within a process
    with RunLock(folder):                                          # released at the end of the block
        pass


def test_the_recorded_config_is_read_back_as_the_run_had_it(tmp_path):
    assert recorded_config(tmp_path) is None                       # a folder without a run record
    grpo = GRPOConfig(max_prompt_length=300, max_completion_length=20, learning_rate=3e-5)
    write_json(tmp_path / "run.json", {"config": {"grpo": asdict(grpo), "reward": asdict(RewardConfig(bayes=0.0))},
                                       "base_model": None})
    config = recorded_config(tmp_path)
    assert config.grpo == grpo and config.reward == RewardConfig(bayes=0.0)
    assert config.source == f"{tmp_path / 'run.json'} (config)"
    write_json(tmp_path / "run.json", {"config": {"grpo": {**asdict(grpo), "max_prompt_lenght": 5}}})
    with pytest.raises(ConfigError, match=r"run.json \(config\): grpo.max_prompt_lenght is not a known key"):
        recorded_config(tmp_path)
