"""The one rule for names users give: datasets, models, aliases and class labels.

A dataset or model name becomes a folder or file name (the DVC workspace, the quarantine,
artifact keys) and a URL path segment (the API, the dashboard), so it is checked where it
enters (the command line, every flow before it records a run, registry writes, reference
parsing, the API's path patterns) with this module, before anything is touched. The rule is
deliberately narrow: ASCII letters, digits, ``_``, ``.`` and ``-``, starting with a letter or
digit, so a name can never be ``..``, an absolute path, hold a separator, a NUL, a control
character, shell metacharacters or look-alike unicode. :func:`child_path` is the second
line of defence for code that joins a name onto a folder: the result must resolve strictly
inside that folder.
"""
from __future__ import annotations

import re
from pathlib import Path

# The API's path patterns are these same strings (app/api/schemas.py imports them).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"
ALIAS_PATTERN = r"^[A-Za-z][A-Za-z0-9_.\-]{0,63}$"
# A dataset name is the root of the model names derived from it ("<dataset>-classifier",
# "<dataset>-label-efficiency"), so it is shorter than the longest model name.
DATASET_MAX = 100
CLASS_MAX = 128

_NAME = re.compile(NAME_PATTERN)
_ALIAS = re.compile(ALIAS_PATTERN)
_VERSION = re.compile(r"^[1-9][0-9]{0,9}$")


class InvalidName(ValueError):
    """A user-given name breaks the naming rule; the message says which name and why."""


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_name(value: object, what: str = "name", max_len: int = 128) -> str:
    """``value`` if it is a valid model or dataset name, else :class:`InvalidName`."""
    if not isinstance(value, str) or not _NAME.fullmatch(value) or len(value) > max_len:
        raise InvalidName(
            f"invalid {what} {_shown(value)}: use 1-{max_len} ASCII letters, digits, '_', '.' or '-', "
            "starting with a letter or digit")
    return value


def check_dataset(value: object) -> str:
    return check_name(value, "dataset name", DATASET_MAX)


def check_model(value: object) -> str:
    return check_name(value, "model name")


def check_alias(value: object) -> str:
    if not isinstance(value, str) or not _ALIAS.fullmatch(value):
        raise InvalidName(f"invalid alias {_shown(value)}: use 1-64 ASCII letters, digits, '_', '.' or '-', "
                          "starting with a letter")
    return value


def check_model_ref(ref: object, *, allow: tuple[str, ...] = ()) -> str:
    """A model reference ``NAME``, ``NAME:VERSION`` or ``NAME@ALIAS`` (or one of ``allow``,
    e.g. 'scratch'), with the name and alias checked by the rules above."""
    if isinstance(ref, str) and ref in allow:
        return ref
    if not isinstance(ref, str):
        raise InvalidName(f"invalid model reference {_shown(ref)}")
    name, sep, rest = ref.partition(":")
    if sep:
        if not _VERSION.fullmatch(rest):
            raise InvalidName(f"invalid model reference {_shown(ref)}: the version after ':' must be a number >= 1")
    else:
        name, sep, alias = ref.partition("@")
        if sep:
            check_alias(alias)
    check_model(name)
    return ref


def check_classes(values: list[str] | tuple[str, ...]) -> list[str]:
    """Class names, stripped of surrounding blanks; refuses empty, duplicated, over-long or
    control-character names (a class name becomes a Label Studio choice and a report column)."""
    out: list[str] = []
    for raw in values:
        if not isinstance(raw, str):
            raise InvalidName(f"invalid class name {_shown(raw)}: not a string")
        name = raw.strip()
        if not name:
            raise InvalidName("empty class name in the class list")
        if len(name) > CLASS_MAX or any(ord(c) < 32 or ord(c) == 127 for c in name):
            raise InvalidName(f"invalid class name {_shown(name)}: at most {CLASS_MAX} characters, "
                              "no control characters")
        if name in out:
            raise InvalidName(f"class {name!r} is listed twice")
        out.append(name)
    if not out:
        raise InvalidName("the class list is empty")
    return out


def parse_classes(text: str) -> list[str]:
    """A comma-separated class list as typed on a command line: 'crazing, scratches'."""
    return check_classes(text.split(","))


def child_path(root: Path | str, *parts: str) -> Path:
    """``root`` joined with ``parts``, refused unless it resolves strictly inside ``root``
    (no ``..``, no absolute part, no symlink leading out)."""
    base = Path(root).resolve()
    target = base.joinpath(*parts).resolve()
    if target == base or not target.is_relative_to(base):
        raise InvalidName(f"{'/'.join(parts)!r} does not stay inside {base}")
    return target
