"""cunet.isbi against tests/isbi_reference.py, the transliteration of Fiji's Java written from
the Java alone: the same five scores, and the same value at every threshold, to 1e-6.

Three kinds of input: hand-made stacks where the per-slice and the stack methods disagree,
random smooth probability maps over synthetic cells (many shapes and thresholds), and real
network predictions, from a U-Net trained for a few dozen steps (on ISBI 2012 where
``../shared/data/isbi2012`` is present, else on the synthetic EM data).
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from cunet import isbi, train
from cunet.checkpoint import load_checkpoint
from cunet.data import load_dataset
from cunet.device import get_device
from cunet.predict import model_from_checkpoint, predict_probabilities

from helpers import ISBI_DIR
from isbi_reference import reference_curves, reference_scores

# The reference reports F-scores where cunet reports errors (1 - F) for pixel and Rand.
CURVE_NAMES = {"pixel_error": ("pixel_fscore", True), "rand_error": ("rand_fscore", True),
               "warping_error": ("warping_error", False), "v_rand": ("v_rand", False), "v_info": ("v_info", False)}


def assert_agree(probs, labels):
    ours = isbi.score_stack(probs, labels)
    theirs = reference_scores(probs, labels)
    for name in isbi.METRICS:
        assert ours.scores[name] == pytest.approx(theirs[name], abs=1e-6), name
    curves = reference_curves(probs, labels)
    for name, (theirs_name, complement) in CURVE_NAMES.items():
        expected = [1.0 - v if complement else v for v in curves[theirs_name]]
        np.testing.assert_allclose(ours.curves[name], expected, atol=1e-6, err_msg=name)
    return ours


def synthetic_labels(rng, size: int, cells: int) -> np.ndarray:
    """Voronoi-like cells separated by one-pixel membranes (1 = cell, 0 = membrane)."""
    seeds = rng.integers(0, size, (cells, 2))
    yy, xx = np.mgrid[:size, :size]
    distance = ((yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2)
    owner = distance.argmin(axis=-1)
    edge = np.zeros((size, size), bool)
    edge[:-1] |= owner[:-1] != owner[1:]
    edge[:, :-1] |= owner[:, :-1] != owner[:, 1:]
    return (~edge).astype(np.int64)


def noisy_prediction(rng, label: np.ndarray, blur: float, noise: float) -> np.ndarray:
    smooth = ndimage.gaussian_filter(label.astype(np.float64), blur)
    return np.clip(smooth + rng.normal(0, noise, label.shape), 0, 1).astype(np.float32)


def test_agree_where_one_threshold_cannot_suit_every_slice():
    label = np.ones((10, 10), np.int64)
    label[:, 5] = 0
    early = np.where(label == 1, 0.9, 0.35).astype(np.float32)
    late = np.where(label == 1, 0.3, 0.15).astype(np.float32)
    ours = assert_agree([early, late], [label, label])
    assert ours.scores["rand_error"] > 0  # each slice alone would score 0 at its own threshold


@pytest.mark.parametrize("seed", range(6))
def test_agree_on_random_stacks(seed):
    rng = np.random.default_rng(seed)
    size = int(rng.integers(12, 40))
    labels = [synthetic_labels(rng, size, int(rng.integers(2, 12))) for _ in range(int(rng.integers(1, 4)))]
    probs = [noisy_prediction(rng, l, blur=rng.uniform(0.5, 2.0), noise=rng.uniform(0.05, 0.4)) for l in labels]
    assert_agree(probs, labels)


def test_agree_on_degenerate_slices():
    """All-membrane truth, all-cell truth, a constant prediction: Fiji's edge cases, kept."""
    rng = np.random.default_rng(7)
    no_cells = np.zeros((12, 12), np.int64)
    one_cell = np.ones((12, 12), np.int64)
    cells = synthetic_labels(rng, 12, 4)
    flat = np.full((12, 12), 0.5, np.float32)
    assert_agree([flat, noisy_prediction(rng, cells, 1, 0.2)], [no_cells, cells])
    assert_agree([noisy_prediction(rng, one_cell, 1, 0.3)], [one_cell])
    assert_agree([flat], [cells])


@pytest.fixture(scope="module")
def real_predictions(tmp_path_factory):
    """Three held-out slices predicted by a U-Net trained for 60 steps, cropped to 160 x 160."""
    out = tmp_path_factory.mktemp("isbi-run") / "run"
    data = ["--data", str(ISBI_DIR)] if ISBI_DIR.exists() else ["--synthetic-images", "4"]
    args = [*data, "--tile", "140", "--base", "8", "--depth", "3", "--steps", "60", "--lr", "0.003",
            "--device", "cpu", "--quiet", "--out", str(out)]
    assert train.main(args) == 0
    model, _ = model_from_checkpoint(out / "checkpoint.npz", get_device("cpu"))
    split = load_checkpoint(out / "checkpoint.npz").meta["split"]
    if ISBI_DIR.exists():
        dataset = load_dataset(ISBI_DIR)
        images, labels = dataset.images, dataset.labels
    else:
        images, labels, _ = train.make_synthetic(4, size=512, seed=0)
    held_out = split["val"][:3]
    probs = [predict_probabilities(model, images[i], 140)[1][:160, :160] for i in held_out]
    return probs, [labels[i][:160, :160] for i in held_out]


def test_agree_on_real_predictions(real_predictions):
    probs, labels = real_predictions
    ours = assert_agree(probs, labels)
    assert 0 < ours.scores["rand_error"] < 1  # a model that learned something, not a degenerate case


def _float32_binarise(prob, threshold):
    return np.asarray(prob, np.float32) > np.float32(threshold)


def _greater_or_equal_binarise(prob, threshold):
    return np.asarray(prob, np.float64) >= threshold


_THIN_BORDERS = isbi.thin_borders


def _row_major_thin_borders(cells):
    return _THIN_BORDERS(cells.T).T  # floods in row-major order: forgets Fiji's [x][y] layout


# A pattern whose watershed dams move when the image is scanned row by row instead of
# column by column (found by search; 1 = cell).
SCAN_ORDER_CELLS = np.array([[0, 0, 0, 0, 1, 1], [0, 0, 0, 1, 0, 0], [0, 1, 1, 0, 0, 1],
                             [1, 0, 0, 0, 1, 1], [0, 0, 1, 1, 0, 1], [1, 0, 0, 1, 1, 1]])


def _on_the_threshold_grid():
    label = np.ones((8, 10), np.int64)
    label[:, 4] = 0  # truth membrane: column 4
    prob = np.where(label == 1, np.float32(0.9), np.float32(0.3)).astype(np.float32)
    prob[:, 5] = 0.5  # a second boundary column exactly on a threshold; 0.3f lies just above one
    return [prob], [label]


def _scan_order_sensitive():
    return [np.where(SCAN_ORDER_CELLS == 1, 0.9, 0.1).astype(np.float32)], [np.ones((6, 6), np.int64)]


PLANTED_BUGS = {
    "compares in float32": ("binarise", _float32_binarise, _on_the_threshold_grid),
    "uses >= for >": ("binarise", _greater_or_equal_binarise, _on_the_threshold_grid),
    "thins in row-major order": ("thin_borders", _row_major_thin_borders, _scan_order_sensitive),
}


@pytest.mark.parametrize("bug", sorted(PLANTED_BUGS))
def test_the_cross_check_catches_planted_bugs(bug, monkeypatch):
    """The comparison is a real check: each of these small departures from Fiji makes it fail."""
    name, replacement, case = PLANTED_BUGS[bug]
    probs, labels = case()
    assert_agree(probs, labels)
    monkeypatch.setattr(isbi, name, replacement)
    with pytest.raises(AssertionError):
        assert_agree(probs, labels)
