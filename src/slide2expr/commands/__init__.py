"""CLI subcommands, one thin module per workflow stage; each exposes ``register(app)``.

A command parses its options, resolves its config section (:mod:`._config`) and calls its
stage's entry function. Stage packages are imported inside the command functions, not at
module level: ``slide2expr --help`` and every Snakemake job's start-up would otherwise pay
for torch, anndata and scanpy (seconds) before doing anything.
"""
