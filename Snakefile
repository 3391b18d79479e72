# slide2expr: predict gene expression from H&E whole-slide images.
# Thin on purpose: configuration, validation, one rule file per stage, and `rule all`.
# Logic lives in the `slide2expr` package; rules only call its CLI.

from snakemake.utils import min_version

min_version("8.0")


# The demo (config/config.yaml) when no --configfile is given; a --configfile of your own
# starts from the schema defaults (workflow/schemas/), never from the demo's values.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


wildcard_constraints:
    sample=r"[A-Za-z0-9_-][A-Za-z0-9._-]*",
    tiling=r"grid|spots|ctx[0-9]+|grid_ctx[0-9]+",
    encoder=r"[A-Za-z0-9][A-Za-z0-9._-]*",


include: "workflow/rules/demo.smk"
include: "workflow/rules/pseudobulk.smk"
include: "workflow/rules/tile.smk"
include: "workflow/rules/extract.smk"
include: "workflow/rules/join.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/heatmap.smk"
include: "workflow/rules/viewer.smk"
include: "workflow/rules/compare.smk"
include: "workflow/rules/manifest.smk"


rule all:
    default_target: True
    input:
        # a function: a pseudo-bulk run's regions are known once its checkpoint has run
        lambda w: get_final_output(),
