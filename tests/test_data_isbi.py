"""The real ISBI 2012 training data, when it is present (never part of the repo).

Path: $CUNET_ISBI, else ../shared/data/isbi2012 next to the repository root."""

import numpy as np
import pytest
import tifffile

from cunet.data.loaders import load_dataset
from cunet.data.weights import weight_map

from helpers import ISBI_DIR

ISBI = ISBI_DIR
pytestmark = pytest.mark.skipif(not (ISBI / "train-volume.tif").is_file(),
                                reason=f"ISBI 2012 data not found at {ISBI} (set CUNET_ISBI to its folder)")


@pytest.fixture(scope="module")
def isbi():
    return load_dataset(ISBI)


def test_isbi_loads_as_25_slices_of_512(isbi):
    # The challenge's training volume has 30 slices; this copy holds slices 0-24 (its
    # README: 5 are held back on purpose).
    assert isbi.images.shape == isbi.labels.shape == (25, 512, 512)
    assert isbi.images.dtype == np.float32 and isbi.labels.dtype == np.uint8
    assert set(np.unique(isbi.labels)) == {0, 1}
    assert 0.6 < isbi.labels.mean() < 0.9  # mostly cell interior (class 1)


def test_isbi_values_match_the_raw_file(isbi):
    raw = tifffile.imread(ISBI / "train-volume.tif")
    np.testing.assert_array_equal(np.round(isbi.images[7] * 255), raw[7])
    raw_labels = tifffile.imread(ISBI / "train-labels.tif")
    np.testing.assert_array_equal(isbi.labels[7], raw_labels[7] == 255)


def test_isbi_weight_map_is_finite_and_weights_gaps(isbi):
    w = weight_map(isbi.labels[0])
    assert np.isfinite(w).all() and w.min() > 0
    assert w[isbi.labels[0] == 0].mean() > 2 * w[isbi.labels[0] == 1].mean()
