# Run after linking libtorchqat (CMakeLists.txt, POST_BUILD): cmake -DLIBRARY=<file> -P this.
# The library must load the shared C++ runtime. A toolchain that links libstdc++ statically
# (one GPU image's /opt/gcc wrapper did) gives a library whose operators crash the process on
# their first error message; python/torchqat/_linkcheck.py makes the same check for setup.py.
file(STRINGS "${LIBRARY}" _runtime REGEX "lib(std)?c\\+\\+\\.so" LIMIT_COUNT 1)
if(NOT _runtime)
  message(FATAL_ERROR "torchqat: ${LIBRARY} was linked with a static copy of the C++ runtime "
    "(it does not load libstdc++.so), so the C++ compiler (${CXX}) links libstdc++ statically. "
    "Such a build crashes the process when an operator formats an error message. Configure "
    "with a compiler that links libstdc++ dynamically, e.g. -DCMAKE_CXX_COMPILER=/usr/bin/g++.")
endif()
