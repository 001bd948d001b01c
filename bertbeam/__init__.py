"""bertbeam: Apache Beam transforms for batch NLP with BERT-family models.

Importing bertbeam does not import torch; models load on workers.
"""

import time as _time

_IMPORTED_AT = _time.time()  # before any import below: bertbeam.run.runinfo.process_started

from bertbeam.beam.batching import BatchByTokens
from bertbeam.config import EMBEDDED_MODEL, BatchSpec, ModelSpec, RunSpec, TokenizeSpec
from bertbeam.core.deadletter import (
    DEAD_LETTER,
    DEAD_LETTER_SCHEMA,
    REASONS,
    DeadLetter,
    DeadLetterError,
    Reason,
    Stage,
)
from bertbeam.core.engine import Engine, EngineSpec
from bertbeam.gcs import configure_emulator as _configure_emulator
from bertbeam.beam.inference import RunModel
from bertbeam.core.models import ModelLoadError
from bertbeam.beam.postprocess import Postprocess
from bertbeam.beam.reading import Columns, InputError, ReadDocuments
from bertbeam.core.records import (
    BatchPlan,
    ChunkOutputs,
    Document,
    DocumentChunk,
    OutputChunk,
    Results,
    Window,
    WindowChunk,
    WindowOutput,
)
from bertbeam.tasks import TASKS, make_task
from bertbeam.core.task import Task, TaskInputError
from bertbeam.tasks.classify import ClassifyTask
from bertbeam.tasks.embed import EmbedTask
from bertbeam.tasks.entities import EntitiesTask
from bertbeam.tasks.fill_mask import FillMaskTask
from bertbeam.tasks.qa import QATask
from bertbeam.tasks.zero_shot import ZeroShotTask
from bertbeam.beam.tokenization import ChunkDocuments, Tokenize
from bertbeam.beam.transforms import EmbedDocuments, InferChunks, InferDocuments, LabelDocuments
from bertbeam.beam.validation import ValidateDocuments
from bertbeam.beam.writing import WriteResults

__version__ = "0.2.0"


def __getattr__(name: str) -> object:
    # Beam's ml.inference package imports torch: the handler loads on first use only.
    if name == "BertModelHandler":
        from bertbeam.beam.handler import BertModelHandler

        return BertModelHandler
    raise AttributeError(f"module 'bertbeam' has no attribute {name!r}")


# Before any gs:// URL is opened, in the launcher and in every worker (see bertbeam/gcs.py).
_configure_emulator()

__all__ = [
    "DEAD_LETTER",
    "DEAD_LETTER_SCHEMA",
    "EMBEDDED_MODEL",
    "REASONS",
    "TASKS",
    "BatchByTokens",
    "BatchPlan",
    "BatchSpec",
    "BertModelHandler",
    "ChunkDocuments",
    "ChunkOutputs",
    "ClassifyTask",
    "Columns",
    "DeadLetter",
    "DeadLetterError",
    "Document",
    "DocumentChunk",
    "EmbedDocuments",
    "EmbedTask",
    "Engine",
    "EngineSpec",
    "EntitiesTask",
    "FillMaskTask",
    "InferChunks",
    "InferDocuments",
    "InputError",
    "LabelDocuments",
    "ModelLoadError",
    "ModelSpec",
    "OutputChunk",
    "Postprocess",
    "QATask",
    "ReadDocuments",
    "Reason",
    "Results",
    "RunModel",
    "RunSpec",
    "Stage",
    "Task",
    "TaskInputError",
    "Tokenize",
    "TokenizeSpec",
    "ValidateDocuments",
    "Window",
    "WindowChunk",
    "WindowOutput",
    "WriteResults",
    "ZeroShotTask",
    "__version__",
    "make_task",
]
