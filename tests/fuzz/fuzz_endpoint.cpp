// SPDX-License-Identifier: Apache-2.0
// Fuzz target: endpoint URLs (what a user or a configuration file hands Ferry), through
// Endpoint::parse. Bad ones are a ferry::Error with invalid_argument and a message; a good one
// prints back to a URL that parses to the same endpoint. Layer: tests/fuzz.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include <ferry/endpoint.hpp>
#include <ferry/error.hpp>

namespace {
void check(bool ok) {
  if (!ok) std::abort();
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view url(reinterpret_cast<const char*>(data), size);
  ferry::Endpoint e;
  try {
    e = ferry::Endpoint::parse(url);
  } catch (const ferry::Error& err) {
    check(err.errc() == ferry::Errc::invalid_argument);
    check(err.what() != nullptr && err.what()[0] != '\0');
    return 0;
  }
  const std::string again = e.to_string();
  ferry::Endpoint twice;
  try {
    twice = ferry::Endpoint::parse(again);
  } catch (const ferry::Error&) {
    std::abort();  // to_string() made a URL parse() refuses
  }
  check(twice == e);
  return 0;
}
