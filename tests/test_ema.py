"""The weight average (train.ema): its arithmetic, the swap for validation, and what training keeps."""

from __future__ import annotations

import dataclasses

import torch

from astroseg.models import build_model
from astroseg.params import LossParams, TrainParams
from astroseg.train.ema import WeightAverage


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))


def test_average_follows_the_decay_schedule_and_copies_integer_buffers():
    net = _net()
    average = WeightAverage(net, decay=0.9)
    start = net[0].weight.detach().clone()
    want = start.clone()
    for step in range(1, 30):
        with torch.no_grad():
            net[0].weight.add_(1.0)
            net[1].num_batches_tracked += 1
        average.update(net)
        decay = min(0.9, (1 + step) / (10 + step))
        want = decay * want + (1 - decay) * net[0].weight.detach()
    torch.testing.assert_close(average.state["0.weight"], want)
    assert average.state["1.num_batches_tracked"] == net[1].num_batches_tracked


def test_swapped_in_gives_the_average_then_restores_the_live_weights():
    net = _net()
    average = WeightAverage(net, decay=0.5)
    with torch.no_grad():
        net[0].weight.mul_(3)
    live = net[0].weight.detach().clone()
    average.update(net)
    with average.swapped_in(net):
        assert torch.equal(net[0].weight, average.state["0.weight"])
        assert not torch.equal(net[0].weight, live)
    assert torch.equal(net[0].weight, live)
    restored = WeightAverage(_net(), decay=0.5)
    restored.load_state_dict(average.state_dict())
    assert restored.steps == 1 and torch.equal(restored.state["0.weight"],
                                               average.state["0.weight"])


def test_training_with_ema_keeps_the_average_it_validated():
    from astroseg.data.dataset import Split
    from astroseg.train.loop import train_model
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(8, 32, 32, generator=gen).numpy()
    split = Split(images, (images > 0.6).astype("uint8"))
    config = {"name": "segformer", "image_size": [32, 32], "dims": [8, 16], "depths": [1, 1],
              "heads": [1, 2], "sr_ratios": [2, 1], "decoder_dim": 8, "refine_dim": 0}
    cfg = dataclasses.replace(TrainParams(), epochs=2, batch_size=4, progress=False,
                              device="cpu", precision="fp32", ema=0.9)
    results = []
    for ema in (0.9, 0.0):
        torch.manual_seed(1)
        model = build_model(config)
        results.append(train_model(model, split, split, dataclasses.replace(cfg, ema=ema),
                                   LossParams(), torch.device("cpu")))
    with_ema, without = results
    # Same steps, same live weights; the kept ones differ: the average's, not the last step's.
    assert [r.train_loss for r in with_ema.history] == [r.train_loss for r in without.history]
    assert any(not torch.equal(with_ema.best_state[k], without.best_state[k])
               for k in with_ema.best_state if with_ema.best_state[k].is_floating_point())
    assert [r.val_iou for r in with_ema.history] != [r.val_iou for r in without.history] or \
        [r.val_loss for r in with_ema.history] != [r.val_loss for r in without.history]
