"""Where a trained checkpoint goes: built complete in a staging folder, then published.

A checkpoint is several files that only make sense together (weights, config, tokenizer),
so ``bertbeam train`` and ``bertbeam distill`` never write them one by one into the output:

- before training, the output must be new, empty, or an earlier checkpoint of theirs (it has
  ``_TRAIN.json``): a checkpoint mixed with another model's ``pytorch_model.bin`` or
  ``modules.json`` would load as neither. A symbolic link among its entries is refused: a
  write through it would land outside the output (issue 27).
- the checkpoints of the run and the final model are written to a staging folder inside the
  output directory (``.bertbeam-train-*``, same file system, so publishing is renames);
  an interrupted run removes it, and one killed outright leaves it to the next run, which
  removes it first.
- publishing replaces the earlier checkpoint's files, renames the new ones in, and writes
  ``_TRAIN.json`` (the list of files included) last.

Remote outputs (``gs://``, any fsspec URL) stage in a local temporary folder and upload.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

from bertbeam.filesystems import refuse_symlink, replacing, url_to_fs

STAGING_PREFIX = ".bertbeam-train-"
TRAIN_REPORT = "_TRAIN.json"


class OutputError(ValueError):
    """The output directory cannot take a checkpoint (a user error: one line)."""


def _is_local(fs: Any) -> bool:
    from fsspec.implementations.local import LocalFileSystem  # on the first file opened (start-up)

    return isinstance(fs, LocalFileSystem)


class CheckpointOutput:
    """The output directory of a checkpoint: checked, staged, published.

    Example::

        out = CheckpointOutput("models/topics")
        out.check()                     # before the model is loaded
        with out:                       # out.staging: where the run writes
            ...                         # write the model to out.model_dir
            out.publish(report)
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.fs, self.root = url_to_fs(url)
        self.root = self.root.rstrip("/") or "/"
        self.local = _is_local(self.fs)
        self.staging: str | None = None

    @property
    def model_dir(self) -> str:
        """The staged model's folder (inside :attr:`staging`)."""
        if self.staging is None:
            raise RuntimeError("CheckpointOutput is used outside its `with` block.")
        return os.path.join(self.staging, "model")

    def _entries(self) -> list[str]:
        """Names in the output directory, staging folders left out."""
        if self.local:
            if not os.path.exists(self.root):
                return []
            if not os.path.isdir(self.root):
                raise OutputError(f"Output {self.url!r} is a file, not a directory.")
            names = os.listdir(self.root)
        else:
            if not self.fs.exists(self.root):
                return []
            names = [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.root, detail=False)]
        return sorted(n for n in names if not n.startswith(STAGING_PREFIX))

    def _earlier_files(self) -> list[str] | None:
        """The files of the earlier checkpoint here, or None when there is none."""
        entries = self._entries()
        if not entries:
            return []
        if TRAIN_REPORT not in entries:
            return None
        try:
            with self.fs.open(f"{self.root}/{TRAIN_REPORT}", "r") as f:
                listed = json.load(f).get("files")
        except (OSError, ValueError):
            listed = None
        return list(listed) if isinstance(listed, list) else entries

    def check(self) -> None:
        """Fails with one line unless the output can take the checkpoint."""
        entries = self._entries()
        if self.local:
            for name in entries:
                refuse_symlink(os.path.join(self.root, name))
        if self._earlier_files() is None:
            shown = ", ".join(entries[:4]) + (", …" if len(entries) > 4 else "")
            raise OutputError(
                f"Output {self.url!r} is not empty ({shown}) and holds no earlier bertbeam "
                f"checkpoint ({TRAIN_REPORT}); a checkpoint mixed with other files would load "
                "as neither. Choose a new or empty directory.")

    def __enter__(self) -> CheckpointOutput:
        if self.local:
            os.makedirs(self.root, exist_ok=True)
            for name in os.listdir(self.root):  # left by a run that was killed
                if name.startswith(STAGING_PREFIX):
                    shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)
            self.staging = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.root)
        else:
            self.staging = tempfile.mkdtemp(prefix=STAGING_PREFIX)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None

    def publish(self, report: dict[str, Any]) -> list[str]:
        """Replaces the earlier checkpoint with the staged model, then writes ``report`` as
        ``_TRAIN.json`` (with ``files``: the checkpoint's files); returns the file names."""
        files = sorted(os.listdir(self.model_dir))
        report["files"] = files + [TRAIN_REPORT]
        stale = [n for n in self._earlier_files() or () if n not in report["files"]]
        if self.local:
            for name in [TRAIN_REPORT, *stale]:  # the report first: the folder is not one checkpoint now
                path = os.path.join(self.root, name)
                refuse_symlink(path)
                if os.path.isdir(path):
                    shutil.rmtree(path)
                elif os.path.exists(path):
                    os.remove(path)
            for name in files:
                target = os.path.join(self.root, name)
                refuse_symlink(target)
                os.replace(os.path.join(self.model_dir, name), target)
        else:
            for name in [TRAIN_REPORT, *stale]:
                if self.fs.exists(f"{self.root}/{name}"):
                    self.fs.rm(f"{self.root}/{name}", recursive=True)
            for name in files:
                self.fs.put_file(os.path.join(self.model_dir, name), f"{self.root}/{name}")
        with replacing(self.fs.unstrip_protocol(f"{self.root}/{TRAIN_REPORT}"), "w",
                       encoding="utf-8") as f:
            json.dump(report, f, indent=2)
        return report["files"]
