"""A compiled module directory on libmoert's C ABI, through ctypes.

``moe-run`` is the reference driver; this is the same contract
(docs/module-format.md: manifest, entry ABI, sharding rule) for Python callers:
:class:`Module` loads ``libmoert.so`` and a module's ``module.so``, checks the
module's runtime ABI version, creates a CPU context (over MPI when the manifest
has a mesh: one process per rank, under ``mpirun``) and calls entry points with
host pointers. numpy is the only dependency; :meth:`Module.call_ptrs` takes raw
pointers, so other array libraries (torch) pass their own buffers without a copy.

``libmoert.so`` is found in ``$MOE_BUILD_DIR/lib``, then the repository's
``build/lib``, then next to ``moe-compile`` on ``PATH`` (``../lib``).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .configs import ConfigError

__all__ = ["DTYPES", "Module", "RuntimeError_", "find_runtime_library"]

REPO_ROOT = Path(__file__).resolve().parents[2]
# Manifest dtype -> numpy dtype (the element types the bindings pass).
DTYPES = {"f32": np.float32, "i32": np.int32, "i64": np.int64}


class RuntimeError_(ConfigError):  # noqa: N801 (not the builtin RuntimeError)
    """A failure of the runtime or of an entry point, with the runtime's message."""


def find_runtime_library() -> str:
    """The path of ``libmoert.so`` (search order in the module docstring)."""
    dirs = []
    if os.environ.get("MOE_BUILD_DIR"):
        dirs.append(Path(os.environ["MOE_BUILD_DIR"]) / "lib")
    dirs.append(REPO_ROOT / "build" / "lib")
    tool = shutil.which("moe-compile")
    if tool:
        dirs.append(Path(tool).resolve().parent.parent / "lib")
    for d in dirs:
        p = d / "libmoert.so"
        if p.is_file():
            return str(p)
    raise RuntimeError_("libmoert.so: not found in $MOE_BUILD_DIR/lib, "
                        f"{REPO_ROOT}/build/lib or next to moe-compile on PATH "
                        "(build the C++ runtime first)")


class _CtxOptions(ctypes.Structure):
    _fields_ = [("device", ctypes.c_int32), ("device_index", ctypes.c_int32),
                ("comm", ctypes.c_int32), ("num_threads", ctypes.c_int32),
                ("mesh_rank", ctypes.c_int32),
                ("mesh_shape", ctypes.POINTER(ctypes.c_int64)),
                ("mesh_axes", ctypes.POINTER(ctypes.c_char_p)),
                ("timeout_s", ctypes.c_double), ("record_trace", ctypes.c_int32),
                ("net", ctypes.c_char_p)]


_RT: ctypes.CDLL | None = None
_WORLD_STARTED = False


def _runtime() -> ctypes.CDLL:
    global _RT
    if _RT is None:
        rt = ctypes.CDLL(find_runtime_library(), mode=ctypes.RTLD_GLOBAL)
        vp = ctypes.c_void_p
        rt.moert_ctx_create.argtypes = [ctypes.POINTER(_CtxOptions), ctypes.POINTER(vp)]
        rt.moert_ctx_error.restype = ctypes.c_char_p
        rt.moert_ctx_error.argtypes = [vp]
        rt.moert_ctx_status.argtypes = [vp]
        rt.moert_ctx_clear_error.argtypes = [vp]
        rt.moert_last_error.restype = ctypes.c_char_p
        rt.moert_ctx_coord.restype = ctypes.c_int64
        rt.moert_ctx_coord.argtypes = [vp, ctypes.c_int32]
        rt.moert_ctx_rank.argtypes = [vp]
        rt.moert_ctx_destroy.argtypes = [vp]
        rt.moert_ctx_stats_json.restype = ctypes.c_char_p
        rt.moert_ctx_stats_json.argtypes = [vp]
        rt.moert_ctx_reset_stats.argtypes = [vp]
        rt.moert_world_allgather.argtypes = [vp, vp, vp, ctypes.c_int64]
        rt.moert_ctx_options_size.restype = ctypes.c_size_t
        rt.moert_runtime_abi_version.restype = ctypes.c_int32
        # The mirror of moert_ctx_options must be the runtime's struct: the
        # runtime writes all of it (moert_ctx_options_init).
        if rt.moert_ctx_options_size() != ctypes.sizeof(_CtxOptions):
            raise RuntimeError_(
                f"{find_runtime_library()}: moert_ctx_options is "
                f"{rt.moert_ctx_options_size()} bytes, these bindings know "
                f"{ctypes.sizeof(_CtxOptions)}: update moe_compiler/runtime.py")
        _RT = rt
    return _RT


class Module:
    """A compiled module directory on a CPU context of libmoert (over MPI when
    the module has a mesh: one process per rank, under mpirun)."""

    _instances: list[Module] = []

    def __init__(self, moddir: str | os.PathLike[str]):
        self.dir = str(moddir)
        path = os.path.join(self.dir, "manifest.json")
        try:
            with open(path, encoding="utf-8") as f:
                self.manifest = json.load(f)
        except OSError as e:
            raise RuntimeError_(f"{path}: cannot read: {e.strerror}") from None
        except json.JSONDecodeError as e:
            raise RuntimeError_(f"{path}: not valid JSON ({e.msg})") from None
        if self.manifest.get("target", "cpu") != "cpu":
            raise RuntimeError_(f"{self.dir}: compiled for target "
                                f"'{self.manifest['target']}'; these bindings run CPU modules")
        self.entries = {e["name"]: e for e in self.manifest["entries"]}
        rt = self.rt = _runtime()
        lib = os.path.join(self.dir, self.manifest.get("library", "module.so"))
        try:
            self.lib = ctypes.CDLL(lib)
        except OSError as e:
            raise RuntimeError_(f"{lib}: cannot load: {e}") from None
        try:
            version = ctypes.c_int32.in_dll(self.lib, "moe_abi_version").value
        except ValueError:
            raise RuntimeError_(f"{lib} has no moe_abi_version: recompile the model with "
                                "this moe-compile") from None
        expected = rt.moert_runtime_abi_version()
        if version != expected:
            raise RuntimeError_(f"{lib} was built for runtime ABI version {version}, this "
                                f"runtime is version {expected}")
        opts = _CtxOptions()
        rt.moert_ctx_options_init(ctypes.byref(opts))
        mesh = self.manifest.get("mesh") or {"axes": [], "shape": []}
        self.axes, self.shape = list(mesh["axes"]), list(mesh["shape"])
        if self.axes:
            global _WORLD_STARTED
            if not _WORLD_STARTED:
                argc, argv = ctypes.c_int(0), ctypes.POINTER(ctypes.c_char_p)()
                if rt.moert_world_init(ctypes.byref(argc), ctypes.byref(argv), 1) != 0:
                    raise RuntimeError_(f"moert_world_init: {rt.moert_last_error().decode()}")
                _WORLD_STARTED = True
            self._shape = (ctypes.c_int64 * len(self.shape))(*self.shape)
            self._axes = (ctypes.c_char_p * len(self.axes))(*[a.encode() for a in self.axes])
            opts.comm = 1  # MOERT_COMM_MPI
            opts.mesh_rank = len(self.axes)
            opts.mesh_shape = self._shape
            opts.mesh_axes = self._axes
        self.ctx = ctypes.c_void_p()
        if rt.moert_ctx_create(ctypes.byref(opts), ctypes.byref(self.ctx)) != 0:
            raise RuntimeError_(f"moert_ctx_create: {rt.moert_last_error().decode()}")
        self.coords = [rt.moert_ctx_coord(self.ctx, i) for i in range(len(self.axes))]
        self.rank = rt.moert_ctx_rank(self.ctx)
        self.stats: dict[str, dict] = {}
        self._fns: dict[str, ctypes._CFuncPtr] = {}
        Module._instances.append(self)

    def __deepcopy__(self, memo: dict) -> Module:
        # A loaded library and its context are shared, not copied (copy.deepcopy of
        # a torch module that holds one).
        return self

    def close(self) -> None:
        """Destroys the context (idempotent)."""
        if self.ctx:
            self.rt.moert_ctx_destroy(self.ctx)
            self.ctx = ctypes.c_void_p()
        if self in Module._instances:
            Module._instances.remove(self)

    @classmethod
    def finalize(cls) -> None:
        """Destroys every context and ends MPI (a rank that exits without
        MPI_Finalize makes mpiexec report an abnormal termination)."""
        global _WORLD_STARTED
        for m in list(cls._instances):
            m.close()
        if _WORLD_STARTED:
            _runtime().moert_world_finalize()
            _WORLD_STARTED = False

    @property
    def ranks(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    def launcher_size(self) -> int:
        """Ranks the launcher (mpirun) started, 0 when not launched."""
        return int(self.rt.moert_world_launcher_size())

    def coords_of(self, rank: int) -> list[int]:
        """Mesh coordinates of world rank ``rank`` (row-major, last axis fastest)."""
        out = []
        for s in reversed(self.shape):
            out.append(rank % s)
            rank //= s
        return list(reversed(out))

    def index(self, spec: Mapping, shape: Sequence[int],
              coords: Sequence[int] | None = None) -> tuple[slice, ...]:
        """The slice of a global tensor of ``shape`` that the rank at ``coords``
        (default: this one) holds (docs/module-format.md, Sharding rule)."""
        coords = self.coords if coords is None else coords
        index = []
        for d, axes in enumerate(spec.get("shard", [])):
            n, i = 1, 0
            for a in axes:
                ax = self.axes.index(a)
                i, n = i * self.shape[ax] + coords[ax], n * self.shape[ax]
            size = shape[d] // n
            index.append(slice(i * size, (i + 1) * size))
        return tuple(index)

    def allgather(self, send_ptr: int, recv_ptr: int, nbytes: int) -> None:
        """Every rank's ``nbytes`` host bytes, in rank order, into ``recv_ptr``."""
        if self.rt.moert_world_allgather(self.ctx, send_ptr, recv_ptr, nbytes) != 0:
            msg = self.rt.moert_ctx_error(self.ctx).decode()
            raise RuntimeError_(f"moert_world_allgather: {msg}")

    def local(self, spec: Mapping, value: np.ndarray) -> np.ndarray:
        """This rank's slice of a global tensor (docs/module-format.md,
        Sharding rule)."""
        return value[self.index(spec, value.shape)]

    def call_ptrs(self, name: str, args: Sequence[int], results: Sequence[int]) -> None:
        """Runs entry ``name`` on raw host pointers, one per argument and result
        in manifest order (dense row-major buffers of ``local_shape`` and
        ``dtype``: the caller checks them). Raises with the runtime's message."""
        entry = self.entries.get(name)
        if entry is None:
            raise RuntimeError_(f"{self.dir}: no entry point '{name}' (has "
                                f"{', '.join(self.entries)})")
        if len(args) != len(entry["args"]) or len(results) != len(entry["results"]):
            raise RuntimeError_(f"{name}: {len(args)} arguments and {len(results)} results "
                                f"given, the entry takes {len(entry['args'])} and "
                                f"{len(entry['results'])}")
        fn = self._fns.get(name)
        if fn is None:
            fn = getattr(self.lib, entry["symbol"])
            fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
            fn.restype = None
            self._fns[name] = fn
        argv = (ctypes.c_void_p * max(len(args), 1))(*args)
        resv = (ctypes.c_void_p * max(len(results), 1))(*results)
        self.rt.moert_ctx_reset_stats(self.ctx)
        fn(self.ctx, argv, resv)
        if self.rt.moert_ctx_status(self.ctx) != 0:
            msg = self.rt.moert_ctx_error(self.ctx).decode()
            self.rt.moert_ctx_clear_error(self.ctx)
            raise RuntimeError_(f"{name}: {msg}")
        self.stats[name] = json.loads(self.rt.moert_ctx_stats_json(self.ctx).decode())

    def call(self, name: str, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs entry ``name`` with its arguments taken by name from ``tensors``
        (host memory is the device memory of a CPU context; converted to the
        argument's dtype and made contiguous only where they are not already);
        returns the results by name."""
        entry = self.entries.get(name)
        if entry is None:
            raise RuntimeError_(f"{self.dir}: no entry point '{name}'")
        args = []
        for a in entry["args"]:
            if a["name"] not in tensors:
                raise RuntimeError_(f"{name}: no tensor for argument {a['index']} "
                                    f"({a['role']} '{a['name']}')")
            v = np.require(tensors[a["name"]], dtype=DTYPES[a["dtype"]], requirements="C")
            if list(v.shape) != a["local_shape"]:
                raise RuntimeError_(f"{name}: '{a['name']}' has shape {list(v.shape)}, "
                                    f"the entry wants {a['local_shape']}")
            args.append(v)
        results = [np.zeros(r["local_shape"], dtype=DTYPES[r["dtype"]])
                   for r in entry["results"]]
        self.call_ptrs(name, [a.ctypes.data for a in args], [r.ctypes.data for r in results])
        return {r["name"]: v for r, v in zip(entry["results"], results)}

    def a2a_bytes(self, name: str, phase: str = "") -> dict[str, int]:
        """Bytes this rank sent by each kind of all-to-all in the last call of ``name``
        (``phase`` "recompute": those of the backward's recomputation only; ""
        the others)."""
        return {op: b for op, (_, b) in self.a2a(name, phase).items()}

    def a2a(self, name: str, phase: str = "") -> dict[str, tuple[int, int]]:
        """(calls, bytes sent) by each kind of all-to-all in the last call of
        ``name``, of one phase (see a2a_bytes)."""
        out = {"all_to_all": (0, 0), "all_to_all_v": (0, 0)}
        for c in self.stats.get(name, {}).get("collectives", []):
            if c["op"] in out and c.get("phase", "") == phase:
                calls, sent = out[c["op"]]
                out[c["op"]] = (calls + c["calls"], sent + c["bytes_sent"])
        return out
