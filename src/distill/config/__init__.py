"""The recipe: a tree of validated dataclasses, loaded from YAML, checked before any model loads.

Every field carries a docstring right under it; ``distill run --help`` prints them, so the text here *is* the
reference documentation. One module per section: ``teacher``, ``student``, ``data``, ``training`` (losses,
store, train, eval, export), ``tasks`` (causal_lm, vision), and ``recipe`` (the whole, YAML and overrides).
"""

from distill._dataclass_io import RecipeError
from distill.config.data import DataConfig, TextAugmentConfig
from distill.config.recipe import Recipe, apply_overrides, load_recipe, recipe_from_dict, section_fields
from distill.config.student import StudentConfig
from distill.config.tasks import (
    AugmentConfig,
    CausalLMConfig,
    DataFreeConfig,
    DDKConfig,
    OnPolicyConfig,
    SequenceKDConfig,
    VisionConfig,
)
from distill.config.teacher import DEFAULT_BLACKBOX_PROMPT, BlackBoxConfig, FinetuneConfig, TeacherConfig
from distill.config.training import (
    EvalConfig,
    ExportConfig,
    LossConfig,
    SelectConfig,
    StoreConfig,
    TrainConfig,
)

__all__ = [
    "DEFAULT_BLACKBOX_PROMPT",
    "AugmentConfig",
    "BlackBoxConfig",
    "CausalLMConfig",
    "DDKConfig",
    "DataConfig",
    "DataFreeConfig",
    "EvalConfig",
    "ExportConfig",
    "FinetuneConfig",
    "LossConfig",
    "OnPolicyConfig",
    "Recipe",
    "RecipeError",
    "SelectConfig",
    "SequenceKDConfig",
    "StoreConfig",
    "StudentConfig",
    "TeacherConfig",
    "TextAugmentConfig",
    "TrainConfig",
    "VisionConfig",
    "apply_overrides",
    "load_recipe",
    "recipe_from_dict",
    "section_fields",
]
