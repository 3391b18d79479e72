"""The plain training loop of spot heads (``train.loop: plain``) against its contract and
against the Lightning path it replaces."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from test_train import _train, planted_dataset

from slide2expr.train.baselines import pearson_columns, ridge_network, ridge_path
from slide2expr.train.heads import build_head
from slide2expr.train.loop import MaskDropout, batches, train_epochs, use_mask_dropout
from slide2expr.train.scaling import standardise


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_mask_dropout_zeroes_p_of_the_values_keeps_the_mean_and_is_off_in_eval():
    torch.manual_seed(0)
    drop = MaskDropout(0.5)
    x = torch.ones(200, 500)
    out = drop(x)
    zero = float((out == 0).float().mean())
    assert abs(zero - 0.5) < 0.01
    assert abs(float(out.mean()) - 1.0) < 0.02
    drop.eval()
    assert torch.equal(drop(x), x)


def test_mask_dropout_replaces_every_dropout_and_leaves_the_weights():
    head = build_head("context", in_dim=12, n_genes=3, blocks=[6, 6], hidden=8, heads=2,
                      dropout=0.25, input_dropout=0.5)
    keys = set(head.network.state_dict())
    use_mask_dropout(head.network)
    kinds = [type(m) for m in head.network.modules()]
    assert torch.nn.Dropout not in kinds  # input, one a projection, fused read-out
    assert kinds.count(MaskDropout) == 4
    assert set(head.network.state_dict()) == keys


def test_batches_cover_each_row_once_and_drop_a_last_batch_of_one():
    gen = torch.Generator().manual_seed(0)
    parts = batches(10, 4, gen)
    assert [len(p) for p in parts] == [4, 4, 2]
    assert sorted(torch.cat(parts).tolist()) == list(range(10))
    assert [len(p) for p in batches(9, 4, gen)] == [4, 4]  # 9 = 4 + 4 + 1: the 1 is dropped


def test_early_stopping_keeps_the_first_best_epoch_and_stops_after_patience():
    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.normal(size=(120, 6)), dtype=torch.float32)
    y = x[:, :2] + 0.3 * torch.as_tensor(rng.normal(size=(120, 2)), dtype=torch.float32)
    torch.manual_seed(0)
    head = build_head("mlp", in_dim=6, n_genes=2, hidden=8, lr=0.05)
    history = train_epochs(head, x, y, torch.arange(90), batch_size=16, max_epochs=40,
                           seed=0, val_rows=torch.arange(90, 120), min_epochs=3, patience=2)
    scores = [row["val_pearson"] for row in history.rows]
    assert history.best_epoch == int(np.argmax(scores))  # argmax: the first of equal maxima
    assert history.best_score == max(scores)
    stopped = len(scores) < 40
    if stopped:  # the last `patience` epochs did not beat the best
        assert len(scores) - 1 - history.best_epoch == 2
    head.load_state_dict(history.best_state)
    with torch.no_grad():
        head.eval()
        r = pearson_columns(head({"x": x[90:]}).numpy(), y[90:].numpy())
    assert np.mean(r) == pytest.approx(history.best_score, abs=1e-5)


def context_dataset(**kwargs):
    """The planted dataset with a second block (``nbr100``: the spot's features plus noise)."""
    adata = planted_dataset(**kwargs)
    rng = np.random.default_rng(1)
    spot = adata.obsm["X_toy"]
    adata.obsm["X_toy_nbr100"] = (spot + rng.normal(size=spot.shape)).astype(np.float32)
    return adata


def context_settings(**settings):
    """Train settings of a small context head on ``[spot, nbr100]``."""
    head = {"hidden": 16, "input_dropout": 0.2, "input_pca": 8, "output_rank": 0, "lr": 0.005,
            "patience": 5, "max_epochs": 15, **settings}
    return {"head": "context", "head_inputs": {"context": ["spot", "nbr100"]},
            "head_settings": {"context": head}}


@pytest.mark.parametrize("loop", ["plain", "lightning"])
def test_both_loops_recover_the_signal_and_write_the_contract(tmp_path, loop):
    adata = context_dataset(n_patients=4, per_patient=40)
    out, models, _ = _train(adata, tmp_path, loop=loop, select="off",
                            **context_settings(ensemble=2))
    r = pearson_columns(out.layers["predicted"], out.X)
    assert np.mean(r[:4]) > 0.5 and np.abs(r[4:]).max() < 0.3, r
    fold = models / "fold0"
    assert {"best.ckpt", "metrics.csv", "head.safetensors"} <= {p.name for p in fold.iterdir()}
    with (fold / "metrics.csv").open() as handle:
        assert any(row.get("val_pearson") for row in csv.DictReader(handle))
    meta = json.loads((fold / "head.json").read_text())
    ckpt = torch.load(fold / "best.ckpt", map_location="cpu", weights_only=True)
    assert int(ckpt["epoch"]) == meta["best_epoch"] and "state_dict" in ckpt


def test_the_plain_loop_is_deterministic_on_the_context_head(tmp_path):
    adata = context_dataset(n_patients=3, per_patient=30)
    settings = {**context_settings(max_epochs=5, ensemble=2, refit=True), "select": "off"}
    a, _, _ = _train(adata, tmp_path, name="a", **settings)
    b, _, _ = _train(adata, tmp_path, name="b", **settings)
    for layer in ("predicted", "predicted_sd", "baseline_ridge"):
        assert np.array_equal(a.layers[layer], b.layers[layer]), layer
    assert np.isfinite(a.layers["predicted"]).all() and (a.layers["predicted_sd"] > 0).any()


@pytest.mark.parametrize("shape", [(40, 90), (90, 40)])
def test_ridge_path_equals_the_closed_form_in_the_dual_and_primal_forms(shape):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=shape), rng.normal(size=(shape[0], 3))
    x_new = rng.normal(size=(7, shape[1]))
    alphas = [0.5, 30.0]
    path = ridge_path(x, y, x_new, alphas)
    xc, yc = x - x.mean(0), y - y.mean(0)
    for i, alpha in enumerate(alphas):
        coef = np.linalg.solve(xc.T @ xc + alpha * np.eye(shape[1]), xc.T @ yc)
        np.testing.assert_allclose(path[i], (x_new - x.mean(0)) @ coef + y.mean(0), atol=1e-8)
    net = ridge_network(x, y, alpha=30.0)
    with torch.no_grad():
        got = net.unstandardise(net.tile_outputs(torch.as_tensor(x_new, dtype=torch.float32)))
    xs, xs_new = standardise(x, x_new)
    np.testing.assert_allclose(got.numpy(), ridge_path(xs, y, xs_new, [30.0])[0], atol=1e-4)


def test_the_bases_of_a_large_fold_come_from_evenly_spaced_rows(monkeypatch):
    from slide2expr.predict.nets import context

    monkeypatch.setattr(context, "BASIS_ROWS", 50)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 12)).astype(np.float32)
    y = rng.normal(size=(400, 5)).astype(np.float32)
    net = context.ContextNet(in_dim=12, n_genes=5, blocks=[6, 6], hidden=8, heads=2,
                             input_pca=3, output_rank=2)
    net.fit_bases(x, y)
    rows = np.round(np.linspace(0, 399, 50)).astype(int)
    expected = context.principal_axes(torch.as_tensor(x[rows, :6]), 3)
    torch.testing.assert_close(net.pca_0.T, expected)
    _, _, vt = np.linalg.svd(x[rows, :6] - x[rows, :6].mean(0))
    cos = np.abs((net.pca_0.T.numpy() * vt[:3]).sum(axis=1))
    np.testing.assert_allclose(cos, 1.0, atol=1e-5)  # the SVD's axes, up to sign


def test_the_plain_loop_steps_on_one_thread_and_gives_the_job_its_threads_back(tmp_path,
                                                                              monkeypatch):
    """A spot head's steps are too small for a second thread, which on a busy node waits at a
    barrier every step (docs/benchmarks.md, "Training threads"): the members train on one
    thread whatever the job was given, and the job's count is back for what follows."""
    import slide2expr.train.loop as loop

    seen: list[int] = []
    real = loop.train_epochs

    def recording(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train_epochs", recording)
    torch.set_num_threads(2)
    adata = context_dataset(n_patients=3, per_patient=20)
    _train(adata, tmp_path, select="off", **context_settings(max_epochs=2, ensemble=2))
    assert seen and set(seen) == {1}, seen
    assert torch.get_num_threads() == 2
