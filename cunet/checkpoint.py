"""Checkpoints: everything a run needs to continue exactly, written atomically.

One ``.npz`` file holds the weights (``param/<name>``), the momentum buffers
(``velocity/<i>``), the running average of the weights if the run keeps one
(``average/<name>``, what predict and evaluate use) and a JSON document (``meta``) with the step, the configuration, the
random-number state of the data sampler and the drop-out call counter, and the loss of
the last step. It is written to a temporary file in the same folder, flushed to disk and
renamed over the old one, so a crash at any moment leaves either the old checkpoint or
the new one, never half of one. A SIGKILL between the two leaves the temporary file
(``checkpoint.npz.<random>.tmp``): :func:`remove_stale_temporaries` clears them when a run
starts in that folder. The file gets the mode the umask gives any new file (as ``open``
would), not mkstemp's private 0600.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cunet.runlog import current_umask

FORMAT = "cunet-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, truncated, or does not fit the model."""


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns."""

    params: dict[str, np.ndarray]
    velocities: list[np.ndarray]
    meta: dict
    averages: dict[str, np.ndarray] = field(default_factory=dict)  # by parameter name; empty if none kept

    @property
    def inference_params(self) -> dict[str, np.ndarray]:
        """The weights to predict with: the running average where the run kept one, else the weights."""
        return self.averages or self.params

    @property
    def step(self) -> int:
        """Training steps completed when it was written."""
        return int(self.meta["step"])

    @property
    def config(self) -> dict:
        """The run's configuration (model and training settings)."""
        return self.meta["config"]


def save_checkpoint(path, params: dict[str, np.ndarray], velocities: list[np.ndarray], meta: dict,
                    averages: dict[str, np.ndarray] | None = None) -> Path:
    """Write a checkpoint atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"param/{k}": v for k, v in params.items()}
    arrays |= {f"velocity/{i}": v for i, v in enumerate(velocities)}
    arrays |= {f"average/{k}": v for k, v in (averages or {}).items()}
    arrays["meta"] = np.frombuffer(json.dumps(dict(meta, format=FORMAT)).encode(), dtype=np.uint8)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def remove_stale_temporaries(path) -> list[Path]:
    """Delete the temporary files an interrupted save_checkpoint(path) left (only its own pattern)."""
    path = Path(path)
    stale = sorted(path.parent.glob(f"{path.name}.*.tmp"))
    for leftover in stale:
        leftover.unlink(missing_ok=True)
    return stale


def load_checkpoint(path) -> Checkpoint:
    """Read a checkpoint, or raise CheckpointError saying what is wrong with the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(exc).__name__}: {exc})") from exc
    if "meta" not in arrays:
        raise CheckpointError(f"{path} is not a cunet checkpoint (no 'meta' entry)")
    meta = json.loads(arrays.pop("meta").tobytes().decode())
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} has format {meta.get('format')!r}; this cunet reads {FORMAT!r}")
    missing = [key for key in ("step", "config") if key not in meta]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)} in its metadata: it was not written by "
                              "python -m cunet.train, or it was edited")
    params = {k.removeprefix("param/"): v for k, v in arrays.items() if k.startswith("param/")}
    n_velocities = sum(k.startswith("velocity/") for k in arrays)
    velocities = [arrays[f"velocity/{i}"] for i in range(n_velocities)]
    averages = {k.removeprefix("average/"): v for k, v in arrays.items() if k.startswith("average/")}
    return Checkpoint(params, velocities, meta, averages)
