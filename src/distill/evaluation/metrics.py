"""Task metrics on a split: predictions, accuracy, macro-F1, agreement with the teacher."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score
from torch.utils.data import DataLoader

from distill.models import model_inputs


@torch.no_grad()
def predict_logits(model, dataset, collator, batch_size: int = 64, prefix: str = "",
                   desc: str = "predicting") -> np.ndarray:
    """Logits (N, C) of ``model`` over ``dataset``, in dataset order (a progress bar on a terminal)."""
    from tqdm.auto import tqdm

    from distill.training.args import progress_enabled

    model.eval()
    device = next(model.parameters()).device
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collator)
    chunks = []
    with tqdm(total=len(dataset), desc=desc, unit="ex", disable=not progress_enabled(), leave=False) as bar:
        for batch in loader:
            inputs = {k: v.to(device) for k, v in model_inputs(batch, prefix).items()}
            chunks.append(model(**inputs).logits.float().cpu())
            bar.update(chunks[-1].shape[0])
    return torch.cat(chunks).numpy()


def classification_metrics(logits: np.ndarray, labels: np.ndarray,
                           teacher_pred: np.ndarray | None = None) -> dict:
    """Accuracy, macro-F1 and, per class (in class-id order), recall, F1 and support over the labelled rows;
    agreement with the teacher's predictions when given."""
    from sklearn.metrics import precision_recall_fscore_support

    pred = logits.argmax(-1)
    labelled = labels >= 0
    y, p = labels[labelled], pred[labelled]
    classes = list(range(logits.shape[-1]))
    _, recall, f1, support = precision_recall_fscore_support(y, p, labels=classes, zero_division=0)
    out = {
        "accuracy": float(accuracy_score(y, p)),
        "macro_f1": float(f1_score(y, p, average="macro")),
        "per_class_recall": [float(v) for v in recall],
        "per_class_f1": [float(v) for v in f1],
        "per_class_support": [int(v) for v in support],
    }
    if teacher_pred is not None:
        answered = teacher_pred >= 0  # a black-box teacher may leave rows unanswered (-1)
        out["teacher_agreement"] = (float((pred[answered] == teacher_pred[answered]).mean())
                                    if answered.any() else None)
    return out


def compute_metrics_fn(eval_pred) -> dict:
    """For ``Trainer(compute_metrics=...)`` on the validation split."""
    logits, labels = eval_pred.predictions, eval_pred.label_ids
    metrics = classification_metrics(np.asarray(logits), np.asarray(labels))
    return {k: v for k, v in metrics.items() if not isinstance(v, list)}  # trackers take scalars
