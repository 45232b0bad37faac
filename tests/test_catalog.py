import json

import pytest

from freebies import config
from freebies.cli import main
from freebies.tricks.catalog import TRICKS


@pytest.mark.parametrize("trick", TRICKS, ids=lambda t: t.name)
def test_every_trick_names_real_keys_and_a_valid_on_setting(trick):
    keys = set(config.flatten(config.to_dict(config.ClassifyConfig())))
    assert set(trick.keys) <= keys, set(trick.keys) - keys
    assert set(trick.on) <= keys
    # With a validation split, as in an ablation: early stopping needs one, the others ignore it.
    assert trick.tasks and set(trick.tasks) <= {"classify", "detect"}
    recipe = "baseline" if "classify" in trick.tasks else "detect"
    cfg = config.load(recipe, {"data.val_split": 0.1, **trick.on})
    flat = config.flatten(config.to_dict(cfg))
    for key, value in trick.on.items():
        assert flat[key] == value


def test_tricks_command_lists_all_and_json_round_trips(capsys):
    assert main(["tricks"]) == 0
    out = capsys.readouterr().out
    for t in TRICKS:
        assert t.name in out
    assert main(["tricks", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [t["name"] for t in listed] == [t.name for t in TRICKS]


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
