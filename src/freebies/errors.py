"""The one exception type for mistakes a person can fix (bad data, bad recipe, bad flag).

The CLI prints its message as a single line and exits with code 2; everything else is a bug
and keeps its traceback.
"""


class UsageError(Exception):
    """Bad input: the message says what is wrong and what to do about it."""


def nearest(word: str, choices: list[str]) -> str:
    """A ' (did you mean X?)' hint naming the closest valid choice, or '' if none is close."""
    import difflib

    match = difflib.get_close_matches(word, choices, n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


_WARNED: set[str] = set()


def warn(message: str) -> None:
    """One 'freebies: warning: ...' line on stderr: once per process for the same message
    (a grid loads a recipe per run), and only on rank 0 under torchrun."""
    import os
    import sys

    if message not in _WARNED and os.environ.get("RANK", "0") == "0":
        _WARNED.add(message)
        print(f"freebies: warning: {message}", file=sys.stderr, flush=True)
