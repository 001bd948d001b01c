"""What the index tests share: the texts, their ids, a tiny model and its vectors."""

from __future__ import annotations

import pytest

from tests.conftest import SAMPLE_TEXTS
from tests.search_helpers import embed_texts

TEXTS = SAMPLE_TEXTS[:5] + SAMPLE_TEXTS[6:]  # "short" is too close to other short texts
IDS = [f"doc-{i:02d}" for i in range(len(TEXTS))]


@pytest.fixture(scope="module")
def model_dir(tiny_model):
    return tiny_model("bert")


@pytest.fixture(scope="module")
def vectors(model_dir):
    return embed_texts(model_dir, TEXTS)
