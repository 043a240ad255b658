# Finds every dependency of the library. Shared by the build and, through
# persistenceConfig.cmake, by projects that call find_package(persistence).

find_package(MPI REQUIRED COMPONENTS C CXX)

# Parallel HDF5 is required: the serial build cannot open files with MPI-IO.
set(HDF5_PREFER_PARALLEL TRUE)
find_package(HDF5 REQUIRED COMPONENTS C)
if(NOT HDF5_IS_PARALLEL)
  message(FATAL_ERROR
    "persistence needs parallel HDF5, but the HDF5 found at '${HDF5_INCLUDE_DIRS}' is serial. "
    "On Debian install libhdf5-openmpi-dev, or point HDF5_ROOT at a parallel build.")
endif()
if(NOT TARGET persistence_hdf5)
  add_library(persistence_hdf5 INTERFACE IMPORTED)
  set_target_properties(persistence_hdf5 PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES "${HDF5_C_INCLUDE_DIRS}"
    INTERFACE_LINK_LIBRARIES "${HDF5_C_LIBRARIES}"
    INTERFACE_COMPILE_DEFINITIONS "${HDF5_C_DEFINITIONS}")
endif()

find_package(Torch REQUIRED)
separate_arguments(TORCH_CXX_FLAGS_LIST UNIX_COMMAND "${TORCH_CXX_FLAGS}")
find_package(yaml-cpp REQUIRED)
find_package(spdlog REQUIRED)
# libcurl carries WebHDFS traffic, with GSS-API for Kerberos SPNEGO; nlohmann_json
# parses its replies. Debian: libcurl4-openssl-dev and nlohmann-json3-dev.
find_package(CURL REQUIRED)
find_package(nlohmann_json 3 REQUIRED)

# Debian's libxxhash-dev ships no CMake package: find the header and library.
if(NOT TARGET xxhash)
  find_path(XXHASH_INCLUDE_DIR xxhash.h REQUIRED)
  find_library(XXHASH_LIBRARY xxhash REQUIRED)
  add_library(xxhash INTERFACE IMPORTED)
  set_target_properties(xxhash PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES "${XXHASH_INCLUDE_DIR}"
    INTERFACE_LINK_LIBRARIES "${XXHASH_LIBRARY}")
endif()
