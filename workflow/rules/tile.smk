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
