"""Checkpoints: round trip, atomic replacement, and clear errors for bad files."""
import numpy as np
import pytest

from cunet.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def test_round_trip(tmp_path):
    params = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3)}
    path = save_checkpoint(tmp_path / "c.npz", params, [np.ones(3, np.float32)], {"step": 7, "config": {"x": 1}})
    ckpt = load_checkpoint(path)
    np.testing.assert_array_equal(ckpt.params["a.weight"], params["a.weight"])
    assert ckpt.step == 7 and ckpt.config == {"x": 1} and len(ckpt.velocities) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]  # no temporary file left behind


def test_truncated_file_is_a_clear_error(tmp_path):
    path = save_checkpoint(tmp_path / "c.npz", {"w": np.zeros(1000, np.float32)}, [], {"step": 1, "config": {}})
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(2))
    with pytest.raises(CheckpointError, match="not a cunet checkpoint"):
        load_checkpoint(tmp_path / "other.npz")


def test_failed_write_keeps_the_old_checkpoint(tmp_path):
    path = save_checkpoint(tmp_path / "c.npz", {"w": np.zeros(2, np.float32)}, [], {"step": 1, "config": {}})

    class Unserialisable:
        pass

    with pytest.raises(TypeError):
        save_checkpoint(path, {"w": np.zeros(2, np.float32)}, [], {"step": 2, "config": {"bad": Unserialisable()}})
    assert load_checkpoint(path).step == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]
