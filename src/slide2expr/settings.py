"""The run configuration: one set of JSON Schemas for the workflow and the command line.

The schemas live in ``workflow/schemas/`` (the Snakemake catalog layout) and hold the only
defaults. The workflow checks its whole config with :func:`check_run_config` (``--config``
strings read as the schema's types, one line naming the key for a bad value) and every CLI
command validates the sections it is given (``--config-json``) with the same files here,
filling the same defaults. A wheel carries them as ``slide2expr/schemas``.

Rules pass settings one way: ``--config-json`` with the config keys the command reads, as an
object keyed by section (``{"tiling": {...}}``); flags given on the command line win.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from slide2expr.errors import InputError

#: The stages' sections, each with a schema of its own (``workflow/schemas/{section}.schema.yaml``).
SECTIONS = ("tiling", "extract", "join", "train", "report", "heatmap")


def schema_sections() -> list[str]:
    """Every top-level key of the config that has a schema file of its own: the stages'
    sections and any other (``pseudobulk``)."""
    return [name for name, spec in load_schema("config").get("properties", {}).items()
            if spec.get("type") == "object"
            and (schema_dir() / f"{name}.schema.yaml").is_file()]


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
    _raise_first_error(data, load_schema(section), [section], source=source)
    return _numbers_as_float(data, load_schema(section)) if as_flags else data


def _raise_first_error(data: Any, schema: dict[str, Any], prefix: list[str], *,
                       source: str | Path | None) -> None:
    """Validate ``data`` (filling defaults) and raise the first problem as one line naming the
    full key path (``train.lr: 'fast' is not of type 'number'``)."""
    errors = sorted(_validator(schema).iter_errors(data), key=lambda e: list(e.absolute_path))
    if not errors:
        return
    err = errors[0]
    path = [*prefix, *(str(p) for p in err.absolute_path)]
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        allowed = list(err.schema.get("properties", {}))
        unknown = sorted(set(err.instance) - set(allowed))[0]
        closest = _closest(unknown, allowed)
        fix = f"rename it to {closest!r}" if closest else f"use one of {', '.join(allowed)}"
        raise InputError(source, f"config {'.'.join([*path, unknown])}: unknown key",
                         f"{fix} (every key is documented in config/README.md)")
    where = ".".join(path) or "the config"
    section = f"the {path[0]} section" if len(path) > 1 else "it"
    raise InputError(source, f"config {where}: {_short(err.message)}",
                     f"fix {section} (every key is documented in config/README.md)")


def _closest(key: str, allowed: list[str]) -> str | None:
    """The valid key nearest to a misspelt one (``lrr`` -> ``lr``), or None."""
    import difflib

    match = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    return match[0] if match else None


def _short(message: str, limit: int = 200) -> str:
    """A schema message on one line, cut to ``limit`` characters (a whole section's value
    can be long)."""
    line = " ".join(message.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def check_run_config(config: dict[str, Any], *, source: str | Path | None = None) -> None:
    """Check the whole run config in place, as the workflow starts: strings that Snakemake's
    ``--config`` parsing leaves (``"32"``, ``"false"``, ``"null"``) become the types the
    schema asks for, the top level and every section are validated, and the schema defaults
    are filled in.

    Raises
    ------
    InputError
        For the first problem: one line with the full key path, and for a misspelt key the
        closest valid one.
    """
    top = load_schema("config")
    config.update(coerce_strings(config, top))
    sections = schema_sections()
    for section in sections:
        if isinstance(config.get(section), dict):
            config[section] = coerce_strings(config[section], load_schema(section),
                                             same_keys=load_schema(section))
    _raise_first_error(config, top, [], source=source)
    for section in sections:
        config.setdefault(section, {})
        _raise_first_error(config[section], load_schema(section), [section], source=source)


#: Strings that ``--config`` leaves for a YAML null or boolean.
_NULLS = {"null", "none", "~", ""}
_BOOLEANS = {"true": True, "false": False, "yes": True, "no": False}


def coerce_strings(value: Any, schema: Mapping[str, Any], *,
                   same_keys: Mapping[str, Any] | None = None) -> Any:
    """``value`` with strings turned into what the schema's types ask for.

    Snakemake parses ``--config train='{"batch_size": 32}'`` with YAML's base loader, so every
    scalar inside arrives as a string (``"32"``), and ``demo_data=false`` as ``"false"``. A
    string that the schema accepts as a string (no type, type string, or one of its enum) is
    kept; otherwise it becomes an integer, number, boolean or null when one of those types is
    allowed and the text reads as one. ``same_keys`` is the schema whose properties describe
    the values of a per-name mapping without properties of its own (``train.head_settings``).
    """
    if isinstance(value, dict):
        props = schema.get("properties")
        if props is None and isinstance(schema.get("additionalProperties"), dict):
            extra = schema["additionalProperties"]
            return {k: coerce_strings(v, extra, same_keys=same_keys) for k, v in value.items()}
        if props is None and same_keys is not None and schema.get("type") == "object":
            props = same_keys.get("properties", {})
        return {k: coerce_strings(v, (props or {}).get(k, {}), same_keys=same_keys)
                for k, v in value.items()}
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [coerce_strings(v, schema["items"], same_keys=same_keys) for v in value]
    if isinstance(value, str):
        return _coerce_text(value, schema)
    return value


def _schema_types(schema: Mapping[str, Any]) -> tuple[set[str], list[Any] | None]:
    """The types a schema allows (over ``oneOf``/``anyOf`` too) and the string enum, if any."""
    kinds: set[str] = set()
    enum: list[Any] | None = None
    for alt in [schema, *schema.get("oneOf", []), *schema.get("anyOf", [])]:
        kind = alt.get("type")
        kinds |= set(kind) if isinstance(kind, list) else ({kind} if kind else set())
        if "enum" in alt:
            enum = [*(enum or []), *alt["enum"]]
    return kinds, enum


def _coerce_text(text: str, schema: Mapping[str, Any]) -> Any:
    """One string as the schema's type: kept where a string is allowed, else null, boolean,
    integer or number when the text reads as one (else kept, for validation to name)."""
    kinds, enum = _schema_types(schema)
    if not kinds or ("string" in kinds and (enum is None or text in enum)):
        return text
    word = text.strip().lower()
    if "null" in kinds and word in _NULLS:
        return None
    if "boolean" in kinds and word in _BOOLEANS:
        return _BOOLEANS[word]
    if kinds & {"integer", "number"}:
        try:
            return int(text)
        except ValueError:
            pass
    if "number" in kinds:
        try:
            return float(text)
        except ValueError:
            pass
    return text


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
    known = list(properties)
    unknown = sorted(set(value) - set(known))
    if unknown:
        closest = _closest(unknown[0], known)
        fix = f"rename it to {closest!r}" if closest else f"use {', '.join(sorted(known))}"
        raise InputError(source, f"unknown config key {unknown[0]!r}", f"{fix} (config/README.md)")
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
