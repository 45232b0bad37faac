"""Small-object inference: the image pyramid and batched tiles on a stub detector that finds
only objects of at least N input pixels (no training), on a real tiny FCOS for what its
backbone receives, and the merge rules."""

from __future__ import annotations

import itertools

import pytest
import torch
from scipy import ndimage
from torch import nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from freebies.detection.model import build_detector
from freebies.detection.multiscale import (
    auto_tile_size,
    merge_detections,
    multiscale_detect,
    pyramid_parts,
    small_box_side,
    tile_parts,
    tile_windows,
)


class Stub(nn.Module):
    """A torchvision-style detector: its transform resizes each input to `size` as
    torchvision's does; it finds the bright blobs at least `min_px` a side in what it sees
    (or, with frame=True, returns one box covering its whole input), and maps them back."""

    def __init__(self, size: int, min_px: int = 1, frame: bool = False) -> None:
        super().__init__()
        self.transform = GeneralizedRCNNTransform(size, size, [0.0] * 3, [1.0] * 3)
        self.min_px, self.frame, self.seen, self.calls = min_px, frame, [], 0
        self.eval()

    def forward(self, images):
        self.calls += 1
        original = [tuple(im.shape[-2:]) for im in images]
        batch, _ = self.transform(images)
        dets = []
        for x, (h, w) in zip(batch.tensors, batch.image_sizes, strict=True):
            self.seen.append((h, w))
            if self.frame:
                boxes = [[0.0, 0.0, float(w), float(h)]]
            else:
                blobs, _ = ndimage.label((x[0, :h, :w] > 0.5).numpy())
                boxes = [
                    [sx.start, sy.start, sx.stop, sy.stop]
                    for sy, sx in ndimage.find_objects(blobs)
                    if min(sy.stop - sy.start, sx.stop - sx.start) >= self.min_px
                ]
            b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
            dets.append(
                {"boxes": b, "scores": torch.ones(len(b)), "labels": torch.zeros(len(b)).long()}
            )
        return self.transform.postprocess(dets, batch.image_sizes, original)


def image_with(*boxes, size=(128, 128)):
    x = torch.zeros(1, 3, *size)
    for x0, y0, x1, y1 in boxes:
        x[0, :, y0:y1, x0:x1] = 1.0
    return x


def test_the_pyramid_and_the_tiles_find_a_small_object_the_single_pass_misses():
    obj = (40, 50, 48, 58)  # 8 px; the stub needs 12
    x = image_with(obj)
    stub = Stub(128, min_px=12)
    assert len(multiscale_detect(stub, x)[0]["boxes"]) == 0
    for kw in (
        {"scales": (1, 2)},
        {"windows": tile_windows(128, 128, grid=(2, 2), overlap=0.2), "input_size": 128},
    ):
        found = multiscale_detect(stub, x, **kw)[0]["boxes"]
        assert len(found) == 1, kw
        torch.testing.assert_close(found[0], torch.tensor(obj, dtype=torch.float32), atol=1, rtol=0)


def test_an_object_cut_by_a_tile_border_comes_out_as_one_box():
    obj = (50, 20, 80, 40)  # across the seam of the 2x2 grid's tiles x in [0, 71] and [57, 128]
    x = image_with(obj)
    stub = Stub(128, min_px=4)
    windows = tile_windows(128, 128, grid=(2, 2), overlap=0.2)
    assert windows[0] == (0, 0, 71, 71) and windows[1] == (57, 0, 128, 71)  # 14 px shared
    whole = torch.tensor(obj, dtype=torch.float32)
    for scales in ((), (1.0,)):  # the tiles' halves alone, and with the full pass
        found = multiscale_detect(stub, x, scales=scales, windows=windows, input_size=128)[0]
        assert len(found["boxes"]) == 1, scales
        torch.testing.assert_close(found["boxes"][0], whole, atol=1, rtol=0)
    halves = multiscale_detect(stub, x, scales=(), windows=windows, input_size=128, merge="nms")
    assert not torch.allclose(halves[0]["boxes"][0], whole, atol=1)  # IoU-NMS keeps a half


def test_boxes_map_back_exactly_for_every_scale_and_every_tile_of_a_ragged_image():
    h, w = 100, 130  # not a multiple of the tile
    x = torch.rand(2, 3, h, w)
    stub = Stub(64, frame=True)
    for per_image in pyramid_parts(stub, x, (0.5, 1.0, 1.5, 2.0), None, 8):
        for det in per_image:
            assert det["boxes"].tolist() == [[0.0, 0.0, float(w), float(h)]]
    windows = tile_windows(h, w, tile_size=48, overlap=0.25)
    assert {(x1 - x0, y1 - y0) for x0, y0, x1, y1 in windows} == {(48, 48)}
    assert max(x1 for *_, x1, _ in windows) == w and max(y1 for *_, y1 in windows) == h
    for per_image in tile_parts(stub, x, windows, 64, 8):
        got = [tuple(d["boxes"][0].tolist()) for d in per_image]
        assert got == [tuple(float(v) for v in win) for win in windows]


def test_tiles_cut_from_the_images_own_pixels_find_what_the_letterbox_threw_away():
    from freebies import detect

    native = image_with((100, 100, 102, 102), size=(256, 256))  # a 2 x 2 px object
    small = torch.nn.functional.interpolate(native, size=(64, 64), mode="bilinear", antialias=True)
    assert small.max() < 0.5  # letterboxed to 64 px, it is a faint quarter of a pixel
    before = multiscale_detect(Stub(64), small, windows=tile_windows(64, 64, tile_size=16),
                               input_size=64)  # fmt: skip
    assert len(before[0]["boxes"]) == 0  # tiles of the letterboxed copy cannot recover it
    o = detect.check_multiscale(tile_size=16)
    model = Stub(64)
    found = detect.native_infer(model, 64, [1.0], None, 16, o)(native)[0]["boxes"]
    torch.testing.assert_close(found, torch.tensor([[100.0, 100.0, 102.0, 102.0]]))
    assert set(model.seen) == {(64, 64)}  # 64 px windows of the image, shown at 64 px


def test_snip_at_native_resolution_leaves_the_trained_scale_whole():
    """Images at their own resolution for a model trained letterboxed: the pyramid level 1 is
    the letterbox factor (here 1/4), the pass SNIP must leave whole; only level 2, enlarged
    beyond it, keeps the small boxes alone."""
    from freebies import detect

    native = image_with((20, 20, 32, 32), (100, 100, 220, 220), size=(256, 256))  # 12, 120 px
    o = detect.check_multiscale(pyramid="1,2", snip=8.0)  # 8 input px: 32 of the image's
    model = Stub(64)
    found = detect.native_infer(model, 64, [1.0, 2.0], None, None, o)(native)[0]["boxes"]
    sides = sorted((found[:, 2] - found[:, 0]).round().tolist())
    assert sides == [12.0, 120.0]
    assert set(model.seen) == {(64, 64), (128, 128)}


def test_native_inference_takes_its_scale_from_the_image_not_its_padded_batch():
    """A 100 x 75 image (rect batches pad it to 128 x 96) for a model trained at 64: the pass
    at the trained scale shows it at 64/100, so a 10 px object is 6.4 px there (found by a
    detector of objects of at least 6 px), not at 64/128 (5 px, missed)."""
    from freebies import detect

    class Model(Stub):  # predict() asks a model for its device
        def __init__(self) -> None:
            super().__init__(64, min_px=6)
            self.p = nn.Parameter(torch.zeros(1))

    image = (255 * image_with((40, 30, 50, 40), size=(75, 100))[0]).to(torch.uint8)
    info = {"image_size": 64, "rect": True, "classes": ["a"], "category_ids": [1]}
    model = Model()
    infer = detect.native_infer(model, 64, [1.0], None, None, detect.check_multiscale())
    found = detect.predict_image(model, image, info, 0.5, infer=infer)
    assert [f["box_xyxy"] for f in found] == [pytest.approx([40, 30, 50, 40], abs=1)]
    assert set(model.seen) == {(48, 64)}


def test_tile_boxes_moved_into_a_large_frame_keep_float32_coordinates():
    """A detector under bf16 autocast returns bf16 boxes; moved to their tile's place beyond
    1024 px they must not be rounded to bf16's 8 px steps."""

    class Bf16Stub(Stub):
        def forward(self, images):
            return [{**d, "boxes": d["boxes"].bfloat16()} for d in super().forward(images)]

    x = image_with((1500, 20, 1512, 32), size=(64, 2048))  # 1500 is no bf16 number
    windows = tile_windows(64, 2048, tile_size=64, overlap=0.2)
    found = multiscale_detect(Bf16Stub(64), x, scales=(), windows=windows, input_size=64)[0]
    assert found["boxes"].dtype == torch.float32
    assert found["boxes"].tolist() == [[1500.0, 20.0, 1512.0, 32.0]]


def test_each_tile_is_upsampled_to_the_input_size_and_batched():
    x = image_with((10, 10, 20, 20), size=(100, 100)).repeat(3, 1, 1, 1)
    windows = tile_windows(100, 100, grid=(2, 3), overlap=0.2)
    loop, batched = Stub(64, min_px=4), Stub(64, min_px=4)
    one = multiscale_detect(loop, x, scales=(), windows=windows, input_size=64, batch_size=1)
    many = multiscale_detect(batched, x, scales=(), windows=windows, input_size=64, batch_size=32)
    for a, b in zip(one, many, strict=True):
        assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])
    assert loop.calls == 3 * 6 and batched.calls == 1
    assert max(batched.seen[0]) == 64  # a tile's longer side reaches the input size


@pytest.fixture
def fcos():
    torch.manual_seed(0)
    return build_detector(3, image_size=64, fpn_width=16, head_convs=1, score_thresh=0.0).eval()


def test_the_backbone_receives_the_enlarged_tensor(fcos):
    seen = []
    fcos.backbone.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape)))
    x = torch.rand(1, 3, 64, 64)
    multiscale_detect(fcos, x, scales=(1.0, 2.0))
    assert seen == [(1, 3, 64, 64), (1, 3, 128, 128)]
    seen.clear()
    windows = tile_windows(64, 64, grid=(2, 2), overlap=0.25)  # 37-px tiles, upsampled to 64
    multiscale_detect(fcos, x, scales=(), windows=windows, input_size=64)
    assert seen == [(4, 3, 64, 64)]
    assert fcos.transform.min_size == (64,) and fcos.transform.max_size == 64  # restored


def test_pyramid_on_a_real_detector_keeps_its_limits(fcos):
    out = multiscale_detect(fcos, torch.rand(2, 3, 64, 64), scales=(1.0, 1.5), detections=30)
    assert len(out) == 2 and all(len(o["boxes"]) <= 30 for o in out)
    assert all((o["boxes"][:, 2:] <= 64.001).all() for o in out)


def test_snip_keeps_only_small_boxes_from_enlarged_passes_and_tiles():
    x = image_with((10, 10, 18, 18), (60, 60, 110, 110))  # 8 px and 50 px
    stub = Stub(128, min_px=1)
    parts = pyramid_parts(stub, x, (1.0, 2.0), 32.0, 8)[0]
    sides = [sorted(((d["boxes"][:, 2] - d["boxes"][:, 0]).round()).tolist()) for d in parts]
    assert sides == [[8.0, 50.0], [8.0]]
    tiles = tile_parts(stub, x, [(0, 0, 128, 128)], 128, 8, snip=32.0)[0]  # tiles: enlarged too
    assert tiles[0]["boxes"].tolist() == [[10.0, 10.0, 18.0, 18.0]] and len(tiles[0]["cut"]) == 1


def test_ios_drops_a_piece_inside_a_whole_box_and_keeps_other_classes_apart():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 5, 10], [0, 0, 5, 10], [50, 50, 60, 60]]).float()
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    labels = torch.tensor([0, 0, 1, 0])
    cut = torch.tensor([False, True, True, False])
    b, s, lab = merge_detections(boxes, scores, labels, "ios", 0.5, cut=cut)
    assert b.tolist() == [[0, 0, 10, 10], [0, 0, 5, 10], [50, 50, 60, 60]]
    assert s.tolist() == pytest.approx([0.9, 0.7, 0.6]) and lab.tolist() == [0, 1, 0]
    b, _, _ = merge_detections(boxes, scores, labels, "nms", 0.5, cut=cut)
    assert len(b) == 4  # IoU 0.5 is not above 0.5: NMS keeps the half beside the whole


def test_ios_never_swells_a_good_box_into_a_large_low_score_one():
    # a whole box inside a large weak box of its class (IoS 1): neither is a tile piece,
    # so they stay apart; joining by IoS, as greedy NMM does, would return the large box
    boxes = torch.tensor([[10, 10, 20, 20], [0, 0, 100, 100]]).float()
    scores, labels = torch.tensor([0.9, 0.06]), torch.tensor([0, 0])
    b, s, _ = merge_detections(boxes, scores, labels, "ios", 0.5, cut=torch.tensor([False] * 2))
    assert b.tolist() == boxes.tolist() and s.tolist() == pytest.approx([0.9, 0.06])


def test_pieces_no_pass_saw_whole_join_into_their_enclosing_box():
    pieces = torch.tensor([[50, 20, 72, 40], [56, 20, 80, 40], [0, 0, 9, 9]]).float()
    scores, labels = torch.tensor([0.5, 0.8, 0.7]), torch.tensor([0, 0, 0])
    b, s, _ = merge_detections(pieces, scores, labels, "ios", 0.5, cut=torch.ones(3).bool())
    assert b.tolist() == [[50, 20, 80, 40], [0, 0, 9, 9]] and s.tolist() == pytest.approx(
        [0.8, 0.7]
    )


def test_tile_boxes_at_an_inner_edge_are_marked_cut():
    x = image_with((50, 20, 80, 40), (0, 90, 10, 100))  # across the seam; at the image's edge
    windows = tile_windows(128, 128, grid=(2, 2), overlap=0.2)
    parts = tile_parts(Stub(128, min_px=1), x, windows, 128, 8)[0]
    cut = {
        tuple(b.round().tolist()): bool(c)
        for d in parts
        for b, c in zip(d["boxes"], d["cut"], strict=True)
    }
    assert cut[(50.0, 20.0, 71.0, 40.0)] and cut[(57.0, 20.0, 80.0, 40.0)]
    assert not cut[(0.0, 90.0, 10.0, 100.0)]


def test_auto_tile_size_rule():
    boxes = [torch.tensor([[0, 0, 10, 10], [0, 0, 12, 12]]).float(),
             torch.tensor([[0, 0, 14, 14], [0, 0, 40, 40], [5, 5, 85, 85]]).float()]  # fmt: skip
    assert small_box_side(boxes) == pytest.approx(12.0)  # the median of the small ones
    assert small_box_side([torch.tensor([[0.0, 0.0, 40.0, 50.0]]), torch.zeros(0, 4)]) is None
    assert auto_tile_size(12.0, 256, 256) == 96  # 256 * 12 / 32
    assert auto_tile_size(None, 256, 256) is None  # nothing small
    assert auto_tile_size(31.0, 256, 240) is None  # 248 px: the whole image
    assert auto_tile_size(2.0, 256, 256) == 64  # at least a quarter


def axis(windows: list[tuple[int, int, int, int]], lo: int) -> list[int]:
    """The distinct starts along one axis (lo=0: x, lo=1: y)."""
    return sorted({win[lo] for win in windows})


def test_tile_counts_are_what_the_overlap_needs_and_never_repeat():
    assert tile_windows(192, 192, tile_size=192, overlap=0.3) == [(0, 0, 192, 192)]  # was 4
    assert tile_windows(192, 192, tile_size=256, overlap=0.4) == [(0, 0, 192, 192)]
    windows = tile_windows(512, 512, tile_size=64, overlap=0.3)
    assert len(windows) == 121  # 11 per axis, 44-45 px apart; float ceil made it 12 (144)
    starts = axis(windows, 0)
    assert starts[0] == 0 and starts[-1] == 512 - 64
    assert {b - a for a, b in itertools.pairwise(starts)} == {44, 45}
    assert len(tile_windows(256, 256, tile_size=136, overlap=0.2)) == 9  # the scenes' auto
    assert tile_windows(216, 216, grid=(2, 2), overlap=0.2)[-1] == (96, 96, 216, 216)
    # 0.29 * 100 is 28.999999999999996 in floats: the overlap is taken as written, 29 px
    assert axis(tile_windows(171, 100, tile_size=100, overlap=0.29), 1) == [0, 71]


def check_axis(windows, lo: int, length: int, tile: int, overlap: float, fewest: bool) -> int:
    """Covering, overlap, no repeats (and with `fewest`, no fewer tiles would do) along one
    axis; returns the count on it."""
    from fractions import Fraction

    starts = axis(windows, lo)
    assert all(win[lo + 2] - win[lo] == tile for win in windows)
    assert starts[0] == 0 and starts[-1] + tile == length  # every pixel covered (gaps < tile)
    need = Fraction(str(overlap)) * tile  # the share in pixels, exactly
    step = tile - int(need)  # the largest step keeping floor(need) shared pixels
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(1 <= g <= step for g in gaps)  # neighbours overlap >= floor(overlap x tile)
    assert all(tile - g > need - 1 for g in gaps)  # ... so within a pixel of overlap x tile
    n = len(starts)
    # minimal: n - 1 tiles spread over the same room leave some gap of ceil(room / (n - 2))
    if fewest and n > 2:
        assert -(-(length - tile) // (n - 2)) > step
    return n


def test_tile_windows_property_over_many_sizes_tiles_and_overlaps():
    g = torch.Generator().manual_seed(0)
    overlaps = [0.0, 0.1, 0.2, 0.25, 0.29, 0.3, 1 / 3, 0.4, 0.5, 0.7, 0.9, 0.95]
    for trial in range(1500):
        h, w = (int(v) for v in torch.randint(1, 700, (2,), generator=g))
        overlap = overlaps[trial % len(overlaps)]
        if trial % 2:
            tile = int(torch.randint(1, 300, (1,), generator=g))
            windows = tile_windows(h, w, tile_size=tile, overlap=overlap)
            th, tw = min(tile, h), min(tile, w)
        else:
            rows, cols = (int(torch.randint(1, min(n, 12) + 1, (1,), generator=g)) for n in (h, w))
            windows = tile_windows(h, w, grid=(rows, cols), overlap=overlap)
            th, tw = windows[0][3], windows[0][2]
        assert len(set(windows)) == len(windows)  # no window twice
        n_rows = check_axis(windows, 1, h, th, overlap, fewest=trial % 2 == 1)
        n_cols = check_axis(windows, 0, w, tw, overlap, fewest=trial % 2 == 1)
        assert len(windows) == n_rows * n_cols
        if trial % 2 == 0:  # the grid's count, with the smallest tile that keeps the overlap
            assert (n_rows, n_cols) == (rows, cols)
            for length, t, n in ((h, th, rows), (w, tw, cols)):
                if t > 1:
                    smaller = tile_windows(length, 1, tile_size=t - 1, overlap=overlap)
                    assert len(smaller) > n


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: tile_windows(64, 64, grid=(80, 2)), "does not fit"),
        (lambda: tile_windows(64, 64, grid=(2, 2), overlap=1.0), "overlap must be in"),
        (lambda: tile_windows(64, 64), "exactly one"),
        (lambda: multiscale_detect(Stub(8), torch.rand(1, 3, 8, 8), scales=(0.0,)), "scale"),
        (lambda: multiscale_detect(Stub(8), torch.rand(1, 3, 8, 8), scales=()), "give scales"),
        (lambda: merge_detections(*[torch.zeros(0)] * 3, "wbf", 0.5), "mode must be one of"),
    ],
)
def test_bad_options_raise_value_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --------------------------------------------------------------------------------------------
# `freebies detect eval | predict` options


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread):
    """A tiny detection run (128 px, 1 epoch, 1 thread) on a written COCO set."""
    from detfake import cycled_scenes, write_coco
    from freebies.cli import main

    root = tmp_path_factory.mktemp("ms")
    splits = {"train": cycled_scenes(16, "tr", 3, 0), "test": cycled_scenes(4, "te", 3, 2)}
    write_coco(root / "coco", splits, ["cat", "dog", "fox"])
    out = root / "run"
    argv = ["detect", "train", "--data", f"coco:{root / 'coco'}", "--out", str(out),
            "--epochs", "1", "--batch-size", "8",
            *("--set", "data.image_size=128", "--set", "det.fpn_width=16"),
            *("--set", "det.head_convs=1", "--set", "sched.warmup_epochs=0.5"),
            *("--set", "det.score_thresh=0.0")]  # fmt: skip
    assert main(argv) == 0
    return out, root / "coco"


@pytest.mark.parametrize(
    "options",
    [
        ["--pyramid", "1,2"],
        ["--tiles", "2x2"],
        ["--auto-tiles"],
        ["--pyramid", "1,1.5", "--tile-size", "80", "--snip", "32"],
    ],
)
def test_detect_eval_reports_the_multiscale_result_and_its_cost(trained, capsys, options):
    import json

    from helpers import run_cli

    rc, out, err = run_cli(capsys, "detect", "eval", str(trained[0] / "last.pt"), *options)
    assert rc == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert {"map", "map_small", "img_per_s"} <= result.keys()
    if result.get("inference"):  # --auto-tiles may find that no tiling pays
        assert result["cost_vs_single"] > 0 and {"map", "map_small"} <= result["single"].keys()
    else:
        assert options == ["--auto-tiles"] and "warning: --auto-tiles: no tiling pays" in err


def test_several_options_at_once_equal_one_call_each_and_load_the_data_once(trained, monkeypatch):
    from freebies import detect

    path = trained[0] / "last.pt"
    options = {"as trained": {}, "pyramid": {"pyramid": "1,2"}, "tiles": {"tiles": "2x2"}}
    alone = {n: detect.evaluate_checkpoint(path, multiscale=o) for n, o in options.items()}
    loads, load = [], detect.load_data
    monkeypatch.setattr(detect, "load_data", lambda *a, **k: loads.append(k) or load(*a, **k))
    together = detect.evaluate_options(path, options)
    assert loads == [{}, {"native": True}]  # letterboxed once, native once for both options
    for name, result in together.items():
        assert result["map"] == pytest.approx(alone[name]["map"], abs=1e-9), name
        assert result.get("inference") == alone[name].get("inference")
    assert together["pyramid"]["single"]["map"] == pytest.approx(alone["pyramid"]["single"]["map"])


def test_detect_predict_with_tiles_writes_boxes_in_the_images_pixels(trained, tmp_path, capsys):
    import json

    from helpers import run_cli

    image = trained[1] / "te000.png"
    rc, _, err = run_cli(
        capsys, "detect", "predict", str(trained[0] / "last.pt"), str(image), "-o",
        str(tmp_path), "--tile-size", "64", "--score-thr", "0",
    )  # fmt: skip
    assert rc == 0, err
    found = json.loads((tmp_path / "te000.json").read_text())["detections"]
    from PIL import Image

    with Image.open(image) as im:
        w, h = im.size
    assert found and all(0 <= b["box_xyxy"][2] <= w and 0 <= b["box_xyxy"][3] <= h for b in found)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (["--pyramid", "0,1"], "scale must be a number > 0"),
        (["--pyramid", "one"], "--pyramid takes factors"),
        (["--tiles", "2x2", "--overlap", "1"], "overlap must be in"),
        (["--tiles", "200x2"], "does not fit"),
        (["--tiles", "2by2"], "--tiles takes ROWSxCOLS"),
        (["--snip", "32"], "give one of them"),
        (["--pyramid", "1,2", "--merge-thr", "0"], "--merge-thr"),
    ],
)
def test_bad_multiscale_options_are_one_line_errors(trained, capsys, options, match):
    from helpers import usage_error

    line = usage_error(capsys, "detect", "eval", str(trained[0] / "last.pt"), *options)
    assert match in line


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (["--tile-size", "0"], "--tile-size is a tile side in pixels >= 1, got 0"),
        (["--tiles", "0x2"], "--tiles takes ROWSxCOLS"),
        (["--pyramid", "1,2", "--snip", "-1"], "--snip is a box side in pixels > 0, got -1"),
        (["--tiles", "2x2", "--snip", "0"], "--snip is a box side in pixels > 0"),
        (["--overlap", "0.3"], "--overlap is the tiles' overlap; give --tiles"),
        (["--pyramid", "1,2", "--overlap", "0.3"], "--overlap is the tiles' overlap"),
        (["--merge", "nms"], "--merge joins the passes"),
        (["--merge-thr", "0.4"], "--merge-thr is the threshold"),
        (["--tiles", "2x2", "--overlap", "1"], "--overlap must be in [0, 1)"),
        (["--pyramid", "0,1"], "scale must be a number > 0"),
    ],
)
def test_multiscale_options_are_refused_before_anything_loads(tmp_path, capsys, options, match):
    """The checkpoint named does not exist: the option's error comes first."""
    from helpers import usage_error

    line = usage_error(capsys, "detect", "eval", str(tmp_path / "missing.pt"), *options)
    assert match in line


def test_check_multiscale_applies_the_defaults_only_where_they_act():
    from freebies.detect import check_multiscale

    assert check_multiscale(tiles="2x3")["grid"] == (2, 3)
    o = check_multiscale(tile_size=96)
    assert (o["overlap"], o["merge_thr"], o["given"]) == (0.2, 0.5, {})
    o = check_multiscale(pyramid="1,2", merge="nms", merge_thr=0.6)
    assert o["scales"] == [1.0, 2.0] and o["given"] == {"--merge": "nms", "--merge-thr": 0.6}


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"tiles": "2x2", "tile_size": 96}, "each choose the tiles; give one"),
        ({"tile_size": 96, "auto_tiles": True}, "each choose the tiles; give one"),
        ({"pyramid": "1,2", "merge": "wbf"}, "--merge is one of ios, nms, got 'wbf'"),
    ],
)
def test_check_multiscale_refuses_what_the_cli_cannot_parse(options, match):
    """The Python API (`evaluate_checkpoint(multiscale=...)`) gets the CLI's one-line errors."""
    from freebies.detect import check_multiscale
    from freebies.errors import UsageError

    with pytest.raises(UsageError, match=match):
        check_multiscale(**options)


@pytest.mark.parametrize(
    ("options", "warning"),
    [
        (
            {"auto_tiles": True, "overlap": 0.3, "snip": 20.0},
            "--auto-tiles: no tiling pays here (no small training boxes, or tiles as large as"
            " the image); one full pass (--overlap 0.3, --snip 20.0 unused)",
        ),
        (
            {"tile_size": 128, "pyramid": "1,2", "overlap": 0.3, "snip": 20.0},
            "--tile-size 128 is one tile as large as the 128 px input: no tiles; the pyramid"
            " alone (--overlap 0.3 unused)",
        ),
        (
            {"tiles": "1x1", "merge": "nms"},
            "--tiles 1x1 is one tile as large as the 128 px input: no tiles; one full pass"
            " (--merge nms unused)",
        ),
        (
            {"pyramid": "1", "merge_thr": 0.3},
            "--pyramid 1 is the single pass; one full pass (--merge-thr 0.3 unused)",
        ),
    ],
)
def test_options_that_add_nothing_are_dropped_with_a_warning_naming_them(capsys, options, warning):
    from freebies.detect import multiscale_infer

    multi = multiscale_infer(Stub(128), {"image_size": 128, "small_box_side": None}, **options)
    assert bool(multi) == ("pyramid" in options and options["pyramid"] != "1")
    assert capsys.readouterr().err == f"freebies: warning: {warning}\n"
