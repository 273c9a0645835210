"""Student training: the distiller (losses) and the thin Trainer subclass that optimises it."""

from distill.training.distiller import Distiller
from distill.training.trainer import DistillTrainer

__all__ = ["Distiller", "DistillTrainer"]
