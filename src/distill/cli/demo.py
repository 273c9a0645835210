"""``distill demo [sentiment|embeddings]``: a shipped recipe on packaged data and models, fully offline."""

from __future__ import annotations

from importlib import resources

from distill.config import load_recipe

DEMOS = {"sentiment": "demo_sentiment.yaml", "embeddings": "demo_embeddings.yaml"}
DEFAULT_OUTPUT = {"sentiment": "runs/demo", "embeddings": "runs/demo_embeddings"}


def demo_recipe_path(name: str = "sentiment") -> str:
    return str(resources.files("distill") / "recipes" / DEMOS[name])


def run_demo(output_dir: str | None = None, overrides: list[str] | None = None,
             name: str = "sentiment") -> dict:
    from distill.runner import run

    out = output_dir or DEFAULT_OUTPUT[name]
    recipe = load_recipe(demo_recipe_path(name), [f"output_dir={out}", *(overrides or [])])
    return run(recipe)
