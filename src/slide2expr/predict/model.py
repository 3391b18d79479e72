"""Load trained heads for prediction: one fold's model, a fold's ensemble, or all folds
averaged, and which of them a slide gets (the fold that held it out, else all).

A fold directory (:mod:`slide2expr.contracts.models`, written by
:func:`slide2expr.train.save.save_head`) holds ``head.safetensors`` (the network's weights
and standardisation buffers) and ``head.json`` (head name, hyperparameters, gene order,
encoder, mode, fold). Nothing is unpickled: weights come from safetensors, metadata from JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from slide2expr.contracts.models import (
    META,
    RETRAIN,
    RIDGE_DIR,
    WEIGHTS,
    fold_dirs,
    held_out_fold,
    read_head_meta,
    read_spread,
    weighted_members,
)
from slide2expr.errors import InputError
from slide2expr.predict.bags import make_supertiles
from slide2expr.predict.nets import HeadNet, build_net
from slide2expr.predict.plausible import Bounds, bounds_from_metas
from slide2expr.predict.spread import apply_spread, member_sd, spread_terms


def load_fold_head(fold_dir: str | Path) -> tuple[HeadNet, dict]:
    """Load one fold's head network (eval mode, CPU) and its metadata.

    Only the plain network is built (:mod:`slide2expr.predict.nets`), never the Lightning
    training wrapper, so prediction does not import Lightning or torchmetrics. The weights
    are loaded strictly: every tensor of the network must be in ``head.safetensors`` with its
    shape, so a damaged file never predicts from initial weights.

    Raises
    ------
    InputError
        If ``head.json`` or ``head.safetensors`` is missing, unreadable or incomplete.
    """
    fold_dir = Path(fold_dir)
    meta_path, weights_path = fold_dir / META, fold_dir / WEIGHTS
    if not meta_path.is_file() or not weights_path.is_file():
        raise InputError(fold_dir, f"has no {META} and {WEIGHTS}",
                         "pass a model directory written by `slide2expr train`")
    meta = read_head_meta(meta_path)
    try:
        module = build_net(meta["head"], **meta["hparams"])
    except InputError:
        raise
    except KeyError as exc:
        raise InputError(meta_path, f"names an unknown head {meta['head']!r}", RETRAIN) from exc
    except (TypeError, ValueError) as exc:
        raise InputError(meta_path, f"does not describe a head ({exc})", RETRAIN) from exc
    _load_weights_strictly(module, weights_path)
    check_genes_match_outputs(meta["genes"], module.n_genes, source=meta_path)
    module.eval()
    return module, meta


def _load_weights_strictly(module: torch.nn.Module, path: Path) -> None:
    """Load ``path`` into ``module``; every tensor must be there, with its shape."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise InputError(path, f"is not a safetensors file ({exc})", RETRAIN) from exc
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = [f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                 for label, keys in (("missing tensor(s)", missing),
                                     ("unexpected tensor(s)", unexpected),
                                     ("tensor(s) of the wrong shape", wrong)) if keys]
        raise InputError(path, f"does not match the {module.__class__.__name__} "
                         f"described in {META}: {'; '.join(parts)}", RETRAIN)
    nonfinite = sorted(k for k, v in state.items()
                       if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if nonfinite:
        raise InputError(path, f"holds NaN or infinite weights ({', '.join(nonfinite[:3])}"
                         f"{' ...' if len(nonfinite) > 3 else ''}): the file is damaged", RETRAIN)
    module.load_state_dict(state)


def check_genes_match_outputs(genes: list, n_outputs: int, *, source: str | Path) -> None:
    """A head's gene list names each of its network's outputs once, in order.

    Raises
    ------
    InputError
        If ``genes`` is empty, has duplicates, or its length is not ``n_outputs``: the
        predictions' columns would be named wrongly (or there would be none).
    """
    names = [str(g) for g in genes]
    if len(names) != n_outputs:
        raise InputError(source, f"lists {len(names)} genes but the network in {WEIGHTS} "
                         f"predicts {n_outputs}", RETRAIN)
    if not names:
        raise InputError(source, "lists no genes", RETRAIN)
    duplicated = sorted({g for g in names if names.count(g) > 1})
    if duplicated:
        raise InputError(source, f"lists gene(s) more than once: {', '.join(duplicated[:3])}",
                         RETRAIN)


def check_encoder(head: TrainedHead, features_encoder: object, *,
                  source: str | Path | None) -> None:
    """The one check that features suit a head: both name the same encoder.

    ``slide2expr predict``, heatmaps and the viewer's predictions go through it. A features
    file or ``head.json`` that names no encoder is not refused here (its width is checked
    when the rows reach the network).

    Raises
    ------
    InputError
        If the head (``head.json`` ``encoder``) was trained on another encoder's features.
    """
    wanted = head.meta.get("encoder")
    if wanted and features_encoder and str(features_encoder) != str(wanted):
        raise InputError(source, f"has {features_encoder} features but the model was trained "
                         f"on {wanted}", f"use features from the {wanted} encoder")


@dataclass
class TrainedHead:
    """One trained head, or the average of several (the fold models).

    Attributes
    ----------
    genes
        Column order of every prediction.
    head
        Head name (``mlp``, ``he2rna``, ``abmil``).
    kind
        ``"spot"`` or ``"bulk"``.
    meta
        Metadata of the first member (``head.json``).
    """

    genes: list[str]
    head: str
    kind: str
    meta: dict
    members: list[HeadNet] = field(repr=False, default_factory=list)
    member_columns: list[np.ndarray] = field(repr=False, default_factory=list)
    #: Each member's weight in the prediction (summing to 1); None: equal weights.
    member_weights: list[float] | None = field(repr=False, default=None)
    #: Per-gene ``(low, high)`` plausible range (:mod:`slide2expr.predict.plausible`): the
    #: union over the averaged models; None for a model trained before it was recorded.
    plausible: Bounds | None = field(repr=False, default=None)
    #: Per member, the position of its fold in :attr:`fold_spreads`.
    fold_of: list[int] | None = field(repr=False, default=None)
    #: Per member, whether it is one of the head's ensemble members (not a fold's ridge).
    head_member: list[bool] | None = field(repr=False, default=None)
    #: Per fold, its calibrated spread (:func:`slide2expr.contracts.models.read_spread`:
    #: coefficients and scales in :attr:`genes` order); None: the spread is the members' SD.
    fold_spreads: list[tuple[np.ndarray, np.ndarray]] | None = field(repr=False, default=None)

    def predict_tiles(self, features: np.ndarray, *, batch_size: int = 8192) -> np.ndarray:
        """Per-tile (or per-spot) predicted expression.

        Parameters
        ----------
        features
            ``(N, D)`` raw encoder features of one slide's tiles (or spots); for a head with
            context inputs the concatenated blocks (``meta['inputs']``).
        batch_size
            Rows per forward pass.

        Returns
        -------
        np.ndarray
            ``(N, G)`` float32 in the dataset's units (log1p CP10k), columns in
            :attr:`genes`. For ``mlp`` this is the head applied to each row; for ``he2rna``
            the per-tile scores; for ``abmil`` the per-tile predictions whose attention-weighted
            mean is the slide's.
        """
        return self.predict_tiles_spread(features, batch_size=batch_size)[0]

    @torch.no_grad()
    def predict_tiles_spread(self, features: np.ndarray, *, batch_size: int = 8192
                             ) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`predict_tiles` and its spread.

        Returns
        -------
        tuple of (numpy.ndarray, numpy.ndarray or None)
            The weighted mean over the models ``(N, G)`` float32, and its spread ``(N, G)``
            float32; None with a single model. With :attr:`fold_spreads` (every fold trained
            with ``train.spread: calibrated``) the spread is each fold's calibrated SD
            (:mod:`slide2expr.train.spread`: ``scale * (c0 + c1 * prediction + c3 *
            members' SD)``, the fold's prediction and its head members' SD with ``ddof=1``),
            averaged over the folds with their weights; else the models' weighted standard
            deviation (population: two members at ``m - d`` and ``m + d`` give ``d``).
        """
        x = self._check(features)
        if len(self.members) > 1 and self.fold_spreads is not None:
            return self._calibrated(x, batch_size)
        total = np.zeros((x.shape[0], len(self.genes)), dtype=np.float64)
        squares = np.zeros_like(total) if len(self.members) > 1 else None
        for i, weight in enumerate(self.weights()):
            pred = self._member_predict(i, x, batch_size)
            total += weight * pred
            if squares is not None:
                squares += weight * pred ** 2
        mean = total
        if squares is None:
            return mean.astype(np.float32), None
        spread = np.sqrt(np.maximum(squares - mean ** 2, 0.0))
        return mean.astype(np.float32), spread.astype(np.float32)

    def _member_predict(self, i: int, x: np.ndarray, batch_size: int) -> np.ndarray:
        """Member ``i``'s predictions of ``x`` ``(N, G)`` float64, columns :attr:`genes`."""
        module, cols = self.members[i], self.member_columns[i]
        out = np.empty((x.shape[0], len(self.genes)), dtype=np.float64)
        for start in range(0, x.shape[0], batch_size):
            chunk = torch.from_numpy(x[start:start + batch_size])
            out[start:start + batch_size] = module.unstandardise(
                module.tile_outputs(chunk)).numpy()[:, cols]
        return out

    def _calibrated(self, x: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """The weighted mean and the folds' calibrated spread (:meth:`predict_tiles_spread`)."""
        weights = self.weights()
        total = np.zeros((x.shape[0], len(self.genes)), dtype=np.float64)
        spread = np.zeros_like(total)
        for f, (coef, scale) in enumerate(self.fold_spreads):
            models = [i for i, fold in enumerate(self.fold_of) if fold == f]
            fold_weight = sum(weights[i] for i in models)
            fold_mean = np.zeros_like(total)
            heads = []
            for i in models:
                pred = self._member_predict(i, x, batch_size)
                fold_mean += weights[i] / fold_weight * pred
                if self.head_member[i]:
                    heads.append(pred)
            terms = spread_terms(fold_mean, fold_mean, None, member_sd(np.stack(heads)))
            total += fold_weight * fold_mean
            spread += fold_weight * apply_spread(coef, scale, terms)
        return total.astype(np.float32), spread.astype(np.float32)

    def weights(self) -> list[float]:
        """Each member's weight in the prediction (equal unless :attr:`member_weights`)."""
        if self.member_weights is None:
            return [1.0 / len(self.members)] * len(self.members)
        return list(self.member_weights)

    @torch.no_grad()
    def predict_bag(self, features: np.ndarray, coords: np.ndarray | None = None) -> np.ndarray:
        """Slide-level predicted expression ``(G,)`` of one bag of tiles (bulk heads).

        For the ``mlp`` head this is the mean of the per-tile predictions.
        """

        x = self._check(features)
        out = np.zeros(len(self.genes), dtype=np.float64)
        for module, cols, weight in zip(self.members, self.member_columns, self.weights(),
                                        strict=True):
            if module.kind == "spot":
                pred = module.unstandardise(module.tile_outputs(torch.from_numpy(x))).mean(0)
            else:
                bag = x
                n_super = int(self.meta.get("supertiles", 0) or 0)
                if n_super and coords is not None:
                    bag = make_supertiles(x, np.asarray(coords), n_super, seed=0)
                batch = {"x": torch.from_numpy(bag)[None]}
                pred = module.unstandardise(module(batch))[0]
            out += weight * pred.numpy()[cols]
        return out.astype(np.float32)

    def _check(self, features: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(np.asarray(features, dtype=np.float32))
        in_dim = self.members[0].in_dim
        if x.ndim != 2 or x.shape[1] != in_dim:
            raise InputError(None, f"features have shape {x.shape}, the head expects (N, {in_dim})",
                             f"use features from the encoder the head was trained on "
                             f"({self.meta.get('encoder')})")
        return x


def load_trained_head(model_dir: str | Path, *, fold: int | None = None,
                      sample_id: str | None = None) -> TrainedHead:
    """Load a trained head for prediction.

    Parameters
    ----------
    model_dir
        ``results/models/{head}`` (all folds) or one ``.../fold{k}`` directory.
    fold
        Use only this fold's model.
    sample_id
        Use the model of the fold that held this sample out (from ``splits.tsv``), so that
        predictions on a training slide are out-of-fold. Ignored when the sample is not in
        ``splits.tsv`` (a new slide).

    Returns
    -------
    TrainedHead
        With several folds and neither ``fold`` nor ``sample_id``, the average of all fold
        models over the genes every fold predicts. Ensemble members of a fold
        (``fold{k}/member{m}/``, ``train.ensemble > 1``) are averaged too, each fold
        weighing the same; a fold whose blend won ``train.select`` weighs its ridge model
        and its members as :func:`slide2expr.contracts.models.shipped_models` says.
    """
    if sample_id is not None and fold is None and not (Path(model_dir) / META).is_file():
        fold, _ = held_out_fold(model_dir, sample_id)
    folds = fold_dirs(model_dir, fold)
    weighted = weighted_members(folds)
    loaded = [load_fold_head(p) for p, _ in weighted]
    genes = list(loaded[0][1]["genes"])
    for _, meta in loaded[1:]:
        keep = set(meta["genes"])
        genes = [g for g in genes if g in keep]
    members, columns = [], []
    for module, meta in loaded:
        index = {g: i for i, g in enumerate(meta["genes"])}
        members.append(module)
        columns.append(np.array([index[g] for g in genes], dtype=np.int64))
    first = loaded[0][1]
    fold_of = [folds.index(p if p in folds else p.parent) for p, _ in weighted]
    head_member = [p.name != RIDGE_DIR for p, _ in weighted]
    return TrainedHead(genes=genes, head=first["head"], kind=loaded[0][0].kind, meta=first,
                       members=members, member_columns=columns,
                       member_weights=[w for _, w in weighted],
                       plausible=bounds_from_metas([meta for _, meta in loaded], genes),
                       fold_of=fold_of, head_member=head_member,
                       fold_spreads=fold_spreads(loaded, fold_of, head_member, genes))


def fold_spreads(loaded: list[tuple[HeadNet, dict]], fold_of: list[int],
                 head_member: list[bool], genes: list[str]
                 ) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """Each fold's calibrated spread from its first head member's ``head.json``
    (:func:`~slide2expr.contracts.models.read_spread`), in fold order; None unless every fold
    has one (then the spread shown is the models' SD)."""
    out = []
    for f in range(max(fold_of) + 1):
        metas = [meta for (_, meta), fold, head in zip(loaded, fold_of, head_member, strict=True)
                 if fold == f and head]
        spread = read_spread(metas[0], genes) if metas else None
        if spread is None:
            return None
        out.append(spread)
    return out


def choose_fold(model_dir: str | Path, sample_id: str, *,
                fold: int | None = None) -> tuple[int | None, str]:
    """Which fold model a slide gets (None: every fold's, averaged), and why, in words.

    ``model_dir`` one fold's directory: that model. Else ``fold`` when given; else the fold
    whose held-out units contain ``sample_id`` (``splits.tsv``,
    :func:`slide2expr.contracts.models.held_out_fold`), so a training slide gets an
    out-of-fold prediction; a new slide (or one every fold trained on) gets the average of
    every fold model (and their ensemble members).
    """
    model_dir = Path(model_dir)
    if (model_dir / META).is_file():
        return None, f"the model in {model_dir.name}"
    if fold is None:
        return held_out_fold(model_dir, sample_id)
    return fold, f"fold {fold}"


def describe_use(use: str, head: TrainedHead) -> str:
    """``use`` with how many models are averaged, when several."""
    if len(head.members) == 1:
        return use
    return (f"{use}: average of {len(head.members)} models (folds, ensemble members, and "
            "ridge where a fold ships train.select's blend; weighted as shipped)")


def load_model_for_sample(model_dir: str | Path, sample_id: str, *,
                          fold: int | None = None) -> tuple[TrainedHead, str]:
    """The model a slide gets (:func:`choose_fold`), and how it is used, in words (for
    provenance and figure subtitles)."""
    fold, use = choose_fold(model_dir, sample_id, fold=fold)
    head = load_trained_head(model_dir, fold=fold)
    return head, describe_use(use, head)
