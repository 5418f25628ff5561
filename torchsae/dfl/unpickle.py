"""Safe reading and numpy-1.x-compatible writing of DeepFaceLab's metadata pickles.

Why: DeepFaceLab feeds the APP15 payload of every face JPEG straight to ``pickle.loads``, so a
downloaded faceset can run arbitrary code. We unpickle with an allow-list of exactly the globals real
files use (numpy's array reconstructor, ``ndarray``, ``dtype`` and the scalar constructor); anything
else is refused *before* it is looked up, so nothing a hostile file names is ever called.

Writing has the opposite problem: numpy 2 pickles arrays as ``numpy._core.multiarray._reconstruct``,
which the numpy 1.x inside stock DeepFaceLab cannot import. :func:`compat_dumps` writes those
references under their numpy-1.x name ``numpy.core.multiarray`` (which numpy 2 still resolves).
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np

from torchsae.dfl.errors import DFLFormatError, UnsafePickleError

try:  # numpy >= 1.26 (and 2.x) has numpy._core; the numpy.core alias warns on numpy 2
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover - numpy < 1.26
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]


class _Refused(Exception):
    """Raised inside the unpickler; :func:`restricted_loads` turns it into UnsafePickleError."""


class _NdarrayToken:
    """What ``numpy.ndarray`` unpickles to: a marker, not the class, so a pickle cannot call
    ``ndarray(huge_shape)`` and make us reserve terabytes; only :func:`_reconstruct` accepts it."""

    __slots__ = ()


_NDARRAY = _NdarrayToken()


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """numpy's array reconstructor, limited to what numpy itself writes: an empty ndarray that the
    following BUILD (``ndarray.__setstate__``) fills from bytes held in the pickle."""
    if subtype is not _NDARRAY or shape != (0,):  # numpy 1.x and 2.x both write exactly (0,)
        raise _Refused(
            f"array reconstruction with unexpected arguments ({type(subtype).__name__}, {shape!r})"
        )
    return _multiarray._reconstruct(np.ndarray, shape, dtype)


_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): np.dtype,
}
for _module in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_module, "_reconstruct")] = _reconstruct
    _ALLOWED[(_module, "scalar")] = _multiarray.scalar

# How numpy-1.x DeepFaceLab must find these callables when it reads what we write.
_NUMPY1_MODULE = "numpy.core.multiarray"


class _RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only the allow-listed globals and no persistent ids."""

    def __init__(self, file: io.BytesIO, source: str) -> None:
        super().__init__(file)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self._source}: pickle refers to {module}.{name}, which is not allowed "
                "(only numpy arrays, dtypes and scalars may appear); refusing to load it"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self._source}: pickle uses a persistent id; refusing to load it")


def restricted_loads(data: bytes, source: str) -> object:
    """Unpickle ``data`` allowing only numpy array / dtype / scalar globals.

    Raises UnsafePickleError (naming ``source`` and the refused global) for anything else; a corrupt
    pickle raises DFLFormatError rather than whatever pickle happened to raise.
    """
    try:
        return _RestrictedUnpickler(io.BytesIO(data), source).load()
    except DFLFormatError:
        raise
    except _Refused as exc:
        raise UnsafePickleError(f"{source}: pickle asks for {exc}; refusing to load it") from None
    except Exception as exc:  # pickle raises many types (EOFError, UnpicklingError, ValueError...)
        raise DFLFormatError(f"{source}: pickle is corrupt ({type(exc).__name__}: {exc})") from exc


class _Numpy1Global:
    """Stands for a numpy callable that must be written as ``numpy.core.multiarray.<name>``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, *args: Any) -> Any:  # never called; pickle only requires a callable
        raise TypeError("placeholder for pickling only")


_RECONSTRUCT = _Numpy1Global("_reconstruct")
_SCALAR = _Numpy1Global("scalar")


class _CompatPickler(pickle._Pickler):  # the pure-Python pickler lets us add a dispatch entry
    """Protocol-4 pickler that names numpy's reconstructors the numpy-1.x way."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_numpy1_global(self, obj: _Numpy1Global) -> None:
        self.save(_NUMPY1_MODULE)
        self.save(obj.name)
        self.write(pickle.STACK_GLOBAL)
        self.memoize(obj)

    dispatch[_Numpy1Global] = _save_numpy1_global

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, np.ndarray) and type(obj) is np.ndarray:
            _func, args, state = obj.__reduce__()
            return (_RECONSTRUCT, args, state)
        if isinstance(obj, np.generic):
            _func, args = obj.__reduce__()[:2]
            return (_SCALAR, args)
        return NotImplemented


def compat_dumps(obj: object) -> bytes:
    """Pickle ``obj`` with protocol 4 so that numpy-1.x DeepFaceLab can read it.

    numpy arrays and scalars are written through ``numpy.core.multiarray`` names; the output never
    contains ``numpy._core``. Objects that :func:`restricted_loads` would refuse (any other global,
    e.g. a masked array or a custom class) raise TypeError instead of writing a file we cannot read.
    """
    buffer = io.BytesIO()
    _CompatPickler(buffer, protocol=4).dump(obj)
    data = buffer.getvalue()
    if b"numpy._core" in data:
        raise TypeError("compat_dumps: object holds a numpy type that cannot be written for numpy 1.x")
    try:
        restricted_loads(data, "compat_dumps")
    except UnsafePickleError as exc:
        raise TypeError(f"compat_dumps: {exc}") from None
    return data
