"""Hostile model files: FLAME pickles/npz, SMIRK checkpoints and HP3 safetensors made by an attacker.

Every file is generated here. Each must be refused with the pack's one-line error (naming the
file and a fix), never crash the process, never run code and never make it allocate much: the
loads run in child processes (a segfault is a failed test, not a dead pytest) that report, per
file, the outcome, the message and how far their peak RSS rose above the RSS before the load
(Linux's resettable VmHWM), with an address-space limit so that a regression fails with a
MemoryError instead of exhausting the machine.

The attacks are those reported in issue 15 (a forged object dtype, deep nesting, BUILD on an
allowed function, a 78-byte pickle asking for gigabytes, a small pickle that references one list
over and over, a 1 KB safetensors with an oversized config, NaN weights) and their relatives.
"""
from __future__ import annotations

import io
import json
import math
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from harness.flame_synthetic import make_synthetic_flame, write_synthetic_flame
from harness.tiny_hp3 import tiny_hp3_config, write_tiny_hp3
from hp3_core.errors import WeightFileError
from hp3_core.head3d import safe_pickle
from hp3_core.head3d.flame_file import load_flame
from hp3_core.head3d.safe_pickle import FlameFileError
from hp3_core.weights import META_CONFIG, load_hp3_weights

REPO = Path(__file__).resolve().parent.parent
MAX_GROWTH_MB = 300  # no file here is over 1 MB; none may make the loader grow by more than this

# ------------------------------------------------------------------------------ child process

# Loads each job's file with the pack's loader and prints one RESULT line per job. The address
# space is capped (a few GB above what the imports use) so a regression cannot swap the machine.
CHILD = r"""
import json, resource, sys, tempfile, random
from pathlib import Path

def status_mb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0

def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False

from hp3_core.errors import HP3Error
from hp3_core.head3d.flame_file import load_eyelids, load_face_vertex_ids, load_flame

def fuzz(path, seed, count):
    # Mutate the opcodes and argument heads of a good FLAME pickle; count the outcomes.
    import pickletools
    data = Path(path).read_bytes()
    spots = [pos for _, _, pos in pickletools.genops(data)]
    rng = random.Random(seed)
    out = {"loaded": 0, "refused": 0}
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "generic_model.pkl"
        for i in range(count):
            if i % 5 == 4:
                buf = data[: rng.randrange(len(data))]
            else:
                buf = bytearray(data)
                for _ in range(rng.randint(1, 3)):
                    buf[min(len(buf) - 1, rng.choice(spots) + rng.randint(0, 4))] = rng.randrange(256)
            target.write_bytes(bytes(buf))
            try:
                load_flame(target)
                out["loaded"] += 1
            except HP3Error:
                out["refused"] += 1
    return json.dumps(out)

def load(kind, path):
    if kind == "flame":
        load_flame(path)
    elif kind == "masks":
        load_face_vertex_ids(path)
    elif kind == "eyelids":
        load_eyelids([path, path])
    elif kind == "smirk":
        from hp3_core.head3d.smirk_encoder import load_smirk_encoder
        load_smirk_encoder(path)
    elif kind == "hp3":  # what Load HP3 Model does
        from hp3_core.hp3_model import HP3Model
        from hp3_core.weights import load_hp3_weights
        HP3Model.from_weights(load_hp3_weights(path))
    elif kind.startswith("fuzz"):
        _, seed, count = kind.split(":")
        return fuzz(path, int(seed), int(count))
    else:
        raise ValueError(kind)
    return ""

jobs = json.loads(Path(sys.argv[1]).read_text())
if any(kind == "smirk" for _, kind, _ in jobs):
    import hp3_core.head3d.smirk_encoder  # torch: imported before the first measurement
if any(kind == "hp3" for _, kind, _ in jobs):
    import hp3_core.hp3_model
soft, hard = resource.getrlimit(resource.RLIMIT_AS)
limit = int((status_mb("VmSize") + 3072) * 2**20)
resource.setrlimit(resource.RLIMIT_AS, (limit if hard < 0 else min(limit, hard), hard))
for label, kind, path in jobs:
    print("START " + label, flush=True)
    exact = reset_peak()
    before = status_mb("VmRSS") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    try:
        message = load(kind, path)
        outcome = "loaded"
    except HP3Error as err:
        outcome, message = "refused", str(err)
    except BaseException as err:
        outcome, message = "other", f"{type(err).__name__}: {err}"
    after = status_mb("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps({"label": label, "outcome": outcome, "message": message,
                                  "growth_mb": after - before}), flush=True)
"""


@dataclass
class ChildRun:
    """What a child reported, by job label, and how it ended."""

    results: dict[str, dict]
    returncode: int
    last_started: str | None
    stderr: str

    def result(self, label: str) -> dict:
        if label not in self.results:
            pytest.fail(f"the child process ended (exit code {self.returncode}) while loading "
                        f"'{self.last_started}' and never reported '{label}'; stderr: "
                        f"{self.stderr[-2000:]}")
        return self.results[label]


def run_child(jobs: list[tuple[str, str, Path]], workdir: Path, timeout: int = 600) -> ChildRun:
    """Load each (label, loader kind, path) in one fresh Python process."""
    spec = workdir / f"jobs_{jobs[0][0]}.json"
    spec.write_text(json.dumps([(label, kind, str(path)) for label, kind, path in jobs]))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]))
    proc = subprocess.run([sys.executable, "-c", CHILD, str(spec)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=env)
    results, last = {}, None
    for line in proc.stdout.splitlines():
        if line.startswith("START "):
            last = line[6:]
        elif line.startswith("RESULT "):
            record = json.loads(line[7:])
            results[record["label"]] = record
    return ChildRun(results, proc.returncode, last, proc.stderr)


def assert_refused(run: ChildRun, label: str, path: Path, *needles: str) -> str:
    """The job was refused with one line naming the file and a fix, within the memory budget."""
    record = run.result(label)
    msg = record["message"]
    assert record["outcome"] == "refused", f"{label}: {record['outcome']}: {msg}"
    assert "\n" not in msg and str(path) in msg and "Fix:" in msg, msg
    for needle in needles:
        assert needle in msg, f"{label}: {needle!r} not in {msg!r}"
    assert record["growth_mb"] < MAX_GROWTH_MB, f"{label} grew the process by {record['growth_mb']:.0f} MB"
    assert path.stat().st_size < 2**20, f"{label}: the hostile file itself should be small"
    return msg


# ------------------------------------------------------------------------------ pickle bytes
# Raw pickle opcodes, so that each file is exactly the attack (no pickler would write them).

NONE, FALSE, TRUE = b"N", b"\x89", b"\x88"


def u(text: str) -> bytes:
    """BINUNICODE."""
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def raw_bytes(data: bytes) -> bytes:
    """BINBYTES."""
    return b"B" + struct.pack("<I", len(data)) + data


def i(n: int) -> bytes:
    """An integer: BININT, or LONG1 beyond 32 bits."""
    if -2**31 <= n < 2**31:
        return b"J" + struct.pack("<i", n)
    return b"\x8a\x08" + n.to_bytes(8, "little", signed=True)


def glob(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def tup(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def dct(*pairs: tuple[bytes, bytes]) -> bytes:
    return b"}(" + b"".join(k + v for k, v in pairs) + b"u"


def dtype(name: str, state: bytes | None = None) -> bytes:
    state = state or tup(i(3), u("<"), NONE, NONE, NONE, i(-1), i(-1), i(0))
    return glob("numpy", "dtype") + tup(u(name), FALSE, TRUE) + b"R" + state + b"b"


def array(shape: tuple[int, ...], dtype_ops: bytes, data: bytes) -> bytes:
    """numpy's own layout: _reconstruct(ndarray, (0,), 'b') then BUILD (1, shape, dtype, F, raw)."""
    return (glob("numpy.core.multiarray", "_reconstruct") + tup(glob("numpy", "ndarray"), tup(i(0)), u("b"))
            + b"R" + tup(i(1), tup(*map(i, shape)), dtype_ops, FALSE, raw_bytes(data)) + b"b")


def obj(module: str, name: str, state: bytes) -> bytes:
    """An object made by NEWOBJ and given ``state`` by BUILD (as chumpy/scipy objects are)."""
    return glob(module, name) + b")\x81" + state + b"b"


def model(value: bytes, key: str = "v_template") -> bytes:
    """A protocol-2 pickle of ``{key: value}`` (FLAME's top level is a dict)."""
    return b"\x80\x02" + dct((u(key), value)) + b"."


def shared_list_bomb(levels: int = 3, width: int = 1000) -> bytes:
    """Lists of ``width`` references to the previous list, ``levels`` deep: a few KB that expand
    to ``width ** levels`` items (the issue's 7.6 KB pickle that reached 3.1 GB)."""
    ops = b"](" + b"K\x01" * width + b"eq\x00"
    for level in range(1, levels):
        ops += b"0](" + (b"h" + bytes([level - 1])) * width + b"eq" + bytes([level])
    return ops


def csc(shape: tuple[int, int], indptr: list[int], indices: list[int], data: list[float]) -> bytes:
    """A scipy CSC matrix as FLAME's J_regressor is pickled."""
    return obj("scipy.sparse.csc", "csc_matrix", dct(
        (u("_shape"), tup(*map(i, shape))),
        (u("data"), array((len(data),), dtype("f8"), np.asarray(data, "<f8").tobytes())),
        (u("indices"), array((len(indices),), dtype("i4"), np.asarray(indices, "<i4").tobytes())),
        (u("indptr"), array((len(indptr),), dtype("i4"), np.asarray(indptr, "<i4").tobytes()))))


# A dtype whose object field's flags are zeroed (numpy would then follow a pointer from the file).
OBJECT_FIELDS = tup(i(3), u("|"), NONE, tup(u("a")), dct((u("a"), tup(dtype("O8"), i(0)))),
                    i(8), i(1), i(0))
# The same structure with a plain field: numpy would accept it, FLAME never has it.
PLAIN_FIELDS = tup(i(3), u("|"), NONE, tup(u("a")), dct((u("a"), tup(dtype("f8"), i(0)))),
                   i(8), i(1), i(0))
POINTER = struct.pack("<Q", 0x4141414141414141)


def npy_header(shape: tuple[int, ...], descr: str) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()  # the writer puts the magic string first


def write_zip_member(archive: zipfile.ZipFile, name: str, head: bytes, zeros: int,
                     compress: int = zipfile.ZIP_STORED) -> None:
    """A zip member of ``head`` then ``zeros`` zero bytes, written in 1 MB pieces."""
    info = zipfile.ZipInfo(name)
    info.compress_type = compress
    with archive.open(info, "w", force_zip64=True) as fh:
        fh.write(head)
        chunk = bytes(2**20)
        for start in range(0, zeros, len(chunk)):
            fh.write(chunk[: min(len(chunk), zeros - start)])


@dataclass
class Hostile:
    """One hostile file: its name, the loader that reads it, how to make it, what the error says."""

    label: str
    kind: str
    make: Callable[[Path], bytes | None]
    needles: tuple[str, ...]
    filename: str = "generic_model.pkl"


def _npz_bomb(path: Path) -> None:
    n = 256 * 2**20  # 256 MB of zeros deflate to about 256 KB
    with zipfile.ZipFile(path, "w") as archive:
        write_zip_member(archive, "v_template.npy", npy_header((n,), "|u1"), n, zipfile.ZIP_DEFLATED)


def _npz_claim(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("v_template.npy", npy_header((1 << 34,), "<f8") + bytes(16))


FLAME_ATTACKS = [
    Hostile("object_dtype_pointer", "flame", lambda p: model(array((1,), dtype("O8"), POINTER)),
            ("refused numpy dtype 'O8'",)),
    Hostile("forged_void_dtype_object_field", "flame",
            lambda p: model(array((1,), dtype("V8", OBJECT_FIELDS), POINTER)), ("dtype 'V8'",)),
    Hostile("forged_float_dtype_object_field", "flame",
            lambda p: model(array((1,), dtype("f8", PLAIN_FIELDS), POINTER)), ("structured, object",)),
    Hostile("dtype_flags_set", "flame", lambda p: model(array((1,), dtype("f8", tup(
        i(3), u("<"), NONE, NONE, NONE, i(-1), i(-1), i(63))), POINTER)), ("dtype",)),
    Hostile("deep_tuple_chain", "flame", lambda p: model(b"K\x01" + b"\x85" * 200_000),
            ("nested more than 32 levels",)),
    Hostile("deep_marks", "flame", lambda p: model(b"(" * 200_000 + b"K\x01" + b"t" * 200_000),
            ("nested more than 32 levels",)),
    Hostile("deep_lists", "flame", lambda p: model(b"]" * 100_000 + b"a" * 99_999),
            ("nested more than 32 levels",)),
    Hostile("build_sets_function_defaults", "flame",
            lambda p: model(glob("_codecs", "encode") + dct((u("__defaults__"), tup(u("utf-16")))) + b"b"),
            ("(BUILD) is not allowed", "_codecs.encode")),
    Hostile("build_on_dtype_class", "flame",
            lambda p: model(glob("numpy", "dtype") + dct((u("__reduce__"), NONE)) + b"b"),
            ("(BUILD) is not allowed",)),
    Hostile("huge_shape_78_bytes", "flame",
            lambda p: model(array((1 << 31, 1 << 3), dtype("f8"), b"")), ("needs", "the file has 0")),
    Hostile("ndarray_called_with_huge_shape", "flame",
            lambda p: model(glob("numpy", "ndarray") + tup(tup(i(1 << 31), i(8))) + b"R"),
            ("calling 'numpy.ndarray' is not allowed",)),
    Hostile("reconstruct_huge_prototype", "flame", lambda p: model(
        glob("numpy.core.multiarray", "_reconstruct") + tup(glob("numpy", "ndarray"), tup(i(1 << 40)), u("b"))
        + b"R"), ("has no data",)),
    Hostile("shared_list_bomb", "flame",
            lambda p: model(obj("chumpy.ch", "Ch", dct((u("x"), shared_list_bomb()))), "shapedirs"),
            ("expands to more than",)),
    Hostile("shared_list_bomb_masks", "masks", lambda p: model(shared_list_bomb(), "face"),
            ("expands to more than",), "FLAME_masks.pkl"),
    Hostile("sparse_dense_bomb", "flame",
            lambda p: model(csc((1 << 20, 1 << 20), [0], [], []), "J_regressor"),
            ("'J_regressor'", "larger than the file")),
    Hostile("sparse_negative_index", "flame",
            lambda p: model(csc((2, 3), [0, 1, 1, 1], [-1], [1.0]), "J_regressor"), ("out of range",)),
    Hostile("wide_integer", "flame", lambda p: model(b"\x8b" + struct.pack("<i", 1000) + b"\x7f" * 1000),
            ("wider than 64 bits",)),
    Hostile("list_appended_to_itself", "flame", lambda p: model(b"]q\x00h\x00a"),
            ("changes a list after using it",)),
    Hostile("tuple_as_dict_key", "flame", lambda p: model(b"}" + tup(i(1)) + i(2) + b"s"), ("dict key",)),
    Hostile("persistent_id", "flame", lambda p: model(u("x") + b"Q"), ("persistent ids",)),
    Hostile("unknown_opcode", "flame", lambda p: b"\x80\x02\xff.", ("unknown pickle opcode",)),
    Hostile("empty_file", "flame", lambda p: b"", ("ends before its STOP",)),
    Hostile("truncated_header", "flame", lambda p: b"\x80\x02}(X\x0a\x00\x00", ("damaged",)),
    Hostile("text_as_array", "flame", lambda p: model(u("not an array")), ("not a usable FLAME model",)),
    Hostile("list_at_top", "flame", lambda p: b"\x80\x02]." , ("holds a list, not a dict",)),
    Hostile("os_system", "flame", lambda p: model(glob("os", "system") + tup(u("true")) + b"R"),
            ("'os.system'", "nothing was run")),
    Hostile("npz_deflate_bomb", "flame", _npz_bomb, ("unpacks to",), "generic_model.npz"),
    Hostile("npz_shape_claim", "flame", _npz_claim, ("claims shape",), "generic_model.npz"),
    Hostile("npz_object_array", "flame", lambda p: None, ("Python objects",), "generic_model.npz"),
    Hostile("eyelid_npy_shape_claim", "eyelids", lambda p: npy_header((1 << 34, 3), "<f8") + bytes(48),
            ("claims shape",), "l_eyelid.npy"),
]


def _write_npz_object_array(path: Path) -> None:
    buf = io.BytesIO()
    np.save(buf, np.array([object()], dtype=object), allow_pickle=True)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("v_template.npy", buf.getvalue())


def _write_attack(folder: Path, attack: Hostile) -> Path:
    path = folder / attack.label / attack.filename
    path.parent.mkdir(parents=True)
    if attack.label == "npz_object_array":
        _write_npz_object_array(path)
        return path
    data = attack.make(path)
    if data is not None:
        path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def flame_run(tmp_path_factory) -> tuple[ChildRun, dict[str, Path]]:
    folder = tmp_path_factory.mktemp("hostile_flame")
    paths = {a.label: _write_attack(folder, a) for a in FLAME_ATTACKS}
    good = write_synthetic_flame(folder / "good" / "generic_model.pkl", n_vertices=300, n_shape=10,
                                 n_expression=5, fmt="pkl", side_files=False)
    paths["good"] = good
    jobs = [("good", "flame", good)] + [(a.label, a.kind, paths[a.label]) for a in FLAME_ATTACKS]
    jobs.append(("fuzz", "fuzz:15:250", good))
    return run_child(jobs, folder), paths


@pytest.mark.parametrize("attack", FLAME_ATTACKS, ids=lambda a: a.label)
def test_hostile_flame_file_is_refused_cleanly(flame_run, attack):
    run, paths = flame_run
    assert_refused(run, attack.label, paths[attack.label], *attack.needles)


def test_child_loads_a_good_flame_file_and_survives_every_attack(flame_run):
    run, _ = flame_run
    good = run.result("good")
    assert good["outcome"] == "loaded", good["message"]
    run.result("fuzz")  # the last job: reported means no attack killed the process
    assert run.returncode == 0, run.stderr[-2000:]


def test_fuzzed_flame_pickles_load_or_are_refused(flame_run):
    run, _ = flame_run
    record = run.result("fuzz")
    assert record["outcome"] == "loaded", record["message"]  # any other exception ends the loop
    counts = json.loads(record["message"])
    assert counts["loaded"] + counts["refused"] == 250 and counts["refused"] > 100, counts
    assert record["growth_mb"] < MAX_GROWTH_MB


def test_build_cannot_change_the_reader(tmp_path):
    """The issue's BUILD on an allowed function changed it for the rest of the process."""
    policy_functions = [getattr(safe_pickle.FlamePolicy, n) for n in dir(safe_pickle.FlamePolicy)
                        if n.startswith("_") and callable(getattr(safe_pickle.FlamePolicy, n))
                        and hasattr(getattr(safe_pickle.FlamePolicy, n), "__defaults__")]
    before = ([f.__defaults__ for f in policy_functions], dict(safe_pickle._ALLOWED_GLOBALS))
    for module, name in [("_codecs", "encode"), ("copy_reg", "_reconstructor"), ("numpy", "dtype"),
                         ("numpy.core.multiarray", "_reconstruct"), ("chumpy.ch", "Ch")]:
        path = tmp_path / "generic_model.pkl"
        path.write_bytes(model(glob(module, name) + dct((u("__defaults__"), tup(u("utf-16"))),
                                                         (u("__dict__"), dct())) + b"b"))
        with pytest.raises(FlameFileError, match=r"\(BUILD\) is not allowed"):
            load_flame(path)
    assert ([f.__defaults__ for f in policy_functions], dict(safe_pickle._ALLOWED_GLOBALS)) == before
    good = write_synthetic_flame(tmp_path / "good.pkl", n_vertices=300, n_shape=10, n_expression=5,
                                 fmt="pkl", side_files=False)
    assert np.array_equal(load_flame(good).v_template,
                          make_synthetic_flame(300, 10, 5).v_template)


def test_python3_pickles_of_plain_arrays_still_load(tmp_path):
    """numpy's own pickles (protocols 2, 4 and 5, any byte order, Fortran order) are FLAME-legal."""
    a = make_synthetic_flame(300, 10, 5)
    for protocol in (2, 4, 5):
        fields = {"v_template": a.v_template.astype(">f8"), "shapedirs": np.asfortranarray(a.shapedirs),
                  "posedirs": a.posedirs.T.reshape(-1, 3, 36).astype(np.float32),
                  "J_regressor": a.J_regressor, "kintree_table": np.stack([a.parents, np.arange(5)]),
                  "weights": a.lbs_weights, "f": a.faces.astype(np.uint32), "n_shape": np.int64(10)}
        path = tmp_path / f"p{protocol}.pkl"
        path.write_bytes(pickle.dumps(fields, protocol=protocol))
        loaded = load_flame(path)
        assert np.array_equal(loaded.v_template, a.v_template) and loaded.n_shape == 10
        assert np.array_equal(loaded.shapedirs, a.shapedirs)
        assert np.allclose(loaded.posedirs, a.posedirs, atol=1e-6)


# ------------------------------------------------------------------------------ SMIRK checkpoints

def tensor_pickle(numel: int, size: int) -> bytes:
    """``{'a': tensor}`` as torch.save writes it, the storage claiming ``numel`` floats."""
    storage = tup(u("storage"), glob("torch", "FloatStorage"), u("0"), u("cpu"), i(numel)) + b"Q"
    rebuild = glob("torch._utils", "_rebuild_tensor_v2") + tup(
        storage, i(0), tup(i(size)), tup(i(1)), FALSE, glob("collections", "OrderedDict") + b")R") + b"R"
    return b"\x80\x02" + dct((u("a"), rebuild)) + b"."


def torch_zip(path: Path, pickled: bytes, record: bytes | int = b"",
              compress: int = zipfile.ZIP_STORED) -> None:
    """A checkpoint in torch.save's zip layout; ``record`` (bytes, or a count of zero bytes) is
    storage '0'."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickled)
        archive.writestr("archive/byteorder", "little")
        if isinstance(record, int):
            write_zip_member(archive, "archive/data/0", b"", record, compress)
        else:
            archive.writestr("archive/data/0", record)
        archive.writestr("archive/version", "3\n")


def _legacy(path: Path) -> None:
    torch.save({"smirk_encoder.x": torch.zeros(4)}, path, _use_new_zipfile_serialization=False)


def _truncated_checkpoint(path: Path) -> None:
    buf = io.BytesIO()
    torch.save({"smirk_encoder.x": torch.zeros(64)}, buf)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])


SMIRK_ATTACKS = [
    Hostile("deflate_bomb", "smirk",
            lambda p: torch_zip(p, tensor_pickle(2**27, 2**27), 2**29, zipfile.ZIP_DEFLATED),
            ("compressed records",), "SMIRK_em1.pt"),
    Hostile("deep_tuple_dict_key", "smirk",
            lambda p: torch_zip(p, b"\x80\x02}K\x01" + b"\x85" * 200_000 + b"K\x01s."),
            ("nested more than 32 levels",), "SMIRK_em1.pt"),
    Hostile("storage_larger_than_record", "smirk", lambda p: torch_zip(p, tensor_pickle(2**30, 4), bytes(16)),
            ("claims 4294967296 bytes",), "SMIRK_em1.pt"),
    Hostile("shared_list_bomb", "smirk", lambda p: torch_zip(p, b"\x80\x02" + shared_list_bomb() + b"."),
            ("expands to more than",), "SMIRK_em1.pt"),
    Hostile("legacy_format", "smirk", _legacy, ("not a PyTorch zip checkpoint",), "SMIRK_em1.pt"),
    Hostile("truncated", "smirk", _truncated_checkpoint, ("SMIRK_em1.pt",), "SMIRK_em1.pt"),
]


@pytest.fixture(scope="module")
def smirk_run(tmp_path_factory) -> tuple[ChildRun, dict[str, Path]]:
    folder = tmp_path_factory.mktemp("hostile_smirk")
    paths = {a.label: _write_attack(folder, a) for a in SMIRK_ATTACKS}
    warmup = folder / "warmup.pt"  # passes every check, then is refused as not SMIRK's
    torch.save({"model.conv.weight": torch.zeros(2)}, warmup)
    paths["warmup"] = warmup
    jobs = [("warmup", "smirk", warmup)] + [(a.label, a.kind, paths[a.label]) for a in SMIRK_ATTACKS]
    return run_child(jobs, folder), paths


def test_smirk_child_reaches_torch_load(smirk_run):
    run, paths = smirk_run
    assert_refused(run, "warmup", paths["warmup"], "no SMIRK encoder tensors")


@pytest.mark.parametrize("attack", SMIRK_ATTACKS, ids=lambda a: a.label)
def test_hostile_smirk_checkpoint_is_refused_cleanly(smirk_run, attack):
    run, paths = smirk_run
    assert_refused(run, attack.label, paths[attack.label], "SMIRK encoder weights", *attack.needles)


# ------------------------------------------------------------------------------ HP3 safetensors

def rewrite(src: Path, dst: Path, header_edit: Callable[[dict], None] | None = None,
            **metadata: str) -> Path:
    """``src`` with its metadata updated and/or its raw JSON header edited (data unchanged)."""
    data = src.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    header["__metadata__"].update(metadata)
    if header_edit:
        header_edit(header)
    raw = json.dumps(header).encode()
    dst.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])
    return dst


def config_with(**changes) -> str:
    """The tiny SD1.5 config's JSON with ``section.field`` (or top-level field) values replaced."""
    cfg = json.loads(tiny_hp3_config().to_json())
    for name, value in changes.items():
        section, _, key = name.partition("__")
        if key:
            cfg[section][key] = value
        else:
            cfg[section] = value
    return json.dumps(cfg)


def oversized_config() -> str:
    """In range, but a model of about 60 GB of float32 (a ControlNet of width 4096)."""
    return config_with(encoder__width=4096, encoder__num_layers=16, encoder__num_tokens=256,
                       controller__cross_attention_dim=4096,
                       controller__block_out_channels=[4096] * 4, controller__layers_per_block=4,
                       controller__transformer_layers_per_block=[4] * 4)


def _tiny_file_with_config(path: Path, config: str) -> None:
    save_file({"encoder.queries": torch.zeros(2)}, str(path),
              metadata={"hp3.format_version": "1", "hp3.family": "sd15", META_CONFIG: config})


HP3_ATTACKS = [
    Hostile("oversized_config_1kb", "hp3", lambda p: _tiny_file_with_config(p, oversized_config()),
            ("missing key(s)",), "hp3.safetensors"),
    Hostile("out_of_range_config", "hp3",
            lambda p: _tiny_file_with_config(p, config_with(encoder__width=10**6,
                                                            controller__cross_attention_dim=10**6)),
            ("encoder.width",), "hp3.safetensors"),
]


@pytest.fixture(scope="module")
def good_hp3(tmp_path_factory) -> Path:
    return write_tiny_hp3(tmp_path_factory.mktemp("good_hp3") / "good.safetensors", "sd15", seed=1)


@pytest.fixture(scope="module")
def hp3_run(tmp_path_factory, good_hp3) -> tuple[ChildRun, dict[str, Path]]:
    folder = tmp_path_factory.mktemp("hostile_hp3")
    paths = {a.label: _write_attack(folder, a) for a in HP3_ATTACKS}
    paths["warmup"] = good_hp3
    jobs = [("warmup", "hp3", good_hp3)] + [(a.label, a.kind, paths[a.label]) for a in HP3_ATTACKS]
    return run_child(jobs, folder), paths


@pytest.mark.parametrize("attack", HP3_ATTACKS, ids=lambda a: a.label)
def test_hostile_hp3_config_is_refused_before_building(hp3_run, attack):
    run, paths = hp3_run
    assert run.result("warmup")["outcome"] == "loaded", run.result("warmup")["message"]
    assert_refused(run, attack.label, paths[attack.label], "HP3 weights", *attack.needles)


def _set_entry(key_part: str, field: str, value) -> Callable[[dict], None]:
    def edit(header: dict) -> None:
        key = next(k for k in header if key_part in k)
        header[key][field] = value
    return edit


def _first_two_overlap(header: dict) -> None:
    a, b = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])[:2]
    if header[a]["shape"] == header[b]["shape"] and header[a]["dtype"] == header[b]["dtype"]:
        header[b]["data_offsets"] = header[a]["data_offsets"]
    else:
        header[a]["data_offsets"] = [header[a]["data_offsets"][0] + 4, header[a]["data_offsets"][1] + 4]


@pytest.mark.parametrize("edit, needle", [
    (lambda h: h.update(__metadata__=["not", "a", "map"]), "__metadata__ is not a map"),
    (lambda h: h["__metadata__"].update({"hp3.format_version": 1}), "__metadata__ is not a map"),
    (_set_entry("queries", "shape", None), "shape that is not a list"),
    (_set_entry("queries", "shape", [2.5, 4]), "shape that is not a list"),
    (_set_entry("queries", "shape", [-4, -32]), "shape that is not a list"),
    (_set_entry("queries", "shape", [True, 128]), "shape that is not a list"),
    (_set_entry("queries", "shape", "4x32"), "shape that is not a list"),
    (_set_entry("queries", "data_offsets", [512, 0]), "data_offsets that are not"),
    (_set_entry("queries", "data_offsets", [0]), "data_offsets that are not"),
    (_set_entry("queries", "data_offsets", None), "data_offsets that are not"),
    (_set_entry("queries", "dtype", "F128"), "unknown dtype"),
    (_set_entry("queries", "extra", 1), "malformed safetensors entry"),
    (lambda h: h.update({"encoder.queries": [1, 2, 3]}), "malformed safetensors entry"),
    (_first_two_overlap, "overlap or leave gaps"),
    (lambda h: h.update({"deep": [[[[[1]]]]]}), "nests deeper"),
])
def test_safetensors_header_types_are_checked(good_hp3, tmp_path, edit, needle):
    path = rewrite(good_hp3, tmp_path / "bad.safetensors", edit)
    with pytest.raises(WeightFileError) as err:
        load_hp3_weights(path)
    msg = str(err.value)
    assert needle in msg and str(path) in msg and "Fix:" in msg and "\n" not in msg, msg


@pytest.mark.parametrize("header, needle", [
    (b"[" * 200_000 + b"]" * 200_000, "not JSON"),
    (b'{"a": ' + b"[" * 200_000 + b"]" * 200_000 + b"}", "not JSON"),
    (b"{" + b" " * 50, "not JSON"),
])
def test_absurd_safetensors_headers(tmp_path, header, needle):
    path = tmp_path / "odd.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(WeightFileError, match=needle) as err:
        load_hp3_weights(path)
    assert "\n" not in str(err.value)


def test_header_length_beyond_the_file_reads_nothing_more(tmp_path):
    path = tmp_path / "short.safetensors"
    path.write_bytes(struct.pack("<Q", 99_000_000) + b'{"a": 1}')
    with pytest.raises(WeightFileError, match="truncated: its header alone needs 99000008 bytes"):
        load_hp3_weights(path)


@pytest.mark.parametrize("config, needle", [
    (config_with(encoder__num_heads=0), "encoder.num_heads is 0"),
    (config_with(controller__norm_num_groups=0), "controller.norm_num_groups is 0"),
    (config_with(encoder__width="32"), "encoder.width is 32; it must be an integer"),
    (config_with(encoder__num_tokens=4.0), "encoder.num_tokens"),
    (config_with(encoder__num_layers=True), "encoder.num_layers"),
    (config_with(controller__block_out_channels=None), "controller.block_out_channels must be a list"),
    (config_with(controller__block_out_channels=[32] * 40), "controller.block_out_channels must be a list"),
    (config_with(controller__down_block_types="DownBlock2D"), "down_block_types"),
    (config_with(controller=[1, 2]), "'controller' is a list"),
    (config_with(id_loss_weight=float("nan")), "id_loss_weight must be a finite number"),
    (config_with(notes={"a": {"b": 1}}), "notes must be a map of strings"),
    (config_with(controller__down_block_types=["NoSuchBlock2D"] * 4), "does not describe a model"),
    ('{"a": ' + "[" * 40_000 + "]" * 40_000 + "}", "not valid JSON"),
    ('{"a": [[[[[1]]]]]}', "nests deeper"),
    (json.dumps({"notes": {"x": "y" * 200_000}}), "characters of JSON"),
    ("[]", "not a JSON object"),
    (config_with(encoder__num_tokens=5), "shape mismatch for 'token_decoder.queries'"),
])
def test_config_is_checked_before_any_model_is_built(good_hp3, tmp_path, config, needle):
    path = rewrite(good_hp3, tmp_path / "cfg.safetensors", **{META_CONFIG: config})
    with pytest.raises(WeightFileError) as err:
        load_hp3_weights(path)
    msg = str(err.value)
    assert needle in msg and str(path) in msg and "Fix:" in msg and "\n" not in msg, msg


@pytest.mark.parametrize("dtype_, value", [(torch.float32, float("nan")), (torch.bfloat16, float("inf")),
                                           (torch.float16, float("-inf"))])
def test_non_finite_weights_are_refused_by_name(good_hp3, tmp_path, dtype_, value):
    with safe_open(str(good_hp3), "pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    key = sorted(k for k in tensors if k.startswith("connector."))[0]
    tensors[key] = tensors[key].to(dtype_)
    tensors[key].view(-1)[tensors[key].numel() // 2] = value
    path = tmp_path / "nan.safetensors"
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(WeightFileError) as err:
        load_hp3_weights(path)
    msg = str(err.value)
    assert f"tensor '{key}' holds NaN or infinite values" in msg and "earlier checkpoint" in msg, msg
    tensors[key].view(-1)[tensors[key].numel() // 2] = 0.0  # the same file, finite, loads
    save_file(tensors, str(path), metadata=meta)
    assert math.isfinite(float(load_hp3_weights(path).state_dict[key].float().sum()))

