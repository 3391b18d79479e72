"""``python -m slide2expr``: the same command line as ``slide2expr``."""

from slide2expr.cli import main

if __name__ == "__main__":
    main()
