"""The trick records (one per trick, beside its function) against the per-task configs, the
steps and docs/tricks.md: a forgotten key, a wrong type, a trick the step never calls or a
stale docs table each fail here."""

from __future__ import annotations

import json
import re
import types
import typing
from pathlib import Path

import pytest
import torch

from fakedata import write_idx
from freebies import catalog, config
from freebies.catalog import TRICKS
from freebies.cli import main
from freebies.errors import UsageError

DOCS = Path(__file__).resolve().parents[1] / "docs" / "tricks.md"
# Keys of the task sections that are settings of the model or the run, not of a trick.
NOT_TRICKS = {"det.fpn_width", "det.head_convs", "det.score_thresh", "det.detections"}


def key_types(task: str) -> dict[str, type]:
    """Every key of `task`'s config with the plain type it holds (Optional unwrapped)."""
    out = {}

    def walk(cls: type, prefix: str) -> None:
        for name, tp in typing.get_type_hints(cls).items():
            if name == "task":
                continue
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if typing.get_origin(tp) in (typing.Union, types.UnionType):
                tp = args[0]
            if hasattr(tp, "__dataclass_fields__"):
                walk(tp, f"{prefix}{name}.")
            else:
                out[f"{prefix}{name}"] = typing.get_origin(tp) or tp

    walk(config.CONFIGS[task], "")
    return out


RESOLVED = {"det.random_shapes_scale": "det.random_shapes"}


@pytest.mark.parametrize("trick", TRICKS, ids=lambda t: t.name)
def test_every_record_names_keys_of_its_tasks_with_their_types(trick):
    assert trick.tasks and set(trick.tasks) <= {"classify", "detect"}
    for task in trick.tasks:
        types = key_types(task)
        for key in trick.keys:
            assert key.name in types, f"{trick.name}: {key.name} is not a {task} key"
            assert types[key.name] is key.type, f"{key.name}: {types[key.name]} vs {key.type}"
        assert set(trick.on) <= set(types)
        # With a validation split, as in an ablation: early stopping needs one.
        recipe = "baseline" if task == "classify" else "detect"
        cfg = config.load(recipe, {"data.val_split": 0.1, **trick.on})
        flat = config.flatten(config.to_dict(cfg))
        assert all(flat[k] == v for k, v in trick.on.items() if k not in RESOLVED)
        # a relative setting is written as what it stands for (config.resolve_shapes)
        assert all(flat[k] is None and flat[RESOLVED[k]] for k in trick.on.keys() & RESOLVED)


@pytest.mark.parametrize("task", ["classify", "detect"])
def test_every_task_section_key_belongs_to_a_trick(task):
    """aug.*, loss.*, distill.*, ema.* and det.* are the tricks' sections: a key there that no
    record names is a trick nobody validates or documents."""
    owned = {k.name for t in catalog.for_task(task) for k in t.keys}
    sections = ("aug.", "loss.", "distill.", "ema.", "det.")
    orphans = [k for k in key_types(task) if k.startswith(sections) and k not in owned]
    assert not set(orphans) - NOT_TRICKS, orphans


def test_a_range_is_checked_from_the_record_with_the_value_in_the_message():
    with pytest.raises(UsageError, match=r"aug\.cutout=-2 must be >= 0 \(the square's side"):
        config.load("baseline", {"aug.cutout": -2})
    with pytest.raises(UsageError, match=r"det\.crop_min_scale=0.0 must be in \(0, 1\]"):
        config.load("detect", {"det.crop_min_scale": 0.0})
    with pytest.raises(UsageError, match=r"aug\.erasing_value='zeros' .*did you mean 'zero'"):
        config.load("baseline", {"aug.erasing_value": "zeros"})
    with pytest.raises(UsageError, match=r"positive multiple of 32"):
        config.load("detect", {"det.random_shapes": [100]})
    with pytest.raises(UsageError, match=r"aug\.switch_prob needs one non-negative weight"):
        config.load("baseline", {"aug.mixup": 0.2, "aug.switch_prob": [1.0, 1.0]})


@pytest.mark.parametrize("task", ["classify", "detect"])
def test_builders_give_nothing_at_the_plain_defaults_and_a_callable_when_on(task):
    base = config.flatten(config.to_dict(config.CONFIGS[task]()))
    defaults_on = {"crop_flip"}  # the classification defaults crop and flip
    assert set(catalog.built(task, base)) <= defaults_on
    for t in catalog.for_task(task):
        if t.build is not None:
            cfg = config.resolve_shapes(config.apply(config.CONFIGS[task](), t.on))
            assert callable(t.build(config.flatten(config.to_dict(cfg)))), t.name


def evaluated_weights(out: Path) -> dict[str, torch.Tensor]:
    """The weights evaluation scores: the EMA's when it is on."""
    raw = torch.load(out / "last.pt", weights_only=True)
    return raw.get("ema") or raw["model"]


# Tricks that act outside training (tta, early stopping), need what a unit test lacks (a
# teacher, CUDA) or are on in the baseline (crop and flip, weight decay).
NOT_IN_STEP = {"tta", "early_stopping", "sync_bn", "distillation", "crop_flip", "weight_decay"}
STEP_TRICKS = [t for t in TRICKS if "classify" in t.tasks and t.name not in NOT_IN_STEP]


@pytest.mark.slow
def test_every_classification_trick_changes_what_trains(tmp_path, one_thread):
    """Six steps with each trick's on-setting train other weights than the baseline: a trick
    whose record is not wired into the step (or the model, optimizer or schedule) fails."""
    write_idx(tmp_path / "d", n_train=64, n_test=32)

    def run(name: str, sets: dict) -> dict[str, torch.Tensor]:
        plain = ["train.precision=fp32", "aug.crop_padding=0"]
        argv = ["train", "--recipe", "baseline", "--data", f"fashion-mnist:{tmp_path / 'd'}"]
        argv += ["--out", str(tmp_path / name), "--epochs", "3", "--batch-size", "32"]
        argv += ["--model", "resnet20", *[a for p in plain for a in ("--set", p)]]
        for k, v in sets.items():
            argv += ["--set", f"{k}={json.dumps(v)}"]
        assert main(argv) == 0
        return evaluated_weights(tmp_path / name)

    def unchanged(w: dict[str, torch.Tensor]) -> bool:
        return w.keys() == base.keys() and all(torch.equal(base[k], w[k]) for k in w)

    base = run("base", {})
    same = [t.name for t in STEP_TRICKS if unchanged(run(t.name, t.on))]
    assert not same, f"these tricks changed nothing: {same}"


def test_the_docs_table_is_the_records_table():
    text = DOCS.read_text()
    start, end = "<!-- tricks table: `freebies tricks --markdown` -->\n", "<!-- end of table -->"
    assert start in text and end in text, "docs/tricks.md lost its generated table"
    table = text.split(start, 1)[1].split(end, 1)[0]
    assert table == catalog.markdown_table(), "run `freebies tricks --markdown` into the table"


# The detection bag of freebies: each says when it helps, from a committed measurement.
DETECTION_BAG = ("det_mixup", "det_label_smoothing", "det_expand", "det_crop",
                 "det_color_jitter", "det_random_shapes", "cosine")  # fmt: skip


def test_the_detection_bag_says_when_it_helps_and_names_where_that_was_measured(capsys):
    root = DOCS.parents[1]
    for t in TRICKS:
        if t.name in DETECTION_BAG:
            pages = re.findall(r"docs/results/[\w./-]*\w", t.advice)
            assert pages, f"{t.name}: its advice names no results page"
            missing = [p for p in pages if not (root / p).exists()]
            assert not missing, f"{t.name}: {missing} do not exist"
    assert main(["tricks"]) == 0
    assert capsys.readouterr().out.count(" when: ") >= len(DETECTION_BAG)


def test_tricks_command_lists_all_and_json_round_trips(capsys):
    assert main(["tricks"]) == 0
    out = capsys.readouterr().out
    for t in TRICKS:
        assert t.name in out
    assert main(["tricks", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [t["name"] for t in listed] == [t.name for t in TRICKS]
    assert listed[0]["keys"][0] == {
        "key": "sched.warmup_epochs",
        "type": "float",
        "range": "[0, inf)",
        "choices": [],
    }


def test_schedule_command_prints_the_recipe_curve(tmp_path, capsys):
    png = tmp_path / "lr.png"
    args = [
        "schedule",
        "--recipe",
        "baseline",
        "--steps-per-epoch",
        "10",
        "--set",
        "train.epochs=4",
        "--set",
        "sched.warmup_epochs=1",
        "--plot",
        str(png),
    ]
    assert main(args) == 0
    out = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: float(line.split()[2]) for line in out[2:6]}
    # warmup from 0 to 0.1 over epoch 0, then LR / 10 at 50% (step 20) and 75% (step 30)
    assert rows == {"0": 0.0, "1": 0.1, "2": pytest.approx(0.01), "3": pytest.approx(0.001)}
    assert png.stat().st_size > 1000


def test_bench_tricks_runs_and_writes_its_table(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "tricks", "--batch", "8", "--repeats", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.with_suffix(".json").read_text())
    names = [r["trick"] for r in result["rows"]]
    assert names == [
        "crop+flip",
        "cutout",
        "random_erasing",
        "mixup",
        "cutmix",
        "ricap",
        "autoaugment",
    ]
    assert all(r["ours_ms"] > 0 and r["reference_ms"] > 0 for r in result["rows"])
    assert "| ricap |" in printed and out.with_suffix(".md").read_text().startswith("# Batch")


@pytest.mark.slow
def test_every_detection_trick_changes_what_trains(tmp_path, one_thread):
    """The same check on the detector: two steps with each det_* trick's on-setting."""
    from golden import write_data

    _, coco = write_data(tmp_path)

    def run(name: str, sets: dict) -> dict[str, torch.Tensor]:
        plain = [
            "train.precision=fp32",
            "det.hflip=false",
            "data.image_size=64",
            "det.fpn_width=8",
            "det.head_convs=1",
            "sched.warmup_epochs=0",
        ]
        argv = ["detect", "train", "--data", f"coco:{coco}", "--out", str(tmp_path / name)]
        argv += ["--epochs", "1", "--batch-size", "8", *[a for p in plain for a in ("--set", p)]]
        for k, v in sets.items():
            argv += ["--set", f"{k}={json.dumps(v)}"]
        assert main(argv) == 0
        return evaluated_weights(tmp_path / name)

    base = run("base", {})
    # These boxes are small for their images: no crop of at least 0.3 of the side reaches IoU
    # 0.1 with one (the SSD crop then keeps the image whole), so the crop is tested at 0.1.
    # Random shapes' 0.75-1.25 x 64 px is 64 px alone, so it is tested at 1.5-2 (96, 128 px).
    extra = {
        "det_crop": {"det.crop_min_scale": 0.1},
        "det_random_shapes": {"det.random_shapes_scale": [1.5, 2]},
    }
    same = []
    for t in TRICKS:
        if t.tasks == ("detect",):
            w = run(t.name, {**t.on, **extra.get(t.name, {})})
            same += [t.name] if all(torch.equal(base[k], w[k]) for k in w) else []
    assert not same, f"these tricks changed nothing: {same}"
