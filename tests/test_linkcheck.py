"""The build's C++-runtime check (python/torchqat/_linkcheck.py, run by setup.py after linking)."""

from torchqat import _linkcheck
from torchqat._ops import LIBRARY_PATH


def test_built_library_loads_a_shared_cxx_runtime():
    assert _linkcheck.static_cxx_runtime_message(LIBRARY_PATH) is None


def test_library_without_a_shared_cxx_runtime_is_refused(tmp_path):
    # An ELF file whose dynamic string table names no C++ runtime: what the static link gives.
    lib = tmp_path / "_C.so"
    lib.write_bytes(b"\x7fELF" + b"\0" * 60
                    + b"libc10.so\0libtorch_cpu.so\0libgcc_s.so.1\0libc.so.6\0")
    message = _linkcheck.static_cxx_runtime_message(lib, "/opt/gcc/bin/g++")
    assert message is not None
    assert str(lib) in message and "/opt/gcc/bin/g++ links libstdc++ statically" in message
    assert "CXX=/usr/bin/g++" in message
    # The same file once it names libstdc++ (dynamic link) passes.
    lib.write_bytes(b"\x7fELF" + b"\0" * 60 + b"libc10.so\0libstdc++.so.6\0libc.so.6\0")
    assert _linkcheck.static_cxx_runtime_message(lib) is None


def test_non_elf_files_are_not_checked(tmp_path):
    lib = tmp_path / "_C.dylib"
    lib.write_bytes(b"\xcf\xfa\xed\xfe" + b"\0" * 60)  # Mach-O: links libc++ through its own rules
    assert _linkcheck.static_cxx_runtime_message(lib) is None
