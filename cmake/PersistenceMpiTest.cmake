# persistence_add_mpi_test(NAME <name> TARGET <executable> RANKS <n>...
#                          [TIMEOUT <seconds>] [ARGS <arg>...] [LABELS <label>...])
#
# Registers one ctest test per rank count, named <name>.np<n>, that runs the
# executable under mpiexec. Every MPI test gets a TIMEOUT because a collective
# that one rank never reaches hangs the others; PROCESSORS tells ctest how many
# cores the test occupies.

# Open MPI refuses to start as root and refuses more ranks than cores unless
# told otherwise; add those flags only where they are needed.
set(PERSISTENCE_MPIEXEC_EXTRA_FLAGS "")
execute_process(COMMAND id -u OUTPUT_VARIABLE _persistence_uid OUTPUT_STRIP_TRAILING_WHITESPACE)
if(_persistence_uid STREQUAL "0")
  list(APPEND PERSISTENCE_MPIEXEC_EXTRA_FLAGS --allow-run-as-root)
endif()
cmake_host_system_information(RESULT _persistence_cores QUERY NUMBER_OF_LOGICAL_CORES)

function(persistence_add_mpi_test)
  cmake_parse_arguments(T "" "NAME;TARGET;TIMEOUT" "RANKS;ARGS;LABELS" ${ARGN})
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 120)
  endif()
  foreach(ranks IN LISTS T_RANKS)
    set(flags ${PERSISTENCE_MPIEXEC_EXTRA_FLAGS})
    if(ranks GREATER _persistence_cores)
      list(APPEND flags --oversubscribe)
    endif()
    add_test(NAME ${T_NAME}.np${ranks}
      COMMAND ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} ${ranks} ${flags}
              ${MPIEXEC_PREFLAGS} $<TARGET_FILE:${T_TARGET}> ${MPIEXEC_POSTFLAGS} ${T_ARGS})
    set(procs ${ranks})
    if(procs GREATER _persistence_cores)
      set(procs ${_persistence_cores})
    endif()
    set_tests_properties(${T_NAME}.np${ranks} PROPERTIES
      PROCESSORS ${procs} TIMEOUT ${T_TIMEOUT} LABELS "mpi;${T_LABELS}")
  endforeach()
endfunction()
