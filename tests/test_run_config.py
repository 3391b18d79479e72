"""One source of defaults: the schemas (workflow/schemas/).

A command's flag only counts when it is given (slide2expr.commands._config), so the schema
default is what runs; the flag's own default is what ``--help`` shows. They must agree, for
every flag table the commands declare. And a user's ``--configfile`` starts from those
defaults, not from the demo's config.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from slide2expr.cli import app
from slide2expr.commands import extract, heatmap, join, report, tile, view
from slide2expr.settings import check_run_config, load_schema

REPO = Path(__file__).resolve().parents[1]

#: (command, section, flag table: parameter name -> dotted key of the section)
FLAG_TABLES = [
    ("tile", "tiling", tile.TILING_FLAGS),
    ("extract", "extract", extract.EXTRACT_FLAGS),
    ("join", "join", join.JOIN_FLAGS),
    ("report", "report", report.REPORT_FLAGS),
    ("heatmap", "heatmap", heatmap.HEATMAP_FLAGS),
    ("heatmap", "tiling", heatmap.TISSUE_FLAGS),
    ("heatmap-scale", "heatmap", heatmap.SCALE_FLAGS),
    ("view", "heatmap", view.VIEW_FLAGS),
]


def schema_default(section: str, key: str) -> Any:
    spec: dict[str, Any] = load_schema(section)
    for part in key.split("."):
        spec = spec["properties"][part]
    return spec.get("default")


def same(flag_default: Any, default: Any) -> bool:
    """Equal as values: (1.0, 99.0) and [1, 99]; an unset flag (None or []) and null/[]."""
    if isinstance(flag_default, (tuple, list)) or isinstance(default, (tuple, list)):
        return list(flag_default or []) == list(default or [])
    return flag_default == default


@pytest.mark.parametrize(("command", "section", "flags"), FLAG_TABLES,
                         ids=[f"{c}:{s}" for c, s, _ in FLAG_TABLES])
def test_flag_defaults_are_the_schema_defaults(command: str, section: str,
                                               flags: dict[str, str]) -> None:
    cli = typer.main.get_command(app)
    params = {p.name: p for p in cli.commands[command].params}
    assert set(flags) <= set(params), set(flags) - set(params)
    wrong = {name: (params[name].default, schema_default(section, key))
             for name, key in flags.items()
             if not same(params[name].default, schema_default(section, key))}
    assert not wrong, f"flag default vs {section} schema default: {wrong}"


def test_every_section_key_with_a_flag_is_in_a_table() -> None:
    """A command option named like a key of the section it reads is in its flag table (else
    it would be a second, unchecked default)."""
    cli = typer.main.get_command(app)
    tables: dict[str, set[str]] = {}
    for command, _, flags in FLAG_TABLES:
        tables.setdefault(command, set()).update(flags)
    for command, section, _ in FLAG_TABLES:
        keys = set(load_schema(section)["properties"])
        named = {p.name for p in cli.commands[command].params} & keys
        # --genes, --encoder and extract's --weights name one value, not the section's mapping
        assert named <= tables[command] | {"genes", "encoder", "weights"}, \
            (command, named - tables[command])


# -- a user's config starts from the schema defaults ---------------------------------------


def run_dry(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
         "--cores", "2", "-n", "-p", *args], capture_output=True, text=True, timeout=600)


def test_a_users_configfile_does_not_inherit_the_demo(tmp_path: Path) -> None:
    """``--configfile my.yaml`` with two samples of the user's own: no demo_data job, no demo
    sheet, and train.folds is the schema's 5, not the demo's 3; the shipped demo is untouched
    in config/ beside it."""
    shutil.copytree(REPO / "config", tmp_path / "config")
    slides = tmp_path / "data"
    slides.mkdir()
    rows = ["sample_id\tslide\tpatient"]
    for sid in ("S1", "S2"):
        (slides / f"{sid}.svs").write_bytes(b"")
        rows.append(f"{sid}\tdata/{sid}.svs\tP{sid}")
    (tmp_path / "mine.tsv").write_text("\n".join(rows) + "\n")
    (tmp_path / "bulk.tsv").write_text("gene\tS1\tS2\nG1\t1\t2\n")
    mine = tmp_path / "my.yaml"
    mine.write_text(yaml.safe_dump({"samples": "mine.tsv", "mode": "bulk",
                                    "join": {"expression": "bulk.tsv"},
                                    "train": {"heads": ["he2rna"]}}))
    result = run_dry(tmp_path, "--configfile", str(mine))
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    assert "rule demo_data" not in out and '"demo_data": true' not in out
    assert "resources/demo" not in out
    assert "config/config.yaml" not in out
    train = next(line for line in out.splitlines() if "slide2expr train " in line)
    assert '"folds": 5' in train  # the schema default; the demo's config says 3

    demo = run_dry(tmp_path)  # no --configfile: the demo, with its own folds
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert "rule demo_data" in demo.stdout
    assert '"folds": 3' in next(line for line in demo.stdout.splitlines()
                                if "slide2expr train " in line)


def test_the_demo_config_holds_only_what_differs_from_the_schema() -> None:
    """config/config.yaml is the demo: every value in it differs from the schema default
    (or is required), so a default lives in one place."""
    demo = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    required = set(load_schema("config")["required"])
    filled = {k: demo[k] for k in required}
    check_run_config(filled)
    for key, value in demo.items():
        if key in required:
            continue
        if isinstance(value, dict):
            for sub, v in value.items():
                assert v != filled[key].get(sub), f"{key}.{sub} repeats the schema default"
        else:
            assert value != filled.get(key), f"{key} repeats the schema default"


# -- what the command line gives: --config strings, one-line errors --------------------------


def test_config_values_from_the_command_line_take_the_schema_types(tmp_path: Path) -> None:
    """Snakemake's --config parsing leaves ``"32"`` inside a mapping and ``"false"`` for a
    boolean; they are read as the schema's types, and the jobs get numbers and booleans."""
    shutil.copytree(REPO / "config", tmp_path / "config")
    result = run_dry(tmp_path, "--config", 'train={"batch_size": 32, "folds": "4"}',
                     'heatmap={"alpha": "0.5", "genes": null}', "default_slide_mpp=null",
                     "demo_data=true", 'join={"sparse": "false"}')
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    train = next(line for line in out.splitlines() if "slide2expr train " in line)
    assert re.search(r'"batch_size": 32[,}]', train) and re.search(r'"folds": 4[,}]', train)
    assert re.search(r'"alpha": 0.5[,}]', out) and re.search(r'"sparse": false[,}]', out)
    # demo_data=false is a boolean too: the demo's files are then required to exist already
    refused = run_dry(tmp_path, "--config", "demo_data=false")
    assert refused.returncode != 0
    said = refused.stdout + refused.stderr
    assert "not of type 'boolean'" not in said and "resources/demo/slides/demo1.tiff" in said


CONFIG_ERRORS = [
    ({"train": {"lr": "fast"}}, "config train.lr: 'fast' is not of type 'number'"),
    ({"train": {"lrr": 0.1}}, "config train.lrr: unknown key. Fix: rename it to 'lr'"),
    ({"tiling": {"tissue": {"closing_mu": 40}}},
     "config tiling.tissue.closing_mu: unknown key. Fix: rename it to 'closing_um'"),
    ({"defualt_slide_mpp": 0.5},
     "config defualt_slide_mpp: unknown key. Fix: rename it to 'default_slide_mpp'"),
    ({"tiling": 5}, "config tiling: 5 is not of type 'object'"),
    ({"train": {"folds": "five"}}, "config train.folds: 'five' is not valid under any"),
]


@pytest.mark.parametrize(("change", "line"), CONFIG_ERRORS)
def test_config_errors_name_the_key_path(change: dict[str, Any], line: str) -> None:
    from slide2expr.errors import InputError

    config = {"samples": "config/samples.tsv", "mode": "spot", **change}
    with pytest.raises(InputError) as info:
        check_run_config(config)
    assert line in info.value.one_line() and "\n" not in info.value.one_line()


@pytest.mark.parametrize(("config", "line"), [
    ('train={"lr": "fast"}', CONFIG_ERRORS[0][1]),
    ('tiling={"tissue": {"closing_mu": 40}}', CONFIG_ERRORS[2][1]),
])
def test_the_workflow_stops_on_a_config_error_with_one_line(tmp_path: Path, config: str,
                                                            line: str) -> None:
    shutil.copytree(REPO / "config", tmp_path / "config")
    result = run_dry(tmp_path, "--config", config)
    assert result.returncode != 0
    err = result.stdout + result.stderr
    assert line in err
    assert len(err.splitlines()) < 10, err  # not the schema (it printed 113 lines)
    assert "properties:" not in err and not (tmp_path / "results").exists()
