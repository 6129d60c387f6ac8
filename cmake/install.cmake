# Install rules (FUSEDLSTM_INSTALL; always for the wheel): libfusedlstm.so, the
# public headers, the CMake package (find_package(fusedlstm CONFIG) gives the
# target fusedlstm::fusedlstm) and a pkg-config file. The layout under the
# prefix is FUSEDLSTM_INSTALL_LIBDIR / FUSEDLSTM_INSTALL_INCLUDEDIR (set in
# CMakeLists.txt): lib/, include/, lib/cmake/fusedlstm/, lib/pkgconfig/ for a
# plain `cmake --install`; the same under fusedlstm/ in the wheel. Every path
# the package files hold is relative to where they lie, so an installed tree
# can be moved (a venv, a wheel unpacked anywhere).
include(CMakePackageConfigHelpers)

set(FUSEDLSTM_INSTALL_CMAKEDIR "${FUSEDLSTM_INSTALL_LIBDIR}/cmake/fusedlstm")
set(FUSEDLSTM_INSTALL_PKGCONFIGDIR "${FUSEDLSTM_INSTALL_LIBDIR}/pkgconfig")

install(TARGETS fusedlstm EXPORT fusedlstmTargets
        LIBRARY DESTINATION "${FUSEDLSTM_INSTALL_LIBDIR}")  # its include folder: CMakeLists.txt's INSTALL_INTERFACE
install(DIRECTORY "${PROJECT_SOURCE_DIR}/csrc/include/fusedlstm" DESTINATION "${FUSEDLSTM_INSTALL_INCLUDEDIR}"
        FILES_MATCHING PATTERN "*.h")
install(EXPORT fusedlstmTargets NAMESPACE fusedlstm:: DESTINATION "${FUSEDLSTM_INSTALL_CMAKEDIR}")

configure_package_config_file("${CMAKE_CURRENT_LIST_DIR}/fusedlstmConfig.cmake.in"
  "${CMAKE_CURRENT_BINARY_DIR}/fusedlstmConfig.cmake" INSTALL_DESTINATION "${FUSEDLSTM_INSTALL_CMAKEDIR}")
# 0.x: a minor version may change the C API, so only the same 0.y matches.
write_basic_package_version_file("${CMAKE_CURRENT_BINARY_DIR}/fusedlstmConfigVersion.cmake"
  VERSION "${PROJECT_VERSION}" COMPATIBILITY SameMinorVersion)
install(FILES "${CMAKE_CURRENT_BINARY_DIR}/fusedlstmConfig.cmake"
              "${CMAKE_CURRENT_BINARY_DIR}/fusedlstmConfigVersion.cmake"
        DESTINATION "${FUSEDLSTM_INSTALL_CMAKEDIR}")

# pkg-config: paths relative to the .pc file itself (${pcfiledir}; pkg-config
# and pkgconf both define it), prefix = the install prefix.
file(RELATIVE_PATH _fl_pc_to_prefix "/prefix/${FUSEDLSTM_INSTALL_PKGCONFIGDIR}" "/prefix")
string(REGEX REPLACE "/$" "" _fl_pc_to_prefix "${_fl_pc_to_prefix}")
set(FUSEDLSTM_PC_PREFIX "\${pcfiledir}/${_fl_pc_to_prefix}")
configure_file("${CMAKE_CURRENT_LIST_DIR}/fusedlstm.pc.in" "${CMAKE_CURRENT_BINARY_DIR}/fusedlstm.pc" @ONLY)
install(FILES "${CMAKE_CURRENT_BINARY_DIR}/fusedlstm.pc" DESTINATION "${FUSEDLSTM_INSTALL_PKGCONFIGDIR}")
