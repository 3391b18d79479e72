"""The synthetic demo cohort, whose answer is known: planted genes follow the tissue."""

from slide2expr.demo.cohort import DemoSpec, make_demo_cohort

__all__ = ["DemoSpec", "make_demo_cohort"]
