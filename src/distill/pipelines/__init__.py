"""Task-specific runs beyond text classification (which lives in :mod:`distill.pipeline`)."""
