"""The student section: a pre-trained compact model, layers of the teacher, or static embeddings."""

from __future__ import annotations

from dataclasses import dataclass

from distill.config.checks import check


@dataclass
class StudentConfig:
    """The model that is trained. Either a pre-trained compact model, or layers inherited from the teacher."""

    model: str | None = None
    """Hugging Face id or local directory of a pre-trained compact model (a fresh classification head is
    added). Leave empty when ``from_teacher`` is true."""
    from_teacher: bool = False
    """Build the student from the (fine-tuned) teacher: same embeddings, a subset of its layers, its head."""
    layers: list[int] | None = None
    """Layer indices (0-based) to keep: of the teacher when ``from_teacher`` is true, e.g. ``[0, 5, 11]``,
    otherwise of the pre-trained ``model`` (a shallower copy of it). Empty: keep every layer of ``model``."""
    static: bool = False
    """``task: sentence-embedding`` only: a static-embedding student (one vector per token of the teacher's
    vocabulary, mean-pooled, like model2vec), initialised by running the teacher on every token and then
    trained on the teacher's sentence embeddings. Leave ``model`` empty."""
    static_dim: int | None = None
    """Width of a static student's vectors: empty keeps the teacher's width; smaller reduces the initial
    token vectors by PCA (a learned projector maps them to the teacher during training)."""
    static_sif: float | None = None
    """Scale each starting token vector by ``a / (a + p(token))``, ``p`` the token's frequency in the
    distillation text (add-one smoothed) and ``a`` this value (SIF, Arora et al. 2017; model2vec weighs by
    vocabulary rank instead): frequent tokens such as punctuation and articles then count less in the mean.
    Empty: no weighting."""
    dense: bool = False
    """``task: sentence-embedding``, transformer students: a linear layer after pooling that maps the
    student's vector to the teacher's width, trained with the student and exported in the student directory
    (a sentence-transformers ``Dense`` module without activation), so losses such as ``embedding`` (cosine)
    compare the student's own output with the teacher's vector, with no projector dropped at export. It
    starts as the least-squares map from the untrained student's vectors to the teacher's on up to 4,096
    training sentences (teacher vectors from the store). The student before distillation (the report's
    baseline) is the start without it."""

    def fingerprinted(self) -> dict:
        """The fields a stage fingerprint is built from: ``static_sif`` and ``dense`` only when set, so
        stages finished before they existed stay valid."""
        return {k: v for k, v in self.__dict__.items()
                if not ((k == "static_sif" and v is None) or (k == "dense" and not v))}

    def __post_init__(self) -> None:
        check(not (self.dense and self.static), "student.dense", self.dense,
              "a static student already learns its own width (student.static_dim); set dense: false")
        if self.static:
            check(self.model is None and not self.from_teacher and not self.layers, "student.static",
                   self.static,
                   "a static student is built from the teacher's vocabulary; leave student.model, "
                   "student.from_teacher and student.layers empty")
            check(self.static_dim is None or self.static_dim > 0, "student.static_dim", self.static_dim,
                   "use a positive width, or leave it empty to keep the teacher's")
            check(self.static_sif is None or self.static_sif > 0, "student.static_sif", self.static_sif,
                  "use a positive coefficient such as 0.001, or leave it empty for no weighting")
            return
        check(self.static_dim is None, "student.static_dim", self.static_dim,
               "static_dim only applies with student.static: true")
        check(self.static_sif is None, "student.static_sif", self.static_sif,
              "static_sif only applies with student.static: true")
        if self.from_teacher:
            check(self.model is None, "student.model", self.model,
                   "leave student.model empty when student.from_teacher is true")
            check(bool(self.layers), "student.layers", self.layers,
                   "list the teacher layers to keep, e.g. [0, 5]")
            check(len(set(self.layers or [])) == len(self.layers or []), "student.layers", self.layers,
                   "list each layer once")
            check(all(i >= 0 for i in self.layers or []), "student.layers", self.layers,
                   "indices are 0-based and non-negative")
        else:
            check(bool(self.model), "student.model", self.model,
                   "give a model id/path, or set student.from_teacher: true with student.layers")
            if self.layers is not None:
                check(len(self.layers) > 0 and len(set(self.layers)) == len(self.layers), "student.layers",
                       self.layers, "list each kept layer once, or leave it empty to keep them all")
