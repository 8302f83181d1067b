// SPDX-License-Identifier: Apache-2.0
// Per-test unique segment names, so parallel test runs never share a segment.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <string>

namespace ferry::test {

inline std::string unique_name(const std::string& tag = "t") {
  static std::atomic<int> counter{0};
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string test = info != nullptr ? info->name() : "x";
  for (char& c : test)
    if (!isalnum(static_cast<unsigned char>(c))) c = '_';
  // relaxed: only uniqueness matters.
  return "test-" + tag + "-" + std::to_string(::getpid()) + "-" +
         std::to_string(counter.fetch_add(1, std::memory_order_relaxed)) + "-" + test.substr(0, 60);
}

}  // namespace ferry::test
