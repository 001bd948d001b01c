"""bertbeam: Apache Beam transforms for batch NLP with BERT-family models.

What users call: the transforms, the RunInference handler, the configs, the tasks, the
dead-letter type and its tag, and the errors a launcher catches. Everything else lives in
its package (``bertbeam.core``, ``bertbeam.beam``, ``bertbeam.run``, ...). Importing bertbeam
(or ``from bertbeam import *``) does not import torch; models load on workers.
"""

import time as _time

_IMPORTED_AT = _time.time()  # before any import below: bertbeam.run.runinfo.process_started
# ruff: noqa: E402 (the imports below come after that stamp on purpose)

from bertbeam.beam.batching import BatchByTokens
from bertbeam.beam.inference import RunModel
from bertbeam.beam.postprocess import Postprocess
from bertbeam.beam.reading import Columns, InputError, ReadDocuments
from bertbeam.beam.tokenization import ChunkDocuments, Tokenize
from bertbeam.beam.transforms import EmbedDocuments, InferDocuments, LabelDocuments
from bertbeam.beam.validation import ValidateDocuments
from bertbeam.beam.writing import WriteResults
from bertbeam.config import EMBEDDED_MODEL, BatchSpec, ModelSpec, RunSpec, TokenizeSpec
from bertbeam.core.deadletter import (
    DEAD_LETTER,
    DEAD_LETTER_SCHEMA,
    REASONS,
    DeadLetter,
    DeadLetterError,
)
from bertbeam.core.models import ModelLoadError
from bertbeam.core.records import Document
from bertbeam.core.task import Task
from bertbeam.gcs import configure_emulator as _configure_emulator
from bertbeam.tasks import TASKS, make_task
from bertbeam.tasks.classify import ClassifyTask
from bertbeam.tasks.embed import EmbedTask
from bertbeam.tasks.entities import EntitiesTask
from bertbeam.tasks.fill_mask import FillMaskTask
from bertbeam.tasks.qa import QATask
from bertbeam.tasks.zero_shot import ZeroShotTask

__version__ = "0.2.0"


def __getattr__(name: str) -> object:
    # The RunInference handler on first use only: Beam's ml.inference imports torch (its
    # model manager does), so it is not in __all__ either: `import *` stays light.
    if name == "BertModelHandler":
        from bertbeam.beam.handler import BertModelHandler  # imports torch: see above

        return BertModelHandler
    raise AttributeError(f"module 'bertbeam' has no attribute {name!r}")


# Before any gs:// URL is opened, in the launcher and in every worker (see bertbeam/gcs.py).
_configure_emulator()

__all__ = [
    # Transforms, in pipeline order (bertbeam.BertModelHandler: see __getattr__)
    "ReadDocuments",
    "ValidateDocuments",
    "ChunkDocuments",
    "Tokenize",
    "BatchByTokens",
    "RunModel",
    "Postprocess",
    "InferDocuments",
    "EmbedDocuments",
    "LabelDocuments",
    "WriteResults",
    # Configs and the input element
    "EMBEDDED_MODEL",
    "ModelSpec",
    "TokenizeSpec",
    "BatchSpec",
    "RunSpec",
    "Columns",
    "Document",
    # Tasks
    "Task",
    "TASKS",
    "make_task",
    "EmbedTask",
    "ClassifyTask",
    "EntitiesTask",
    "QATask",
    "FillMaskTask",
    "ZeroShotTask",
    # Dead letters and errors
    "DEAD_LETTER",
    "DEAD_LETTER_SCHEMA",
    "REASONS",
    "DeadLetter",
    "DeadLetterError",
    "InputError",
    "ModelLoadError",
]
