"""Regions of a slide as samples: the sample sheet's ``roi`` and ``roi_units`` columns.

A row whose ``roi`` cell is set is a *region sample*: only the part of its slide inside the
region is tiled, so every later stage (extraction, join, training, prediction, heatmaps, the
viewer) sees that region as its own sample. Several rows may name the same slide (tissue
microarray cores, several biopsies on one glass, pseudo-bulk windows of a spatial section).

An ``roi`` cell is one of

- ``x0,y0,x1,y1``: a box (left, top, right, bottom);
- a WKT polygon, ``POLYGON ((x y, x y, ...))`` (or ``MULTIPOLYGON``);
- ``FILE.geojson:NAME`` (``FILE.geojson#NAME`` at the command line; ``#`` starts a comment in
  the sheet): the polygon of the feature called ``NAME`` in a GeoJSON file (its
  ``properties.name``, or ``properties.classification.name`` as QuPath exports it); a
  relative ``FILE`` is taken relative to the sheet's ``data_root`` like every other path.

``roi_units`` says what the numbers are: ``px`` (level-0 pixels, the default, as QuPath and
OpenSlide use them) or ``um`` (micrometres from the slide's top-left corner; converted with
the slide's resolution at the tile stage).

Checks: the sheet (:func:`check_sheet_regions`) refuses a cell that does not parse, an empty
or self-crossing polygon, an unknown unit, a GeoJSON file or feature that is not there, and
two regions of one slide that overlap (their tiles would be shared, so one tile could train
a model that is then tested on it); the tile stage (:func:`region_in_level0`,
:func:`check_region_inside`) refuses a region that reaches past the slide, and one with no
tissue tile in it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slide2expr.errors import InputError

#: The units an ``roi`` may be given in.
ROI_UNITS = ("px", "um")
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_BOX = re.compile(rf"^\s*({_NUMBER})\s*,\s*({_NUMBER})\s*,\s*({_NUMBER})\s*,\s*({_NUMBER})\s*$")
_GEOJSON = re.compile(r"^(?P<file>.+\.(?:geo)?json)[:#](?P<name>.+)$", re.IGNORECASE)


@dataclass(frozen=True)
class Region:
    """A region of a slide, in the units it was given in.

    Attributes
    ----------
    geometry
        A shapely (Multi)Polygon, coordinates in ``units``.
    units
        ``"px"`` (level-0 pixels) or ``"um"`` (micrometres).
    spec
        The sheet's cell, for messages.
    """

    geometry: Any
    units: str
    spec: str

    def in_level0(self, mpp: float | None) -> Any:
        """The geometry in level-0 pixels (``um`` divided by the slide's um/px)."""
        if self.units == "px":
            return self.geometry
        if not mpp:
            raise InputError(None, f"region {self.spec!r} is in micrometres but the slide's "
                             "resolution is unknown", "give the sheet's mpp or roi_units px")
        from shapely import affinity

        return affinity.scale(self.geometry, xfact=1.0 / mpp, yfact=1.0 / mpp, origin=(0, 0))


def parse_region(spec: str, *, units: str = "px", source: str | Path | None = None) -> Region:
    """Parse one ``roi`` cell (see the module docstring).

    Parameters
    ----------
    spec
        The cell: a box, a WKT polygon or ``FILE.geojson:NAME`` (``FILE`` already resolved).
    units
        ``px`` or ``um``.
    source
        The sample sheet (or the command), named in errors.

    Raises
    ------
    InputError
        When the cell does not describe one valid polygon.
    """
    from shapely import box, wkt
    from shapely.errors import ShapelyError

    units = units or "px"
    if units not in ROI_UNITS:
        raise InputError(source, f"roi_units {units!r} is not a unit", "use px (level-0 pixels) "
                         "or um (micrometres)")
    spec = spec.strip()
    boxed = _BOX.match(spec)
    geojson = _GEOJSON.match(spec)
    if boxed:
        x0, y0, x1, y1 = (float(v) for v in boxed.groups())
        if not (x1 > x0 and y1 > y0):
            raise InputError(source, f"roi box {spec!r} has no area", "give left,top,right,bottom "
                             "with right > left and bottom > top")
        geometry = box(x0, y0, x1, y1)
    elif geojson:
        geometry = _geojson_polygon(Path(geojson["file"]), geojson["name"], source=source)
    else:
        try:
            geometry = wkt.loads(spec)
        except (ShapelyError, ValueError, TypeError) as exc:
            raise InputError(source, f"roi {spec[:60]!r} is not a box, a WKT polygon or "
                             "FILE.geojson:NAME", "write e.g. 1000,2000,5000,6000 (left,top,"
                             "right,bottom) or POLYGON ((x y, ...))") from exc
    return Region(geometry=_checked_polygon(geometry, spec, source=source), units=units, spec=spec)


def _checked_polygon(geometry: Any, spec: str, *, source: str | Path | None) -> Any:
    """``geometry`` if it is a valid (Multi)Polygon with area, else :class:`InputError`."""
    from shapely.validation import explain_validity

    if geometry.geom_type not in ("Polygon", "MultiPolygon"):
        raise InputError(source, f"roi {spec[:60]!r} is a {geometry.geom_type}, not a polygon",
                         "give a box or a polygon")
    if geometry.is_empty or geometry.area <= 0:
        raise InputError(source, f"roi {spec[:60]!r} has no area", "give a polygon with area")
    if not geometry.is_valid:
        raise InputError(source, f"roi {spec[:60]!r} is not a valid polygon "
                         f"({explain_validity(geometry)})", "make its outline not cross itself")
    return geometry


def _feature_name(feature: dict[str, Any]) -> str | None:
    props = feature.get("properties") or {}
    name = props.get("name")
    if name is None and isinstance(props.get("classification"), dict):
        name = props["classification"].get("name")
    return None if name is None else str(name)


def _geojson_polygon(path: Path, name: str, *, source: str | Path | None) -> Any:
    """The polygon of the feature called ``name`` in the GeoJSON file ``path``."""
    from shapely.geometry import shape

    if not path.is_file():
        raise InputError(source, f"roi GeoJSON file {path} does not exist",
                         "fix the path (relative to data_root, else the working directory)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"is not readable GeoJSON ({exc})", "export it again") from exc
    features = data.get("features", [data]) if isinstance(data, dict) else data
    if not isinstance(features, list):
        raise InputError(path, "is not a GeoJSON FeatureCollection", "export it again")
    matches = [f for f in features if isinstance(f, dict) and _feature_name(f) == name]
    if len(matches) != 1:
        names = sorted({n for f in features if isinstance(f, dict)
                        for n in [_feature_name(f)] if n})
        problem = "has no feature" if not matches else f"has {len(matches)} features"
        raise InputError(path, f"{problem} named {name!r} (names: {', '.join(names[:10]) or 'none'})",
                         "name each region once (properties.name) and use FILE.geojson:NAME")
    try:
        return shape(matches[0]["geometry"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InputError(path, f"feature {name!r} has no readable geometry", "export it again") from exc


def roi_file(spec: str) -> str | None:
    """The GeoJSON file an ``roi`` cell names, or None (a box or WKT)."""
    match = _GEOJSON.match(spec.strip()) if spec else None
    return match["file"] if match else None


def with_root(spec: str, root: str | Path | None) -> str:
    """``spec`` with a relative GeoJSON file put under ``root`` (the config's ``data_root``)."""
    file = roi_file(spec)
    if file is None or root is None or Path(file).is_absolute():
        return spec
    return f"{Path(root) / file}:{_GEOJSON.match(spec.strip())['name']}"


def check_sheet_regions(sheet: Any, *, source: str | Path) -> None:
    """Parse every ``roi`` cell and refuse overlapping regions of one slide.

    Parameters
    ----------
    sheet
        The sample sheet (``sample_id``, ``slide``, ``roi``, optional ``roi_units``), paths
        already resolved.
    source
        The sheet's path, named in errors.

    Raises
    ------
    InputError
        Naming the sample and the problem: a cell that does not parse, or two regions of one
        slide (in the same units) that overlap, or a whole-slide row beside regions of the
        same slide.
    """
    if "roi" not in sheet.columns:
        return
    units = sheet["roi_units"] if "roi_units" in sheet.columns else [""] * len(sheet)
    by_slide: dict[tuple[str, str], list[tuple[str, Any]]] = {}
    whole: dict[str, str] = {}
    for sample, slide, spec, unit in zip(sheet["sample_id"], sheet["slide"], sheet["roi"], units,
                                         strict=True):
        if not spec:
            whole[str(slide)] = str(sample)
            continue
        try:
            region = parse_region(spec, units=unit or "px", source=source)
        except InputError as exc:
            raise InputError(exc.path, f"sample {sample}: {exc.problem}", exc.fix) from exc
        by_slide.setdefault((str(slide), region.units), []).append((str(sample), region.geometry))
    for (slide, _units), regions in by_slide.items():
        if slide in whole:
            raise InputError(source, f"sample {whole[slide]} is the whole of {Path(slide).name} "
                             f"and sample {regions[0][0]} a region of it: they overlap",
                             "give every row of that slide an roi, or drop one of them")
        _refuse_overlaps(regions, slide=slide, source=source)


def _refuse_overlaps(regions: list[tuple[str, Any]], *, slide: str, source: str | Path) -> None:
    from shapely import STRtree

    tree = STRtree([g for _, g in regions])
    for i, (sample, geometry) in enumerate(regions):
        for j in tree.query(geometry):
            if j <= i:
                continue
            shared = geometry.intersection(regions[j][1]).area
            if shared > 0:
                raise InputError(source, f"regions {sample} and {regions[int(j)][0]} of "
                                 f"{Path(slide).name} overlap ({shared:.0f} square units)",
                                 "make regions of one slide disjoint: a shared tile could "
                                 "train the model that is then tested on it")


def check_region_inside(region_level0: Any, *, width: int, height: int, sample: str,
                        slide: str | Path) -> None:
    """Refuse a region that reaches past the slide's ``width`` x ``height`` level-0 pixels."""
    x0, y0, x1, y1 = region_level0.bounds
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise InputError(slide, f"region of sample {sample} ({x0:.0f},{y0:.0f},{x1:.0f},{y1:.0f} "
                         f"level-0 px) reaches past the slide ({width} x {height} px)",
                         "fix the roi (level-0 pixels, or micrometres with roi_units um)")
