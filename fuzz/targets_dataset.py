"""Fuzz targets for napari-sima's own files: ``dataset.json``, set stores, pipeline YAML.

Every target starts from *valid* files written by napari-sima and mutates their
structure, so that the fuzzing reaches the deep code (sequence rebuilding, the set
decoders, pipeline validation) instead of stopping at the JSON or YAML parser:

``dataset-json``
    A dataset folder holding every sequence kind (an array ``seq_*.npy``, an HDF5
    movie seen through an index view, a TIFF joined with HDF5 and masked, a
    motion-corrected array with its ``displacements_*.npy``, two ``TIFFs`` grids
    joined), an ROI set and a signal set.  Its ``dataset.json`` gets structural
    mutations (keys deleted or added, values replaced by wrong types, huge or negative
    numbers, odd text and paths -- ``../../etc/passwd``, ``/dev/zero``, a FIFO, a
    folder --, subtrees swapped, duplicated or nested deeper, ``kind`` changed), then
    maybe byte-level ones (flips, truncation) or is replaced by deeply nested JSON.
    Read with :meth:`ImagingDataset.load` and every property touched (``frame_shape``,
    ``num_frames``, ``channel_names``, ``sequences`` and their first frames when small,
    ``ROIs``, ``signals(0)``, ``provenance()``).

``set-index``
    The same folder's ROI store and signal store: their ``index.json`` mutated as
    above (bad and traversing file names, wrong types, huge sizes), or one
    ``set_*.npz`` rewritten with members deleted, added or replaced (other dtypes,
    shapes, object arrays holding a pickle, headers claiming huge shapes or odd
    dtypes), with its JSON ``meta`` / ``properties`` mutated, or with the archive's
    bytes flipped or truncated.  Read with ``ds.ROIs`` (:func:`load_roi_sets`),
    ``ds.signals(0)``, ``ds.signal_labels(0)`` and ``ds.provenance()``.

``pipeline-yaml``
    Valid pipelines (every step, flow and block style, anchors) mutated structurally,
    random YAML, Python tags (``!!python/object/apply:os.system``), alias bombs,
    deep nesting, huge numbers, non-UTF-8 and byte-level damage.  Read with
    :func:`napari_sima.core.pipeline.load_pipeline`.

Run them with ``python -m fuzz.run --targets dataset-json,set-index,pipeline-yaml``.
"""

from __future__ import annotations

import copy
import functools
import io
import json
import os
import shutil
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import strategies as st

from fuzz.harness import Target

# ---------------------------------------------------------------------------------------
# Interesting values
# ---------------------------------------------------------------------------------------
#: Text that tends to break path handling and parsers.
ODD_TEXT: tuple[str, ...] = (
    "", " ", ".", "..", "../..", "../../../../../../etc/passwd", "/etc/passwd", "/dev/zero",
    "/dev/urandom", "/proc/self/mem", "/", "../fifo", "../zero", "../folder", "../movie.h5",
    "../movie.tif", "seq_missing.npy", "set_../../index.json", "set_0.npz", "../set_0.npz",
    "index.json", "../dataset.json", "C:\\Windows\\system32", "a\\..\\..\\b", "a\x00b",
    "\x00", "ünïcødé ☃ 𝄞", "\ud800", "\u202e", "A" * 3000, "%s%n{0}", "{name}", "~",
    "tzyxc", "yxt", "tyx", "zzz", "imaging", "/imaging", "TIFF", "TIFFs", "HDF5", "ndarray",
    "indexed", "joined", "masked", "motion_corrected", "polygons", "mask", "array",
    "sequences", "json", "bool", "float64", "int8", "U3", "O", "V8", "M8[s]", "<f8", "|O",
    "napari-sima dataset", "napari-sima roi sets", "napari-sima signal sets",
)  # fmt: skip

#: Numbers (and JSON constants) that tend to break size and index arithmetic.
ODD_NUMBERS: tuple[Any, ...] = (
    0, 1, 2, 3, 4, 5, -1, -2, 7, 8, 10, 63, 64, 255, 256, 65535, 2**31 - 1, 2**31, 2**32,
    2**53 + 1, 2**63 - 1, 2**63, 2**64, 10**30, -(10**30), 10**300, 0.5, -0.0, 1e-300,
    1e308, float("inf"), float("-inf"), float("nan"), True, False, None,
)  # fmt: skip

#: Keys our JSON files use (so that added keys land where the code looks).
KNOWN_KEYS: tuple[str, ...] = (
    "kind", "base", "times", "region", "range", "list", "masks", "frames", "channels",
    "shape", "zyx_true", "displacements_file", "extent", "sequences", "abspath", "relpath",
    "path", "dim_order", "group", "key", "num_planes", "num_channels", "num_frames", "grid",
    "files", "one_file_per_frame", "format", "format_version", "channel_names",
    "frame_shape", "num_sequences", "provenance", "sets", "file", "timestamp", "n_rois",
    "derived", "rois", "extra", "value", "n", "has_demixed", "has_overlap", "signal_channel",
    "demix_channel", "label", "id", "tags", "im_shape", "n_polygons", "mask_dtype",
    "mask_planes", "parameters", "entries", "version", "name", "steps", "step",
)  # fmt: skip

_leaf = st.one_of(
    st.sampled_from(ODD_TEXT),
    st.sampled_from(ODD_NUMBERS),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=16),
)
_key = st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=8))
json_values = st.recursive(
    _leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(_key, inner, max_size=4)
    ),
    max_leaves=10,
)


# ---------------------------------------------------------------------------------------
# Structural mutation of a JSON-like tree
# ---------------------------------------------------------------------------------------
_path = st.lists(st.integers(0, 2**16), min_size=1, max_size=8)


@st.composite
def tree_mutation(draw: st.DrawFn) -> tuple:
    """One mutation of a JSON tree, applied by :func:`mutate_tree`."""
    op = draw(st.sampled_from(
        ["replace", "replace", "replace", "delete", "delete", "insert", "swap", "copy",
         "wrap", "kind"]
    ))  # fmt: skip
    if op == "replace":
        return (op, draw(_path), draw(json_values))
    if op == "insert":
        return (op, draw(_path), draw(_key), draw(json_values))
    if op in ("swap", "copy"):
        return (op, draw(_path), draw(_path))
    if op == "wrap":
        return (op, draw(_path), draw(st.sampled_from([1, 2, 8, 100, 300])),
                draw(st.booleans()))
    if op == "kind":
        kinds = ["ndarray", "TIFF", "TIFFs", "HDF5", "indexed", "joined", "masked",
                 "motion_corrected", "polygons", "mask", "array", "sequences", "json"]
        return (op, draw(_path), draw(st.sampled_from(kinds)))
    return (op, draw(_path))


def _children(node: Any) -> list[tuple[Any, Any]]:
    if isinstance(node, dict):
        return list(node.items())
    if isinstance(node, list):
        return list(enumerate(node))
    return []


def _locate(root: Any, path: list[int]) -> tuple[Any, Any, Any]:
    """Follow ``path`` (child choices modulo the number of children); ``(parent, key, node)``."""
    parent, key, node = None, None, root
    for step in path:
        kids = _children(node)
        if not kids:
            break
        key, child = kids[step % len(kids)]
        parent, node = node, child
    return parent, key, node


def _set(root: list[Any], parent: Any, key: Any, value: Any) -> None:
    if parent is None:
        root[0] = value
    else:
        parent[key] = value


def mutate_tree(obj: Any, mutations: list[tuple], focus: tuple[str, ...] = ()) -> Any:
    """Apply :func:`tree_mutation` results to a deep copy of ``obj``.

    ``focus`` (keys from the root) is where most mutations land: the interesting
    part of a file (the sequence descriptions, the sets of an index), not its header.
    """
    root = copy.deepcopy(obj)
    for k, m in enumerate(mutations):
        node = root
        if k % 4 != 3:  # three mutations out of four below the focus
            for key in focus:
                if isinstance(node, dict) and key in node:
                    node = node[key]
        holder = [node]
        try:
            _mutate_once(holder, m)
        except RecursionError:  # a subtree nested too deeply to copy: skip this one
            continue
        if node is root:
            root = holder[0]
        elif holder[0] is not node:  # the focus node itself was replaced
            parent = root
            for key in focus[:-1]:
                parent = parent[key]
            parent[focus[-1]] = holder[0]
    return root


def to_json(obj: Any) -> bytes:
    """Serialise a mutated tree (non-UTF-8 surrogates kept; absurd nesting flattened)."""
    try:
        text = json.dumps(obj, allow_nan=True)
    except (RecursionError, ValueError):
        return deep_json(2000, "sequences")
    return text.encode("utf-8", "surrogatepass")


def _mutate_once(holder: list[Any], m: tuple) -> None:
    """Apply one mutation in place (``holder[0]`` is the root)."""
    op, path = m[0], m[1]
    parent, key, node = _locate(holder[0], path)
    if op == "replace":
        _set(holder, parent, key, copy.deepcopy(m[2]))
    elif op == "delete":
        if parent is not None:
            del parent[key]
    elif op == "insert":
        if isinstance(node, dict):
            node[m[2]] = copy.deepcopy(m[3])
        elif isinstance(node, list):
            node.append(copy.deepcopy(m[3]))
    elif op in ("swap", "copy"):
        p2, k2, other = _locate(holder[0], m[2])
        if other is node:
            return
        if op == "copy":
            _set(holder, parent, key, copy.deepcopy(other))
        elif parent is not None and p2 is not None and not _contains(node, other) and (
            not _contains(other, node)
        ):
            parent[key], p2[k2] = other, node
    elif op == "wrap":
        depth, as_list = m[2], m[3]
        value = node
        for _ in range(depth):
            value = [value] if as_list else {"kind": "indexed", "base": value}
        _set(holder, parent, key, value)
    elif op == "kind" and isinstance(node, dict):
        node["kind"] = m[2]


def _contains(tree: Any, node: Any) -> bool:
    stack = [tree]
    while stack:
        cur = stack.pop()
        if cur is node:
            return True
        stack.extend(v for _, v in _children(cur))
    return False


@st.composite
def byte_mutation(draw: st.DrawFn) -> tuple:
    """Overwrite, insert or truncate bytes of a serialised file."""
    kind = draw(st.sampled_from(["flip", "flip", "insert", "truncate"]))
    if kind == "truncate":
        return (kind, draw(st.integers(0, 2**16)))
    return (kind, draw(st.integers(0, 2**16)), draw(st.binary(min_size=1, max_size=8)))


def mutate_bytes(data: bytes, mutations: list[tuple]) -> bytes:
    """Apply :func:`byte_mutation` results (offsets modulo the length)."""
    buf = bytearray(data)
    for m in mutations:
        if m[0] == "truncate":
            del buf[m[1] % (len(buf) + 1):]
            continue
        pos = m[1] % (len(buf) + 1)
        if m[0] == "flip":
            buf[pos : pos + len(m[2])] = m[2]
        else:
            buf[pos:pos] = m[2]
    return bytes(buf)


def deep_json(depth: int, kind: str) -> bytes:
    """``[[[...]]]`` or ``{"a": {"a": ...}}`` (or unclosed) nested ``depth`` levels."""
    if kind == "lists":
        return b"[" * depth + b"]" * depth
    if kind == "dicts":
        return b'{"a":' * depth + b"1" + b"}" * depth
    if kind == "sequences":  # the nesting our sequence descriptions allow
        inner = b'{"kind": "ndarray", "relpath": "x.npy"}'
        return b'{"kind": "indexed", "base": ' * depth + inner + b"}" * depth
    return b"[" * depth


# ---------------------------------------------------------------------------------------
# The template dataset folder (written once per process by napari-sima itself)
# ---------------------------------------------------------------------------------------
@functools.cache
def template() -> Path:
    """Write the movies and a dataset ``ds.sima`` using every sequence kind (once)."""
    import h5py
    import tifffile

    from napari_sima.core import ROI, ImagingDataset, Sequence, signal_store

    root = Path(tempfile.mkdtemp(prefix="napari_sima_fuzz_template_"))
    rng = np.random.default_rng(0)
    movie = rng.integers(0, 1000, size=(6, 1, 8, 10, 2)).astype(np.uint16)
    with h5py.File(root / "movie.h5", "w") as f:
        f["imaging"] = movie
    tifffile.imwrite(root / "movie.tif", movie[..., 0].reshape(6, 8, 10))
    frames = root / "frames"
    frames.mkdir()
    for t in range(3):
        tifffile.imwrite(frames / f"f{t}.tif", movie[t, 0, :, :, 0])
    arr = rng.random((6, 1, 8, 10, 2)).astype(np.float32)
    small = rng.random((6, 1, 8, 8, 2)).astype(np.float32)
    h5 = Sequence.create("HDF5", str(root / "movie.h5"), "tzyxc", key="imaging")
    tif = Sequence.create("TIFF", str(root / "movie.tif"))
    h5c0 = h5[:, :, :, :, 0]
    grid = Sequence.create("TIFFs", [[str(frames / "f*.tif")]])
    # every frame is (z, y, x, c) = (1, 8, 10, 2)
    sequences = [
        Sequence.create("ndarray", arr),
        h5[::2, :, :, ::1],
        Sequence.join(tif, h5c0).mask(
            [([0, 2], None, [1]), (None, 0, np.eye(8, 10, dtype=bool), None)]
        ),
        Sequence.create("ndarray", small).apply_displacements(
            np.tile(np.array([[[0, 1]]]), (6, 1, 1)), (1, 8, 10)
        ),
        Sequence.join(grid, grid)[1:, :, :, :, :],
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = ImagingDataset(sequences, str(root / "ds"), channel_names=["green", "red"])
        rois = [
            ROI(polygons=[[1, 1, 0], [1, 5, 0], [5, 5, 0]], label="a", id="1", tags={"x"},
                im_shape=(1, 8, 10)),
            ROI(mask=np.eye(8, 10, dtype=float)[None] * 0.5, label="b", id="2"),
        ]
        ds.add_ROIs(rois, label="cells")
        raw = [rng.random((2, len(s))).astype(np.float32) for s in ds.sequences]
        signals = {
            "raw": raw,
            "demixed_raw": raw,
            "mean_frame": rng.random((1, 8, 10)),
            "overlap": (np.array([1, 2]), np.array([3, 4])),
            "signal_channel": 0,
            "rois": [r.todict() for r in rois],
            "timestamp": "2024-01-01-00h00m00s",
            "dff": [r * 2 for r in raw],
            "spikes_params": [{"gamma": 0.9}],
            "spikes": raw[0],
        }
        signal_store.save_signal_set(signal_store.store_dir(ds.savedir, 0), signals, "sig")
    return root


def _workdir_dataset(workdir: Path, movies: bool = True) -> Path:
    """Copy the template dataset under ``workdir``; return its folder.

    With ``movies``, the movies are linked next to it, with a FIFO, a link to
    ``/dev/zero`` and a folder that mutated paths may name.
    """
    src = template()
    if movies:
        for name in ("movie.h5", "movie.tif", "frames"):
            (workdir / name).symlink_to(src / name)
        os.mkfifo(workdir / "fifo")
        (workdir / "zero").symlink_to("/dev/zero")
        (workdir / "folder").mkdir()
    ds = workdir / "ds.sima"
    ds.mkdir()
    for item in (src / "ds.sima").iterdir():
        if item.is_dir():
            shutil.copytree(item, ds / item.name)
        elif movies and item.name != "dataset.json" and not item.name.startswith("."):
            (ds / item.name).symlink_to(item)
    return ds


@functools.cache
def _template_json(name: str) -> Any:
    src = template() / "ds.sima"
    if name == "dataset":
        return json.loads((src / "dataset.json").read_text())
    if name == "rois":
        return json.loads((src / "rois" / "index.json").read_text())
    return json.loads((src / "signals" / "channel_0" / "index.json").read_text())


def _touch_dataset(folder: Path, sequences: bool = True) -> None:
    """Open a dataset and use what the GUI and CLI use (its movies too with ``sequences``)."""
    from napari_sima.core import ImagingDataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = ImagingDataset.load(folder)
        _ = ds.frame_shape, ds.num_frames, ds.channel_names, ds.num_sequences, repr(ds)
        for seq in ds.sequences if sequences else ():
            _ = seq.shape, seq.dtype, len(seq), seq.files
            if len(seq) and int(np.prod(seq.frame_shape)) <= 2**20:
                seq.frame(0)
        _ = ds.ROIs
        ds.signals(0)
        ds.signal_labels(0)
        ds.provenance()
        ds.close()


# ---------------------------------------------------------------------------------------
# dataset-json
# ---------------------------------------------------------------------------------------
@st.composite
def dataset_json_input(draw: st.DrawFn) -> tuple:
    """(mutations of dataset.json, byte mutations, deep-nesting override or None)."""
    mutations = draw(st.lists(tree_mutation(), min_size=1, max_size=5))
    # (hypothesis favours boundary values: the rare branches are on middle values)
    raw = draw(st.lists(byte_mutation(), max_size=3)) if draw(st.integers(0, 7)) == 5 else []
    deep = None
    if draw(st.integers(0, 19)) == 11:
        deep = (draw(st.sampled_from([10, 100, 1000, 5000, 50_000])),
                draw(st.sampled_from(["lists", "dicts", "sequences", "unclosed"])))
    return mutations, raw, deep


def run_dataset_json(data: tuple, workdir: Path) -> None:
    """Write the mutated ``dataset.json`` into a copy of the template and open it."""
    mutations, raw, deep = data
    folder = _workdir_dataset(workdir)
    if deep is not None:
        text = deep_json(*deep)
    else:
        obj = mutate_tree(_template_json("dataset"), mutations, ("sequences",))
        text = mutate_bytes(to_json(obj), raw)
    (folder / "dataset.json").write_bytes(text)
    _touch_dataset(folder)


# ---------------------------------------------------------------------------------------
# set-index
# ---------------------------------------------------------------------------------------
_DTYPES = ("int8", "<i8", ">i4", "<u2", "<f4", "<f8", ">f8", "bool", "<c16", "<U5", "|S3",
           "|V8", "<M8[s]", "|O")


def npy_bytes(descr: str, shape: Any, data: bytes, fortran: bool = False) -> bytes:
    """Return a ``.npy`` file with an arbitrary header (which may lie about the data)."""
    header = f"{{'descr': {descr!r}, 'fortran_order': {fortran!r}, 'shape': {shape!r}, }}"
    pad = 64 - (10 + len(header) + 1) % 64
    header_bytes = (header + " " * pad + "\n").encode("latin-1")
    return b"\x93NUMPY\x01\x00" + len(header_bytes).to_bytes(2, "little") + header_bytes + data


def _array_bytes(dtype: str, shape: tuple[int, ...], seed: int) -> bytes:
    buf = io.BytesIO()
    if dtype == "|O":
        arr = np.empty(shape, dtype=object)
        arr.flat[:] = [("x", seed)] * arr.size if arr.size else []
        np.save(buf, arr, allow_pickle=True)
    else:
        arr = np.random.default_rng(seed).integers(0, 5, size=shape).astype(np.dtype(dtype))
        np.save(buf, arr)
    return buf.getvalue()


_MEMBERS = ("meta", "raw_0", "raw_1", "raw_5", "demixed_raw_0", "mean_frame", "overlap",
            "roi_properties", "roi_poly_vertices", "roi_poly_lengths", "roi_mask_roi",
            "roi_mask_z", "roi_mask_y", "roi_mask_x", "roi_mask_value", "x_dff_0", "x_spikes",
            "properties", "poly_vertices", "poly_lengths", "mask_roi", "mask_z", "mask_y",
            "mask_x", "mask_value")  # fmt: skip

_shape = st.one_of(
    st.lists(st.integers(0, 6), max_size=3).map(tuple),
    st.sampled_from([(), (0,), (1, 0), (2, 3), (3, 2), (2, 2, 2)]),
)
_huge_shape = st.one_of(
    _shape,
    st.lists(st.sampled_from([0, 1, 2, 2**31, 2**40, 2**62, 10**12, -1]), min_size=1,
             max_size=3).map(tuple),
)


@st.composite
def npz_mutation(draw: st.DrawFn) -> tuple:
    """One change to a set file: a member replaced, removed, added, its header or JSON."""
    op = draw(st.sampled_from(["replace", "replace", "delete", "add", "header", "header",
                               "json", "json", "json"]))
    member = draw(st.one_of(st.integers(0, 2**8), st.sampled_from(_MEMBERS)))
    if op in ("replace", "add"):
        return (op, member, draw(st.sampled_from(_DTYPES)), draw(_shape), draw(st.integers(0, 9)))
    if op == "header":
        return (op, member, draw(st.one_of(st.none(), st.sampled_from(_DTYPES + (
            "<U999999999", "|V0", "(2,)i4", "[('a', '<i4')]")))), draw(st.one_of(
                st.none(), _huge_shape)), draw(st.booleans()))
    if op == "json":
        return (op, draw(st.lists(tree_mutation(), min_size=1, max_size=3)))
    return (op, member)


def _read_members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {m.filename: zf.read(m) for m in zf.infolist()}


def _npy_text(data: bytes) -> str | None:
    """Return the text a ``.npy`` member holds, or None when it is not one text."""
    try:
        descr, shape, _fortran, body = _parse_npy(data)
    except ValueError:
        return None
    dtype = np.dtype(descr)
    if shape != () or dtype.kind != "U" or len(body) != dtype.itemsize:
        return None
    return str(np.frombuffer(body, dtype=dtype)[0])


def _parse_npy(data: bytes) -> tuple[str, tuple, bool, bytes]:
    arr_header = io.BytesIO(data)
    np.lib.format.read_magic(arr_header)
    shape, fortran, dtype = np.lib.format.read_array_header_1_0(arr_header)
    return dtype.str, shape, fortran, data[arr_header.tell():]


def mutate_npz(path: Path, mutations: list[tuple], compress: bool) -> bytes:
    """Return the set file at ``path`` rebuilt with :func:`npz_mutation` results applied."""
    members = _read_members(path)
    for m in mutations:
        op = m[0]
        names = sorted(members)
        if op == "json":
            key = "meta.npy" if "meta.npy" in members else "properties.npy"
            text = _npy_text(members.get(key, b""))
            if text is not None:
                try:
                    obj = mutate_tree(json.loads(text), m[1],
                                      ("rois",) if key == "properties.npy" else ("extra",))
                    members[key] = _array_bytes_text(to_json(obj).decode("utf-8",
                                                                          "surrogatepass"))
                except (ValueError, UnicodeError):
                    pass
            continue
        member = m[1]
        if isinstance(member, int):
            name = names[member % len(names)] if names else "x.npy"
        else:
            name = member + ".npy"
        if op == "delete":
            members.pop(name, None)
        elif op in ("replace", "add"):
            members[name] = _array_bytes(m[2], m[3], m[4])
        elif op == "header" and name in members:
            try:
                descr, shape, fortran, body = _parse_npy(members[name])
            except ValueError:
                continue
            members[name] = npy_bytes(m[2] or descr, m[3] if m[3] is not None else shape,
                                      body, m[4])
    buf = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _array_bytes_text(text: str) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")))
    return buf.getvalue()


@st.composite
def set_index_input(draw: st.DrawFn) -> tuple:
    """(store, index mutations, set-file mutations, compressed?, byte mutations)."""
    store = draw(st.sampled_from(["rois", "signals"]))
    target = draw(st.sampled_from(["index", "npz", "npz", "both"]))
    index = draw(st.lists(tree_mutation(), min_size=1, max_size=4)) if target in (
        "index", "both") else []
    npz = draw(st.lists(npz_mutation(), min_size=1, max_size=4)) if target != "index" else []
    raw = draw(st.lists(byte_mutation(), max_size=3)) if draw(st.integers(0, 7)) == 5 else []
    return store, index, npz, draw(st.booleans()), raw


def run_set_index(data: tuple, workdir: Path) -> None:
    """Mutate one store's index and/or set file, then read the sets back."""
    store, index_mut, npz_mut, compress, raw = data
    folder = _workdir_dataset(workdir, movies=False)
    shutil.copy2(template() / "ds.sima" / "dataset.json", folder / "dataset.json")
    sub = folder / ("rois" if store == "rois" else "signals/channel_0")
    if index_mut:
        obj = mutate_tree(_template_json(store), index_mut, ("sets",))
        (sub / "index.json").write_bytes(to_json(obj))
    if npz_mut or raw:
        for path in sorted(sub.glob("set_*.npz")):
            data_bytes = mutate_npz(path, npz_mut, compress)
            path.write_bytes(mutate_bytes(data_bytes, raw))
    _touch_dataset(folder, sequences=False)  # ds.ROIs is roi_store.load_roi_sets


# ---------------------------------------------------------------------------------------
# pipeline-yaml
# ---------------------------------------------------------------------------------------
PIPELINE_SEEDS: tuple[Any, ...] = (
    {
        "version": 1,
        "name": "v1-analysis",
        "steps": [
            {"create": {"channel_names": ["GCaMP"], "format": "TIFF",
                        "options": {"num_planes": 1}}},
            {"segment": {"strategy": "stica", "params": {"components": 30}, "label": "auto"}},
            {"extract": {"label": "signals", "signal_channel": 0}},
            {"dff": {"window": 500, "percentile": 8}},
            {"infer-spikes": {"mode": "correct"}},
            {"export": {"signals": "{name}_signals.csv", "nwb": "{name}.nwb"}},
        ],
    },
    [{"import-rois": {"file": "RoiSet.zip", "label": "imported"}}, "extract",
     {"step": "dff", "baseline": "percentile"}],
    {"steps": [{"transform-import": {"reference": "../ref.sima", "method": "affine"}},
               {"extract": None}, {"export": {"averages": "{name}_{channel}.tif"}}],
     "description": "sessions"},
)

YAML_ATTACKS: tuple[str, ...] = (
    "!!python/object/apply:os.system ['touch /tmp/napari_sima_fuzz_canary']\n",
    "steps: !!python/object/new:subprocess.Popen [[touch, /tmp/x]]\n",
    "steps:\n  - !!python/name:os.system\n",
    "steps: [!!python/module:os]\n",
    "version: !!python/tuple [1]\nsteps: [extract]\n",
    "steps: !!binary aGVsbG8=\n",
    "steps: !!set {extract, dff}\n",
    "steps: [extract]\nname: !!timestamp 2001-12-14t21:59:43.10-05:00\n",
    "steps: !!omap [{a: 1}]\n",
    "a: &a {x: 1}\nb: {<<: *a}\nsteps: [extract]\n",
    "? [a, b]\n: c\nsteps: [extract]\n",
    "steps: [extract]\nsteps: [dff]\n",
    "--- {steps: [extract]}\n--- {steps: [dff]}\n",
    "steps: [extract]\nversion: 1" + "0" * 5000 + "\n",
    "steps: [{dff: {window: 1" + "0" * 5000 + "}}]\n",
    "steps: [{dff: {window: .inf, percentile: .nan}}]\n",
    "steps: [{dff: {window: 0x7fffffffffffffffffff, percentile: 1e999}}]\n",
    "steps:\n\t- extract\n",
    "\ufeffsteps: [extract]\n",
    "steps: [extract]\x00\n",
    "steps: '" + "a" * 100_000 + "'\n",
    "steps: [{export: {signals: ../../../../etc/passwd.csv}}]\n",
    "%YAML 1.1\n%TAG ! tag:example.com,2000:\n---\nsteps: !foo [extract]\n",
    "steps: *undefined\n",
    "steps: &x [*x]\n",
)


def alias_bomb(levels: int, width: int) -> str:
    """Return a "billion laughs": each level refers ``width`` times to the previous one."""
    lines = ["a0: &a0 [lol]"]
    for k in range(1, levels + 1):
        refs = ", ".join(f"*a{k - 1}" for _ in range(width))
        lines.append(f"a{k}: &a{k} [{refs}]")
    lines.append(f"steps: [{{dff: {{window: *a{levels}}}}}]")
    return "\n".join(lines) + "\n"


@st.composite
def pipeline_input(draw: st.DrawFn) -> bytes:
    """Draw the bytes of a pipeline file: mutated, hostile, nested, mis-encoded, random."""
    import yaml

    kind = draw(st.integers(0, 19))
    if kind < 9:
        obj = mutate_tree(draw(st.sampled_from(PIPELINE_SEEDS)),
                          draw(st.lists(tree_mutation(), max_size=4)))
        flow = draw(st.sampled_from([None, True, False]))
        try:
            data = yaml.safe_dump(obj, default_flow_style=flow, allow_unicode=True).encode(
                "utf-8", "surrogatepass")
        except (yaml.YAMLError, ValueError, TypeError, RecursionError):
            data = to_json(obj)  # JSON is YAML too (and flattens absurd nesting)
    elif kind < 12:
        data = draw(st.sampled_from(YAML_ATTACKS)).encode("utf-8")
    elif kind < 14:
        data = alias_bomb(draw(st.integers(1, 12)), draw(st.integers(1, 12))).encode()
    elif kind < 15:
        depth = draw(st.sampled_from([10, 100, 1000, 10_000, 100_000]))
        data = deep_json(depth, draw(st.sampled_from(["lists", "dicts", "unclosed"])))
        data = b"steps: " + data
    elif kind < 16:
        data = draw(st.sampled_from(YAML_ATTACKS + ("steps: [extract]\n",))).encode(
            draw(st.sampled_from(["utf-16", "utf-32", "latin-1", "cp1252", "utf-8"])),
            "replace")
    elif kind < 18:
        data = yaml.safe_dump(draw(json_values), allow_unicode=True).encode(
            "utf-8", "surrogatepass") if draw(st.booleans()) else draw(st.binary(max_size=256))
    else:
        data = draw(st.text(alphabet=st.sampled_from(list("[]{}:,-&*!|>'\"#?%@` \n\tab1")),
                            max_size=200)).encode()
    return mutate_bytes(data, draw(st.lists(byte_mutation(), max_size=2)))


def run_pipeline_yaml(data: bytes, workdir: Path) -> None:
    """Write the pipeline file and load it as the GUI and CLI do."""
    from napari_sima.core.pipeline import load_pipeline

    path = workdir / "pipeline.yaml"
    path.write_bytes(data)
    pipeline = load_pipeline(path)
    pipeline.to_dict()
    for step in pipeline.steps:
        _ = step.title, step.hashed_params()


TARGETS = {
    "dataset-json": Target(
        strategy=dataset_json_input(),
        run=run_dataset_json,
        description="dataset.json of a dataset with every sequence kind, mutated",
    ),
    "set-index": Target(
        strategy=set_index_input(),
        run=run_set_index,
        description="ROI / signal store index.json and set_*.npz files, mutated",
    ),
    "pipeline-yaml": Target(
        strategy=pipeline_input(),
        run=run_pipeline_yaml,
        description="pipeline YAML: mutated pipelines, tags, alias bombs, nesting, bytes",
    ),
}
