"""Typed attribute records: what the contracts' files hold as attributes, as fields.

Each contract declares one dataclass (:class:`~slide2expr.contracts.tiles.TileAttrs`,
:class:`~slide2expr.contracts.features.FeatureAttrs`,
:class:`~slide2expr.contracts.tilemaps.TileMapAttrs`) with a field for every attribute the
package reads or writes, named as the attribute is; anything else a file carries (attributes of
other tools or older versions, attributes only people read) is kept in ``extra`` and written
back unchanged. Readers return a record; writers take one; nothing outside
:mod:`slide2expr.contracts` reads an attribute by its name as a string.

A record keeps the order its attributes were set in, as a dict keeps the order of its keys
(a field set to None is no attribute and leaves that order): an HDF5 file stores its
attributes in the order they were created, so a record written back, or rebuilt field by
field in the order the writer used to fill a dict, gives the very same bytes.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

from slide2expr.contracts._h5 import FORMAT_ATTR

R = TypeVar("R", bound="AttrRecord")


@dataclasses.dataclass(kw_only=True, repr=False)
class AttrRecord:
    """Base of the typed attribute records (see the module docstring).

    Attributes
    ----------
    slide2expr_format
        The format stamp the file was read with (``"<contract>/<version>"``; None for a file
        written before stamps, or a record not read from a file). Writers set their own.
    extra
        Attributes without a field, in the file's order.
    """

    slide2expr_format: str | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    # -- order ----------------------------------------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        if name in self.field_names():
            order = self._order()
            if value is None:
                if name in order:
                    order.remove(name)
            elif name not in order:
                order.append(name)

    def _order(self) -> list[str]:
        """The names set so far, fields and extra keys, in the order they were set."""
        return self.__dict__.setdefault("_key_order", [])

    @classmethod
    def field_names(cls) -> frozenset[str]:
        """The attribute names this record has a field for (``extra`` is none)."""
        names = cls.__dict__.get("_field_names")
        if names is None:
            names = frozenset(f.name for f in dataclasses.fields(cls)) - {"extra"}
            type.__setattr__(cls, "_field_names", names)
        return names

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.to_attrs()!r})"

    # -- conversion -----------------------------------------------------------------------
    @classmethod
    def from_attrs(cls: type[R], attrs: Mapping[str, Any]) -> R:
        """The record of a file's attributes (plain values, in the file's order)."""
        record = cls()
        record.update(attrs)
        return record

    def update(self, attrs: Mapping[str, Any]) -> None:
        """Set each of ``attrs`` in order: a field by its name, anything else in ``extra``."""
        names = self.field_names()
        for key, value in attrs.items():
            key = str(key)
            if key in names:
                setattr(self, key, value)
            else:
                self.extra[key] = value
                order = self._order()
                if key not in order:
                    order.append(key)

    def items(self) -> Iterator[tuple[str, Any]]:
        """``(attribute, value)`` of every attribute set, in the order they were set; None
        is no attribute and is left out (HDF5 cannot store it)."""
        names = self.field_names()
        seen = set()
        for key in list(self._order()):
            seen.add(key)
            if key in names:
                value = getattr(self, key)
            elif key in self.extra:
                value = self.extra[key]
            else:
                continue
            if value is not None:
                yield key, value
        for key, value in self.extra.items():
            if key not in seen and value is not None:
                yield key, value

    def to_attrs(self) -> dict[str, Any]:
        """The attributes to write, in order (:meth:`items`)."""
        return dict(self.items())

    def to_record(self, cls: type[R]) -> R:
        """This record as another contract's record (e.g. a features file's attributes as
        the tile map's), the order kept."""
        return cls.from_attrs(self.to_attrs())

    def copy(self: R) -> R:
        """A deep copy, the order kept."""
        return copy.deepcopy(self)

    def without_format(self: R) -> R:
        """A copy without the format stamp (it describes the file read, not a new one)."""
        out = self.copy()
        out.slide2expr_format = None
        return out


__all__ = ["FORMAT_ATTR", "AttrRecord"]
