"""The one check every recipe section uses: a failed condition becomes a :class:`RecipeError` that names the
field, the bad value and what is allowed."""

from __future__ import annotations

from typing import Any

from distill._dataclass_io import RecipeError


def check(cond: bool, path: str, value: Any, allowed: str) -> None:
    if not cond:
        raise RecipeError(f"{path}: {value!r} is not allowed; {allowed}")
