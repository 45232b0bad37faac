from pathlib import Path

import pytest

from freebies import config
from freebies.errors import UsageError


def test_defaults_are_the_plain_baseline():
    cfg = config.ClassifyConfig()
    assert cfg.loss.label_smoothing == 0.0
    assert cfg.sched.warmup_epochs == 0.0
    assert cfg.optim.lr_scaling == "none"


def test_recipe_then_set_override():
    cfg = config.load("baseline", {"optim.lr": 0.2, "train.epochs": 3})
    assert cfg.optim.lr == 0.2 and cfg.train.epochs == 3
    assert cfg.sched.milestones == [0.5, 0.75]
    assert cfg.train.batch_size == 128 and cfg.optim.weight_decay == 5e-4


def test_every_recipe_loads():
    names = config.recipe_names()
    assert {"baseline", "default"} <= set(names)
    for name in names:
        config.load(name)


def test_parse_set_uses_yaml_types():
    got = config.parse_set(
        [
            "optim.lr=0.2",
            "aug.hflip=false",
            "sched.milestones=[0.3, 0.6]",
            "data.limit_train=null",
            "model.name=wrn-16-4",
        ]
    )
    assert got == {
        "optim.lr": 0.2,
        "aug.hflip": False,
        "sched.milestones": [0.3, 0.6],
        "data.limit_train": None,
        "model.name": "wrn-16-4",
    }


def test_int_is_accepted_for_float_and_tuple_round_trips():
    cfg = config.apply(config.ClassifyConfig(), {"optim.lr": 1, "optim.betas": [0.8, 0.9]})
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.betas == (0.8, 0.9)
    assert config.from_dict(config.to_dict(cfg)) == cfg


def test_unknown_key_names_the_nearest():
    with pytest.raises(
        UsageError,
        match=r"unknown key 'optim\.learning_rat'.*'optim\.lr'|"
        r"unknown key 'optim\.lrr'.*'optim\.lr'",
    ):
        config.apply(config.ClassifyConfig(), {"optim.lrr": 0.1})
    with pytest.raises(UsageError, match=r"unknown key 'trian\.epochs'.*'train\.epochs'"):
        config.apply(config.ClassifyConfig(), {"trian.epochs": 3})


def test_wrong_type_names_key_and_type():
    with pytest.raises(UsageError, match=r"train\.epochs must be int, got 'ten'"):
        config.apply(config.ClassifyConfig(), {"train.epochs": "ten"})
    with pytest.raises(UsageError, match=r"aug\.hflip must be bool"):
        config.apply(config.ClassifyConfig(), {"aug.hflip": 1})
    with pytest.raises(UsageError, match=r"sched\.milestones must be a list"):
        config.apply(config.ClassifyConfig(), {"sched.milestones": 0.5})


def test_section_cannot_be_set_to_a_value():
    with pytest.raises(UsageError, match=r"optim is a section"):
        config.apply(config.ClassifyConfig(), {"optim": 3})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"train.epochs": 0}, r"train\.epochs must be > 0"),
        ({"train.batch_size": -1}, r"train\.batch_size must be > 0"),
        ({"loss.label_smoothing": 1.0}, r"label_smoothing=1.0 must be in \[0, 1\)"),
        ({"sched.decay": "cosin"}, r"sched\.decay='cosin' is not one of .*did you mean 'cosine'"),
        ({"sched.milestones": [50, 75]}, r"milestones are fractions"),
        ({"data.val_split": 1.5}, r"val_split must be in \[0, 1\)"),
    ],
)
def test_impossible_values_are_refused(overrides, message):
    with pytest.raises(UsageError, match=message):
        config.load("baseline", overrides)


def test_unknown_recipe_lists_choices():
    with pytest.raises(UsageError, match=r"unknown recipe 'baselin'.*did you mean 'baseline'"):
        config.find_recipe("baselin")


def test_bad_yaml_recipe(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: [0.1\n")
    with pytest.raises(UsageError, match=r"bad\.yaml is not valid YAML near line"):
        config.load(str(bad))
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(UsageError, match=r"must hold a mapping"):
        config.load(str(listed))


def test_exponent_without_dot_is_a_float():
    # YAML 1.1 reads 1e-3 as a string; people type it that way on the command line.
    cfg = config.apply(config.ClassifyConfig(), config.parse_set(["optim.lr=1e-3"]))
    assert cfg.optim.lr == 0.001
    with pytest.raises(UsageError, match=r"optim\.lr must be float, got 'fast'"):
        config.apply(config.ClassifyConfig(), {"optim.lr": "fast"})


# --------------------------------------------------------------------------------------------
# One config per task: a shared core, then each task's own sections


def test_each_task_has_its_own_sections_and_the_core_is_shared():
    clf, det = config.to_dict(config.ClassifyConfig()), config.to_dict(config.DetectConfig())
    core = {"task", "data", "model", "optim", "sched", "ema", "train"}
    assert clf.keys() == core | {"aug", "loss", "distill"} and clf["task"] == "classify"
    assert det.keys() == core | {"det"} and det["task"] == "detect"
    assert clf["optim"] == det["optim"] and clf["sched"] == det["sched"]
    assert "tta" in clf["train"] and "tta" not in det["train"]
    assert "test_split" in det["data"] and "test_split" not in clf["data"]
    assert "backbone_weights" in det["model"] and "acnet" not in det["model"]


def test_a_key_of_the_other_task_is_an_unknown_key_with_a_did_you_mean():
    with pytest.raises(UsageError, match=r"unknown key 'aug.mixup'.*did you mean 'det.mixup'"):
        config.load("detect", {"aug.mixup": 0.2})
    with pytest.raises(UsageError, match=r"unknown key 'det.mixup'.*did you mean 'aug.mixup'"):
        config.load("baseline", {"det.mixup": 1.5})
    with pytest.raises(UsageError, match=r"unknown key 'train.tta'"):
        config.load("detect", {"train.tta": True})
    with pytest.raises(UsageError, match=r"train.precision='fp64' is not one of auto, fp32, bf16"):
        config.load("detect", {"train.precision": "fp64"})


def test_a_recipe_is_loaded_as_its_own_task_and_refused_as_another():
    assert isinstance(config.load("detect"), config.DetectConfig)
    assert isinstance(config.load("baseline"), config.ClassifyConfig)
    with pytest.raises(UsageError, match=r"detect recipe, not a classify one.*freebies detect"):
        config.load("detect", task="classify")
    with pytest.raises(UsageError, match=r"these settings are for detect"):
        config.apply(config.DetectConfig(), config.to_dict(config.ClassifyConfig()))


FIXTURES = Path(__file__).parent / "data"


@pytest.mark.parametrize(
    ("fixture", "task", "dropped"),
    [
        (
            "format1_classify/config.yaml",
            "classify",
            {"det", "data.test_split", "model.backbone_weights"},
        ),
        (
            "format1_detect.yaml",
            "detect",
            {
                "aug",
                "loss",
                "distill",
                "train.tta",
                "train.tta_shift",
                "model.norm",
                "model.init",
                "model.zero_init_residual",
                "model.dropout",
                "model.acnet",
                "model.acnet_side_gamma",
                "model.acnet_square_gamma",
            },
        ),
    ],
)
def test_a_format1_config_yaml_migrates_to_its_task(fixture, task, dropped):
    """Written by the code before per-task configs (tests/golden.py): every section of both
    tasks, no task key. It loads as its task's config, every value it trained with kept."""
    old = config.read_yaml(FIXTURES / fixture)
    assert "task" not in old and {"aug", "det"} <= old.keys()
    cfg = config.from_dict(old, task)
    assert cfg.task == task
    new = config.flatten(config.to_dict(cfg))
    flat_old = config.flatten(old)
    for key, value in flat_old.items():
        if key in new:
            assert new[key] == value or list(new[key]) == value, key
    gone = set(flat_old) - set(new)

    def within(key: str, section: str) -> bool:
        return key == section or key.startswith(section + ".")

    assert all(any(within(k, d) for d in dropped) for k in gone), gone
    assert all(any(within(k, d) for k in gone) for d in dropped)
    # the migrated config round-trips as format 2
    assert config.from_dict(config.to_dict(cfg)) == cfg


def test_a_run_shorter_than_its_warmup_warms_up_over_half_of_it(capsys):
    """`--epochs 1` on a recipe with a 1-epoch warmup is a smoke run, not a mistake."""
    cfg = config.load("detect", {"train.epochs": 1})
    assert cfg.sched.warmup_epochs == 0.5
    assert "sched.warmup_epochs=1 is not shorter than the run" in capsys.readouterr().err
    assert config.load("detect", {"train.epochs": 3}).sched.warmup_epochs == 1.0
    with pytest.raises(UsageError, match=r"warmup_epochs=40.0 must be shorter than the run"):
        config.from_dict(
            {**config.to_dict(config.ClassifyConfig()), "sched": {"warmup_epochs": 40}}
        )


def test_a_format1_config_yaml_is_a_recipe_of_either_task():
    """`--recipe RUN/config.yaml` of a run from before per-task configs reruns it."""
    det = config.load(str(FIXTURES / "format1_detect.yaml"), task="detect")
    assert isinstance(det, config.DetectConfig) and det.det.mixup == 1.5
    clf = config.load(str(FIXTURES / "format1_classify" / "config.yaml"))
    assert isinstance(clf, config.ClassifyConfig) and clf.aug.cutmix == 1.0
