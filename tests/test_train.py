"""python -m cunet.train end to end, on tiny settings: logs, checkpoints, exact resume, failures."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from cunet import train
from cunet.checkpoint import load_checkpoint
from cunet.malis import malis_weights
from cunet.predict import model_from_checkpoint
from helpers import skip_without_pocl

TINY = ["--tile", "44", "--base", "2", "--depth", "2", "--synthetic-images", "3", "--quiet", "--lr", "0.01"]


def run_main(tmp_path, *args, name="run"):
    out = tmp_path / name
    return train.main([*TINY, "--out", str(out), *args]), out


def poison_the_loss_of_step(step, monkeypatch):
    """Make the loss of the ``step``-th training step NaN (after it is computed, as an overflow would)."""
    real, calls = train.weighted_cross_entropy, {"n": 0}

    def poisoned(logits, labels, weights):
        calls["n"] += 1
        loss = real(logits, labels, weights)
        if calls["n"] == step:
            loss.data[...] = np.nan
        return loss

    monkeypatch.setattr(train, "weighted_cross_entropy", poisoned)


def steps_logged(out):
    return [json.loads(line) for line in open(out / "log.jsonl") if '"loss"' in line]


def test_a_few_steps_write_log_checkpoint_and_plot(tmp_path, capsys):
    code, out = run_main(tmp_path, "--steps", "3", "--device", "cpu", "--checkpoint-every", "2")
    text = capsys.readouterr().out
    assert code == 0
    assert "validation before:" in text and "validation after:" in text
    assert "cpu convolutions: C++ kernels (cunet._host" in text and "cpu memory: each step reuses" in text
    records = steps_logged(out)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) and r["seconds"] > 0 and r["images_per_s"] > 0 for r in records)
    assert load_checkpoint(out / "checkpoint.npz").step == 3
    assert (out / "loss.png").stat().st_size > 1000
    assert (out / "validation.png").stat().st_size > 1000
    validations = [json.loads(line)["validation"] for line in open(out / "log.jsonl") if '"validation"' in line]
    assert len(validations) == 2 and set(validations[0]) == {"pixel_error", "rand_error", "v_rand", "v_info",
                                                             "iou_cell", "dice_cell", "seg"}


def test_learning_rate_drops_tenfold_after_each_drop_step(tmp_path):
    code, out = run_main(tmp_path, "--steps", "5", "--device", "cpu", "--lr-drops", "2,4")
    assert code == 0
    assert [r["lr"] for r in steps_logged(out)] == pytest.approx([0.01, 0.01, 0.001, 0.001, 0.0001])
    config = train.TrainConfig(tile=44, base=2, depth=2, steps=5, lr=0.01, lr_drops=[2, 4])
    assert [train.lr_at(config, s) for s in range(5)] == pytest.approx([0.01, 0.01, 0.001, 0.001, 0.0001])


def test_resume_across_a_learning_rate_drop_is_exact(tmp_path):
    code, straight = run_main(tmp_path, "--steps", "4", "--device", "cpu", "--lr-drops", "2", name="straight")
    assert code == 0
    code, split = run_main(tmp_path, "--steps", "2", "--device", "cpu", "--lr-drops", "2", name="split")
    assert code == 0 and train.main(["--resume", str(split / "checkpoint.npz"), "--steps", "4", "--quiet"]) == 0
    a, b = load_checkpoint(straight / "checkpoint.npz"), load_checkpoint(split / "checkpoint.npz")
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)


def test_presets_set_the_recipe_and_options_override_them(capsys):
    device = train.get_device("cpu")
    args = train.parse_args(["--preset", "isbi-cpu-1h", "--data", "somewhere", "--steps", "7"])
    config = train.resolve_config(args, device)
    recipe = train.PRESETS["isbi-cpu-1h"]
    assert (config.tile, config.base, config.depth, config.lr) == (recipe["tile"], recipe["base"], recipe["depth"],
                                                                    recipe["lr"])
    assert config.lr_drops == recipe["lr_drops"] and config.steps == 7  # the command line wins
    paper = train.resolve_config(train.parse_args(["--preset", "paper"]), device)
    assert (paper.tile, paper.base, paper.depth, paper.momentum, paper.w0, paper.sigma) == (572, 64, 5, 0.99, 10, 5)


def test_cosine_schedule_falls_from_lr_to_zero_and_replaces_the_presets_drops():
    config = train.TrainConfig(tile=44, base=2, depth=2, steps=100, lr=0.01, lr_schedule="cosine")
    rates = [train.lr_at(config, s) for s in range(100)]
    assert rates[0] == 0.01 and rates[50] == pytest.approx(0.005) and 0 < rates[99] < 1e-5
    assert all(a > b for a, b in zip(rates, rates[1:]))
    device = train.get_device("cpu")
    cosine = train.resolve_config(train.parse_args(["--preset", "isbi-cpu-1h", "--data", "x", "--lr-schedule", "cosine"]),
                                  device)
    assert cosine.lr_schedule == "cosine" and cosine.lr_drops == []
    with pytest.raises(ValueError, match="--lr-drops 100 is for --lr-schedule step"):
        train.resolve_config(train.parse_args([*TINY, "--lr-schedule", "cosine", "--lr-drops", "100"]), device)


def test_class_balance_reaches_the_sampler_and_the_preset_turns_it_off():
    """--class-balance off gives w_c = 1: the weight map is 1 on every cell pixel (the border
    term lies on membranes only); on, the cells weigh below 1 and the membranes above."""
    device = train.get_device("cpu")
    preset = ["--preset", "isbi-cpu-1h", "--data", "somewhere"]
    assert train.resolve_config(train.parse_args(preset), device).class_balance is False
    assert train.resolve_config(train.parse_args([*preset, "--class-balance", "on"]), device).class_balance is True
    default = train.resolve_config(train.parse_args(TINY), device)
    off = train.resolve_config(train.parse_args([*TINY, "--class-balance", "off"]), device)
    assert default.class_balance is True and off.class_balance is False
    with pytest.raises(SystemExit) as exit_:
        train.parse_args([*TINY, "--class-balance", "no"])
    assert exit_.value.code == 2
    for config, cells_weigh_one in ((off, True), (default, False)):
        sampler = train.load_data(config).sampler
        _, label, weight = sampler.sample_at(0)
        assert np.all(weight[label == 1] == 1.0) == cells_weigh_one


def test_elastic_sigma_reaches_the_sampler():
    """--elastic-sigma sets the training sampler's deformation (default: the paper's 10 px)."""
    device = train.get_device("cpu")
    default = train.resolve_config(train.parse_args(TINY), device)
    stronger = train.resolve_config(train.parse_args([*TINY, "--elastic-sigma", "15"]), device)
    assert default.elastic_sigma == 10.0 and stronger.elastic_sigma == 15.0
    assert train.load_data(stronger).sampler.config.elastic_sigma == 15.0
    assert train.load_data(default).sampler.config.elastic_sigma == 10.0


def test_malis_adds_its_map_from_its_first_step_on(tmp_path, monkeypatch):
    """--malis W --malis-from S: the loss of the steps after step S gets the weight map plus W x the
    MALIS map of that step's own prediction; the steps before get the weight map alone."""
    real, seen = train.weighted_cross_entropy, []

    def spy(logits, labels, weights):
        scores = logits.data.astype(np.float64)
        seen.append((1.0 / (1.0 + np.exp(scores[:, 0] - scores[:, 1])), labels.copy(), weights.copy()))
        return real(logits, labels, weights)

    monkeypatch.setattr(train, "weighted_cross_entropy", spy)
    code, out = run_main(tmp_path, "--steps", "4", "--device", "cpu", "--malis", "2.5", "--malis-from", "2")
    assert code == 0 and len(seen) == 4
    sampler = train.load_data(train.TrainConfig(**load_checkpoint(out / "checkpoint.npz").config)).sampler
    for step, (cell_prob, labels, weights) in enumerate(seen):
        _, _, plain = sampler.batch_at(step, 1)
        extra = 2.5 * malis_weights(cell_prob[0], labels[0]) if step >= 2 else 0.0
        np.testing.assert_allclose(weights[0], plain[0] + extra, rtol=1e-6)


def test_bad_malis_is_a_clear_error(tmp_path, capsys):
    code, _ = run_main(tmp_path, "--steps", "1", "--malis", "-1")
    assert code == 2 and "--malis must be a weight >= 0" in capsys.readouterr().err


def test_isbi_preset_without_data_is_a_clear_error(capsys):
    assert train.main(["--preset", "isbi-cpu-1h", "--device", "cpu"]) == 2
    assert "give --data" in capsys.readouterr().err


def test_bad_lr_drops_are_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exc:
        train.parse_args(["--lr-drops", "ten"])
    assert exc.value.code == 2 and "expected step numbers" in capsys.readouterr().err


def test_resume_is_bit_identical_to_one_run(tmp_path):
    code, straight = run_main(tmp_path, "--steps", "4", "--device", "cpu", name="straight")
    assert code == 0
    code, split = run_main(tmp_path, "--steps", "2", "--device", "cpu", name="split")
    assert code == 0
    assert train.main(["--resume", str(split / "checkpoint.npz"), "--steps", "4", "--quiet"]) == 0
    a, b = load_checkpoint(straight / "checkpoint.npz"), load_checkpoint(split / "checkpoint.npz")
    assert a.step == b.step == 4
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name], err_msg=name)
    for va, vb in zip(a.velocities, b.velocities):
        np.testing.assert_array_equal(va, vb)
    assert [r["loss"] for r in steps_logged(straight)] == [r["loss"] for r in steps_logged(split)]


def test_weight_average_resumes_exactly_and_is_what_predict_loads(tmp_path, capsys):
    """--weight-average: the average is saved beside the weights, continues exactly after a
    resume, is what validation scores and what predict loads."""
    average = ["--device", "cpu", "--weight-average", "0.5"]
    code, straight = run_main(tmp_path, "--steps", "4", *average, name="straight")
    assert code == 0 and "weights averaged (decay 0.5" in capsys.readouterr().out
    code, split = run_main(tmp_path, "--steps", "2", *average, name="split")
    assert code == 0 and train.main(["--resume", str(split / "checkpoint.npz"), "--steps", "4", "--quiet"]) == 0
    a, b = load_checkpoint(straight / "checkpoint.npz"), load_checkpoint(split / "checkpoint.npz")
    assert set(a.averages) == set(a.params)
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name], err_msg=name)
        np.testing.assert_array_equal(a.averages[name], b.averages[name], err_msg=name)
    assert any(not np.array_equal(a.averages[k], a.params[k]) for k in a.params)   # an average, not a copy
    model, _ = model_from_checkpoint(straight / "checkpoint.npz", train.get_device("cpu"))
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, a.averages[name], err_msg=name)
    # What validation scored at the end is the average's score.
    config = train.config_for_resume(train.parse_args([]), straight / "checkpoint.npz")
    data = train.load_data(config)
    final = [json.loads(line)["validation"] for line in open(straight / "log.jsonl") if '"validation"' in line][-1]
    assert train.validate(model, data) == pytest.approx(final)


def test_weight_average_of_a_run_without_one_cannot_be_resumed_into(tmp_path, capsys):
    code, out = run_main(tmp_path, "--steps", "2", "--device", "cpu")
    assert code == 0
    capsys.readouterr()
    assert train.main(["--resume", str(out / "checkpoint.npz"), "--steps", "3", "--weight-average", "0.9"]) == 2
    assert "--weight-average 0.9 differs from the checkpoint's 0.0" in capsys.readouterr().err


def test_bad_weight_average_is_a_clear_error(tmp_path, capsys):
    assert run_main(tmp_path, "--weight-average", "1")[0] == 2
    assert "--weight-average must be a decay in [0, 1)" in capsys.readouterr().err


@pytest.mark.parametrize("workers", [(0, 2), (2, 0)], ids=["0-then-2-workers", "2-then-0-workers"])
def test_resume_is_exact_for_any_worker_count(tmp_path, workers):
    """Samples are a function of (seed, k): a run split in two, with other worker counts on
    each side, ends bit-identical to one straight run without workers."""
    first, second = workers
    code, straight = run_main(tmp_path, "--steps", "4", "--device", "cpu", "--workers", "0", name="straight")
    assert code == 0
    code, split = run_main(tmp_path, "--steps", "2", "--device", "cpu", "--workers", str(first), name="split")
    assert code == 0
    assert train.main(["--resume", str(split / "checkpoint.npz"), "--steps", "4", "--quiet",
                       "--workers", str(second)]) == 0
    a, b = load_checkpoint(straight / "checkpoint.npz"), load_checkpoint(split / "checkpoint.npz")
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name], err_msg=name)
    assert [r["loss"] for r in steps_logged(straight)] == [r["loss"] for r in steps_logged(split)]


def test_losses_are_read_back_every_sync_every_steps(tmp_path, monkeypatch):
    """On a kernel runtime with event timers (as on cuda) the loop reads nothing back from
    the device between two reads of the losses, and still logs one record per step."""
    from cunet.device import get_device

    skip_without_pocl()
    device = get_device("opencl")
    runtime = device.runtime

    class EventLikeTimer:  # records without waiting, as CUDA events do
        def start(self):
            pass

        def stop(self):
            pass

        def seconds(self):
            return 0.25

    reads = []
    monkeypatch.setattr(runtime, "step_timer", lambda: EventLikeTimer())
    monkeypatch.setattr(train, "get_device", lambda *a, **k: device)
    real_record = train.Run._record

    def record(self, pending, bar):
        reads.append([p[0] for p in pending])
        return real_record(self, pending, bar)

    monkeypatch.setattr(train.Run, "_record", record)
    real_to_host, hosts = runtime.to_host, []
    monkeypatch.setattr(runtime, "to_host", lambda a: (hosts.append(a.shape), real_to_host(a))[1])
    real_step = train.Run.train_step

    def step(self, batch):
        before = len(hosts)
        out = real_step(self, batch)
        assert len(hosts) == before, f"step {self.step + 1} copied {hosts[before:]} to the host"
        return out

    monkeypatch.setattr(train.Run, "train_step", step)
    code, out = run_main(tmp_path, "--steps", "7", "--sync-every", "3", "--checkpoint-every", "100")
    assert code == 0
    assert reads == [[1, 2, 3], [4, 5, 6], [7]]
    records = steps_logged(out)
    assert [r["step"] for r in records] == list(range(1, 8))
    assert all(r["seconds"] == 0.25 and r["images_per_s"] == 4.0 and r["data_wait_s"] >= 0 for r in records)


def test_a_nan_found_late_still_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    """With --sync-every 4 the NaN of step 3 is seen at step 4, when the checkpoint falls due:
    the error names step 3 and the checkpoint of step 2 is kept."""
    poison_the_loss_of_step(3, monkeypatch)
    code, out = run_main(tmp_path, "--steps", "8", "--device", "cpu", "--checkpoint-every", "2", "--sync-every", "4")
    assert code == 1
    assert "the loss became nan at step 3" in capsys.readouterr().err
    assert load_checkpoint(out / "checkpoint.npz").step == 2


def test_a_checkpoint_of_the_sequential_sampler_is_refused(tmp_path, capsys):
    from cunet.checkpoint import save_checkpoint

    code, out = run_main(tmp_path, "--steps", "1", "--device", "cpu")
    ckpt = load_checkpoint(out / "checkpoint.npz")
    ckpt.meta["sampler"] = {"bit_generator": {"bit_generator": "PCG64"}}
    save_checkpoint(out / "old.npz", ckpt.params, ckpt.velocities, ckpt.meta)
    assert train.main(["--resume", str(out / "old.npz"), "--quiet"]) == 2
    assert "written by an older cunet" in capsys.readouterr().err


def test_workers_default_by_device():
    from types import SimpleNamespace

    assert train.default_workers(SimpleNamespace(name="cpu")) == 0
    assert train.default_workers(SimpleNamespace(name="opencl")) == 0
    assert train.default_workers(SimpleNamespace(name="cuda"), cpu_count=2) == 1
    assert train.default_workers(SimpleNamespace(name="cuda"), cpu_count=16) == 6


def test_resume_refuses_a_changed_configuration(tmp_path, capsys):
    code, out = run_main(tmp_path, "--steps", "1", "--device", "cpu")
    assert code == 0
    assert train.main(["--resume", str(out / "checkpoint.npz"), "--base", "4", "--quiet"]) == 2
    assert "--base 4 differs from the checkpoint's 2" in capsys.readouterr().err


def test_resume_from_a_truncated_checkpoint_is_a_clear_error(tmp_path, capsys):
    code, out = run_main(tmp_path, "--steps", "1", "--device", "cpu")
    path = out / "checkpoint.npz"
    path.write_bytes(path.read_bytes()[:300])
    assert train.main(["--resume", str(path), "--quiet"]) == 2
    assert "corrupt or truncated" in capsys.readouterr().err


def test_checkpoint_with_wrong_shapes_is_a_clear_error(tmp_path, capsys):
    code, out = run_main(tmp_path, "--steps", "1", "--device", "cpu")
    ckpt = load_checkpoint(out / "checkpoint.npz")
    from cunet.checkpoint import save_checkpoint

    ckpt.params["head.weight"] = ckpt.params["head.weight"][:, :1]
    save_checkpoint(out / "bad.npz", ckpt.params, ckpt.velocities, ckpt.meta)
    assert train.main(["--resume", str(out / "bad.npz"), "--quiet"]) == 2
    assert "does not fit this model" in capsys.readouterr().err


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    poison_the_loss_of_step(3, monkeypatch)
    code, out = run_main(tmp_path, "--steps", "5", "--device", "cpu", "--checkpoint-every", "1")
    assert code == 1
    err = capsys.readouterr().err
    assert "the loss became nan at step 3" in err and "step 2" in err
    assert load_checkpoint(out / "checkpoint.npz").step == 2


def test_weights_that_diverge_silently_are_caught(tmp_path, monkeypatch, capsys):
    """NaN weights can leave the loss finite (ReLU maps NaN to 0); the run must still stop."""
    from cunet.optim import SGD

    real_step, calls = SGD.step, {"n": 0}

    def step_then_poison(self):
        real_step(self)
        calls["n"] += 1
        if calls["n"] == 3:
            self.params[0].data[...] = np.inf

    monkeypatch.setattr(SGD, "step", step_then_poison)
    code, out = run_main(tmp_path, "--steps", "5", "--device", "cpu", "--checkpoint-every", "1")
    assert code == 1
    assert "the weights became NaN or infinite by step 3 (first: down.0.conv1.weight)" in capsys.readouterr().err
    assert load_checkpoint(out / "checkpoint.npz").step == 2


def test_ctrl_c_saves_a_checkpoint(tmp_path):
    out = tmp_path / "interrupted"
    proc = subprocess.Popen([sys.executable, "-m", "cunet.train", *TINY, "--steps", "100000", "--device", "cpu",
                             "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((out / "log.jsonl").exists() and len(steps_logged(out)) >= 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted at step" in stdout
    assert load_checkpoint(out / "checkpoint.npz").step == len(steps_logged(out))


def test_cuda_without_gpu_is_a_clear_error():
    proc = subprocess.run([sys.executable, "-m", "cunet.train", "--device", "cuda", "--steps", "1"],
                          capture_output=True, text=True, env=dict(os.environ), timeout=120)
    assert proc.returncode == 2
    assert "--device cpu" in proc.stderr and "Traceback" not in proc.stderr


def test_invalid_tile_names_valid_sizes(capsys):
    assert train.main(["--tile", "570", "--depth", "5", "--device", "cpu", "--quiet"]) == 2
    assert "use 556 or 572" in capsys.readouterr().err


def test_math_option(tmp_path, capsys):
    """--math tf32 trains on opencl's tensor-core emulation; on the cpu it is a clear error."""
    assert train.main([*TINY, "--steps", "1", "--device", "cpu", "--math", "tf32", "--out", str(tmp_path / "x")]) == 2
    assert "the cpu device computes in FP32" in capsys.readouterr().err
    skip_without_pocl()
    code, out = run_main(tmp_path, "--steps", "1", "--device", "opencl", "--math", "tf32", name="tf32")
    assert code == 0 and load_checkpoint(out / "checkpoint.npz").step == 1
    assert "convolutions in emulated TF32" in capsys.readouterr().out


def test_trains_on_opencl(tmp_path):
    skip_without_pocl()
    code, out = run_main(tmp_path, "--steps", "2", "--device", "opencl")
    assert code == 0 and load_checkpoint(out / "checkpoint.npz").step == 2
