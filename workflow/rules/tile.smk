# Tile stage: tissue mask, grid tiles (all modes) and spot patches (spot mode), QC image.
# Config: the `tiling` section (workflow/schemas/tiling.schema.yaml, config/README.md).


rule tile:
    input:
        unpack(tile_inputs),
    output:
        **({"spots": f"{RESULTS}/tiles/spots/{{sample}}.h5"} if MODE == "spot" else {}),
        grid=f"{RESULTS}/tiles/grid/{{sample}}.h5",
        qc=report(
            f"{RESULTS}/qc/{{sample}}.png",
            caption="../report/qc.rst",
            category="QC",
            labels={"sample": "{sample}"},
        ),
    log:
        f"{RESULTS}/logs/tile/{{sample}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/tile/{{sample}}.tsv"
    group:
        "tile"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        spot_args=tile_spot_args,
        mpp=lambda w: cli_option("--mpp", sample_value(w.sample, "mpp")),
        roi=tile_roi_args,
        default_mpp=default_mpp_option(),
        # context_um is read by the context_tiles rule: changing it retiles nothing
        cfg=config_json(*(f"tiling.{k}" for k in config["tiling"] if k != "context_um")),
    shell:
        "slide2expr tile {input.slide} --sample-id {wildcards.sample} -o {output.grid} "
        "--qc {output.qc} {params.spot_args} {params.mpp} {params.default_mpp} {params.roi} "
        "--config-json {params.cfg} > {log} 2>&1"


# Context windows (tiling.context_um, spot mode): one window of {um} micrometres centred on
# each spot, derived from the spot tiles; padded white past the slide edge (recorded).
rule context_tiles:
    input:
        f"{RESULTS}/tiles/spots/{{sample}}.h5",
    output:
        f"{RESULTS}/tiles/ctx{{um}}/{{sample}}.h5",
    log:
        f"{RESULTS}/logs/tile/ctx{{um}}/{{sample}}.log",
    wildcard_constraints:
        um=r"[0-9]+",
    group:
        "tile"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "slide2expr context-tiles {input} --um {wildcards.um} -o {output} > {log} 2>&1"


# Grid context windows (heatmaps of heads with ctx{um} inputs): one window of {um}
# micrometres centred on each grid tile, derived from the grid tiles, extracted like any
# tiling (features/{encoder}/grid_ctx{um}/). Only in the DAG when such a head paints maps.
rule grid_context_tiles:
    input:
        f"{RESULTS}/tiles/grid/{{sample}}.h5",
    output:
        f"{RESULTS}/tiles/grid_ctx{{um}}/{{sample}}.h5",
    log:
        f"{RESULTS}/logs/tile/grid_ctx{{um}}/{{sample}}.log",
    wildcard_constraints:
        um=r"[0-9]+",
    group:
        "tile"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "slide2expr context-tiles {input} --um {wildcards.um} -o {output} > {log} 2>&1"


# Regions of a slide (sheet `roi`, or the pseudobulk checkpoint's windows): one job tiles all
# the regions of a slide (one slide open, one tissue mask, one interpreter start) into
# results/tiles/regions/{slide}/; region_tiles links each region's files to the usual paths
# (tiles/grid/{sample}.h5, qc/{sample}.png), so every later stage reads them as before.
if HAS_REGIONS:

    ruleorder: region_tiles > tile

    rule tile_regions:
        input:
            unpack(tile_regions_inputs),
        output:
            directory(SLIDE_GROUP_DIR["tiles"]),
        log:
            f"{RESULTS}/logs/tile/regions/{{slide}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/tile/regions/{{slide}}.tsv"
        wildcard_constraints:
            slide=r"[A-Za-z0-9_-][A-Za-z0-9._-]*",
        group:
            "tile"
        conda:
            CONDA_ENV
        threads: 1
        resources:
            mem_mb=4000,
            runtime=30,
        params:
            regions=tile_regions_args,
            spot_args=tile_regions_spot_args,
            mpp=tile_regions_mpp_arg,
            default_mpp=default_mpp_option(),
            cfg=config_json(*(f"tiling.{k}" for k in config["tiling"] if k != "context_um")),
        shell:
            "slide2expr tile {input.slide} {params.regions} {params.spot_args} {params.mpp} "
            "{params.default_mpp} --config-json {params.cfg} > {log} 2>&1"

    rule region_tiles:
        input:
            region_tiles_input,
        output:
            **({"spots": f"{RESULTS}/tiles/spots/{{sample}}.h5"} if MODE == "spot" else {}),
            grid=f"{RESULTS}/tiles/grid/{{sample}}.h5",
            qc=report(
                f"{RESULTS}/qc/{{sample}}.png",
                caption="../report/qc.rst",
                category="QC",
                labels={"sample": "{sample}"},
            ),
        wildcard_constraints:
            sample=REGION_SAMPLE_WILDCARD,
        localrule: True
        params:
            link=lambda w, input, output: link_files(
                region_tiles_sources(w, input, output), list(output), str(input)
            ),
        shell:
            "{params.link}"
