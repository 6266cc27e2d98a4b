"""files.py: atomic writes of one file and of a folder, the per-step JSONL logs, what a killed save leaves
behind, and fingerprints."""
import json
import os
import socket
import subprocess
import sys

import pytest

from files import (
    MetricsLog,
    fingerprint,
    read_jsonl,
    replace_folder,
    truncate_jsonl,
    write_json,
    write_jsonl,
    write_text,
)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_failed_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "out.json"
    write_json(path, {"a": 1})
    with pytest.raises(TypeError):
        write_json(path, {"a": object()})                        # not JSON: fails before anything is written
    assert json.loads(path.read_text()) == {"a": 1}
    with pytest.raises(UnicodeEncodeError):
        write_text(path, "\ud800")                              # fails while encoding
    assert os.listdir(tmp_path) == ["out.json"]                  # no temporary file left behind
    write_jsonl(tmp_path / "new" / "rows.jsonl", [{"name": "José"}, {"n": 2}])   # folders are made; UTF-8
    assert (tmp_path / "new" / "rows.jsonl").read_text(encoding="utf-8") == '{"name": "José"}\n{"n": 2}\n'
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask          # the usual permissions, not mkstemp's 0600


def test_replace_folder_is_all_or_nothing(tmp_path):
    target = tmp_path / "checkpoint"
    with replace_folder(target) as staging:
        write_text(os.path.join(staging, "weights"), "first")
    with pytest.raises(RuntimeError, match="crash"):
        with replace_folder(target) as staging:
            write_text(os.path.join(staging, "weights"), "second")
            raise RuntimeError("crash while saving")
    assert (target / "weights").read_text() == "first" and os.listdir(tmp_path) == ["checkpoint"]
    with replace_folder(target) as staging:
        write_text(os.path.join(staging, "state"), "third")
    assert os.listdir(target) == ["state"] and os.listdir(tmp_path) == ["checkpoint"]


def test_metrics_log_resumes_and_drops_a_torn_line(tmp_path):
    path = str(tmp_path / "metrics.jsonl")
    log = MetricsLog(path)
    for step in range(4):
        log.write({"step": step, "loss": step / 2})
    with open(path, "a") as handle:
        handle.write('{"step": 4, "lo')                            # a crash mid-line
    truncate_jsonl(path, 2)
    assert [row["step"] for row in read_jsonl(path)] == [0, 1, 2]
    MetricsLog(path, resume_step=0).write({"step": 1, "loss": 9.0})
    assert read_jsonl(path) == [{"step": 0, "loss": 0.0}, {"step": 1, "loss": 9.0}]
    MetricsLog(path)                                               # a fresh run starts an empty log
    assert read_jsonl(path) == []
    assert read_jsonl(tmp_path / "missing.jsonl") == []


# ----------------------------------------------------------------------------------------------
# Leftovers of a killed writer, fingerprints, the run lock.

def dead_pid():
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_killed_saves_leftovers_are_removed_by_the_next_save(tmp_path):
    host = socket.gethostname()
    with replace_folder(tmp_path / "step-000002") as staging:
        write_text(os.path.join(staging, "weights"), "2")
    # A kill in the middle of writing step 4: its staging folder stays behind.
    leftover = tmp_path / f".step-000004.saving-{host}-{dead_pid()}-k1ll3d"
    (leftover / "sub").mkdir(parents=True)
    # A kill between the two renames of a swap of step 2: no step-000002, its old copy in a retired folder.
    retired = tmp_path / f".step-000002.old-{host}-{dead_pid()}-abc_1"
    retired.mkdir()
    os.rename(tmp_path / "step-000002", retired / "step-000002")
    # A live writer's staging folder (ours) is left alone.
    alive = tmp_path / f".other.saving-{host}-{os.getpid()}-live"
    alive.mkdir()
    with replace_folder(tmp_path / "step-000006") as staging:
        write_text(os.path.join(staging, "weights"), "6")
    assert sorted(os.listdir(tmp_path)) == [alive.name, "step-000002", "step-000006"]
    assert (tmp_path / "step-000002" / "weights").read_text() == "2"          # the old copy is back


def test_fingerprint_changes_with_the_bytes(tmp_path):
    write_text(tmp_path / "a", "same size")
    first = fingerprint(tmp_path / "a")
    assert first.startswith("sha256:") and first == fingerprint(tmp_path / "a")
    write_text(tmp_path / "a", "same SIZE")
    assert fingerprint(tmp_path / "a") != first
