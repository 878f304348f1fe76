"""Spec rows of ``tg.linalg`` (``tapegrad/ops/solve.py``, codes 600-649).

Inputs are well conditioned: general matrices ``N(0,1) + n I``, SPD matrices
``M M^T / n + I``, symmetric matrices with eigenvalues ``1, 2, ..., n`` (well
separated, so eigenvectors are differentiable).  Finite differences perturb
every entry independently: ``cholesky``/``eigh``/``solve(assume_a="sym")``
read one triangle, and their rules are exact for that function, so no
symmetrization is needed; rows that symmetrize inside the graph (``sym(M)``)
check the usual use as well.
"""

from __future__ import annotations

import numpy as np

import tapegrad.linalg as la
from tapegrad.ops import solve as S
from tests.ops.rows import Row


# --------------------------------------------------------------------------- domains
def _eye_batch(shape):
    return np.broadcast_to(np.eye(shape[-1]), shape)


def _gen(rng, shape, dtype):
    """A well-conditioned general matrix: ``N(0, 1) + n I``."""
    return rng.standard_normal(shape) + shape[-1] * _eye_batch(shape)


def _gen_negdet(rng, shape, dtype):
    """Well conditioned with a negative determinant (one diagonal entry ``-n``)."""
    a = _gen(rng, shape, dtype)
    a[..., 0, :] *= -1
    return a


def _spd(rng, shape, dtype):
    m = rng.standard_normal(shape)
    return m @ np.swapaxes(m, -1, -2) / shape[-1] + _eye_batch(shape)


def _eig(rng, shape, dtype):
    """Symmetric with eigenvalues 1, 2, ..., n and a random orthogonal basis."""
    n = shape[-1]
    q, _ = np.linalg.qr(rng.standard_normal(shape))
    return q @ (np.arange(1.0, n + 1)[:, None] * np.swapaxes(q, -1, -2))


def _small(rng, shape, dtype):
    return rng.uniform(-1.0, 1.0, size=shape)


def _sym_np(a, lower=True):
    return S._np_sym(a, lower)


def _sym_graph(m):
    """``(M + M^T)/2 + n I`` built in the graph (finite differences then respect symmetry)."""
    n = m.type.shape[-1] if m.type.shape[-1] is not None else 3
    return (m + S.mT(m)) * 0.5 + float(n) * np.eye(n)


def _sym_ref(m):
    return (m + np.swapaxes(m, -1, -2)) / 2 + m.shape[-1] * np.eye(m.shape[-1])


def _chol_upper(a):
    return np.swapaxes(np.linalg.cholesky(_sym_np(np.swapaxes(a, -1, -2))), -1, -2)


def _tri_solve_ref(lower, unit):
    def ref(a, b):
        t = np.tril(a, -1 if unit else 0) if lower else np.triu(a, 1 if unit else 0)
        if unit:
            t = t + np.eye(a.shape[-1])
        return np.linalg.solve(t, b)

    return ref


ROWS = [
    # --- tri (tril / triu masks)
    Row("TRI", lambda x: la.tril(x), ((3, 4),), np.tril, id="tril"),
    Row("TRI", lambda x: la.triu(x, 1), ((4, 3),), lambda x: np.triu(x, 1), id="triu-k1"),
    Row("TRI", lambda x: la.tril(x, -1), ((2, 3, 3),), lambda x: np.tril(x, -1), id="tril-batch"),
    # --- solve: general, vector and matrix right-hand sides, batched and broadcast
    Row("SOLVE", la.solve, ((3, 3), (3,)), np.linalg.solve, domain=(_gen, _small), id="solve-vec"),
    Row("SOLVE", la.solve, ((3, 3), (3, 2)), np.linalg.solve, domain=(_gen, _small), id="solve-mat"),
    Row("SOLVE", la.solve, ((2, 3, 3), (3,)), np.linalg.solve, domain=(_gen, _small), id="solve-batch-vec"),
    Row("SOLVE", la.solve, ((2, 1, 3, 3), (4, 3, 2)), np.linalg.solve, domain=(_gen, _small),
        id="solve-batch-broadcast"),
    Row("SOLVE", la.solve, ((3, 3), (2, 3, 1)), np.linalg.solve, domain=(_gen, _small), static=((3, 3), None),
        id="solve-b-batch-static"),
    Row("SOLVE", lambda a, b: la.solve(a, b, assume_a="sym"), ((3, 3), (3, 2)),
        lambda a, b: np.linalg.solve(_sym_np(a, False), b), domain=(_eig, _small), also=("TRI",), id="solve-sym-upper"),
    Row("SOLVE", lambda a, b: la.solve(a, b, assume_a="pos", lower=True), ((2, 3, 3), (3,)),
        lambda a, b: np.linalg.solve(_sym_np(a, True), b), domain=(_spd, _small), id="solve-pos-lower"),
    Row("SOLVE", lambda m, b: la.solve(_sym_graph(m), b, assume_a="pos"), ((3, 3), (3,)),
        lambda m, b: np.linalg.solve(_sym_ref(m), b), domain=(_small,), static=((3, 3), (3,)),
        id="solve-pos-symmetrized"),
    Row("SOLVE", lambda a, b: la.solve_triangular(a, b, lower=True), ((3, 3), (3, 2)), _tri_solve_ref(True, False),
        domain=(_gen, _small), id="solve-triangular-lower"),
    Row("SOLVE", lambda a, b: la.solve_triangular(a, b, unit_diagonal=True), ((2, 3, 3), (3,)),
        _tri_solve_ref(False, True), domain=(_small,), id="solve-triangular-upper-unit"),
    Row("SOLVE", lambda a, b: la.solve(a, b, assume_a="upper"), ((3, 3), (3,)), _tri_solve_ref(False, False),
        domain=(_gen, _small), id="solve-assume-upper"),
    # --- inv
    Row("INV", la.inv, ((3, 3),), np.linalg.inv, domain=(_gen,), id="inv"),
    Row("INV", la.inv, ((2, 3, 3),), np.linalg.inv, domain=(_gen,), id="inv-batch"),
    Row("INV", la.inv, ((1, 1),), np.linalg.inv, domain=(_gen,), static=((1, 1),), id="inv-1x1"),
    # --- det, slogdet
    Row("DET", la.det, ((3, 3),), np.linalg.det, domain=(_gen,), id="det"),
    Row("DET", la.det, ((2, 3, 3),), np.linalg.det, domain=(_gen_negdet,), id="det-batch-negative"),
    Row("SLOGDET", la.slogdet, ((3, 3),), np.linalg.slogdet, domain=(_gen_negdet,), id="slogdet-negative"),
    Row("SLOGDET", la.slogdet, ((2, 4, 4),), np.linalg.slogdet, domain=(_gen,), id="slogdet-batch"),
    Row("SLOGDET", lambda a: la.slogdet(a)[1], ((3, 3),), lambda a: np.linalg.slogdet(a)[1], domain=(_spd,),
        id="slogdet-logdet-only"),
    # --- cholesky
    Row("CHOLESKY", la.cholesky, ((4, 4),), lambda a: np.linalg.cholesky(_sym_np(a)), domain=(_spd,),
        id="cholesky"),
    Row("CHOLESKY", la.cholesky, ((2, 3, 3),), lambda a: np.linalg.cholesky(_sym_np(a)), domain=(_spd,),
        id="cholesky-batch"),
    Row("CHOLESKY", lambda a: la.cholesky(a, lower=False), ((3, 3),), _chol_upper, domain=(_spd,),
        id="cholesky-upper"),
    Row("CHOLESKY", lambda m: la.cholesky(_sym_graph(m)), ((3, 3),), lambda m: np.linalg.cholesky(_sym_ref(m)),
        domain=(_small,), static=((3, 3),), id="cholesky-symmetrized"),
    # --- eigh (two outputs)
    Row("EIGH", la.eigh, ((4, 4),), lambda a: np.linalg.eigh(_sym_np(a)), domain=(_eig,), id="eigh"),
    Row("EIGH", lambda a: la.eigh(a, UPLO="U"), ((3, 3),), lambda a: np.linalg.eigh(_sym_np(a, False)),
        domain=(_eig,), id="eigh-upper"),
    Row("EIGH", la.eigh, ((2, 3, 3),), lambda a: np.linalg.eigh(_sym_np(a)), domain=(_eig,), id="eigh-batch"),
    Row("EIGH", lambda m: la.eigh(_sym_graph(m))[0], ((3, 3),), lambda m: np.linalg.eigvalsh(_sym_ref(m)),
        domain=(_small,), static=((3, 3),), id="eigh-values-symmetrized"),
    # --- norm
    Row("NORM", la.norm, ((5,),), np.linalg.norm, id="norm-vector"),
    Row("NORM", la.norm, ((3, 4),), np.linalg.norm, id="norm-fro"),
    Row("NORM", lambda x: la.norm(x, axis=1, keepdims=True), ((3, 4),),
        lambda x: np.linalg.norm(x, axis=1, keepdims=True), id="norm-axis-keepdims"),
    Row("NORM", lambda x: la.norm(x, "fro", axis=(2, 0)), ((3, 2, 4),),
        lambda x: np.linalg.norm(x, "fro", axis=(2, 0)), id="norm-fro-batch"),
    Row("NORM", la.norm, ((0,),), np.linalg.norm, id="norm-size0"),
    Row("NORM", lambda x: la.norm(x, 1), ((5,),), lambda x: np.linalg.norm(x, 1), domain=((0.2, 2.0),),
        also=(), id="norm-ord1"),
    Row("NORM", lambda x: la.norm(x, np.inf, axis=0), ((4, 3),), lambda x: np.linalg.norm(x, np.inf, axis=0),
        id="norm-ord-inf"),
    Row("NORM", lambda x: la.norm(x, 3), ((4,),), lambda x: np.linalg.norm(x, 3), domain=((0.2, 2.0),),
        id="norm-ord3"),
    Row("NORM", lambda x: la.norm(x, 1), ((3, 4),), lambda x: np.linalg.norm(x, 1), id="norm-matrix-1"),
    Row("NORM", lambda x: la.norm(x, 2), ((3, 3),), lambda x: np.linalg.norm(x, 2), domain=(_gen,),
        also=("EIGH",), id="norm-matrix-2"),
]
