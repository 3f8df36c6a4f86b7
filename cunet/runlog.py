"""A run's ``log.jsonl``: one JSON record per line, appended whole, read whatever a crash left.

Training appends a record per step (and one per validation) to ``<out>/log.jsonl``. The
file must survive what a run can meet:

* a full disk or a SIGKILL in the middle of a write can leave a torn last line. Each record
  goes out as one ``write`` of its whole line on a file opened for appending, so a torn line
  can only be the last one; :func:`read_log` skips it and says so, and nothing else is lost
  (the loss plot of every later run in that folder still works);
* a resumed run repeats the steps after its checkpoint. The rule: at resume the log is cut
  back to the checkpoint's step (records of later steps are dropped; they described weights
  that no longer exist) and a ``{"event": "resume", "step": N}`` record marks the place, so
  the log describes exactly one history. The cut is written whole (temp file + rename).
"""
from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path


class TornLogWarning(UserWarning):
    """The log's last line was cut short (a crash or a full disk while it was written)."""


def append_record(path: Path, record: dict) -> None:
    """Append one record as one whole line (a single write on an O_APPEND file)."""
    line = (json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        written = os.write(fd, line)
        if written != len(line):  # a short write: the disk is full
            raise OSError(28, f"No space left on device: only {written} of {len(line)} bytes written", str(path))
    finally:
        os.close(fd)


def read_log(path: Path) -> list[dict]:
    """Every record of the log; a torn (unparseable) last line is skipped with a TornLogWarning.

    A line that cannot be parsed anywhere but at the end is not a torn write: that file was
    edited or is not a cunet log, and it raises ValueError naming the line.
    """
    lines = Path(path).read_bytes().split(b"\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            if any(rest.strip() for rest in lines[number:]):
                raise ValueError(f"{path}: line {number} is not a JSON record (the log was edited or is not "
                                 "a cunet log)") from None
            warnings.warn(f"{path}: the last line was cut short ({len(line)} bytes; a crash or a full disk while "
                          "it was written) and is skipped", TornLogWarning, stacklevel=2)
    return records


def cut_log_at(path: Path, step: int) -> int:
    """Keep the records up to ``step`` (the checkpoint a run resumes from), mark the resume;
    returns how many records were dropped. The new log is written whole."""
    path = Path(path)
    if not path.exists():
        append_record(path, dict(event="resume", step=step))
        return 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TornLogWarning)  # a torn line is dropped by the cut anyway
        records = read_log(path)
    kept = [r for r in records if r.get("step", 0) <= step]
    kept.append(dict(event="resume", step=step))
    fd, temporary = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
        os.chmod(temporary, 0o666 & ~current_umask())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return len(records) + 1 - len(kept)


def current_umask() -> int:
    """The process's umask (os.umask can only be read by setting it: set it back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
