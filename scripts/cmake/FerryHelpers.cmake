# SPDX-License-Identifier: Apache-2.0
# Warning and sanitizer flags as INTERFACE targets, and the one helper that adds a test.

add_library(ferry_warnings INTERFACE)
target_compile_options(ferry_warnings INTERFACE
  -Wall -Wextra -Wpedantic -Wshadow -Wconversion -Wno-sign-conversion -Wnon-virtual-dtor
  $<$<BOOL:${FERRY_WARNINGS_AS_ERRORS}>:-Werror>)

add_library(ferry_sanitizers INTERFACE)
if(FERRY_SANITIZER STREQUAL "address")
  target_compile_options(ferry_sanitizers INTERFACE
    -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer)
  target_link_options(ferry_sanitizers INTERFACE -fsanitize=address,undefined)
elseif(FERRY_SANITIZER STREQUAL "fuzzer")
  # libFuzzer's coverage in every library, ASan+UBSan reports as crashes (clang); the fuzz
  # targets link -fsanitize=fuzzer themselves (tests/fuzz).
  target_compile_options(ferry_sanitizers INTERFACE
    -fsanitize=address,undefined,fuzzer-no-link -fno-sanitize-recover=all -fno-omit-frame-pointer)
  target_link_options(ferry_sanitizers INTERFACE -fsanitize=address,undefined)
elseif(FERRY_SANITIZER STREQUAL "thread")
  target_compile_options(ferry_sanitizers INTERFACE -fsanitize=thread -fno-omit-frame-pointer)
  target_link_options(ferry_sanitizers INTERFACE -fsanitize=thread)
elseif(NOT FERRY_SANITIZER STREQUAL "none")
  message(FATAL_ERROR "FERRY_SANITIZER must be none, address, thread or fuzzer")
endif()

# ferry_add_test(NAME SOURCES ... LABELS ... [TIMEOUT s] [LIBS ...] [RESOURCE_LOCK lock])
# One gtest binary per call; each test case becomes a ctest with the label(s) and timeout.
function(ferry_add_test name)
  cmake_parse_arguments(ARG "" "TIMEOUT;RESOURCE_LOCK" "SOURCES;LABELS;LIBS" ${ARGN})
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 60)
  endif()
  add_executable(${name} ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE ferry_testing GTest::gtest GTest::gtest_main ${ARG_LIBS})
  set(props LABELS "${ARG_LABELS}" TIMEOUT ${ARG_TIMEOUT}
            ENVIRONMENT "FERRY_TEST_PEER=$<TARGET_FILE:ferry_test_peer>")
  if(ARG_RESOURCE_LOCK)
    list(APPEND props RESOURCE_LOCK ${ARG_RESOURCE_LOCK})
  endif()
  gtest_discover_tests(${name} DISCOVERY_MODE PRE_TEST PROPERTIES ${props})
endfunction()
