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
        raise ValueError(f"a {num_student}-layer student cannot map uniformly onto {num_teacher} teacher layers")
    # round half up (not Python's half-to-even) so the spacing stays even: 4 of 10 -> [3, 5, 8, 10]
    return [(2 * i * num_teacher + num_student) // (2 * num_student) for i in range(1, num_student + 1)]


def resolve_layer_map(
    spec: str | list[list[int]] | dict[int, int] | None,
    num_student: int,
    num_teacher: int,
) -> list[tuple[int, int]]:
    """Normalise a layer-map spec to (student_index, teacher_index) pairs over ``hidden_states`` indices
    (0 = embeddings, i = output of layer i).

    ``uniform`` (default): every student layer to a uniformly spaced teacher layer; ``last``: last to last;
    a list of ``[student, teacher]`` pairs or a mapping ``{student: teacher}``: explicit.
    """
    if spec is None or spec == "uniform":
        return list(zip(range(1, num_student + 1), uniform_layer_map(num_student, num_teacher)))
    if spec == "last":
        return [(num_student, num_teacher)]
    if isinstance(spec, dict):
        pairs = [(int(s), int(t)) for s, t in spec.items()]
    elif isinstance(spec, list):
        pairs = []
        for item in spec:
            if not (isinstance(item, (list, tuple)) and len(item) == 2):
                raise ValueError(f"layer_map item {item!r} must be a [student_layer, teacher_layer] pair")
            pairs.append((int(item[0]), int(item[1])))
    else:
        raise ValueError(f"layer_map {spec!r} must be 'uniform', 'last', a list of pairs or a mapping")
    for s, t in pairs:
        if not 0 <= s <= num_student:
            raise ValueError(f"layer_map: student layer {s} is out of range 0..{num_student}")
        if not 0 <= t <= num_teacher:
            raise ValueError(f"layer_map: teacher layer {t} is out of range 0..{num_teacher}")
    return pairs
