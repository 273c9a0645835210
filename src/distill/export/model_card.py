"""The student's README.md: what it is, how it was made, how good it is, and whom to cite."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distill.losses import LOSSES


def teacher_phrase(recipe: Any, teacher: str | None = None) -> str:
    """``the teacher `X``` or, with several, ``the teachers `A`, `B` (combined by `rule`)``."""
    if not recipe.teachers:
        return f"the teacher `{teacher or recipe.teacher.model}`"
    names = ", ".join(f"`{t.model or (t.blackbox and (t.blackbox.model or t.blackbox.local_model))}`"
                      for t in recipe.teachers)
    return f"the teachers {names} (combined by `{recipe.combine}`)"


def render_model_card(recipe: Any, report: dict[str, Any], table: str) -> str:
    blackbox = recipe.teacher.blackbox
    teacher = recipe.teacher.model or (blackbox and (blackbox.model or blackbox.local_model))
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-classification",
        "tags: [distillation, distill]",
        "---",
        "",
        "# Distilled student",
        "",
        f"A {report.get('student_parameters', 0):,}-parameter text classifier distilled with `distill` from "
        f"{teacher_phrase(recipe, teacher)}.",
        "",
        "```python",
        "from transformers import pipeline",
        "clf = pipeline('text-classification', model='PATH_TO_THIS_FOLDER')",
        "```",
        "",
        "## Results on the test split",
        "",
        "```",
        table,
        "```",
        "",
    ]
    if report.get("teachers"):
        from distill.evaluation.report import format_teachers

        lines += ["## Teachers", "", "```", format_teachers(report["teachers"]), "```", ""]
    lines += significance_lines(report)
    lines += ["## How it was trained", ""]
    s = recipe.student
    origin = f"layers {s.layers} of the teacher" if s.from_teacher else f"`{s.model}`"
    lines += training_and_citations(recipe, report, origin, "teacher outputs")
    return "\n".join(lines) + "\n"


def significance_lines(report: dict[str, Any]) -> list[str]:
    """The card's "is the difference real?" section: every paired comparison of the run with its interval and
    p (empty when the run made none)."""
    from distill.evaluation.significance import format_p

    sig = report.get("significance") or {}
    if not sig:
        return []
    lines = ["## Is the difference real?", "",
             "Paired comparisons on the same test examples (95% interval by paired bootstrap; "
             "significant: p < 0.05).",
             "", "| comparison | metric | difference | 95% interval | test | p | reading |",
             "|---|---|---|---|---|---|---|"]
    for key, cmp in sig.items():
        a, _, b = key.partition("_vs_")
        scale = 100.0 if cmp.get("metric") == "accuracy" else 1.0
        unit = " pts" if scale == 100.0 else ""
        lo, hi = cmp["ci95"]
        lines.append(f"| {a} vs {b} | {cmp.get('metric', '')} | {scale * cmp['difference']:+.2f}{unit} | "
                     f"{scale * lo:+.2f} to {scale * hi:+.2f} | {cmp.get('test', '')} | "
                     f"{format_p(cmp['p'])} | "
                     f"{'significant' if cmp['significant'] else 'not distinguishable'} |")
    return lines + [""]


def training_and_citations(recipe: Any, report: dict[str, Any], origin: str, stored: str) -> list[str]:
    """The card's shared tail: each loss with its formula, the student's start, the schedule, whether the
    teacher came from the store, how to reproduce the run, and the papers to cite."""
    lines = []
    chosen = (report.get("select") or {}).get("chosen_losses")
    if chosen:
        specs = [(c["name"], c["weight"], {k: v for k, v in c.items() if k not in ("name", "weight")})
                 for c in chosen]
    else:
        specs = [(spec.name, spec.weight, spec.params) for spec in recipe.losses]
    for name, weight, params in specs:
        shown = ", ".join(f"{k}={v}" for k, v in params.items()) or "defaults"
        lines.append(f"- `{name}` (weight {weight}; {shown}): {LOSSES.get(name).formula}")
    if chosen:
        lines.append("- these weights and temperature were chosen on the validation split among "
                     f"{len(report['select']['candidates'])} candidates (report.json `select`)")
    lines += [
        f"- student initialised from {origin}",
        f"- {recipe.train.epochs} epoch(s), batch {recipe.train.batch_size}, "
        f"learning rate {recipe.train.learning_rate}, seed {recipe.train.seed}",
        f"- {stored} from the store: {report.get('store_key') or 'no (online teacher)'}",
        "",
        "The full recipe is in `recipe.yaml` beside this card; `distill run recipe.yaml` reproduces the run.",
        "",
        "## Citations",
        "",
    ]
    seen = set()
    for spec in recipe.losses:
        cite = LOSSES.get(spec.name).citation
        if cite and cite not in seen:
            seen.add(cite)
            lines.append(f"- {spec.name}: {cite}")
    return lines


def write_model_card(out_dir: str | Path, recipe: Any, report: dict[str, Any], table: str) -> Path:
    path = Path(out_dir) / "README.md"
    path.write_text(render_model_card(recipe, report, table), encoding="utf-8")
    return path


def render_embedding_model_card(recipe: Any, report: dict[str, Any], table: str) -> str:
    s = recipe.student
    origin = ("static token vectors taken from the teacher"
              + (f", PCA to {s.static_dim}" if s.static_dim else "")
              if s.static else f"layers {s.layers} of the teacher" if s.from_teacher else f"`{s.model}`")
    lines = [
        "---",
        "library_name: sentence-transformers",
        "pipeline_tag: sentence-similarity",
        "tags: [distillation, distill, sentence-transformers, feature-extraction]",
        "---",
        "",
        "# Distilled sentence encoder",
        "",
        f"A {report.get('student_parameters', 0):,}-parameter sentence encoder distilled with `distill` from "
        f"{teacher_phrase(recipe)} on the recipe's own text.",
        "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "model = SentenceTransformer('PATH_TO_THIS_FOLDER')",
        "vectors = model.encode(['a first sentence', 'another one'])",
        "```",
        "",
    ]
    if s.static:
        lines += [
            "The folder is also a model2vec model, the faster encode on CPU (same vectors, except that "
            "model2vec drops unknown tokens and cuts long texts by characters first):",
            "",
            "```python",
            "from model2vec import StaticModel",
            "model = StaticModel.from_pretrained('PATH_TO_THIS_FOLDER')",
            "vectors = model.encode(['a first sentence', 'another one'])",
            "```",
            "",
        ]
    lines += [
        "## Agreement with the teacher on held-out sentences",
        "",
        "Spearman: correlation of pairwise cosine similarities with the teacher's; recall@k: share of the "
        "teacher's k nearest neighbours the student also ranks in its top k; probe: logistic-regression "
        "accuracy on frozen embeddings of the packaged labelled sets; sent/s: CPU encode speed at batch 32.",
        "",
        "```",
        table,
        "```",
        "",
    ]
    lines += significance_lines(report)
    lines += ["## How it was trained", ""]
    lines += training_and_citations(recipe, report, origin, "teacher embeddings")
    return "\n".join(lines) + "\n"


def write_embedding_model_card(out_dir: str | Path, recipe: Any, report: dict[str, Any], table: str) -> Path:
    path = Path(out_dir) / "README.md"
    path.write_text(render_embedding_model_card(recipe, report, table), encoding="utf-8")
    return path


LM_TITLES = {"teacher": "teacher", "student_kd": "distilled student", "student_no_kd": "same student, no KD"}


def perplexity_table(models: dict[str, dict[str, Any]], domains: list[str]) -> str:
    """Markdown table: held-out perplexity overall and per domain, scoring speed and size of each model."""
    def cell(v: Any, digits: int) -> str:
        return "-" if v is None else f"{v:,.{digits}f}"

    head = ["model", "perplexity", "bits/byte"] + [f"ppl {d}" for d in domains] + ["tokens/s", "parameters"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for role, title in LM_TITLES.items():
        m = models.get(role)
        if not m:
            continue
        per = m.get("perplexity_by_domain") or {}
        cells = [title, cell(m.get("perplexity"), 2), cell(m.get("bits_per_byte"), 4)] + [
            cell(per.get(d), 2) for d in domains] + [
            cell(m.get("tokens_per_second"), 0), f"{m.get('parameters') or 0:,}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_causal_lm_model_card(recipe: Any, report: dict[str, Any],
                                student_layers: int | None = None) -> str:
    """The README.md of a distilled causal LM: what it is, how to load it, held-out perplexity per domain
    against the teacher and the no-KD student, the data, and how it was trained."""
    s, c, models = recipe.student, recipe.causal_lm, report.get("models") or {}
    teacher, student = models.get("teacher", {}), models.get("student_kd", {})
    domains = list(report.get("domains") or [])
    origin = (f"layers {s.layers} of the teacher" if s.from_teacher
              else f"`{s.model}`" + (f" (its layers {s.layers})" if s.layers else ""))
    layers = f"{student_layers} layers, " if student_layers else ""
    prompt = (c.sample_prompts or ["Once upon a time"])[0]
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags: [distillation, distill, causal-lm]",
        "---",
        "",
        "# Distilled causal language model",
        "",
        f"A causal language model ({layers}{report.get('student_parameters') or 0:,} parameters) distilled "
        f"with `distill` from {teacher_phrase(recipe)} "
        f"({teacher.get('parameters') or 0:,} parameters); the student started from {origin}.",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline",
        "",
        "model = AutoModelForCausalLM.from_pretrained('PATH_TO_THIS_FOLDER')",
        "tokenizer = AutoTokenizer.from_pretrained('PATH_TO_THIS_FOLDER')",
        "generate = pipeline('text-generation', model=model, tokenizer=tokenizer)",
        f"print(generate({prompt!r}, max_new_tokens=32)[0]['generated_text'])",
        "```",
        "",
        "## Held-out perplexity",
        "",
        "Next-token perplexity on held-out rows (prompt tokens excluded), overall and per domain; the no-KD "
        "student is the same student trained on the text alone for the same number of steps; tokens/s: "
        "scoring throughput of the evaluation forward passes.",
        "",
        perplexity_table(models, domains),
        "",
    ]
    from distill.evaluation.perplexity import lm_verdict

    summary = report.get("summary") or {}
    if student.get("perplexity") is not None:
        lines += [" ".join(lm_verdict(report)), ""]
    facts = []
    if summary.get("speedup"):
        facts.append(f"the student scores {summary['speedup']:.1f}x the teacher's tokens/s")
    if summary.get("size_ratio"):
        facts.append(f"it has {summary['size_ratio']:.0%} of the teacher's parameters")
    if facts:
        text = "; ".join(facts)
        lines += [text[0].upper() + text[1:] + ".", ""]
    if student.get("perplexity") is None:
        lines += ["The distilled student was not evaluated.", ""]
    data = report.get("data") or {}
    source = (f"the packaged corpus `{recipe.data.name}`" if recipe.data.source == "packaged"
              else f"`{recipe.data.train}`")
    lines += [
        "## Data",
        "",
        f"- {source} ({c.format} format), cut into chunks of {c.chunk_length} tokens: "
        f"{data.get('train', 0)} training / {data.get('validation', 0)} validation / {data.get('test', 0)} "
        "held-out rows",
        "- domains: " + (", ".join(f"`{d}`" for d in domains) if domains else "one"),
    ]
    skd = report.get("sequence_kd")
    if skd:
        lines.append(f"- sequence-level KD: {skd.get('rows', 0)} rows of the teacher's own continuations "
                     f"(mean {skd.get('mean_new_tokens', 0):.1f} new tokens), {data.get('kd_rows', 0)} rows "
                     "trained on in all")
    if c.on_policy is not None:
        lines.append(f"- on-policy (GKD): with probability {c.on_policy.lmbda} a batch is replaced by the "
                     "student's own continuations, scored by the online teacher")
    if c.ddk is not None:
        lines.append(f"- DDK: domain sampling weights re-estimated every {c.ddk.interval} steps from the "
                     "student-teacher loss gap per domain")
    lines += ["", "## How it was trained", ""]
    lines += training_and_citations(recipe, report, origin, "teacher top-k logits")
    return "\n".join(lines) + "\n"


def write_causal_lm_model_card(out_dir: str | Path, recipe: Any, report: dict[str, Any],
                               student_layers: int | None = None) -> Path:
    path = Path(out_dir) / "README.md"
    path.write_text(render_causal_lm_model_card(recipe, report, student_layers), encoding="utf-8")
    return path


def render_image_model_card(recipe: Any, report: dict[str, Any], table: str) -> str:
    """The README.md of a distilled image classifier: what it is, how to load it, the three-way table with its
    paired tests, and how it was trained."""
    s = recipe.student
    labels = report.get("labels") or []
    shape = report.get("image_shape") or []
    lines = [
        "---",
        "library_name: pytorch",
        "pipeline_tag: image-classification",
        "tags: [distillation, distill]",
        "---",
        "",
        "# Distilled image classifier",
        "",
        f"A {report.get('student_parameters', 0):,}-parameter image classifier (`{s.model}`) distilled with "
        f"`distill` from {teacher_phrase(recipe)}; "
        f"input {' x '.join(str(d) for d in shape) or 'images'}, "
        f"{len(labels)} classes.",
        "",
        "```python",
        "from distill.students.vision import load_image_model",
        "model = load_image_model('PATH_TO_THIS_FOLDER')   # logits = model(pixel_values=images).logits",
        "```",
        "",
        "## Results on the test split",
        "",
        "```",
        table,
        "```",
        "",
    ]
    lines += significance_lines(report)
    lines += ["## How it was trained", ""]
    stored = "teacher top-k probabilities on every augmented view"
    lines += training_and_citations(recipe, report, f"`{s.model}`, initialised with seed {recipe.train.seed}",
                                    stored)
    return "\n".join(lines) + "\n"


def write_image_model_card(out_dir: str | Path, recipe: Any, report: dict[str, Any], table: str) -> Path:
    path = Path(out_dir) / "README.md"
    path.write_text(render_image_model_card(recipe, report, table), encoding="utf-8")
    return path
