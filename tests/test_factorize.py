"""Rank allocation and the factorizers: svd, fwsvd, sparsity-aware SVD (exact EM and fast solver)."""

from __future__ import annotations

import math

import pytest
import torch

from lpaf.errors import LpafError
from lpaf.factorize import (allocate_rank, allocate_ranks, factorize_matrices, fwsvd, importance_row_svd,
                            normalize_importance, omega_from_importance, omega_from_mask, rank_from_nnz,
                            relative_error, row_weighted_svd, row_weights_from_importance,
                            sparsity_aware_svd, sparsity_aware_svd_batched, sparsity_aware_svd_result, svd,
                            weighted_relative_error, weighted_svd_em_exact)

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matrices: one thread avoids OpenMP start-up and oversubscription costs on shared CI machines."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


BERT_BASE_SHAPES = {f"layer.{i}.{k}": s for i in range(12)
                    for k, s in (("q", (768, 768)), ("k", (768, 768)), ("v", (768, 768)),
                                 ("o", (768, 768)), ("ffn_in", (3072, 768)), ("ffn_out", (768, 3072)))}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def low_rank_matrix(m: int, n: int, rank: int, seed: int = 0) -> torch.Tensor:
    g = gen(seed)
    return torch.randn(m, rank, generator=g) @ torch.randn(rank, n, generator=g)


def sparse_problem(batch: int, m: int, n: int, density: float, seed: int = 0):
    """Random matrices pruned to ``density`` by random masks: (W_s [b,m,n], mask [b,m,n])."""
    g = gen(seed)
    weight = torch.randn(batch, m, n, generator=g)
    mask = torch.rand(batch, m, n, generator=g) < density
    return weight * mask, mask


def objective(weight: torch.Tensor, A: torch.Tensor, B: torch.Tensor, omega: torch.Tensor) -> float:
    return float(((omega.double() * (weight.double() - A.double() @ B.double())) ** 2).sum())


def non_increasing(trace: list[float], rel: float = 1e-6) -> bool:
    return all(b <= a * (1 + rel) + 1e-12 for a, b in zip(trace, trace[1:]))


# ---------------------------------------------------------------- rank allocation

@pytest.mark.parametrize("m, n, density, rank", [
    (768, 768, 0.25, 96), (3072, 768, 0.25, 153), (768, 3072, 0.25, 153),
    (768, 768, 0.1, 38), (768, 3072, 0.1, 61), (768, 768, 0.5, 192),
    (4, 4, 0.5, 1), (4, 4, 1.0, 2), (4, 4, 0.75, 1), (6, 3, 1.0, 2),
])
def test_allocate_rank_by_hand(m, n, density, rank):
    assert allocate_rank(m, n, density) == rank


@pytest.mark.parametrize("density", [0.0, -0.1, 1.5, float("nan"), float("inf")])
def test_allocate_rank_rejects_density(density):
    with pytest.raises(LpafError, match="density must be"):
        allocate_rank(768, 768, density)


def test_allocate_rank_zero_names_density_and_shape():
    with pytest.raises(LpafError, match=r"density 0\.1 gives rank 0 for a 4x4 matrix"):
        allocate_rank(4, 4, 0.1)


def test_rank_from_nnz():
    assert rank_from_nnz(16, 4, 4) == 2
    assert rank_from_nnz(int(0.25 * 768 * 768), 768, 768) == 96
    with pytest.raises(LpafError, match="7 non-zeros give rank 0 for a 4x4 matrix"):
        rank_from_nnz(7, 4, 4)


@pytest.mark.parametrize("density", [0.5, 0.25, 0.1, 0.05, 0.333])
def test_allocation_meets_budget(density):
    plan = allocate_ranks(BERT_BASE_SHAPES, density)
    assert plan.dense_weights == 84_934_656
    assert plan.stored_weights <= density * plan.dense_weights
    assert plan.stored_weights == sum(r * sum(BERT_BASE_SHAPES[k]) for k, r in plan.ranks.items())
    assert plan.retained_fraction > 0.95 * density  # the floors lose little
    record = plan.to_dict()
    assert record["rule"] == "budget" and record["ranks"] == plan.ranks


def test_allocation_nnz_rule_and_errors():
    shapes = {"a": (4, 4), "b": (6, 3)}
    plan = allocate_ranks(shapes, rule="nnz", nnz={"a": 16, "b": 9})
    assert plan.ranks == {"a": 2, "b": 1} and plan.stored_weights <= 25
    with pytest.raises(LpafError, match="no non-zero count for b"):
        allocate_ranks(shapes, rule="nnz", nnz={"a": 16})
    with pytest.raises(LpafError) as info:  # both distinct shapes reported at once
        allocate_ranks({"a": (4, 4), "b": (6, 3), "c": (4, 4)}, 0.1)
    assert "4x4" in str(info.value) and "6x3" in str(info.value)


# ---------------------------------------------------------------- svd / fwsvd

def test_svd_recovers_exact_low_rank():
    W = low_rank_matrix(30, 20, 4)
    A, B = svd(W, None, 4)
    assert A.shape == (30, 4) and B.shape == (4, 20)
    assert relative_error(W, A, B) < 1e-5


def test_svd_equals_truncated_svd_and_is_balanced():
    W = torch.randn(12, 9, generator=gen())
    A, B = svd(W, None, 3)
    U, S, Vh = torch.linalg.svd(W)
    torch.testing.assert_close(A @ B, (U[:, :3] * S[:3]) @ Vh[:3], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(A.T @ A, B @ B.T, atol=1e-5, rtol=1e-5)


def test_svd_computes_in_float32_from_half_input():
    W = torch.randn(8, 6, generator=gen()).half()
    A, B = svd(W, None, 2)
    assert A.dtype == torch.float32


def test_svd_rejects_bad_input():
    with pytest.raises(LpafError, match=r"rank must be an integer in \[1, 4\]"):
        svd(torch.randn(4, 5), None, 5)
    with pytest.raises(LpafError, match="NaN or Inf"):
        svd(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), None, 1)
    with pytest.raises(LpafError, match="svd takes no weights"):
        svd(torch.randn(4, 5), torch.ones(4), 2)


def test_fwsvd_uniform_weights_equal_svd():
    W = torch.randn(10, 7, generator=gen())
    A, B = svd(W, None, 3)
    for weights in (None, torch.full((10,), 2.5), torch.ones(10, 7)):
        Af, Bf = fwsvd(W, weights, 3)
        torch.testing.assert_close(Af @ Bf, A @ B, atol=1e-5, rtol=1e-5)


def test_fwsvd_lowers_row_weighted_error_and_recovers_low_rank():
    W = torch.randn(10, 7, generator=gen())
    importance = torch.rand(10, generator=gen(1)) ** 4

    def row_weighted(A, B):
        return float((importance[:, None] * (W - A @ B) ** 2).sum())

    assert row_weighted(*fwsvd(W, importance, 3)) < row_weighted(*svd(W, None, 3))
    exact = low_rank_matrix(10, 7, 2)
    assert relative_error(exact, *fwsvd(exact, importance, 2)) < 1e-5


def test_fwsvd_rejects_bad_weights():
    W = torch.randn(6, 4)
    with pytest.raises(LpafError, match="length 6"):
        fwsvd(W, torch.ones(4), 2)
    with pytest.raises(LpafError, match="non-negative"):
        fwsvd(W, -torch.ones(6), 2)
    with pytest.raises(LpafError, match="all zero"):
        fwsvd(W, torch.zeros(6), 2)


def test_row_weighted_svd_ignores_zero_weight_rows():
    W = low_rank_matrix(8, 6, 2)
    W[0] = torch.randn(6, generator=gen(3)) * 100  # an outlier row with weight 0
    weights = torch.ones(8)
    weights[0] = 0
    A, B = row_weighted_svd(W, weights, 2)
    torch.testing.assert_close((A @ B)[1:], W[1:], atol=1e-3, rtol=1e-4)


def test_importance_row_svd():
    W = torch.randn(8, 6, generator=gen())
    scores = torch.randn(8, 6, generator=gen(1))
    rows = row_weights_from_importance(scores)
    assert rows.shape == (8,) and rows.min() >= 0.1 and rows.max() <= 1
    A, B = importance_row_svd(W, scores, 2)
    Ar, Br = row_weighted_svd(W, rows, 2)
    torch.testing.assert_close(A @ B, Ar @ Br)
    with pytest.raises(LpafError, match="importance scores must have the weight's shape"):
        importance_row_svd(W, torch.ones(8), 2)


# ---------------------------------------------------------------- entry weights

def test_omega_from_mask():
    mask = torch.tensor([[True, False], [False, True]])
    torch.testing.assert_close(omega_from_mask(mask, 0.1), torch.tensor([[1.0, 0.1], [0.1, 1.0]]))
    with pytest.raises(LpafError, match=r"pruned weight λ must be in \[0, 1\], got 1.5"):
        omega_from_mask(mask, 1.5)


def test_omega_from_importance():
    mask = torch.tensor([[True, True], [False, True]])
    scores = torch.tensor([[2.0, 0.0], [9.0, 1.0]])
    omega = omega_from_importance(mask, scores, 0.05)
    # kept: λ + (1 − λ)·u with u = [1, 0.1, 0.55] (min-max over kept, floored at 0.1); pruned: λ
    torch.testing.assert_close(omega, torch.tensor([[1.0, 0.05 + 0.95 * 0.1], [0.05, 0.05 + 0.95 * 0.55]]))
    with pytest.raises(LpafError, match="differ in shape"):
        omega_from_importance(mask, torch.ones(3, 2), 0.0)
    # equal scores: every kept entry weighs 1
    assert normalize_importance(torch.ones(2, 2)).eq(1).all()


# ---------------------------------------------------------------- sparsity-aware SVD

@pytest.mark.parametrize("pruned_weight", [0.0, 0.3])
def test_exact_em_objective_never_increases(pruned_weight):
    W_s, mask = sparse_problem(1, 24, 16, 0.4)
    omega = omega_from_mask(mask[0], pruned_weight)
    res = weighted_svd_em_exact(W_s[0], omega, 4, max_iters=30, tol=0)
    trace = res.objectives[0]
    assert len(trace) == 31 and non_increasing(trace, rel=1e-12)
    assert trace[-1] < trace[0]
    assert math.isclose(objective(W_s[0], res.A, res.B, omega), trace[-1], rel_tol=1e-9)


@pytest.mark.parametrize("lam", [0.0, 0.01, 0.3, 0.5, 0.9, 1.0])
def test_importance_weights_keep_their_emphasis_for_any_lambda(lam):
    """Every kept entry weighs at least as much as every pruned entry, even when the scores are
    movement scores with a long tail (most kept entries near the minimum); λ = 1 is plain SVD."""
    g = gen(11)
    mask = torch.rand(30, 20, generator=g) < 0.25
    scores = torch.randn(30, 20, generator=g).exp() ** 3  # heavy tail: most normalized scores ~0
    omega = omega_from_importance(mask, scores, lam)
    assert omega[mask].min() >= omega[~mask].max()
    assert omega.max() == 1.0 and omega[~mask].eq(lam).all()
    if lam == 1.0:
        assert omega.eq(1.0).all()


def test_exact_em_importance_weights_never_increase():
    W_s, mask = sparse_problem(1, 20, 20, 0.3, seed=2)
    scores = torch.randn(20, 20, generator=gen(5))
    omega = omega_from_importance(mask[0], scores, 0.01)
    res = weighted_svd_em_exact(W_s[0], omega, 3, max_iters=25, tol=0)
    assert non_increasing(res.objectives[0], rel=1e-12)


def test_all_ones_omega_equals_svd_exact():
    W = torch.randn(20, 12, generator=gen())
    res = sparsity_aware_svd_result(W, torch.ones(20, 12), 3, solver="exact")
    A, B = svd(W, None, 3)
    torch.testing.assert_close((res.A @ res.B).float(), A @ B, atol=2e-5, rtol=1e-4)
    assert res.iterations[0] <= 1 and res.converged[0]


def test_all_ones_omega_reaches_svd_optimum_fast():
    # The fast solver is subspace iteration here: on a flat random spectrum the objective reaches
    # the SVD optimum long before the basis itself settles, so compare objectives.
    W = torch.randn(20, 12, generator=gen())
    A, B = svd(W, None, 3)
    optimum = objective(W, A, B, torch.ones(20, 12))
    res = sparsity_aware_svd_result(W, torch.ones(20, 12), 3, solver="fast")
    assert res.final_objectives[0] <= optimum * (1 + 1e-4) and res.converged[0]
    low = low_rank_matrix(20, 12, 3)
    res = sparsity_aware_svd_result(low, None, 3, solver="fast")
    assert relative_error(low, res.A, res.B) < 1e-5


@pytest.mark.parametrize("solver", ["exact", "fast"])
def test_masked_exact_low_rank_is_recovered(solver):
    # A rank-2 matrix observed on 60% of entries: weight 0 elsewhere, the EM fills them in.
    W = low_rank_matrix(30, 20, 2, seed=1)
    mask = torch.rand(30, 20, generator=gen(2)) < 0.6
    res = sparsity_aware_svd_result(W * mask, omega_from_mask(mask, 0.0), 2, solver=solver,
                                    max_iters=300, tol=1e-10)
    assert weighted_relative_error(W * mask, res.A, res.B, mask.float()) < 1e-3
    assert relative_error(W, res.A, res.B) < 1e-2


@pytest.mark.parametrize("acceleration", ["nesterov", "none"])
def test_fast_objective_never_increases(acceleration):
    W_s, mask = sparse_problem(3, 40, 32, 0.25)
    res = sparsity_aware_svd_batched(W_s, omega_from_mask(mask, 0.0), 5, acceleration=acceleration,
                                     max_iters=60, tol=0)
    for i in range(3):
        assert non_increasing(res.objectives[i], rel=1e-5)
        assert math.isclose(objective(W_s[i], res.A[i], res.B[i], omega_from_mask(mask[i], 0.0)),
                            res.objectives[i][-1], rel_tol=1e-3)


@pytest.mark.parametrize("density", [0.5, 0.25])
@pytest.mark.parametrize("pruned_weight", [0.0, 0.1, 0.5])
def test_fast_objective_within_one_percent_of_exact(pruned_weight, density):
    """Same tolerance and iteration cap: the default fast solver follows the exact EM (objective
    within 1% either way); with momentum it is never worse and usually far better (the EM is slow
    when pruned weights are ~0). Matrices of rank ~6 can stray ~2% (a different non-convex path);
    from 128 x 96 on the gap stays well inside 1%."""
    W_s, mask = sparse_problem(3, 128, 96, density, seed=3)
    omega = omega_from_mask(mask, pruned_weight)
    rank = allocate_rank(128, 96, density)
    fast = sparsity_aware_svd_batched(W_s, omega, rank)
    accelerated = sparsity_aware_svd_batched(W_s, omega, rank, acceleration="nesterov")
    for i in range(3):
        exact = weighted_svd_em_exact(W_s[i], omega[i], rank).final_objectives[0]
        assert abs(fast.final_objectives[i] / exact - 1) <= 0.01
        assert accelerated.final_objectives[i] <= 1.01 * exact


def test_fast_and_exact_agree_at_convergence():
    W_s, mask = sparse_problem(2, 48, 32, 0.5, seed=4)
    omega = omega_from_mask(mask, 0.5)
    for acceleration in ("nesterov", "none"):
        fast = sparsity_aware_svd_batched(W_s, omega, 9, acceleration=acceleration, max_iters=1000, tol=1e-9)
        for i in range(2):
            exact = weighted_svd_em_exact(W_s[i], omega[i], 9, max_iters=1000, tol=1e-9)
            assert abs(fast.final_objectives[i] / exact.final_objectives[0] - 1) < 0.01


def test_fast_batch_member_stops_on_its_own():
    W_s, mask = sparse_problem(2, 30, 20, 0.5, seed=6)
    W_s[0] = low_rank_matrix(30, 20, 3, seed=7)  # fully observed rank 3: converges at once
    omega = omega_from_mask(mask, 0.0)
    omega[0] = 1.0
    res = sparsity_aware_svd_batched(W_s, omega, 3, max_iters=40)
    assert res.converged[0] and res.iterations[0] <= 2
    assert res.iterations[1] > res.iterations[0]
    single = sparsity_aware_svd_batched(W_s[:1], omega[:1], 3, max_iters=40)
    torch.testing.assert_close(single.A[0] @ single.B[0], res.A[0] @ res.B[0], atol=1e-4, rtol=1e-4)


def test_sparsity_aware_svd_factorizer_shape():
    W_s, mask = sparse_problem(1, 16, 12, 0.5)
    A, B = sparsity_aware_svd(W_s[0], omega_from_mask(mask[0], 0.0), 3)
    assert A.shape == (16, 3) and B.shape == (3, 12) and A.dtype == torch.float32


def test_sparsity_aware_rejects_bad_input():
    W = torch.randn(6, 5)
    with pytest.raises(LpafError, match=r"entry weights must have the weight's shape \(6, 5\)"):
        sparsity_aware_svd(W, torch.ones(5, 6), 2)
    with pytest.raises(LpafError, match=r"must lie in \[0, 1\]"):
        sparsity_aware_svd(W, torch.full((6, 5), 2.0), 2)
    with pytest.raises(LpafError, match="max_iters must be"):
        sparsity_aware_svd_result(W, None, 2, max_iters=-1)
    with pytest.raises(LpafError, match="solver must be"):
        sparsity_aware_svd_result(W, None, 2, solver="magic")
    with pytest.raises(LpafError, match="acceleration must be"):
        sparsity_aware_svd_batched(W[None], None, 2, acceleration="adam")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fast_solver_on_cuda_matches_cpu():
    W_s, mask = sparse_problem(2, 64, 48, 0.25)
    omega = omega_from_mask(mask, 0.1)
    cpu = sparsity_aware_svd_batched(W_s, omega, 6)
    gpu = sparsity_aware_svd_batched(W_s.cuda(), omega.cuda(), 6)
    assert gpu.A.is_cuda
    for c, g in zip(cpu.final_objectives, gpu.final_objectives):
        assert abs(g / c - 1) < 0.01


# ---------------------------------------------------------------- errors and many matrices

def test_relative_errors():
    W = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    A, B = torch.tensor([[1.0], [0.0]]), torch.tensor([[3.0, 0.0]])
    assert math.isclose(relative_error(W, A, B), 4 / 5)
    omega = torch.tensor([[1.0, 1.0], [1.0, 0.5]])
    assert math.isclose(weighted_relative_error(W, A, B, omega), 2 / math.sqrt(13))
    assert relative_error(torch.zeros(2, 2), A * 0, B) == 0.0


def test_factorize_matrices_svd_and_sparsity_aware():
    W_s, mask = sparse_problem(3, 16, 12, 0.5)
    weights = {"a": W_s[0], "b": W_s[1], "c": torch.randn(12, 16, generator=gen(9))}
    ranks = {"a": 3, "b": 3, "c": 2}
    plain = factorize_matrices(weights, ranks, "svd")
    assert list(plain) == ["a", "b", "c"] and plain["c"].A.shape == (12, 2)
    assert plain["a"].log_record()["stored_weights"] == 3 * 28
    omegas = {"a": omega_from_mask(mask[0], 0.0), "b": omega_from_mask(mask[1], 0.0),
              "c": torch.ones(12, 16)}
    sa = factorize_matrices(weights, ranks, "sparsity-aware", omegas)
    for k in weights:
        record = sa[k].log_record()
        assert record["iterations"] >= 1 and record["weighted_relative_error"] is not None
        assert math.isclose(sa[k].objectives[-1], objective(weights[k], sa[k].A, sa[k].B, omegas[k]), rel_tol=1e-3)
    # masked error beats svd's on the kept entries
    assert sa["a"].weighted_relative_error < weighted_relative_error(W_s[0], plain["a"].A, plain["a"].B, omegas["a"])
    exact = factorize_matrices(weights, ranks, "sparsity-aware", omegas, solver="exact")
    assert exact["a"].objectives[-1] >= 0.99 * sa["a"].objectives[-1]


def test_factorize_matrices_reports_all_problems():
    weights = {"a": torch.randn(6, 4), "b": torch.randn(6, 4)}
    with pytest.raises(LpafError) as info:
        factorize_matrices(weights, {"a": 2}, "sparsity-aware", {"a": torch.ones(4, 6)})
    message = str(info.value)
    assert "no rank for b" in message and "no sparsity-aware weights for b" in message
    assert "shape (4, 6)" in message
    with pytest.raises(LpafError, match="svd takes no weights"):
        factorize_matrices(weights, {"a": 2, "b": 2}, "svd", {"a": torch.ones(6, 4), "b": torch.ones(6, 4)})
    with pytest.raises(LpafError, match="method must be one of"):
        factorize_matrices(weights, {"a": 2, "b": 2}, "pca")


# --- FWSVD's Fisher axis and the Fisher-weighted sparsity-aware SVD (issue 14) ----------------

def test_fwsvd_input_axis_weights_columns():
    """axis "in" weights input neurons: a column with a huge weight is reproduced almost exactly at
    rank 1, which weighting output rows cannot promise; it is FWSVD of Wᵀ transposed back."""
    from lpaf.factorize import fwsvd

    g = torch.Generator().manual_seed(0)
    W = torch.randn(8, 6, generator=g)
    col = torch.ones(6)
    col[4] = 1e6
    A, B = fwsvd(W, col, 1, axis="in")
    assert A.shape == (8, 1) and B.shape == (1, 6)
    assert torch.allclose((A @ B)[:, 4], W[:, 4], atol=1e-3)
    At, Bt = fwsvd(W.T, col, 1, axis="out")
    torch.testing.assert_close(A @ B, (At @ Bt).T)
    # the output-row reading of the same vector is a shape error (6 weights for 8 rows), not silence
    with pytest.raises(LpafError, match="length 8"):
        fwsvd(W, col, 1, axis="out")
    with pytest.raises(LpafError, match="fisher axis"):
        fwsvd(W, col, 1, axis="rows")


def test_fisher_axis_reaches_factorize_matrices():
    g = torch.Generator().manual_seed(1)
    weights = {"a": torch.randn(5, 7, generator=g)}
    by_col = factorize_matrices(weights, {"a": 2}, "fwsvd", {"a": torch.rand(7, generator=g) + 0.1}, fisher_axis="in")
    assert by_col["a"].A.shape == (5, 2)
    with pytest.raises(LpafError, match=r"shape \(7,\)"):
        factorize_matrices(weights, {"a": 2}, "fwsvd", {"a": torch.ones(7)}, fisher_axis="out")


@pytest.mark.parametrize("axis", ["out", "in"])
def test_omega_from_fisher_is_line_weight_times_mask_weight(axis):
    from lpaf.factorize import omega_from_fisher

    mask = torch.tensor([[True, False, True], [False, True, True]])
    fisher = torch.tensor([4.0, 1.0]) if axis == "out" else torch.tensor([4.0, 1.0, 0.25])
    omega = omega_from_fisher(mask, fisher, 0.5, axis)
    line = (fisher / fisher.max()).sqrt()
    expected = (line.unsqueeze(1) if axis == "out" else line.unsqueeze(0)) * torch.where(mask, 1.0, 0.5)
    torch.testing.assert_close(omega, expected)
    assert omega.max() == 1.0 and omega.min() >= 0


def test_fisher_sparsity_aware_at_lambda_one_reaches_the_fwsvd_optimum():
    """With λ = 1 the Fisher-weighted EM objective is FWSVD's (row-weighted, closed form): the EM
    must get there, which a wrong Ω (e.g. Fisher without the square root) would not."""
    from lpaf.factorize import fwsvd, omega_from_fisher, weighted_svd_em_exact

    g = torch.Generator().manual_seed(2)
    W = torch.randn(12, 10, generator=g, dtype=torch.float64).float()
    fisher = torch.rand(12, generator=g) * 3 + 0.5
    omega = omega_from_fisher(torch.ones(12, 10, dtype=torch.bool), fisher, 1.0)
    A, B = fwsvd(W, fisher, 3)
    closed = float((omega * (W - A @ B)).pow(2).sum())
    em = weighted_svd_em_exact(W, omega, 3, max_iters=500, tol=1e-10)
    assert em.final_objectives[0] == pytest.approx(closed, rel=1e-3)
    assert em.final_objectives[0] < em.objectives[0][0]  # it moved from plain SVD
