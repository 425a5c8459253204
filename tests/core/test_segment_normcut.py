"""Normalized cuts and affinity matrices: SIMA's test_PlaneNormalizedCuts (spec 9.6) and ours."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from scipy import linalg, sparse

from napari_sima.core import ImagingDataset, ROIList, Sequence
from napari_sima.core.segment import normcut as nc
from napari_sima.core.segment.affinity import (
    AffinityMatrixCA1PC,
    BasicAffinityMatrix,
    boundary_factors,
    line_maximum,
    neighbour_offsets,
    neighbour_pairs,
    pair_correlations,
)
from napari_sima.core.segment.base import SegmentProgress
from napari_sima.core.segment.evaluate import match_rois
from napari_sima.core.segment.normcut import (
    CutRegion,
    PlaneNormalizedCuts,
    iter_itercut,
    itercut,
    normalized_cut_cost,
    spectral_vector,
)
from napari_sima.core.segment.opca import dataset_opca
from napari_sima.core.segment.planewise import PlaneWiseSegmentation
from napari_sima.core.synthetic import make_calcium_movie


def _dataset(array):
    return ImagingDataset([Sequence.create("ndarray", np.asarray(array))], None)


@pytest.fixture(scope="module")
def calcium():
    """64 x 64, 300 frames, 6 separated cells about 9 px wide, coherent neuropil.

    Normalized cuts separates a cell from its surroundings only when the surrounding
    pixels are correlated with each other (real neuropil is); with white-noise
    background (``background_modulation=0.05``) the cuts attach background to cells
    (best IoU 0.4 - 0.55), see the module notes of ``normcut``.
    """
    return make_calcium_movie(
        num_frames=300,
        frame_shape=(1, 64, 64, 1),
        num_sequences=1,
        num_cells=6,
        seed=4,
        cell_radius=(4.0, 5.0),
        allow_overlap=False,
        background_modulation=0.3,
    )


@pytest.fixture(scope="module")
def calcium_rois(calcium):
    return PlaneNormalizedCuts().segment(_dataset(calcium.sequences[0]))


def _grid_graph(labels, strong=1.0, weak=1e-3):
    """Affinity of a labelled image: 8-neighbours, strong inside a label, weak across."""
    rows, cols = labels.shape
    pairs = neighbour_pairs((rows, cols), (1, 1))
    same = labels.ravel()[pairs.first] == labels.ravel()[pairs.second]
    w = np.where(same, strong, weak)
    n = rows * cols
    return sparse.coo_matrix(
        (np.r_[w, w], (np.r_[pairs.first, pairs.second], np.r_[pairs.second, pairs.first])),
        shape=(n, n),
    ).tocsr()


# ----------------------------------------------------------------------- SIMA's test
def test_sima_plane_normalized_cuts(examples):
    """SIMA's test_PlaneNormalizedCuts: the 50 x 50 crop of example.sima segments."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # SIMA's extra displacement arrays
        ds = ImagingDataset.load(examples / "example.sima")[:, :, :, :50, :50]
    assert ds.savedir is None and ds.frame_shape == (1, 50, 50, 2)
    method = PlaneWiseSegmentation(PlaneNormalizedCuts(BasicAffinityMatrix(num_pcs=5)))
    rois = ds.segment(method, label="normcut")
    assert isinstance(rois, ROIList) and len(rois) > 5
    assert ds.ROIs["normcut"] is not None
    masks = np.stack([np.asarray(r)[0] for r in rois])
    assert masks.dtype == bool and masks.shape[1:] == (50, 50)
    # the regions partition the graph: no pixel in two ROIs, most pixels covered
    assert masks.sum(axis=0).max() == 1
    assert masks.sum() > 0.95 * 50 * 50
    assert all(r.size <= 200 for r in rois)  # larger regions are always cut


# ------------------------------------------------------------------- cut criterion
def test_cut_cost_of_a_hand_made_graph():
    w = np.array([[0, 1, 0, 0], [1, 0, 0.1, 0], [0, 0.1, 0, 1], [0, 0, 1, 0]])
    # Shi & Malik: cut/assoc(A) + cut/assoc(B) = 0.1/2.1 + 0.1/2.1
    assert normalized_cut_cost(np.array([1, 1, 0, 0], bool), w) == pytest.approx(0.2 / 2.1)
    assert normalized_cut_cost(np.array([1, 1, 0, 0], bool), sparse.csr_matrix(w)) == (
        pytest.approx(0.2 / 2.1)
    )
    # cutting a strong edge costs much more: cut = 1, assoc = 1 and 3.2
    assert normalized_cut_cost(np.array([1, 0, 0, 0], bool), w) == pytest.approx(1 / 1 + 1 / 3.2)
    # not a cut
    assert normalized_cut_cost(np.zeros(4, bool), w) == np.inf
    assert normalized_cut_cost(np.ones(4, bool), w) == np.inf
    with pytest.raises(ValueError, match="cut of 3 nodes"):
        normalized_cut_cost(np.ones(3, bool), w)


def test_cut_cost_equals_shi_malik_ncut_on_random_graphs():
    rng = np.random.default_rng(0)
    for _ in range(5):
        w = rng.random((12, 12)) * (rng.random((12, 12)) < 0.5)
        w = np.triu(w, 1)
        w = w + w.T
        cut = rng.random(12) < 0.5
        cut[0], cut[1] = True, False
        between = w[cut][:, ~cut].sum()
        expected = between / w[cut].sum() + between / w[~cut].sum()
        assert normalized_cut_cost(cut, w) == pytest.approx(expected)


# ------------------------------------------------------------------- eigenvectors
def test_spectral_vector_separates_two_clusters_and_solvers_agree():
    labels = np.zeros((16, 20), int)
    labels[:, 9:] = 1
    w = _grid_graph(labels)
    d = np.asarray(w.sum(axis=1)).ravel()
    v = spectral_vector(w, d, seed=0)  # 320 nodes: ARPACK
    assert w.shape[0] > nc.DENSE_EIGH_MAX
    assert np.all(np.sign(v[labels.ravel() == 0]) == np.sign(v[labels.ravel() == 0][0]))
    assert np.sign(v[labels.ravel() == 0][0]) != np.sign(v[labels.ravel() == 1][0])
    # reference: dense generalised eigenproblem W v = lambda D v
    n = w.shape[0]
    values, vectors = linalg.eigh(w.toarray(), np.diag(d), subset_by_index=[n - 2, n - 1])
    ref = vectors[:, 0]
    cos = abs(ref @ (d * v)) / np.sqrt((ref @ (d * ref)) * (v @ (d * v)))
    assert cos == pytest.approx(1.0, abs=1e-8)
    assert v[np.argmax(np.abs(v))] > 0  # fixed sign
    assert np.array_equal(v, spectral_vector(w, d, seed=0))


def test_multilevel_spectral_vector_approximates_the_exact_one():
    labels = np.zeros((40, 40), int)
    labels[:, 16:] = 1
    w = _grid_graph(labels, weak=1e-2)
    d = np.asarray(w.sum(axis=1)).ravel()
    pixels = np.divmod(np.arange(1600), 40)
    exact = spectral_vector(w, d, pixels=pixels, coarsen_above=0)
    approx = spectral_vector(w, d, pixels=pixels, coarsen_above=300)  # two coarser levels
    cos = abs(exact @ (d * approx)) / np.sqrt((exact @ (d * exact)) * (approx @ (d * approx)))
    assert cos > 0.95
    assert np.array_equal(exact > 0, approx > 0)


@pytest.mark.parametrize("coarsen_above", [0, 300])
def test_forced_cuts_follow_weak_edges_with_or_without_coarsening(coarsen_above):
    labels = np.zeros((40, 40), int)
    labels[:, 17:] = 1  # boundaries inside 2 x 2 blocks
    labels[25:, :17] = 2
    w = _grid_graph(labels, weak=1e-3)
    regions = itercut(w, (40, 40), 0.01, 10, 250, coarsen_above=coarsen_above)
    for region in regions:
        assert np.unique(labels[region.mask]).size == 1
    assert sum(r.size for r in regions) == 1600


def test_spectral_vector_bad_input():
    with pytest.raises(ValueError, match="at least 2"):
        spectral_vector(sparse.csr_matrix((1, 1)))
    with pytest.raises(ValueError, match="positive degree"):
        spectral_vector(sparse.csr_matrix(np.array([[0, 1, 0], [1, 0, 0], [0, 0, 0.0]])))


# -------------------------------------------------------------------- the recursion
def test_itercut_recovers_blocks_of_a_labelled_graph():
    labels = np.zeros((24, 24), int)
    labels[:12, :12], labels[:12, 12:], labels[12:, :12], labels[12:, 12:] = 0, 1, 2, 3
    regions = itercut(_grid_graph(labels), (24, 24), max_pen=0.05, min_size=10, max_size=200)
    found = sorted(tuple(np.unique(labels[r.mask])) for r in regions)
    assert found == [(0,), (1,), (2,), (3,)]
    assert sorted(r.size for r in regions) == [144] * 4


def test_disconnected_pieces_are_split_at_no_cost():
    labels = np.zeros((6, 13), int)
    labels[:, 6] = 1  # a column of other pixels, weakly linked
    w = _grid_graph(labels, weak=0.0).tolil()
    region = CutRegion(w.tocsr(), np.arange(6 * 13), (6, 13))
    parts, cost = region.split()
    assert cost == 0.0
    assert sorted(p.size for p in parts) == [6, 36, 36]


def test_isolated_pixels_are_dropped():
    w = sparse.csr_matrix(np.array([[0, 1, 0], [1, 0, 0], [0, 0, 0.0]]))
    region = CutRegion(w, np.array([0, 1, 2]), (1, 3))
    assert region.size == 2 and region.mask.tolist() == [[True, True, False]]


@pytest.mark.parametrize("min_size,max_size", [(1, 1), (2, 3), (40, 200)])
def test_itercut_terminates_and_partitions(min_size, max_size):
    rng = np.random.default_rng(1)
    pairs = neighbour_pairs((9, 11), (2, 2))
    w = rng.random(pairs.first.size)
    n = 99
    mat = sparse.coo_matrix(
        (np.r_[w, w], (np.r_[pairs.first, pairs.second], np.r_[pairs.second, pairs.first])),
        shape=(n, n),
    ).tocsr()
    gen = iter_itercut(mat, (9, 11), 0.01, min_size, max_size)
    fractions = []
    for _ in range(10 * n):  # never a hang: a bounded number of steps
        try:
            item = next(gen)
        except StopIteration as stop:
            regions = stop.value
            break
        assert isinstance(item, SegmentProgress)
        fractions.append(item.fraction)
    else:
        pytest.fail("itercut did not terminate")
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    if max_size == 1:  # single pixels have no edges inside their region: all dropped
        assert regions == []
        return
    masks = np.stack([r.mask for r in regions])
    assert masks.sum(axis=0).max() <= 1
    if max_size < 40:  # small regions are always cut further: nothing large remains
        assert max(r.size for r in regions) <= max(max_size, min_size)


def test_itercut_bad_input():
    w = sparse.identity(4, format="csr")
    with pytest.raises(ValueError, match="for a 3x3 plane"):
        itercut(w, (3, 3))
    w = sparse.csr_matrix((9, 9))
    for kwargs, match in [
        ({"max_pen": -1}, "cut_max_pen"),
        ({"min_size": 0}, "cut_min_size"),
        ({"max_size": 2.5}, "cut_max_size"),
        ({"coarsen_above": -1}, "coarsen_above"),
    ]:
        with pytest.raises(ValueError, match=match):
            itercut(w, (3, 3), **kwargs)
    assert itercut(w, (3, 3)) == []  # no edges, no regions


# ----------------------------------------------------------------------- affinities
def test_neighbour_pairs_each_unordered_pair_once():
    assert neighbour_offsets((2, 2)) == [(1, 0), (2, 0)] + [
        (dy, dx) for dx in (1, 2) for dy in range(-2, 3)
    ]
    pairs = neighbour_pairs((5, 6), (2, 2))
    got = {frozenset(p) for p in zip(pairs.first.tolist(), pairs.second.tolist(), strict=True)}
    assert len(got) == pairs.first.size  # no duplicate
    expected = set()
    for a in range(30):
        for b in range(30):
            (ya, xa), (yb, xb) = divmod(a, 6), divmod(b, 6)
            if a != b and abs(ya - yb) <= 2 and abs(xa - xb) <= 2:
                expected.add(frozenset((a, b)))
    assert got == expected
    assert np.all(pairs.dx >= 0) and np.all(pairs.dy[pairs.dx == 0] > 0)
    ys, xs = np.divmod(pairs.first, 6)
    yt, xt = np.divmod(pairs.second, 6)
    assert np.array_equal(yt - ys, pairs.dy) and np.array_equal(xt - xs, pairs.dx)


def _sima_line_max(image, r0, r1):
    """Scalar reference of SIMA's CA1PC line rasterisation (spec 7.5)."""
    (y0, x0), (y1, x1) = r0, r1
    dy, dx = y1 - y0, x1 - x0
    values = []
    if dx == 0:
        for y in range(y0, y1 + 1):
            values.append(image[y, x0])
    else:
        for xt in range(dx + 1):
            ya = y0 + 0.5 + max(0.0, xt - 0.5) * dy / dx
            yb = y0 + 0.5 + min(xt + 0.5, dx) * dy / dx
            for y in range(int(min(ya, yb)), int(max(ya, yb)) + 1):
                values.append(image[y, x0 + xt])
    return max(values)


def test_line_maximum_matches_the_scalar_rasterisation():
    rng = np.random.default_rng(2)
    image = rng.random((8, 9))
    pairs = neighbour_pairs((8, 9), (3, 3))
    got = line_maximum(image, pairs)
    for k in range(pairs.first.size):
        r0 = divmod(int(pairs.first[k]), 9)
        r1 = divmod(int(pairs.second[k]), 9)
        assert got[k] == _sima_line_max(image, r0, r1)
    # a bright column between two pixels lowers their CA1PC factor
    wall = np.zeros((5, 5))
    wall[:, 2] = 10.0
    p = neighbour_pairs((5, 5), (2, 2))
    f = boundary_factors(wall, p)
    across = (p.dx == 2) & (p.first % 5 == 1)
    beside = (p.dx == 1) & (p.first % 5 == 0)
    assert np.all(f[across] < f[beside])
    assert np.all(boundary_factors(np.ones((5, 5)), p) == 1.0)


def test_pair_correlations_handle_zero_and_nan_pixels():
    pairs = neighbour_pairs((3, 3), (1, 1))
    loadings = np.ones((3, 3, 2))
    loadings[1, 1] = 0.0
    loadings[0, 0] = np.nan
    corr, valid = pair_correlations(loadings, pairs)
    assert np.all(np.isfinite(corr))
    bad = np.isin(pairs.first, [0, 4]) | np.isin(pairs.second, [0, 4])
    assert np.array_equal(valid, ~bad)
    assert np.all(corr[~bad] == pytest.approx(1.0)) and np.all(corr[bad] == 0.0)


def test_basic_affinity_matrix_of_a_movie(calcium):
    ds = _dataset(calcium.sequences[0][:100])
    w = BasicAffinityMatrix(num_pcs=10).calculate(ds)
    assert w.shape == (64 * 64, 64 * 64) and sparse.isspmatrix_csr(w)
    assert abs(w - w.T).max() == 0 and w.diagonal().max() == 0 and w.data.min() > 0
    assert np.all(np.isfinite(w.data))
    pairs = neighbour_pairs((64, 64), (2, 2))
    assert w.nnz == 2 * pairs.first.size
    # weights are exp(9 corr) times the spatial fall-off: at most exp(9) * exp(-1/8)
    assert w.data.max() <= np.exp(9) * np.exp(-0.125) * (1 + 1e-9)
    # SIMA's formula, pair by pair, from the offset PCA
    opca = dataset_opca(ds, num_pcs=10)
    vec = opca.pcs[0] * np.sqrt(np.maximum(opca.variances, 0))
    rng = np.random.default_rng(0)
    for k in rng.choice(pairs.first.size, 50, replace=False):
        (y0, x0), (y1, x1) = divmod(int(pairs.first[k]), 64), divmod(int(pairs.second[k]), 64)
        a, b = vec[y0, x0], vec[y1, x1]
        corr = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
        expected = np.exp(9 * corr) * np.exp(-0.5 * (((y1 - y0) / 2) ** 2 + ((x1 - x0) / 2) ** 2))
        assert w[pairs.first[k], pairs.second[k]] == pytest.approx(expected, rel=1e-9)
    # pixels inside a cell are linked strongly
    mask = calcium.true_masks(plane=0)[0].ravel()
    coo = w.tocoo()
    inside = mask[coo.row] & mask[coo.col]
    assert np.median(coo.data[inside]) > 0.5 * np.exp(9) * np.exp(-0.125)


def test_constant_pixels_get_no_edges(calcium):
    movie = calcium.sequences[0][:100].astype(np.float32)
    movie[:, :, :, :3] = 100.0  # a constant margin, as after motion correction
    w = BasicAffinityMatrix(num_pcs=10).calculate(_dataset(movie))
    degree = np.asarray(w.sum(axis=1)).reshape(64, 64)
    assert np.all(degree[:, :3] == 0) and np.all(degree[:, 4:] > 0)
    rois = PlaneNormalizedCuts(BasicAffinityMatrix(num_pcs=10)).segment(_dataset(movie))
    assert not any(np.asarray(r)[0][:, :3].any() for r in rois)


def test_affinity_parameters_are_checked():
    for kwargs, match in [
        ({"max_dist": (0, 0)}, "links no pixels"),
        ({"max_dist": (1,)}, "max_dist"),
        ({"spatial_decay": (0, 1)}, "spatial_decay"),
        ({"num_pcs": 0}, "num_pcs"),
        ({"channel": 1.5}, "channel"),
    ]:
        with pytest.raises(ValueError, match=match):
            BasicAffinityMatrix(**kwargs)
    with pytest.raises(ValueError, match="x_diameter"):
        AffinityMatrixCA1PC(x_diameter=0)


# ------------------------------------------------------------------ the strategy
def test_normalized_cuts_recover_the_cells_of_a_synthetic_movie(calcium, calcium_rois):
    truth = calcium.true_masks(plane=0)
    result = match_rois(calcium_rois, truth)
    assert result.n_matched >= 5, np.round(result.iou.max(axis=0), 2)
    assert result.median_iou > 0.55
    for roi in calcium_rois:
        assert roi.mask[0].dtype == bool and roi.im_shape == (1, 64, 64)
    masks = np.stack([np.asarray(r)[0] for r in calcium_rois])
    assert masks.sum(axis=0).max() == 1  # a partition: no overlaps


def test_normalized_cuts_are_deterministic(calcium, calcium_rois):
    again = PlaneNormalizedCuts().segment(_dataset(calcium.sequences[0]))
    assert len(again) == len(calcium_rois)
    for a, b in zip(again, calcium_rois, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_progress_and_cancel(calcium):
    ds = _dataset(calcium.sequences[0][:100])
    reports = []
    PlaneNormalizedCuts(BasicAffinityMatrix(num_pcs=10)).segment(
        ds, progress=lambda f, m: reports.append((f, m))
    )
    fractions = [f for f, _ in reports]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any("normalized cuts" in m for _, m in reports)
    gen = PlaneNormalizedCuts(BasicAffinityMatrix(num_pcs=10)).iter_segment(ds)
    next(gen)
    gen.close()  # cancelling is closing the generator


def test_too_many_components_are_clamped_with_a_warning(calcium):
    ds = _dataset(calcium.sequences[0][:12])
    with pytest.warns(RuntimeWarning, match="num_pcs=75 is more than"):
        rois = PlaneNormalizedCuts().segment(ds)
    assert len(rois) > 0


def test_constant_movie_gives_no_rois_with_a_warning():
    ds = _dataset(np.full((20, 1, 16, 16, 1), 5.0))
    with pytest.warns(RuntimeWarning, match="no edges"):
        rois = PlaneNormalizedCuts(BasicAffinityMatrix(num_pcs=5)).segment(ds)
    assert len(rois) == 0


def test_nan_frames_and_pixels(calcium):
    movie = calcium.sequences[0][:120].astype(np.float32)
    movie[7] = np.nan
    movie[30:40, :, 10:20, 10:20] = np.nan
    rois = PlaneNormalizedCuts(BasicAffinityMatrix(num_pcs=10)).segment(_dataset(movie))
    assert len(rois) > 5
    assert all(np.isfinite(np.asarray(r, dtype=float)).all() for r in rois)


def test_bad_datasets_and_parameters(calcium):
    volume = np.zeros((10, 2, 16, 16, 1), np.float32)
    with pytest.raises(ValueError, match="PlaneWiseSegmentation"):
        PlaneNormalizedCuts().segment(_dataset(volume))
    with pytest.raises(ValueError, match="two consecutive frames"):
        PlaneNormalizedCuts().segment(_dataset(calcium.sequences[0][:1]))
    with pytest.raises(ValueError, match="channel"):
        PlaneNormalizedCuts(BasicAffinityMatrix(channel=3)).segment(
            _dataset(calcium.sequences[0][:10])
        )
    with pytest.raises(TypeError, match="AffinityMatrix"):
        PlaneNormalizedCuts(affinity_method="basic")
    with pytest.raises(ValueError, match="cut_min_size"):
        PlaneNormalizedCuts(cut_min_size=0)
    with pytest.raises(ValueError, match="seed"):
        PlaneNormalizedCuts(seed=1.5)


def test_defaults_and_parameters_are_json():
    strategy = PlaneNormalizedCuts(affinity_method=None)
    assert isinstance(strategy.affinity_method, BasicAffinityMatrix)
    params = json.loads(json.dumps(strategy.parameters()))
    assert params["strategy"] == "PlaneNormalizedCuts"
    assert params["cut_max_pen"] == 0.01 and params["cut_min_size"] == 40
    assert params["cut_max_size"] == 200
    assert params["affinity_method"]["class"] == "BasicAffinityMatrix"
    assert params["affinity_method"]["num_pcs"] == 75
    assert PlaneNormalizedCuts.single_plane
