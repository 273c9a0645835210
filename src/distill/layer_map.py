"""Which teacher layer each student layer learns from (or is copied from). Used by weight inheritance
and by the feature losses, so the two always agree."""

from __future__ import annotations


def uniform_layer_map(num_student: int, num_teacher: int) -> list[int]:
    """Teacher layer (1-based, as in ``hidden_states``) for each student layer 1..S.

    Student layer ``i`` maps to teacher layer ``round(i * T / S)`` ("every k-th layer", ending on the last
    teacher layer): 3 of 12 -> [4, 8, 12]; 2 of 6 -> [3, 6].
    """
    if num_student <= 0 or num_teacher <= 0:
        raise ValueError("layer counts must be positive")
    if num_student > num_teacher:
        raise ValueError(f"a {num_student}-layer student cannot map uniformly onto {num_teacher} "
                         "teacher layers")
    # round half up (not Python's half-to-even) so the spacing stays even: 4 of 10 -> [3, 5, 8, 10]
    return [(2 * i * num_teacher + num_student) // (2 * num_student) for i in range(1, num_student + 1)]


def _last_k(spec: object) -> int | None:
    """``k`` of a last-k spec (``{last: 3}`` or ``"last3"``), None for any other spec."""
    if isinstance(spec, dict) and set(spec) == {"last"}:
        k = spec["last"]
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"layer_map {{last: {k!r}}}: k must be a positive integer")
        return k
    if isinstance(spec, str) and spec.startswith("last") and spec[4:].isdigit():
        k = int(spec[4:])
        if k < 1:
            raise ValueError(f"layer_map {spec!r}: k must be a positive integer")
        return k
    return None


def check_layer_map_spec(spec: object) -> None:
    """Reject a spec that can never be a layer map (checked before the models' depths are known)."""
    if spec is None or spec in ("uniform", "last") or _last_k(spec) is not None:
        return
    if isinstance(spec, dict):
        if all(not isinstance(v, bool) and isinstance(v, int) for v in spec.values()) and all(
            isinstance(k, int) or (isinstance(k, str) and k.isdigit()) for k in spec
        ):
            return
    elif isinstance(spec, list):
        if all(isinstance(i, (list, tuple)) and len(i) == 2 for i in spec):
            return
    raise ValueError(
        f"layer_map: {spec!r} is not allowed; use uniform, last, last-k ({{last: 3}} or last3), "
        "[[s, t], ...] or {s: t}"
    )


def resolve_layer_map(
    spec: str | list[list[int]] | dict[int, int] | None,
    num_student: int,
    num_teacher: int,
) -> list[tuple[int, int]]:
    """Normalise a layer-map spec to (student_index, teacher_index) pairs over ``hidden_states`` indices
    (0 = embeddings, i = output of layer i).

    - ``uniform`` (default; PKD-Skip, TinyBERT): every student layer to a uniformly spaced teacher layer,
      ending on the last (:func:`uniform_layer_map`);
    - ``last``: last to last;
    - last-k, ``{last: k}`` or ``"lastk"`` (PKD-Last): the student's top k layers to the teacher's top k,
      in order: student ``S-k+i`` to teacher ``T-k+i`` for i = 1..k (``{last: 3}``, 3 of 12: 1-10, 2-11,
      3-12);
    - a list of ``[student, teacher]`` pairs or a mapping ``{student: teacher}``: explicit.
    """
    if spec is None or spec == "uniform":
        return list(zip(range(1, num_student + 1), uniform_layer_map(num_student, num_teacher)))
    if spec == "last":
        return [(num_student, num_teacher)]
    k = _last_k(spec)
    if k is not None:
        if k > min(num_student, num_teacher):
            raise ValueError(
                f"layer_map last-{k}: the student has {num_student} and the teacher {num_teacher} layers; "
                f"use k <= {min(num_student, num_teacher)}"
            )
        return [(num_student - k + i, num_teacher - k + i) for i in range(1, k + 1)]
    if isinstance(spec, dict):
        pairs = [(int(s), int(t)) for s, t in spec.items()]
    elif isinstance(spec, list):
        pairs = []
        for item in spec:
            if not (isinstance(item, (list, tuple)) and len(item) == 2):
                raise ValueError(f"layer_map item {item!r} must be a [student_layer, teacher_layer] pair")
            pairs.append((int(item[0]), int(item[1])))
    else:
        raise ValueError(
            f"layer_map {spec!r} must be 'uniform', 'last', last-k ({{last: k}} or 'lastk'), a list of pairs "
            "or a mapping"
        )
    for s, t in pairs:
        if not 0 <= s <= num_student:
            raise ValueError(f"layer_map: student layer {s} is out of range 0..{num_student}")
        if not 0 <= t <= num_teacher:
            raise ValueError(f"layer_map: teacher layer {t} is out of range 0..{num_teacher}")
    return pairs
