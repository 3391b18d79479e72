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
    from slide2expr.demo import make_demo_cohort

    out = tmp_path_factory.mktemp("demo")
    make_demo_cohort(out)
    return out


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The SLURM end-to-end tests start a real cluster and run the demo twice.

    They run when ``SLIDE2EXPR_SLURM_E2E=1``: ``.ci/run`` sets it for a second pytest pass
    after the main suite, so the main suite stays within CI's time budget.
    """
    if os.environ.get("SLIDE2EXPR_SLURM_E2E") == "1":
        return
    skip = pytest.mark.skip(reason="SLURM end-to-end: set SLIDE2EXPR_SLURM_E2E=1 (.ci/run does)")
    for item in items:
        if item.path.name == "test_slurm.py" and item.get_closest_marker("slow"):
            item.add_marker(skip)
