"""One record per trick, defined beside the trick's function: its recipe keys with their types
and ranges, the rules across keys, the builder of the callable a training step calls, the
tasks it serves, its paper and its one-line card.

`freebies.catalog` collects the records; `freebies tricks`, the recipe validation
(`freebies.config.validate`), `freebies ablate`'s trick names and the table in docs/tricks.md
all come from them. Records take and give plain values (a flat `{"aug.mixup": 0.2, ...}`
mapping of the resolved recipe), so this library layer never imports the recipe config.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from freebies.errors import nearest

Settings = Mapping[str, Any]  # the resolved recipe, flat: "section.key" -> value
Rule = tuple[bool, str]  # (holds, what to change when it does not)


@dataclass(frozen=True)
class Key:
    """One recipe key of a trick: its type and the values it may take.

    `range` is an interval such as "[0, 1)" or "(0, inf)", checked on the value (on each item
    of a list or pair); `choices` lists the allowed strings; `note` ends the error message.
    """

    name: str
    type: type
    range: str = ""
    choices: tuple[str, ...] = ()
    note: str = ""

    def rule(self, value: Any) -> Rule:
        """Whether `value` is allowed, and the one-line message when it is not."""
        if self.choices:
            hint = nearest(str(value), list(self.choices))
            return value in self.choices, (
                f"{self.name}={value!r} is not one of {', '.join(self.choices)}{hint}"
            )
        if not self.range or value is None or isinstance(value, bool):
            return True, ""
        lo, hi, lo_open, hi_open = parse_range(self.range)
        items = value if isinstance(value, (list, tuple)) else [value]
        ok = all(
            (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi) for v in items
        )
        note = f" ({self.note})" if self.note else ""
        return ok, f"{self.name}={value!r} must be {describe(self.range)}{note}"


@dataclass(frozen=True)
class Trick:
    """A trick: what switches it on, what it reads, what it builds, where it comes from."""

    name: str
    tasks: tuple[str, ...]  # "classify" (`freebies train`) and/or "detect"
    keys: tuple[Key, ...]  # the recipe keys that control it
    on: dict[str, Any] = field(default_factory=dict)  # a documented setting that switches it on
    paper: str = ""
    link: str = ""
    card: str = ""  # one line: what it does
    # Rules across keys (e.g. a range that must be ordered), on the resolved recipe.
    check: Callable[[Settings], list[Rule]] | None = None
    # The callable the step calls, built from the recipe once per run; None when it is off.
    build: Callable[[Settings], Callable[..., Any] | None] | None = None
    advice: str = ""  # when to expect it to help, from what was measured (and where)

    def plain(self) -> dict[str, Any]:
        """The record as JSON-safe data (`freebies tricks --json`)."""
        keys = [
            {"key": k.name, "type": k.type.__name__, "range": k.range, "choices": list(k.choices)}
            for k in self.keys
        ]
        return {
            "name": self.name,
            "tasks": list(self.tasks),
            "keys": keys,
            "on": self.on,
            "paper": self.paper,
            "link": self.link,
            "card": self.card,
            "advice": self.advice,
        }


def parse_range(text: str) -> tuple[float, float, bool, bool]:
    """ "[0, 1)" -> (0.0, 1.0, False, True): the bounds and whether each is open."""
    lo, hi = (p.strip() for p in text[1:-1].split(","))
    return float(lo), float(hi), text[0] == "(", text[-1] == ")"


def describe(text: str) -> str:
    """An interval in words: "[0, inf)" -> ">= 0", "(0, 1]" -> "in (0, 1]"."""
    _, hi, lo_open, _ = parse_range(text)
    if math.isinf(hi):
        return f"{'>' if lo_open else '>='} {text[1:-1].split(',')[0].strip()}"
    return f"in {text}"


def when(value: Any, make: Callable[[], Callable[..., Any]]) -> Callable[..., Any] | None:
    """A builder's usual shape: the callable when the switch `value` is on, else None."""
    return make() if value else None
