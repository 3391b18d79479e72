# slide2expr: predict gene expression from H&E whole-slide images.
# Thin on purpose: configuration, validation, one rule file per stage, and `rule all`.
# Logic lives in the `slide2expr` package; rules only call its CLI.

from snakemake.utils import min_version

min_version("8.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/tile.smk"
include: "workflow/rules/extract.smk"
include: "workflow/rules/join.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/heatmap.smk"
include: "workflow/rules/viewer.smk"
include: "workflow/rules/compare.smk"
include: "workflow/rules/manifest.smk"  # last: it waits for every other target


rule all:
    # Each stage's rule file adds its final outputs to ALL_TARGETS (see common.smk).
    input:
        ALL_TARGETS,
    default_target: True
