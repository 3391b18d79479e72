# Pseudo-bulk from spatial data (config `pseudobulk`): windows of each section of a spot-mode
# sheet become region samples (sheet `roi`), their bulk profile the summed counts of their
# spots. Only in the DAG when pseudobulk.spots_samples is set.


rule pseudobulk:
    input:
        sheet=lambda w: PSEUDOBULK["spots_samples"],
    output:
        sheet=PSEUDOBULK_OUT["sheet"],
        expression=PSEUDOBULK_OUT["expression"],
    log:
        f"{RESULTS}/logs/pseudobulk.log",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        root=cli_option("--data-root", DATA_ROOT),
        window=lambda w: PSEUDOBULK["window_um"],
        min_spots=lambda w: PSEUDOBULK["min_spots"],
        min_tissue=lambda w: PSEUDOBULK["min_tissue"],
        genes=lambda w: PSEUDOBULK["genes"],
        tile_um=config["tiling"]["tile_px"] * config["tiling"]["target_mpp"],
        tile_min_tissue=config["tiling"]["min_tissue"],
    shell:
        "slide2expr pseudobulk {input.sheet} --out-sheet {output.sheet} "
        "--out-expression {output.expression} {params.root} --window-um {params.window} "
        "--min-spots {params.min_spots} --min-tissue {params.min_tissue} --genes {params.genes} "
        "--tile-um {params.tile_um} --tile-min-tissue {params.tile_min_tissue} > {log} 2>&1"
