"""BatchStream: batches drawn ahead by worker processes equal the ones drawn in line."""
import numpy as np
import pytest

from cunet.data import BatchStream, TrainingSampler, make_synthetic


def small_sampler(seed=7):
    images, labels, instances = make_synthetic(2, size=64, seed=1)
    return TrainingSampler(images, labels, in_size=60, out_size=28, seed=seed, instances=instances)


def test_workers_deliver_the_same_batches_in_step_order():
    sampler = small_sampler()
    with BatchStream(sampler, batch_size=2, first_step=3, workers=0) as inline:
        expected = [inline.next() for _ in range(5)]
    with BatchStream(sampler, batch_size=2, first_step=3, workers=2) as ahead:
        got = [ahead.next() for _ in range(5)]
        assert ahead.next_step == 8
    for want, have in zip(expected, got):
        for a, b in zip(want, have):
            np.testing.assert_array_equal(a, b)
    # step s of batch size B is samples s*B .. s*B+B-1
    np.testing.assert_array_equal(expected[0][0], sampler.batch_at(6, 2)[0])


def test_a_worker_error_reaches_the_training_loop():
    sampler = small_sampler()
    sampler.images = []  # every draw fails (integers(0) raises) in the worker
    with BatchStream(sampler, batch_size=1, workers=1) as stream:
        with pytest.raises(ValueError):
            stream.next()


def test_negative_worker_count_is_refused():
    with pytest.raises(ValueError, match="workers must be >= 0"):
        BatchStream(small_sampler(), 1, workers=-1)
