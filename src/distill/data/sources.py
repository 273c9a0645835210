"""Read the recipe's text data into pandas frames: CSV / TSV / JSONL / Parquet files, a
``datasets.save_to_disk`` folder, or a packaged data set."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from distill._dataclass_io import RecipeError

READERS = {
    ".csv": lambda p: pd.read_csv(p),
    ".tsv": lambda p: pd.read_csv(p, sep="\t"),
    ".jsonl": lambda p: pd.read_json(p, lines=True),
    ".json": lambda p: pd.read_json(p, lines=str(p).endswith("l")),
    ".parquet": lambda p: pd.read_parquet(p),
}


def read_table(path: str, field: str) -> pd.DataFrame:
    p = Path(path)
    if not p.exists():
        raise RecipeError(f"{field}: file {path!r} does not exist")
    suffix = p.suffix.lower()
    if suffix not in READERS:
        raise RecipeError(f"{field}: {path!r} has an unsupported extension; use one of {', '.join(READERS)}")
    try:
        return READERS[suffix](p)
    except Exception as exc:  # pandas raises many types; the user needs the file name
        raise RecipeError(f"{field}: could not read {path!r}: {exc}") from None


def read_hf_disk(path: str, field: str) -> dict[str, pd.DataFrame]:
    import datasets

    if not Path(path).exists():
        raise RecipeError(f"{field}: folder {path!r} does not exist")
    ds = datasets.load_from_disk(path)
    if isinstance(ds, datasets.DatasetDict):
        return {name: split.to_pandas() for name, split in ds.items()}
    return {"train": ds.to_pandas()}
