"""bertbeam: Apache Beam transforms for batch NLP with BERT-family models.

Importing bertbeam does not import torch; models load on workers.
"""

from bertbeam.batching import BatchByTokens
from bertbeam.config import EMBEDDED_MODEL, BatchSpec, ModelSpec, RunSpec, TokenizeSpec
from bertbeam.gcs import configure_emulator as _configure_emulator
from bertbeam.inference import RunModel
from bertbeam.io import Columns, ReadDocuments, WriteResults
from bertbeam.postprocess import MergeWindows, Postprocess
from bertbeam.records import Batch, Document, Window, WindowOutput
from bertbeam.tasks import TASKS, make_task
from bertbeam.tasks.base import Task
from bertbeam.tasks.classify import ClassifyTask
from bertbeam.tasks.embed import EmbedTask
from bertbeam.tasks.entities import EntitiesTask
from bertbeam.tasks.fill_mask import FillMaskTask
from bertbeam.tasks.qa import QATask
from bertbeam.tasks.zero_shot import ZeroShotTask
from bertbeam.tokenization import Tokenize
from bertbeam.transforms import EmbedDocuments, InferDocuments, LabelDocuments

__version__ = "0.1.0"

# Before any gs:// URL is opened, in the launcher and in every worker (see bertbeam/gcs.py).
_configure_emulator()

__all__ = [
    "EMBEDDED_MODEL",
    "TASKS",
    "Batch",
    "BatchByTokens",
    "BatchSpec",
    "BertModelHandler",
    "ClassifyTask",
    "Columns",
    "Document",
    "EmbedDocuments",
    "EmbedTask",
    "EntitiesTask",
    "FillMaskTask",
    "InferDocuments",
    "LabelDocuments",
    "MergeWindows",
    "ModelSpec",
    "Postprocess",
    "QATask",
    "ReadDocuments",
    "RunModel",
    "RunSpec",
    "Task",
    "Tokenize",
    "TokenizeSpec",
    "Window",
    "WindowOutput",
    "WriteResults",
    "ZeroShotTask",
    "make_task",
]
