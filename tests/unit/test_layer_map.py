"""Layer maps: which teacher layer each student layer learns from (indices as in ``hidden_states``)."""

from __future__ import annotations

import pytest

from distill.layer_map import resolve_layer_map, uniform_layer_map


@pytest.mark.parametrize(
    ("student", "teacher", "expected"),
    [
        (3, 12, [4, 8, 12]),
        (2, 6, [3, 6]),
        (6, 12, [2, 4, 6, 8, 10, 12]),
        (4, 12, [3, 6, 9, 12]),
        (1, 12, [12]),
        (4, 4, [1, 2, 3, 4]),
        # not a divisor: nearest layer to i * T / S (no .5 ties here, see the report on rounding)
        (5, 6, [1, 2, 4, 5, 6]),
        (5, 12, [2, 5, 7, 10, 12]),
        (3, 8, [3, 5, 8]),
    ],
)
def test_uniform_map_takes_every_kth_layer_ending_on_the_last(
    student: int, teacher: int, expected: list[int]
) -> None:
    assert uniform_layer_map(student, teacher) == expected


def test_uniform_map_is_strictly_increasing_and_in_range() -> None:
    for teacher in range(1, 49):
        for student in range(1, teacher + 1):
            layers = uniform_layer_map(student, teacher)
            assert len(layers) == student
            assert layers[-1] == teacher, (student, teacher, layers)
            assert all(1 <= t <= teacher for t in layers)
            assert all(a < b for a, b in zip(layers, layers[1:])), (student, teacher, layers)


@pytest.mark.parametrize(("student", "teacher"), [(0, 12), (3, 0), (-1, 4), (13, 12)])
def test_uniform_map_rejects_impossible_sizes(student: int, teacher: int) -> None:
    with pytest.raises(ValueError):
        uniform_layer_map(student, teacher)


def test_resolve_uniform_pairs_student_layers_with_teacher_layers() -> None:
    assert resolve_layer_map("uniform", 3, 12) == [(1, 4), (2, 8), (3, 12)]
    assert resolve_layer_map(None, 2, 6) == [(1, 3), (2, 6)]  # uniform is the default


def test_resolve_last() -> None:
    assert resolve_layer_map("last", 3, 12) == [(3, 12)]


def test_resolve_explicit_pairs_keep_order_and_allow_embeddings() -> None:
    assert resolve_layer_map([[0, 0], [1, 4], [3, 12]], 3, 12) == [(0, 0), (1, 4), (3, 12)]
    assert resolve_layer_map([(2, 5)], 3, 12) == [(2, 5)]


def test_resolve_mapping_accepts_string_keys_from_yaml_or_json() -> None:
    assert resolve_layer_map({1: 4, 3: 12}, 3, 12) == [(1, 4), (3, 12)]
    assert resolve_layer_map({"1": "4", "2": 8}, 3, 12) == [(1, 4), (2, 8)]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ([[4, 12]], "student layer 4 is out of range 0..3"),
        ([[-1, 2]], "student layer -1 is out of range 0..3"),
        ([[1, 13]], "teacher layer 13 is out of range 0..12"),
        ({3: -2}, "teacher layer -2 is out of range 0..12"),
    ],
)
def test_resolve_rejects_out_of_range_layers(spec: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_layer_map(spec, 3, 12)  # type: ignore[arg-type]


@pytest.mark.parametrize("spec", [[[1, 2, 3]], [1, 2], [[1]], ["1,4"]])
def test_resolve_rejects_items_that_are_not_pairs(spec: object) -> None:
    with pytest.raises(ValueError, match="pair"):
        resolve_layer_map(spec, 3, 12)  # type: ignore[arg-type]


@pytest.mark.parametrize("spec", ["every_other", 3, 2.5])
def test_resolve_rejects_unknown_specs(spec: object) -> None:
    with pytest.raises(ValueError, match="layer_map"):
        resolve_layer_map(spec, 3, 12)  # type: ignore[arg-type]


def test_uniform_map_of_a_too_deep_student_fails_through_resolve() -> None:
    with pytest.raises(ValueError, match="cannot map uniformly"):
        resolve_layer_map("uniform", 13, 12)


def test_last_k_maps_the_top_layers_in_order() -> None:
    # PKD-Last: the student's top k layers learn from the teacher's top k
    assert resolve_layer_map({"last": 3}, 3, 12) == [(1, 10), (2, 11), (3, 12)]
    assert resolve_layer_map("last2", 3, 12) == [(2, 11), (3, 12)]
    assert resolve_layer_map("last1", 3, 12) == resolve_layer_map("last", 3, 12)
    with pytest.raises(ValueError, match="k <= 3"):
        resolve_layer_map({"last": 4}, 3, 12)


@pytest.mark.parametrize("spec", ["uniform", "last", "last3", {"last": 2}, [[1, 4]], {1: 4}, None])
def test_layer_map_specs_that_are_accepted_before_the_depths_are_known(spec) -> None:
    from distill.layer_map import check_layer_map_spec

    check_layer_map_spec(spec)


@pytest.mark.parametrize("spec", ["every_other", 3, {"last": 0}, "last0", {"first": 2}, [[1, 2, 3]],
                                  {1: True}])
def test_layer_map_specs_that_are_refused(spec) -> None:
    from distill.layer_map import check_layer_map_spec

    with pytest.raises(ValueError, match="layer_map"):
        check_layer_map_spec(spec)
