// SPDX-License-Identifier: Apache-2.0
// Numbered messages for the Communicator's tests: message i carries i in its first 8 bytes,
// so a receiver checks order, loss and duplication; must_get() bounds every wait.
#pragma once

#include <ferry/ferry.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <stdexcept>

namespace ferry::test {

inline Bytes numbered(std::uint64_t i, std::size_t size = 64) {
  Bytes b(std::max(size, sizeof i));
  std::memset(b.data(), static_cast<int>(i & 0xff), b.size());
  std::memcpy(b.data(), &i, sizeof i);
  return b;
}

inline std::uint64_t number_of(const Message& m) {
  std::uint64_t i = 0;
  EXPECT_GE(m.data.size(), sizeof i);
  if (m.data.size() >= sizeof i) std::memcpy(&i, m.data.data(), sizeof i);
  return i;
}

/// The next message, or std::runtime_error after `timeout`.
inline Message must_get(Communicator& c, std::chrono::nanoseconds timeout) {
  auto m = c.get_for(timeout);
  if (!m) throw std::runtime_error("no message within the deadline");
  return std::move(*m);
}

}  // namespace ferry::test
