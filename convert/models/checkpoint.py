"""Loads PyTorch checkpoints without running any code stored in them.

``torch.load`` unpickles arbitrary objects: a checkpoint can make it call ``os.system``, and an
official YOLOv5 checkpoint needs the YOLOv5 repository importable just to be opened. This
module reads the torch zip format itself with a restricted unpickler:

* a short allow-list of harmless callables rebuilds tensors, ``OrderedDict`` and ``set``;
* globals from modules that can run code (``os``, ``subprocess``, ``builtins.eval``...) make
  the load fail with a :class:`~convert.errors.ConvertError` before anything is called;
* every other global (``models.yolo.Model``, ``torch.nn.modules.conv.Conv2d``...) becomes an
  inert :class:`Stub` class that only records its constructor arguments and pickled state.

The model tree is then read from the stubs: the architecture dict, class names, strides and
the state dict, which :func:`convert.models.yolo.load_yolov5` loads into a model built there.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from convert.errors import ConvertError

# Modules whose globals can run code or touch the system. A checkpoint naming one is refused
# outright (rather than stubbed) so the user learns the file is hostile, not merely odd.
_DANGEROUS_MODULES = (
    "os", "posix", "nt", "sys", "subprocess", "_posixsubprocess", "shutil", "socket", "importlib", "runpy",
    "pickle", "_pickle", "marshal", "codecs", "ctypes", "pty", "signal", "webbrowser", "code", "pdb", "timeit",
    "trace", "profile", "cProfile", "types", "functools", "operator", "inspect", "multiprocessing",
    "threading", "asyncio", "tempfile", "io", "_io", "urllib", "http", "ftplib", "smtplib", "sysconfig",
    "zipimport", "pip", "setuptools", "torch.hub", "torch.serialization", "torch.jit", "torch._C", "torch.ops",
    "builtins",  # eval, exec, getattr, __import__, open...: only the data types of _ALLOWED pass
)

_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "UntypedStorage": torch.uint8,
}

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_BAD_FILE_HINT = "check the download (its size and checksum) or re-save it with torch.save."


class Stub:
    """Inert stand-in for a pickled class that is not on the allow-list.

    Calling or ``__new__``-ing it records the arguments; ``__setstate__`` records the pickled
    state (for an ``nn.Module`` the instance ``__dict__``). It has no other behaviour, so a
    pickle that "calls" it runs nothing.

    Attributes:
        args: Positional arguments it was created with.
        state: The state passed by the pickle's BUILD opcode, or None.
        items: Key/value pairs set by SETITEM(S) (dict subclasses).
        list: Values appended by APPEND(S) (list subclasses).
    """

    qualname = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args, obj.state, obj.items, obj.list = args, None, {}, []
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state

    def __setitem__(self, key, value):
        self.items[key] = value

    def append(self, value):
        self.list.append(value)

    def extend(self, values):
        self.list.extend(values)

    def __repr__(self) -> str:
        return f"<stub {self.qualname}>"


class _StorageType:
    """What ``torch.FloatStorage`` & co. unpickle to: just the dtype of a persistent record."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    """A tensor viewing ``storage`` (torch's own rebuild, minus hooks and autograd state)."""
    return storage.as_strided(tuple(size), tuple(stride), storage_offset)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    """An ``nn.Parameter`` comes back as its plain data tensor."""
    return data


def _encode_bytes(text: str, encoding: str = "utf-8") -> bytes:
    """How protocol 2 (torch.save's default) rebuilds ``bytes``: ``_codecs.encode(str, "latin1")``."""
    if encoding not in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
        raise pickle.UnpicklingError(f"unexpected bytes encoding {encoding!r}")
    return str(text).encode(encoding)


def _stub_getattr(obj: Any, name: str) -> Any:
    """``builtins.getattr`` as ultralytics checkpoints use it (``getattr(Detect, "forward")``, a
    method reference pickled with the model): allowed on stubs only, where it yields another stub,
    so nothing real is ever looked up."""
    owner = obj if isinstance(obj, type) else type(obj)
    if not (issubclass(owner, Stub) and isinstance(name, str)):
        raise ConvertError(f"refusing to load the checkpoint: it asks for getattr({type(obj).__name__}, {name!r}), "
                           "which can reach code", hint="only load checkpoints from sources you trust.")
    return type(name, (Stub,), {"qualname": f"{owner.qualname}.{name}", "__module__": owner.__module__})


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): OrderedDict,
    ("torch", "Size"): torch.Size,
    ("_codecs", "encode"): _encode_bytes,
    **{("builtins", t.__name__): t for t in (set, frozenset, slice, range, complex, bytearray)},
    ("builtins", "getattr"): _stub_getattr,
}


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves globals through the allow-list, stubs or a refusal."""

    def __init__(self, file, source: str, read_record=None):
        super().__init__(file)
        self._source = source
        self._read_record = read_record
        self._storages: dict[str, torch.Tensor] = {}
        self._stubs: dict[tuple[str, str], type[Stub]] = {}

    def find_class(self, module: str, name: str):
        # Python 2 names, as protocol-2 pickles (torch.save's default) write them: __builtin__.set...
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if any(module == m or module.startswith(m + ".") for m in _DANGEROUS_MODULES):
            raise ConvertError(
                f"refusing to load checkpoint {self._source}: it asks to call {module}.{name}, "
                "which can run arbitrary code",
                hint="only load checkpoints from sources you trust; re-save the weights as a plain "
                     "state dict (torch.save(model.state_dict(), path)) where the file is trusted.")
        key = (module, name)
        if key not in self._stubs:
            self._stubs[key] = type(name, (Stub,), {"qualname": f"{module}.{name}", "__module__": module})
        return self._stubs[key]

    def persistent_load(self, pid):
        if self._read_record is None:
            raise ConvertError(f"checkpoint {self._source} uses the legacy (pre-1.6) torch format",
                               hint="re-save it with a recent torch: torch.save(torch.load(path), path).")
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise ConvertError(f"checkpoint {self._source} holds an unsupported persistent record {pid!r:.80}",
                               hint="re-save it with torch.save from a recent torch.")
        _, storage_type, key, _location, numel = pid
        key = str(key)
        if key not in self._storages:
            self._storages[key] = self._read_storage(key, storage_type.dtype, int(numel))
        return self._storages[key]

    def _read_storage(self, key: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
        data = bytearray(self._read_record(f"data/{key}"))
        nbytes = numel * torch.empty(0, dtype=dtype).element_size()
        if len(data) < nbytes:
            raise ConvertError(f"checkpoint {self._source} is truncated: storage data/{key} has "
                               f"{len(data)} bytes, expected {nbytes}", hint=_BAD_FILE_HINT)
        if nbytes == 0:
            return torch.empty(0, dtype=dtype)
        return torch.frombuffer(data, dtype=dtype, count=numel)


def load_pickle(path: str | Path) -> Any:
    """Unpickles a torch checkpoint (zip format) or a plain pickle without running its code.

    Args:
        path: The file.

    Returns:
        The unpickled object; tensors are real CPU tensors, non-allow-listed classes are
        :class:`Stub` instances.

    Raises:
        ConvertError: The file is missing, truncated, not a pickle, or names a dangerous global.
    """
    path = Path(path)
    if not path.is_file():
        raise ConvertError(f"checkpoint {path} does not exist", hint="check the path (model.weights).")
    try:
        if zipfile.is_zipfile(path):
            return _load_zip(path)
        with path.open("rb") as f:
            obj = _SafeUnpickler(f, str(path)).load()
    except ConvertError:
        raise
    except (zipfile.BadZipFile, EOFError, pickle.UnpicklingError, ValueError, KeyError, IndexError,
            TypeError, AttributeError, RuntimeError, struct.error, UnicodeDecodeError, OSError) as e:
        raise ConvertError(f"checkpoint {path} is truncated or not a PyTorch checkpoint "
                           f"({type(e).__name__}: {e})", hint=_BAD_FILE_HINT) from None
    # The legacy format is a magic-number pickle, then more pickles and raw storages.
    if isinstance(obj, int) and obj == _LEGACY_MAGIC:
        raise ConvertError(f"checkpoint {path} uses the legacy (pre-1.6) torch format",
                           hint="re-save it with a recent torch: torch.save(torch.load(path), path).")
    return obj


def _load_zip(path: Path) -> Any:
    with zipfile.ZipFile(path) as zf:
        pkls = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pkls:
            raise ConvertError(f"checkpoint {path} is a zip file but holds no data.pkl",
                               hint="pass a file written by torch.save.")
        prefix = pkls[0][: -len("data.pkl")]
        names = set(zf.namelist())
        if f"{prefix}byteorder" in names and zf.read(f"{prefix}byteorder").strip() != b"little":
            raise ConvertError(f"checkpoint {path} was saved on a big-endian machine",
                               hint="re-save it on a little-endian (x86/ARM) machine.")

        def read_record(name: str) -> bytes:
            return zf.read(prefix + name)

        with zf.open(pkls[0]) as f:
            return _SafeUnpickler(io.BytesIO(f.read()), str(path), read_record).load()


def _state(obj: Any) -> dict:
    """The pickled ``__dict__`` of a stubbed object (state may be ``(dict, slots)``)."""
    state = obj.state if isinstance(obj, Stub) else None
    if isinstance(state, tuple) and state and isinstance(state[0], dict):
        state = state[0]
    return state if isinstance(state, dict) else {}


def module_state_dict(module: Stub) -> dict[str, torch.Tensor]:
    """Collects the state dict of a stubbed ``nn.Module`` tree, named as ``nn.Module.state_dict``.

    Args:
        module: The stub standing for the root module.

    Returns:
        Parameters and persistent buffers (``num_batches_tracked`` included), in module order.
    """
    out: dict[str, torch.Tensor] = {}

    def walk(mod: Any, prefix: str) -> None:
        st = _state(mod)
        for name, t in (st.get("_parameters") or {}).items():
            if t is not None:
                out[prefix + name] = t
        transient = st.get("_non_persistent_buffers_set") or set()
        for name, t in (st.get("_buffers") or {}).items():
            if t is not None and name not in transient:
                out[prefix + name] = t
        for name, child in (st.get("_modules") or {}).items():
            if child is not None:
                walk(child, f"{prefix}{name}.")

    walk(module, "")
    return out


def _float_state(sd: dict[str, Any], source: Path) -> dict[str, torch.Tensor]:
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ConvertError(f"checkpoint {source}: entries {bad[:3]} are not tensors",
                           hint="pass a state dict (name -> tensor) or a YOLOv5 checkpoint.")
    # Copies: the loaded tensors view the zip's buffers, and half ones become float32.
    return {k: v.to(torch.float32 if v.is_floating_point() else v.dtype, copy=True) for k, v in sd.items()}


@dataclass
class Checkpoint:
    """What a YOLOv5 checkpoint holds, read without the YOLOv5 repository.

    Attributes:
        arch: The architecture dict (the model's ``.yaml``).
        names: Class names, index = class id.
        stride: Stride of each detection level, in pixels.
        state_dict: Parameters and buffers; floating point ones converted to float32.
        nc: Number of classes (the model's own count where it records one, else the arch's).
        model_class: Qualified name of the pickled model class (``models.yolo.Model``,
            ``ultralytics.nn.tasks.PoseModel``...), read from the pickle, never imported.
        attrs: Other plain attributes of the model object (``task``, ``kpt_shape``...).
    """

    arch: dict
    names: list[str]
    stride: list[float]
    state_dict: dict[str, torch.Tensor]
    nc: int
    model_class: str = ""
    attrs: dict = field(default_factory=dict)


def load_checkpoint(path: str | Path, obj: Any = None) -> Checkpoint:
    """Reads a YOLOv5 (or YOLO-Pose) or ultralytics checkpoint: ``{"model": Model, ...}``.

    Args:
        path: The ``.pt`` file.
        obj: Its content, when the caller has already unpickled it (:func:`load_pickle`).

    Returns:
        The checkpoint's architecture, names, strides and float32 state dict.

    Raises:
        ConvertError: The file is unreadable, dangerous, or holds no YOLOv5 model.
    """
    path = Path(path)
    obj = load_pickle(path) if obj is None else obj
    model = None
    if isinstance(obj, dict):
        model = obj.get("model") if obj.get("model") is not None else obj.get("ema")
    elif isinstance(obj, Stub):
        model = obj
    st = _state(model)
    if not isinstance(st.get("yaml"), dict) or "_modules" not in st:
        raise ConvertError(f"checkpoint {path} holds no YOLOv5 model (no ckpt['model'] with a .yaml dict)",
                           hint="for a plain state dict use a spec with an explicit arch "
                                "(convert.models.checkpoint.load_state_dict_file).")
    arch = st["yaml"]
    nc = st.get("nc") if isinstance(st.get("nc"), int) else int(arch.get("nc", 0))
    names = st.get("names")
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names)]
    names = [str(n) for n in names] if isinstance(names, (list, tuple)) else [f"class{i}" for i in range(nc)]
    stride = st.get("stride")
    stride = [float(s) for s in stride.tolist()] if isinstance(stride, torch.Tensor) else []
    attrs = {k: v for k, v in st.items() if k in ("task", "kpt_shape") and isinstance(v, (str, list, tuple))}
    return Checkpoint(arch=arch, names=names, stride=stride, state_dict=_float_state(module_state_dict(model), path),
                      nc=nc, model_class=getattr(type(model), "qualname", ""), attrs=attrs)


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Reads a plain state-dict checkpoint: a dict of tensors, or ``{"model": state_dict}``.

    A ``{"model": Module}`` checkpoint is accepted too (its module tree is read).

    Args:
        path: The file written by ``torch.save``.

    Returns:
        Name to tensor, floating point tensors converted to float32.

    Raises:
        ConvertError: The file is unreadable, dangerous, or holds no state dict.
    """
    path = Path(path)
    obj = load_pickle(path)
    for key in ("model", "state_dict", "ema"):
        if isinstance(obj, dict) and key in obj and not isinstance(obj.get(key), torch.Tensor):
            obj = obj[key]
            break
    if isinstance(obj, Stub):
        obj = module_state_dict(obj)
    if not isinstance(obj, dict) or not obj:
        raise ConvertError(f"checkpoint {path} holds no state dict",
                           hint="save one with torch.save(model.state_dict(), path).")
    return _float_state(obj, path)
