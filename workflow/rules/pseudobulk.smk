# Pseudo-bulk from spatial data (config `pseudobulk`): windows of each section of a spot-mode
# sheet become region samples (sheet `roi`), their bulk profile the summed counts of their
# spots. Only in the DAG when pseudobulk.spots_samples is set. A checkpoint: the jobs of the
# regions are planned from its sheet once it is written, in the same run (common.smk,
# sample_table).


checkpoint pseudobulk:
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


# The map-versus-spots ceiling (pseudobulk.ceiling_config): the spot-mode config of the same
# sections runs as a nested Snakemake run in results/ceiling/ (its own results/, logs and
# manifest there), with this run's data_root and the given cores; the report reads its first
# head's out-of-fold spot predictions.
if CEILING_PREDICTIONS:

    rule ceiling:
        input:
            config=lambda w: PSEUDOBULK["ceiling_config"],
            sheet=lambda w: PSEUDOBULK["spots_samples"],
        output:
            CEILING_PREDICTIONS,
        log:
            f"{RESULTS}/logs/ceiling.log",
        threads: lambda w: max(1, (given_cores() or 2) // 2)
        resources:
            mem_mb=8000,
            runtime=600,
        params:
            snakefile=REPO / "Snakefile",
            workdir=CEILING_DIR,
            root=lambda w: (
                f"data_root={shlex.quote(os.path.abspath(DATA_ROOT))}" if DATA_ROOT else ""
            ),
        shell:
            "snakemake -s {params.snakefile} -d {params.workdir} "
            "--configfile $(realpath {input.config}) --config {params.root} "
            "samples=$(realpath {input.sheet}) --cores {threads} > {log} 2>&1"
