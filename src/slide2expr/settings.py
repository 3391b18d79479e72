"""The run configuration: one set of JSON Schemas for the workflow and the command line.

The schemas live in ``workflow/schemas/`` (the Snakemake catalog layout); the workflow
validates ``config.yaml`` with them through ``snakemake.utils.validate`` and every CLI command
validates the sections it is given (``--config-json``) with the same files here, filling the
same defaults. A wheel carries them as ``slide2expr/schemas`` (pyproject ``force-include``).

Rules pass settings one way: ``--config-json`` with the config sections the command reads,
as an object keyed by section (``{"tiling": {...}}``); flags given on the command line win.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from slide2expr.errors import InputError

#: Sections with a schema of their own (``workflow/schemas/{section}.schema.yaml``).
SECTIONS = ("tiling", "extract", "join", "train", "report", "heatmap")


def schema_dir() -> Path:
    """Where the schemas are: inside an installed wheel, else the checkout's workflow/."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "schemas", here.parents[1] / "workflow" / "schemas"):
        if (candidate / "config.schema.yaml").is_file():
            return candidate
    raise InputError(here, "the config schemas are missing from this installation",
                     "reinstall slide2expr (pip install -e . in the checkout)")


@cache
def load_schema(name: str) -> dict[str, Any]:
    """The schema ``{name}.schema.yaml`` as a dict."""
    import yaml

    return yaml.safe_load((schema_dir() / f"{name}.schema.yaml").read_text())


def _validator(schema: dict[str, Any]):
    """A Draft 2020-12 validator that fills in ``default`` values while it validates."""
    from jsonschema import Draft202012Validator, validators

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if isinstance(sub, dict) and "default" in sub and key not in instance:
                    instance[key] = json.loads(json.dumps(sub["default"]))
        yield from Draft202012Validator.VALIDATORS["properties"](validator, properties,
                                                                  instance, schema)

    extended = validators.extend(Draft202012Validator, {"properties": set_defaults})
    return extended(schema)


def validate_section(section: str, values: Mapping[str, Any] | None, *,
                     source: str | Path | None = None, as_flags: bool = True) -> dict[str, Any]:
    """Check one config section against its schema and return it with defaults filled in.

    With ``as_flags`` integers given for ``number`` settings become floats, as the typed
    command-line flags parse them (the train stage keeps the config's own types, which its
    provenance records).

    Raises
    ------
    InputError
        For the first problem, naming the key (``tiling.tile_px``), what is wrong and where
        the keys are documented.
    """
    data = json.loads(json.dumps(dict(values or {}), default=str))
    errors = sorted(_validator(load_schema(section)).iter_errors(data),
                    key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        where = ".".join([section, *(str(p) for p in err.absolute_path)])
        raise InputError(source, f"config {where}: {err.message}",
                         f"fix the {section} section (every key is documented in "
                         "config/README.md)")
    return _numbers_as_float(data, load_schema(section)) if as_flags else data


def _numbers_as_float(value: Any, schema: Mapping[str, Any]) -> Any:
    """Integers where the schema says ``number`` become floats (``112`` -> ``112.0``), as a
    float flag would parse them, so the same setting gives the same output either way."""
    kinds = schema.get("type")
    kinds = set(kinds) if isinstance(kinds, list) else {kinds}
    if isinstance(value, dict):
        props = schema.get("properties", {})
        return {k: _numbers_as_float(v, props.get(k, {})) for k, v in value.items()}
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_numbers_as_float(v, schema["items"]) for v in value]
    if "number" in kinds and "integer" not in kinds and isinstance(value, int) \
            and not isinstance(value, bool):
        return float(value)
    return value


def parse_config_json(text: str | None, *, option: str = "--config-json") -> dict[str, Any]:
    """The sections passed as JSON (``{"tiling": {...}, ...}``), or a YAML/JSON file's."""
    if not text:
        return {}
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            value = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise InputError(None, f"{option} is not valid JSON ({exc})",
                             "pass an object keyed by config section, e.g. "
                             '{"tiling": {"tile_px": 224}}') from exc
        source = None
    else:
        import yaml

        path = Path(text)
        if not path.is_file():
            raise InputError(path, "config file not found", f"pass a YAML file or JSON to {option}")
        try:
            value = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise InputError(path, f"is not valid YAML ({exc})".replace("\n", " "),
                             "fix the file") from exc
        source = path
    if not isinstance(value, dict):
        raise InputError(source, f"{option} must be an object keyed by config section",
                         'e.g. {"tiling": {"tile_px": 224}}')
    properties = load_schema("config").get("properties", {})
    unknown = sorted(set(value) - set(properties))
    if unknown:
        raise InputError(source, f"unknown config key(s) {unknown}",
                         f"use {', '.join(sorted(properties))} (config/README.md)")
    for key, section_value in value.items():
        if properties[key].get("type") == "object" and not isinstance(section_value,
                                                                        dict | None):
            raise InputError(source, f"config section '{key}' is {section_value!r}, not a "
                             "mapping of settings",
                             f"write its settings as 'key: value' lines indented under "
                             f"'{key}:' (config/README.md), or remove the line")
    return value


def resolve_section(section: str, config_json: str | None,
                    overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One section: from ``--config-json``, with command-line ``overrides`` on top (dotted
    keys such as ``tissue.mask_mpp`` reach nested settings), validated, defaults filled."""
    values = parse_config_json(config_json).get(section) or {}
    values = json.loads(json.dumps(values, default=str))
    for key, value in (overrides or {}).items():
        *parents, leaf = key.split(".")
        node = values
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = str(value) if isinstance(value, Path) else value
    return validate_section(section, values)


#: Head -> the mode it trains in (each head class's ``kind``; a test keeps them equal). Here,
#: not in :mod:`slide2expr.train.heads`, so the workflow checks a config without importing torch.
HEAD_MODES = {"mlp": "spot", "context": "spot", "he2rna": "bulk", "abmil": "bulk"}


def check_heads_fit_mode(heads: list[str], mode: str, *, source: str | Path | None = None) -> None:
    """Refuse heads of the other mode (``mlp`` is for spot mode, the others for bulk)."""
    unknown = [h for h in heads if h not in HEAD_MODES]
    if unknown:
        raise InputError(source, f"config train.heads: unknown head(s) {unknown}",
                         f"use {', '.join(HEAD_MODES)}")
    wrong = [h for h in heads if HEAD_MODES[h] != mode]
    if wrong:
        raise InputError(source, f"config train.heads {wrong} do not fit mode '{mode}'",
                         "mlp and context are for spot mode, he2rna and abmil for bulk mode")


def put_interpreter_on_path() -> None:
    """Put the folder of this Python (the venv Snakemake runs in) first on ``PATH``, so rules
    that call ``slide2expr`` find it when the venv is not activated. Under ``--sdm conda`` a
    job's environment is activated inside the job, and its folder comes first again."""
    import os
    import sys

    folder = str(Path(sys.executable).parent)
    parts = os.environ.get("PATH", "").split(os.pathsep)
    if folder not in parts:
        os.environ["PATH"] = os.pathsep.join([folder, *parts])


def put_openseadragon_in_env(folder: Path) -> None:
    """Point the viewer at ``folder`` (``SLIDE2EXPR_OPENSEADRAGON``) when it holds
    OpenSeadragon and nothing else is set: a non-editable install has no ``node_modules``."""
    import os

    if (Path(folder) / "openseadragon.min.js").is_file():
        os.environ.setdefault("SLIDE2EXPR_OPENSEADRAGON", str(folder))
