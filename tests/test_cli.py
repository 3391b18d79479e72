"""The command line's conventions: settings validated like the workflow's, log flags on every
command, ``python -m slide2expr``, and a start-up that imports no heavy library."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from slide2expr.cli import hoist_log_flags
from slide2expr.errors import InputError
from slide2expr.settings import (
    check_heads_fit_mode,
    parse_config_json,
    resolve_section,
    validate_section,
)

REPO = Path(__file__).resolve().parents[1]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slide2expr", *args], capture_output=True,
                          text=True, timeout=120, cwd=REPO)


def test_sections_get_the_schema_defaults_and_flags_win() -> None:
    cfg = resolve_section("tiling", json.dumps({"tiling": {"tile_px": 256}}),
                          {"tissue.mask_mpp": 8})
    assert cfg["tile_px"] == 256  # from --config-json
    assert cfg["tissue"]["mask_mpp"] == 8.0  # a flag, into the nested section
    assert cfg["target_mpp"] == 0.5 and cfg["tissue"]["closing_um"] == 40.0  # schema defaults
    # a number setting given as an integer parses as the float flag would
    assert isinstance(resolve_section("tiling", '{"tiling": {"spot_diameter_um": 112}}')
                      ["spot_diameter_um"], float)


@pytest.mark.parametrize(("section", "values", "message"), [
    ("tiling", {"tile_px": 8}, "config tiling.tile_px: 8 is less than the minimum of 16"),
    ("tiling", {"tile_pxx": 224}, "config tiling.tile_pxx: unknown key. Fix: rename it to 'tile_px'"),
    ("train", {"lr": "fast"}, "config train.lr: 'fast' is not of type 'number'"),
    ("train", {"batch_size": 0}, "config train.batch_size: 0 is less than the minimum of 1"),
    ("train", {"max_epochs": -5}, "config train.max_epochs"),
])
def test_bad_settings_are_one_line_naming_the_key(section, values, message) -> None:
    with pytest.raises(InputError, match=message.replace(".", r"\.").replace("'", ".")) as info:
        validate_section(section, values)
    assert "\n" not in info.value.one_line() and "config/README.md" in info.value.one_line()


def test_unknown_top_level_keys_and_bad_json_are_refused() -> None:
    with pytest.raises(InputError, match=r"unknown config key 'defualt_slide_mpp'. Fix: rename it to 'default_slide_mpp'"):
        parse_config_json('{"defualt_slide_mpp": 0.5}')
    with pytest.raises(InputError, match="--config-json is not valid JSON"):
        parse_config_json('{"tiling": ')


def test_heads_must_fit_the_mode() -> None:
    check_heads_fit_mode(["mlp"], "spot")
    with pytest.raises(InputError, match=r"train.heads \['abmil'\] do not fit mode 'spot'"):
        check_heads_fit_mode(["mlp", "abmil"], "spot")
    with pytest.raises(InputError, match="unknown head"):
        check_heads_fit_mode(["transformer"], "spot")


def test_log_flags_are_hoisted_in_front_of_the_subcommand() -> None:
    assert hoist_log_flags(["tile", "s.svs", "-q", "--sample-id", "a"]) == \
        ["-q", "tile", "s.svs", "--sample-id", "a"]
    assert hoist_log_flags(["-v", "train", "d.h5ad"]) == ["-v", "train", "d.h5ad"]
    assert hoist_log_flags(["verify", "a", "--", "-q"]) == ["verify", "a", "--", "-q"]


def test_train_cli_refuses_a_bad_config_file_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("train:\n  lr: fast\n")
    proc = run("train", str(tmp_path / "dataset.h5ad"), "--models-dir", str(tmp_path / "m"),
               "--predictions", str(tmp_path / "p.h5ad"), "--config", str(config))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "config train.lr: 'fast' is not of type 'number'" in lines[0]
    assert str(config) in lines[0]
    assert not (tmp_path / "m").exists() and not (tmp_path / "p.h5ad").exists()


def test_python_dash_m_and_log_flags_after_the_command() -> None:
    version = run("--version")
    assert version.returncode == 0 and version.stdout.startswith("slide2expr ")
    listing = run("encoders", "-q", "--json")
    assert listing.returncode == 0, listing.stderr
    assert "efficientnet_lite0" in {row["name"] for row in json.loads(listing.stdout)}


def test_help_imports_no_heavy_library() -> None:
    """`slide2expr --help` is what every cluster job and every user pays first: it must not
    import torch, anndata, pandas, scanpy or rich's help formatter."""
    code = ("import sys\nsys.argv = ['slide2expr', '--help']\nfrom slide2expr.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'anndata', 'pandas', 'scanpy', 'h5py', 'matplotlib',"
            " 'rich.markdown', 'importlib.metadata') if m in sys.modules]\n"
            "print('HEAVY', heavy)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout, proc.stdout[-500:]
    for command in ("tile", "extract", "join", "train", "report", "heatmap", "verify"):
        assert command in proc.stdout


def test_dash_h_is_help_on_the_root_and_on_every_command() -> None:
    for args in (("-h",), ("tile", "-h"), ("view", "-h")):
        proc = run(*args)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("Usage: ") and "Options:" in proc.stdout, proc.stdout[:200]


def test_verbose_shows_our_debug_lines_but_not_h5py_s(slides_dir: Path, tmp_path: Path) -> None:
    """``-v`` is DEBUG for slide2expr only: h5py's converter chatter (5 lines a run before)
    must not appear, and slide2expr's own INFO/DEBUG lines still do."""
    proc = run("-v", "tile", str(slides_dir / "cmu-1-small-region.svs"), "--sample-id", "s",
               "--out", str(tmp_path / "t.h5"))
    assert proc.returncode == 0, proc.stderr
    assert "DEBUG h5py" not in proc.stderr
    assert "INFO slide2expr.tile" in proc.stderr


def test_quiet_draws_no_progress_bar(tmp_path: Path) -> None:
    (tmp_path / "slide.png").write_bytes(b"not hashed for its content")
    sheet = tmp_path / "samples.tsv"
    sheet.write_text(f"sample_id\tslide\ns1\t{tmp_path / 'slide.png'}\n")
    config = json.dumps({"samples": str(sheet), "mode": "bulk"})
    args = ("manifest", "--config-json", config, "--out", str(tmp_path / "m.json"),
            "--results", str(tmp_path / "results"))
    loud, quiet = run(*args), run("-q", *args)
    assert loud.returncode == 0 and quiet.returncode == 0, quiet.stderr
    assert "hashing inputs" in loud.stderr  # the bar is drawn without -q ...
    assert "hashing inputs" not in quiet.stderr  # ... and not with it
