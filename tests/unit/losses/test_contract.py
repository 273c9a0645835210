"""Contract every registered loss must keep (STYLE.md conventions 2 and 10).

The tests are parametrised over ``distill.losses.LOSSES``, so a newly registered loss is tested as soon as it
has an entry in ``EXAMPLES`` below -- and the suite fails, naming the loss, until it has one.

What a loss promises: a finite scalar (or a dict of finite scalars); gradients reach the student's tensors and
its own projector parameters, never the teacher's; zero when student == teacher if ``zero_at_identity``;
never negative; padded positions make no difference; it runs on exactly the fields it declares in
``student_needs`` / ``teacher_needs``; bad recipe parameters are rejected by ``check_params`` with a
``RecipeError`` that names the parameter.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from distill.config import RecipeError
from distill.losses import LOSSES, CELoss, HardKDLoss, KDLoss, LossContext, check_params, loss_parameters
from distill.losses.base import DistillLoss
from distill.losses.divergence import DIVERGENCES, REDUCTIONS, reduce_terms
from distill.outputs import ModelOutputs, SparseLogits

# ----------------------------------------------------------------------------------------------------------
# Per-loss examples: every registered loss needs one
# ----------------------------------------------------------------------------------------------------------

B, L, V = 2, 5, 7  # batch, sequence length, classes / vocabulary
H_S, H_T = 4, 6  # student / teacher widths (different, so projectors get built)
N_S, N_T = 2, 4  # student / teacher layers
HEADS = 2
MASK = [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]  # row 2 has two padded tokens

# student and teacher differ in width and depth (projectors, layer maps)
DISTINCT = LossContext(student_hidden_size=H_S, teacher_hidden_size=H_T, student_num_layers=N_S,
                       teacher_num_layers=N_T, num_classes=V)
# identical architectures, so the student's outputs can literally be the teacher's
IDENTICAL = LossContext(student_hidden_size=H_S, teacher_hidden_size=H_S, student_num_layers=N_S,
                        teacher_num_layers=N_S, num_classes=V)


@dataclass
class Example:
    """How to exercise one registered loss in the contract tests."""

    variants: dict[str, dict[str, Any]]
    """Small parameter sets by id; together they should reach every code path (divergences, poolings)."""
    bad_params: dict[str, list[Any]]
    """For each recipe parameter, values the loss must reject (check_params -> RecipeError naming it)."""
    shapes: tuple[str, ...] = ("classifier", "sequence")
    """Input layouts the loss accepts: ``classifier`` (B, C) rows, ``sequence`` (B, L, ...) with a mask."""
    not_recipe_params: dict[str, str] = field(default_factory=dict)
    """Constructor arguments filled from LossContext by ``build`` (not meant for recipes), with the reason."""
    context: LossContext = DISTINCT
    """Models the loss is built for in the non-identity tests (default: different widths and depths)."""
    min_rows: int = 1
    """Rows a batch needs before the loss has anything to compare (below it: 0 and no gradient, by design;
    the gradient path is then tested with larger batches in the loss family's own test file)."""


EXAMPLES: dict[str, Example] = {
    # image losses (distill.losses.feature): feature_maps are named (B, C, 3, 3) maps stage1..stageN, with
    # H_S / H_T channels, so fitnet builds 1x1-conv projectors; images have no padding (classifier layout)
    "fitnet": Example(
        variants={
            "last-auto": {},
            "pairs-l1": {"layer_map": [["stage1", "stage1"], ["stage2", "stage2"]], "loss": "l1"},
            "mapping-conv": {"layer_map": {"stage2": "stage2"}, "projector": "conv"},
        },
        bad_params={
            "layer_map": ["first", [], {}, [["stage1"]], [[True, "stage1"]], 3],
            "projector": ["linear", None],
            "loss": ["cosine", None],
        },
        shapes=("classifier",),
    ),
    "at": Example(
        variants={"last": {}, "pairs-p4": {"layer_map": [["stage1", 0], ["stage2", -1]], "p": 4}},
        bad_params={"layer_map": ["uniform", [[1, 2, 3]]], "p": [0, -2, "2", True]},
        shapes=("classifier",),
    ),
    "dkd": Example(
        variants={"paper": {}, "T1-alpha0.5-beta2": {"temperature": 1.0, "alpha": 0.5, "beta": 2.0}},
        bad_params={"temperature": [0, -1.0, "4", True], "alpha": [-1.0, "1", None],
                    "beta": [-0.1, "8", False]},
    ),
    "kd": Example(
        variants={
            "forward_kl-T2": {"temperature": 2.0},
            "reverse_kl-T1": {"divergence": "reverse_kl", "temperature": 1.0},
            "symmetric_kl": {"divergence": "symmetric_kl"},
            "jsd-beta0.1": {"divergence": "jsd", "beta": 0.1},
            "soft_ce-elementwise": {"divergence": "soft_ce", "reduction": "elementwise_mean"},
            "forward_kl-sum-noT2": {"reduction": "sum", "scale_by_t2": False, "temperature": 4.0},
            "skew_kl": {"skew": 0.1},
            "skew_reverse_kl": {"divergence": "reverse_kl", "skew": 0.1},
        },
        bad_params={
            "temperature": [0, -1.0, "2", True],  # YAML `temperature: yes` must not become T = 1
            "divergence": ["kl", None],
            "reduction": ["mean", "none"],
            "scale_by_t2": ["yes", 1],
            "beta": [0, 1, 1.5, "0.5"],
            "skew": [-0.1, 1.0, "0.1", True],
            "label_aware": ["swap", None, True],
        },
    ),
    "ce": Example(
        variants={"plain": {}, "label_smoothing": {"label_smoothing": 0.1}},
        bad_params={"label_smoothing": [-0.1, 1.0, "0.1"]},
    ),
    "hard_kd": Example(variants={"default": {}}, bad_params={}),
    # cross-tokenizer (distill.losses.cross_tokenizer): on one tokenizer every trained position is a group;
    # the aligned-group path (teacher groups from a store) has its own tests in test_cross_tokenizer.py
    "alm": Example(
        variants={"tau1": {}, "tau0.5": {"tau": 0.5}},
        bad_params={"tau": [0, -1.0, "1", True]},
        shapes=("sequence",),
    ),
    "hybrid_kl": Example(
        variants={"default": {}, "no-unshared": {"unshared_weight": 0.0}},
        bad_params={"unshared_weight": [-0.5, "1", True]},
        shapes=("sequence",),
    ),
    "hidden": Example(
        variants={
            "mse-uniform": {"loss": "mse"},
            "cosine-uniform": {"loss": "cosine"},
            "mse-meanpool": {"loss": "mse", "pooling": "mean"},
            "cosine-meanpool-last": {"loss": "cosine", "pooling": "mean", "layer_map": "last"},
            "mse-explicit-linear": {"layer_map": [[0, 0], [2, 2]], "projector": "linear"},
            "pkd-cls-normalized": {"pooling": "cls", "normalize": True},
            "normalized-last2": {"normalize": True, "layer_map": {"last": 2}},
            "cosine-cls-last1": {"loss": "cosine", "pooling": "cls", "layer_map": "last1"},
        },
        bad_params={
            "loss": ["l1"],
            "layer_map": ["every_other", 3, {"last": 0}, {"last": True}, "last0"],
            "pooling": ["max", "first"],
            "projector": ["mlp"],
            "normalize": ["yes", 1],
        },
        shapes=("sequence",),
        not_recipe_params={
            "student_hidden_size": "filled from LossContext by build()",
            "teacher_hidden_size": "filled from LossContext by build()",
            "student_num_layers": "filled from LossContext by build()",
            "teacher_num_layers": "filled from LossContext by build()",
        },
    ),
    # embedding-level losses (distill.losses.embedding): (B, D) vectors, so only the classifier layout
    "embedding": Example(
        variants={
            "mse-auto": {"loss": "mse"},
            "cosine-auto": {"loss": "cosine"},
            "mse-linear": {"loss": "mse", "projector": "linear"},
            "cosine-linear": {"loss": "cosine", "projector": "linear"},
        },
        bad_params={"loss": ["l1", None], "projector": ["mlp", True]},
        shapes=("classifier",),
        not_recipe_params={
            "student_hidden_size": "filled from LossContext by build()",
            "teacher_hidden_size": "filled from LossContext by build()",
        },
    ),
    # with B = 2 and the diagonal dropped (include_self: false, the default) each row holds one entry, so the
    # loss is 0 with no gradient by construction; that path (B >= 3) is tested in test_golden_embedding.py
    "affinity": Example(
        variants={
            "include_self": {"include_self": True},
            "include_self-T0.1": {"include_self": True, "temperature": 0.1},
        },
        bad_params={
            "temperature": [0, -0.05, "0.05", True, float("nan")],
            "include_self": ["yes", 1, None],
        },
        shapes=("classifier",),
    ),
    "contrastive": Example(
        variants={
            "default": {},
            "linear-T0.1": {"projector": "linear", "temperature": 0.1},
        },
        bad_params={"temperature": [0, -1.0, "0.05", False], "projector": ["mlp"]},
        shapes=("classifier",),
        not_recipe_params={
            "student_hidden_size": "filled from LossContext by build()",
            "teacher_hidden_size": "filled from LossContext by build()",
        },
    ),
    "similarity_matrix": Example(
        variants={"default": {}, "matryoshka": {"dims": [1, 2]}},
        bad_params={"dims": [[], [0], [2.5], "64", True, 3]},
        shapes=("classifier",),
    ),
    # an anchor and two other rows: B = 2 has no triple (tested with B >= 3 in test_golden_embedding.py)
    "similarity_ranking": Example(
        variants={"default": {}, "wide-margin": {"margin": 0.3}},
        bad_params={"margin": [0, -0.015, "0.015", True, float("nan")]},
        shapes=("classifier",),
        min_rows=3,
    ),
    # bank: store needs a bank read from the teacher-output store before its first call (fit_teacher), which
    # the contract cannot give; it is tested with a fitted bank in test_golden_embedding.py. B = 2 in batch
    # mode leaves each row one neighbour: a one-point distribution, exactly 0
    "neighbourhood": Example(
        variants={"batch": {"bank": "batch"},
                  "batch-linear-T": {"bank": "batch", "projector": "linear", "temperature": 0.1,
                                     "teacher_temperature": 0.2}},
        bad_params={"temperature": [0, -0.05, "0.05", True], "teacher_temperature": [0, -1.0, "0.1", False],
                    "bank": ["queue", None, 1], "bank_size": [-1, 2.5, "100", True],
                    "projector": ["pca", "mlp", None]},
        shapes=("classifier",),
        not_recipe_params={
            "student_hidden_size": "filled from LossContext by build()",
            "teacher_hidden_size": "filled from LossContext by build()",
        },
        min_rows=3,
    ),
    "crd": Example(
        variants={
            "default": {},
            "small-queue": {"dim": 8, "queue_size": 3, "temperature": 0.1},
            "in-batch-only": {"dim": 5, "queue_size": 0},
        },
        bad_params={
            "dim": [0, -4, 2.5, "128", True],
            "temperature": [0, -0.07, "0.07", True],
            "queue_size": [-1, 16.0, "4096", True],
        },
        shapes=("classifier",),
        not_recipe_params={
            "student_hidden_size": "filled from LossContext by build()",
            "teacher_hidden_size": "filled from LossContext by build()",
        },
    ),
    # self-attention losses (distill.losses.attention / relations) read qkv: per layer (q, k, v), each
    # (B, HEADS, L, width // HEADS); head widths differ between student (2) and teacher (3)
    "attention_mse": Example(
        variants={
            "scores-uniform": {},
            "probs-last": {"on": "probs", "layer_map": "last"},
            "scores-mean-heads-explicit": {"head_mode": "mean", "layer_map": [[1, 1], [2, 2]]},
        },
        bad_params={
            "layer_map": ["every_other", 3, {"last": 0}],
            "on": ["logits", None],
            "head_mode": ["average", True],
        },
        shapes=("sequence",),
        not_recipe_params={
            "student_num_layers": "filled from LossContext by build()",
            "teacher_num_layers": "filled from LossContext by build()",
        },
    ),
    "minilm": Example(
        variants={
            "last-last": {},
            "attention-only": {"value_relation": False},
            "layer-numbers": {"teacher_layer": 1, "student_layer": 1},
        },
        bad_params={
            "teacher_layer": [0, -1, "first", 2.5, True],
            "student_layer": [0, "middle"],
            "value_relation": ["yes", 1],
        },
        shapes=("sequence",),
        not_recipe_params={
            "student_num_layers": "filled from LossContext by build()",
            "teacher_num_layers": "filled from LossContext by build()",
        },
    ),
    "minilm_v2": Example(
        variants={
            "qq-kk-vv": {"relation_heads": 2},
            "one-head-qk-vv": {"relation_heads": 1, "relations": ["qk", "vv"]},
            "layer-numbers": {"relation_heads": 2, "teacher_layer": 1, "student_layer": 1,
                              "relations": ["vv"]},
        },
        bad_params={
            "relation_heads": [0, -2, 2.0, "48", True],
            "relations": [[], ["qq", "qq"], ["xy"], "qq"],
            "teacher_layer": [0, "first"],
            "student_layer": [-1, None],
        },
        shapes=("sequence",),
        not_recipe_params={
            "student_hidden_size": "filled from LossContext by build()",
            "teacher_hidden_size": "filled from LossContext by build()",
            "student_num_layers": "filled from LossContext by build()",
            "teacher_num_layers": "filled from LossContext by build()",
        },
    ),
    "trg": Example(
        variants={
            "default": {},
            "inner-local-only": {"global_weight": 0.0},
            # tau annealing and token sampling change the value from call to call: see
            # test_attention_relations.py
            "k2-layers-linear": {"k": 2, "tau": 0.2, "teacher_layer": 1, "student_layer": 1,
                                 "projector": "linear"},
            "global-only-sigma": {"inner_weight": 0.0, "local_weight": 0.0, "sigma": 0.5},
        },
        bad_params={
            "teacher_layer": [-1, "first", True],
            "student_layer": [2.5],
            "k": [0, 2.0, "8"],
            "sigma": [0, -1.0, "1"],
            "tau": [0, "0.1", True],
            "tau_start": [0, "1"],
            "anneal_steps": [-1, 1.5],
            "tokens_per_example": [-1, "16"],
            "inner_weight": [-1.0, "1"],
            "local_weight": [-0.5],
            "global_weight": [None],
            "projector": ["mlp"],
        },
        shapes=("sequence",),
        not_recipe_params={
            "student_hidden_size": "filled from LossContext by build()",
            "teacher_hidden_size": "filled from LossContext by build()",
            "student_num_layers": "filled from LossContext by build()",
            "teacher_num_layers": "filled from LossContext by build()",
        },
    ),
}


def example_for(name: str) -> Example:
    if name not in EXAMPLES:
        pytest.fail(
            f"loss {name!r} is registered but has no EXAMPLES entry in tests/unit/losses/test_contract.py; "
            "add one (small params per variant, bad values per parameter) so the contract tests cover it"
        )
    return EXAMPLES[name]


NAMES = list(LOSSES)
VARIANTS = [
    pytest.param(name, vid, params, id=f"{name}-{vid}")
    for name in NAMES
    for vid, params in (EXAMPLES[name].variants.items() if name in EXAMPLES else [("missing-example", {})])
]
SHAPED_VARIANTS = [
    pytest.param(name, vid, params, shape, id=f"{name}-{vid}-{shape}")
    for name in NAMES
    if name in EXAMPLES
    for vid, params in EXAMPLES[name].variants.items()
    for shape in EXAMPLES[name].shapes
]
SEQUENCE_VARIANTS = [p for p in SHAPED_VARIANTS if p.values[3] == "sequence"]


# ----------------------------------------------------------------------------------------------------------
# Inputs, built from the fields a loss declares
# ----------------------------------------------------------------------------------------------------------


def make_outputs(
    fields: tuple[str, ...], *, width: int, layers: int, shape: str, seed: int
) -> ModelOutputs:
    """Random leaf tensors (requires_grad) for the requested ModelOutputs fields."""
    g = torch.Generator().manual_seed(seed)
    seq = shape == "sequence"

    def leaf(*dims: int) -> torch.Tensor:
        return torch.randn(*dims, generator=g).mul_(1.5).requires_grad_(True)

    out = ModelOutputs()
    for name in fields:
        if name == "logits":
            out.logits = leaf(B, L, V) if seq else leaf(B, V)
        elif name == "hidden_states":
            out.hidden_states = tuple(leaf(B, L, width) for _ in range(layers + 1))
        elif name == "attentions":
            out.attentions = tuple(
                torch.softmax(torch.randn(B, HEADS, L, L, generator=g), -1).requires_grad_(True)
                for _ in range(layers)
            )
        elif name == "embeddings":
            out.embeddings = leaf(B, width)
        elif name == "feature_maps":  # named (B, C, H, W) maps, one per stage
            out.feature_maps = {f"stage{i + 1}": leaf(B, width, 3, 3) for i in range(layers)}
        elif name == "qkv":  # per layer (q, k, v), each (B, heads, L, head_dim)
            out.qkv = tuple(
                tuple(leaf(B, HEADS, L, width // HEADS) for _ in range(3)) for _ in range(layers)
            )
        else:
            pytest.fail(f"test_contract.make_outputs cannot build ModelOutputs.{name} yet; teach it")
    if seq:
        out.attention_mask = torch.tensor(MASK)
    return out


def make_batch(cls: type[DistillLoss], shape: str, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 1000)
    batch: dict[str, torch.Tensor] = {}
    if shape == "sequence":
        batch["attention_mask"] = torch.tensor(MASK)
    if cls.needs_labels:
        if shape == "sequence":
            labels = torch.randint(0, V, (B, L), generator=g)
            labels[torch.tensor(MASK) == 0] = -100  # padding is never a target
        else:
            labels = torch.randint(0, V, (B,), generator=g)
        batch["labels"] = labels
    return batch


@dataclass
class Setup:
    loss: DistillLoss
    student: ModelOutputs
    teacher: ModelOutputs
    batch: dict[str, torch.Tensor]


def make_setup(name: str, params: dict[str, Any], shape: str = "sequence", *, identical: bool = False,
               seed: int = 0) -> Setup:
    example_for(name)
    cls = LOSSES.get(name)
    ctx = IDENTICAL if identical else example_for(name).context
    torch.manual_seed(seed)  # projector initialisation
    loss = cls.build(dict(params), ctx)
    student = make_outputs(cls.student_needs, width=ctx.student_hidden_size, layers=ctx.student_num_layers,
                           shape=shape, seed=seed)
    if identical:
        teacher = clone_outputs(student)
    else:
        teacher = make_outputs(cls.teacher_needs, width=ctx.teacher_hidden_size,
                               layers=ctx.teacher_num_layers, shape=shape, seed=seed + 1)
    return Setup(loss, student, teacher, make_batch(cls, shape, seed))


def _map_tensors(out: ModelOutputs, fn) -> ModelOutputs:
    def conv(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return fn(v)
        if isinstance(v, tuple):
            return tuple(conv(x) for x in v)
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return ModelOutputs(**{f.name: conv(getattr(out, f.name)) for f in dataclasses.fields(out)})


def clone_outputs(out: ModelOutputs) -> ModelOutputs:
    """Same values, fresh leaves (so teacher gradients can be told apart from student ones)."""
    return _map_tensors(
        out, lambda t: t.detach().clone().requires_grad_(t.requires_grad)
    )


def in_float64(s: Setup) -> Setup:
    """The same setup in float64 (outputs, and the loss's projectors), for checks that must hold to ~1e-12:
    the losses keep float64 inputs in float64."""
    def conv(out: ModelOutputs) -> ModelOutputs:
        return _map_tensors(
            out, lambda t: t.detach().double().requires_grad_(t.requires_grad) if t.is_floating_point() else t
        )

    return Setup(s.loss.double(), conv(s.student), conv(s.teacher), s.batch)


def leaves(out: ModelOutputs) -> dict[str, torch.Tensor]:
    found: dict[str, torch.Tensor] = {}
    for f in dataclasses.fields(out):
        value = getattr(out, f.name)
        items = value if isinstance(value, tuple) else (value,)
        if isinstance(value, dict):  # ModelOutputs.extra
            items = tuple(value.values())
        if isinstance(value, SparseLogits):
            items = (value.values,)
        for i, t in enumerate(items):
            if isinstance(t, tuple):  # ModelOutputs.qkv: per layer (q, k, v)
                found.update({f"{f.name}[{i}][{j}]": u for j, u in enumerate(t)
                              if isinstance(u, torch.Tensor) and u.requires_grad})
            elif isinstance(t, torch.Tensor) and t.requires_grad:
                found[f"{f.name}[{i}]"] = t
    return found


def scalar_parts(value: torch.Tensor | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    parts = value if isinstance(value, dict) else {"loss": value}
    assert parts, "a loss returned an empty dict"
    for part, v in parts.items():
        assert isinstance(v, torch.Tensor), f"part {part!r} is a {type(v).__name__}, not a tensor"
        assert v.dim() == 0, f"part {part!r} has shape {tuple(v.shape)}, expected a scalar"
    return parts


def total(value: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(scalar_parts(value).values())  # type: ignore[return-value]


def run(s: Setup) -> torch.Tensor | dict[str, torch.Tensor]:
    return s.loss(s.student, s.teacher, s.batch)


# ----------------------------------------------------------------------------------------------------------
# Registry-wide contract
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_every_registered_loss_has_an_example(name: str) -> None:
    ex = example_for(name)
    assert ex.variants, f"EXAMPLES[{name!r}] has no variants"
    recipe_params = set(loss_parameters(name)) - set(ex.not_recipe_params)
    unchecked = sorted(recipe_params - set(ex.bad_params))
    assert not unchecked, f"EXAMPLES[{name!r}].bad_params gives no rejected value for {unchecked}"


@pytest.mark.parametrize("name", NAMES)
def test_documents_formula_and_citation(name: str) -> None:
    cls = LOSSES.get(name)
    assert cls.name == name
    assert cls.formula.strip(), f"{name}: set the class attribute 'formula'"
    assert cls.citation.strip(), f"{name}: set the class attribute 'citation'"
    assert (cls.__doc__ or "").strip(), f"{name}: the loss class needs a docstring with the formula and paper"


@pytest.mark.parametrize(("name", "vid", "params", "shape"), SHAPED_VARIANTS)
def test_finite_scalar_and_gradients_reach_only_the_student(
    name: str, vid: str, params: dict, shape: str
) -> None:
    s = make_setup(name, params, shape)
    value = run(s)
    for part, v in scalar_parts(value).items():
        assert torch.isfinite(v), f"{name}/{part} is {v.item()}"
    total(value).backward()

    student_grads = {k: t.grad for k, t in leaves(s.student).items()}
    if B < example_for(name).min_rows:  # nothing to compare in a batch this small: exactly 0, no gradient
        assert float(total(value).detach()) == 0.0
        assert all(g is None or not g.any() for g in student_grads.values())
        return
    assert any(g is not None and g.abs().sum() > 0 for g in student_grads.values()), (
        f"{name}: no gradient reached any student tensor ({sorted(student_grads)})"
    )
    for k, g in student_grads.items():
        assert g is None or torch.isfinite(g).all(), f"{name}: non-finite gradient on student {k}"
    for need in LOSSES.get(name).student_needs:
        reached = [g for k, g in student_grads.items() if k.startswith(f"{need}[") and g is not None]
        assert any(g.abs().sum() > 0 for g in reached), f"{name}: no gradient reached student {need}"
    for k, t in leaves(s.teacher).items():
        assert t.grad is None or not t.grad.any(), f"{name}: gradient leaked into teacher tensor {k}"
    for pname, p in s.loss.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, (
            f"{name}: trainable distillation parameter {pname} got no gradient"
        )


def test_hidden_with_different_widths_builds_a_projector() -> None:
    # makes sure the parameter-gradient check above is not vacuous for the hidden loss
    loss = LOSSES.get("hidden").build({}, DISTINCT)
    assert sum(p.numel() for p in loss.parameters()) > 0
    assert len(list(LOSSES.get("hidden").build({}, IDENTICAL).parameters())) == 0  # identity width: none


@pytest.mark.parametrize(("name", "vid", "params", "shape"), SHAPED_VARIANTS)
def test_zero_when_student_equals_teacher(name: str, vid: str, params: dict, shape: str) -> None:
    s = make_setup(name, params, shape, identical=True)
    # a forced (projector: linear) square projector is random at init; identity means W = I, b = 0
    with torch.no_grad():
        for module in s.loss.modules():
            if isinstance(module, torch.nn.Linear) and module.in_features == module.out_features:
                module.weight.copy_(torch.eye(module.in_features))
                module.bias.zero_()
    # float64: at identity the value is pure round-off, and the fused forward KL takes sum p log p and
    # sum p log q by two different formulas, so in float32 it is ~C * 6e-8 * log C per row times T^2: 4.8e-7
    # seen against a 1e-6 bound. In float64 it is < 1e-14 (9e-16 seen); any real mismatch is > 1e-4.
    value = total(run(in_float64(s))).detach()
    # read the flag from the instance: KDLoss decides it from its divergence (soft_ce keeps H(P))
    if s.loss.zero_at_identity:
        assert abs(float(value)) < 1e-12, f"{name} ({vid}) is {float(value)} with student == teacher"
    else:
        assert torch.isfinite(value)


@pytest.mark.parametrize(("name", "vid", "params", "shape"), SHAPED_VARIANTS)
def test_never_negative(name: str, vid: str, params: dict, shape: str) -> None:
    for seed in range(2):
        for identical in (False, True):
            s = make_setup(name, params, shape, identical=identical, seed=seed)
            value = float(total(run(in_float64(s))).detach())  # round-off at identity: see the test above
            assert value >= -1e-12, f"{name} ({vid}, seed {seed}) is negative: {value}"


def _perturb_padding(out: ModelOutputs, seed: int) -> ModelOutputs:
    """New leaves equal to ``out`` on real tokens and wildly different on padded ones."""
    g = torch.Generator().manual_seed(seed)
    pad = torch.tensor(MASK) == 0  # (B, L)

    def bump(t: torch.Tensor) -> torch.Tensor:
        t = t.detach().clone()
        noise = torch.randn(t.shape, generator=g) * 50
        if t.dim() >= 3 and t.shape[:2] == (B, L):  # (B, L, ...): logits or hidden states
            where = pad.view(B, L, *([1] * (t.dim() - 2))).expand_as(t)
        elif t.dim() == 4 and t.shape[-2:] == (L, L):  # attentions (B, heads, L, L): padded keys and queries
            where = (pad[:, None, :, None] | pad[:, None, None, :]).expand_as(t)
        elif t.dim() == 4 and t.shape[0] == B and t.shape[2] == L:
            # qkv (B, heads, L, head_dim): padded tokens
            where = pad[:, None, :, None].expand_as(t)
        else:
            return t.requires_grad_(True)
        return torch.where(where, t + noise, t).requires_grad_(True)

    return _map_tensors(out, lambda t: bump(t) if t.is_floating_point() else t.clone())


@pytest.mark.parametrize(("name", "vid", "params", "shape"), SEQUENCE_VARIANTS)
def test_padded_positions_do_not_matter(name: str, vid: str, params: dict, shape: str) -> None:
    s = make_setup(name, params, shape)
    base = total(run(s))
    base.backward()
    pad = torch.tensor(MASK) == 0
    for k, t in leaves(s.student).items():
        if t.grad is not None and t.dim() == 3:
            assert not t.grad[pad].any(), f"{name}: padded positions of student {k} get a gradient"
        if t.grad is not None and k.startswith("qkv["):  # (B, heads, L, head_dim)
            assert not t.grad.transpose(1, 2)[pad].any(), \
                f"{name}: padded tokens of student {k} get a gradient"
    moved = Setup(s.loss, _perturb_padding(s.student, 1), _perturb_padding(s.teacher, 2), s.batch)
    torch.testing.assert_close(total(run(moved)), base.detach(), atol=1e-6, rtol=1e-6,
                               msg=lambda m: f"{name} ({vid}) changes when padded positions change: {m}")


@pytest.mark.parametrize("name", NAMES)
def test_runs_on_exactly_the_declared_fields(name: str) -> None:
    # the store captures only what losses declare, so undeclared reads would break stored teachers
    params = next(iter(example_for(name).variants.values()))
    s = make_setup(name, params, "sequence" if "sequence" in example_for(name).shapes else "classifier")
    assert torch.isfinite(total(run(s)))
    cls = LOSSES.get(name)
    for side, needs in (("student", cls.student_needs), ("teacher", cls.teacher_needs)):
        for need in needs:
            out = getattr(s, side)
            stripped = dataclasses.replace(out, **{need: None})
            args = (stripped, s.teacher) if side == "student" else (s.student, stripped)
            with pytest.raises(ValueError, match=need):
                s.loss(*args, s.batch)


LABELLED = [n for n in NAMES if LOSSES.get(n).needs_labels]


@pytest.mark.parametrize("name", LABELLED)
@pytest.mark.parametrize("shape", ["classifier", "sequence"])
def test_all_unlabelled_batch_gives_zero_not_nan(name: str, shape: str) -> None:
    params = next(iter(example_for(name).variants.values()))
    s = make_setup(name, params, shape)
    s.batch["labels"] = torch.full_like(s.batch["labels"], -100)
    value = total(run(s))
    assert torch.isfinite(value) and float(value.detach()) == 0.0
    value.backward()  # must keep a graph (DDP needs every step to backward) and give finite zeros
    for k, t in leaves(s.student).items():
        assert t.grad is None or (torch.isfinite(t.grad).all() and not t.grad.any()), k


def test_ce_without_labels_says_what_to_do() -> None:
    s = make_setup("ce", {}, "classifier")
    del s.batch["labels"]
    with pytest.raises(ValueError, match="labels"):
        run(s)


# ----------------------------------------------------------------------------------------------------------
# Reductions and parameter validation
# ----------------------------------------------------------------------------------------------------------

WITH_REDUCTION = [n for n in NAMES if "reduction" in loss_parameters(n)]


@pytest.mark.parametrize("name", WITH_REDUCTION)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_each_reduction_works(name: str, reduction: str) -> None:
    check_params(name, {"reduction": reduction}, "losses[0]")
    for shape in example_for(name).shapes:
        value = total(run(make_setup(name, {"reduction": reduction}, shape)))
        assert torch.isfinite(value)


@pytest.mark.parametrize("name", WITH_REDUCTION)
def test_unknown_reduction_lists_the_allowed_ones(name: str) -> None:
    with pytest.raises(ValueError) as err:
        LOSSES.get(name).build({"reduction": "mean"}, example_for(name).context)
    for allowed in REDUCTIONS:
        assert allowed in str(err.value)
    with pytest.raises(RecipeError, match="reduction") as err:
        check_params(name, {"reduction": "mean"}, "losses[0]")
    for allowed in REDUCTIONS:
        assert allowed in str(err.value)


def test_reduce_terms_rejects_an_unknown_reduction() -> None:
    with pytest.raises(ValueError) as err:
        reduce_terms(torch.ones(2, 3), "average")
    assert all(r in str(err.value) for r in REDUCTIONS)


@pytest.mark.parametrize("name", NAMES)
def test_unknown_parameter_is_a_recipe_error_naming_it(name: str) -> None:
    example_for(name)
    with pytest.raises(RecipeError, match=r"losses\[3\]\.not_a_param") as err:
        check_params(name, {"not_a_param": 1}, "losses[3]")
    for valid in set(loss_parameters(name)):
        assert valid in str(err.value)


# (name, param, value) -> reason, for a known bug awaiting a fix; strict xfail, so the fix shows up
KNOWN_BAD_VALUE_BUGS: dict = {}


def _bad_value_param(name: str, param: str, value: Any) -> Any:
    reason = next((r for (n, p, v), r in KNOWN_BAD_VALUE_BUGS.items()
                   if (n, p) == (name, param) and type(v) is type(value) and v == value), None)
    marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
    return pytest.param(name, param, value, id=f"{name}-{param}={value!r}", marks=marks)


BAD_VALUES = [
    _bad_value_param(name, param, value)
    for name in NAMES
    if name in EXAMPLES
    for param, values in EXAMPLES[name].bad_params.items()
    for value in values
]


@pytest.mark.parametrize(("name", "param", "value"), BAD_VALUES)
def test_bad_value_is_a_recipe_error_naming_the_parameter(name: str, param: str, value: Any) -> None:
    with pytest.raises(RecipeError, match=param) as err:
        check_params(name, {param: value}, "losses[0]")
    assert str(err.value).startswith("losses[0]"), "the message must say where in the recipe the problem is"
    with pytest.raises((ValueError, TypeError)):  # the constructor agrees with check_params
        LOSSES.get(name).build({param: value}, example_for(name).context)


CONTEXT_PARAMS = [
    pytest.param(name, param, id=f"{name}-{param}")
    for name in NAMES
    if name in EXAMPLES
    for param in EXAMPLES[name].not_recipe_params
]


@pytest.mark.parametrize(("name", "param"), CONTEXT_PARAMS)
def test_context_filled_arguments_are_not_recipe_params(name: str, param: str) -> None:
    with pytest.raises(RecipeError, match=param):
        check_params(name, {param: 3}, "losses[0]")


@pytest.mark.parametrize(("name", "vid", "params"), VARIANTS)
def test_example_params_pass_check_params(name: str, vid: str, params: dict) -> None:
    example_for(name)
    check_params(name, params, "losses[0]")


# ----------------------------------------------------------------------------------------------------------
# Sparse (stored top-k) teacher logits
# ----------------------------------------------------------------------------------------------------------


def sparse_of(logits: torch.Tensor, k: int, mode: str) -> SparseLogits:
    values, indices = logits.detach().topk(k, dim=-1)
    return SparseLogits(values, indices, logits.detach().logsumexp(-1), logits.shape[-1], mode)


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("temperature", [1.0, 3.0])
@pytest.mark.parametrize("shape", ["classifier", "sequence"])
def test_sparse_with_k_equal_c_is_the_dense_loss(divergence: str, temperature: float, shape: str) -> None:
    s = make_setup("kd", {}, shape)
    # float64: the sparse path rebuilds log p as values - logsumexp, the dense one as log_softmax. In float32
    # those differ by ulps of |log p| (up to ~10), which the KL's cancellation and T^2 = 9 turned into 2e-6
    # (0.7 of a 1e-6 bound) and another summation order moves. In float64 the gap is ~1e-14; a wrong spread
    # of the missing mass or a wrong renormalisation would be off by > 1e-3.
    s = in_float64(s)
    for reduction in REDUCTIONS:
        loss = KDLoss(temperature=temperature, divergence=divergence, reduction=reduction)
        dense = loss(s.student, s.teacher, s.batch)
        for mode in ("spread", "topk"):
            sparse = dataclasses.replace(s.teacher, logits=sparse_of(s.teacher.logits, V, mode))
            torch.testing.assert_close(
                loss(s.student, sparse, s.batch), dense, atol=1e-12, rtol=1e-12,
                msg=lambda m, reduction=reduction, mode=mode: f"{reduction}, {mode}: {m}")


@pytest.mark.parametrize("mode", ["spread", "topk"])
@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("shape", ["classifier", "sequence"])
def test_sparse_with_k_below_c_is_finite_and_trains_the_student(
    mode: str, divergence: str, shape: str
) -> None:
    s = make_setup("kd", {}, shape)
    teacher = dataclasses.replace(s.teacher, logits=sparse_of(s.teacher.logits, 3, mode))
    value = KDLoss(divergence=divergence)(s.student, teacher, s.batch)
    assert torch.isfinite(value) and float(value.detach()) >= -1e-6
    value.backward()
    grad = s.student.logits.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    if shape == "sequence":
        assert not grad[torch.tensor(MASK) == 0].any(), "padded tokens get a gradient"


def test_sparse_spread_target_is_a_distribution_matching_tinyvit() -> None:
    # METHODS.md 3.4: kept classes exact, the missing mass spread evenly over the other C - k classes
    from distill.losses.divergence import sparse_teacher_log_probs

    z = torch.tensor([[2.0, -1.0, 0.5, 1.5, -0.3]])
    p = torch.softmax(z, -1)
    dense, idx = sparse_teacher_log_probs(sparse_of(z, 2, "spread"), "spread")
    assert idx is None
    got = dense.exp()
    torch.testing.assert_close(got.sum(-1), torch.ones(1))
    torch.testing.assert_close(got[0, [0, 3]], p[0, [0, 3]])
    tail = (1 - p[0, [0, 3]].sum()) / 3
    torch.testing.assert_close(got[0, [1, 2, 4]], tail.expand(3))


@pytest.mark.parametrize("mode", ["spread", "topk"])
def test_sparse_teacher_gets_no_gradient(mode: str) -> None:
    s = make_setup("kd", {}, "classifier")
    teacher_logits = s.teacher.logits  # leaf with requires_grad, like an online teacher outside no_grad
    values, indices = teacher_logits.topk(3, dim=-1)
    sparse = SparseLogits(values, indices, teacher_logits.logsumexp(-1), V, mode)
    KDLoss()(s.student, ModelOutputs(logits=sparse), s.batch).backward()
    assert teacher_logits.grad is None or not teacher_logits.grad.any()


@pytest.mark.parametrize("shape", ["classifier", "sequence"])
def test_hard_kd_on_sparse_teacher_equals_dense(shape: str) -> None:
    s = make_setup("hard_kd", {}, shape)
    loss = HardKDLoss()
    sparse = dataclasses.replace(s.teacher, logits=sparse_of(s.teacher.logits, 2, "spread"))
    torch.testing.assert_close(loss(s.student, sparse, s.batch), loss(s.student, s.teacher, s.batch))


def test_kd_rejects_a_class_count_mismatch() -> None:
    zs = torch.randn(2, 5)
    for teacher in (torch.randn(2, 4), sparse_of(torch.randn(2, 4), 2, "spread")):
        with pytest.raises(ValueError, match="classes"):
            KDLoss()(ModelOutputs(logits=zs), ModelOutputs(logits=teacher), {})


def test_ce_is_not_zero_at_identity_and_says_so() -> None:
    # the flag must be honest: the contract test skips the zero check only for losses that declare it
    assert CELoss.zero_at_identity is False and HardKDLoss.zero_at_identity is False
    assert KDLoss(divergence="soft_ce").zero_at_identity is False
    assert all(KDLoss(divergence=d).zero_at_identity for d in DIVERGENCES if d != "soft_ce")
