"""A GCS JSON-API emulator on 127.0.0.1 for tests: ``gcp-storage-emulator``, in memory.

Real GCS refuses an upload with ``ifGenerationMatch=0`` when the object exists (412), which
gcsfs sends for ``open(path, "xb")`` and bertbeam's run lock relies on; the emulator ignores
the condition, so :func:`start_emulator` adds it.

Real GCS has ``objects.move`` (``POST …/o/{src}/moveTo/o/{dst}``), which gcsfs uses for
``mv`` within a bucket; the emulator answers it with 501, which gcsfs retries with
backoff for ~30 s before falling back to copy + delete. :func:`start_emulator` adds the
route (copy, then delete, as the real API behaves from outside) so that moves are as quick
as they are on GCS.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _move(request, response, storage, *args, **kwargs) -> None:
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    bucket, source, dest = (request.params[k] for k in ("bucket_name", "object_id", "dest_object_id"))
    try:
        moved = objects._copy(request.base_url, storage, bucket, source, bucket, dest)
    except NotFound:
        response.status = HTTPStatus.NOT_FOUND
        return
    storage.delete_file(bucket, source)
    response.json(moved)


def _add_move_route() -> None:
    from gcp_storage_emulator import server, settings

    route = (
        rf"^{re.escape(settings.API_ENDPOINT)}/b/(?P<bucket_name>[-.\w]+)/o/"
        rf"(?P<object_id>.*[^/]+)/moveTo/o/(?P<dest_object_id>.*[^/]+)$",
        {server.POST: _move},
    )
    if route not in server.HANDLERS:
        server.HANDLERS = (route, *server.HANDLERS)


def _insert_if_absent(request, response, storage, *args, **kwargs) -> None:
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    if (request.query.get("ifGenerationMatch") or [None])[0] == "0":
        name = (request.query.get("name") or [None])[0]
        if name is None and isinstance(request.data, dict):
            name = (request.data.get("meta") or request.data).get("name")
        try:
            storage.get_file_obj(request.params["bucket_name"], name)
        except NotFound:
            pass
        else:
            response.status = HTTPStatus.PRECONDITION_FAILED
            return
    objects.insert(request, response, storage, *args, **kwargs)


def _add_upload_condition() -> None:
    from gcp_storage_emulator import server
    from gcp_storage_emulator.handlers import objects

    server.HANDLERS = tuple(
        (pattern, {m: _insert_if_absent if h is objects.insert else h for m, h in methods.items()})
        for pattern, methods in server.HANDLERS)


@contextmanager
def start_emulator(bucket: str) -> Iterator[str]:
    """Runs an in-memory emulator with ``bucket`` on a free port; yields its URL."""
    from gcp_storage_emulator.server import create_server

    _add_move_route()
    _add_upload_condition()
    port = _free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
