from pathlib import Path

import pytest

from freebies import config
from freebies.errors import UsageError


def test_defaults_are_the_plain_baseline():
    cfg = config.Config()
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
    cfg = config.apply(config.Config(), {"optim.lr": 1, "optim.betas": [0.8, 0.9]})
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.betas == (0.8, 0.9)
    assert config.from_dict(config.to_dict(cfg)) == cfg


def test_unknown_key_names_the_nearest():
    with pytest.raises(
        UsageError,
        match=r"unknown key 'optim\.learning_rat'.*'optim\.lr'|"
        r"unknown key 'optim\.lrr'.*'optim\.lr'",
    ):
        config.apply(config.Config(), {"optim.lrr": 0.1})
    with pytest.raises(UsageError, match=r"unknown key 'trian\.epochs'.*'train\.epochs'"):
        config.apply(config.Config(), {"trian.epochs": 3})


def test_wrong_type_names_key_and_type():
    with pytest.raises(UsageError, match=r"train\.epochs must be int, got 'ten'"):
        config.apply(config.Config(), {"train.epochs": "ten"})
    with pytest.raises(UsageError, match=r"aug\.hflip must be bool"):
        config.apply(config.Config(), {"aug.hflip": 1})
    with pytest.raises(UsageError, match=r"sched\.milestones must be a list"):
        config.apply(config.Config(), {"sched.milestones": 0.5})


def test_section_cannot_be_set_to_a_value():
    with pytest.raises(UsageError, match=r"optim is a section"):
        config.apply(config.Config(), {"optim": 3})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"train.epochs": 0}, r"train\.epochs must be > 0"),
        ({"train.batch_size": -1}, r"train\.batch_size must be > 0"),
        ({"loss.label_smoothing": 1.0}, r"label_smoothing must be in \[0, 1\)"),
        ({"sched.warmup_epochs": 40, "train.epochs": 10}, r"warmup_epochs=40.* shorter"),
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
    cfg = config.apply(config.Config(), config.parse_set(["optim.lr=1e-3"]))
    assert cfg.optim.lr == 0.001
    with pytest.raises(UsageError, match=r"optim\.lr must be float, got 'fast'"):
        config.apply(config.Config(), {"optim.lr": "fast"})
