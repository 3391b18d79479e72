"""slide2expr: predict gene expression from H&E whole-slide images."""

from __future__ import annotations

__all__ = ["__version__"]


def __getattr__(name: str) -> str:
    # The version is looked up on first use: importlib.metadata costs ~70 ms, which every
    # CLI start-up (`slide2expr --help`) would pay otherwise.
    if name != "__version__":
        raise AttributeError(f"module 'slide2expr' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        value = version("slide2expr")
    except PackageNotFoundError:  # running from a source tree without installation
        value = "0.0.0+unknown"
    globals()["__version__"] = value
    return value
