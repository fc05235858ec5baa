# What `cmake --install build [--prefix P]` lays down (included from CMakeLists.txt):
#   P/bin/hookrouter
#   P/share/man/man1/hookrouter.1
#   P/share/doc/hookrouter/README.md and examples/ (the example config, rules, payloads, replies, fixtures)
#   <sysconfdir>/hookrouter/hookrouter.lua and rules/ (the service's config: the example with
#       the spool, dead letters and files in /var/lib/hookrouter), <sysconfdir>/logrotate.d/hookrouter
#   P/lib/systemd/system/hookrouter.service (HR_SYSTEMD_UNITDIR)
# <sysconfdir> is /etc for the /usr prefix (the .deb, GNUInstallDirs' rule) and P/etc otherwise.
# Included by the top-level CMakeLists.txt (the hookrouter target) and by packaging/CMakeLists.txt
# (scripts/package.sh: the binary already built, HR_BINARY); HR_SOURCE_DIR is the source tree.
include(GNUInstallDirs)

set(HR_SYSTEMD_UNITDIR "lib/systemd/system" CACHE STRING
    "where hookrouter.service is installed (relative: under the prefix)")
if(CMAKE_INSTALL_PREFIX STREQUAL "/usr")
  set(HR_SYSCONF_DEST "${CMAKE_INSTALL_FULL_SYSCONFDIR}") # /etc
else()
  set(HR_SYSCONF_DEST "${CMAKE_INSTALL_SYSCONFDIR}")      # relative: P/etc, follows --prefix
endif()
set(HR_FULL_BINDIR "${CMAKE_INSTALL_FULL_BINDIR}")
set(HR_FULL_SYSCONFDIR "${CMAKE_INSTALL_FULL_SYSCONFDIR}")
set(HR_CONFIG_FILE "${CMAKE_INSTALL_FULL_SYSCONFDIR}/hookrouter/hookrouter.lua")

# The service's config: the example with every var/ path moved to the unit's StateDirectory,
# and no made-up token (the example falls back to "dev-token" for the walkthrough).
set(HR_EXAMPLE_CONFIG ${HR_SOURCE_DIR}/examples/hookrouter.lua)
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${HR_EXAMPLE_CONFIG})
file(READ ${HR_EXAMPLE_CONFIG} cfg)
string(REPLACE "\"var/" "\"/var/lib/hookrouter/" cfg "${cfg}")
# Each pair: what the example says, what the service config says instead.
set(edits
    " The fallback is for trying it out only." ""
    "os.getenv(\"AIFI_TOKEN\") or \"dev-token\""
    "os.getenv(\"AIFI_TOKEN\") or error(\"set AIFI_TOKEN (the token AiFi sends) in ${HR_FULL_SYSCONFDIR}/default/hookrouter\")")
while(edits)
  list(POP_FRONT edits from to)
  string(FIND "${cfg}" "${from}" at)
  if(at LESS 0)
    message(FATAL_ERROR "packaging/install.cmake: examples/hookrouter.lua no longer says "
                        "'${from}': update how the service config is made from it")
  endif()
  string(REPLACE "${from}" "${to}" cfg "${cfg}")
endwhile()
string(FIND "${cfg}" "\"var/" left)
if(NOT left LESS 0)
  message(FATAL_ERROR "packaging/install.cmake: a var/ path is left in the service config")
endif()
file(WRITE ${CMAKE_BINARY_DIR}/packaging/hookrouter.lua
     "-- ${HR_CONFIG_FILE}: hookrouter's service config (hookrouter.service). It is the example\n"
     "-- config (share/doc/hookrouter/examples/) with the spool, the dead letters and the files in\n"
     "-- /var/lib/hookrouter, the unit's StateDirectory (the only place it may write). Secrets come\n"
     "-- from the environment: ${HR_FULL_SYSCONFDIR}/default/hookrouter (KEY=value lines).\n"
     "-- Check it with: hookrouter check -c ${HR_CONFIG_FILE}\n"
     "${cfg}")
configure_file(${HR_SOURCE_DIR}/packaging/hookrouter.service.in
               ${CMAKE_BINARY_DIR}/packaging/hookrouter.service @ONLY)

if(TARGET hookrouter)
  install(TARGETS hookrouter RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
else()
  install(PROGRAMS ${HR_BINARY} DESTINATION ${CMAKE_INSTALL_BINDIR})
endif()
install(FILES ${HR_SOURCE_DIR}/docs/hookrouter.1 DESTINATION ${CMAKE_INSTALL_MANDIR}/man1)
install(FILES ${HR_SOURCE_DIR}/README.md DESTINATION ${CMAKE_INSTALL_DOCDIR})
install(FILES ${HR_EXAMPLE_CONFIG} DESTINATION ${CMAKE_INSTALL_DOCDIR}/examples)
install(DIRECTORY ${HR_SOURCE_DIR}/examples/rules ${HR_SOURCE_DIR}/examples/payloads
                  ${HR_SOURCE_DIR}/examples/replies ${HR_SOURCE_DIR}/examples/fixtures
        DESTINATION ${CMAKE_INSTALL_DOCDIR}/examples)
install(FILES ${CMAKE_BINARY_DIR}/packaging/hookrouter.lua DESTINATION ${HR_SYSCONF_DEST}/hookrouter)
# The service's rules without the examples' spec files (their payloads and fixtures stay in
# share/doc): `hookrouter check` would fail on bodies it cannot find.
install(DIRECTORY ${HR_SOURCE_DIR}/examples/rules DESTINATION ${HR_SYSCONF_DEST}/hookrouter
        PATTERN tests EXCLUDE)
install(FILES ${HR_SOURCE_DIR}/packaging/hookrouter.logrotate
        DESTINATION ${HR_SYSCONF_DEST}/logrotate.d RENAME hookrouter)
install(FILES ${CMAKE_BINARY_DIR}/packaging/hookrouter.service DESTINATION ${HR_SYSTEMD_UNITDIR})
