"""gs:// through gcsfs, and how a GCS emulator named by ``STORAGE_EMULATOR_HOST`` is served.

Every bertbeam location (input glob, output directory, dead letter, model URI,
``_SUMMARY.json``) is an fsspec URL, so ``gs://`` goes through gcsfs everywhere. gcsfs
already sends its HTTP requests to ``STORAGE_EMULATOR_HOST`` when it is set; two of its
defaults do not fit an emulator, and :func:`configure_emulator` changes exactly those, in
every process that imports bertbeam (launcher and local workers alike):

* gcsfs's default filesystem class (``ExtendedGcsFileSystem``) first asks the Storage Control
  gRPC API for each bucket's layout (zonal, hierarchical). An emulator speaks only the JSON
  API, so the probe retries until its 60 s deadline before gcsfs falls back to plain HTTP,
  and since an unknown layout is not cached, that happens again on every open, read and
  write (measured: 105 s to write one small object). With an emulator, ``gs://`` and
  ``gcs://`` use the plain ``gcsfs.core.GCSFileSystem``.
* With no token configured, gcsfs tries application-default credentials and then the GCE
  metadata server, which costs seconds offline. Emulators do not check credentials, so the
  token defaults to ``"anon"`` (a token set in fsspec's config, e.g. ``FSSPEC_GS_TOKEN``,
  still wins).

Without ``STORAGE_EMULATOR_HOST`` nothing changes: real GCS keeps gcsfs's own defaults.
"""

from __future__ import annotations

import os

EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
PROTOCOLS = ("gs", "gcs")


def emulator_host() -> str | None:
    """The emulator URL from ``STORAGE_EMULATOR_HOST``, or None when GCS is the real one."""
    host = os.environ.get(EMULATOR_ENV, "").strip()
    if host in ("", "default"):  # gcsfs reads "default" as "no emulator", too
        return None
    return host if host.startswith(("http://", "https://")) else f"http://{host}"


def configure_emulator() -> bool:
    """Points fsspec's ``gs://`` at the emulator the way it can serve; returns whether one
    is configured. Idempotent, and a no-op without ``STORAGE_EMULATOR_HOST``."""
    if emulator_host() is None:
        return False
    import fsspec  # on the first file opened (start-up)
    from fsspec.config import conf  # on the first file opened (start-up)
    from gcsfs.core import GCSFileSystem  # Cloud Storage only

    for protocol in PROTOCOLS:
        fsspec.register_implementation(protocol, GCSFileSystem, clobber=True)
        conf.setdefault(protocol, {}).setdefault("token", "anon")
    return True
