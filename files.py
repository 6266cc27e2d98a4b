"""Files a run writes: never half-written, whatever happens mid-write.

Every file AI-Salesman's pipeline writes (the corpus, tokenizers, checkpoints, script libraries,
metrics, summaries and reports) goes through this module (docs/design.md, "Cross-cutting rules"), so
that a crash, a full disk or an interrupted run leaves either the old file or the new one, never a
torn one:

* `write_bytes` / `write_text` / `write_json` / `write_jsonl`: the content goes to a temporary file in
  the same folder, is flushed to disk (fsync), and is renamed over the target (os.replace, atomic on
  POSIX and Windows within one file system);
* `replace_folder`: the same for a folder of files (a Hugging Face checkpoint, a GRPO checkpoint): it
  is written in a staging folder beside the target, flushed, and swapped in by rename;
* the per-step logs: `MetricsLog` appends one JSON line per step, `truncate_jsonl` cuts a log back to a
  resumed step (dropping a line torn by a crash), `read_jsonl` reads one back, `last_logged_step` says
  how far an interrupted run got;
* what a run records of its inputs: `fingerprint` (the SHA-256 of a file's bytes). Who owns a run's
  folder, and what the run records in it, is runs.py's business.

JSON is written as UTF-8 (ensure_ascii=False): a corpus with "José" in it stays readable.
Left out on purpose: locks on single files (a run owns its whole folder through runs.RunLock), and
fsync of the containing folder after a single-file rename (the rename itself is atomic; the folder swap,
whose several renames are what a checkpoint relies on, does sync its parent).
"""

import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from contextlib import contextmanager


# ----------------------------------------------------------------------------------------------
# One file.

def write_bytes(path, data):
    """Write `data` to `path` atomically: a temporary file beside it, flushed to disk, renamed over it."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def write_text(path, text):
    write_bytes(path, text.encode("utf-8"))


def write_json(path, value, indent=None):
    write_text(path, json.dumps(value, indent=indent, ensure_ascii=False))


def write_jsonl(path, rows):
    """One JSON object per line."""
    write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


# ----------------------------------------------------------------------------------------------
# A folder of files.

def _fsync(path):
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _writer_tag():
    """`<host>-<pid>`: which process is writing a staging folder, so that a later one can tell whether
    that writer is gone (and its leftovers are garbage) or still at work."""
    return f"{socket.gethostname()}-{os.getpid()}"


# `.<name>.saving-<host>-<pid>-<random>` is a folder being written; `.<name>.old-<host>-<pid>-<random>`
# holds the folder it replaces during the swap. mkdtemp's random part has no '-', so the host may.
_STAGING = re.compile(r"\.(?P<name>.+)\.(?P<kind>saving|old)-(?P<host>.+)-(?P<pid>\d+)-[a-z0-9_]+")


def process_is_alive(host, pid):
    """False only when `pid` ran on this machine and has exited; a process on another machine, or one
    that belongs to another user, counts as alive (we cannot tell, so we leave its files alone)."""
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_staging(parent):
    """Clean up after a writer that was killed in the middle of `replace_folder` in `parent`.

    A staging folder of a dead writer is removed (a checkpoint of a 0.5B model is about 1 GB). A retired
    `.old-` folder of a dead writer is removed too, except when the kill fell between the two renames of
    the swap, leaving no folder at the target: then the old folder is put back, so a kill leaves the
    old checkpoint or the new one, never none. Returns the names removed or restored.
    """
    if not os.path.isdir(parent):
        return []
    cleaned = []
    for entry in sorted(os.listdir(parent), key=lambda e: ".old-" not in e):  # restore before deleting
        match = _STAGING.fullmatch(entry)
        if not match or process_is_alive(match["host"], int(match["pid"])):
            continue
        path, target = os.path.join(parent, entry), os.path.join(parent, match["name"])
        retired = os.path.join(path, match["name"])
        if match["kind"] == "old" and os.path.isdir(retired) and not os.path.exists(target):
            os.rename(retired, target)
        shutil.rmtree(path, ignore_errors=True)
        cleaned.append(entry)
    return cleaned


@contextmanager
def replace_folder(path):
    """Yield a new, empty staging folder beside `path`; when the block ends, it replaces `path`.

    Every file written into the staging folder is flushed to disk, then the old folder (if any) is
    renamed out of the way, the staging folder renamed to `path`, and the old one deleted. A crash
    leaves either the old folder or the new one at `path` (plus a stray hidden staging folder, which
    the next save into the same parent removes: `remove_stale_staging`), never a mixture; an error
    inside the block removes the staging folder and leaves `path` as it was.
    """
    target = os.path.abspath(path)
    parent, name = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    remove_stale_staging(parent)
    staging = tempfile.mkdtemp(prefix=f".{name}.saving-{_writer_tag()}-", dir=parent)
    try:
        yield staging
        for folder, _, names in os.walk(staging):
            for file in names:
                _fsync(os.path.join(folder, file))
        _fsync(staging)
        if os.path.exists(target):
            retired = tempfile.mkdtemp(prefix=f".{name}.old-{_writer_tag()}-", dir=parent)
            os.rename(target, os.path.join(retired, name))
            try:
                os.rename(staging, target)
            except BaseException:
                os.rename(os.path.join(retired, name), target)
                raise
            shutil.rmtree(retired)
        else:
            os.rename(staging, target)
        _fsync(parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------------------------
# Per-step logs: one JSON object per line.

def read_jsonl(path):
    """The objects of a JSONL file; [] when there is no file."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def truncate_jsonl(path, last_step):
    """Keep the lines of a per-step JSONL log with step <= last_step, rewritten atomically. A line torn
    by a crash mid-write cannot parse and is dropped with the steps after the checkpoint."""
    if not os.path.exists(path):
        return
    kept = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                if json.loads(line)["step"] <= last_step:
                    kept.append(line)
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    write_text(path, "".join(kept))


def last_logged_step(path):
    """The highest step of a per-step JSONL log, skipping a line torn by a crash; None when it has none.
    What an interrupted run reports as the step it reached."""
    last = None
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    last = json.loads(line)["step"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue
    except OSError:
        return None
    return last


class MetricsLog:
    """Appends one JSON object per step to `<out>/metrics.jsonl`.

    On resume, lines after the resumed step are dropped first, so an interrupted-and-resumed run
    leaves the same file as an uninterrupted one.
    """

    def __init__(self, path, resume_step=None):
        self.path = path
        if resume_step is None:
            write_text(path, "")
        else:
            truncate_jsonl(path, resume_step)

    def write(self, record):
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


# ----------------------------------------------------------------------------------------------
# What a run records of its inputs.

def fingerprint(path):
    """`sha256:<hex digest>` of a file's bytes, or of a folder's files (their names and fingerprints, in
    name order). A run records the fingerprints of its inputs (the base model's weights, the corpus) so
    that a changed input is noticed even when its name, size and date are the same."""
    digest = hashlib.sha256()
    if os.path.isdir(path):
        for folder, _, names in sorted(os.walk(path)):
            for name in sorted(names):
                file = os.path.join(folder, name)
                digest.update(f"{os.path.relpath(file, path)}\0{fingerprint(file)}\n".encode())
    else:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return f"sha256:{digest.hexdigest()}"
