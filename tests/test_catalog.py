import json

import pytest

from freebies import config
from freebies.cli import main
from freebies.tricks.catalog import TRICKS


@pytest.mark.parametrize("trick", TRICKS, ids=lambda t: t.name)
def test_every_trick_names_real_keys_and_a_valid_on_setting(trick):
    keys = set(config.flatten(config.to_dict(config.Config())))
    assert set(trick.keys) <= keys, set(trick.keys) - keys
    assert set(trick.on) <= keys
    cfg = config.load("baseline", trick.on)
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
