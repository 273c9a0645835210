"""Teacher-store build time with and without length-ordered batches, interleaved in one run.

The teacher (all-mpnet-base-v2, packaged) embeds the same rows into a fresh store twice per round: once in
index order (every batch padded to its longest row) and once with ``lengths=`` (each shard runs its rows
longest first, then puts them back in index order). Rows: the start of the movie-snippet training split and a
seeded sample of ``packaged:english_text``, the mix the embedding runs store. Reports seconds per build, the
ratio, and the largest difference between the two stores' embeddings (padding changes float rounding only).

    python bench/store_length_order.py --rows 1024 --rounds 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import append_results, machine, write_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1024, help="rows per build (half movie snippets, half other)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()

    import pandas as pd
    import torch

    from distill.config import DataConfig
    from distill.data.splits import load_splits
    from distill.models import load_tokenizer
    from distill.packaged import resolve_model
    from distill.sentence_encoder import load_encoder
    from distill.store import StoreSpec, TeacherStore
    from distill.tasks.text_store import open_text_store

    torch.set_num_threads(2)
    sp = load_splits(DataConfig(source="packaged", name="movie_snippets", unlabeled="packaged:english_text",
                                max_unlabeled_examples=args.rows // 2, max_length=64, test_fraction=0.2))
    frame = pd.concat([sp.train.head(args.rows - args.rows // 2), sp.unlabeled], ignore_index=True)
    teacher_dir = resolve_model("packaged:all-mpnet-base-v2")
    tokenizer = load_tokenizer(teacher_dir)

    class Teacher:  # what open_text_store needs of a teacher source
        path = teacher_dir
        _model = load_encoder(teacher_dir).eval()

        def model(self):
            return self._model

    spec = StoreSpec(capture=("embeddings",), topk=0, dtype="float32", shard_size=4096)
    seconds: dict[str, list[float]] = {"index order": [], "length order": []}
    stores = {}
    for r in range(args.rounds):
        for mode in (("index order", "length order") if r % 2 == 0 else ("length order", "index order")):
            root = Path(tempfile.mkdtemp(prefix="len-order-"))
            t0 = time.perf_counter()
            store, _ = open_text_store(root, f"k{r}", spec, frame, Teacher(), tokenizer, max_length=64,
                                       batch_size=args.batch_size, meta={}, log=lambda m: None,
                                       length_order=mode == "length order")
            seconds[mode].append(time.perf_counter() - t0)
            stores[mode] = TeacherStore.open(store.path)
            print(mode, f"{seconds[mode][-1]:.1f} s", flush=True)
    idx = list(range(len(frame)))
    diff = float((stores["index order"].fetch(idx).embeddings - stores["length order"].fetch(idx).embeddings)
                 .abs().max())
    best = {k: min(v) for k, v in seconds.items()}
    ratio = best["index order"] / best["length order"]
    body = "\n".join([
        "| build | seconds (each round) | best | rows/s |", "|---|---|---|---|",
        *[f"| {k} | {', '.join(f'{s:.1f}' for s in v)} | {best[k]:.1f} | {len(frame) / best[k]:.1f} |"
          for k, v in seconds.items()],
        "",
        f"- Length order is **{ratio:.2f}x** faster (best of {args.rounds} interleaved rounds; the order "
        "of the two builds alternates per round). Rows: "
        f"{args.rows - args.rows // 2} movie training snippets + {args.rows // 2} english_text sentences, "
        f"max length 64, batch {args.batch_size}, fp32 store, fresh store per build.",
        f"- Largest |difference| between the two stores' embeddings: {diff:.2e} (padding changes rounding).",
        f"- Machine: {machine()}.",
    ])
    print(body)
    if not args.no_append:
        write_json("store_length_order", [], [{"build": k, "seconds": v} for k, v in seconds.items()],
                   {"speedup": ratio, "rows": len(frame), "max_abs_diff": diff})
        append_results("Teacher store: length-ordered batches (bench/store_length_order.py)", body)


if __name__ == "__main__":
    main()
