"""Tests of spike inference (napari_sima.core.spikes): SIMA's 9.5 tests and our own."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.signal import lfilter, welch
from scipy.stats import norm, uniform

from napari_sima.core import spikes as S
from napari_sima.core.dataset import ImagingDataset
from napari_sima.core.roi import ROI
from napari_sima.core.sequence import Sequence

# ----------------------------------------------------------------- SIMA's data recipe (9.5)
RATE, STEPS, STEPS_LONG, TAU, DELTAT, SIGMA, SEED = 1, 100, 5000, 0.6, 1 / 30, 0.1, 2222
GAMMA = 1 - DELTAT / TAU


@pytest.fixture(scope="module")
def sima_data():
    spikes = S.get_poisson_spikes(deltat=DELTAT, rate=RATE, steps=STEPS, seed=SEED)
    spikes_long = S.get_poisson_spikes(deltat=DELTAT, rate=RATE, steps=STEPS_LONG, seed=SEED)
    np.random.seed(SEED)
    calcium = lfilter([1], [1, -GAMMA], spikes)
    calcium_long = lfilter([1], [1, -GAMMA], spikes_long)
    fluors = calcium + norm.rvs(scale=SIGMA, size=STEPS) + uniform.rvs()
    fluors_long = calcium_long + norm.rvs(scale=SIGMA, size=STEPS_LONG) + uniform.rvs()
    return spikes, spikes_long, fluors, fluors_long


def test_poisson_spikes_reference(sima_data):
    spikes, spikes_long, _, _ = sima_data
    assert spikes.sum() == 4 and spikes_long.sum() == 173
    np.testing.assert_array_equal(spikes, spikes_long[:100])


def test_estimate_parameters(sima_data):
    gamma, sigma = S.estimate_parameters([sima_data[3]], mode="correct")
    assert abs(gamma - GAMMA) < 0.01
    assert abs(sigma - SIGMA) < 0.01
    assert gamma == pytest.approx(0.94032, abs=1e-5)
    assert sigma == pytest.approx(0.09933, abs=1e-5)


@pytest.mark.parametrize("solver", ["oasis", "cvxpy"])
def test_spike_inference(sima_data, solver):
    spikes, _, fluors, _ = sima_data
    inference, fit, params = S.spike_inference(fluors, mode="correct", solver=solver)
    assert np.linalg.norm(params["spike_amounts"] - spikes) < 1.0
    assert np.linalg.norm(inference - spikes) < 1.0  # normalised to the maximum
    assert np.nanmax(inference) == pytest.approx(1.0)


@pytest.mark.parametrize("solver", ["oasis", "cvxpy"])
def test_spike_inference_psd(sima_data, solver):
    spikes, _, fluors, _ = sima_data
    inference, fit, params = S.spike_inference(fluors, mode="psd", solver=solver)
    assert np.asarray(params["gamma"]).shape == (2,)
    assert np.linalg.norm(params["spike_amounts"] - spikes) < 1.0
    assert np.linalg.norm(inference - spikes) < 1.0


@pytest.mark.parametrize("solver", ["oasis", "cvxpy"])
def test_spike_inference_correct_parameters(sima_data, solver):
    spikes, _, fluors, _ = sima_data
    inference, fit, params = S.spike_inference(fluors, sigma=SIGMA, gamma=GAMMA, solver=solver)
    assert np.linalg.norm(params["spike_amounts"] - spikes) < 0.51
    assert params["gamma"] == GAMMA
    assert params["sigma"] == SIGMA


# ----------------------------------------------------------------- closed-form helpers
def test_nextpow2():
    assert [S.nextpow2(v) for v in (0, 1, 2, 3, 4, 5, 1023, 1024, 1025, -7)] == [
        0, 0, 1, 2, 2, 3, 10, 10, 11, 3
    ]


def test_axcov_is_an_unnormalised_direct_sum():
    x = np.random.default_rng(1).normal(size=37)
    d = x - x.mean()
    for maxlag in (0, 1, 5, 20):
        expected = [np.sum(d[: len(d) - abs(k)] * d[abs(k):]) for k in range(-maxlag, maxlag + 1)]
        np.testing.assert_allclose(S.axcov(x, maxlag), expected, rtol=0, atol=1e-11)


def test_axcov_rows_matches_axcov():
    x = np.random.default_rng(2).normal(size=(4, 50))
    np.testing.assert_allclose(
        S._axcov_rows(x, 3), np.array([S.axcov(r, 3) for r in x]), rtol=0, atol=1e-12
    )


def test_default_psd_opts():
    assert S.default_psd_opts() == {
        "method": "cvx", "bas_nonneg": True, "noise_range": (0.25, 0.5),
        "noise_method": "logmexp", "lags": 5, "resparse": 0, "fudge_factor": 1,
        "verbosity": False,
    }


def test_estimate_sigma_by_hand():
    x = np.random.default_rng(3).normal(scale=0.3, size=1000)
    f, p = welch(x, nperseg=256)
    keep = (f > 0.25) & (f < 0.5)
    pk = p[keep] / 2
    assert S.estimate_sigma(x) == pytest.approx(np.sqrt(np.exp(np.mean(np.log(pk)))), abs=1e-14)
    assert S.estimate_sigma(x, method="mean") == pytest.approx(np.sqrt(pk.mean()), abs=1e-14)
    assert S.estimate_sigma(x, (0.1, 0.3), "median") == pytest.approx(
        np.sqrt(np.median(p[(f > 0.1) & (f < 0.3)] / 2)), abs=1e-14
    )
    short = x[:100]  # nperseg = len
    f, p = welch(short, nperseg=100)
    pk = p[(f > 0.25) & (f < 0.5)] / 2
    assert S.estimate_sigma(short) == pytest.approx(np.sqrt(np.exp(np.mean(np.log(pk)))))
    assert S.estimate_sigma(x) == pytest.approx(0.3, rel=0.1)


def test_estimate_gamma_by_hand(sima_data):
    f = sima_data[3]
    sigma = 0.1
    lags, p = 5, 2
    L = lags + p
    c = S.axcov(f, L)[L:]
    A = np.array([[c[abs(i - j)] - (sigma**2 if i == j else 0) for j in range(p)]
                  for i in range(L)])
    expected = np.linalg.lstsq(A, c[1:L + 1], rcond=None)[0]
    np.testing.assert_allclose(S.estimate_gamma(f, sigma), expected, rtol=1e-12)
    g1 = S.estimate_gamma(f, None, p=1)
    assert g1.shape == (1,)
    # fudge factor shrinks the (real) roots
    g = S.estimate_gamma(f, sigma, p=1, fudge_factor=0.9)
    assert g[0] == pytest.approx(0.9 * S.estimate_gamma(f, sigma, p=1)[0])


def test_estimate_parameters_formulas():
    rng = np.random.default_rng(4)
    traces = [rng.normal(size=200).cumsum() * 0.01 + rng.normal(size=200) for _ in range(2)]
    traces.append(rng.normal(size=150))
    num = den = 0.0
    for t in traces:
        lag = min(50, len(t) // 2 - 1)
        c = S.axcov(t, lag)
        num += c[lag + 3]
        den += c[lag + 2]
    g = num / den
    c = sum(S.axcov(t, 1) for t in traces) / sum(len(t) for t in traces)
    gamma, sigma = S.estimate_parameters(traces, sigma=0)
    assert gamma == g and sigma == 0
    g_fix = 0.9
    assert S.estimate_parameters(traces, g_fix)[1] == pytest.approx(np.sqrt(c[1] - c[2] / g_fix))
    assert S.estimate_parameters(traces, g_fix, mode="robust")[1] == pytest.approx(
        np.sqrt(c[1] - c[2])
    )
    assert S.estimate_parameters(traces, 0.5, 0.2) == (0.5, 0.2)
    with pytest.warns(RuntimeWarning):
        smooth = [np.sin(np.arange(200) / 5)]
        assert S.estimate_parameters(smooth, 0.01)[1] == 0.0  # negative -> 0
    # psd: on the concatenation, given values ignored
    g_psd, s_psd = S.estimate_parameters(traces, 0.5, 0.2, mode="psd")
    concat = np.concatenate(traces)
    assert s_psd == S.estimate_sigma(concat)
    np.testing.assert_array_equal(g_psd, S.estimate_gamma(concat, s_psd, 2))


def test_estimate_gamma_capped():
    ramp = np.cos(2 * np.pi * np.arange(120) / 6)  # c(3)/c(2) = 2
    with pytest.warns(RuntimeWarning):
        gamma, _ = S.estimate_parameters([ramp], sigma=0)
    assert gamma == 0.98


@pytest.mark.filterwarnings("ignore:sigma estimate")
@pytest.mark.parametrize("mode", ["correct", "robust"])
def test_estimate_parameters_many_matches_per_roi(mode):
    rng = np.random.default_rng(5)
    seqs = [lfilter([1], [1, -0.9], rng.random((6, n)) < 0.1, axis=1)
            + 0.3 * rng.normal(size=(6, n)) for n in (300, 200)]
    g, s = S.estimate_parameters_many(seqs, mode=mode)
    for i in range(6):
        gi, _ = S.estimate_parameters([q[i] for q in seqs], sigma=0)
        _, si = S.estimate_parameters([q[i] for q in seqs], gi, mode=mode)
        assert g[i] == pytest.approx(gi, abs=1e-10)
        assert s[i] == pytest.approx(si, abs=1e-10)


# ----------------------------------------------------------------- solvers agree
def _trace(T, gamma, noise, base, seed, rate=0.05):
    rng = np.random.default_rng(seed)
    s = rng.poisson(rate, T).astype(float)
    c = lfilter([1], [1, -gamma], s) + 1.5 * gamma ** np.arange(T)
    return c + base + noise * rng.normal(size=T)


@pytest.mark.parametrize("T", [100, 1000, 3000])
@pytest.mark.parametrize("gamma", [0.5, 0.9, 0.99])
@pytest.mark.parametrize("noise,base", [(0.05, 0.0), (0.3, 5.0), (1.0, -2.0)])
def test_oasis_agrees_with_cvxpy(T, gamma, noise, base):
    f = _trace(T, gamma, noise, base, seed=T + int(100 * gamma))
    g = np.array([gamma])
    c1, b1 = S._solve_oasis_ar1(f, noise, gamma)
    c2, b2 = S._solve_cvxpy(f, noise, g, None)
    G = S._ar_matrix(T, g)
    o1, o2 = (G @ c1)[1:].sum(), (G @ c2)[1:].sum()
    assert abs(o1 - o2) <= 1e-4 * abs(o2) + 1e-7
    if o2 > 1e-6:  # with no spike at all the optimum is not unique
        assert np.max(np.abs((c1 + b1) - (c2 + b2))) < 1e-3 * np.std(f)
        # the noise constraint is tight
        assert np.linalg.norm(f - c1 - b1) == pytest.approx(noise * np.sqrt(T), rel=1e-8)
    # oasis is feasible: spikes and initial calcium >= 0
    assert np.linalg.norm(f - c1 - b1) <= noise * np.sqrt(T) * (1 + 1e-8)
    assert (G @ c1).min() >= -1e-10


def test_spike_inference_outputs_and_first_frame_unpenalised():
    T, gamma = 400, 0.95
    rng = np.random.default_rng(7)
    f = 3.0 * gamma ** np.arange(T) + 1.0 + 0.05 * rng.normal(size=T)  # decay only
    s, fit, p = S.spike_inference(f, sigma=0.05, gamma=gamma)
    assert p["baseline"] == pytest.approx(1.0, abs=0.02)
    assert p["spike_amounts"][0] == pytest.approx(3.0, abs=0.1)  # initial calcium
    assert p["spike_amounts"][1:].sum() < 0.05  # the decay needs no spikes
    assert s.shape == fit.shape == (T,)
    np.testing.assert_allclose(s * p["spike_scale"], p["spike_amounts"])


@pytest.mark.parametrize("solver", ["oasis", "cvxpy"])
def test_nan_frames(solver):
    f = _trace(300, 0.9, 0.1, 1.0, seed=11)
    g = f.copy()
    g[[0, 50, 51, 52, 299]] = np.nan
    s, fit, p = S.spike_inference(g, sigma=0.1, gamma=0.9, solver=solver)
    bad = np.isnan(g)
    assert np.all(np.isnan(s[bad])) and np.all(np.isnan(fit[bad]))
    assert np.all(np.isfinite(s[~bad])) and np.all(np.isfinite(fit[~bad]))
    assert np.corrcoef(fit[~bad], f[~bad])[0, 1] > 0.95
    with pytest.raises(ValueError):
        S.spike_inference(np.full(10, np.nan), sigma=0.1, gamma=0.9)


def test_bad_solver():
    with pytest.raises(ValueError):
        S.spike_inference(np.ones(10), 0.1, 0.9, solver="nope")


# ----------------------------------------------------------------- datasets
@pytest.fixture(scope="module")
def calcium_movie():
    from napari_sima.core.synthetic import make_calcium_movie

    return make_calcium_movie(
        num_frames=300, frame_shape=(1, 48, 48, 1), num_sequences=2, num_cells=4,
        spike_rate=1.0, seed=3, allow_overlap=False,
    )


def _dataset(movie, savedir=None):
    seqs = [Sequence.create("ndarray", s) for s in movie.sequences]
    ds = ImagingDataset(seqs, savedir)
    ds.extract([ROI(mask=c.mask[None]) for c in movie.cells], label="sig")
    return ds


@pytest.mark.filterwarnings("ignore:sigma estimate")
def test_infer_spikes_processes_give_the_same_numbers(calcium_movie, tmp_path, monkeypatch):
    monkeypatch.setattr(S, "SPIKES_CHUNK_ROWS", 3)  # 8 traces -> 3 blocks over the pool
    one = _dataset(calcium_movie, tmp_path / "one.sima")
    two = _dataset(calcium_movie, tmp_path / "two.sima")
    s1, f1, p1 = one.infer_spikes()
    calls = []
    s2, f2, p2 = two.infer_spikes(n_processes=2, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(3, 8), (6, 8), (8, 8)]
    for q in range(2):
        np.testing.assert_array_equal(s1[q], s2[q])
        np.testing.assert_array_equal(f1[q], f2[q])
    assert p1 == p2
    np.testing.assert_array_equal(two.signals()["sig"]["spikes"][1], s2[1])
    with pytest.raises(ValueError, match="n_processes"):
        two.infer_spikes(n_processes=0)

    def stop(done, total):
        raise KeyboardInterrupt  # e.g. the GUI's Cancel

    before = two.signals()["sig"]["spikes"][0].copy()
    with pytest.raises(KeyboardInterrupt):
        two.infer_spikes(n_processes=2, mode="robust", progress=stop)
    np.testing.assert_array_equal(two.signals()["sig"]["spikes"][0], before)


@pytest.mark.filterwarnings("ignore:sigma estimate")
def test_infer_spikes_memory(calcium_movie):
    movie = calcium_movie
    ds = _dataset(movie)
    calls = []
    spikes, fits, params = ds.infer_spikes(progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (8, 8) and len(calls) == 8
    raw = ds.signals()["sig"]["raw"]
    assert len(spikes) == len(fits) == len(params) == 2
    for q in range(2):
        assert spikes[q].shape == fits[q].shape == raw[q].shape
        assert len(set(params[q]["gamma"])) == 1  # shared (median)
        assert len(params[q]["sigma"]) == 4
        np.testing.assert_allclose(np.nanmax(spikes[q], axis=1), 1.0)
        for k in range(4):
            truth = movie.cells[k].spikes[q]
            r = np.corrcoef(spikes[q][k], truth)[0, 1]
            assert r > 0.5, (q, k, r)
            assert np.corrcoef(fits[q][k], raw[q][k])[0, 1] > 0.9
    stored = ds.signals()["sig"]
    for q in range(2):
        np.testing.assert_array_equal(stored["spikes"][q], spikes[q])
        np.testing.assert_array_equal(stored["spikes_fits"][q], fits[q])
    assert stored["spikes_params"] == params


@pytest.mark.filterwarnings("ignore:sigma estimate")
def test_infer_spikes_options(calcium_movie):
    movie = calcium_movie
    ds = _dataset(movie)
    _, _, p1 = ds.infer_spikes(share_gamma=False, mode="robust")
    assert len(set(p1[0]["gamma"])) > 1
    gam = np.array(p1[0]["gamma"])
    g_ref, _ = S.estimate_parameters_many(ds.signals()["sig"]["raw"])
    np.testing.assert_allclose(gam, g_ref)
    # sigma honours the mode
    _, s_rob = S.estimate_parameters_many(ds.signals()["sig"]["raw"], gam, mode="robust")
    np.testing.assert_allclose(p1[0]["sigma"], s_rob)
    _, _, p2 = ds.infer_spikes(gamma=0.9)
    assert p2[1]["gamma"] == [0.9] * 4
    sp, _, p3 = ds.infer_spikes(mode="psd")
    assert np.asarray(p3[0]["gamma"]).shape == (4, 2)
    assert np.all(np.isfinite(sp[0]))


@pytest.mark.filterwarnings("ignore:sigma estimate")
def test_infer_spikes_folder_roundtrip(calcium_movie, tmp_path):
    movie = calcium_movie
    ds = _dataset(movie, tmp_path / "d.sima")
    raw_nan = ds.signals()["sig"]["raw"]
    spikes, fits, params = ds.infer_spikes(label="sig")
    back = ImagingDataset.load(tmp_path / "d.sima").signals()["sig"]
    for q in range(2):
        np.testing.assert_allclose(back["spikes"][q], spikes[q])
        np.testing.assert_allclose(back["spikes_fits"][q], fits[q])
        np.testing.assert_array_equal(back["raw"][q], raw_nan[q])
    assert back["spikes_params"] == params


def test_infer_spikes_nan_frames_and_errors(calcium_movie):
    movie = calcium_movie
    ds = _dataset(movie)
    sets = ds.__dict__["_memory_signals"][0]
    raw = [r.astype(float) for r in sets["sig"]["raw"]]
    raw[0][:, 10:15] = np.nan
    raw[1][2] = np.nan  # an empty ROI in one sequence
    sets["sig"] = {**sets["sig"], "raw": raw}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # SIMA's sigma formula may give 0
        spikes, fits, params = ds.infer_spikes()
    assert np.all(np.isnan(spikes[0][:, 10:15])) and np.all(np.isnan(fits[0][:, 10:15]))
    assert np.all(np.isfinite(spikes[0][:2, 20:]))
    assert np.all(np.isnan(spikes[1][2])) and np.isnan(params[1]["baseline"][2])
    with pytest.raises(KeyError):
        ds.infer_spikes(label="nope")
    with pytest.raises(ValueError):
        ds.infer_spikes(mode="nope")


@pytest.mark.filterwarnings("ignore:sigma estimate")
def test_infer_spikes_legacy_folder_writes_our_store(tmp_path):
    """A legacy SIMA signals pickle: the set is rewritten in our store with the spikes."""
    import pickle

    from napari_sima.core import signal_store

    folder = tmp_path / "old.sima"
    folder.mkdir()
    rng = np.random.default_rng(9)
    raw = lfilter([1], [1, -0.9], rng.random((2, 400)) < 0.05, axis=1) + 1
    raw += 0.05 * rng.normal(size=raw.shape)
    entry = {"raw": [raw.astype(np.float32)], "mean_frame": np.ones((1, 6, 8)),
             "signal_channel": 0, "timestamp": "2015-03-04-13h05m22s",
             "rois": [{"mask": [np.eye(6, 8, k=k, dtype=bool)], "polygons": None,
                       "label": str(k), "id": None, "tags": set(), "im_shape": (1, 6, 8)}
                      for k in range(2)]}
    with open(folder / "signals_0.pkl", "wb") as fh:
        pickle.dump({"old": entry}, fh, protocol=2)

    class Legacy:
        savedir = str(folder)
        read_only = False

        def resolve_channel(self, channel):
            return 0

        def signals(self, channel=0):
            return signal_store.dataset_signal_sets(folder, 0)

        def signal_labels(self, channel=0):
            return ["old"]

    spikes, fits, params = S.infer_spikes(Legacy())
    back = signal_store.dataset_signal_sets(folder, 0)["old"]
    np.testing.assert_allclose(back["spikes"][0], spikes[0])
    np.testing.assert_allclose(back["spikes_fits"][0], fits[0])
    assert back["spikes_params"] == params
    assert (folder / "signals_0.pkl").exists()  # the legacy file is left alone
