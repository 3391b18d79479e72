"""Each rule passes only the config keys its command reads.

A job reruns when its params change ("Params have changed"), so a rule that passed the whole
config would rerun on any edit: a colour change (``heatmap.alpha``) would retrain the model.
For every key of the schemas (walked from ``workflow/schemas/``, not listed by hand) the
workflow is loaded with the demo config and with that one key changed, and the rules whose
params differ must be exactly the stages that read the key (plus the manifest, which records
the whole config). Keys that shape the DAG itself (mode, encoders, heads, ...) change inputs
and outputs, not params, and are listed apart with the reason.

The finished-run check, that Snakemake then schedules only those stages and what follows
them, is ``test_cosmetic_edit_on_a_finished_demo_reruns_only_the_drawing`` (slow: it needs
the session's demo run).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from slide2expr.settings import check_run_config, load_schema, schema_sections

REPO = Path(__file__).resolve().parents[1]

#: Keys that change which jobs exist or which files they read, not a command's settings.
STRUCTURAL = {
    "samples": "the sample sheet: every per-sample job",
    "mode": "spot or bulk: a different DAG",
    "data_root": "moves every input path of the sheet",
    "demo_data": "adds or removes the demo_data job",
    "tiling.context_um": "adds context tilings (jobs), joined by the join",
    "extract.encoders": "which encoders are extracted (jobs)",
    "extract.weights": "a weights file is an input of extract",
    "extract.stain_reference": "a reference image is an input of extract",
    "join.expression": "bulk mode's matrix is an input of join",
    "join.encoder": "which features are the join's inputs",
    "train.heads": "one train job a head",
    "train.inputs": "context blocks add grid context tilings to the heatmaps (jobs)",
    "train.head_inputs": "as train.inputs, per head",
    "train.genes.list": "a gene list file is an input of train",
    "heatmap.enabled": "adds or removes the heatmap and viewer jobs",
    "heatmap.shared_scale": "splits heatmap into heatmap_map, heatmap_scale and heatmap",
}

#: Values for keys whose schema alone gives no valid other value.
NEW_VALUES: dict[str, Any] = {
    "tiling.tissue.mask_mpp": 4.0,
    "extract.views": ["rot90"],
    "join.gene_map": "gene_map.tsv",
    "join.neighbour_um": [200],
    "train.group_by": "sample_id",
    "train.genes.n_top": 100,
    "train.he2rna_ks": [1, 2],
    "train.baselines": ["ridge"],
    "train.ridge_alphas": [1.0],
    "train.features_key": "X_other",
    "train.head_settings": {"mlp": {"hidden": 64}},
    "train.augment_views": ["flip"],
    "heatmap.genes": ["GENE1"],
    "heatmap.clip_percentiles": [2, 98],
    "heatmap.cmap": "viridis",
}

#: Rules that read keys outside their own section: key (or section.subsection) -> rules.
READERS_BEYOND_THE_SECTION = {
    "default_slide_mpp": {"tile", "heatmap", "viewer"},
    "tiling.tissue": {"tile", "heatmap", "viewer"},
    "report.top_n": {"report", "compare"},
    "report.n_hvg": {"report", "compare"},
    "heatmap.clip_percentiles": {"heatmap", "viewer"},
}

#: The rules that read a section (extract_tiling: a tiling asked for outside the plan).
SECTION_RULES = {"tiling": {"tile"}, "extract": {"extract", "extract_tiling"}, "join": {"join"},
                 "train": {"train"}, "report": {"report"}, "heatmap": {"heatmap"}}

#: Sections whose rule is not in the demo's DAG.
STRUCTURAL_SECTIONS = {
    "pseudobulk": "its rule runs only with pseudobulk.spots_samples (a bulk run of regions)",
}


def schema_keys() -> Iterator[tuple[str, dict[str, Any]]]:
    """(dotted key, its schema) for every leaf key of the top level and each section."""
    def walk(props: dict[str, Any], prefix: str) -> Iterator[tuple[str, dict[str, Any]]]:
        for key, spec in props.items():
            if spec.get("type") == "object" and "properties" in spec:
                yield from walk(spec["properties"], f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", spec
    sections = schema_sections()
    top = {k: v for k, v in load_schema("config")["properties"].items()
           if k not in sections and v.get("type") != "object"}
    yield from walk(top, "")
    for section in sections:
        if section not in STRUCTURAL_SECTIONS:
            yield from walk(load_schema(section)["properties"], f"{section}.")


def other_value(key: str, spec: dict[str, Any], current: Any) -> Any:
    """A valid value of ``key`` different from ``current``, from its schema."""
    if key in NEW_VALUES:
        return NEW_VALUES[key]
    kinds = spec.get("type") or [alt.get("type") for alt in spec.get("oneOf", [])]
    kinds = set(kinds) if isinstance(kinds, list) else {kinds}
    if "enum" in spec:
        return next(v for v in spec["enum"] if v != current)
    if "boolean" in kinds:
        return not current
    if "integer" in kinds:
        return (current if isinstance(current, int) else spec.get("minimum", 1)) + 1
    if "number" in kinds:
        return current / 2 if current else 0.5
    raise AssertionError(f"{key}: add a value to NEW_VALUES (schema {spec})")


def expected_readers(key: str) -> set[str]:
    """The rules whose params must change with ``key`` (the manifest records every key)."""
    for prefix, rules in READERS_BEYOND_THE_SECTION.items():
        if key == prefix or key.startswith(prefix + "."):
            return {*rules, "manifest"}
    return {*SECTION_RULES[key.split(".")[0]], "manifest"}


def demo_config() -> dict[str, Any]:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    check_run_config(config)
    return config


def set_key(config: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """A copy of ``config`` with the dotted ``key`` set."""
    changed = json.loads(json.dumps(config))
    *parents, leaf = key.split(".")
    node = changed
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return changed


def get_key(config: dict[str, Any], key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


@pytest.fixture(scope="module")
def rule_params(tmp_path_factory: pytest.TempPathFactory):
    """``load(config) -> {rule: {param: value}}``: the workflow parsed in this process with
    ``config`` (the params that are fixed strings, which is how rules pass settings)."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

    workdir = tmp_path_factory.mktemp("slices")
    shutil.copytree(REPO / "config", workdir / "config")
    configfile = workdir / "run.yaml"

    def load(config: dict[str, Any]) -> dict[str, dict[str, str]]:
        configfile.write_text(yaml.safe_dump(config, sort_keys=False))
        with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
            workflow = api.workflow(
                resource_settings=ResourceSettings(cores=2),
                config_settings=ConfigSettings(configfiles=[configfile]),
                snakefile=REPO / "Snakefile", workdir=workdir)._workflow
            return {rule.name: {k: v for k, v in rule.params.items() if isinstance(v, str)}
                    for rule in workflow.rules}

    return load


def changed_rules(before: dict[str, dict[str, str]], after: dict[str, dict[str, str]]) -> set[str]:
    return {name for name in before.keys() | after.keys() if before.get(name) != after.get(name)}


def test_schema_keys_are_all_classified() -> None:
    """Every key is either checked below or structural; a new key or section needs a
    decision."""
    assert set(schema_sections()) == set(SECTION_RULES) | set(STRUCTURAL_SECTIONS)
    keys = [key for key, _ in schema_keys()]
    assert len(keys) > 80 and len(set(keys)) == len(keys)
    assert set(STRUCTURAL) <= set(keys), set(STRUCTURAL) - set(keys)
    assert set(NEW_VALUES) <= set(keys), set(NEW_VALUES) - set(keys)


def test_each_key_changes_the_params_of_exactly_the_rules_that_read_it(rule_params) -> None:
    config = demo_config()
    base = rule_params(config)
    wrong = {}
    for key, spec in schema_keys():
        if key in STRUCTURAL:
            continue
        value = other_value(key, spec, get_key(config, key))
        changed = changed_rules(base, rule_params(set_key(config, key, value)))
        if changed != expected_readers(key):
            wrong[key] = (sorted(changed), sorted(expected_readers(key)))
    assert not wrong, "key: (rules whose params changed, rules that read it)\n" + "\n".join(
        f"{k}: {v}" for k, v in wrong.items())


def test_with_a_shared_scale_the_scale_reads_only_what_it_uses(rule_params) -> None:
    config = set_key(demo_config(), "heatmap.shared_scale", True)
    base = rule_params(config)
    for key, readers in [("heatmap.alpha", {"heatmap"}), ("heatmap.cmap", {"heatmap"}),
                         ("heatmap.n_genes", {"heatmap", "heatmap_scale"}),
                         ("heatmap.clip_percentiles", {"heatmap", "heatmap_scale", "viewer"}),
                         ("default_slide_mpp", {"tile", "heatmap", "viewer"})]:
        value = other_value(key, {}, None) if key in NEW_VALUES else \
            {"heatmap.alpha": 0.5, "heatmap.n_genes": 5, "default_slide_mpp": 0.7}[key]
        changed = changed_rules(base, rule_params(set_key(config, key, value)))
        assert changed == {*readers, "manifest"}, key


def test_the_order_keys_are_written_in_changes_nothing(rule_params) -> None:
    """The same settings written in another order (a user's file, --config) give the same
    params, so they rerun nothing."""
    config = demo_config()

    def reversed_keys(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: reversed_keys(value[k]) for k in reversed(list(value))}
        return value

    assert list(reversed_keys(config)) != list(config)
    assert rule_params(reversed_keys(config)) == rule_params(config)


def test_default_mpp_reaches_tile_heatmap_and_viewer_the_same_way(rule_params) -> None:
    params = rule_params(set_key(demo_config(), "default_slide_mpp", 0.7))
    for rule in ("tile", "heatmap", "viewer"):
        assert params[rule]["default_mpp"] == "--default-mpp 0.7", rule
        assert "default_slide_mpp" not in params[rule].get("cfg", "")


def test_only_the_manifest_gets_the_whole_config(rule_params) -> None:
    params = rule_params(demo_config())
    whole = [name for name, p in params.items() if '"train"' in p.get("cfg", "")
             and '"heatmap"' in p.get("cfg", "")]
    assert whole == ["manifest"]


# -- on a finished run: what Snakemake schedules --------------------------------------------


def scheduled_jobs(workdir: Path, *config: str) -> dict[str, int]:
    """``snakemake -n`` on a finished run: jobs per rule."""
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
         "--cores", "2", "-n", "--quiet", "rules", *(("--config", *config) if config else ())],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    return {m.group(1): int(m.group(2))
            for m in re.finditer(r"^(\w+)\s+(\d+)$", out, flags=re.MULTILINE)}


@pytest.mark.slow
def test_cosmetic_edit_on_a_finished_demo_reruns_only_the_drawing(
        demo_workflow_run: tuple[Path, float]) -> None:
    """``heatmap.alpha`` 0.6 -> 0.5 on the finished demo: the six heatmaps, the viewer (it
    reads the tile maps the heatmaps rewrite) and the manifest; nothing upstream. A report
    key reruns the report and what reads it, never training."""
    workdir = demo_workflow_run[0]
    assert scheduled_jobs(workdir) == {}
    n_samples = sum(1 for line in (workdir / "config" / "samples.tsv").read_text()
                    .splitlines()[1:] if line.strip())
    jobs = scheduled_jobs(workdir, 'heatmap={"alpha": 0.5}')
    jobs.pop("total")
    assert jobs == {"heatmap": n_samples, "viewer": 1, "manifest": 1, "all": 1}
    jobs = scheduled_jobs(workdir, 'report={"n_scatter": 4}')
    assert "train" not in jobs and "join" not in jobs and jobs["report"] == 1
