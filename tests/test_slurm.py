"""The workflow on a real SLURM scheduler, through the SLURM profile (issue 9).

The slow tests start a one-node SLURM cluster on localhost with ``.ci/slurm-local.sh``
(installs Debian's slurmctld/slurmd/munge with apt-get when missing; needs root), run the demo
workflow with ``--profile`` = ``profiles/slurm`` adjusted for a CPU-only CI node (see
``ci_profile``), check that the results equal a local run's, and that a corrupt slide fails its
job without touching the other slides' outputs. Outside CI they skip without root or apt-get;
under CI (``CI`` set) they must run.

The quick tests check the profiles themselves: a dry run plans one extract job per slide with
its GPU request, and every entry of the SLURM profile is commented.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from slide2expr.keys import DEFAULT_ENCODER

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / ".ci" / "slurm-local.sh"
SLURM_PROFILE = REPO / "profiles" / "slurm" / "config.yaml"
DEFAULT_PROFILE = REPO / "profiles" / "default" / "config.yaml"
#: The one folder of the local cluster (config, state, logs, PID files); fixed, so that a
#: cluster left by a killed test session is found and stopped (by PID) by the next one.
CLUSTER_DIR = Path(os.environ.get("SLURM_LOCAL_DIR", "/tmp/slide2expr-slurm"))
CI = bool(os.environ.get("CI"))
#: Keys of resources that ask for GPUs; a CPU-only CI node drops them.
GPU_KEYS = ("gpu", "gres", "gpu_model", "cpus_per_gpu", "tasks_per_gpu", "constraint")
#: SLURM submissions must never wait forever on an unsatisfiable request.
RUN_TIMEOUT_S = 3600
#: CPUs (threads) of a job in both runs: the same threads give the same floating-point sums,
#: so the SLURM run's features can be compared exactly with the local run's. One CPU a job
#: lets a 2-CPU CI node run two jobs at a time, as the local run does.
CPUS = 1
#: Jobs a bundle in CI: 6 demo slides make 2 bundles, which run side by side on the CI node.
CI_BUNDLE = 3


def ci_profile(
    out_dir: Path, *, cpus: int, mem_mb: int, bundle: int | None = None,
    source: Path = SLURM_PROFILE,
) -> Path:
    """Write the SLURM profile adjusted for a CPU-only one-node CI cluster; return its folder.

    Only what a CPU-only node with ``cpus`` CPUs needs changes: GPU requests are dropped, every
    partition becomes ``debug``, the account is unset, CPUs and memory are capped to the node,
    status checks start after 5 s, failed jobs are not retried, and bundles may be made
    smaller. Everything else (rules' memory and runtime, the bundling mechanism, squeue status
    checks) is the real profile's.

    Parameters
    ----------
    out_dir
        Folder to create; ``config.yaml`` is written inside it.
    cpus
        CPUs of the node: the cap on ``cores``, ``cpus_per_task`` and ``set-threads``.
    mem_mb
        Memory per job in MB: the cap on every job's ``mem_mb`` (no cgroups in CI: scheduling
        only).
    bundle
        At most this many jobs a bundle (``group-components``); None keeps the profile's.
    source
        The profile to adjust.

    Returns
    -------
    Path
        ``out_dir``, to pass to ``snakemake --profile``.
    """
    profile = yaml.safe_load(source.read_text())
    profile["cores"] = min(int(profile.get("cores", cpus)), cpus)
    profile.setdefault("resources", {})["mem_mb"] = mem_mb
    defaults = profile.setdefault("default-resources", {})
    defaults.pop("slurm_account", None)
    defaults["slurm_partition"] = "debug"
    for resources in (profile.get("set-resources") or {}).values():
        for key in GPU_KEYS:
            resources.pop(key, None)
        if "slurm_partition" in resources:
            resources["slurm_partition"] = "debug"
        if "cpus_per_task" in resources:
            resources["cpus_per_task"] = min(int(resources["cpus_per_task"]), cpus)
    profile["set-threads"] = {
        rule: min(int(n), cpus) for rule, n in (profile.get("set-threads") or {}).items()
    }
    if bundle is not None:
        profile["group-components"] = {
            group: min(int(n), bundle) for group, n in profile["group-components"].items()
        }
    profile["slurm-init-seconds-before-status-checks"] = 5
    profile["latency-wait"] = 5
    profile["retries"] = 0
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return out_dir


def snakemake(
    workdir: Path, *args: str, env: dict[str, str] | None = None, timeout: int = RUN_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
         *args],
        capture_output=True, text=True, timeout=timeout, env=env,
    )


def sha256_tree(root: Path, *patterns: str) -> dict[str, tuple[str, int]]:
    """Relative path -> (sha256, mtime_ns) of the files under ``root`` matching ``patterns``."""
    found = {}
    for pattern in patterns:
        for path in sorted(root.glob(pattern)):
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            found[str(path.relative_to(root))] = (digest, path.stat().st_mtime_ns)
    return found


def verify(a: Path, b: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "slide2expr.cli", "verify", str(a), str(b)],
        capture_output=True, text=True, timeout=600,
    )


def _report(request: pytest.FixtureRequest, text: str) -> None:
    """Write ``text`` to the terminal (CI's log) whether or not pytest captures output."""
    plugins = request.config.pluginmanager
    terminal, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if terminal is None or capture is None:
        print(text)
        return
    with capture.global_and_fixture_disabled():  # fd-level capture would swallow it otherwise
        terminal.write_line("")
        for line in text.splitlines():
            terminal.write_line(line)


# --- quick tests: the profiles --------------------------------------------------------------


def test_slurm_profile_dry_run_plans_one_gpu_extract_job_per_slide(tmp_path: Path) -> None:
    shutil.copytree(REPO / "config", tmp_path / "config")
    result = snakemake(tmp_path, "--profile", str(SLURM_PROFILE.parent), "-n", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    samples = pd.read_csv(tmp_path / "config" / "samples.tsv", sep="\t")["sample_id"]
    blocks = out.split("\nrule ")
    extract = [b for b in blocks if b.startswith("extract:")]
    assert extract
    for block in extract:
        resources = next(line for line in block.splitlines() if "resources:" in line)
        assert "gpu=1" in resources and "slurm_partition=gpu" in resources
        assert "mem_mb=32000" in resources and "cpus_per_task=8" in resources
    # One job per slide, embedding every tiling of the slide in one pass (spot patches, the
    # context windows, the tissue grid and its context windows).
    planned = [b.split(" sample=")[1].split()[0].rstrip(",") for b in extract]
    assert sorted(planned) == sorted(samples)
    outputs = next(line for line in extract[0].splitlines() if "output:" in line)
    assert "/spots/" in outputs and "/grid/" in outputs
    # Tile jobs are bundled: one group job, not one SLURM job a slide.
    assert out.count("Group job tile") == 1


def test_every_profile_entry_is_commented() -> None:
    for path in (SLURM_PROFILE, DEFAULT_PROFILE):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            assert "#" in line, f"{path}:{i + 1}: no comment: {line!r}"


def test_ci_profile_drops_gpus_and_caps_to_the_node(tmp_path: Path) -> None:
    folder = ci_profile(tmp_path / "ci", cpus=2, mem_mb=1000, bundle=3)
    real = yaml.safe_load(SLURM_PROFILE.read_text())
    ci = yaml.safe_load((folder / "config.yaml").read_text())
    assert real["set-resources"]["extract"]["gpu"] == 1
    assert "gpu" not in ci["set-resources"]["extract"]
    assert ci["set-resources"]["extract"]["cpus_per_task"] == 2
    assert ci["set-resources"]["extract"]["slurm_partition"] == "debug"
    assert ci["set-threads"]["extract"] == 2 and ci["cores"] == 2
    assert ci["resources"]["mem_mb"] == 1000
    # What the CI run keeps from the real profile.
    assert ci["group-components"] == {group: 3 for group in real["group-components"]}
    for key in ("executor", "slurm-status-command", "groups", "keep-going", "resources"):
        assert ci[key] == (real[key] if key != "resources" else {**real[key], "mem_mb": 1000})
    assert ci["set-resources"]["tile"] == real["set-resources"]["tile"]


#: A stand-in for conda that answers Snakemake's checks and records each environment it is
#: asked to create (the real one would download from conda-forge, which tests cannot reach).
CONDA_STANDIN = r"""#!/usr/bin/env bash
echo "conda $*" >> "$CONDA_STANDIN_LOG"
case "$1" in
  --version) echo "conda 24.11.0" ;;
  info) echo '{"conda_prefix": "/nonexistent", "platform": "linux-64"}' ;;
  config) echo '{"get": {"channel_priority": "strict"}}' ;;
  env)
    args=("$@")
    for i in "${!args[@]}"; do
      [ "${args[$i]}" = "--file" ] && echo "file ${args[$((i+1))]//\"/}" >> "$CONDA_STANDIN_LOG"
      [ "${args[$i]}" = "--prefix" ] && mkdir -p "${args[$((i+1))]//\"/}/bin"
    done
    echo "SLIDE2EXPR_SRC ${SLIDE2EXPR_SRC:-}" >> "$CONDA_STANDIN_LOG" ;;
esac
"""


def test_sdm_conda_builds_one_environment_that_installs_this_checkout(tmp_path: Path) -> None:
    """``--sdm conda`` gives every rule envs/slide2expr.yaml, and the environment's pip line
    (``${SLIDE2EXPR_SRC}[slurm]``) resolves to this checkout."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "conda").write_text(CONDA_STANDIN)
    (bin_dir / "conda").chmod(0o755)
    work = tmp_path / "work"
    shutil.copytree(REPO / "config", work / "config")
    log = tmp_path / "conda.log"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "CONDA_STANDIN_LOG": str(log)}
    env.pop("SLIDE2EXPR_SRC", None)
    result = subprocess.run(
        ["snakemake", "-s", str(REPO / "Snakefile"), "-d", str(work), "--cores", "1",
         "--sdm", "conda", "--conda-create-envs-only"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    calls = log.read_text().splitlines()
    created = [line.split(" ", 1)[1] for line in calls if line.startswith("file ")]
    assert len(created) == 1, calls  # one environment, shared by every rule
    assert Path(created[0]).read_text() == (REPO / "envs" / "slide2expr.yaml").read_text()
    src = next(line.split(" ", 1)[1] for line in calls if line.startswith("SLIDE2EXPR_SRC "))
    assert Path(src).resolve() == REPO
    pip_line = next(line for line in Path(created[0]).read_text().splitlines()
                    if "SLIDE2EXPR_SRC" in line and not line.lstrip().startswith("#"))
    target = Path(pip_line.split('"')[1].replace("${SLIDE2EXPR_SRC}", src).split("[")[0])
    assert 'name = "slide2expr"' in (target / "pyproject.toml").read_text()
    # Every rule that runs a command declares the environment (Snakemake's linter agrees).
    lint = subprocess.run(["snakemake", "-s", str(REPO / "Snakefile"), "-d", str(work), "--lint"],
                          capture_output=True, text=True, timeout=300)
    assert lint.returncode == 0, (lint.stdout + lint.stderr)[-3000:]  # no lints at all
    assert "your workflow is in a good condition" in lint.stdout + lint.stderr


# --- slow tests: a real SLURM cluster ----------------------------------------------------------


def _skip_or_fail(reason: str) -> None:
    if CI:
        pytest.fail(f"SLURM test cannot run under CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def cluster() -> dict[str, str]:
    """A one-node SLURM cluster on localhost for this module; the environment to reach it."""
    if os.geteuid() != 0:
        _skip_or_fail("needs root (installs packages and starts slurmctld, slurmd and munged)")
    if not (shutil.which("apt-get") or shutil.which("slurmctld")
            or Path("/usr/sbin/slurmctld").exists()):
        _skip_or_fail("needs apt-get to install SLURM, or SLURM installed")
    env = {**os.environ, "SLURM_LOCAL_DIR": str(CLUSTER_DIR)}
    # One cluster a machine (fixed ports, /etc/slurm/slurm.conf): test sessions take turns.
    # The lock dies with its process, so whoever holds it may stop what a killed session left.
    lock = open(f"{CLUSTER_DIR}.lock", "w")  # held until the cluster is stopped
    deadline = time.monotonic() + 2 * RUN_TIMEOUT_S
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                pytest.fail(f"another test session holds {lock.name}")
            print(f"waiting for another session's local SLURM ({lock.name})", flush=True)
            time.sleep(30)
    # A cluster left running by a killed session: stop what that session started (by PID).
    subprocess.run(["bash", str(SCRIPT), "stop"], env=env, timeout=120, check=False)
    started = subprocess.run(["bash", str(SCRIPT), "start"], env=env, capture_output=True,
                             text=True, timeout=1800)
    print(started.stderr)
    if started.returncode != 0:
        pytest.fail(f"local SLURM did not start:\n{started.stdout}\n{started.stderr}")
    env["SLURM_CONF"] = str(CLUSTER_DIR / "slurm.conf")
    yield env
    stopped = subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True,
                             text=True, timeout=120)
    print(stopped.stderr)
    lock.close()


def _job_cpus_and_mem(env: dict[str, str]) -> tuple[int, int]:
    """CPUs a job may ask for (at most ``CPUS``, at most the node's) and a per-job memory
    cap that lets every CPU of the node run a job."""
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%c %m"], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    cpus, mem = int(out[0]), int(out[1])
    return min(cpus, CPUS), max(200, min(1000, mem // cpus))


def _slurm_jobs() -> pd.DataFrame:
    """Every job the cluster finished: id, name, state, submit/start/end times.

    From the job-completion file the cluster writes (``JobCompType=jobcomp/filetxt``): squeue
    forgets finished jobs after ``MinJobAge`` and there is no accounting database.
    """
    rows = []
    for line in (CLUSTER_DIR / "log" / "jobcomp.txt").read_text().splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        rows.append({key.lower(): fields.get(name) for key, name in (
            ("id", "JobId"), ("name", "Name"), ("state", "JobState"),
            ("submit", "SubmitTime"), ("start", "StartTime"), ("end", "EndTime"))})
    jobs = pd.DataFrame(rows, columns=["id", "name", "state", "submit", "start", "end"])
    for col in ("submit", "start", "end"):
        jobs[col] = pd.to_datetime(jobs[col], errors="coerce")
    return jobs


@pytest.fixture(scope="module")
def local_run(demo_workflow_run: tuple[Path, float]) -> tuple[Path, float]:
    """The shipped demo config run locally (the session's demo run, one thread a job, as
    ``CPUS`` gives the SLURM jobs): the reference, and its wall time."""
    assert CPUS == 1, "conftest's demo_workflow_run uses --max-threads 1"
    return demo_workflow_run


@pytest.fixture(scope="module")
def slurm_run(
    cluster: dict[str, str], local_run: tuple[Path, float],
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest,
) -> tuple[Path, Path, subprocess.CompletedProcess[str]]:
    """The same config through the SLURM profile: (workdir, profile, result)."""
    local, local_wall = local_run
    workdir = tmp_path_factory.mktemp("slurm")
    shutil.copytree(REPO / "config", workdir / "config")
    # The generated demo inputs are the local run's (copied with their times): both runs
    # read the very same slides, and the demo generator is not what this test is about.
    shutil.copytree(local / "resources", workdir / "resources")
    cpus, mem_mb = _job_cpus_and_mem(cluster)
    profile = ci_profile(workdir / "profile-slurm-ci", cpus=cpus, mem_mb=mem_mb,
                         bundle=CI_BUNDLE)
    _report(request, (profile / "config.yaml").read_text())
    t0 = time.monotonic()
    result = snakemake(workdir, "--profile", str(profile), env=cluster)
    wall = time.monotonic() - t0
    (workdir / "snakemake.log").write_text(result.stdout + result.stderr)
    jobs = _slurm_jobs()
    # Overhead inside the allocations: SLURM run time minus the rules' own benchmark seconds,
    # per rule job (a bundle of tile jobs is one SLURM job holding several rule jobs).
    benchmarks = list((workdir / "results" / "benchmarks").rglob("*.tsv"))
    rule_s = sum(float(pd.read_csv(p, sep="\t")["s"].iloc[-1]) for p in benchmarks)
    done = jobs.dropna(subset=["submit", "start", "end"])
    running = float((done["end"] - done["start"]).dt.total_seconds().sum())
    queued = float((done["start"] - done["submit"]).dt.total_seconds().sum())
    summary = {
        "slurm_wall_s": round(wall, 1), "local_wall_s": round(local_wall, 1),
        "slurm_jobs": len(jobs), "rule_jobs": len(benchmarks),
        "states": jobs["state"].value_counts().to_dict(),
        "rule_seconds": round(rule_s, 1), "slurm_running_seconds": round(running, 1),
        "slurm_queued_seconds": round(queued, 1),
        "overhead_per_rule_job_s": round((running - rule_s) / max(1, len(benchmarks)), 1),
    }
    _report(request, "SLURM run: " + json.dumps(summary))
    (workdir / "slurm_summary.json").write_text(json.dumps(summary, indent=2))
    return workdir, profile, result


@pytest.mark.slow
def test_demo_workflow_through_slurm_equals_local_run(
    slurm_run: tuple[Path, Path, subprocess.CompletedProcess[str]],
    local_run: tuple[Path, float],
    cluster: dict[str, str],
) -> None:
    workdir, _, result = slurm_run
    local, _ = local_run
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-8000:]
    # It really went through SLURM: jobs were submitted with sbatch and tracked with squeue.
    assert "has been submitted with SLURM jobid" in log
    summary = json.loads((workdir / "slurm_summary.json").read_text())
    assert summary["slurm_jobs"] >= 3 and set(summary["states"]) == {"COMPLETED"}
    # Every output the local run made, the SLURM run made, with the same content.
    produced = lambda root: {  # noqa: E731
        str(p.relative_to(root)) for p in (root / "results").rglob("*")
        if p.is_file() and not {"logs", "benchmarks"} & set(p.relative_to(root).parts)
    }
    assert produced(workdir) == produced(local)
    same = verify(local / "results", workdir / "results")
    assert same.returncode == 0, same.stdout + same.stderr
    # And, independently of `verify`, the key numbers: tile coordinates of every slide.
    from slide2expr.contracts.tiles import read_tiles

    for path in sorted((local / "results" / "tiles").rglob("*.h5")):
        other = workdir / path.relative_to(local)
        assert (read_tiles(path).coords == read_tiles(other).coords).all()
    genes = local / "results" / "report" / "genes.tsv"
    if genes.exists():
        assert genes.read_bytes() == (workdir / genes.relative_to(local)).read_bytes()


@pytest.mark.slow
def test_corrupt_slide_fails_its_job_and_keeps_the_other_slides(
    slurm_run: tuple[Path, Path, subprocess.CompletedProcess[str]],
    local_run: tuple[Path, float],
    cluster: dict[str, str],
) -> None:
    workdir, profile, first = slurm_run
    local, _ = local_run
    assert first.returncode == 0, "needs the successful SLURM run first"
    # A new slide joins the cohort: its file is corrupt (the first 64 KB of a real slide).
    sheet = pd.read_csv(workdir / "config" / "samples.tsv", sep="\t")
    good = list(sheet["sample_id"])
    slide = workdir / "resources" / "corrupt" / "broken_slide.tiff"
    slide.parent.mkdir(parents=True)
    slide.write_bytes((workdir / sheet["slide"].iloc[0]).read_bytes()[:65536])
    bad = sheet.iloc[[0]].assign(sample_id="broken", patient="P99", slide=str(slide))
    sheet_path = workdir / "config" / "samples_with_broken.tsv"
    pd.concat([sheet, bad]).to_csv(sheet_path, sep="\t", index=False)
    # One good slide's features are gone too: that job runs in the same SLURM run.
    rerun = f"results/features/{DEFAULT_ENCODER}/spots/{good[0]}.h5"
    (workdir / rerun).unlink()
    kept_patterns = ("results/tiles/*/*.h5", "results/qc/*.png",
                     "results/features/*/*/*.h5")
    before = sha256_tree(workdir, *kept_patterns)

    result = snakemake(
        workdir, "--profile", str(profile), "--config", f"samples={sheet_path}",
        "demo_data=False", env=cluster,
    )
    log = result.stdout + result.stderr
    (workdir / "snakemake-broken.log").write_text(log)

    # The failure surfaces: Snakemake exits non-zero, names the rule's log, and that log
    # names the slide.
    assert result.returncode != 0, log[-5000:]
    assert "Error in rule tile" in log or "Error in group tile" in log
    tile_log = workdir / "results" / "logs" / "tile" / "broken.log"
    assert str(tile_log.relative_to(workdir)) in log
    assert slide.name in tile_log.read_text()
    assert not (workdir / "results" / "tiles" / "grid" / "broken.h5").exists()
    # The other slides' outputs are kept untouched, and the job that had work to do ran. That
    # job embeds every tiling of its slide in one pass (Snakemake removes a multi-output
    # job's outputs before it runs), so its other features files are rewritten: same bytes.
    after = sha256_tree(workdir, *kept_patterns)
    same_job = {k for k in after if k.startswith("results/features/")
                and k.endswith(f"/{good[0]}.h5")}
    assert {k: v for k, v in after.items() if k not in same_job} == \
        {k: v for k, v in before.items() if k not in same_job}
    assert rerun in after
    assert {k: after[k][0] for k in same_job - {rerun}} == \
        {k: before[k][0] for k in same_job - {rerun}}
    same = verify(local / "results" / "features", workdir / "results" / "features")
    assert same.returncode == 0, same.stdout + same.stderr
