# Run after linking libtorchqat (CMakeLists.txt, POST_BUILD): cmake -DLIBRARY=<file> -P this.
# The library must load the shared C++ runtime. A toolchain that links libstdc++ statically
# (one GPU image's /opt/gcc wrapper did) gives a library whose operators crash the process on
# their first error message; python/torchqat/_linkcheck.py makes the same check for setup.py.
file(STRINGS "${LIBRARY}" _runtime REGEX "lib(std)?c\\+\\+\\.so" LIMIT_COUNT 1)
if(NOT _runtime)
  set(_cuda "")
  if(CUDA_HOST OR CUDA_HOST_LIBS)
    string(CONCAT _cuda " With CUDA, the libraries the CUDA host compiler links by default are "
      "linked too (host compiler '${CUDA_HOST}', libraries '${CUDA_HOST_LIBS}'): give nvcc the "
      "same compiler (CUDAHOSTCXX or -DCMAKE_CUDA_HOST_COMPILER).")
  endif()
  message(FATAL_ERROR "torchqat: ${LIBRARY} was linked with a static copy of the C++ runtime "
    "(it does not load libstdc++.so), so the C++ compiler (${CXX}) links libstdc++ statically. "
    "Such a build crashes the process when an operator formats an error message. Configure "
    "with a compiler that links libstdc++ dynamically, e.g. -DCMAKE_CXX_COMPILER=/usr/bin/g++."
    "${_cuda}")
endif()
