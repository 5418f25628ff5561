"""Restricted unpickling of DeepFaceLab metadata and the numpy-1.x compatible pickler.

Hostile payloads are real: one of them is shown to create its canary file under plain ``pickle.loads``,
so the refusals below are refusals of live exploits. The written pickles are checked with
``pickletools`` (every global they name) rather than by trusting the writer.
"""

from __future__ import annotations

import builtins
import functools
import io
import os
import pickle
import pickletools
import subprocess
from pathlib import Path

import numpy as np
import pytest

from torchsae.dfl.errors import DFLFormatError, UnsafePickleError
from torchsae.dfl.unpickle import compat_dumps, restricted_loads


class _Reduce:
    """Pickles as ``func(*args)``: how an attacker builds a payload."""

    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _globals(data: bytes) -> set[str]:
    """Every 'module.name' global a pickle refers to, read from its opcodes with pickletools.

    Tracks the memo so STACK_GLOBAL arguments fetched with BINGET (a repeated module name) count too.
    """
    found: set[str] = set()
    pushed: list[object] = []
    memo: dict[int, object] = {}
    for op, arg, _pos in pickletools.genops(data):
        if op.name == "GLOBAL":
            found.add(arg.replace(" ", "."))
        elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
            pushed.append(arg)
        elif op.name == "MEMOIZE":
            memo[len(memo)] = pushed[-1] if pushed else None
        elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = pushed[-1] if pushed else None
        elif op.name in ("GET", "BINGET", "LONG_BINGET"):
            pushed.append(memo.get(arg))
        elif op.name == "STACK_GLOBAL":
            found.add(f"{pushed[-2]}.{pushed[-1]}")
        else:
            pushed.append(None)
    return found


def _hostile_payloads(canary: Path) -> dict[str, bytes]:
    touch = f"touch {canary}"
    code = f"open({str(canary)!r}, 'w').close()"
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy._core.multiarray._reconstruct
    return {
        "os.system": pickle.dumps(_Reduce(os.system, touch), protocol=4),
        "subprocess.Popen": pickle.dumps(_Reduce(subprocess.Popen, ["touch", str(canary)]), protocol=4),
        "subprocess.check_call": pickle.dumps(
            _Reduce(subprocess.check_call, ["touch", str(canary)]), protocol=2
        ),
        "builtins.eval": pickle.dumps(_Reduce(builtins.eval, code), protocol=4),
        "builtins.exec": pickle.dumps(_Reduce(builtins.exec, code), protocol=0),
        "functools.partial": pickle.dumps(functools.partial(os.system, touch), protocol=4),
        "nested-reduce": pickle.dumps(
            {"landmarks": [[0.0, 1.0]], "x": _Reduce(getattr, _Reduce(builtins.eval, "os"), "system")},
            protocol=4,
        ),
        "numpy-reconstruct-with-hostile-arg": pickle.dumps(
            {"xseg_mask": _Reduce(reconstruct, np.ndarray, (0,), _Reduce(builtins.eval, code))}, protocol=4
        ),
    }


def test_hostile_payload_is_live_under_plain_pickle(tmp_path: Path) -> None:
    """Control: the os.system payload really runs under pickle.loads (DeepFaceLab's reader)."""
    canary = tmp_path / "canary_control"
    pickle.loads(_hostile_payloads(canary)["os.system"])
    assert canary.exists()


@pytest.mark.parametrize(
    "name",
    [
        "os.system",
        "subprocess.Popen",
        "subprocess.check_call",
        "builtins.eval",
        "builtins.exec",
        "functools.partial",
        "nested-reduce",
        "numpy-reconstruct-with-hostile-arg",
    ],
)
def test_hostile_payloads_refused_without_running(tmp_path: Path, name: str) -> None:
    canary = tmp_path / "canary"
    payload = _hostile_payloads(canary)[name]
    with pytest.raises(UnsafePickleError) as info:
        restricted_loads(payload, "faces/evil.jpg")
    message = str(info.value)
    assert "faces/evil.jpg" in message and "not allowed" in message
    refused = {g for g in _globals(payload) if g not in _ALLOWED_NAMES}
    assert any(g.split(".")[-1] in message for g in refused), (message, refused)
    assert not canary.exists()


_ALLOWED_NAMES = {
    "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray._reconstruct",
    "numpy.ndarray",
    "numpy.dtype",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
}


def test_persistent_ids_refused() -> None:
    class _Pers(pickle.Pickler):
        def persistent_id(self, obj):
            return "ext-1" if obj == "secret" else None

    buffer = io.BytesIO()
    _Pers(buffer, protocol=4).dump({"a": "secret"})
    with pytest.raises(UnsafePickleError, match="persistent id"):
        restricted_loads(buffer.getvalue(), "p.jpg")


@pytest.mark.parametrize("data", [b"", b"\x80\x04\x95garbage", b"not a pickle", pickle.dumps({"a": 1})[:-3]])
def test_corrupt_pickles_are_format_errors(data: bytes) -> None:
    with pytest.raises(DFLFormatError, match="corrupt") as info:
        restricted_loads(data, "c.jpg")
    assert not isinstance(info.value, UnsafePickleError)
    assert "c.jpg" in str(info.value)


def test_numpy1_and_numpy2_pickles_load() -> None:
    """Arrays as numpy 1.x (numpy.core...) and numpy 2.x (numpy._core...) write them both load."""
    value = {"m": np.arange(6, dtype=np.float64).reshape(2, 3), "s": np.float32(2.5), "r": np.array([1, 2])}
    numpy2 = pickle.dumps(value, protocol=4)
    assert b"numpy._core" in numpy2
    numpy1 = compat_dumps(value)
    for data in (numpy2, numpy1):
        out = restricted_loads(data, "x")
        np.testing.assert_array_equal(out["m"], value["m"])
        assert out["m"].dtype == np.float64 and out["s"] == np.float32(2.5) and out["s"].dtype == np.float32
        np.testing.assert_array_equal(out["r"], value["r"])


def test_compat_dumps_is_numpy1_readable() -> None:
    value = {
        "landmarks": [[1.5, 2.25]] * 68,
        "image_to_face_mat": np.eye(2, 3),
        "source_rect": np.array([1, 2, 3, 4], dtype=np.int64),
        "xseg_mask": np.frombuffer(b"\x89PNG" * 10, dtype=np.uint8),
        "seg_ie_polys": {"polys": [{"type": 1, "pts": np.ones((3, 2), np.float32)}]},
        "eyebrows_expand_mod": np.float64(1.25),
        "fortran": np.asfortranarray(np.arange(6).reshape(2, 3)),
    }
    data = compat_dumps(value)
    assert data[:2] == b"\x80\x04"
    assert b"numpy._core" not in data
    assert _globals(data) <= {
        "numpy.core.multiarray._reconstruct",
        "numpy.core.multiarray.scalar",
        "numpy.ndarray",
        "numpy.dtype",
    }
    for loaded in (pickle.loads(data), restricted_loads(data, "x")):
        assert loaded.keys() == value.keys()
        for key in ("image_to_face_mat", "source_rect", "xseg_mask", "fortran"):
            np.testing.assert_array_equal(loaded[key], value[key])
            assert loaded[key].dtype == value[key].dtype
        assert loaded["fortran"].flags.f_contiguous
        np.testing.assert_array_equal(loaded["seg_ie_polys"]["polys"][0]["pts"], np.ones((3, 2), np.float32))
        assert loaded["eyebrows_expand_mod"] == 1.25 and loaded["landmarks"] == value["landmarks"]


@pytest.mark.parametrize(
    "value", [np.ma.masked_array([1, 2], mask=[0, 1]), Path("x"), functools.partial(int)]
)
def test_compat_dumps_refuses_what_restricted_loads_would_refuse(value: object) -> None:
    with pytest.raises(TypeError, match="not allowed"):
        compat_dumps({"m": value})


def test_array_allocation_tricks_refused() -> None:
    """numpy.ndarray is only a marker for _reconstruct: a pickle cannot call ndarray(huge shape), and
    _reconstruct only builds the empty array numpy itself writes (BUILD then fills it from bytes)."""
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]
    huge_new = pickle.dumps(_Reduce(np.ndarray, (2**40,), "u1"), protocol=4)
    with pytest.raises(DFLFormatError, match="huge.jpg") as info:
        restricted_loads(huge_new, "huge.jpg")
    assert "corrupt" in str(info.value) or isinstance(info.value, UnsafePickleError)
    huge_reconstruct = pickle.dumps(_Reduce(reconstruct, np.ndarray, (2**40,), b"b"), protocol=4)
    with pytest.raises(UnsafePickleError, match=r"huge.jpg.*unexpected arguments"):
        restricted_loads(huge_reconstruct, "huge.jpg")
    subclass = pickle.dumps(_Reduce(reconstruct, np.ma.MaskedArray, (0,), b"b"), protocol=4)
    with pytest.raises(UnsafePickleError, match="numpy.ma"):
        restricted_loads(subclass, "sub.jpg")
