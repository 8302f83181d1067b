// SPDX-License-Identifier: Apache-2.0
// error_of(f): the ferry::Errc that f throws, for tests that expect a set-up call to fail.
#pragma once

#include "ferry/error.hpp"

namespace ferry::test {

/// The Errc of the ferry::Error `f` throws; Errc::internal if it throws none (never what a
/// test using this expects).
template <class F>
Errc error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.errc();
  }
  return Errc::internal;
}

}  // namespace ferry::test
