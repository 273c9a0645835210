"""The ``distill`` command. Every recipe field's help text comes from the config dataclasses."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing

from distill._dataclass_io import RecipeError, field_docs

COMMANDS = {
    "run": "distil a student as the recipe says (teacher outputs from the store), evaluate, export",
    "finetune": "fine-tune the recipe's teacher encoder into a classifier and save it",
    "cache": "run the teacher once over the training data into the teacher-output store",
    "label": ("label the training (and unlabelled) text with the recipe's black-box teacher "
              "(teacher.blackbox)"),
    "demo": ("run a shipped recipe offline on packaged models and data: sentiment (default, ~10.5 min on "
             "2 cores) or embeddings"),
    "methods": "list the registered losses, or show one with a YAML snippet",
    "report": "re-render a run's report.html, or compare several runs (seeds, methods) with mean and std",
}


def recipe_reference() -> str:
    """Every recipe field with its type, default and docstring."""
    from distill.config import Recipe

    lines = ["recipe fields (override any with --section.field VALUE):"]

    def walk(cls, prefix: str) -> None:
        docs = field_docs(cls)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            sub = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)] or (
                [tp] if dataclasses.is_dataclass(tp) else [])
            name = f"{prefix}{f.name}"
            if sub:
                lines.append(f"  {name}: {docs.get(f.name, '')}")
                walk(sub[0], name + ".")
                continue
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                default = f.default_factory()  # type: ignore[misc]
            else:
                default = "(required)"
            tname = str(tp).replace("typing.", "") if not isinstance(tp, type) else tp.__name__
            lines.append(f"    --{name} ({tname}, default {default!r}): {docs.get(f.name, '')}")

    walk(Recipe, "")
    return "\n".join(lines)


def _recipe_parser(sub, name: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=COMMANDS[name], description=COMMANDS[name],
                       epilog=recipe_reference(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", help="YAML recipe file")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distill", description="Knowledge distillation: large teacher -> small, fast student.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _recipe_parser(sub, "run")
    _recipe_parser(sub, "finetune")
    cache = _recipe_parser(sub, "cache")
    cache.add_argument("--info", action="store_true",
                       help="print what is stored (size, bytes per example, key); build nothing")
    label = _recipe_parser(sub, "label")
    label.add_argument("--test", action="store_true",
                       help="also label the test split, to measure the teacher's own accuracy on human "
                       "labels")
    demo = sub.add_parser("demo", help=COMMANDS["demo"], description=COMMANDS["demo"])
    demo.add_argument("name", nargs="?", default="sentiment", choices=["sentiment", "embeddings"],
                      help="sentiment: distil a fine-tuned classifier (default); embeddings: distil the "
                      "packaged sentence-embedding teacher (mpnet) into all-MiniLM-L6-v2")
    demo.add_argument("--output-dir", default=None,
                      help="where the demo writes (default runs/demo or runs/demo_embeddings)")
    methods = sub.add_parser("methods", help=COMMANDS["methods"], description=COMMANDS["methods"])
    methods.add_argument("name", nargs="?", help="loss name")
    report = sub.add_parser("report", help=COMMANDS["report"], description=COMMANDS["report"])
    report.add_argument("out_dirs", nargs="+", metavar="OUT_DIR",
                        help="output_dir of a finished `distill run`")
    report.add_argument("--out", metavar="PATH",
                        help="where to write the page (default: OUT_DIR/report.html for "
                        "one run, ./report_compare.html for several)")
    return parser


def cmd_methods(name: str | None) -> int:
    from distill.cli.methods import method_detail, methods_table

    try:
        print(methods_table() if name is None else method_detail(name), end="")
    except KeyError as exc:  # unknown loss: the registry's message lists the valid names
        print(f"distill: error: {exc.args[0]}", file=sys.stderr)
        return 2
    return 0


def cmd_report(out_dirs: list[str], out: str | None) -> int:
    from distill.evaluation.compare import ReportError, report

    try:
        path, text = report(out_dirs, out)
    except ReportError as exc:
        print(f"distill: error: {exc}", file=sys.stderr)
        return 2
    print(text)
    print(f"\nwrote {path}")
    return 0


def recipe_fields() -> list[str]:
    """The recipe's top-level fields: the first part of every override (``--train.epochs``,
    ``--output_dir``)."""
    from distill.config import Recipe

    return [f.name for f in dataclasses.fields(Recipe)]


def bad_overrides(tokens: list[str]) -> list[str]:
    """The tokens of ``tokens`` that are not recipe overrides. An override is ``--FIELD VALUE``,
    ``--FIELD=VALUE`` or ``FIELD=VALUE``, where FIELD is a recipe field or a dotted path under one
    (``output_dir``, ``train.epochs``, ``losses.0.weight``); the value may itself start with ``-``."""
    roots = set(recipe_fields())
    bad = []
    it = iter(tokens)
    for token in it:
        if token.startswith("--"):
            key, has_value = token[2:].split("=", 1)[0], "=" in token
            if not has_value:
                next(it, None)  # the value: may look like a flag (-1) or be missing (load_recipe says so)
        elif "=" in token and not token.startswith("-"):
            key = token.split("=", 1)[0]
        else:
            bad.append(token)
            continue
        if key.split(".")[0] not in roots:
            bad.append(token)
    return bad


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if rest and args.command in ("demo", "methods", "report"):
        parser.error(f"unrecognised arguments: {' '.join(rest)}")
    if bad := bad_overrides(rest):
        parser.error(f"unrecognised arguments: {' '.join(bad)} (a recipe override is --FIELD VALUE or "
                     "FIELD=VALUE, e.g. --train.epochs 3 or output_dir=runs/x; top-level fields: "
                     f"{', '.join(recipe_fields())})")
    from distill.stages import end_processes

    try:
        if args.command == "methods":
            return cmd_methods(args.name)
        if args.command == "report":
            return cmd_report(args.out_dirs, args.out)
        if args.command == "demo":
            from distill.cli.demo import run_demo

            run_demo(args.output_dir, rest, args.name)
            end_processes()
            return 0
        from distill import runner
        from distill.config import load_recipe

        recipe = load_recipe(args.recipe, rest)
        if args.command == "run":
            runner.run(recipe)
        elif args.command == "finetune":
            print(runner.finetune(recipe))
        elif args.command == "label":
            print(runner.label(recipe, include_test=args.test))
        elif args.command == "cache":
            print(runner.cache_info(recipe) if args.info else runner.cache(recipe))
        end_processes()
        return 0
    except RecipeError as exc:
        print(f"distill: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("distill: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
