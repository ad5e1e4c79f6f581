"""Streaming a split from the dataset file: the two-level shuffle, its batches, its scores."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from astroseg.data.dataset import CHUNK_ROWS, Split, write_splits
from astroseg.data.stream import block_order, sequential_blocks, streamed
from astroseg.errors import DataError
from astroseg.models import build_model
from astroseg.params import LossParams, TrainParams
from astroseg.scoring.evaluation import evaluate, evaluate_stream
from astroseg.train.batches import Streamed
from astroseg.train.distributed import Dist
from astroseg.train.loop import train_model

N = 75   # four whole HDF5 chunks of 16 and a partial one


def _dataset(tmp_path, n=N, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.random((n, 16, 16), dtype=np.float32)
    images[:, 0, 0] = np.arange(n)      # each image says which row it is
    masks = (rng.random((n, 16, 16)) > 0.6).astype(np.uint8)
    path = tmp_path / "d.h5"
    write_splits(path, [("train", Split(images, masks)), ("val", Split(images[:20], masks[:20]))],
                 {})
    return path, images, masks


@pytest.mark.parametrize("n", [1, 15, 16, 17, 75, 1000])
def test_block_order_visits_every_row_once_in_whole_blocks(n):
    buffers = block_order(n, 16, 48, seed=5, epoch=1)
    rows = np.concatenate(buffers)
    assert np.array_equal(np.sort(rows), np.arange(n))
    for buf in buffers:   # a buffer is at most three whole blocks, shuffled together
        blocks = np.unique(buf // 16)
        assert len(blocks) <= 3
        assert np.array_equal(np.sort(buf), np.concatenate(
            [np.arange(b * 16, min(n, b * 16 + 16)) for b in blocks]))
    again = np.concatenate(block_order(n, 16, 48, seed=5, epoch=1))
    assert np.array_equal(rows, again)
    if n > 16:
        assert not np.array_equal(rows, np.concatenate(block_order(n, 16, 48, seed=5, epoch=2)))
        assert not np.array_equal(rows, np.concatenate(block_order(n, 16, 48, seed=6, epoch=1)))


def _collect(source, order, position, batch, d):
    xs, ys = zip(*source.batches(1, order, position, batch, d))
    return [x[:, 0, 0, 0].long() for x in xs], ys


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_batches_follow_the_order_from_any_position(tmp_path, workers):
    path, images, masks = _dataset(tmp_path)
    s = streamed(path, "train", max_memory_gb=1e-5, workers=workers)
    assert s.block_rows == CHUNK_ROWS and s.buffer_rows == CHUNK_ROWS
    source = Streamed(s, seed=3, pin=False)
    order = source.order(1, torch.Generator())
    assert torch.equal(order.sort().values, torch.arange(N))
    for position in (0, 16, 40):
        ids, ys = _collect(source, order, position, 8, Dist())
        assert [len(i) for i in ids[:-1]] == [8] * (len(ids) - 1)
        assert torch.equal(torch.cat(ids), order[position:])
        assert torch.equal(torch.cat(ys)[:, 0], torch.from_numpy(masks[order[position:].numpy()]))


def test_two_ranks_stream_their_shares_of_each_global_batch(tmp_path):
    path, _, _ = _dataset(tmp_path)
    source = Streamed(streamed(path, "train", 1e-5, workers=0), seed=3, pin=False)
    order = source.order(1, torch.Generator())
    shares = [_collect(source, order, 0, 8, Dist(rank=r, world=2))[0] for r in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == 10
    for step, (a, b) in enumerate(zip(*shares)):   # rank 0 the first half, rank 1 the rest
        assert torch.equal(torch.cat([a, b]), order[step * 8:step * 8 + 8])


@pytest.mark.fault("hdf5")
def test_a_nan_block_is_named(tmp_path):
    path, _, _ = _dataset(tmp_path)
    with h5py.File(path, "r+") as f:
        f["train/images"][33, 2, 2] = np.nan
    source = Streamed(streamed(path, "train", 1e-5, workers=0), seed=3, pin=False)
    with pytest.raises(DataError, match=r"train/images rows 32-47 hold NaN"):
        _collect(source, source.order(1, torch.Generator()), 0, 8, Dist())


def _model():
    torch.manual_seed(0)
    return build_model({"name": "tiny_segformer", "image_size": [16, 16], "embed_dim": 8,
                        "depth": 1, "num_heads": 2, "mlp_ratio": 2.0, "patch_size": 4,
                        "overlap": 0.5})


def test_streamed_evaluation_scores_exactly_as_in_memory(tmp_path):
    path, images, masks = _dataset(tmp_path)
    model, loss = _model(), LossParams()
    whole = evaluate(model, Split(images, masks), loss, torch.device("cpu"), 8, keep=20)
    s = streamed(path, "train", 1e-5, workers=0)
    part = evaluate_stream(model, sequential_blocks(s, 0, N), loss, torch.device("cpu"), 8, keep=20)
    assert np.array_equal(whole.counts, part.counts)
    assert np.allclose(whole.loss, part.loss, rtol=1e-6)
    assert np.array_equal(whole.labels, part.labels) and len(part.labels) == 20


def test_training_from_a_streamed_split_runs_and_repeats_bit_for_bit(tmp_path):
    path, _, _ = _dataset(tmp_path)
    cfg = TrainParams(epochs=2, batch_size=8, progress=False, max_memory_gb=1e-5)
    runs = []
    for workers in (0, 2):   # the order does not depend on the loader's workers
        train = streamed(path, "train", cfg.max_memory_gb, workers)
        val = streamed(path, "val", cfg.max_memory_gb, workers)
        model = _model()
        result = train_model(model, train, val, cfg, LossParams(), torch.device("cpu"))
        runs.append((result.history, model.state_dict()))
    (h1, w1), (h2, w2) = runs
    assert h1 == h2 and len(h1) == 2
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
