"""Training batches: the epoch's order, augmentation, and mixing of scans, labels and lesion maps."""

import numpy as np
import pytest
import torch

from busi.batches import TrainingBatches, draw_mix
from busi.model import to_model_tensor
from busi.train import train_one_epoch


def _frozen_batch(side: int, seed: int, **mixing):
    """Four flat grey scans (0, 80, 160, 240) through a tiny model that does not learn, as one
    mixed batch: what the model saw, the plain inputs, the batch's loss, and the loss expected
    for a mix with ``share`` of each row's own label and the rest of its ``partner``'s."""
    images = np.stack([np.full((side, side), value, np.uint8) for value in (0, 80, 160, 240)])
    labels = torch.tensor([0, 1, 2, 0])
    model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 3))
    seen = []
    model.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].clone()))
    criterion = torch.nn.CrossEntropyLoss()
    frozen = torch.optim.SGD(model.parameters(), lr=0.0)
    batches = TrainingBatches(images, labels.numpy(), np.arange(4), 4, rng=np.random.default_rng(seed),
                              device=torch.device("cpu"), to_tensor=to_model_tensor, **mixing)
    [event] = train_one_epoch(model, batches, frozen, criterion=criterion, epoch=1)
    replay = np.random.default_rng(seed)
    order = replay.permutation(np.arange(4))  # the epoch's order comes first, then the batch's mix
    labels = labels[order]

    def expected_loss(share: float, partner) -> float:
        with torch.no_grad():
            outputs = model(seen[0])
        return (share * criterion(outputs, labels) + (1 - share) * criterion(outputs, labels[partner])).item()

    return seen[0], to_model_tensor(torch.from_numpy(images[order])), event.loss, expected_loss, replay


def test_mixup_trains_on_blends_of_two_scans_and_of_their_labels():
    seen, plain, loss, expected_loss, replay = _frozen_batch(8, 7, mixup=0.4)
    share, partner = replay.beta(0.4, 0.4), replay.permutation(4)
    assert 0 < share < 1 and not (partner == np.arange(4)).all()
    torch.testing.assert_close(seen, share * plain + (1 - share) * plain[partner])
    assert loss == pytest.approx(expected_loss(share, partner), rel=1e-5)


def test_cutmix_pastes_a_box_of_the_partner_scan_and_shares_the_labels_by_area():
    seen, plain, loss, expected_loss, replay = _frozen_batch(16, 5, cutmix=1.0)
    mix = draw_mix(replay, 4, 16, 0.0, 1.0, torch.device("cpu"))
    top, left, bottom, right = mix.box
    inside = torch.zeros((16, 16), dtype=torch.bool)
    inside[top:bottom, left:right] = True
    assert 0 < inside.sum() < 256 and mix.share == pytest.approx(1 - inside.float().mean().item())
    own, pasted = plain[:, 0, 0, 0], plain[mix.partner, 0, 0, 0]
    for row in range(4):
        assert (seen[row, 0][inside] == pasted[row]).all() and (seen[row, 0][~inside] == own[row]).all()
    assert loss == pytest.approx(expected_loss(mix.share, mix.partner), rel=1e-5)


def test_with_mixup_and_cutmix_both_on_batches_use_each_about_half_the_time():
    rng = np.random.default_rng(0)
    boxes = [draw_mix(rng, 8, 32, 0.4, 1.0, torch.device("cpu")).box is not None for _ in range(400)]
    assert 160 < sum(boxes) < 240
    assert draw_mix(rng, 8, 32, 0.0, 0.0, torch.device("cpu")) is None


def test_an_epoch_visits_every_training_row_once_or_draws_them_by_weight():
    images = np.arange(10, dtype=np.uint8).repeat(16).reshape(10, 4, 4)
    labels, rows = np.arange(10) % 3, np.array([1, 2, 3, 5, 8, 9])
    batches = TrainingBatches(images, labels, rows, 4, rng=np.random.default_rng(0), device=torch.device("cpu"),
                              to_tensor=lambda x: x.float())
    epoch = list(batches)
    assert len(batches) == len(epoch) == 2 and [len(batch) for batch in epoch] == [3, 3]
    seen = np.concatenate([batch.images[:, 0, 0].numpy() for batch in epoch]).astype(int)
    assert sorted(seen) == rows.tolist()  # the scan's own pixels: rows, not positions
    assert np.concatenate([batch.targets.numpy() for batch in epoch]).tolist() == (seen % 3).tolist()
    only_nine = TrainingBatches(images, labels, rows, 6, rng=np.random.default_rng(0), device=torch.device("cpu"),
                                to_tensor=lambda x: x.float(), sample_weights=np.array([0, 0, 0, 0, 0, 1.0]))
    assert next(iter(only_nine)).images[:, 0, 0].tolist() == [9.0] * 6


def test_lesion_maps_move_and_mix_with_their_scans():
    images = np.zeros((4, 8, 8), np.uint8)
    masks = np.zeros((4, 8, 8), np.uint8)
    masks[:, :, :4] = 255  # the left half is lesion
    known = np.array([True, True, False, True])
    batches = TrainingBatches(images, np.zeros(4, int), np.arange(4), 4, rng=np.random.default_rng(3),
                              device=torch.device("cpu"), to_tensor=to_model_tensor, augment="flip", mixup=0.4, masks=masks,
                              mask_known=known)
    (batch,) = list(batches)
    replay = np.random.default_rng(3)
    order = replay.permutation(4)
    flips = [replay.random() < 0.5 for _ in range(4)]
    share, partner = replay.beta(0.4, 0.4), replay.permutation(4)
    moved = np.stack([masks[row][:, ::-1] if flip else masks[row] for row, flip in zip(order, flips)]).astype(np.float32)
    np.testing.assert_allclose(batch.masks.numpy(), share * moved + (1 - share) * moved[partner], rtol=1e-6)
    assert batch.mask_known.tolist() == (known[order] & known[order][partner]).astype(float).tolist()
