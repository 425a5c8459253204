"""Extraction and spike inference split over a caller's executor (issue 8).

A real ``dask.distributed`` cluster (two single-threaded worker processes) and real
TIFF movies in a temporary dataset folder: the split results must be bit-identical
to one process, progress must advance per finished block, and closing / failing
progress must cancel the blocks not finished and store nothing.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import time

import distributed
import numpy as np
import pytest
import tifffile

from napari_sima.core import ROI, ImagingDataset, ROIList, Sequence
from napari_sima.core.extract import extract_rois, iter_extract_rois
from napari_sima.core.synthetic import make_calcium_movie

N_FRAMES = 240


class RecordingExecutor(cf.Executor):
    """Submits to a real executor and keeps the futures it returned."""

    def __init__(self, inner: cf.Executor) -> None:
        self.inner = inner
        self.futures: list[cf.Future] = []

    def submit(self, fn, /, *args, **kwargs):  # noqa: D102
        fut = self.inner.submit(fn, *args, **kwargs)
        self.futures.append(fut)
        return fut


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    )
    c = distributed.Client(cluster)
    try:
        yield c
    finally:
        c.close()
        cluster.close()


def _write_tiff(path, data):
    t, z, y, x, c = data.shape
    tifffile.imwrite(path, np.ascontiguousarray(data.transpose(0, 1, 4, 2, 3)).reshape(-1, y, x))
    return Sequence.create("TIFF", str(path), num_planes=z, num_channels=c)


@pytest.fixture(scope="module")
def dataset_path(tmp_path_factory):
    """A dataset folder: two 2-channel TIFF sequences and its true ROIs (set 'true')."""
    root = tmp_path_factory.mktemp("split")
    movie = make_calcium_movie(
        num_frames=N_FRAMES,
        frame_shape=(1, 40, 40, 2),
        num_sequences=2,
        num_cells=6,
        spike_rate=1.0,
        seed=5,
    )
    seqs = [_write_tiff(root / f"seq{k}.tif", s) for k, s in enumerate(movie.sequences)]
    ds = ImagingDataset(seqs, root / "d.sima")
    rois = [ROI(mask=cell.mask[None], label=f"cell{k}") for k, cell in enumerate(movie.cells)]
    # two identical ROIs: empty (NaN rows) without overlap, a singular group with it
    box = np.zeros((1, 40, 40), dtype=bool)
    box[0, 3:9, 30:37] = True
    rois += [ROI(mask=box, label="twin-a"), ROI(mask=box.copy(), label="twin-b")]
    ds.add_ROIs(ROIList(rois), "true")
    ds.compute_projections()  # cached in the folder: no time-average pass in the tests
    return root / "d.sima"


def _equal(a_list, b_list):
    assert len(a_list) == len(b_list)
    for a, b in zip(a_list, b_list, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.array_equal(a, b, equal_nan=True)


def test_extract_on_dask_equals_one_process(client, dataset_path):
    ds = ImagingDataset.load(dataset_path)
    rois = ds.ROIs["true"]
    for remove_overlap in (True, False):
        empty = (
            pytest.warns(RuntimeWarning, match="Empty ROIs")
            if remove_overlap
            else contextlib.nullcontext()
        )
        with empty:
            one = extract_rois(ds, rois, remove_overlap=remove_overlap)
        rec = RecordingExecutor(client.get_executor())
        with empty:
            split = extract_rois(
                ds, rois, remove_overlap=remove_overlap, executor=rec, chunk_frames=50
            )
        assert len(rec.futures) == 2 * 5  # 240 frames per sequence in chunks of 50
        _equal(one["raw"], split["raw"])
        if remove_overlap:
            assert np.isnan(split["raw"][0][-2:]).all()  # the twins lost every pixel
        else:
            assert np.isfinite(split["raw"][0]).all()
    # demixing the second channel out of the first, default chunks (one per sequence)
    with pytest.warns(RuntimeWarning, match="Empty ROIs"):
        one = extract_rois(ds, rois, demix_channel=1)
        split = extract_rois(ds, rois, demix_channel=1, executor=client.get_executor())
    _equal(one["raw"], split["raw"])
    _equal(one["demixed_raw"], split["demixed_raw"])


@pytest.mark.filterwarnings("ignore:Empty ROIs")
@pytest.mark.filterwarnings("ignore:sigma estimate")
def test_dataset_extract_and_spikes_on_dask(client, dataset_path):
    ds = ImagingDataset.load(dataset_path)
    one = ds.extract("true", label="serial", save_summary=False)
    steps = []
    gen = ds.iter_extract(
        "true",
        label="split",
        save_summary=False,
        executor=client.get_executor(),
        chunk_frames=60,
    )
    while True:
        try:
            steps.append(next(gen))
        except StopIteration as stop:
            split = stop.value
            break
    total = 2 * N_FRAMES
    assert steps[0] == (0, total) and steps[-1] == (total, total)
    assert [d for d, _ in steps] == sorted(d for d, _ in steps)
    assert len(steps) == 1 + 8  # the start, then one step per chunk of 60 frames
    _equal(one["raw"], split["raw"])
    _equal(ds.signals()["split"]["raw"], one["raw"])  # stored, as the serial path stores

    s1, f1, p1 = ds.infer_spikes(label="serial")
    calls = []
    s2, f2, p2 = ds.infer_spikes(
        label="serial",
        executor=client.get_executor(),
        chunk_rows=3,
        progress=lambda d, t: calls.append((d, t)),
    )
    _equal(s1, s2)
    _equal(f1, f2)
    _same_params(p1, p2)
    n_traces = 2 * 8
    assert calls[-1] == (n_traces, n_traces)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    _equal(ds.signals()["serial"]["spikes"], s2)


def _same_params(p1, p2):
    """Equal parameter lists, NaN equal to NaN."""
    assert len(p1) == len(p2)
    for a, b in zip(p1, p2, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert np.array_equal(
                np.asarray(a[key], float), np.asarray(b[key], float), equal_nan=True
            ), key


@pytest.mark.filterwarnings("ignore:Empty ROIs")
@pytest.mark.filterwarnings("ignore:sigma estimate")
def test_thread_pool_and_in_memory_movie(client, dataset_path):
    ds = ImagingDataset.load(dataset_path)
    rois = ds.ROIs["true"]
    one = extract_rois(ds, rois, remove_overlap=False)
    with cf.ThreadPoolExecutor(max_workers=2) as pool:
        gen = iter_extract_rois(ds, rois, remove_overlap=False, executor=pool, chunk_frames=16)
        steps = []
        while True:
            try:
                steps.append(next(gen))
            except StopIteration as stop:
                split = stop.value
                break
    assert steps[-1] == (2 * N_FRAMES, 2 * N_FRAMES) and len(steps) == 1 + 2 * 15
    _equal(one["raw"], split["raw"])
    # a movie held in memory sends each chunk's frames, not the whole array
    data = [np.asarray(s.read(dtype=np.uint16)) for s in ds.sequences]
    mem = ImagingDataset([Sequence.create("ndarray", d) for d in data], None)
    mem_one = extract_rois(mem, rois, signal_channel=1, remove_overlap=False)
    rec = RecordingExecutor(client.get_executor())
    mem_split = extract_rois(
        mem, rois, signal_channel=1, remove_overlap=False, executor=rec, chunk_frames=100
    )
    assert len(rec.futures) == 2 * 3
    _equal(mem_one["raw"], mem_split["raw"])
    # spike inference on threads
    mem.extract(rois, label="sig", save_summary=False)
    s1, f1, p1 = mem.infer_spikes()
    with cf.ThreadPoolExecutor(max_workers=2) as pool:
        s2, f2, p2 = mem.infer_spikes(executor=pool, chunk_rows=5)
    _equal(s1, s2)
    _equal(f1, f2)
    _same_params(p1, p2)


@pytest.mark.filterwarnings("ignore:Empty ROIs")
@pytest.mark.filterwarnings("ignore:sigma estimate")
def test_closing_or_failing_progress_cancels_and_stores_nothing(client, dataset_path):
    ds = ImagingDataset.load(dataset_path)
    before = ds.signal_labels()
    rec = RecordingExecutor(client.get_executor())
    gen = ds.iter_extract("true", label="cancelled", executor=rec, chunk_frames=6)
    assert next(gen) == (0, 2 * N_FRAMES)
    done, _ = next(gen)  # the first chunk placed
    assert 0 < done < 2 * N_FRAMES
    gen.close()
    assert len(rec.futures) == 2 * N_FRAMES // 6  # all submitted at once
    assert sum(f.cancelled() for f in rec.futures) > 0
    deadline = time.monotonic() + 30
    while not all(f.done() for f in rec.futures) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(f.done() for f in rec.futures)
    assert ds.signal_labels() == before
    assert ImagingDataset.load(dataset_path).signal_labels() == before

    # spike inference: an exception from progress() cancels the blocks not finished
    ds.extract("true", label="fresh", save_summary=False)

    class Stop(Exception):
        pass

    def stop(done, total):
        if done > 4:  # the first solved block (the twins' 4 NaN traces count at once)
            raise Stop

    with cf.ThreadPoolExecutor(max_workers=1) as pool:
        rec = RecordingExecutor(pool)
        with pytest.raises(Stop):
            ds.infer_spikes(label="fresh", executor=rec, chunk_rows=1, progress=stop)
        assert len(rec.futures) == 12  # 6 cells x 2 sequences, one trace per block
        assert sum(f.cancelled() for f in rec.futures) > 0
    assert "spikes" not in ImagingDataset.load(dataset_path).signals()["fresh"]


def test_bad_arguments(client, dataset_path):
    ds = ImagingDataset.load(dataset_path)
    rois = ds.ROIs["true"]
    with cf.ThreadPoolExecutor(max_workers=1) as pool:
        with pytest.raises(ValueError, match="cannot be combined"):
            extract_rois(ds, rois, n_processes=2, executor=pool)
        with pytest.raises(ValueError, match="cannot be combined"):
            ds.extract("true", n_processes=2, executor=pool)
        with pytest.raises(ValueError, match="cannot be combined"):
            ds.infer_spikes(n_processes=2, executor=pool)
        with pytest.raises(ValueError, match="chunk_frames"):
            extract_rois(ds, rois, executor=pool, chunk_frames=0)
        with pytest.raises(ValueError, match="chunk_rows"):
            ds.infer_spikes(executor=pool, chunk_rows=-1)
    with pytest.raises(TypeError, match="get_executor"):
        extract_rois(ds, rois, executor=client)
    with pytest.raises(TypeError, match="get_executor"):
        ds.infer_spikes(executor=client)


def _extract_in_task(path):
    """A pipeline step: runs on a worker and splits its own work over the cluster."""
    import warnings

    from distributed import worker_client

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with worker_client() as c:
            ds = ImagingDataset.load(path)
            out = ds.extract(
                "true",
                label="in-task",
                save_summary=False,
                executor=c.get_executor(),
                chunk_frames=40,
            )
    return out["raw"]


@pytest.mark.filterwarnings("ignore:Empty ROIs")
def test_split_from_inside_a_dask_task(client, dataset_path):
    ds = ImagingDataset.load(dataset_path)
    one = extract_rois(ds, ds.ROIs["true"])
    with distributed.get_task_stream(client) as stream:
        task = client.submit(_extract_in_task, str(dataset_path), pure=False)
        raw = task.result(timeout=120)  # two single-threaded workers: no deadlock
    _equal(one["raw"], raw)
    chunks = [t for t in stream.data if str(t["key"]).startswith("_run_chunk")]
    assert len(chunks) == 2 * N_FRAMES // 40  # the task's chunks ran on the cluster
    _equal(ImagingDataset.load(dataset_path).signals()["in-task"]["raw"], one["raw"])
