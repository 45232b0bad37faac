"""mixup, CutMix and RICAP against formulas written out here, plus identity, shapes and errors."""

import math

import pytest
import torch

from freebies.tricks.mixing import _beta, cutmix, mixup, ricap

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]
TRICKS = {"mixup": mixup, "cutmix": cutmix, "ricap": ricap}


def gen(seed: int, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def redraw_beta(a: float, g: torch.Generator) -> float:
    return torch._sample_dirichlet(torch.tensor([a, a], dtype=torch.float64), generator=g)[0].item()


def coded_batch(n: int, h: int, w: int, c: int = 1) -> torch.Tensor:
    """Pixel value = image * 10000 + row * 100 + col: every pixel names its source."""
    i = torch.arange(n).view(n, 1, 1, 1) * 10000
    r = torch.arange(h).view(1, 1, h, 1) * 100
    q = torch.arange(w).view(1, 1, 1, w)
    return (i + r + q).expand(n, c, h, w).float()


def decode(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    v = x.round().long()
    return v // 10000, (v % 10000) // 100, v % 100


# ---------------------------------------------------------------- reference formulas


def test_beta_helper_has_beta_moments():
    a = 0.4
    g = gen(0)
    lams = torch.tensor([_beta(a, g) for _ in range(3000)], dtype=torch.float64)
    assert ((lams >= 0) & (lams <= 1)).all()
    assert lams.mean().item() == pytest.approx(0.5, abs=0.03)
    # Var of Beta(a, a) = 1 / (4 (2a + 1)); uniform (a = 1) would give 1/12.
    assert lams.var().item() == pytest.approx(1 / (4 * (2 * a + 1)), abs=0.015)


@pytest.mark.parametrize("seed", range(3))
def test_mixup_matches_formula_with_redrawn_lam_and_perm(seed):
    n, k = 7, 5
    x = torch.randn(n, 3, 8, 6, generator=gen(100))
    y = torch.softmax(torch.randn(n, k, generator=gen(101)), dim=1)
    out_x, out_y = mixup(x, y, alpha=0.4, generator=gen(seed))
    g = gen(seed)
    lam = redraw_beta(0.4, g)
    perm = torch.randperm(n, generator=g)
    torch.testing.assert_close(out_x, lam * x + (1 - lam) * x[perm])
    torch.testing.assert_close(out_y, lam * y + (1 - lam) * y[perm])


def test_mixup_output_is_target_weighted_sum_of_inputs():
    # With y = identity the mixed targets are exactly the mixing matrix: x_out = y_out @ x.
    n = 7
    x = torch.randn(n, 2, 5, 4, generator=gen(1), dtype=torch.float64)
    y = torch.eye(n, dtype=torch.float64)
    for seed in range(10):
        out_x, out_y = mixup(x, y, alpha=1.0, generator=gen(seed))
        assert ((out_y > 0).sum(1) <= 2).all()  # one partner per image
        torch.testing.assert_close(out_x, (out_y @ x.flatten(1)).view_as(x))


@pytest.mark.parametrize("h,w", [(28, 20), (9, 13)])
def test_cutmix_matches_formula_with_redrawn_box_incl_clipped(h, w):
    n, k = 7, 4
    x = torch.randn(n, 3, h, w, generator=gen(100))
    y = torch.softmax(torch.randn(n, k, generator=gen(101)), dim=1)
    clipped = 0
    for seed in range(20):
        out_x, out_y = cutmix(x, y, alpha=1.0, generator=gen(seed))
        g = gen(seed)
        lam0 = redraw_beta(1.0, g)
        perm = torch.randperm(n, generator=g)
        cy = int(torch.randint(h, (), generator=g))
        cx = int(torch.randint(w, (), generator=g))
        cut_h, cut_w = round(h * math.sqrt(1 - lam0)), round(w * math.sqrt(1 - lam0))
        top, left = cy - cut_h // 2, cx - cut_w // 2
        y1, y2 = max(top, 0), min(top + cut_h, h)
        x1, x2 = max(left, 0), min(left + cut_w, w)
        clipped += (y2 - y1, x2 - x1) != (cut_h, cut_w)
        expected = x.clone()
        expected[:, :, y1:y2, x1:x2] = x[perm][:, :, y1:y2, x1:x2]
        lam = 1 - (y2 - y1) * (x2 - x1) / (h * w)
        torch.testing.assert_close(out_x, expected)
        torch.testing.assert_close(out_y, lam * y + (1 - lam) * y[perm])
    assert clipped > 2  # the border case was really exercised


def test_cutmix_pastes_one_partner_box_and_weights_by_true_area():
    # Content check independent of draw order: each image shows its own pixels except in one
    # rectangle (the same for the whole batch) taken from its partner at the same place, and
    # the partner's target weight equals that rectangle's share of the image.
    n, h, w = 7, 28, 20
    x = coded_batch(n, h, w, c=3)
    y = torch.eye(n)
    for seed in range(15):
        out_x, out_y = cutmix(x, y, alpha=1.0, generator=gen(seed))
        src, rows, cols = decode(out_x)
        assert (rows == torch.arange(h).view(1, 1, h, 1)).all()  # pasted at the same place
        assert (cols == torch.arange(w).view(1, 1, 1, w)).all()
        box = None
        for i in range(n):
            others = src[i, 0] != i
            partners = src[i][src[i] != i].unique()
            assert len(partners) <= 1
            if len(partners) == 0:
                continue
            j = int(partners[0])
            ys, xs = others.nonzero(as_tuple=True)
            y1, y2, x1, x2 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
            assert others.sum() == (y2 - y1) * (x2 - x1)  # a filled rectangle
            assert box is None or box == (y1, y2, x1, x2)
            box = (y1, y2, x1, x2)
            share = (y2 - y1) * (x2 - x1) / (h * w)
            assert out_y[i, j].item() == pytest.approx(share, abs=1e-6)
            assert out_y[i, i].item() == pytest.approx(1 - share, abs=1e-6)


@pytest.mark.parametrize("h,w", [(28, 20), (7, 11)])
def test_ricap_matches_formula_with_redrawn_boundary_and_crops(h, w):
    n, k = 7, 4
    x = torch.randn(n, 3, h, w, generator=gen(100))
    y = torch.softmax(torch.randn(n, k, generator=gen(101)), dim=1)
    for seed in range(8):
        out_x, out_y = ricap(x, y, beta=0.3, generator=gen(seed))
        g = gen(seed)
        bw = round(w * redraw_beta(0.3, g))
        bh = round(h * redraw_beta(0.3, g))
        expected_x = torch.full_like(x, float("nan"))
        expected_y = torch.zeros_like(y)
        for top, left, rh, rw in [
            (0, 0, bh, bw),
            (0, bw, bh, w - bw),
            (bh, 0, h - bh, bw),
            (bh, bw, h - bh, w - bw),
        ]:
            perm = torch.randperm(n, generator=g)
            cx = int(torch.randint(w - rw + 1, (), generator=g))
            cy = int(torch.randint(h - rh + 1, (), generator=g))
            expected_x[:, :, top : top + rh, left : left + rw] = x[perm][
                :, :, cy : cy + rh, cx : cx + rw
            ]
            expected_y += rh * rw / (h * w) * y[perm]
        torch.testing.assert_close(out_x, expected_x)  # NaN left over = a pixel not covered
        torch.testing.assert_close(out_y, expected_y)


def test_ricap_weights_equal_pixel_shares_and_patches_are_rectangles():
    n, h, w = 7, 28, 20
    x = coded_batch(n, h, w)
    y = torch.eye(n)
    for seed in range(10):
        out_x, out_y = ricap(x, y, beta=0.3, generator=gen(seed))
        src, rows, cols = decode(out_x[:, 0])
        # Target weight of image j = share of output pixels that came from image j.
        shares = torch.stack([torch.bincount(s.flatten(), minlength=n) for s in src]) / (h * w)
        torch.testing.assert_close(out_y, shares)
        # Each (source, row offset, col offset) is one rectangular patch; at most four.
        dr = rows - torch.arange(h).view(1, h, 1)
        dc = cols - torch.arange(w).view(1, 1, w)
        for i in range(n):
            keys = src[i] * 10**6 + (dr[i] + 100) * 1000 + (dc[i] + 100)
            values = keys.unique()
            assert len(values) <= 4
            for v in values:
                ys, xs = (keys == v).nonzero(as_tuple=True)
                area = (int(ys.max()) - int(ys.min()) + 1) * (int(xs.max()) - int(xs.min()) + 1)
                assert len(ys) == area


# ---------------------------------------------------------------- neutral setting


@pytest.mark.parametrize("name", TRICKS)
def test_zero_is_identity(name):
    x = torch.randn(3, 3, 8, 6)
    y = torch.softmax(torch.randn(3, 5), 1)
    out_x, out_y = TRICKS[name](x, y, 0.0, generator=gen(0))
    assert out_x is x and out_y is y


# ---------------------------------------------------------------- shapes, dtypes, devices


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", TRICKS)
@pytest.mark.parametrize(
    "n,c,dtype",
    [(1, 1, torch.float32), (3, 3, torch.float64), (7, 1, torch.float64), (7, 3, torch.float32)],
)
def test_shapes_dtypes_devices(device, name, n, c, dtype):
    x = torch.randn(n, c, 28, 20, dtype=dtype).to(device)
    y = torch.softmax(torch.randn(n, 10, dtype=dtype), 1).to(device)
    x0, y0 = x.clone(), y.clone()
    out_x, out_y = TRICKS[name](x, y, 1.0, generator=gen(3, device))
    assert out_x.shape == x.shape and out_x.dtype == dtype and out_x.device == x.device
    assert out_y.shape == y.shape and out_y.dtype == dtype and out_y.device == y.device
    torch.testing.assert_close(out_y.sum(1), torch.ones(n, dtype=dtype, device=device))
    assert torch.equal(x, x0) and torch.equal(y, y0)  # inputs untouched
    again_x, again_y = TRICKS[name](x, y, 1.0, generator=gen(3, device))
    assert torch.equal(out_x, again_x) and torch.equal(out_y, again_y)


@pytest.mark.parametrize("name", TRICKS)
def test_runs_without_generator(name):
    out_x, out_y = TRICKS[name](torch.randn(3, 1, 9, 5), torch.eye(3), 0.5)
    assert out_x.shape == (3, 1, 9, 5) and torch.allclose(out_y.sum(1), torch.ones(3))


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("name", TRICKS)
def test_bad_input_raises_clear_errors(name):
    f = TRICKS[name]
    arg = "beta" if name == "ricap" else "alpha"
    x, y = torch.randn(3, 1, 8, 8), torch.eye(3)
    with pytest.raises(ValueError, match=rf"{name}: {arg} must be >= 0.*got -0.5"):
        f(x, y, -0.5)
    with pytest.raises(ValueError, match=rf"{name}: {arg} must be >= 0.*got nan"):
        f(x, y, float("nan"))
    with pytest.raises(ValueError, match=rf"{name}: x must be a 4-D float batch.*\(3, 8, 8\)"):
        f(x[:, 0], y, 1.0)
    with pytest.raises(TypeError, match=rf"{name}: x must be a 4-D float batch.*torch.uint8"):
        f(x.to(torch.uint8), y, 1.0)
    with pytest.raises(ValueError, match=rf"{name}: y must be soft float targets.*one_hot"):
        f(x, torch.arange(3), 1.0)
    with pytest.raises(TypeError, match=rf"{name}: y must be soft float targets.*int64"):
        f(x, torch.eye(3).long(), 1.0)
    with pytest.raises(ValueError, match=rf"{name}: y has 2 rows but x has 3 images"):
        f(x, y[:2], 1.0)


@CUDA
def test_generator_on_wrong_device_is_named():
    x = torch.randn(3, 1, 8, 8, device="cuda")
    with pytest.raises(ValueError, match=r"mixup: generator is on cpu but x is on cuda"):
        mixup(x, torch.eye(3, device="cuda"), 1.0, generator=gen(0))


def test_pick_mixer_neutral_single_alternate_and_switch_weights():
    from freebies.tricks import pick_mixer

    g = torch.Generator().manual_seed(0)
    assert pick_mixer([], generator=g) is None
    assert pick_mixer(["mixup"], prob=0.0, generator=g) is None
    assert pick_mixer(["cutmix"], generator=g) == "cutmix"
    names = ["mixup", "cutmix", "ricap"]
    assert [pick_mixer(names, mode="alternate", step=s) for s in range(4)] == [
        "mixup",
        "cutmix",
        "ricap",
        "mixup",
    ]
    draws = [pick_mixer(names, weights=[0.6, 0.4, 0.0], generator=g) for _ in range(2000)]
    assert draws.count("ricap") == 0
    assert abs(draws.count("mixup") / 2000 - 0.6) < 0.04
    mixed = [pick_mixer(["mixup"], prob=0.3, generator=g) for _ in range(2000)]
    assert abs(sum(m is not None for m in mixed) / 2000 - 0.3) < 0.04


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prob": 1.5}, r"pick_mixer: prob must be in \[0, 1\], got 1.5"),
        ({"mode": "alternating"}, r"pick_mixer: mode must be 'switch' or 'alternate'"),
        ({"weights": [1.0]}, r"pick_mixer: weights needs one entry per name \(2\), got 1"),
    ],
)
def test_pick_mixer_bad_values(kwargs, match):
    from freebies.tricks import pick_mixer

    with pytest.raises(ValueError, match=match):
        pick_mixer(["mixup", "cutmix"], **kwargs)
