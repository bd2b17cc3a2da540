"""Class 3, untrusted metadata: names read from a plugin library (ELF DT_NEEDED), an engine's JSON
sidecar or the command line are checked as plain names and well-typed values before any file system
call; a truncated or corrupt plugin library is one line. Exit 2, one stderr line, nothing written
(in particular nothing outside the repository), nothing removed."""

from __future__ import annotations

import json
import struct

import pytest

from conftest import assert_refused, run_cli, snapshot

SIDECAR = {"inputs": [{"name": "x", "dtype": "FP32", "shape": [-1, 4, 8]}],
           "outputs": [{"name": "y", "dtype": "FP32", "shape": [-1, 4, 8]}],
           "profiles": [{"x": {"min": [1, 4, 8], "opt": [4, 4, 8], "max": [8, 4, 8]}}]}


def elf_with_needed(*needed: str) -> bytes:
    """A minimal ELF64 little-endian shared object: a .dynstr and a .dynamic section listing ``needed``
    (what elf_needed and the dynamic loader read); no code."""
    dynstr = b"\0"
    offsets = []
    for n in needed:
        offsets.append(len(dynstr))
        dynstr += n.encode() + b"\0"
    dynamic = b"".join(struct.pack("<qQ", 1, off) for off in offsets) + struct.pack("<qQ", 0, 0)
    str_off = 64
    dyn_off = str_off + len(dynstr)
    sh_off = dyn_off + len(dynamic)
    header = bytearray(64)
    header[:7] = b"\x7fELF\x02\x01\x01"
    struct.pack_into("<HH", header, 0x10, 3, 62)  # ET_DYN, x86-64
    struct.pack_into("<Q", header, 0x28, sh_off)
    struct.pack_into("<HHH", header, 0x3A, 64, 3, 0)  # e_shentsize, e_shnum, e_shstrndx
    sections = bytes(64)  # SHT_NULL
    sections += struct.pack("<IIQQQQIIQQ", 0, 3, 0, 0, str_off, len(dynstr), 0, 0, 1, 0)  # SHT_STRTAB
    sections += struct.pack("<IIQQQQIIQQ", 0, 6, 0, 0, dyn_off, len(dynamic), 1, 0, 8, 16)  # SHT_DYNAMIC
    return bytes(header) + dynstr + dynamic + sections


def _engine(folder, sidecar=SIDECAR):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "e.plan").write_bytes(b"not a real engine: package never opens it")
    (folder / "e.plan.json").write_text(sidecar if isinstance(sidecar, str) else json.dumps(sidecar))
    return folder / "e.plan"


def test_dt_needed_entry_escaping_the_repository_is_refused(tmp_path):
    """``../../../../OUT`` from the plugin's DT_NEEDED copied a file outside the repository and left it."""
    plugdir = tmp_path / "a" / "b" / "c" / "plugins"
    plugdir.mkdir(parents=True)
    (plugdir / "libplugin.so").write_bytes(elf_with_needed("libc.so.6", "../../../../OUT"))
    (tmp_path / "OUT").write_text("a file beside the plugin's grandparents")  # what the entry names
    engine = _engine(tmp_path / "engine")
    repo_parent = tmp_path / "r1" / "r2"
    repo_parent.mkdir(parents=True)
    before = snapshot(tmp_path)
    rc, _, err = run_cli("package", engine, "--repo", repo_parent / "repo", "--name", "m",
                         "--plugin", plugdir / "libplugin.so")
    assert_refused(rc, err, "package", "DT_NEEDED entry '../../../../OUT' is not a plain library name")
    assert snapshot(tmp_path) == before  # no OUT copied to r1/, no repository left behind


def test_plain_dt_needed_dependency_beside_the_plugin_is_copied(tmp_path):
    plugdir = tmp_path / "plugins"
    plugdir.mkdir()
    (plugdir / "libplugin.so").write_bytes(elf_with_needed("libc.so.6", "libkernels.so"))
    (plugdir / "libkernels.so").write_bytes(elf_with_needed("libc.so.6"))
    engine = _engine(tmp_path / "engine")
    rc, out, err = run_cli("package", engine, "--repo", tmp_path / "repo", "--name", "m",
                           "--plugin", plugdir / "libplugin.so")
    assert rc == 0, err
    vdir = tmp_path / "repo" / "m" / "1"
    assert sorted(p.name for p in vdir.iterdir()) == ["libkernels.so", "libplugin.so", "ln_deploy_plugins.json",
                                                      "model.plan", "model.plan.json"]


CORRUPT_ELF = {
    "truncated header": lambda: b"\x7fELF\x02\x01\x01" + b"\0" * 20,
    "section table past the end": lambda: bytearray(elf_with_needed("libx.so"))[:-40],
    "string table link out of range": lambda: _relink(elf_with_needed("libx.so"), 9),
    "name offset past the end": lambda: _renamed(elf_with_needed("libx.so"), 10**6),
}


def _relink(data: bytes, link: int) -> bytes:
    data = bytearray(data)
    sh_off = struct.unpack_from("<Q", data, 0x28)[0]
    struct.pack_into("<I", data, sh_off + 2 * 64 + 40, link)  # the dynamic section's sh_link
    return bytes(data)


def _renamed(data: bytes, offset: int) -> bytes:
    data = bytearray(data)
    dyn_off = 64 + len(b"\0libx.so\0")
    struct.pack_into("<qQ", data, dyn_off, 1, offset)
    return bytes(data)


@pytest.mark.parametrize("case", list(CORRUPT_ELF))
def test_corrupt_plugin_library_is_one_line(tmp_path, case):
    (tmp_path / "libplugin.so").write_bytes(bytes(CORRUPT_ELF[case]()))
    engine = _engine(tmp_path / "engine")
    before = snapshot(tmp_path)
    rc, _, err = run_cli("package", engine, "--repo", tmp_path / "repo", "--name", "m",
                         "--plugin", tmp_path / "libplugin.so")
    assert_refused(rc, err, "package", "not a readable ELF shared library")
    assert snapshot(tmp_path) == before


def _with(**changes):
    side = json.loads(json.dumps(SIDECAR))
    for path, value in changes.items():
        where = side
        keys = path.split(".")
        for k in keys[:-1]:
            where = where[int(k)] if k.isdigit() else where[k]
        where[int(keys[-1]) if keys[-1].isdigit() else keys[-1]] = value
    return side


BAD_SIDECARS = {
    "null dim": (_with(**{"inputs.0.shape": [None, 4, 8]}), "shape of integers"),
    "string dim": (_with(**{"inputs.0.shape": ["4", 4, 8]}), "shape of integers"),
    "float dim": (_with(**{"inputs.0.shape": [1.5, 4, 8]}), "shape of integers"),
    "bool dim": (_with(**{"inputs.0.shape": [True, 4, 8]}), "shape of integers"),
    "dim beyond int64": (_with(**{"inputs.0.shape": [2**70, 4, 8]}), "shape of integers"),
    "null profile max": (_with(**{"profiles.0.x.max": [None, 4, 8]}), "profile max"),
    "string profile max": (_with(**{"profiles.0.x.max": ["8", 4, 8]}), "profile max"),
    "non-string name": (_with(**{"inputs.0.name": {"a": 1}}), "needs a name"),
    "non-string dtype": (_with(**{"inputs.0.dtype": [1]}), "needs a name, a dtype"),
    "plugin path escapes": ({**SIDECAR, "plugins": ["../../evil.so"]}, "not a plain file name"),
    "100k nesting": ("[" * 100_000 + "]" * 100_000, "nested 100000 levels"),
    "invalid UTF-8": ('{"inputs": "\udcff"}', "UTF-8"),
}


@pytest.mark.parametrize("case", list(BAD_SIDECARS))
def test_hostile_engine_sidecar_is_one_line(tmp_path, case):
    sidecar, needle = BAD_SIDECARS[case]
    if case == "invalid UTF-8":
        engine = _engine(tmp_path / "engine", "{}")
        (tmp_path / "engine" / "e.plan.json").write_bytes(b'{"inputs": "\xff\xfe"}')
    else:
        engine = _engine(tmp_path / "engine", sidecar)
    before = snapshot(tmp_path)
    rc, _, err = run_cli("package", engine, "--repo", tmp_path / "repo", "--name", "m")
    assert_refused(rc, err, "package", needle)
    assert snapshot(tmp_path) == before
