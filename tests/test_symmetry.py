"""Flips/rotations: augmentation keeps pixel values, and test-time averaging is equivariant."""

from __future__ import annotations

import h5py
import numpy as np
import torch

from astroseg.cli import main as cli_main
from astroseg.data.dataset import load_split
from astroseg.models import build_model
from astroseg.infer.predict import load_model, predict
from astroseg.models.symmetry import (N_OPS, apply_ops, augment, averaged_logits, inverse,
                                      transform)


def test_transforms_are_the_eight_distinct_symmetries_and_invert():
    x = torch.arange(12.0).reshape(1, 1, 3, 4)
    seen = {(tuple(transform(x, op).shape), tuple(transform(x, op).flatten().tolist()))
            for op in range(N_OPS)}
    assert len(seen) == N_OPS
    for op in range(N_OPS):
        assert torch.equal(inverse(transform(x, op), op), x)


def test_augmentation_moves_pixels_together_and_keeps_their_values():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 8, 8, generator=gen)
    y = (x > 0.5).to(torch.uint8)
    ax, ay = augment(x, y, gen)
    assert torch.equal(ay, (ax > 0.5).to(torch.uint8))          # same transform on both
    assert torch.equal(ax.flatten(1).sort(1).values, x.flatten(1).sort(1).values)  # no resampling
    assert not torch.equal(ax, x)
    rect = torch.rand(8, 1, 4, 6, generator=gen)                # non-square: shape kept
    assert augment(rect, rect, gen)[0].shape == rect.shape


def test_batched_symmetries_equal_each_sample_transformed_alone():
    gen = torch.Generator().manual_seed(1)
    for shape, ops in (((8, 1, 5, 5), torch.arange(8)), ((4, 2, 3, 4), torch.tensor([0, 2, 4, 6]))):
        x = torch.rand(shape, generator=gen)
        out = apply_ops(x, ops)
        for i, op in enumerate(ops.tolist()):
            assert torch.equal(out[i], transform(x[i], op)), (shape, op)


def test_averaged_logits_are_equivariant_though_the_model_is_not():
    torch.manual_seed(0)
    model = build_model({"name": "segformer", "dims": [8, 16], "depths": [1, 1], "heads": [1, 2],
                         "sr_ratios": [2, 1], "decoder_dim": 16, "refine_dim": 4}).eval()
    x = torch.rand(2, 1, 32, 64)                                 # non-square too
    with torch.no_grad():
        plain = model(x)
        tta = averaged_logits(model, x)
        for op in (1, 4, 6):
            assert not torch.allclose(model(transform(x, op)), transform(plain, op), atol=1e-4)
            assert torch.allclose(averaged_logits(model, transform(x, op)), transform(tta, op),
                                  atol=1e-5)


def test_tta_reaches_predict_and_its_cli(pipeline_outputs, tmp_path):
    model_path = pipeline_outputs / "models/model.pt"
    images = load_split(pipeline_outputs / "data/dataset.h5", "test").images
    model = load_model(model_path, "cpu")
    plain, _ = predict(model, images)
    prob, mask = predict(model, images, tta=True)
    with torch.no_grad():
        expected = torch.sigmoid(averaged_logits(model, torch.from_numpy(images)[:, None]))[:, 0]
    np.testing.assert_allclose(prob, expected.numpy(), atol=1e-6)
    assert not np.allclose(prob, plain, atol=1e-4)
    src, out = tmp_path / "in.h5", tmp_path / "out.h5"
    with h5py.File(src, "w") as f:
        f["images"] = images
    assert cli_main(["predict", str(src), "-o", str(out), "--model", str(model_path),
                     "--device", "cpu", "--tta"]) == 0
    with h5py.File(out, "r") as f:
        np.testing.assert_allclose(f["probabilities"][:], prob, atol=1e-6)
        assert np.array_equal(f["labels"][:], mask) and bool(f.attrs["tta"])
