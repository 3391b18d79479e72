# Run manifest: results/manifest.json, written last. Package version and git commit, Python
# and library versions, torch device and precision (and the determinism each stage allows),
# the full resolved config, sha256 of every input file, seeds, start/end time and per-stage
# timings from results/benchmarks/. Include this file last: it waits for every other target.

import json
import shlex

# Everything the other stages produce, so the manifest sees all their benchmark files.
MANIFEST_AFTER = list(dict.fromkeys(ALL_TARGETS))


rule manifest:
    input:
        MANIFEST_AFTER,
    output:
        f"{RESULTS}/manifest.json",
    params:
        results=RESULTS,
        config=lambda w: shlex.quote(json.dumps(config, default=str, sort_keys=True)),
    log:
        f"{RESULTS}/logs/manifest/manifest.log",
    benchmark:
        f"{RESULTS}/benchmarks/manifest/manifest.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        CONDA_ENV
    shell:
        "slide2expr manifest -o {output} --results {params.results} --config-json {params.config} "
        "--no-progress > {log} 2>&1"


ALL_TARGETS.append(f"{RESULTS}/manifest.json")
