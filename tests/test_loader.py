import pytest
import torch
import torch.nn.functional as F

from freebies.data.loader import (
    channel_stats,
    epoch_order,
    group_steps,
    grouped_batches,
    normalize,
    train_batches,
)
from freebies.tricks.geometric import random_crop, random_flip


def reference_crop(img: torch.Tensor, pad: int, dy: int, dx: int) -> torch.Tensor:
    h, w = img.shape[-2:]
    return F.pad(img, (pad, pad, pad, pad))[:, dy : dy + h, dx : dx + w]


@pytest.mark.parametrize("shape", [(1, 1, 28, 28), (5, 3, 9, 13), (7, 1, 28, 20)])
def test_crop_is_a_shifted_window_of_the_padded_image(shape):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 256, shape, dtype=torch.uint8)
    out = random_crop(x, 3, g)
    assert out.shape == x.shape and out.dtype == x.dtype
    for img, got in zip(x, out, strict=True):
        matches = [
            (dy, dx)
            for dy in range(7)
            for dx in range(7)
            if torch.equal(reference_crop(img, 3, dy, dx), got)
        ]
        assert matches, "each output must be one window of the zero-padded input"


def test_crop_offsets_cover_the_range_uniformly():
    g = torch.Generator().manual_seed(1)
    x = torch.zeros(4000, 1, 5, 5, dtype=torch.uint8)
    x[:, :, 2, 2] = 1  # a single lit pixel reveals the shift
    out = random_crop(x, 2, g)
    pos = out[:, 0].flatten(1).argmax(1)
    counts = torch.bincount(pos, minlength=25).float()
    assert (counts > 0).all()
    assert counts.std() / counts.mean() < 0.2


def test_pad_zero_is_identity():
    x = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    assert random_crop(x, 0) is x


def test_flip_flips_about_half_independently():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (2001, 1, 4, 6), dtype=torch.uint8)
    out = random_flip(x, g)
    same = (out == x).flatten(1).all(1)
    flipped = (out == x.flip(3)).flatten(1).all(1)
    assert (same | flipped).all()
    assert 0.45 < flipped.float().mean() < 0.55


def test_normalize_matches_formula_and_layout():
    x = torch.randint(0, 256, (3, 2, 5, 7), dtype=torch.uint8)
    mean, std = torch.tensor([10.0, 20.0]), torch.tensor([2.0, 4.0])
    out = normalize(x, mean, std, channels_last=True)
    assert out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out[:, 1], (x[:, 1].float() - 20) / 4)


def test_channel_stats():
    x = torch.randint(0, 256, (10, 3, 4, 4), dtype=torch.uint8)
    mean, std = channel_stats(x)
    assert mean.dtype == std.dtype == torch.float64
    torch.testing.assert_close(mean, x.double().mean((0, 2, 3)))
    torch.testing.assert_close(std, x.double().transpose(0, 1).reshape(3, -1).std(1))


def test_epoch_order_is_seeded_per_epoch():
    assert torch.equal(epoch_order(100, 0, 3), epoch_order(100, 0, 3))
    assert not torch.equal(epoch_order(100, 0, 3), epoch_order(100, 0, 4))
    assert sorted(epoch_order(100, 1, 0).tolist()) == list(range(100))


def test_rank_shards_partition_each_global_batch():
    x = torch.arange(103).view(103, 1, 1, 1)
    y = torch.arange(103)
    single = list(train_batches(x, y, 20, seed=5, epoch=2))
    assert len(single) == 5  # the incomplete last batch is dropped
    ranks = [list(train_batches(x, y, 20, seed=5, epoch=2, rank=r, world=2)) for r in range(2)]
    for step, (idx, _, yb) in enumerate(single):
        assert torch.equal(torch.cat([ranks[0][step][2], ranks[1][step][2]]), yb)
        assert torch.equal(y[idx], yb)  # the indices name the images that came back


def test_start_step_skips_exactly():
    x, y = torch.zeros(50, 1, 2, 2), torch.arange(50)
    full = [yb for _, _, yb in train_batches(x, y, 8, seed=0, epoch=0)]
    tail = [yb for _, _, yb in train_batches(x, y, 8, seed=0, epoch=0, start_step=4)]
    assert all(torch.equal(a, b) for a, b in zip(full[4:], tail, strict=True))


def test_grouped_batches_hold_one_group_each_and_equal_plain_batches_for_one_group():
    order = epoch_order(50, seed=3, epoch=1)
    one = grouped_batches(order, torch.zeros(50, dtype=torch.int64), 8)
    assert torch.equal(one, order[:48].view(6, 8))  # today's batches when all share a shape
    groups = (torch.arange(50) % 3 == 0).long()  # 17 portrait, 33 landscape
    batches = grouped_batches(order, groups, 8)
    assert batches.shape == (group_steps(groups, 8), 8) == (2 + 4, 8)
    assert all(len(set(groups[b].tolist())) == 1 for b in batches)
    assert len(set(batches.flatten().tolist())) == batches.numel()  # no image twice
    # a batch is emitted when its bucket fills: the batches come in order of their last image
    where = {i: k for k, i in enumerate(order.tolist())}
    last = [max(where[i] for i in b.tolist()) for b in batches]
    assert last == sorted(last)


def test_train_batches_with_groups_split_each_global_batch_across_ranks():
    x, y = torch.arange(40).view(40, 1), torch.arange(40)
    groups = (torch.arange(40) >= 25).long()
    full = [i for i, _, _ in train_batches(x, y, 4, seed=0, epoch=2, groups=groups)]
    ranks = [
        [i for i, _, _ in train_batches(x, y, 4, seed=0, epoch=2, rank=r, world=2, groups=groups)]
        for r in range(2)
    ]
    assert len(full) == group_steps(groups, 4) == 6 + 3
    for k, batch in enumerate(full):
        assert torch.equal(torch.cat([ranks[0][k], ranks[1][k]]), batch)
    resumed = [
        i for i, _, _ in train_batches(x, y, 4, seed=0, epoch=2, start_step=5, groups=groups)
    ]
    assert all(torch.equal(a, b) for a, b in zip(resumed, full[5:], strict=True))
