import torch
from torch import nn

from freebies.evaluate import calibration_sums, ece_from_sums, evaluate


def test_ece_matches_the_written_out_formula():
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.55, 0.45]])
    y = torch.tensor([0, 1, 1, 0])
    # confidences 0.9, 0.6, 0.8, 0.55 -> 15 bins of width 1/15:
    # 0.9 -> bin 13, 0.6 -> bin 8, 0.8 -> bin 11, 0.55 -> bin 8
    # bin 8: conf mean (0.6 + 0.55)/2, acc 1/2; bin 11: 0.8 vs 1; bin 13: 0.9 vs 1
    expected = (2 * abs(0.5 - 0.575) + abs(1 - 0.8) + abs(1 - 0.9)) / 4
    assert abs(ece_from_sums(calibration_sums(probs, y)) - expected) < 1e-6


class FixedLogits(nn.Module):
    """Logits read from the first pixel, so accuracy is known in advance."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x[:, 0, 0, 0]
        return torch.stack([v, -v], 1)


def test_accuracy_and_nll_are_percent_and_mean():
    x = torch.zeros(6, 1, 2, 2, dtype=torch.uint8)
    x[:3, 0, 0, 0] = 200  # predicted class 0
    y = torch.tensor([0, 0, 1, 1, 1, 0])  # 2 + 2 of 6 right
    mean, std = torch.tensor([100.0]), torch.tensor([100.0])
    got = evaluate(FixedLogits(), x, y, mean, std, batch_size=4)
    assert abs(got["acc"] - 100 * 4 / 6) < 1e-9
    logits = torch.stack(
        [(x[:, 0, 0, 0].float() - 100) / 100, -(x[:, 0, 0, 0].float() - 100) / 100], 1
    )
    nll = nn.functional.cross_entropy(logits, y).item()
    assert abs(got["nll"] - nll) < 1e-6


def test_tta_averages_image_and_flip():
    x = torch.zeros(2, 1, 1, 2, dtype=torch.uint8)
    x[0, 0, 0, 0] = 255  # the flip moves the pixel away from position (0, 0)
    y = torch.tensor([0, 1])
    mean, std = torch.tensor([0.0]), torch.tensor([255.0])
    plain = evaluate(FixedLogits(), x, y, mean, std)
    tta = evaluate(FixedLogits(), x, y, mean, std, tta=True)
    p0 = torch.tensor([1.0, -1.0]).softmax(0)[0]
    expected = -((p0 + 0.5) / 2).log() - torch.tensor(0.5).log()
    assert abs(tta["nll"] - expected.item() / 2) < 1e-6
    assert plain["nll"] != tta["nll"]
