// SPDX-License-Identifier: Apache-2.0
// FERRY_ASSERT: contract checks (programming errors, not Errc) that abort with a message in
// debug and sanitizer builds and compile to nothing with NDEBUG. Layer: shm/ (internal).
#pragma once

#include <cstdio>
#include <cstdlib>

#ifdef NDEBUG
#define FERRY_ASSERT(cond, message) ((void)0)
#else
#define FERRY_ASSERT(cond, message)                                                          \
  ((cond) ? (void)0                                                                          \
          : (std::fprintf(stderr, "%s:%d: ferry contract violated: %s (%s)\n", __FILE__,     \
                          __LINE__, message, #cond),                                         \
             std::abort()))
#endif
