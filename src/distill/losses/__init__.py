"""Distillation losses. Every built-in loss registers itself here, so a recipe can name it."""

from distill.losses import attention as _attention  # noqa: F401  (registers)
from distill.losses import cross_tokenizer as _cross_tokenizer  # noqa: F401  (registers)
from distill.losses import embedding as _embedding  # noqa: F401  (registers)
from distill.losses import feature as _feature  # noqa: F401  (registers)
from distill.losses import hidden as _hidden  # noqa: F401  (registers)
from distill.losses import logits as _logits  # noqa: F401  (registers)
from distill.losses import relations as _relations  # noqa: F401  (registers)
from distill.losses.attention import AttentionMSELoss, MiniLMLoss
from distill.losses.base import (
    LOSSES,
    DistillLoss,
    LossContext,
    check_params,
    loss_parameters,
    register_loss,
)
from distill.losses.cross_tokenizer import ALMLoss, HybridTokenKLLoss
from distill.losses.embedding import (
    AffinityLoss,
    ContrastiveLoss,
    CRDLoss,
    EmbeddingLoss,
    NeighbourhoodLoss,
    SimilarityMatrixLoss,
    SimilarityRankingLoss,
)
from distill.losses.feature import AttentionTransferLoss, DKDLoss, FitNetLoss
from distill.losses.hidden import HiddenStateLoss
from distill.losses.logits import CELoss, HardKDLoss, KDLoss
from distill.losses.relations import MiniLMv2Loss, TRGLoss

__all__ = [
    "LOSSES",
    "DistillLoss",
    "LossContext",
    "check_params",
    "loss_parameters",
    "register_loss",
    "KDLoss",
    "CELoss",
    "HardKDLoss",
    "HiddenStateLoss",
    "FitNetLoss",
    "AttentionTransferLoss",
    "DKDLoss",
    "AttentionMSELoss",
    "MiniLMLoss",
    "MiniLMv2Loss",
    "TRGLoss",
    "EmbeddingLoss",
    "AffinityLoss",
    "ContrastiveLoss",
    "CRDLoss",
    "SimilarityMatrixLoss",
    "NeighbourhoodLoss",
    "SimilarityRankingLoss",
    "ALMLoss",
    "HybridTokenKLLoss",
    "build_losses",
]


def build_losses(specs, ctx: LossContext):
    """Instantiate the recipe's losses. Returns a list of (name, weight, module)."""
    from distill._dataclass_io import RecipeError

    built = []
    for i, spec in enumerate(specs):
        cls = LOSSES.get(spec.name)
        try:
            module = cls.build(dict(spec.params), ctx)
        except (TypeError, ValueError) as exc:
            raise RecipeError(f"losses[{i}] ({spec.name}): {exc}") from None
        built.append((spec.name, spec.weight, module))
    return built
