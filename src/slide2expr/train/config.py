"""Settings of the train stage (the ``train:`` section of ``config/config.yaml``).

The defaults here equal those of ``workflow/schemas/train.schema.yaml`` (a test checks it);
``config/README.md`` documents every key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from slide2expr.errors import InputError

#: ``train.select_blend`` values (:mod:`slide2expr.train.selection`).
BLEND_MODES = ("patients", "always", "never")
#: ``train.spread`` values (:mod:`slide2expr.train.spread`).
SPREAD_MODES = ("calibrated", "calibrated_ridge", "members")


@dataclass
class GeneSelection:
    """Which genes a fold models, chosen on its training units only.

    Attributes
    ----------
    method
        ``"all"`` (every gene passing the filter), ``"mean"`` (top ``n_top`` by mean) or
        ``"hvg"`` (top ``n_top`` highly variable genes, scanpy's ``seurat`` flavour).
    n_top
        Number of genes for ``mean``/``hvg``; ``None`` keeps all passing the filter.
    min_fraction
        A gene must have counts > 0 in at least this fraction of training units.
    min_mean
        ... and a mean log1p CP10k of at least this.
    list
        A file of gene symbols, one a line (``#`` comments allowed): only these genes are
        candidates (a published gene set, e.g. her2st's 785 genes); ``None``: all genes.
    """

    method: str = "all"
    n_top: int | None = None
    min_fraction: float = 0.1
    min_mean: float = 0.0
    list: str | None = None


#: Settings that ``train.head_settings`` may set per head.
HEAD_SETTINGS = ("hidden", "dropout", "input_dropout", "lr", "weight_decay", "aux_weight",
                 "pearson_weight", "input_pca", "output_rank",
                 "batch_size", "max_epochs", "min_epochs", "patience", "ensemble", "refit")


#: The default context head's input blocks (spot mode): the spot, two context windows, the
#: 300 um neighbour mean and the section mean (docs/benchmarks.md, "Two patients").
CONTEXT_INPUTS = ("spot", "ctx300", "ctx1000", "nbr300", "slide")
#: The default context head's settings: narrow tokens, each block reduced to 64 PCs, 32 PCA
#: output axes, input dropout, and 4 members cross-fitted over the inner validation groups.
CONTEXT_SETTINGS = {"hidden": 64, "input_dropout": 0.5, "input_pca": 64, "output_rank": 32,
                    "lr": 0.002, "patience": 6, "max_epochs": 60, "ensemble": 8}


@dataclass
class TrainConfig:
    """Every setting of the train stage; see ``config/README.md``."""

    heads: list[str] = field(default_factory=lambda: ["context"])
    folds: int | str = 5
    group_by: str = "patient"
    seed: int = 0
    genes: GeneSelection = field(default_factory=GeneSelection)
    max_epochs: int = 100
    min_epochs: int = 5
    lr: float = 1e-3
    weight_decay: float = 1e-2
    hidden: int = 256
    dropout: float = 0.25
    input_dropout: float = 0.0
    batch_size: int = 64
    bag_batch_size: int = 4
    max_tiles: int = 0
    patience: int = 10
    val_fraction: float = 0.2
    ensemble: int = 1
    refit: bool = False
    he2rna_ks: list[int] = field(default_factory=lambda: [1, 2, 5, 10, 20, 50, 100])
    supertiles: int = 0
    attention_dim: int = 128
    baselines: list[str] = field(default_factory=lambda: ["ridge", "hest", "mean"])
    ridge_alphas: list[float] = field(
        default_factory=lambda: [0.1, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6])
    hest_pca: int = 256
    features_key: str | None = None
    inputs: list[str] = field(default_factory=lambda: ["spot"])
    head_inputs: dict[str, list[str]] = field(
        default_factory=lambda: {"context": list(CONTEXT_INPUTS)})
    head_settings: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {"context": dict(CONTEXT_SETTINGS)})
    aux_weight: float = 0.5
    pearson_weight: float = 0.0
    input_pca: int = 0
    output_rank: int = 0
    accelerator: str = "auto"
    num_workers: int = 0
    augment_views: list[str] = field(default_factory=list)
    tta: bool = False
    select: str = "auto"
    select_blend: str = "patients"
    spread: str = "calibrated"
    loop: str = "plain"

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None, *, source: str | None = None) -> TrainConfig:
        """Build from a (possibly partial) ``train:`` mapping; unknown keys are an error.

        Without ``head_settings`` the context head's defaults (:data:`CONTEXT_SETTINGS`) apply
        except for the keys the mapping sets itself; without ``head_inputs`` but with
        ``inputs``, every head reads ``inputs``.
        """
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(source, f"unknown train setting(s) {unknown}",
                             f"use only {sorted(known)} (see config/README.md)")
        genes = values.pop("genes", None) or {}
        gene_known = {f.name for f in dataclasses.fields(GeneSelection)}
        bad = sorted(set(genes) - gene_known)
        if bad:
            raise InputError(source, f"unknown train.genes setting(s) {bad}",
                             f"use only {sorted(gene_known)}")
        if "head_settings" not in values:  # the default context settings yield to keys set
            values["head_settings"] = {"context": {k: v for k, v in CONTEXT_SETTINGS.items()
                                                   if k not in values}}
        if "head_inputs" not in values and "inputs" in values:  # explicit inputs: every head
            values["head_inputs"] = {}
        if isinstance(values.get("select"), bool):  # YAML reads a bare off/on as a boolean
            values["select"] = "auto" if values["select"] else "off"
        config = cls(**values, genes=GeneSelection(**genes))
        config.validate(source)
        return config

    def inputs_for(self, head: str) -> list[str]:
        """The input blocks of ``head``: ``head_inputs[head]``, else ``inputs``."""
        return list(self.head_inputs.get(head) or self.inputs)

    def for_head(self, head: str) -> TrainConfig:
        """These settings with ``head_settings[head]`` applied (the head's own
        hyperparameters, e.g. a smaller width for the context head)."""
        override = dict(self.head_settings.get(head) or {})
        return dataclasses.replace(self, **override) if override else self

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON/YAML serialisable)."""
        return dataclasses.asdict(self)

    def validate(self, source: str | None = None) -> None:
        """Check values a schema cannot (e.g. ``folds``)."""
        from slide2expr.predict.nets import NETS as HEADS  # torch (not Lightning): only here

        def fail(problem: str, fix: str) -> None:
            raise InputError(source, problem, fix)

        for head in self.heads:
            if head not in HEADS:
                fail(f"unknown head {head!r}", f"use one of {sorted(HEADS)}")
        if isinstance(self.folds, str):
            if self.folds != "loo":
                fail(f"train.folds is {self.folds!r}", "use an integer >= 2 or 'loo'")
        elif int(self.folds) < 2:
            fail(f"train.folds is {self.folds}", "use an integer >= 2 or 'loo'")
        if self.genes.method not in ("all", "mean", "hvg"):
            fail(f"train.genes.method is {self.genes.method!r}", "use all, mean or hvg")
        if self.genes.n_top is not None and self.genes.n_top < 1:
            fail("train.genes.n_top must be positive", "set it to null or a positive integer")
        for name in self.baselines:
            if name not in ("ridge", "hest", "mean"):
                fail(f"unknown baseline {name!r}", "use ridge, hest and/or mean")
        if not 0 < self.val_fraction < 1:
            fail(f"train.val_fraction is {self.val_fraction}", "use a value in (0, 1)")
        for head, override in self.head_settings.items():
            bad = sorted(set(override) - set(HEAD_SETTINGS))
            if bad:
                fail(f"train.head_settings.{head} has {bad}",
                     f"use only {', '.join(HEAD_SETTINGS)}")
        for head, blocks in {"": self.inputs, **self.head_inputs}.items():
            if not blocks or blocks[0] != "spot" or len(set(blocks)) != len(blocks):
                where = f"train.head_inputs.{head}" if head else "train.inputs"
                fail(f"{where} is {blocks}", "start with spot and name each block once, e.g. "
                     "[spot, ctx300, ctx1000]")
        if self.select not in ("auto", "off"):
            fail(f"train.select is {self.select!r}", "use auto (ship the head or its ridge, "
                 "whichever wins inner validation) or off (always the head)")
        if self.select_blend not in BLEND_MODES:
            fail(f"train.select_blend is {self.select_blend!r}", "use patients (compare the "
                 "blend only when inner validation is grouped by patient), always or never")
        if self.spread not in SPREAD_MODES:
            fail(f"train.spread is {self.spread!r}", "use calibrated (the prediction and the "
                 "members' SD, calibrated on inner validation), calibrated_ridge (also the "
                 "head-ridge disagreement) or members (the members' SD as it is)")
        if self.loop not in ("plain", "lightning"):
            fail(f"train.loop is {self.loop!r}", "use plain (the fast spot-mode loop) or "
                 "lightning (the Lightning Trainer)")
        if self.ensemble < 1:
            fail("train.ensemble must be >= 1", "set it to 1 for a single model per fold")
