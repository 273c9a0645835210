"""Black-box teachers: a model you can only query (an OpenAI-compatible endpoint, or a generative model run
in-process) labels the training text; answers are kept in a durable store and parsed into hard (and, with
log-probabilities, soft) labels.

``label_with_blackbox(recipe, splits)`` is what the pipeline and ``distill label`` call; the pieces below
it (client, prompt, parser, store, labeler) can be used alone.
"""

from distill.teachers.blackbox.annotate import (
    LABELS_FILE,
    STATS_FILE,
    BlackBoxLabels,
    build_backend,
    build_labeler,
    label_recipe,
    label_with_blackbox,
)
from distill.teachers.blackbox.backend import (
    Backend,
    BackendError,
    ChatResponse,
    FatalBackendError,
    TokenChoice,
)
from distill.teachers.blackbox.client import ChatClient
from distill.teachers.blackbox.labeler import Labeler, LabelRun, Prices, TeacherLabel
from distill.teachers.blackbox.parse import LabelParser, ParseResult
from distill.teachers.blackbox.prompt import PromptTemplate
from distill.teachers.blackbox.store import ResponseStore, answer_key

__all__ = [
    "LABELS_FILE",
    "STATS_FILE",
    "Backend",
    "BackendError",
    "BlackBoxLabels",
    "ChatClient",
    "ChatResponse",
    "FatalBackendError",
    "LabelParser",
    "LabelRun",
    "Labeler",
    "LocalGenerativeTeacher",
    "ParseResult",
    "Prices",
    "PromptTemplate",
    "ResponseStore",
    "TeacherLabel",
    "TokenChoice",
    "answer_key",
    "build_backend",
    "build_labeler",
    "label_recipe",
    "label_with_blackbox",
]


def __getattr__(name):  # the local teacher imports torch; load it only when asked for
    if name == "LocalGenerativeTeacher":
        from distill.teachers.blackbox.local import LocalGenerativeTeacher

        return LocalGenerativeTeacher
    raise AttributeError(name)
