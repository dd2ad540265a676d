"""A weight file never runs code (soundnet_fast/tf_npy.py, weights.detect_format): crafted pickles are
refused before anything is constructed, the genuine layouts still load, and every non-weight file ends in a
WeightFileError that names the file."""

from __future__ import annotations

import builtins
import io
import os
import pickle
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from soundnet_fast import load_pretrained
from soundnet_fast.cli import main as cli_main
from soundnet_fast.constants import SAMPLE_RATE
from soundnet_fast.tf_npy import ALLOWED_GLOBALS, WeightFileError, read
from tests.helpers.sounds import sine, write_audio
from tests.helpers.weights import N_OBJ, N_SCN, random_layers, write_pth, write_tf_npy


@pytest.fixture(scope="module")
def truth() -> dict[str, dict[str, np.ndarray]]:
    return random_layers()


class Payload:
    """Unpickling this calls ``func(*args)``: what a crafted weight file does."""

    def __init__(self, func: object, args: tuple) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple:
        return self.func, self.args


def payloads(marker: Path) -> dict[str, Payload]:
    """Three ways of creating ``marker`` on load, each through a different global."""
    return {
        "posix.system": Payload(os.system, (f"touch {marker}",)),
        "builtins.eval": Payload(builtins.eval, (f"open({str(marker)!r}, 'w').close()",)),
        "subprocess.Popen": Payload(subprocess.Popen, (["touch", str(marker)],)),
    }


def evil_npy(path: Path, payload: Payload, truth: dict) -> None:
    """A file in the genuine layout (np.save of the dict) with the payload as one layer's weights."""
    d = {name: {"weights": p["w"].transpose(2, 1, 0)[:, None], "biases": p["b"]} for name, p in truth.items()}
    d["conv1"]["weights"] = payload
    np.save(path, np.array(d, dtype=object), allow_pickle=True)


@pytest.mark.parametrize("name", ["posix.system", "builtins.eval", "subprocess.Popen"])
def test_payload_is_live_under_np_load_but_refused_here(name: str, truth: dict, tmp_path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "sound8.npy"
    evil_npy(evil, payloads(marker)[name], truth)
    # The payload is real: numpy's pickle path runs it (in a child process, then the marker is removed).
    code = f"import numpy as np; np.load({str(evil)!r}, allow_pickle=True)"
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, timeout=120)
    assert marker.exists(), f"the {name} payload did not run under np.load: the test would prove nothing"
    marker.unlink()

    with pytest.raises(WeightFileError, match=rf"sound8\.npy.*refused.*'{name}'.*Nothing from the file was run"):
        load_pretrained(evil)
    assert not marker.exists()


def test_payload_through_the_cli_is_refused(truth: dict, tmp_path, capsys) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.npy"
    evil_npy(evil, payloads(marker)["posix.system"], truth)
    wav = write_audio(str(tmp_path / "a.wav"), sine(440.0, 1.0, SAMPLE_RATE), SAMPLE_RATE)
    assert cli_main(["predict", wav, "--weights", str(evil)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"soundnet-fast predict: error: {evil}: refused") and "'posix.system'" in err
    assert cli_main(["convert", str(evil), str(tmp_path / "out.pt")]) == 2
    assert not marker.exists() and not (tmp_path / "out.pt").exists()


def test_torch_file_with_a_payload_is_refused(tmp_path) -> None:
    marker = tmp_path / "pwned"
    for legacy in (False, True):
        path = tmp_path / f"evil-{legacy}.pth"
        torch.save({"conv1.0.weight": payloads(marker)["posix.system"]}, path,
                   _use_new_zipfile_serialization=not legacy)  # fmt: skip
        with pytest.raises(WeightFileError, match=rf"evil-{legacy}\.pth.*weights_only.*nothing from the file was run"):
            load_pretrained(path)
        assert not marker.exists()


def python2_pickle(obj: object) -> bytes:
    """``obj`` pickled as Python 2 wrote the released sound8.npy: protocol 2, str and bytes as BINSTRING
    (decoded with latin1 on load), and numpy 1's module name numpy.core.multiarray."""

    class Py2Pickler(pickle._Pickler):  # the pure-Python pickler, whose dispatch table can be extended
        dispatch = dict(pickle._Pickler.dispatch)

        def save_binstring(self, s: str | bytes) -> None:
            b = s.encode("latin1") if isinstance(s, str) else s
            short = len(b) < 256
            op = pickle.SHORT_BINSTRING + bytes([len(b)]) if short else pickle.BINSTRING + len(b).to_bytes(4, "little")
            self.write(op + b)
            self.memoize(s)

        dispatch[str] = save_binstring
        dispatch[bytes] = save_binstring

    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def test_python2_protocol2_file_loads_like_the_numpy_one(truth: dict, tmp_path) -> None:
    modern = tmp_path / "sound8.npy"
    write_tf_npy(truth, str(modern))
    raw = modern.read_bytes()
    header_end = raw.index(b"\n") + 1
    arr = np.load(modern, allow_pickle=True)  # our own file: trusted, to build the Python 2 version from it
    legacy = tmp_path / "sound8_py2.npy"
    legacy.write_bytes(raw[:header_end] + python2_pickle(arr))
    assert b"numpy.core.multiarray" in legacy.read_bytes() and b"numpy._core" not in legacy.read_bytes()
    a, b = read(modern), read(legacy)
    assert a.keys() == b.keys()
    for layer in a:
        for key in a[layer]:
            np.testing.assert_array_equal(a[layer][key], b[layer][key])
    for (ka, va), (kb, vb) in zip(load_pretrained(modern).state_dict().items(),
                                  load_pretrained(legacy).state_dict().items(), strict=True):  # fmt: skip
        assert ka == kb and torch.equal(va, vb)


def npy_with_pickle(path: Path, payload: bytes) -> Path:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|O", "fortran_order": False, "shape": ()})
    path.write_bytes(header.getvalue() + payload)
    return path


def test_build_on_a_stand_in_cannot_modify_it(tmp_path) -> None:
    # GLOBAL numpy.dtype; EMPTY_DICT; 'x': 1; SETITEM; BUILD; STOP: tries to set attributes on the stand-in
    path = npy_with_pickle(tmp_path / "build.npy", b"\x80\x02cnumpy\ndtype\n}X\x01\x00\x00\x00xK\x01sb.")
    with pytest.raises(WeightFileError, match=r"build\.npy: not a readable TF-port sound8\.npy \(AttributeError"):
        read(path)
    assert ALLOWED_GLOBALS[("numpy", "dtype")]("f4") == np.dtype("f4")  # still the checking stand-in
    assert not hasattr(ALLOWED_GLOBALS[("numpy", "dtype")], "x")


def test_object_dtype_leaves_and_odd_dtypes_are_refused(tmp_path) -> None:
    path = tmp_path / "nested.npy"
    np.save(path, np.array({"conv1": {"weights": np.array([{"a": 1}], dtype=object)}}, dtype=object))
    with pytest.raises(WeightFileError, match=r"nested\.npy: conv1\.weights holds ndarray"):
        read(path)
    path = tmp_path / "void.npy"
    np.save(path, np.array({"conv1": {"weights": np.zeros(2, dtype="V4")}}, dtype=object))
    with pytest.raises(WeightFileError, match=r"void\.npy.*dtype"):
        read(path)


def test_plain_array_npy_is_not_weights(tmp_path) -> None:
    path = tmp_path / "plain.npy"
    np.save(path, np.zeros((3, 4), np.float32))
    with pytest.raises(WeightFileError, match=r"plain\.npy: holds a plain float32 array of shape \(3, 4\)"):
        load_pretrained(path)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("notes.pth", b"these are not weights\n"),  # torch's weights-only unpickler said `KeyError: 101`
        ("notes.npy", b"these are not weights\n"),
        ("empty.pt", b""),
        ("empty.npy", b""),
    ],
)
def test_non_weight_files_name_the_file_and_formats(name: str, content: bytes, tmp_path, capsys) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(WeightFileError, match=re.escape(name) + r": .*tried: TF-port sound8\.npy, PyTorch"):
        load_pretrained(path)
    assert cli_main(["convert", str(path), str(tmp_path / "out.pt")]) == 2
    assert capsys.readouterr().err.startswith(f"soundnet-fast convert: error: {path}: ")


def test_truncated_pickle_and_foreign_zip(truth: dict, tmp_path) -> None:
    path = tmp_path / "sound8.npy"
    write_tf_npy(truth, str(path))
    data = path.read_bytes()
    for cut in (10, 200, len(data) // 2, len(data) - 1):  # in the header, early and late in the pickle
        path.write_bytes(data[:cut])
        with pytest.raises(WeightFileError, match=r"sound8\.npy: "):
            load_pretrained(path)
    zpath = tmp_path / "photos.pt"
    with zipfile.ZipFile(zpath, "w") as z:
        z.writestr("a.txt", "hello")
    with pytest.raises(WeightFileError, match=r"photos\.pt: starts like a PyTorch file \(zip\).*refused"):
        load_pretrained(zpath)


def test_legacy_torch_state_dict_still_loads(truth: dict, tmp_path) -> None:
    path = tmp_path / "sound8.pth"
    write_pth(truth, str(path))
    sd = torch.load(path, weights_only=True)
    torch.save(sd, path, _use_new_zipfile_serialization=False)
    model = load_pretrained(path)
    assert (model.num_objects, model.num_scenes) == (N_OBJ, N_SCN)


def test_short_object_list_is_refused_before_numpy_fills_the_array(tmp_path) -> None:
    # numpy 2.4's ndarray.__setstate__ leaves object slots uninitialised when the list is shorter than the
    # shape (reading one segfaults); here with only the allowed globals: shape (3,), a list of one item.
    payload = (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85C\x01b\x87R"
               b"(K\x01K\x03\x85cnumpy\ndtype\nX\x02\x00\x00\x00O8\x89\x88\x87R\x89]K\x01atb.")  # fmt: skip
    path = npy_with_pickle(tmp_path / "short.npy", payload)
    with pytest.raises(WeightFileError, match=r"short\.npy.*array data does not match shape \(3,\)"):
        read(path)


def test_deeply_nested_pickle_is_refused(tmp_path) -> None:
    path = npy_with_pickle(tmp_path / "deep.npy", b"\x80\x02}" + b"K\x00" + b"\x85" * 1_000_000 + b"}s.")
    with pytest.raises(WeightFileError, match=r"deep\.npy.*nests deeper than"):
        load_pretrained(path)
    path = npy_with_pickle(tmp_path / "long.npy", b"\x80\x02]" + b"K\x00a" * 30_000 + b".")
    with pytest.raises(WeightFileError, match=r"long\.npy.*more than 20,000 pickle opcodes"):
        load_pretrained(path)


@pytest.mark.parametrize("spec", ["c", "c8", "V8", "S4", "U2", "M8", "[('a', 'O')]"])
def test_dtypes_outside_plain_numbers_are_refused(spec: str) -> None:
    with pytest.raises(pickle.UnpicklingError, match="only plain numeric and object dtypes"):
        ALLOWED_GLOBALS[("numpy", "dtype")](spec, False, True)


def test_malformed_contents_end_in_weight_file_errors(truth: dict, tmp_path) -> None:
    for name, value in (("str", "abc"), ("huge-int", 10**300), ("scalar", 1.5)):
        d = {n: {"weights": p["w"].transpose(2, 1, 0)[:, None], "biases": p["b"]} for n, p in truth.items()}
        d["conv1"]["weights"] = value
        path = tmp_path / f"{name}.npy"
        np.save(path, np.array(d, dtype=object), allow_pickle=True)
        with pytest.raises(WeightFileError, match=re.escape(f"{name}.npy: ")):
            load_pretrained(path)
