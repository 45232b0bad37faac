"""Sliced training (det.slice_*) and tiled inference at the trained scale: boxes stay on their
pixels through a window, cut boxes leave with their labels, ranks draw their own windows, a run
resumes bit-exactly after Ctrl-C and after kill -9, and evaluation never enlarges a tile."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from freebies import checkpoint, detect
from freebies.data.detection import load_detection
from freebies.detection import multiscale
from freebies.detection.slicing import slice_batch, window_boxes
from helpers import run_cli, usage_error
from test_detect import coco_set, tiny

REPO = Path(__file__).resolve().parents[1]


def painted(h: int, w: int, boxes: list[list[int]]) -> torch.Tensor:
    """A uint8 (3, h, w) image, zero but for box k painted as a solid block of value 10 * (k+1)."""
    image = torch.zeros((3, h, w), dtype=torch.uint8)
    for k, (x1, y1, x2, y2) in enumerate(boxes):
        image[:, y1:y2, x1:x2] = 10 * (k + 1)
    return image


def test_boxes_stay_on_their_pixels_through_a_window():
    boxes = [[40, 30, 70, 50], [100, 90, 130, 140], [5, 150, 25, 170]]
    image = painted(180, 200, boxes)
    canvas = torch.zeros((4, 3, 200, 256), dtype=torch.uint8)  # the split's shared canvas
    canvas[:, :, :180, :200] = image
    fitted = torch.tensor([[180, 200]] * 4)
    b = [torch.tensor(boxes, dtype=torch.float32)] * 4
    for seed in range(10):
        g = torch.Generator().manual_seed(seed)
        x, out, keeps = slice_batch(canvas, fitted, b, g, size=64, min_visible=0.0)
        assert x.shape == (4, 3, 64, 64) and x.dtype == torch.float32
        for i in range(4):
            for (x1, y1, x2, y2), k in zip(
                out[i].round().long().tolist(), keeps[i].nonzero()[:, 0].tolist(), strict=True
            ):
                block = x[i, 0, y1:y2, x1:x2]
                assert block.numel() > 0 and (block == 10 * (k + 1)).all()  # the box's pixels
                # and the pixels just outside a box edge that is not the window's are not it
                if x2 < 64:
                    assert (x[i, 0, y1:y2, x2] != 10 * (k + 1)).all()


def test_the_loader_reads_views_for_slices_and_cut_batches_otherwise():
    """Sliced training copies no whole image: the loader hands the step views of each image's
    own region, and the windows cut from them equal those cut from the copied canvas; other
    runs get the batch cut to its shape before the copy, the same pixels as before."""
    canvas = torch.randint(0, 255, (3, 3, 96, 128), dtype=torch.uint8)
    sizes = torch.tensor([[96, 128], [60, 128], [96, 80]])
    split = detect.DetSplit(
        images=canvas,
        shapes=torch.tensor([[96, 128], [64, 128], [96, 96]]),
        boxes=[torch.tensor([[10.0, 10.0, 50.0, 40.0]])] * 3,
        labels=[torch.tensor([0])] * 3,
        scales=torch.ones(3, 4, dtype=torch.float64),
        sizes=sizes,
        truth=[],
        image_ids=[0, 1, 2],
        files=["a", "b", "c"],
    )
    ids = torch.tensor([2, 1])
    views = detect.batch_reader(canvas, split, sliced=True)(ids)
    assert [tuple(v.shape) for v in views] == [(3, 96, 80), (3, 60, 128)]
    assert all(v.untyped_storage().data_ptr() == canvas.untyped_storage().data_ptr() for v in views)
    for full_prob in (0.0, 0.5, 1.0):
        got, want = (
            slice_batch(
                x,
                sizes[ids],
                split.boxes[:2],
                torch.Generator().manual_seed(3),
                size=64,
                full_prob=full_prob,
            )
            for x in (views, canvas[ids])
        )
        assert torch.equal(got[0], want[0]) and all(map(torch.equal, got[1], want[1]))
    cut = detect.batch_reader(canvas, split, sliced=False)(torch.tensor([0, 1]))
    assert torch.equal(cut, canvas[[0, 1]][..., :96, :128])
    assert torch.equal(
        detect.batch_reader(canvas, split, sliced=False)(torch.tensor([1])),
        canvas[[1], :, :64, :128],
    )


def test_a_box_cut_below_the_visible_share_is_dropped_with_its_label():
    boxes = torch.tensor(
        [[0.0, 0.0, 10.0, 10.0], [28.0, 0.0, 40.0, 10.0], [20.0, 20.0, 30.0, 30.0]]
    )
    window = (0, 0, 32, 32)  # box 1 keeps 4 of 12 columns (1/3), box 2 all of it
    kept, keep = window_boxes(boxes, window, 0.5)
    assert keep.tolist() == [True, False, True]
    assert kept.tolist() == [[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]]
    kept, keep = window_boxes(boxes, window, 0.3)
    assert keep.tolist() == [True, True, True] and kept[1].tolist() == [28.0, 0.0, 32.0, 10.0]
    kept, keep = window_boxes(boxes, (12, 12, 44, 44), 0.0)  # 0 and 1 lie wholly outside
    assert keep.tolist() == [False, False, True] and kept.tolist() == [[8.0, 8.0, 18.0, 18.0]]
    # through slice_batch: the keeps filter the labels the same way
    image = painted(32, 64, [[0, 0, 10, 10], [28, 0, 40, 10], [20, 20, 30, 30]])[None]
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        _, out, keeps = slice_batch(image, torch.tensor([[32, 64]]), [boxes], g, size=32)
        u = torch.rand(1, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        x0 = int(u[0, 2] * 33)  # slice_batch's draw: 33 places for 32 px in a 64 px image
        want = window_boxes(boxes, (x0, 0, x0 + 32, 32), 0.5)
        assert torch.equal(keeps[0], want[1]) and torch.equal(out[0], want[0])


def test_a_whole_image_sample_is_shrunk_into_the_window():
    image = painted(100, 200, [[20, 40, 60, 80]])[None]
    boxes = [torch.tensor([[20.0, 40.0, 60.0, 80.0]])]
    x, out, keeps = slice_batch(
        image, torch.tensor([[100, 200]]), boxes, torch.Generator(), size=64, full_prob=1.0
    )
    torch.testing.assert_close(out[0], torch.tensor([[6.4, 12.8, 19.2, 25.6]]))
    assert keeps[0].tolist() == [True] and x[0, :, 32:].abs().sum() == 0  # 64 x 32, padded


def test_windows_placed_around_objects_hold_one_wholly():
    # A sparse frame: three small boxes in a 1000 x 600 image and one longer than the window
    # (never a target: a window inside it would cut it below its visible share); beside it in
    # the batch, an image without boxes, whose windows stay uniform.
    boxes = [[40, 30, 70, 50], [900, 500, 930, 540], [500, 100, 520, 120], [100, 300, 700, 340]]
    image = painted(600, 1000, boxes)
    batch = [image, torch.zeros_like(image)]
    b = [torch.tensor(boxes, dtype=torch.float32), torch.zeros((0, 4))]
    fitted = torch.tensor([[600, 1000]] * 2)
    empty = {0.0: 0, 1.0: 0}
    for seed in range(200):
        for p in empty:
            g = torch.Generator().manual_seed(seed)
            _, _, keeps = slice_batch(batch, fitted, b, g, size=128, min_visible=1.0,
                                      object_prob=p)  # fmt: skip
            empty[p] += not keeps[0].any()
            assert keeps[1].numel() == 0
    # Uniform windows hold a small box wholly in about 4% of draws; placed ones always.
    assert empty[1.0] == 0 and empty[0.0] > 150
    # Off, the windows are the ones drawn before the option existed: the same pixels of a
    # ramp image, and the generator left where 3 draws per image leave it.
    ramp = torch.arange(600 * 1000, dtype=torch.int64).reshape(1, 600, 1000).expand(3, -1, -1)
    ramp = (ramp % 251).to(torch.uint8)
    g0, g1 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    x, _, _ = slice_batch([ramp], fitted[:1], b[:1], g0, size=128, min_visible=0.0)
    u = torch.rand(1, 3, generator=g1, dtype=torch.float64)
    y0, x0 = int(u[0, 1] * 473), int(u[0, 2] * 873)
    assert torch.equal(x[0], ramp[:, y0 : y0 + 128, x0 : x0 + 128].float())
    assert torch.equal(torch.rand(4, generator=g0), torch.rand(4, generator=g1))


def test_two_ranks_draw_different_windows_and_a_seed_draws_the_same():
    image = torch.randint(0, 255, (2, 3, 300, 400), dtype=torch.uint8)
    fitted, boxes = torch.tensor([[300, 400]] * 2), [torch.zeros((0, 4))] * 2

    def windows(seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)  # build.make_training: seed + 1_000_003 * rank
        return slice_batch(image, fitted, boxes, g, size=64)[0]

    assert torch.equal(windows(0), windows(0))
    assert not torch.equal(windows(0), windows(0 + 1_000_003))


def test_slice_settings_are_checked(tmp_path, capsys):
    data = coco_set(tmp_path / "coco")
    for setting, match in (
        ("det.slice_size=50", "det.slice_size=50: the window must be a multiple of 32"),
        ("det.slice_min_visible=1.5", "det.slice_min_visible=1.5 must be in [0, 1]"),
        ("det.slice_scale=0", "det.slice_scale=0.0 must be > 0"),
    ):
        line = usage_error(
            capsys,
            *tiny(f"coco:{data}", tmp_path / "r", "--set", "det.slice_size=32", "--set", setting),
        )
        assert match in line, line
    line = usage_error(
        capsys,
        *tiny(
            f"coco:{data}",
            tmp_path / "r",
            "--set",
            "det.slice_size=32",
            "--set",
            "det.random_shapes=[32]",
        ),
    )
    assert "det.slice_size and det.random_shapes both set the training size" in line


SLICED = (
    "--set",
    "det.slice_size=32",
    "--set",
    "det.slice_full_prob=0.3",
    "--set",
    "ema.decay=0.9",
)


def test_a_sliced_run_resumes_bit_exactly_after_an_interrupt(tmp_path, capsys, monkeypatch):
    from freebies import engine

    data = f"coco:{coco_set(tmp_path / 'coco')}"
    calls = {"n": 0}
    real = engine.any_rank

    def stop_at_step_2(flag: bool, device: torch.device) -> bool:
        calls["n"] += 1
        return real(flag, device) or calls["n"] == 2

    out, ref = tmp_path / "run", tmp_path / "ref"
    monkeypatch.setattr(engine, "any_rank", stop_at_step_2)
    rc, _, _ = run_cli(capsys, *tiny(data, out, *SLICED, batch=4))
    assert rc == 130
    monkeypatch.setattr(engine, "any_rank", real)
    assert run_cli(capsys, "detect", "train", "--resume", str(out))[0] == 0
    assert run_cli(capsys, *tiny(data, ref, *SLICED, batch=4))[0] == 0
    assert_same_run(out, ref)


def assert_same_run(out: Path, ref: Path) -> None:
    a = torch.load(out / "last.pt", weights_only=True)
    b = torch.load(ref / "last.pt", weights_only=True)
    for part in ("model", "ema"):
        assert (a.get(part) is None) == (b.get(part) is None), part
        assert all(torch.equal(a[part][k], b[part][k]) for k in a.get(part) or {}), part
    drop = ("wall_s", "img_per_s")
    rows = [[{k: v for k, v in r.items() if k not in drop} for r in c["metrics"]] for c in (a, b)]
    assert rows[0] == rows[1]


def test_a_sliced_run_resumes_bit_exactly_after_kill_9(tmp_path, capsys):
    data = f"coco:{coco_set(tmp_path / 'coco')}"
    out, ref = tmp_path / "run", tmp_path / "ref"
    argv = [a if a != "2" else "4" for a in tiny(data, out, *SLICED, batch=4)]  # 4 epochs
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "freebies", *argv],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 300  # generous: a pytest-xdist worker may share the cores
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 1:
            break  # epoch 1 is checkpointed; the run is inside epoch 2
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert checkpoint.load(out / "last.pt").epoch >= 1
    rc, _, err = run_cli(capsys, "detect", "train", "--resume", str(out))
    assert rc == 0, err
    ref_argv = [a if a != "2" else "4" for a in tiny(data, ref, *SLICED, batch=4)]
    assert run_cli(capsys, *ref_argv)[0] == 0
    assert_same_run(out, ref)


def test_a_sliced_model_is_evaluated_and_predicts_tiled_at_its_scale(tmp_path, capsys):
    data = coco_set(tmp_path / "coco")
    out = tmp_path / "run"
    assert run_cli(capsys, *tiny(f"coco:{data}", out, *SLICED))[0] == 0
    ckpt = checkpoint.load(out / "last.pt")
    assert ckpt.data["slice"] == {"size": 32, "scale": 1.0} and ckpt.data["image_size"] == 32
    # the test images are held at their own pixels, and no tile is enlarged
    split = load_detection(f"coco:{data}", image_size=128, scale=1.0).test
    assert split.fitted.tolist() == split.sizes.tolist()
    model = detect.load_detector(ckpt)
    seen = []
    forward = model.forward

    def spy(images, *a, **k):
        seen.extend(tuple(im.shape[-2:]) for im in images)
        return forward(images, *a, **k)

    model.forward = spy
    detect.predict(model, split, batch_size=4, infer=detect.sliced_infer(model, 32))
    assert seen and all(max(s) <= 32 for s in seen)
    # a pyramid, asked for, adds tiles of 32 / f px enlarged to 32: SNIP keeps their small boxes
    plain = len(seen)
    seen.clear()
    detect.predict(model, split, batch_size=4, infer=detect.sliced_infer(model, 32, factors=(1, 2)))
    halves = sum(
        len(multiscale.tile_windows(h, w, tile_size=16, overlap=0.2))
        for h, w in split.fitted.tolist()  # the images, not their padded batch shapes
    )
    assert len(seen) == plain + halves and all(max(s) <= 32 for s in seen)
    # eval says how it ran; tiles on top, or a pyramid below 1, are refused in one line
    rc, text, err = run_cli(capsys, "detect", "eval", str(out / "last.pt"))
    assert rc == 0, err
    assert "tiles of 32 px" in text + err
    line = usage_error(capsys, "detect", "eval", str(out / "last.pt"), "--tiles", "2x2")
    assert "trained on 32 px slices" in line
    line = usage_error(capsys, "detect", "eval", str(out / "last.pt"), "--pyramid", "0.5,1")
    assert "give factors of 1 and above" in line
    rc, text, err = run_cli(
        capsys, "detect", "eval", str(out / "last.pt"), "--pyramid", "1,2", "--snip", "16"
    )
    assert rc == 0 and "tiles enlarged 2x (snip 16 px)" in text, err
    # several option sets at once: the same figures as one call each, against the tiled pass
    pyramid = {"pyramid": "1,2", "snip": 16.0}
    both = detect.evaluate_options(out / "last.pt", {"as trained": {}, "pyramid": pyramid})
    alone = detect.evaluate_checkpoint(out / "last.pt", multiscale=pyramid)
    assert both["pyramid"]["map"] == pytest.approx(alone["map"], abs=1e-9)
    assert both["as trained"]["map"] == pytest.approx(alone["single"]["map"], abs=1e-9)
    assert "tiles of 32 px" in both["as trained"]["inference"]
    with pytest.raises(detect.UsageError, match="at least one"):
        detect.evaluate_options(out / "last.pt", {})
    image = next(data.glob("*.png"))
    rc, text, _ = run_cli(
        capsys, "detect", "predict", str(out / "last.pt"), str(image), "-o", str(tmp_path / "pred")
    )
    assert rc == 0 and "a slice-trained model, run as it was trained" in text
    assert (
        json.loads(next((tmp_path / "pred").glob("*.json")).read_text())["detections"] is not None
    )


# --------------------------------------------------------------------------------------------
# Streamed data (data.stream): read from disk per batch, the same pixels as in memory


def test_streamed_splits_give_the_in_memory_pixels(tmp_path):
    from freebies.data.detection import StreamedImages, image_stats

    root = coco_set(tmp_path / "coco")
    memory = load_detection(f"coco:{root}", image_size=96, stream=False)
    streamed = load_detection(f"coco:{root}", image_size=96, stream=True)
    assert isinstance(streamed.train.images, StreamedImages)
    assert streamed.train.images.shape == tuple(memory.train.images.shape)
    for split in ("train", "test"):
        a, b = getattr(memory, split), getattr(streamed, split)
        ids = list(range(len(a)))
        assert torch.equal(a.batch(ids), b.batch(ids)) and torch.equal(a.shapes, b.shapes)
    assert all(
        torch.equal(x, y)
        for x, y in zip(image_stats(memory.train), image_stats(streamed.train), strict=True)
    )
    sub = streamed.train.subset([3, 1])
    assert torch.equal(sub.batch([0, 1]), memory.train.subset([3, 1]).batch([0, 1]))
    # square letterboxes too: a streamed batch has the in-memory batch's shape
    square = load_detection(f"coco:{root}", image_size=100, rect=False, stream=False).train
    streamed_square = load_detection(f"coco:{root}", image_size=100, rect=False, stream=True)
    ids = list(range(4))
    assert torch.equal(streamed_square.train.batch(ids), square.batch(ids))
    # auto: streamed only when the canvases exceed the budget
    small = load_detection(f"coco:{root}", image_size=96, memory_mb=1)
    assert isinstance(small.train.images, torch.Tensor)
    tight = load_detection(f"coco:{root}", image_size=96, memory_mb=0)
    assert isinstance(tight.train.images, StreamedImages)


@pytest.mark.parametrize("extra", [(), SLICED])
def test_a_streamed_run_trains_the_in_memory_weights(tmp_path, capsys, extra):
    data = f"coco:{coco_set(tmp_path / 'coco')}"
    mem, streamed = tmp_path / "memory", tmp_path / "streamed"
    assert run_cli(capsys, *tiny(data, mem, *extra, batch=4))[0] == 0
    flags = ("--set", "data.stream=true", "--set", "data.workers=2")
    assert run_cli(capsys, *tiny(data, streamed, *extra, *flags, batch=4))[0] == 0
    assert_same_run(streamed, mem)
