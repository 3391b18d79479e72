"""Shared fixtures: the real data beside the project, and the synthetic demo cohort."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Subprocesses (the CLI, snakemake and the rules it runs) use this interpreter's venv.
_BIN = str(Path(sys.executable).parent)
if _BIN not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = _BIN + os.pathsep + os.environ.get("PATH", "")


def _test_data_root() -> Path:
    return Path(os.environ.get("SLIDE2EXPR_TEST_DATA", REPO.parent / "shared" / "data")).resolve()


@pytest.fixture(autouse=True)
def _restore_environment():
    """Put ``os.environ`` back after every test.

    Code run in-process can set variables (training sets ``CUBLAS_WORKSPACE_CONFIG`` for
    deterministic cuBLAS); every later subprocess (the CLI, snakemake, SLURM jobs) would
    inherit them, and the run manifest records them, so two runs of one workflow in one
    session would differ by which tests ran between them.
    """
    before = dict(os.environ)
    yield
    if os.environ != before:
        os.environ.clear()
        os.environ.update(before)


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Put torch's intra-op thread count back after every test.

    A test that pins threads (for speed or bit-identical sums) must not change the float
    results of tests in other modules: oneDNN's reductions depend on the thread count.
    """
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def test_data() -> Path:
    """``$SLIDE2EXPR_TEST_DATA`` (default ``../shared/data``); fails under CI if missing."""
    root = _test_data_root()
    if not (root / "her2st").is_dir() or not (root / "slides").is_dir():
        message = f"real test data not found at {root} (set SLIDE2EXPR_TEST_DATA)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return root


@pytest.fixture(scope="session")
def her2st(test_data: Path) -> Path:
    return test_data / "her2st"


@pytest.fixture(scope="session")
def slides_dir(test_data: Path) -> Path:
    return test_data / "slides"


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default demo cohort, generated once per test session."""
    from slide2expr.demo.cohort import make_demo_cohort

    out = tmp_path_factory.mktemp("demo")
    make_demo_cohort(out)
    return out


@pytest.fixture(scope="session")
def demo_workflow_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """The shipped demo config, run once per session as a user runs it: (workdir, wall s).

    ``snakemake --cores 2 --max-threads 1``: two jobs at a time, one thread each, so the
    SLURM end-to-end test (one CPU a job) can compare its outputs with these bit for bit
    (floating-point sums depend on the thread count). The workflow tests read it too.
    """
    import shutil
    import subprocess
    import time

    repo = Path(__file__).resolve().parents[1]
    workdir = tmp_path_factory.mktemp("demo_run")
    shutil.copytree(repo / "config", workdir / "config")
    t0 = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), "-d", str(workdir),
         "--cores", "2", "--max-threads", "1"],
        capture_output=True, text=True, timeout=3600,
    )
    wall = time.monotonic() - t0
    assert result.returncode == 0, result.stderr[-5000:]
    return workdir, wall


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The SLURM end-to-end tests install and start a real one-node cluster (root, apt).

    They run when ``SLIDE2EXPR_SLURM_E2E=1``, which ``.ci/run`` sets: there they share the
    session's demo run (``demo_workflow_run``) as their local reference.
    """
    if os.environ.get("SLIDE2EXPR_SLURM_E2E") == "1":
        return
    skip = pytest.mark.skip(reason="SLURM end-to-end: set SLIDE2EXPR_SLURM_E2E=1 (.ci/run does)")
    for item in items:
        if item.path.name == "test_slurm.py" and item.get_closest_marker("slow"):
            item.add_marker(skip)
