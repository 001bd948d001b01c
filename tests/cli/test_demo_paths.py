"""``bertbeam demo-corpus``: the corpus and the labelled splits never share a folder, so the
quick start's ``--input 'demo/*.parquet'`` reads the corpus alone."""

from __future__ import annotations

from tests.conftest import run_cli


def test_labels_refuse_the_corpus_folder_and_the_corpus_the_labels_folder(tmp_path, capsys):
    demo, labels = tmp_path / "demo", tmp_path / "demo-labels"
    assert run_cli("demo-corpus", demo, "--limit", "30") == 0
    assert run_cli("demo-corpus", demo, "--labels", "--limit", "30") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds the demo corpus (corpus-00000.parquet)" in err
    assert f"bertbeam demo-corpus {demo}-labels --labels" in err
    assert sorted(p.name for p in demo.iterdir()) == ["corpus-00000.parquet", "corpus-00001.parquet"]
    assert run_cli("demo-corpus", labels, "--labels", "--limit", "30") == 0
    assert run_cli("demo-corpus", labels, "--limit", "30") == 2
    assert "holds the demo labelled splits (train.parquet)" in capsys.readouterr().err
    assert sorted(p.name for p in labels.iterdir()) == ["test.parquet", "train.parquet"]
