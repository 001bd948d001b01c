"""Fine-tuning and evaluation: ``bertbeam train`` and ``bertbeam evaluate``.

``train`` fine-tunes a sequence classifier or a token tagger from Parquet and writes a
checkpoint that ``bertbeam label`` and ``transformers.pipeline`` load unchanged;
``evaluate`` scores a ``bertbeam label`` output against gold labels. Importing this package
does not import torch.

Example::

    from bertbeam.training import TrainConfig, train

    report = train(TrainConfig(task="classify", train="data/train-*.parquet", output="model"))
"""

from bertbeam.training.config import EvalConfig, TrainConfig
from bertbeam.training.data import TrainingDataError
from bertbeam.training.evaluate import evaluate
from bertbeam.training.loop import train

__all__ = ["EvalConfig", "TrainConfig", "TrainingDataError", "evaluate", "train"]
