"""slide2expr: predict gene expression from H&E whole-slide images."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("slide2expr")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
