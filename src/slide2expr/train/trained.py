"""Save trained heads and load them back for prediction (``predict``, heatmaps).

A fold directory holds ``head.safetensors`` (the module's weights and standardisation
buffers) and ``head.json`` (head name, hyperparameters, gene order, encoder, mode, fold).
Nothing is unpickled: weights come from safetensors, metadata from JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from slide2expr.atomic import atomic_output
from slide2expr.contracts._h5 import check_format, format_stamp
from slide2expr.contracts.models import CONTRACT, META, VERSION, WEIGHTS, held_out_fold
from slide2expr.errors import InputError
from slide2expr.train.features import make_supertiles
from slide2expr.train.nets import HeadNet, build_net
from slide2expr.train.selection import RIDGE


def save_head(module: torch.nn.Module, fold_dir: str | Path, *, meta: dict) -> None:
    """Write ``head.safetensors`` and ``head.json`` into ``fold_dir``.

    Parameters
    ----------
    module
        A trained :class:`~slide2expr.train.heads.base.RegressionHead` (its network is
        saved) or a :class:`~slide2expr.train.nets.base.HeadNet`.
    fold_dir
        Destination directory.
    meta
        JSON-serialisable metadata; must include ``head``, ``hparams`` and ``genes``.
    """
    from safetensors.torch import save_file

    fold_dir = Path(fold_dir)
    network = getattr(module, "network", module)
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    with atomic_output(fold_dir / WEIGHTS) as tmp:
        save_file(state, str(tmp))
    meta = {**format_stamp(CONTRACT, VERSION), **meta}
    with atomic_output(fold_dir / META) as tmp:
        tmp.write_text(json.dumps(meta, indent=2, default=_json_default))


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray | tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")


#: What to do about a damaged model folder.
RETRAIN = "retrain the head (`slide2expr train`, or delete results/models and rerun the workflow)"


def load_fold_head(fold_dir: str | Path) -> tuple[HeadNet, dict]:
    """Load one fold's head network (eval mode, CPU) and its metadata.

    Only the plain network is built (:mod:`slide2expr.train.nets`), never the Lightning
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
    meta = _read_meta(meta_path)
    try:
        module = build_net(meta["head"], **meta["hparams"])
    except InputError:
        raise
    except KeyError as exc:
        raise InputError(meta_path, f"names an unknown head {meta['head']!r}", RETRAIN) from exc
    except (TypeError, ValueError) as exc:
        raise InputError(meta_path, f"does not describe a head ({exc})", RETRAIN) from exc
    _load_weights_strictly(module, weights_path)
    module.eval()
    return module, meta


def _read_meta(path: Path) -> dict:
    """``head.json``: a JSON object with ``head``, ``hparams`` and ``genes``."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"is not valid JSON ({exc})", RETRAIN) from exc
    missing = [k for k in ("head", "hparams", "genes")
               if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise InputError(path, f"lacks {', '.join(missing)}", RETRAIN)
    if not isinstance(meta["hparams"], dict) or not isinstance(meta["genes"], list):
        raise InputError(path, "has hparams that are not an object or genes that are not a list",
                         RETRAIN)
    check_format(path, meta, CONTRACT, (VERSION,))
    return meta


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
    module.load_state_dict(state)


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
        """:meth:`predict_tiles` and the spread of the members around it.

        Returns
        -------
        tuple of (numpy.ndarray, numpy.ndarray or None)
            The mean over the members ``(N, G)`` float32, and their standard deviation
            (population, ``ddof=0``: two members at ``m - d`` and ``m + d`` give ``d``),
            ``(N, G)`` float32; None with a single member (no spread to measure).
        """
        x = self._check(features)
        total = np.zeros((x.shape[0], len(self.genes)), dtype=np.float64)
        squares = np.zeros_like(total) if len(self.members) > 1 else None
        for module, cols in zip(self.members, self.member_columns, strict=True):
            for start in range(0, x.shape[0], batch_size):
                chunk = torch.from_numpy(x[start:start + batch_size])
                pred = module.unstandardise(module.tile_outputs(chunk)).numpy()[:, cols]
                total[start:start + batch_size] += pred
                if squares is not None:
                    squares[start:start + batch_size] += pred.astype(np.float64) ** 2
        n = len(self.members)
        mean = total / n
        if squares is None:
            return mean.astype(np.float32), None
        spread = np.sqrt(np.maximum(squares / n - mean ** 2, 0.0))
        return mean.astype(np.float32), spread.astype(np.float32)

    @torch.no_grad()
    def predict_bag(self, features: np.ndarray, coords: np.ndarray | None = None) -> np.ndarray:
        """Slide-level predicted expression ``(G,)`` of one bag of tiles (bulk heads).

        For the ``mlp`` head this is the mean of the per-tile predictions.
        """

        x = self._check(features)
        out = np.zeros(len(self.genes), dtype=np.float64)
        for module, cols in zip(self.members, self.member_columns, strict=True):
            if module.kind == "spot":
                pred = module.unstandardise(module.tile_outputs(torch.from_numpy(x))).mean(0)
            else:
                bag = x
                n_super = int(self.meta.get("supertiles", 0) or 0)
                if n_super and coords is not None:
                    bag = make_supertiles(x, np.asarray(coords), n_super, seed=0)
                batch = {"x": torch.from_numpy(bag)[None]}
                pred = module.unstandardise(module(batch))[0]
            out += pred.numpy()[cols]
        return (out / len(self.members)).astype(np.float32)

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
        (``fold{k}/member{m}/``, ``train.ensemble > 1``) are averaged too.
    """
    model_dir = Path(model_dir)
    if (model_dir / META).is_file():
        fold_dirs = [model_dir]
    else:
        fold_dirs = sorted(model_dir.glob("fold*"), key=lambda p: _fold_number(p))
        if not fold_dirs:
            raise InputError(model_dir, "contains no fold*/ model directories",
                             "pass results/models/{head} written by `slide2expr train`")
        if sample_id is not None and fold is None:
            fold, _ = held_out_fold(model_dir, sample_id)
        if fold is not None:
            fold_dirs = [p for p in fold_dirs if _fold_number(p) == fold]
            if not fold_dirs:
                raise InputError(model_dir, f"has no fold{fold}", "pick an existing fold")
    member_dirs = [m for p in fold_dirs for m in _shipped_dirs(p) if (m / META).is_file()]
    if not member_dirs:
        raise InputError(fold_dirs[0], f"has no {META}", RETRAIN)
    loaded = [load_fold_head(p) for p in member_dirs]
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
    return TrainedHead(genes=genes, head=first["head"], kind=loaded[0][0].kind, meta=first,
                       members=members, member_columns=columns)


def _shipped_dirs(fold_dir: Path) -> list[Path]:
    """The model directories a fold ships: ``ridge/`` when ridge won the fold's inner
    selection (``train.select``), else the head's members (``fold_dir`` and ``member*/``)."""
    if (fold_dir / RIDGE / META).is_file():
        return [fold_dir / RIDGE]
    return [fold_dir, *sorted(fold_dir.glob("member*"))]


def _fold_number(path: Path) -> int:
    try:
        return int(path.name.removeprefix("fold"))
    except ValueError:
        return 1 << 30
