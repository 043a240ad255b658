# Installs the library, its public headers and a package config, so that
# another CMake project can call find_package(persistence) and link
# persistence::persistence.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

install(TARGETS persistence EXPORT persistenceTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY include/persistence DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(EXPORT persistenceTargets NAMESPACE persistence::
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/persistence)

configure_package_config_file(cmake/persistenceConfig.cmake.in
  ${PROJECT_BINARY_DIR}/persistenceConfig.cmake
  INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/persistence)
write_basic_package_version_file(${PROJECT_BINARY_DIR}/persistenceConfigVersion.cmake
  COMPATIBILITY SameMajorVersion)
install(FILES
  ${PROJECT_BINARY_DIR}/persistenceConfig.cmake
  ${PROJECT_BINARY_DIR}/persistenceConfigVersion.cmake
  cmake/PersistenceDependencies.cmake
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/persistence)
