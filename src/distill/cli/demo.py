"""``distill demo``: the shipped sentiment recipe on packaged data and models, fully offline."""

from __future__ import annotations

from importlib import resources

from distill.config import load_recipe


def demo_recipe_path() -> str:
    return str(resources.files("distill") / "recipes" / "demo_sentiment.yaml")


def run_demo(output_dir: str = "runs/demo", overrides: list[str] | None = None) -> dict:
    from distill.pipeline import run

    recipe = load_recipe(demo_recipe_path(), [f"output_dir={output_dir}", *(overrides or [])])
    return run(recipe)
