"""runs.py: one run per folder (the lock names its holder; a dead holder's lock is taken over). The run
record, the claim of a folder and resume are tested through the training loops (test_grpo_train.py,
test_pretrain.py)."""
import json
import os
import socket
import subprocess
import sys

import pytest

from runs import RunLock, RunLocked


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
