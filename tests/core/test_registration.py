"""ROI registration across sessions: shared ids, merge/unmerge of ids, tag propagation."""

from __future__ import annotations

import json
import random
import warnings

import numpy as np
import pytest

from napari_sima.core import ROI, ROIList
from napari_sima.core.registration import (
    DEFAULT_MIN_IOU,
    id_conflicts,
    id_groups,
    iter_register_rois,
    merge_ids,
    pairwise_iou,
    propagate_tags,
    register_rois,
    score_registration,
    unmerge_ids,
)
from napari_sima.core.synthetic_sessions import make_synthetic_sessions

SHAPE = (1, 40, 40)


def sq(x0, y0, x1, y1, z=0):
    return [[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]]


def roi(x0, y0, x1, y1, z=0, shape=SHAPE, **kw):
    return ROI(polygons=sq(x0, y0, x1, y1, z), im_shape=shape, **kw)


def ids(lists):
    return [[r.id for r in rois] for rois in lists]


def snapshot(lists):
    """Everything about the ROIs that registration must not change."""
    return [
        [
            (r.id, r.label, frozenset(r.tags), r.im_shape, r.kind, r.polygon_arrays[0].tobytes())
            for r in rois
        ]
        for rois in lists
    ]


def partition(lists):
    """The clustering as a set of frozensets of ROI labels (independent of id names)."""
    groups: dict = {}
    for rois in lists:
        for r in rois:
            groups.setdefault(r.id, set()).add(r.label)
    return {frozenset(g) for g in groups.values()}


@pytest.fixture(scope="module")
def sessions():
    """Five sessions, ~90 ROIs each: cells come and go, outlines jitter, 1 px offsets."""
    return make_synthetic_sessions(
        n_sessions=5, n_cells=110, im_shape=(256, 256), radius=(4.0, 8.0), seed=3
    )


# --------------------------------------------------------------------------- accuracy
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_accuracy_on_synthetic_sessions(seed):
    ss = make_synthetic_sessions(
        n_sessions=5, n_cells=110, im_shape=(256, 256), radius=(4.0, 8.0), seed=seed
    )
    out, summary = register_rois(ss.roi_lists)
    score = score_registration(out, ss.cells)
    assert score["consistent"]
    assert score["roi_accuracy"] >= 0.95, score
    assert score["pair_precision"] >= 0.98, score
    assert score["pair_recall"] >= 0.95, score
    # cells really come and go: clusters of many sizes exist
    assert len(summary.cluster_sizes) >= 3 and 5 in summary.cluster_sizes


def test_shift_correction_recovers_a_residual_offset():
    ss = make_synthetic_sessions(
        n_sessions=4, n_cells=110, im_shape=(256, 256), radius=(4.0, 8.0), shift=2.5, seed=4
    )
    corrected = score_registration(register_rois(ss.roi_lists)[0], ss.cells)
    plain = score_registration(register_rois(ss.roi_lists, correct_shift=False)[0], ss.cells)
    assert corrected["roi_accuracy"] >= 0.95
    assert plain["roi_accuracy"] < corrected["roi_accuracy"] - 0.05


def test_reported_shift_is_the_offset_between_sessions():
    shape = (1, 120, 120)
    corners = [(x, y) for x in range(5, 100, 16) for y in range(5, 100, 32)]
    s0 = ROIList(
        [roi(x, y, x + 8, y + 8, shape=shape, label=f"a{k}") for k, (x, y) in enumerate(corners)]
    )
    # session 1 is session 0 moved by dx=+3, dy=-2 (IoU of the 8 px squares: 0.31)
    s1 = ROIList(
        [
            roi(x + 3, y - 2, x + 11, y + 6, shape=shape, label=f"b{k}")
            for k, (x, y) in enumerate(corners)
        ]
    )
    out, summary = register_rois([s0, s1])
    assert summary.shifts[(0, 1)] == (2, -3)  # (dy, dx) that brings session 1 onto 0
    assert [r.id for r in out[0]] == [r.id for r in out[1]]
    assert summary.pair_matches[(0, 1)] == len(corners)
    # without the correction the same pairs are found, at the lower IoU
    out2, summary2 = register_rois([s0, s1], correct_shift=False)
    assert summary2.shifts[(0, 1)] == (0, 0) and ids(out2) == ids(out)


def test_multi_plane_sessions():
    ss = make_synthetic_sessions(
        n_sessions=4, n_cells=120, im_shape=(3, 160, 160), radius=(4.0, 8.0), seed=5
    )
    assert {int(r.polygon_arrays[0][0, 2]) for r in ss.roi_lists[0]} == {0, 1, 2}
    out, _ = register_rois(ss.roi_lists)
    score = score_registration(out, ss.cells)
    assert score["consistent"] and score["roi_accuracy"] >= 0.95, score


def test_rois_on_different_planes_never_match_and_volumes_do():
    shape = (2, 20, 20)
    square = np.zeros((20, 20), bool)
    square[4:10, 4:10] = True
    empty = np.zeros((20, 20), bool)
    vol = np.stack([square, square])
    s0 = ROIList([ROI(mask=[square, empty], label="p0", im_shape=shape)])
    s1 = ROIList(
        [
            ROI(mask=[empty, square], label="p1", im_shape=shape),
            ROI(mask=vol, label="vol1", im_shape=shape),
        ]
    )
    s2 = ROIList([ROI(mask=vol, label="vol2", im_shape=shape)])
    out, summary = register_rois([s0, s1, s2])
    by = {r.label: r.id for rois in out for r in rois}
    # same outline on another plane: IoU 0; the two-plane volumes hold half of p0 (0.5)
    assert pairwise_iou(s0, s1).toarray().tolist() == [[0.0, 0.5]]
    assert by["p1"] != by["p0"] == by["vol1"] == by["vol2"]
    assert summary.cluster_sizes == {1: 1, 3: 1}


def test_weighted_masks_are_registered_by_their_support():
    w = np.zeros((20, 20))
    w[5:11, 5:11] = np.linspace(0.1, 1, 36).reshape(6, 6)
    s0 = ROIList([ROI(mask=w, label="w")])
    s1 = ROIList([ROI(mask=(w > 0).astype(bool), label="b")])
    out, _ = register_rois([s0, s1])
    assert out[0][0].id == out[1][0].id
    np.testing.assert_allclose(pairwise_iou(s0, s1).toarray(), [[1.0]])


# ------------------------------------------------------------------ consistency
def test_component_with_two_rois_of_one_session_is_split():
    # a1 ~ b1 and b2 ~ c1 (IoU 1); a1 ~ c1 (IoU 0.43) would chain b1 and b2 together
    s_a = ROIList([roi(0, 0, 10, 10, label="a1")])
    s_b = ROIList([roi(0, 0, 10, 10, label="b1"), roi(4, 0, 14, 10, label="b2")])
    s_c = ROIList([roi(4, 0, 14, 10, label="c1")])
    out, summary = register_rois([s_a, s_b, s_c], correct_shift=False)
    by = {r.label: r.id for rois in out for r in rois}
    assert by["a1"] == by["b1"] and by["b2"] == by["c1"] and by["b1"] != by["b2"]
    assert summary.pair_matches == {(0, 1): 1, (0, 2): 1, (1, 2): 1}
    assert summary.cluster_iou[by["a1"]] == pytest.approx(1.0)


def test_never_two_rois_of_one_session_share_an_id():
    # a crowded field and a permissive threshold: the graph of pairwise matches has
    # components holding two ROIs of one session (plain connected components would
    # give such ids), which must be split
    ss = make_synthetic_sessions(
        n_sessions=5, n_cells=110, im_shape=(256, 256), radius=(4.0, 10.0), spacing=0.6, seed=3
    )
    out, summary = register_rois(ss.roi_lists, min_iou=0.05)
    assert not id_conflicts(out)
    for members in summary.clusters.values():
        assert len({s for s, _ in members}) == len(members)
    assert sum(len(m) for m in summary.clusters.values()) == ss.n_rois
    assert score_registration(out, ss.cells)["roi_accuracy"] >= 0.95


def test_a_cell_missing_in_the_middle_session_is_still_linked():
    s0 = ROIList([roi(2, 2, 10, 10, label="x0"), roi(20, 20, 28, 28, label="y0")])
    s1 = ROIList([roi(21, 20, 29, 28, label="y1")])  # x is not seen
    s2 = ROIList([roi(3, 2, 11, 10, label="x2"), roi(20, 21, 28, 29, label="y2")])
    out, summary = register_rois([s0, s1, s2])
    by = {r.label: r.id for rois in out for r in rois}
    assert by["x0"] == by["x2"] != by["y0"] == by["y1"] == by["y2"]
    assert summary.n_matched == (2, 1, 2)
    assert summary.cluster_sizes == {2: 1, 3: 1}


# ------------------------------------------------------------------------ ids
def test_reference_ids_are_kept_and_others_are_new_counters():
    s0 = ROIList([roi(2, 2, 10, 10, id="cellA"), roi(20, 20, 28, 28, id="7")])
    s1 = ROIList([roi(20, 20, 28, 28, id="7"), roi(2, 2, 10, 10), roi(30, 2, 38, 10)])
    out, summary = register_rois([s0, s1])
    assert ids(out) == [["cellA", "7"], ["7", "cellA", "8"]]
    assert summary.n_kept_ids == 2 and summary.n_new_ids == 1
    assert list(summary.clusters) == ["cellA", "7", "8"]  # reference clusters first


def test_reference_choice_decides_which_ids_win():
    s0 = ROIList([roi(2, 2, 10, 10, id="old")])
    s1 = ROIList([roi(2, 2, 10, 10, id="new")])
    assert ids(register_rois([s0, s1])[0]) == [["old"], ["old"]]
    assert ids(register_rois([s0, s1], reference=1)[0]) == [["new"], ["new"]]


def test_unrelated_per_session_numbering_never_gives_two_cells_one_id():
    # both sessions numbered their ROIs 0, 1, 2 independently
    s0 = ROIList([roi(2, 2, 8, 8, id="0"), roi(20, 2, 26, 8, id="1"), roi(2, 20, 8, 26, id="2")])
    s1 = ROIList([roi(30, 30, 36, 36, id="0"), roi(2, 20, 8, 26, id="1"), roi(2, 2, 8, 8, id="2")])
    for keep in ("all", "reference"):
        out, summary = register_rois([s0, s1], keep_ids=keep)
        assert [r.id for r in out[0]] == ["0", "1", "2"]
        assert [r.id for r in out[1]] == ["3", "2", "0"]
        assert len(summary.clusters) == 4 and not id_conflicts(out)


def test_keep_ids_none_numbers_clusters_in_order():
    s0 = ROIList([roi(2, 2, 8, 8, id="x"), roi(20, 2, 26, 8, id="y")])
    s1 = ROIList([roi(20, 2, 26, 8), roi(30, 30, 36, 36, id="z")])
    out, _ = register_rois([s0, s1], keep_ids="none")
    assert ids(out) == [["0", "1"], ["1", "2"]]


def test_registering_again_keeps_ids_and_adding_a_session_extends_them(sessions):
    out, _ = register_rois(sessions.roi_lists[:4])
    again, summary = register_rois(out)
    assert ids(again) == ids(out)
    assert summary.n_new_ids == 0
    # a fifth session joins the existing clusters, whatever the ids of sessions 1-3 were
    more, _ = register_rois(out + [sessions.roi_lists[4]])
    assert ids(more)[:4] == ids(out)
    full, _ = register_rois(sessions.roi_lists)
    assert partition(more) == partition(full)


def test_determinism_and_roi_order(sessions):
    a, sa = register_rois(sessions.roi_lists)
    b, sb = register_rois(sessions.roi_lists)
    assert ids(a) == ids(b) and sa.todict() == sb.todict()
    shuffled = []
    rng = random.Random(0)
    for rois in sessions.roi_lists:
        items = list(rois)
        rng.shuffle(items)
        shuffled.append(ROIList(items))
    c, _ = register_rois(shuffled)
    assert partition(c) == partition(a)


def test_inputs_are_unchanged_and_outputs_are_copies(sessions):
    lists = [
        ROIList([r.copy() for r in rois], timestamp="2026-01-02-03h04m05s")
        for rois in sessions.roi_lists[:3]
    ]
    lists[0][0].id = "kept"
    lists[1][0].tags = {"pv"}
    before = snapshot(lists)
    out, _ = register_rois(lists)
    assert snapshot(lists) == before
    assert all(
        o is not i
        for rl_o, rl_i in zip(out, lists, strict=True)
        for o, i in zip(rl_o, rl_i, strict=True)
    )
    assert [rl.timestamp for rl in out] == ["2026-01-02-03h04m05s"] * 3
    assert out[0][0].id == "kept" and out[1][0].tags == {"pv"}
    assert [len(o) for o in out] == [len(i) for i in lists]


def test_summary_is_json_and_adds_up(sessions):
    out, summary = register_rois(sessions.roi_lists)
    d = json.loads(json.dumps(summary.todict()))
    assert d["n_clusters"] == summary.n_clusters == len(id_groups(out))
    assert sum(k * v for k, v in summary.cluster_sizes.items()) == sessions.n_rois
    assert d["n_rois"] == [len(r) for r in sessions.roi_lists]
    assert len(d["pairs"]) == 10 and d["min_iou"] == DEFAULT_MIN_IOU
    for ident, members in summary.clusters.items():
        assert all(out[s][k].id == ident for s, k in members)
    assert "sessions" in repr(summary)


def test_iter_register_rois_reports_progress_and_can_be_cancelled(sessions):
    gen = iter_register_rois(sessions.roi_lists[:3])
    steps = []
    while True:
        try:
            steps.append(next(gen))
        except StopIteration as stop:
            out, summary = stop.value
            break
    assert steps[0] == (0, 6) and steps[-1] == (6, 6)
    assert [d for d, _ in steps] == sorted(d for d, _ in steps)
    assert len(out) == 3
    gen = iter_register_rois(sessions.roi_lists[:3])
    next(gen)
    gen.close()  # cancelling is allowed and changes nothing


# ----------------------------------------------------------------- bad inputs
def test_bad_inputs_raise_clear_errors():
    s0 = ROIList([roi(2, 2, 8, 8)])
    other = ROIList([roi(2, 2, 8, 8, shape=(1, 50, 50))])
    with pytest.raises(ValueError, match=r"different image shapes.*session 0.*session 1"):
        register_rois([s0, other])
    mixed = ROIList([roi(2, 2, 8, 8), roi(2, 2, 8, 8, shape=(1, 50, 50), label="odd")])
    with pytest.raises(ValueError, match=r"session 1 ROI 1 \('odd'\) has im_shape"):
        register_rois([s0, mixed])
    bare = ROIList([ROI(polygons=sq(2, 2, 8, 8), label="drawn")])
    with pytest.raises(ValueError, match=r"session 1 ROI 0 \('drawn'\) has no mask"):
        register_rois([s0, bare])
    out, _ = register_rois([s0, bare], im_shape=(40, 40))  # the shape can be supplied
    assert out[0][0].id == out[1][0].id and bare[0].im_shape is None
    for bad in (0, 0.0, -0.1, 1.5, float("nan"), "x", None):
        with pytest.raises(ValueError, match="min_iou"):
            register_rois([s0, s0], min_iou=bad)
    with pytest.raises(ValueError, match=r"reference=2 is not a session index \(0..1\)"):
        register_rois([s0, s0], reference=2)
    with pytest.raises(TypeError, match="reference"):
        register_rois([s0, s0], reference=True)
    with pytest.raises(ValueError, match="keep_ids"):
        register_rois([s0, s0], keep_ids="some")
    with pytest.raises(ValueError, match="at least one"):
        register_rois([])
    with pytest.raises(TypeError, match="session 1, item 0: expected an ROI"):
        register_rois([s0, ["not an roi"]])
    with pytest.raises(TypeError, match="sequence of ROI lists"):
        register_rois(s0[0])


def test_empty_roi_warns_and_stays_alone():
    s0 = ROIList([roi(2, 2, 8, 8), ROI(mask=np.zeros((40, 40), bool), label="void")])
    s1 = ROIList([roi(2, 2, 8, 8), ROI(mask=np.zeros((40, 40), bool), label="void2")])
    with pytest.warns(UserWarning, match=r"no pixel.*session 0 ROI 1 \('void'\)"):
        out, summary = register_rois([s0, s1])
    assert summary.empty == ((0, 1), (1, 1))
    assert out[0][0].id == out[1][0].id
    assert len({out[0][1].id, out[1][1].id, out[0][0].id}) == 3


def test_any_iterables_are_accepted():
    s0 = [roi(2, 2, 8, 8), roi(20, 2, 26, 8)]
    s1 = (r for r in [roi(20, 2, 26, 8), roi(3, 2, 9, 8)])
    out, _ = register_rois(iter([iter(s0), s1]))
    assert [type(r) for r in out] == [ROIList, ROIList] and out[0][0].id == out[1][1].id
    split, new = unmerge_ids((r for r in out), [(1, 1)])
    assert split[1][1].id == new[0] != out[0][0].id
    assert len(id_groups(r for r in out)) == 2


def test_single_session_gives_every_roi_an_id():
    out, summary = register_rois([ROIList([roi(2, 2, 8, 8), roi(20, 2, 26, 8, id="5")])])
    assert ids(out) == [["6", "5"]] and summary.cluster_sizes == {1: 2}


# ------------------------------------------------------------------ pairwise IoU
def test_pairwise_iou_is_sparse_jaccard():
    a = [roi(0, 0, 4, 4), roi(20, 20, 24, 24)]
    b = [roi(2, 0, 6, 4), roi(30, 30, 34, 34), roi(0, 0, 4, 4)]
    m = pairwise_iou(a, b)
    assert m.shape == (2, 3) and m.nnz == 2
    np.testing.assert_allclose(m.toarray(), [[8 / 24, 0, 1], [0, 0, 0]])


# ------------------------------------------------------------------ curation
def _three_sessions():
    s0 = ROIList([roi(2, 2, 8, 8, id="a", label="a0"), roi(20, 2, 26, 8, id="b", label="b0")])
    s1 = ROIList([roi(2, 2, 8, 8, id="a", label="a1"), roi(20, 2, 26, 8, label="n1")])
    s2 = ROIList([roi(2, 2, 8, 8, id="a", label="a2"), roi(20, 2, 26, 8, id="c", label="c2")])
    return [s0, s1, s2]


def test_merge_ids_joins_clusters_and_takes_the_largest_clusters_id():
    lists = _three_sessions()
    before = snapshot(lists)
    out, ident = merge_ids(lists, [(1, 1), (0, 1), (2, 1)])
    assert ident == "b"  # all clusters have one ROI: the first given with an id
    assert ids(out) == [["a", "b"], ["a", "b"], ["a", "b"]]
    assert snapshot(lists) == before
    # the larger cluster's id wins; an id string stands for its whole cluster
    out2, ident2 = merge_ids(out, ["b"])
    assert ident2 == "b" and ids(out2) == ids(out)
    lists2 = _three_sessions()
    lists2[1][1].id = "c"  # cluster c now has two ROIs, b has one
    out3, ident3 = merge_ids(lists2, [(0, 1), (1, 1)])
    assert ident3 == "c" and [r[1].id for r in out3] == ["c", "c", "c"]


def test_merge_ids_refuses_two_rois_of_one_session():
    lists = _three_sessions()
    with pytest.raises(ValueError, match=r"two ROIs of the same session.*session 0 ROI 0 \('a0'\)"):
        merge_ids(lists, [(0, 0), (0, 1)])
    # cluster 'a' already holds an ROI of session 1
    with pytest.raises(ValueError, match=r"session 1 ROI 0 \('a1'\).*session 1 ROI 1 \('n1'\)"):
        merge_ids(lists, ["a", (1, 1)])


def test_merge_ids_with_a_chosen_or_a_new_id():
    lists = _three_sessions()
    out, ident = merge_ids(lists, [(0, 1), (1, 1)], id="cell-9")
    assert ident == "cell-9" and [out[0][1].id, out[1][1].id] == ["cell-9", "cell-9"]
    with pytest.raises(ValueError, match=r"id 'a' is already used by session 0 ROI 0"):
        merge_ids(lists, [(0, 1), (1, 1)], id="a")
    nones = [ROIList([roi(2, 2, 8, 8)]) for _ in range(3)]
    out, ident = merge_ids(nones, [(0, 0), (1, 0), (2, 0)])
    assert ident == "0" and ids(out) == [["0"], ["0"], ["0"]]


def test_curation_bad_references():
    lists = _three_sessions()
    with pytest.raises(ValueError, match="session 3 does not exist"):
        merge_ids(lists, [(3, 0)])
    with pytest.raises(ValueError, match="session 1 has no ROI 5"):
        unmerge_ids(lists, (1, 5))
    with pytest.raises(ValueError, match="no ROI has id 'zz'"):
        propagate_tags(lists, rois=["zz"])
    with pytest.raises(TypeError, match=r"\(session, index\) pair"):
        merge_ids(lists, [0, 1])
    with pytest.raises(TypeError, match=r"\(session, index\) pair"):
        merge_ids(lists, [(0.5, 1)])
    with pytest.raises(ValueError, match="no ROI given"):
        merge_ids(lists, [])


def test_unmerge_ids_gives_fresh_unique_ids():
    lists = _three_sessions()
    before = snapshot(lists)
    out, new = unmerge_ids(lists, (1, 0))
    assert new == ["0"] and ids(out) == [["a", "b"], ["0", None], ["a", "c"]]
    assert snapshot(lists) == before
    # dissolving a cluster by its id: the first ROI keeps it, the others get new ids
    out, new = unmerge_ids(lists, "a")
    assert new == ["a", "0", "1"]
    assert [r[0].id for r in out] == ["a", "0", "1"]
    # an ROI alone with its id keeps it; an ROI without id gets one
    out, new = unmerge_ids(lists, [(0, 1), (1, 1)])
    assert new == ["b", "0"]
    # integer ids in use are skipped
    lists[2][1].id = "7"
    out, new = unmerge_ids(lists, [(1, 0)])
    assert new == ["8"] and not id_conflicts(out)


def test_unmerge_then_merge_round_trip(sessions):
    out, summary = register_rois(sessions.roi_lists)
    big = next(i for i, m in summary.clusters.items() if len(m) == 5)
    members = summary.clusters[big]
    split, _ = unmerge_ids(out, [members[2]])
    assert len(id_groups(split)[big]) == 4
    merged, ident = merge_ids(split, [members[0], members[2]])
    assert ident == big and ids(merged) == ids(out)


def test_propagate_tags_union_over_clusters():
    lists = _three_sessions()
    lists[0][0].tags = {"pv", "accepted"}
    lists[2][0].tags = {"som"}
    lists[1][1].tags = {"pv"}  # no id: stays as it is, gives nothing
    lists[0][1].tags = {"x"}
    before = snapshot(lists)
    out = propagate_tags(lists)
    assert [r[0].tags for r in out] == [{"pv", "accepted", "som"}] * 3
    assert out[1][1].tags == {"pv"} and out[0][1].tags == {"x"} and out[2][1].tags == set()
    assert snapshot(lists) == before
    only_pv = propagate_tags(lists, tags="pv")
    assert [r[0].tags for r in only_pv] == [{"pv", "accepted"}, {"pv"}, {"som", "pv"}]
    limited = propagate_tags(lists, tags=["som", "pv"], rois=[(1, 0)])
    assert limited[0][0].tags == {"pv", "accepted", "som"}
    assert propagate_tags(lists, rois=["b"])[0][0].tags == {"pv", "accepted"}
    with pytest.raises(TypeError, match="tags must be strings"):
        propagate_tags(lists, tags=[1])


def test_id_groups_and_conflicts():
    lists = _three_sessions()
    assert id_groups(lists) == {"a": [(0, 0), (1, 0), (2, 0)], "b": [(0, 1)], "c": [(2, 1)]}
    assert id_conflicts(lists) == {}
    lists[0][1].id = "a"
    assert id_conflicts(lists) == {"a": [(0, 0), (0, 1), (1, 0), (2, 0)]}


# ------------------------------------------------------------------ scoring
def test_score_registration_definitions():
    truth = [[0, 1], [0, 1], [1, 2]]
    perfect = score_registration([["x", "y"], ["x", "y"], ["y", None]], truth)
    assert perfect["roi_accuracy"] == 1.0 and perfect["pair_f1"] == 1.0
    assert perfect["n_true_pairs"] == 4 and perfect["consistent"]
    # ROI (1, 1) missed: it and its cluster mates (0, 1), (2, 0) are wrong
    missed = score_registration([["x", "y"], ["x", "q"], ["y", None]], truth)
    assert missed["roi_accuracy"] == pytest.approx(3 / 6)
    assert missed["pair_precision"] == 1.0 and missed["pair_recall"] == pytest.approx(2 / 4)
    wrong = score_registration([["x", "x"], ["x", "y"], ["y", None]], truth)
    assert not wrong["consistent"] and wrong["pair_precision"] < 1
    with pytest.raises(ValueError, match="predicted has 2 sessions but truth has 3"):
        score_registration([[], []], truth)
    with pytest.raises(ValueError, match="session 0: 1 predicted ROIs but 2 true labels"):
        score_registration([["x"], [], []], truth)


# ------------------------------------------------------------------ synthetic sessions
def test_synthetic_sessions_truth_and_determinism():
    a = make_synthetic_sessions(n_sessions=6, n_cells=80, im_shape=(200, 200), seed=9)
    b = make_synthetic_sessions(n_sessions=6, n_cells=80, im_shape=(200, 200), seed=9)
    assert snapshot(a.roi_lists) == snapshot(b.roi_lists)
    for rois, cells in zip(a.roi_lists, a.cells, strict=True):
        assert len(rois) == len(cells) == len(set(cells.tolist()))
        assert all(r.id is None and r.im_shape == (1, 200, 200) for r in rois)
    seen = a.seen
    assert seen.shape == (6, 80) and a.n_rois == seen.sum()
    changed = (seen[1:] != seen[:-1]).mean()
    assert 0.05 < changed < 0.4  # cells appear and disappear
    assert 0.6 < seen.mean() < 0.95
    # the order of ROIs says nothing about identity
    assert not np.array_equal(a.cells[0], np.sort(a.cells[0]))
    c = make_synthetic_sessions(n_sessions=6, n_cells=80, im_shape=(200, 200), seed=10)
    assert snapshot(c.roi_lists) != snapshot(a.roi_lists)


def test_synthetic_sessions_bad_parameters():
    with pytest.raises(ValueError, match="n_sessions"):
        make_synthetic_sessions(n_sessions=0)
    with pytest.raises(ValueError, match="presence"):
        make_synthetic_sessions(presence=1.5)
    with pytest.raises(ValueError, match="too high for presence"):
        make_synthetic_sessions(presence=0.9, turnover=0.5)
    with pytest.raises(ValueError, match="could not place"):
        make_synthetic_sessions(n_cells=500, im_shape=(60, 60))
    with pytest.raises(ValueError, match="radius"):
        make_synthetic_sessions(radius=(5.0, 2.0))
    with pytest.raises(ValueError, match="jitter"):
        make_synthetic_sessions(jitter=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_synthetic_sessions(n_sessions=2, n_cells=5, im_shape=(64, 64), radius=(3, 4))
