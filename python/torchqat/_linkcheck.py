"""A build-time check of the compiled library's C++ runtime (run by setup.py after linking).

Some toolchains link libstdc++ statically into every shared object they build (one GPU image's
/opt/gcc wrapper did: its ``_C.so`` carried a private std::ostream and no ``libstdc++.so.6``
dependency). torchqat then loads and computes correctly, but its first error message that
formats a number crashes the process inside that private copy, where a clear RuntimeError was
due. The check refuses such a build with a message naming the cure.

Kept free of torch imports so that setup.py can load this file before torchqat is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

# Names of the shared C++ runtimes; a dynamically linked C++ library lists one of them in its
# dynamic string table (DT_NEEDED).
_SHARED_CXX_RUNTIMES = (b"libstdc++.so", b"libc++.so")


def static_cxx_runtime_message(path: str | Path,
                               compiler: str = "the C++ compiler") -> Optional[str]:
    """None when `path` (an ELF shared library) loads a shared C++ runtime, or when it is not an
    ELF file (macOS, Windows: nothing to check); else a message saying what is wrong and how to
    build instead."""
    data = Path(path).read_bytes()
    if not data.startswith(b"\x7fELF"):
        return None
    if any(name in data for name in _SHARED_CXX_RUNTIMES):
        return None
    return (
        f"torchqat: {path} was linked with a static copy of the C++ runtime: it does not load "
        f"libstdc++.so, so {compiler} links libstdc++ statically. Such a build crashes the "
        "process when an operator formats an error message (seen as a segmentation fault in "
        "std::ostream). Build with a compiler that links libstdc++ dynamically, for example "
        "CC=/usr/bin/gcc CXX=/usr/bin/g++ LDSHARED='/usr/bin/g++ -shared'."
    )
