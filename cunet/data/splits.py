"""Train/validation splits by slice index, recorded so that every figure can say which
slices it was trained and scored on.

A `Split` is a plain record (lists of ints plus how they were chosen) that round-trips
through JSON, so a training run can write it next to its checkpoints.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Split:
    """Which slice indices train and which validate, and how that was decided.

    ``method`` is ``"explicit"`` (validation indices given), ``"tail"`` (the last slices
    validate, the ISBI README's suggestion) or ``"seeded"`` (drawn with ``seed``).
    """

    train: list[int]
    val: list[int]
    n: int
    method: str = "explicit"
    seed: int | None = None
    names: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        """The split as a JSON string."""
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Split":
        """Rebuild a split from `to_json` output."""
        return cls(**json.loads(text))

    def save(self, path) -> None:
        """Write the split as JSON to ``path``."""
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path) -> "Split":
        """Read a split written by `save`."""
        return cls.from_json(Path(path).read_text())


def _validation_count(n: int, val_fraction: float) -> int:
    """round(n * fraction), but at least one slice (and at least one left to train on)."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if val_fraction == 0:
        return 0
    return int(min(max(1, round(n * val_fraction)), n - 1))


def make_split(n: int, *, val=None, val_fraction: float = 0.2, seed: int | None = None, names=None) -> Split:
    """Split slice indices ``0..n-1`` into train and validation.

    ``val`` given: exactly those indices validate (``method="explicit"``). Otherwise
    ``round(n * val_fraction)`` slices validate: the last ones when ``seed`` is None
    (``"tail"``; for the 25 ISBI slices and 0.2: train 0-19, validate 20-24), or drawn
    at random with ``numpy.random.default_rng(seed)`` (``"seeded"``). ``names`` (one per
    slice, e.g. ``Dataset.names``) are recorded alongside.
    """
    if n < 1:
        raise ValueError(f"cannot split {n} slices")
    if val is not None:
        chosen = sorted(int(i) for i in val)
        if len(set(chosen)) != len(chosen) or any(not 0 <= i < n for i in chosen):
            raise ValueError(f"validation indices {chosen} must be distinct and within 0..{n - 1}")
        method = "explicit"
    elif seed is None:
        chosen, method = list(range(n - _validation_count(n, val_fraction), n)), "tail"
    else:
        draw = np.random.default_rng(seed).choice(n, _validation_count(n, val_fraction), replace=False)
        chosen, method = sorted(int(i) for i in draw), "seeded"
    train = [i for i in range(n) if i not in set(chosen)]
    return Split(train, chosen, n, method, seed if method == "seeded" else None, list(names or []))
