"""Cutout and Random Erasing against formulas written out here, plus identity, shapes, errors."""

import pytest
import torch

from freebies.tricks.erasing import cutout, random_erasing

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


def gen(seed: int, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def cover_prob(size: int, length: int) -> torch.Tensor:
    """P(index r is inside the clipped square) for a centre uniform over range(size),
    by enumerating every centre: the square covers c - length // 2 .. c - length // 2 + length - 1.
    """
    p = torch.zeros(size, dtype=torch.float64)
    for c in range(size):
        lo = max(c - length // 2, 0)
        hi = min(c - length // 2 + length, size)
        p[lo:hi] += 1 / size
    return p


def boxes(erased: torch.Tensor) -> list[tuple[int, int] | None]:
    """(height, width) of the erased rectangle of each (H, W) mask; asserts it is a rectangle."""
    out = []
    for m in erased:
        if not m.any():
            out.append(None)
            continue
        ys, xs = m.nonzero(as_tuple=True)
        hh, ww = int(ys.max() - ys.min()) + 1, int(xs.max() - xs.min()) + 1
        assert len(ys) == hh * ww, "erased pixels do not form a filled rectangle"
        out.append((hh, ww))
    return out


# ---------------------------------------------------------------- reference formulas


def test_cutout_mean_erased_fraction_matches_enumeration_28x28():
    x = torch.ones(4000, 1, 28, 28)
    erased = cutout(x, length=16, generator=gen(0))[:, 0] == 0
    p = cover_prob(28, 16)
    # Rows and columns of the centre are independent: E[area] = E[rows] * E[cols].
    expected = (p.sum() * p.sum() / (28 * 28)).item()
    got = erased.float().mean(dim=(1, 2))
    assert got.mean().item() == pytest.approx(expected, abs=0.006)
    # Every hole is a rectangle whose sides are possible clipped lengths (8 .. 16 here).
    sides = {min(c - 8 + 16, 28) - max(c - 8, 0) for c in range(28)}
    for hw in boxes(erased[:300]):
        assert hw is not None and hw[0] in sides and hw[1] in sides


def test_cutout_per_pixel_rate_matches_enumeration_non_square():
    h, w, length = 28, 20, 9
    x = torch.ones(4000, 1, h, w)
    rate = (cutout(x, length, generator=gen(1))[:, 0] == 0).double().mean(0)
    expected = cover_prob(h, length)[:, None] * cover_prob(w, length)[None, :]
    assert (rate - expected).abs().max().item() < 0.04


def test_cutout_holes_are_independent_and_overlap_as_a_union():
    h, w, length, holes = 20, 28, 8, 3
    x = torch.ones(3000, 1, h, w)
    erased = cutout(x, length, holes=holes, generator=gen(2))[:, 0] == 0
    one = cover_prob(h, length)[:, None] * cover_prob(w, length)[None, :]
    expected = (1 - (1 - one) ** holes).mean().item()
    assert erased.double().mean().item() == pytest.approx(expected, abs=0.006)


def test_cutout_same_square_in_every_channel_rest_untouched():
    x = torch.randn(7, 3, 28, 20, generator=gen(3)) + 10  # no zeros by chance
    out = cutout(x, 6, generator=gen(4))
    erased = out == 0
    assert (erased == erased[:, :1]).all()
    assert torch.equal(out[~erased], x[~erased])


def test_random_erasing_erases_a_share_p_of_images():
    p = 0.3
    x = torch.ones(4000, 1, 28, 20)
    out = random_erasing(x, p, value=-5.0, generator=gen(5))
    erased = (out == -5.0).flatten(1).any(1)
    assert erased.double().mean().item() == pytest.approx(p, abs=0.03)
    assert ((out == 1) | (out == -5)).all()


@pytest.mark.parametrize("h,w", [(64, 48), (40, 72)])
def test_random_erasing_area_and_aspect_within_ranges(h, w):
    scale, ratio = (0.1, 0.2), (1.5, 3.0)  # asymmetric: a height/width swap fails
    x = torch.ones(400, 1, h, w)
    out = random_erasing(x, 1.0, scale=scale, ratio=ratio, value="mean", generator=gen(6))
    found = boxes(out[:, 0] == 0)
    assert all(b is not None for b in found)  # p = 1 and every attempt fits here
    for eh, ew in found:
        # H_e = round(sqrt(S r)), W_e = round(sqrt(S / r)); allow half a pixel each way.
        assert (eh - 0.5) * (ew - 0.5) <= scale[1] * h * w
        assert (eh + 0.5) * (ew + 0.5) >= scale[0] * h * w
        assert (eh - 0.5) / (ew + 0.5) <= ratio[1]
        assert (eh + 0.5) / (ew - 0.5) >= ratio[0]


def test_random_erasing_position_is_uniform_where_the_box_fits():
    # A fixed 8x6 box (area and aspect pinned) on a 20x14 image: each top-left corner in
    # 13 x 9 places, so P(pixel erased) = P(row covered) * P(col covered), enumerated here.
    h, w = 20, 14
    x = torch.ones(4000, 1, h, w)
    s = 48 / (h * w)
    out = random_erasing(x, 1.0, scale=(s, s), ratio=(8 / 6, 8 / 6), value=0.0, generator=gen(7))
    erased = out[:, 0] == 0
    assert set(boxes(erased[:50])) == {(8, 6)}

    def rate(size: int, side: int) -> torch.Tensor:
        p = torch.zeros(size, dtype=torch.float64)
        for top in range(size - side + 1):
            p[top : top + side] += 1 / (size - side + 1)
        return p

    expected = rate(h, 8)[:, None] * rate(w, 6)[None, :]
    assert (erased.double().mean(0) - expected).abs().max().item() < 0.04


@pytest.mark.parametrize("h,w", [(4, 16), (16, 4), (4, 4)])
def test_random_erasing_rejects_a_rectangle_of_full_height_or_width(h, w):
    # Area 16 and aspect 1 pin the rectangle to 4 x 4. The reference fit test is strict
    # (H_e < H and W_e < W, as the authors' code and torchvision), so on an image 4 pixels
    # high or wide every attempt is rejected and nothing is erased; `<=` would erase it.
    x = torch.ones(200, 1, h, w)
    s = 16 / (h * w)
    out = random_erasing(x, 1.0, scale=(s, s), ratio=(1.0, 1.0), value=0.0, generator=gen(10))
    assert torch.equal(out, x)


def test_random_erasing_accepts_one_pixel_less_than_full_size():
    # The same 4 x 4 rectangle on a 5 x 5 image fits (4 < 5) at 2 x 2 corners, all reached.
    x = torch.ones(400, 1, 5, 5)
    out = random_erasing(x, 1.0, scale=(0.64, 0.64), ratio=(1.0, 1.0), value=0.0, generator=gen(11))
    erased = out[:, 0] == 0
    assert set(boxes(erased)) == {(4, 4)}
    corners = {(int(m.nonzero()[:, 0].min()), int(m.nonzero()[:, 1].min())) for m in erased}
    assert corners == {(0, 0), (0, 1), (1, 0), (1, 1)}


def test_random_erasing_leaves_images_where_nothing_fits():
    # Height sqrt(S * 3) = sqrt(3) H never fits: every attempt fails, nothing is erased.
    x = torch.randn(5, 3, 16, 16)
    out = random_erasing(x, 1.0, scale=(1.0, 1.0), ratio=(3.0, 3.0), generator=gen(8))
    assert torch.equal(out, x)


def test_random_erasing_random_fill_is_standard_normal_per_pixel():
    x = torch.full((200, 3, 32, 32), 7.0)
    out = random_erasing(x, 1.0, value="random", generator=gen(9))
    erased = out != 7.0
    assert (erased == erased[:, :1]).all()  # one rectangle shared by the channels
    noise = out[erased].double()
    assert noise.numel() > 10000
    assert noise.mean().item() == pytest.approx(0.0, abs=0.05)
    assert noise.std().item() == pytest.approx(1.0, abs=0.05)
    assert not torch.equal(out[:, 0][erased[:, 0]], out[:, 1][erased[:, 1]])  # per channel


# ---------------------------------------------------------------- neutral setting


def test_neutral_settings_are_identity():
    x = torch.randn(3, 3, 8, 6)
    assert cutout(x, 0, generator=gen(0)) is x
    assert cutout(x, 4, holes=0, generator=gen(0)) is x
    assert random_erasing(x, 0.0, generator=gen(0)) is x


# ---------------------------------------------------------------- shapes, dtypes, devices

CASES = [(1, 1, torch.float32), (3, 3, torch.float64), (7, 1, torch.float64), (7, 3, torch.float32)]
TRICKS = {
    "cutout": lambda x, g: cutout(x, 8, holes=2, generator=g),
    "random_erasing": lambda x, g: random_erasing(x, 0.5, generator=g),
    "random_erasing_mean": lambda x, g: random_erasing(x, 1.0, value="mean", generator=g),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", TRICKS)
@pytest.mark.parametrize("n,c,dtype", CASES)
def test_shapes_dtypes_devices(device, name, n, c, dtype):
    x = torch.randn(n, c, 28, 20, dtype=dtype).to(device)
    x0 = x.clone()
    out = TRICKS[name](x, gen(3, device))
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    assert torch.equal(x, x0)  # input untouched
    assert torch.equal(out, TRICKS[name](x, gen(3, device)))  # same seed, same output


def test_runs_without_generator_and_in_bfloat16():
    x = torch.randn(3, 1, 9, 5, dtype=torch.bfloat16)
    assert cutout(x, 3).dtype == torch.bfloat16
    assert random_erasing(x, 1.0).dtype == torch.bfloat16


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"length": -1}, ValueError, r"cutout: length must be an int >= 0.*got -1"),
        ({"length": 2.5}, TypeError, r"cutout: length must be an int >= 0.*got 2.5"),
        ({"length": True}, TypeError, r"cutout: length must be an int >= 0.*got True"),
        ({"length": 4, "holes": -2}, ValueError, r"cutout: holes must be an int >= 0.*got -2"),
    ],
)
def test_cutout_bad_values(kwargs, error, match):
    with pytest.raises(error, match=match):
        cutout(torch.zeros(2, 1, 8, 8), **kwargs)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"p": 1.5}, ValueError, r"p must be in \[0, 1\], got 1.5"),
        ({"p": -0.1}, ValueError, r"p must be in \[0, 1\], got -0.1"),
        ({"p": float("nan")}, ValueError, r"p must be in \[0, 1\], got nan"),
        ({"scale": (0.4, 0.02)}, ValueError, r"scale range is inverted, got \(0.4, 0.02\)"),
        (
            {"scale": (0.0, 0.4)},
            ValueError,
            r"scale must satisfy 0 < lo <= hi <= 1.0, got \(0.0, 0.4\)",
        ),
        (
            {"scale": (0.1, 1.5)},
            ValueError,
            r"scale must satisfy 0 < lo <= hi <= 1.0, got \(0.1, 1.5\)",
        ),
        ({"scale": (0.1,)}, TypeError, r"scale must be a pair \(lo, hi\)"),
        ({"ratio": (3.3, 0.3)}, ValueError, r"ratio range is inverted, got \(3.3, 0.3\)"),
        ({"ratio": (-1.0, 2.0)}, ValueError, r"ratio must satisfy 0 < lo <= hi, got \(-1.0, 2.0\)"),
        (
            {"value": "meen"},
            ValueError,
            r"value must be 'random', 'mean' or a number, got 'meen'.*'mean'",
        ),
        ({"value": None}, TypeError, r"value must be 'random', 'mean' or a number, got None"),
    ],
)
def test_random_erasing_bad_values(kwargs, error, match):
    kwargs = {"p": 0.5, **kwargs}
    with pytest.raises(error, match="random_erasing: " + match):
        random_erasing(torch.zeros(2, 1, 8, 8), **kwargs)


@pytest.mark.parametrize("f", [lambda x: cutout(x, 4), lambda x: random_erasing(x, 0.5)])
def test_bad_images_are_named(f):
    with pytest.raises(ValueError, match=r": x must be a 4-D float batch.*\(8, 8\)"):
        f(torch.zeros(8, 8))
    with pytest.raises(TypeError, match=r": x must be a 4-D float batch.*torch.uint8"):
        f(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))


def test_random_erasing_per_channel_fill_value():
    x = torch.randn(64, 3, 12, 10)
    fill = torch.tensor([-1.5, 0.25, 2.0])
    out = random_erasing(x, 1.0, value=fill, generator=torch.Generator().manual_seed(0))
    changed = (out != x).any(1)  # (N, H, W): the erased rectangle, the same in every channel
    assert changed.any()
    for c in range(3):
        assert torch.all(out[:, c][changed] == fill[c])
    with pytest.raises(ValueError, match=r"random_erasing: a tensor value needs one entry per"):
        random_erasing(x, 1.0, value=torch.zeros(2))
