"""``distill methods``: every registered loss with the signal it reads, its defaults, citation and formula;
``distill methods NAME``: its docstring and a recipe snippet that loads as it is."""

from __future__ import annotations

import inspect
import textwrap
from typing import Any

import yaml


def loss_defaults(name: str) -> dict[str, Any]:
    """The recipe parameters of loss ``name`` with their defaults (context-filled arguments left out)."""
    from distill.losses import loss_parameters

    out = {}
    for key, param in loss_parameters(name).items():
        if param.default is inspect.Parameter.empty:
            continue
        value = param.default
        out[key] = list(value) if isinstance(value, tuple) else value  # YAML has lists, not tuples
    return out


def yaml_snippet(name: str, weight: float = 1.0) -> str:
    """``losses:`` with one flow-style entry for ``name`` holding every default, ready to paste in a
    recipe."""
    entry = {"name": name, "weight": weight, **loss_defaults(name)}
    flow = yaml.safe_dump(entry, default_flow_style=True, sort_keys=False, width=10**6).strip()
    return f"losses:\n  - {flow}\n"


def _needs(cls) -> str:
    if cls.teacher_needs:
        return "teacher " + ", ".join(cls.teacher_needs)
    return "labels" if cls.needs_labels else "student only"


def methods_table(width: int = 110) -> str:
    """One block per registered loss: name and signal, then formula, defaults and citation."""
    from distill.losses import LOSSES

    blocks = []
    indent = " " * 4
    for name, cls in LOSSES.items():
        defaults = ", ".join(f"{k}={v}" for k, v in loss_defaults(name).items()) or "-"
        lines = [f"{name}  [{_needs(cls)}]"]
        for label, text in (("formula", cls.formula), ("defaults", defaults), ("paper", cls.citation)):
            lines += textwrap.wrap(text, width=width, initial_indent=f"{indent}{label + ':':10s}",
                                   subsequent_indent=indent + " " * 10) or [f"{indent}{label}:"]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n\n`distill methods NAME` shows one loss in full, with a recipe snippet.\n"


def method_detail(name: str) -> str:
    from distill.losses import LOSSES

    cls = LOSSES.get(name)  # unknown names raise, listing the valid ones
    doc = inspect.cleandoc(cls.__doc__ or "")
    return (f"{name}: {cls.formula}\n\nreads: {_needs(cls)}"
            f"{'; student ' + ', '.join(cls.student_needs) if cls.student_needs else ''}\n\n{doc}\n\n"
            f"paper: {cls.citation}\n\nrecipe snippet (every default spelled out):\n\n{yaml_snippet(name)}")
