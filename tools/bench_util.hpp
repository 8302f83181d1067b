// SPDX-License-Identifier: Apache-2.0
// Helpers shared by ferry-bench's sub-commands: byte sizes with units, in and out. Layer: tools/.
#pragma once

#include <CLI/CLI.hpp>
#include <cctype>
#include <cstdio>
#include <string>

namespace ferry::bench {

/// "64", "64B", "1K", "2MiB", "1G" -> bytes; CLI::ValidationError otherwise.
inline std::size_t parse_size(const std::string& text) {
  std::size_t pos = 0;
  unsigned long long value = 0;
  try {
    value = std::stoull(text, &pos);
  } catch (const std::exception&) {
    throw CLI::ValidationError("size", "'" + text + "' is not a number of bytes");
  }
  std::string unit = text.substr(pos);
  for (auto& c : unit)
    c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (unit.empty() || unit == "B")
    return value;
  if (unit == "K" || unit == "KB" || unit == "KIB")
    return value << 10;
  if (unit == "M" || unit == "MB" || unit == "MIB")
    return value << 20;
  if (unit == "G" || unit == "GB" || unit == "GIB")
    return value << 30;
  throw CLI::ValidationError("size", "unknown unit in '" + text + "' (use B, K, M or G)");
}

/// 1536 -> "1.5 KiB".
inline std::string human_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB"};
  int u = 0;
  while (bytes >= 1024 && u < 3) {
    bytes /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf,
                bytes == static_cast<double>(static_cast<long long>(bytes)) ? "%.0f %s" : "%.1f %s",
                bytes, units[u]);
  return buf;
}

}  // namespace ferry::bench
