"""The tiny checkpoints are what every parity test stands on: they must load and differ by arch."""

import pytest

from tests.conftest import ARCHITECTURES


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_tiny_checkpoint_loads_with_fast_tokenizer(tiny_model, arch):
    from transformers import AutoModel, AutoTokenizer

    directory = tiny_model(arch, "base")
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModel.from_pretrained(directory)
    assert tokenizer.is_fast
    assert model.config.model_type == arch
    ids = tokenizer("hello world")["input_ids"]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
