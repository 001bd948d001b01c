"""Run task variants through InferDocuments in one Beam pipeline and read their rows back."""

from __future__ import annotations

import pickle
import uuid
from pathlib import Path

import apache_beam as beam

from bertbeam.config import BatchSpec, ModelSpec, RunSpec, TokenizeSpec
from bertbeam.core.records import Document
from bertbeam.core.task import Task


def run_spec(model_dir: str, *, budget: int = 8192, **tokenize) -> RunSpec:
    """A CPU RunSpec for ``model_dir`` with a token budget and TokenizeSpec options."""
    return RunSpec(model=ModelSpec(uri=model_dir, device="cpu"), tokenize=TokenizeSpec(**tokenize),
                   batch=BatchSpec(token_budget=budget))


def _save(row: object, directory: str) -> None:
    """Saves a result Row or DeadLetter as a plain dict; one file per row: safe whatever
    process or thread of the runner writes it."""
    from bertbeam.core.records import as_dict

    Path(directory).mkdir(parents=True, exist_ok=True)
    (Path(directory) / f"{uuid.uuid4().hex}.pkl").write_bytes(pickle.dumps(as_dict(row)))


def _load(directory: Path) -> dict[str | None, dict]:
    rows = [pickle.loads(f.read_bytes()) for f in sorted(directory.glob("*.pkl"))]
    by_id = {r["id"]: r for r in rows}
    assert len(by_id) == len(rows), "a document came out twice"
    return by_id


def run_variants(
    tmp_path: Path,
    docs: list[Document],
    variants: dict[str, tuple[Task, RunSpec]],
    beam_args: tuple[str, ...] = (),
) -> dict[str, tuple[dict[str | None, dict], dict[str | None, dict]]]:
    """Runs every ``name -> (task, run)`` variant on ``docs`` in one pipeline.

    Returns ``name -> (results by id, dead letters by id)``.
    """
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.testing.test_pipeline import TestPipeline

    from bertbeam.beam.transforms import InferDocuments
    from bertbeam.run.runners import resolve_runner

    root = tmp_path / f"rows-{uuid.uuid4().hex[:8]}"
    options = PipelineOptions(list(beam_args))
    with TestPipeline(runner=resolve_runner(options), options=options) as p:
        created = p | "Create" >> beam.Create(docs)
        for name, (task, run) in variants.items():
            out = created | f"Infer[{name}]" >> InferDocuments(task, run=run)
            out["results"] | f"SaveResults[{name}]" >> beam.Map(_save, str(root / name / "results"))
            out["dead_letter"] | f"SaveDead[{name}]" >> beam.Map(_save, str(root / name / "dead"))
    return {name: (_load(root / name / "results"), _load(root / name / "dead")) for name in variants}


def documents(texts: list[str]) -> list[Document]:
    """``d0, d1, ...`` documents for ``texts``."""
    return [Document(id=f"d{i}", text=t) for i, t in enumerate(texts)]
