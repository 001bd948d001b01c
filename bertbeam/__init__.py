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
from bertbeam.tasks.embed import EmbedTask
from bertbeam.tokenization import Tokenize
from bertbeam.transforms import EmbedDocuments, InferDocuments

__version__ = "0.1.0"

# Before any gs:// URL is opened, in the launcher and in every worker (see bertbeam/gcs.py).
_configure_emulator()

__all__ = [
    "EMBEDDED_MODEL",
    "Batch",
    "BatchByTokens",
    "BatchSpec",
    "Columns",
    "Document",
    "EmbedDocuments",
    "EmbedTask",
    "InferDocuments",
    "MergeWindows",
    "ModelSpec",
    "Postprocess",
    "ReadDocuments",
    "RunModel",
    "RunSpec",
    "TokenizeSpec",
    "Tokenize",
    "Window",
    "WindowOutput",
    "WriteResults",
]
