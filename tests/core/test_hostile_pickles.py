"""A corpus of hostile legacy pickles: nothing runs, every one gives a clear error.

The corpus is generated here (no binary files are committed): for pickle protocols 0
to 5, payloads that would run a shell command, open or create files, evaluate code,
reach interpreter internals through ``getattr`` chains or dotted names, smuggle a
disallowed object inside an allowed class or container, abuse the opcodes
(``INST``/``OBJ``/``NEWOBJ``/``NEWOBJ_EX``/``BUILD``/``STACK_GLOBAL``/``PERSID``/
``EXT*``/memo), or exhaust memory and the stack (deep nesting, "billion laughs",
huge length prefixes), plus truncated streams.  Every payload's action would create
the canary file in ``tmp_path``.

Each payload is loaded through every public entry point that reads a pickle
(:func:`read_legacy_pickle`, :class:`RestrictedUnpickler`, :func:`load_legacy_dataset`
with the payload as ``dataset.pkl`` / ``sequences.pkl`` / ``displacements.pkl``,
:meth:`ImagingDataset.load`, the ROI and signal readers and the dataset properties
built on them, ``ROIList.load(..., fmt='pkl')``, the napari reader and the command
line): the canary is never created and the error is a ``ValueError`` /
``OSError`` naming the file (``UnsafePickleError`` naming the refused global where
there is one).
"""

from __future__ import annotations

import copyreg
import functools
import io
import operator
import os
import pickle
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from _fake_sima import fake_sima_modules

from napari_sima.core import ImagingDataset, ROIList
from napari_sima.core.legacy import (
    RestrictedUnpickler,
    UnsafePickleError,
    load_legacy_dataset,
    read_legacy_pickle,
)
from napari_sima.core.roi_store import load_legacy_roi_set, load_legacy_roi_sets
from napari_sima.core.signal_store import dataset_signal_set, load_legacy_signal_sets

READ_ERRORS = (ValueError, OSError)


# ---------------------------------------------------------------------------------------
# A small pickle assembler (any opcode, any protocol)
# ---------------------------------------------------------------------------------------
class P:
    """Opcode builders for one protocol (the unpickler accepts every opcode anyway)."""

    def __init__(self, proto: int) -> None:
        self.proto = proto

    def header(self) -> bytes:
        return b"\x80" + bytes([self.proto]) if self.proto >= 2 else b""

    def s(self, text: str) -> bytes:
        b = text.encode("utf-8")
        if self.proto == 0:
            for ch, esc in (("\\", "\\u005c"), ("\0", "\\u0000"), ("\n", "\\u000a"),
                            ("\r", "\\u000d"), ("\x1a", "\\u001a")):
                text = text.replace(ch, esc)
            return b"V" + text.encode("raw-unicode-escape") + b"\n"
        if self.proto >= 4 and len(b) < 256:
            return b"\x8c" + bytes([len(b)]) + b
        return b"X" + struct.pack("<I", len(b)) + b

    def b(self, data: bytes) -> bytes:
        if self.proto >= 3:
            return b"B" + struct.pack("<I", len(data)) + data
        # protocols 0-2 write bytes as _codecs.encode(text, 'latin1') (an allowed global)
        return self.call(self.g("_codecs", "encode"), self.tup(self.s(data.decode("latin-1")),
                                                               self.s("latin1")))

    def i(self, value: int) -> bytes:
        if self.proto == 0 or not -(2**31) <= value < 2**31:
            return f"I{value}\n".encode()
        return b"J" + struct.pack("<i", value)

    def g(self, module: str, name: str) -> bytes:
        if self.proto >= 4:
            return self.s(module) + self.s(name) + b"\x93"  # STACK_GLOBAL
        return f"c{module}\n{name}\n".encode()

    def tup(self, *items: bytes) -> bytes:
        if self.proto >= 2 and len(items) <= 3:
            return b"".join(items) + [b")", b"\x85", b"\x86", b"\x87"][len(items)]
        return b"(" + b"".join(items) + b"t"

    def lst(self, *items: bytes) -> bytes:
        return b"(" + b"".join(items) + b"l"

    def dct(self, *pairs: tuple[bytes, bytes]) -> bytes:
        return b"(" + b"".join(k + v for k, v in pairs) + b"d"

    def call(self, func: bytes, args: bytes) -> bytes:
        return func + args + b"R"

    def put(self, index: int) -> bytes:
        return f"p{index}\n".encode() if self.proto == 0 else b"q" + bytes([index])

    def get(self, index: int) -> bytes:
        return f"g{index}\n".encode() if self.proto == 0 else b"h" + bytes([index])

    def done(self, body: bytes) -> bytes:
        return self.header() + body + b"."


def _real_dump(obj: Any, proto: int) -> bytes:
    return pickle.dumps(obj, protocol=proto)


class _Reduce:
    """Pickles as ``func(*args)`` (the classic ``__reduce__`` payload)."""

    def __init__(self, func: Callable[..., Any], *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple:
        return self.func, self.args


class _ReduceEx:
    """Pickles through ``__reduce_ex__`` with state, list items and dict items."""

    def __init__(self, func: Callable[..., Any], *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce_ex__(self, protocol: int) -> tuple:
        return self.func, self.args, None, None, None


class _Plain:
    """An ordinary class (pickled as a reference to this test module)."""

    def __init__(self) -> None:
        self.cmd = "touch"


def _dump_with_fake_sima(obj_factory: Callable[[dict[str, type]], Any], proto: int = 2) -> bytes:
    names = ["_Sequence_HDF5", "_Sequence_TIFF_Interleaved"]
    with fake_sima_modules({"sima.sequence": names}) as classes:
        return pickle.dumps(obj_factory(classes), protocol=proto)


# ---------------------------------------------------------------------------------------
# The corpus
# ---------------------------------------------------------------------------------------
#: (payload bytes, text the error must contain or None); keys are the test ids.
Corpus = dict[str, tuple[bytes, str | None]]

#: Extension-registry codes registered (to shell-running functions) while the EXT
#: payloads load.
EXT_CODES = {"EXT1": 0xF1, "EXT2": 0xF1F1, "EXT4": 0x7F1F1F1F}
EXT_TARGETS = {"EXT1": ("os", "system"), "EXT2": ("posix", "system"),
               "EXT4": ("subprocess", "getoutput")}


def build_corpus(canary: Path, work: Path) -> Corpus:
    """Generate every hostile payload; ``work`` holds helper files some payloads name."""
    c = str(canary)
    cmd = f"touch {c}"
    code = f"open({c!r}, 'w').close()"
    inner = work / "inner.pkl"  # a plain pickle that would run the command
    inner.write_bytes(pickle.dumps(_Reduce(os.system, cmd), 2))
    inner_bytes = inner.read_bytes()
    out: Corpus = {}

    calls: list[tuple[str, str, str, Callable[[P], bytes]]] = [
        # (id, module, name, args builder)
        ("os.system", "os", "system", lambda p: p.tup(p.s(cmd))),
        ("posix.system", "posix", "system", lambda p: p.tup(p.s(cmd))),
        ("nt.system", "nt", "system", lambda p: p.tup(p.s(cmd))),
        ("os.popen", "os", "popen", lambda p: p.tup(p.s(cmd))),
        ("os.mkdir", "os", "mkdir", lambda p: p.tup(p.s(c))),
        ("subprocess.Popen", "subprocess", "Popen",
         lambda p: p.tup(p.tup(p.s("touch"), p.s(c)))),
        ("subprocess.call", "subprocess", "call", lambda p: p.tup(p.tup(p.s("touch"), p.s(c)))),
        ("subprocess.check_output", "subprocess", "check_output",
         lambda p: p.tup(p.tup(p.s("touch"), p.s(c)))),
        ("subprocess.run", "subprocess", "run", lambda p: p.tup(p.tup(p.s("touch"), p.s(c)))),
        ("subprocess.getoutput", "subprocess", "getoutput", lambda p: p.tup(p.s(cmd))),
        ("builtins.eval", "builtins", "eval", lambda p: p.tup(p.s(code))),
        ("__builtin__.eval", "__builtin__", "eval", lambda p: p.tup(p.s(code))),
        ("builtins.exec", "builtins", "exec", lambda p: p.tup(p.s(code))),
        ("__builtin__.execfile", "__builtin__", "execfile", lambda p: p.tup(p.s(str(inner)))),
        ("builtins.open", "builtins", "open", lambda p: p.tup(p.s(c), p.s("w"))),
        ("io.open", "io", "open", lambda p: p.tup(p.s(c), p.s("w"))),
        ("_io.open", "_io", "open", lambda p: p.tup(p.s(c), p.s("w"))),
        ("codecs.open", "codecs", "open", lambda p: p.tup(p.s(c), p.s("w"))),
        ("shutil.copyfile", "shutil", "copyfile", lambda p: p.tup(p.s(os.devnull), p.s(c))),
        ("numpy.savetxt", "numpy", "savetxt", lambda p: p.tup(p.s(c), p.lst(p.i(1)))),
        ("numpy.testing.runstring", "numpy.testing._private.utils", "runstring",
         lambda p: p.tup(p.s(code), p.dct())),
        ("numpy.load-allow_pickle", "numpy", "load",
         lambda p: p.tup(p.s(str(inner)), b"N", b"\x88" if p.proto >= 2 else b"I01\n")),
        ("pickle.loads", "pickle", "loads", lambda p: p.tup(p.b(inner_bytes))),
        ("_pickle.loads", "_pickle", "loads", lambda p: p.tup(p.b(inner_bytes))),
        ("marshal.loads", "marshal", "loads", lambda p: p.tup(p.b(b"\xe3"))),
        ("importlib.import_module", "importlib", "import_module", lambda p: p.tup(p.s("os"))),
        ("ctypes.CDLL", "ctypes", "CDLL", lambda p: p.tup(p.s("libc.so.6"))),
        ("builtins.breakpoint", "builtins", "breakpoint", lambda p: p.tup()),
        ("builtins.type", "builtins", "type",
         lambda p: p.tup(p.s("X"), p.tup(), p.dct())),
        ("copyreg.__newobj__", "copyreg", "__newobj__",
         lambda p: p.tup(p.g("subprocess", "Popen"), p.tup(p.s("touch"), p.s(c)))),
        ("__main__.Evil", "__main__", "Evil", lambda p: p.tup()),
        ("scipy.io.savemat", "scipy.io", "savemat", lambda p: p.tup(p.s(c), p.dct())),
    ]
    core = {"os.system", "posix.system", "subprocess.Popen", "subprocess.call",
            "subprocess.check_output", "builtins.eval", "builtins.exec", "builtins.open",
            "numpy.testing.runstring", "numpy.load-allow_pickle", "pickle.loads"}
    for proto in range(6):
        p = P(proto)
        for ident, module, name, args in calls:
            # every protocol for the classic payloads; text GLOBAL, binary GLOBAL and
            # STACK_GLOBAL (protocols 0, 3, 4) for the others
            if ident in core or proto in (0, 3, 4):
                out[f"{ident}-p{proto}"] = (p.done(p.call(p.g(module, name), args(p))),
                                            f"{module}.{name}")

        # ---- getattr chains and dotted names -----------------------------------------
        imp = p.call(p.g("builtins", "__import__"), p.tup(p.s("os")))
        out[f"getattr-import-os-system-p{proto}"] = (p.done(p.call(
            p.call(p.g("builtins", "getattr"), p.tup(imp, p.s("system"))), p.tup(p.s(cmd)))),
            "getattr")
        out[f"getattr-on-allowed-object-subclasses-p{proto}"] = (p.done(p.call(
            p.call(p.g("builtins", "getattr"),
                   p.tup(p.g("builtins", "object"), p.s("__subclasses__"))), p.tup())),
            "builtins.getattr")
        out[f"getattr-on-allowed-function-globals-p{proto}"] = (p.done(
            p.call(p.g("builtins", "getattr"),
                   p.tup(p.g("copyreg", "_reconstructor"), p.s("__globals__")))),
            "builtins.getattr")
        out[f"getattr-py2-name-p{proto}"] = (p.done(
            p.call(p.g("__builtin__", "getattr"),
                   p.tup(p.g("numpy", "ndarray"), p.s("__reduce__")))),
            "__builtin__.getattr")
        for module, name in [] if proto not in (2, 4) else [
            ("builtins", "object.__subclasses__"),
            ("copyreg", "_reconstructor.__globals__"),
            ("numpy", "ndarray.__reduce__"),
            ("sima.sequence", "_Sequence_HDF5.__init__"),
            ("napari_sima.core.legacy", "os.system"),
            ("napari_sima.core.legacy", "RestrictedUnpickler"),
            ("scipy.sparse._lil", "np.load"),
            ("sys", "modules"),
            ("os", "system.__self__"),
        ]:
            out[f"dotted-{module}.{name}-p{proto}"] = (
                p.done(p.call(p.g(module, name), p.tup())), name)
        out[f"operator.attrgetter-p{proto}"] = (p.done(p.call(
            p.call(p.g("operator", "attrgetter"), p.tup(p.s("system"))), p.tup(imp))),
            "operator.attrgetter")
        out[f"operator.methodcaller-p{proto}"] = (p.done(p.call(
            p.call(p.g("operator", "methodcaller"), p.tup(p.s("system"), p.s(cmd))),
            p.tup(imp))), "operator.methodcaller")
        out[f"functools.partial-p{proto}"] = (p.done(p.call(
            p.call(p.g("functools", "partial"), p.tup(p.g("os", "system"), p.s(cmd))),
            p.tup())), "functools.partial")
        out[f"exec-compile-p{proto}"] = (p.done(p.call(p.g("builtins", "exec"), p.tup(p.call(
            p.g("builtins", "compile"), p.tup(p.s(code), p.s("x"), p.s("exec")))))),
            "builtins.exec")
        out[f"pathlib-touch-p{proto}"] = (p.done(p.call(p.call(
            p.g("builtins", "getattr"),
            p.tup(p.call(p.g("pathlib", "Path"), p.tup(p.s(c))), p.s("touch"))), p.tup())),
            "getattr")

        # ---- opcodes ---------------------------------------------------------------
        out[f"INST-os.system-p{proto}"] = (
            p.done(b"(" + p.s(cmd) + b"ios\nsystem\n"), "os.system")
        out[f"INST-subprocess.Popen-p{proto}"] = (
            p.done(b"(" + p.tup(p.s("touch"), p.s(c)) + b"isubprocess\nPopen\n"),
            "subprocess.Popen")
        out[f"OBJ-os.system-p{proto}"] = (
            p.done(b"(" + p.g("os", "system") + p.s(cmd) + b"o"), "os.system")
        out[f"NEWOBJ-Popen-p{proto}"] = (p.done(
            p.g("subprocess", "Popen") + p.tup(p.tup(p.s("touch"), p.s(c))) + b"\x81"),
            "subprocess.Popen")
        out[f"NEWOBJ_EX-Popen-p{proto}"] = (p.done(
            p.g("subprocess", "Popen") + p.tup(p.tup(p.s("touch"), p.s(c)))
            + p.dct((p.s("shell"), b"\x89" if proto >= 2 else b"I00\n")) + b"\x92"),
            "subprocess.Popen")
        # allowed classes through NEWOBJ / NEWOBJ_EX / OBJ with hostile arguments
        out[f"NEWOBJ-object-with-system-arg-p{proto}"] = (p.done(
            p.g("builtins", "object") + p.tup(p.g("os", "system")) + b"\x81"), "os.system")
        out[f"NEWOBJ-str-from-list-p{proto}"] = (p.done(
            p.g("builtins", "str") + p.tup(p.lst(p.i(1))) + b"\x81"), "str")
        out[f"NEWOBJ_EX-list-kwargs-p{proto}"] = (p.done(
            p.g("builtins", "list") + p.tup() + p.dct((p.s("x"), p.i(1))) + b"\x92"), None)
        out[f"NEWOBJ-sima-marker-p{proto}"] = (p.done(
            p.g("sima.sequence", "_Sequence_HDF5") + p.tup() + b"\x81"), None)
        out[f"OBJ-sima-marker-call-p{proto}"] = (p.done(
            b"(" + p.g("sima.sequence", "_Sequence_HDF5") + p.s(cmd) + b"o"), "SIMA class")
        out[f"INST-allowed-reconstructor-p{proto}"] = (p.done(
            b"(" + p.g("subprocess", "Popen") + p.g("builtins", "object") + b"N"
            + b"icopy_reg\n_reconstructor\n"), "subprocess.Popen")
        # BUILD: smuggling a disallowed object into an allowed class's state
        lil = p.call(p.g("copy_reg", "_reconstructor"),
                     p.tup(p.g("scipy.sparse.lil", "lil_matrix"), p.g("__builtin__", "object"),
                           b"N"))
        out[f"BUILD-lil-state-global-p{proto}"] = (p.done(
            lil + p.dct((p.s("rows"), p.g("os", "system"))) + b"b"), "os.system")
        out[f"BUILD-lil-state-call-p{proto}"] = (p.done(
            lil + p.dct((p.s("_shape"), p.call(p.g("posix", "system"), p.tup(p.s(cmd)))))
            + b"b"), "posix.system")
        out[f"BUILD-lil-slotstate-p{proto}"] = (p.done(
            lil + p.tup(b"N", p.dct((p.s("tocsr"), p.g("builtins", "eval")))) + b"b"),
            "builtins.eval")
        out[f"BUILD-lil-twice-p{proto}"] = (p.done(
            lil + p.dct((p.s("rows"), p.lst())) + b"b" + p.dct((p.s("rows"), p.lst())) + b"b"),
            "twice")
        out[f"BUILD-lil-class-methods-p{proto}"] = (p.done(
            p.g("scipy.sparse._lil", "lil_matrix") + p.dct((p.s("toarray"), b"N")) + b"b"),
            "lil_matrix")
        out[f"BUILD-lil-class-slotstate-p{proto}"] = (p.done(
            p.g("scipy.sparse._lil", "lil_matrix") + p.tup(b"N", p.dct((p.s("tocsr"), b"N")))
            + b"b"), "lil_matrix")
        out[f"BUILD-object-class-p{proto}"] = (p.done(
            p.g("builtins", "object") + p.tup(b"N", p.dct((p.s("__reduce__"), b"N"))) + b"b"),
            None)
        out[f"BUILD-str-class-p{proto}"] = (p.done(
            p.g("builtins", "str") + p.tup(b"N", p.dct((p.s("__new__"), b"N"))) + b"b"), "str")
        out[f"BUILD-sima-marker-p{proto}"] = (p.done(
            p.g("sima.sequence", "_Sequence_HDF5") + p.dct((p.s("name"), p.s("x"))) + b"b"),
            "LegacyClass")
        out[f"BUILD-safe-function-p{proto}"] = (p.done(
            p.g("numpy", "dtype") + p.dct((p.s("_func"), p.g("os", "system"))) + b"b"),
            "os.system")
        out[f"BUILD-safe-function-allowed-p{proto}"] = (p.done(
            p.g("numpy", "dtype") + p.tup(b"N", p.dct((p.s("_func"), p.g("builtins", "int"))))
            + b"b"), "numpy dtype")
        out[f"BUILD-plain-list-p{proto}"] = (p.done(
            p.lst() + p.dct((p.s("append"), p.g("os", "system"))) + b"b"), "os.system")
        # numpy gadgets
        ndarr = p.call(p.g("numpy.core.multiarray", "_reconstruct"),
                       p.tup(p.g("numpy", "ndarray"), p.tup(p.i(0)), p.s("b")))
        odt = p.call(p.g("numpy", "dtype"), p.tup(p.s("O8"), p.i(0), p.i(1))) + p.tup(
            p.i(3), p.s("|"), b"N", b"N", b"N", p.i(-1), p.i(-1), p.i(63)) + b"b"
        out[f"numpy-reconstruct-Popen-subtype-p{proto}"] = (p.done(p.call(
            p.g("numpy.core.multiarray", "_reconstruct"),
            p.tup(p.g("subprocess", "Popen"), p.tup(p.i(0)), p.s("b")))), "subprocess.Popen")
        out[f"numpy-reconstruct-marker-subtype-p{proto}"] = (p.done(p.call(
            p.g("numpy._core.multiarray", "_reconstruct"),
            p.tup(p.g("sima.sequence", "_Sequence_HDF5"), p.tup(p.i(0)), p.s("b")))),
            "_reconstruct")
        out[f"numpy-object-array-smuggles-call-p{proto}"] = (p.done(
            ndarr + p.tup(p.i(1), p.tup(p.i(1)), odt, b"\x89" if proto >= 2 else b"I00\n",
                          p.lst(p.call(p.g("os", "system"), p.tup(p.s(cmd))))) + b"b"),
            "os.system")
        out[f"numpy-object-array-short-list-p{proto}"] = (p.done(
            ndarr + p.tup(p.i(1), p.tup(p.i(10**6)), odt, b"N", p.lst(p.i(1))) + b"b"),
            "1000000")
        out[f"numpy-dtype-fields-smuggle-p{proto}"] = (p.done(
            p.call(p.g("numpy", "dtype"), p.tup(p.s("V8"), p.i(0), p.i(1)))
            + p.tup(p.i(3), p.s("|"), b"N", p.tup(p.s("a")),
                    p.dct((p.s("a"), p.tup(p.g("os", "system"), p.i(0)))), p.i(8), p.i(1),
                    p.i(0)) + b"b"), "os.system")
        out[f"numpy-dtype-structured-state-p{proto}"] = (p.done(
            p.call(p.g("numpy", "dtype"), p.tup(p.s("V8"), p.i(0), p.i(1)))
            + p.tup(p.i(3), p.s("|"), b"N", p.tup(p.s("a")), b"N", p.i(8), p.i(1), p.i(0))
            + b"b"), "structured")
        out[f"numpy-scalar-object-call-p{proto}"] = (p.done(p.call(
            p.g("numpy.core.multiarray", "scalar"),
            p.tup(odt, p.call(p.g("os", "system"), p.tup(p.s(cmd)))))), "os.system")
        out[f"numpy-reconstruct-huge-p{proto}"] = (p.done(p.call(
            p.g("numpy.core.multiarray", "_reconstruct"),
            p.tup(p.g("numpy", "ndarray"), p.tup(p.i(10**12)), p.s("b")))), "too large")
        out[f"numpy-frombuffer-object-p{proto}"] = (p.done(p.call(
            p.g("numpy.core.numeric", "_frombuffer"),
            p.tup(p.b(b"\0" * 8), p.s("O"), p.tup(p.i(1)), p.s("C")))), "object")
        out[f"numpy-frombuffer-hostile-order-p{proto}"] = (p.done(p.call(
            p.g("numpy._core.numeric", "_frombuffer"),
            p.tup(p.b(b"\0" * 8), p.s("i8"), p.tup(p.i(1)), p.g("os", "system")))),
            "os.system")
        # copyreg._reconstructor is allowed, but only for our stand-ins
        out[f"reconstructor-object-p{proto}"] = (p.done(p.call(
            p.g("copyreg", "_reconstructor"),
            p.tup(p.g("builtins", "object"), p.g("builtins", "object"), b"N"))),
            "_reconstructor")
        out[f"reconstructor-Popen-p{proto}"] = (p.done(p.call(
            p.g("copy_reg", "_reconstructor"),
            p.tup(p.g("subprocess", "Popen"), p.g("builtins", "object"), b"N"))),
            "subprocess.Popen")
        out[f"reconstructor-list-from-range-p{proto}"] = (p.done(p.call(
            p.g("copyreg", "_reconstructor"),
            p.tup(p.g("builtins", "list"), p.g("builtins", "list"),
                  p.call(p.g("builtins", "range"), p.tup(p.i(10**12)))))), "_reconstructor")
        # allowed builtins cannot expand iterators or format arbitrary objects
        for name in ("set", "frozenset", "list", "dict", "str", "bytes") if proto in (0, 4) else ():
            out[f"{name}-of-huge-range-p{proto}"] = (p.done(p.call(
                p.g("builtins", name),
                p.tup(p.call(p.g("builtins", "range"), p.tup(p.i(0), p.i(10**15)))))), name)
        out[f"int-of-huge-text-p{proto}"] = (p.done(p.call(
            p.g("builtins", "int"), p.tup(p.s("9" * 100_000)))), None)

        # ---- STACK_GLOBAL with names built at run time ------------------------------
        def built(text: str, p: P = p) -> bytes:
            return p.call(p.g("builtins", "str"), p.tup(p.b(text.encode())))

        out[f"STACK_GLOBAL-runtime-names-p{proto}"] = (p.done(p.call(
            built("os") + built("system") + b"\x93", p.tup(p.s(cmd)))), "os.system")
        out[f"STACK_GLOBAL-memo-names-p{proto}"] = (p.done(
            p.s("subprocess") + p.put(1) + b"0" + p.s("Popen") + p.put(2) + b"0"
            + p.get(1) + p.get(2) + b"\x93" + p.tup(p.tup(p.s("touch"), p.s(c))) + b"R"),
            "subprocess.Popen")
        out[f"STACK_GLOBAL-bytes-names-p{proto}"] = (p.done(
            p.b(b"os") + p.b(b"system") + b"\x93"), None)
        out[f"STACK_GLOBAL-unicode-trick-p{proto}"] = (p.done(
            p.s("o\u0073") + p.s("sys\u0074em") + b"\x93" + p.tup(p.s(cmd)) + b"R"),
            "os.system")

        # ---- memo tricks -------------------------------------------------------------
        out[f"memo-reuse-allowed-global-p{proto}"] = (p.done(
            p.g("copyreg", "_reconstructor") + p.put(0) + b"0"
            + p.get(0) + p.tup(p.g("subprocess", "Popen"), p.g("builtins", "object"), b"N")
            + b"R"), "subprocess.Popen")
        out[f"memo-get-missing-p{proto}"] = (p.done(p.get(7) + p.tup(p.s(cmd)) + b"R"), None)
        out[f"memo-huge-index-p{proto}"] = (p.done(b"N" + b"r" + struct.pack("<I", 2**31 - 1)),
                                           "memo")
        out[f"memo-global-twice-p{proto}"] = (p.done(
            p.g("builtins", "set") + p.put(0) + p.tup(p.lst()) + b"R0" + p.get(0)
            + p.tup(p.lst(p.g("os", "system"))) + b"R"), "os.system")

        # ---- persistent ids and the extension registry ------------------------------
        out[f"PERSID-p{proto}"] = (p.done(f"P{cmd}\n".encode()), "persistent")
        out[f"BINPERSID-p{proto}"] = (p.done(p.tup(p.s("touch"), p.s(c)) + b"Q"),
                                      "persistent")
        out[f"EXT1-p{proto}"] = (p.done(b"\x82" + bytes([EXT_CODES["EXT1"]])
                                        + p.tup(p.s(cmd)) + b"R"), "EXT1")
        out[f"EXT2-p{proto}"] = (p.done(b"\x83" + struct.pack("<H", EXT_CODES["EXT2"])
                                        + p.tup(p.s(cmd)) + b"R"), "EXT2")
        out[f"EXT4-p{proto}"] = (p.done(b"\x84" + struct.pack("<i", EXT_CODES["EXT4"])
                                        + p.tup(p.s(cmd)) + b"R"), "EXT4")
        out[f"EXT1-unregistered-p{proto}"] = (p.done(b"\x82\x07" + b"N"), "EXT1")

        # ---- pickles written by pickle itself (__reduce__, __reduce_ex__, ...) ------
        out[f"reduce-os.system-p{proto}"] = (_real_dump(_Reduce(os.system, cmd), proto),
                                             "system")
        out[f"reduce-eval-p{proto}"] = (_real_dump(_Reduce(eval, code), proto), "eval")
        out[f"reduce_ex-check_call-p{proto}"] = (_real_dump(
            _ReduceEx(subprocess.check_call, ["touch", c]), proto), "check_call")
        out[f"reduce-listitems-smuggle-p{proto}"] = (_real_dump(
            [1, {"a": (_Reduce(os.system, cmd),)}], proto), "system")
        out[f"plain-class-instance-p{proto}"] = (_real_dump(_Plain(), proto), "_Plain")
        out[f"functools.partial-real-p{proto}"] = (_real_dump(
            functools.partial(os.system, cmd), proto), "functools.partial")
        out[f"operator.methodcaller-real-p{proto}"] = (_real_dump(
            operator.methodcaller("system", cmd), proto), "operator.methodcaller")
        out[f"copyreg-extension-func-p{proto}"] = (_real_dump(copyreg.pickle, proto),
                                                   ".pickle")
        # disallowed objects nested inside legitimate-looking SIMA content
        out[f"nested-dataset-iterables-p{proto}"] = (_real_dump(
            {"channel_names": ["a"], "iterables": [[_Reduce(os.system, cmd)]]}, proto), "system")
        out[f"nested-dataset-channel-names-p{proto}"] = (_real_dump(
            {"channel_names": [_Reduce(subprocess.getoutput, cmd)], "frame_shape": (1, 2, 2, 1)},
            proto), "getoutput")
        out[f"nested-sequences-path-p{proto}"] = (_dump_with_fake_sima(
            lambda k: [{"__class__": k["_Sequence_HDF5"], "dim_order": "tyx",
                        "_abspath": _Reduce(os.system, cmd)}], proto), "system")
        out[f"nested-rois-mask-p{proto}"] = (_real_dump(
            {"set": {"rois": [{"mask": [_Reduce(os.system, cmd)], "polygons": None}],
                     "timestamp": "x"}}, proto), "system")
        out[f"nested-signals-raw-p{proto}"] = (_real_dump(
            {"set": {"raw": [_Reduce(os.popen, cmd)], "rois": [], "timestamp": "x"}}, proto),
            "popen")

    out.update(_resource_payloads())
    out.update(_truncated_payloads(out))
    return out


def _resource_payloads() -> Corpus:
    out: Corpus = {}
    for proto in (0, 2, 5):
        p = P(proto)
        n = 5_000
        out[f"deep-lists-p{proto}"] = (p.done(b"(" * n + b"]" + b"l" * n), "deep")
        out[f"deep-dicts-p{proto}"] = (p.done(
            (b"(" + p.s("k")) * n + b"}" + b"d" * n), "deep")
        out[f"deep-tuples-p{proto}"] = (p.done(b"(" * n + b")" + b"t" * n), "deep")
        out[f"deep-in-dataset-p{proto}"] = (p.done(p.dct(
            (p.s("channel_names"), b"(" * 300 + b"]" + b"l" * 300))), "deep")
        out[f"cycle-list-p{proto}"] = (p.done(b"]" + p.put(1) + p.get(1) + b"a"), "cycle")
    for proto in (2, 5):
        p = P(proto)
        laughs = b"\x80" + bytes([proto])
        body = b")" + b"r" + struct.pack("<I", 0)
        for k in range(1, 61):
            body += (b"j" + struct.pack("<I", k - 1)) * 2 + b"\x86" + b"r" + struct.pack("<I", k)
        out[f"billion-laughs-tuples-p{proto}"] = (laughs + body + b".", "laughs")
        body = b"]" + b"r" + struct.pack("<I", 0)
        for k in range(1, 61):
            body += b"(" + (b"j" + struct.pack("<I", k - 1)) * 2 + b"l" + b"r" + struct.pack(
                "<I", k)
        out[f"billion-laughs-lists-p{proto}"] = (laughs + body + b".", "laughs")
        # the bomb hidden where the loaders look: channel names, ROIs, signals, masks
        bomb = body
        last = b"j" + struct.pack("<I", 60)
        out[f"billion-laughs-channel-names-p{proto}"] = (laughs + bomb + b"0" + p.dct(
            (p.s("channel_names"), last), (p.s("iterables"), p.lst())) + b".", "laughs")
        out[f"billion-laughs-rois-p{proto}"] = (laughs + bomb + b"0" + p.dct(
            (p.s("set"), p.dct((p.s("rois"), last)))) + b".", "laughs")
        out[f"billion-laughs-signals-p{proto}"] = (laughs + bomb + b"0" + p.dct(
            (p.s("set"), p.dct((p.s("raw"), last), (p.s("rois"), p.lst())))) + b".", "laughs")
    # huge length prefixes: nothing may be allocated from them
    big = 2**62
    out["huge-BINBYTES8"] = (b"\x80\x05\x8e" + struct.pack("<Q", big) + b"abc.", None)
    out["huge-BINUNICODE8"] = (b"\x80\x05\x8d" + struct.pack("<Q", big) + b"abc.", None)
    out["huge-BYTEARRAY8"] = (b"\x80\x05\x96" + struct.pack("<Q", big) + b"abc.", None)
    out["huge-BINUNICODE"] = (b"\x80\x03X" + struct.pack("<I", 2**32 - 1) + b"abc.", None)
    out["huge-BINBYTES"] = (b"\x80\x03B" + struct.pack("<I", 2**32 - 1) + b"abc.", None)
    out["huge-LONG4"] = (b"\x80\x02\x8b" + struct.pack("<i", 2**31 - 1) + b"\x01.", None)
    out["huge-FRAME"] = (b"\x80\x04\x95" + struct.pack("<Q", big) + b"N.", None)
    out["huge-LONG_BINPUT"] = (b"\x80\x02Nr" + struct.pack("<I", 2**32 - 1) + b".", "memo")
    out["huge-memo-PUT-text"] = (b"Np99999999999\n.", "memo")
    out["huge-ndarray-state"] = (P(2).done(
        P(2).call(P(2).g("numpy.core.multiarray", "_reconstruct"),
                  P(2).tup(P(2).g("numpy", "ndarray"), P(2).tup(P(2).i(0)), P(2).s("b")))
        + P(2).tup(P(2).i(1), P(2).tup(P(2).i(10**6), P(2).i(10**6)),
                   P(2).call(P(2).g("numpy", "dtype"),
                             P(2).tup(P(2).s("f8"), P(2).i(0), P(2).i(1))), b"\x89",
                   P(2).b(b"\0" * 8)) + b"b"), "bytes for shape")
    out["out-of-band-buffer"] = (b"\x80\x05\x97.", None)
    out["empty-file"] = (b"", "empty")
    out["only-header"] = (b"\x80\x05", None)
    out["no-STOP"] = (b"\x80\x02N", None)
    out["garbage"] = (bytes(range(256)) * 4, None)
    out["unknown-opcode"] = (b"\x80\x02\xff.", None)
    out["non-utf8-global"] = (b"c\xff\xfe\nsystem\n.", None)
    out["protocol-99"] = (b"\x80\x63N.", None)
    out["text-not-pickle"] = (b"import os; os.system('touch x')\n", None)
    out["STOP-first"] = (b".", None)
    out["stack-underflow"] = (b"\x80\x02R.", None)
    out["mark-underflow"] = (b"\x80\x02t.", None)
    return out


def _truncated_payloads(corpus: Corpus) -> Corpus:
    """Some hostile payloads cut at several points (never a clean STOP)."""
    out: Corpus = {}
    for key in ("os.system-p0", "subprocess.Popen-p2", "builtins.eval-p5",
                "BUILD-lil-state-call-p3", "numpy-object-array-smuggles-call-p4",
                "STACK_GLOBAL-runtime-names-p5", "reduce-os.system-p5"):
        data = corpus[key][0]
        for frac in (0.1, 0.5, 0.9):
            cut = max(1, int(len(data) * frac))
            out[f"truncated-{key}-at{int(frac * 100)}"] = (data[:cut], None)
    return out


# ---------------------------------------------------------------------------------------
# Fixtures: a valid legacy folder (HDF5 movie) in which one file is replaced
# ---------------------------------------------------------------------------------------
#: Payloads whose refusal relies on the opcode pre-scan (memory) or the graph check.
RESOURCE_PREFIXES = ("huge-", "memo-huge", "deep-", "billion-", "cycle-", "out-of-band")

CORPUS_IDS = sorted(build_corpus(Path("/nonexistent/CANARY"), Path("/tmp")).keys())


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid legacy v1 folder: dataset.pkl, sequences.pkl, rois.pkl, signals_0.pkl."""
    root = tmp_path_factory.mktemp("legacy_template")
    movie = root / "movie.h5"
    with h5py.File(movie, "w") as f:
        f["imaging"] = np.arange(4 * 6 * 5, dtype=np.uint16).reshape(4, 6, 5)
    folder = root / "good.sima"
    folder.mkdir()
    (folder / "dataset.pkl").write_bytes(pickle.dumps(
        {"channel_names": ["green"], "frame_shape": (1, 6, 5, 1), "num_frames": 4,
         "__version__": "1.3.2"}, 2))
    (folder / "sequences.pkl").write_bytes(_dump_with_fake_sima(lambda k: [{
        "__class__": k["_Sequence_HDF5"], "dim_order": "tyx", "group": "/", "key": "imaging",
        "_abspath": str(movie), "_relpath": "../movie.h5"}]))
    roi = {"mask": None, "polygons": [[[0.0, 0.0, 0.0], [0.0, 3.0, 0.0], [3.0, 3.0, 0.0]]],
           "label": "a", "id": "1", "tags": {"t"}, "im_shape": (1, 6, 5)}
    (folder / "rois.pkl").write_bytes(pickle.dumps(
        {"auto": {"rois": [roi], "timestamp": "2019-01-01-00h00m00s"}}, 2))
    (folder / "signals_0.pkl").write_bytes(pickle.dumps(
        {"sig": {"raw": [np.ones((1, 4), np.float32)], "rois": [roi],
                 "timestamp": "2019-01-01-00h00m01s", "signal_channel": 0}}, 2))
    # version 0 with displacements.pkl (an HDF5 channel)
    v0 = root / "v0.sima"
    v0.mkdir()
    (v0 / "dataset.pkl").write_bytes(_dump_v0(movie))
    (v0 / "displacements.pkl").write_bytes(pickle.dumps([np.zeros((4, 1, 6, 2), np.int64)], 2))
    return root


def _dump_v0(movie: Path) -> bytes:
    with fake_sima_modules({"sima.iterables": ["HDF5"]}) as fake:
        return pickle.dumps({"channel_names": ["green"], "iterables": [[{
            "__class__": fake["HDF5"], "path": str(movie), "dim_order": "tyx", "key": "imaging",
            "group": "/"}]]}, 2)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("canary")


@pytest.fixture(scope="module")
def corpus(corpus_dir: Path) -> Corpus:
    """The corpus, built once (before any extension code is registered)."""
    return build_corpus(corpus_dir / "CANARY", corpus_dir)


@pytest.fixture
def canary(corpus_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(corpus_dir)  # relative paths land here too
    path = corpus_dir / "CANARY"
    assert not path.exists()
    yield path
    assert not path.exists(), "a payload ran"


@pytest.fixture
def extensions() -> Iterator[None]:
    """Register extension codes to os.system & co (as a hostile environment might)."""
    for op, code in EXT_CODES.items():
        copyreg.add_extension(*EXT_TARGETS[op], code)
    try:
        yield
    finally:
        for op, code in EXT_CODES.items():
            copyreg.remove_extension(*EXT_TARGETS[op], code)


def _folder_with(template: Path, tmp_path: Path, payload: bytes, *names: str,
                 kind: str = "good.sima") -> Path:
    """A copy of a template folder (symbolic links to its files) with ``names`` replaced."""
    folder = tmp_path / f"{names[0]}-{kind}"
    folder.mkdir()
    for src in (template / kind).iterdir():
        (folder / src.name).symlink_to(src)
    for name in names:
        (folder / name).unlink(missing_ok=True)
        (folder / name).write_bytes(payload)
    return folder


def _check(err: BaseException, path: Path | None, expect: str | None) -> None:
    assert isinstance(err, READ_ERRORS), f"{type(err).__name__}: {err}"
    msg = str(err)
    if path is not None:
        assert str(path) in msg or path.name in msg, msg
    if isinstance(err, UnsafePickleError):
        assert "nothing" in msg or "refus" in msg, msg
        if err.module is not None:
            assert f"{err.module}.{err.name}" in msg
    if expect is not None and isinstance(err, UnsafePickleError):
        assert expect.lower() in msg.lower(), msg


def _expect_error(func: Callable[[], Any], path: Path | None, expect: str | None,
                  canary: Path) -> BaseException:
    try:
        func()
    except READ_ERRORS as err:
        _check(err, path, expect)
        assert not canary.exists(), "the payload ran"
        return err
    raise AssertionError(f"no error from {func}; canary exists: {canary.exists()}")


# ---------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------
def test_corpus_size() -> None:
    corpus = build_corpus(Path("/nonexistent/CANARY"), Path("/tmp"))
    assert len(corpus) >= 550
    for proto in range(6):
        assert sum(k.endswith(f"-p{proto}") for k in corpus) >= 75


@pytest.mark.parametrize("ident", CORPUS_IDS)
def test_hostile_pickle(ident: str, corpus: Corpus, template: Path, corpus_dir: Path,
                        canary: Path, extensions: None) -> None:
    payload, expect = corpus[ident]
    tmp_path = Path(tempfile.mkdtemp(dir=corpus_dir))  # cheaper than pytest's tmp_path
    single = tmp_path / "x.pkl"
    single.write_bytes(payload)

    # 1. the file readers
    _expect_error(lambda: read_legacy_pickle(single), single, expect, canary)
    _expect_error(lambda: RestrictedUnpickler(io.BytesIO(payload), source=str(single)).load(),
                  single, expect, canary)
    if not ident.startswith(RESOURCE_PREFIXES):  # the allow-list alone, without the pre-scan
        _expect_error(lambda: RestrictedUnpickler(io.BytesIO(payload), source=str(single),
                                                  prescan=False).load(), single, None, canary)
    _expect_error(lambda: load_legacy_roi_sets(single), single, expect, canary)
    _expect_error(lambda: load_legacy_roi_set(single), single, expect, canary)
    _expect_error(lambda: ROIList.load(single, fmt="pkl"), single, expect, canary)
    _expect_error(lambda: load_legacy_signal_sets(single), single, expect, canary)

    # 2. dataset folders with the payload as each of their pickles
    bad = _folder_with(template, tmp_path, payload, "dataset.pkl")
    target = bad / "dataset.pkl"
    _expect_error(lambda: load_legacy_dataset(bad), target, expect, canary)
    _expect_error(lambda: ImagingDataset.load(bad), target, expect, canary)

    from napari_sima._reader import get_reader, read_path

    reader = get_reader(str(bad))
    assert reader is not None
    _expect_error(lambda: reader(str(bad)), target, expect, canary)
    _expect_error(lambda: read_path(str(bad)), target, expect, canary)

    bad = _folder_with(template, tmp_path, payload, "sequences.pkl")
    _expect_error(lambda: ImagingDataset.load(bad), bad / "sequences.pkl", expect, canary)

    bad = _folder_with(template, tmp_path, payload, "displacements.pkl", kind="v0.sima")
    _expect_error(lambda: ImagingDataset.load(bad), bad / "displacements.pkl", expect, canary)

    # ROIs and signals of an otherwise valid legacy folder
    bad = _folder_with(template, tmp_path, payload, "rois.pkl", "signals_0.pkl")
    ds = ImagingDataset.load(bad)
    _expect_error(lambda: ds.ROIs, bad / "rois.pkl", expect, canary)
    _expect_error(lambda: ROIList.load(bad, fmt="pkl"), bad / "rois.pkl", expect, canary)
    _expect_error(lambda: ds.signals("green"), bad / "signals_0.pkl", expect, canary)
    _expect_error(lambda: dataset_signal_set(bad, 0), bad / "signals_0.pkl", expect, canary)
    shutil.rmtree(tmp_path)


@pytest.mark.parametrize("name", ["dataset.pkl", "rois.pkl", "signals_0.pkl"])
def test_command_line_refuses_hostile_pickles(name, template, tmp_path, canary, capsys):
    from napari_sima.cli import main

    p = P(2)
    payload = p.done(p.call(p.g("os", "system"), p.tup(p.s(f"touch {canary}"))))
    bad = _folder_with(template, tmp_path, payload, name)
    code = main(["info", str(bad)])
    out = capsys.readouterr()
    assert not canary.exists()
    assert code == 1  # "a dataset or operation failed", with the refusal as the message
    assert "os.system" in out.err and name in out.err and "nothing" in out.err, out.err


def test_valid_template_loads_fully(template: Path) -> None:
    """The positive control: the same readers accept the valid folder's files."""
    ds = ImagingDataset.load(template / "good.sima")
    assert ds.read_only and ds.frame_shape == (1, 6, 5, 1) and ds.channel_names == ["green"]
    assert np.asarray(ds.sequences[0]).shape == (4, 1, 6, 5, 1)
    rois = ds.ROIs["auto"]
    assert rois[0].label == "a" and rois[0].tags == {"t"}
    sig = ds.signals(0)["sig"]
    assert sig["raw"][0].shape == (1, 4) and sig["rois"][0]["label"] == "a"
    v0 = ImagingDataset.load(template / "v0.sima")
    assert v0.frame_shape[1:3] == (6 + 0, 5 + 0)
    for name in ("dataset.pkl", "sequences.pkl", "rois.pkl", "signals_0.pkl"):
        assert read_legacy_pickle(template / "good.sima" / name) is not None


def test_sima_example_folder_still_loads(examples: Path) -> None:
    with pytest.warns(UserWarning, match="displacement"):  # SIMA's own example is odd
        ds = ImagingDataset.load(examples / "example.sima")
    assert ds.read_only
    assert ds.frame_shape == (1, 125, 247, 2)
    assert ds.num_sequences >= 1 and len(ds.sequences[0]) > 0
    frame = ds.sequences[0].frame(0)
    assert frame.shape == (1, 125, 247, 2) and np.isfinite(frame).any()
    assert ds.ROIs == {} and ds.signals(0) == {}
    from napari_sima._reader import read_path

    with pytest.warns(UserWarning, match="displacement"):
        layers = read_path(str(examples / "example.sima"))
    assert len(layers) == 2


def test_every_protocol_of_legit_content_still_loads(template: Path, tmp_path: Path) -> None:
    """The restrictions do not reject what SIMA (and pickle) legitimately write."""
    roi = {"mask": None, "polygons": [[[0.0, 0.0, 0.0], [0.0, 3.0, 0.0], [3.0, 3.0, 0.0]]],
           "label": "a", "id": "1", "tags": {"t"}, "im_shape": (1, 6, 5)}
    shared = (1, 6, 5)  # the same tuple referenced many times (memo) is fine
    for proto in range(6):
        path = tmp_path / f"rois{proto}.pkl"
        path.write_bytes(pickle.dumps({"auto": {"rois": [dict(roi, im_shape=shared)
                                                         for _ in range(50)],
                                                "timestamp": "t"}}, proto))
        assert len(load_legacy_roi_sets(path)["auto"]) == 50
        path.write_bytes(pickle.dumps({"s": {"raw": [np.arange(8.0).reshape(2, 4)],
                                             "rois": [roi, roi], "timestamp": "t",
                                             "mean_frame": np.ones((1, 6, 5)),
                                             "overlap": (np.array([1]), np.array([2]))}},
                                      proto))
        sig = load_legacy_signal_sets(path)["s"]
        assert sig["raw"][0].tolist() == np.arange(8.0).reshape(2, 4).tolist()
