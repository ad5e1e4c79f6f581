"""Pixels outside `valid` count in neither the loss (nor its gradients) nor the metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from astroseg.data.dataset import IGNORE, Split, load_split, write_splits
from astroseg.data.stream import sequential_blocks, streamed
from astroseg.models import build_model
from astroseg.params import LossParams
from astroseg.scoring.calibration import nll
from astroseg.scoring.evaluation import as_tensors, evaluate_stream, evaluate_tensors
from astroseg.scoring.losses import segmentation_loss
from astroseg.scoring.science import Science
from conftest import TINY_MODEL

LOSS = LossParams()


def _case(channels: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, channels, 32, 32, generator=g)
    target = torch.randint(0, max(2, channels), (4, 1, 32, 32), generator=g).to(torch.uint8)
    valid = torch.rand(4, 1, 32, 32, generator=g) > 0.3
    return logits, target, valid


def _loss_and_grad(logits: torch.Tensor, target: torch.Tensor):
    logits = logits.clone().requires_grad_(True)
    loss = segmentation_loss(logits, target, LOSS)
    loss.sum().backward()
    return loss.detach(), logits.grad


@pytest.mark.parametrize("channels", [1, 3])
def test_pixels_outside_valid_change_neither_the_loss_nor_its_gradients(channels):
    logits, target, valid = _case(channels)
    ignored = torch.where(valid, target, IGNORE)
    loss, grad = _loss_and_grad(logits, ignored)
    # Other logits and other (even out-of-range) mask values under the invalid pixels.
    noisy_logits = torch.where(valid, logits, 50 * torch.randn_like(logits))
    loss2, grad2 = _loss_and_grad(noisy_logits, ignored)
    assert torch.equal(loss, loss2)
    assert torch.equal(grad * valid, grad2 * valid)
    assert not (grad * ~valid).any() and not (grad2 * ~valid).any()
    # The invalid pixels are left out, not counted as background: the loss differs from the
    # one where they are background.
    assert not torch.allclose(loss, segmentation_loss(logits, torch.where(valid, target, 0), LOSS))
    assert nll(logits, ignored, 1.3) == nll(noisy_logits, ignored, 1.3)


def test_no_invalid_pixel_gives_the_plain_means_bit_for_bit():
    logits, target, _ = _case(1)
    prob = torch.sigmoid(logits)
    dice = 1 - (2 * (prob * target).flatten(2).sum(2) + 1e-6) / \
        (prob.flatten(2).sum(2) + target.flatten(2).sum(2) + 1e-6)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, target.float(), reduction="none").flatten(1).mean(1)
    plain = LossParams(boundary_weight=0.0)   # Dice + BCE alone, as before the edge term
    assert torch.equal(segmentation_loss(logits, target, plain),
                       plain.dice_weight * dice.mean(1) + plain.bce_weight * bce)


def _split(valid: np.ndarray, seed: int) -> Split:
    rng = np.random.default_rng(0)
    images = rng.random((6, 32, 32), dtype=np.float32)
    masks = (images > 0.6).astype(np.uint8)
    # Different mask values under the invalid pixels (the images stay: the model sees them).
    noise = np.random.default_rng(seed).integers(0, 2, masks.shape).astype(np.uint8)
    masks = np.where(valid.astype(bool), masks, noise)
    return Split(images, masks, {}, valid)


def test_metrics_and_science_skip_pixels_outside_valid(tmp_path):
    torch.manual_seed(0)
    model = build_model({**TINY_MODEL, "image_size": [32, 32], "dropout": 0.2}).eval()
    valid = (np.random.default_rng(1).random((6, 32, 32)) > 0.4).astype(np.uint8)
    results = []
    for seed in (1, 2):
        split = _split(valid, seed)
        science = Science(mc_samples=2)
        torch.manual_seed(0)
        result = evaluate_tensors(model, *as_tensors(split), LOSS, torch.device("cpu"), 4,
                                  science=science)
        results.append((result, science))
        # The same through the streamed reader, which reads the file's valid maps itself.
        path = tmp_path / f"d{seed}.h5"
        write_splits(path, [("test", split)], {"source": "fits"})
        assert np.array_equal(load_split(path, "test").valid, valid)
        blocks = sequential_blocks(streamed(path, "test", 1.0, 0), 0, 6)
        streamed_result = evaluate_stream(model, blocks, LOSS, torch.device("cpu"), 4)
        assert np.array_equal(streamed_result.counts, result.counts)
        assert np.array_equal(streamed_result.loss, result.loss)
    (a, sa), (b, sb) = results
    assert np.array_equal(a.counts, b.counts) and np.array_equal(a.loss, b.loss)
    assert a.counts[..., :].sum() <= valid.sum()     # TP + FP + FN only on valid pixels
    assert np.array_equal(sa.calibrated.positive, sb.calibrated.positive)
    assert sa.calibrated.positive.sum() + sa.calibrated.negative.sum() == valid.sum()
    assert np.array_equal(sa.pixels, sb.pixels) and sa.pixels.sum() == valid.sum()
    assert sa.objects.summary() == sb.objects.summary()


def test_figures_take_examples_whose_truth_has_unmeasured_pixels(tmp_path):
    from astroseg.figures.plotting import plot_predictions, plot_uncertainty
    masks = np.zeros((1, 16, 16), np.uint8)
    masks[0, :, :4] = IGNORE                      # a chip gap, predicted as source
    labels = np.zeros_like(masks)
    labels[0, :, :4] = 1
    images = np.random.default_rng(0).random((1, 16, 16), dtype=np.float32)
    prob = labels.astype(np.float32)
    plot_predictions(images, masks, prob, labels, tmp_path / "p.png", "magma", 30)
    plot_uncertainty(images, masks, labels, prob, prob, tmp_path / "u.png", "magma", 30)
    assert (tmp_path / "p.png").stat().st_size and (tmp_path / "u.png").stat().st_size
