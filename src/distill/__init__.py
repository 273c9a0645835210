"""distill: turn a large teacher model into a small, fast student that keeps its quality.

Two levels of API::

    import distill
    report = distill.run("recipe.yaml")                  # everything from a recipe
    result = distill.distill_from_models(teacher, student, data, student_tokenizer=tok)  # objects you built
"""

__version__ = "0.1.0"

from distill.config import Recipe, RecipeError, load_recipe  # noqa: E402

__all__ = ["run", "cache", "distill_from_models", "end_processes", "load_recipe", "Recipe", "RecipeError",
           "__version__"]


def __getattr__(name):  # heavy modules (transformers) load only when used
    if name in ("run", "cache"):
        from distill import runner

        return getattr(runner, name)
    if name == "distill_from_models":
        from distill.api import distill_from_models

        return distill_from_models
    if name == "end_processes":
        from distill.stages import end_processes

        return end_processes
    raise AttributeError(name)
