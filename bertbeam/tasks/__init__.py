"""The task registry: task name -> Task class, imported on first use.

Example::

    from bertbeam.tasks import TASKS, make_task

    task = make_task("classify", top_k=3)      # ClassifyTask(top_k=3)
    sorted(TASKS)                              # ['classify', 'embed', 'fill-mask', ...]
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from importlib import import_module
from typing import Any

from bertbeam.core.task import Task

_CLASSES = {
    "embed": "bertbeam.tasks.embed:EmbedTask",
    "classify": "bertbeam.tasks.classify:ClassifyTask",
    "ner": "bertbeam.tasks.entities:EntitiesTask",
    "qa": "bertbeam.tasks.qa:QATask",
    "fill-mask": "bertbeam.tasks.fill_mask:FillMaskTask",
    "zero-shot": "bertbeam.tasks.zero_shot:ZeroShotTask",
}


class _Registry(Mapping[str, type[Task]]):
    """A read-only mapping that imports a task's module only when the task is looked up,
    so one task's optional dependencies never weigh on another."""

    def __init__(self, paths: dict[str, str]):
        self._paths = paths

    def __getitem__(self, name: str) -> type[Task]:
        if name not in self._paths:
            raise KeyError(
                f"Unknown task {name!r}. Valid tasks are: {', '.join(map(repr, self._paths))}.")
        module, cls = self._paths[name].split(":")
        return getattr(import_module(module), cls)

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)


TASKS: Mapping[str, type[Task]] = _Registry(_CLASSES)
"""Task name (as ``bertbeam label --task`` spells it) -> Task class."""


def make_task(name: str, **options: Any) -> Task:
    """Builds the task registered as ``name`` with its keyword options.

    Raises:
        ValueError: ``name`` is not a registered task, or an option is invalid.
    """
    try:
        cls = TASKS[name]
    except KeyError as exc:
        raise ValueError(exc.args[0]) from exc
    return cls(**options)


__all__ = ["TASKS", "Task", "make_task"]
