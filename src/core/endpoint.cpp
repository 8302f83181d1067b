// SPDX-License-Identifier: Apache-2.0
// Endpoint URL parsing and printing. Layer: src/core.
#include <ferry/endpoint.hpp>
#include <ferry/error.hpp>

#include <array>
#include <charconv>
#include <utility>

namespace ferry {
namespace {

struct SchemeInfo {
  std::string_view name;
  Scheme scheme;
};
constexpr std::array<SchemeInfo, 8> kSchemes = {{{"tcp", Scheme::tcp},
                                                 {"tls", Scheme::tls},
                                                 {"shm", Scheme::shm},
                                                 {"mqtt", Scheme::mqtt},
                                                 {"mqtts", Scheme::mqtts},
                                                 {"grpc", Scheme::grpc},
                                                 {"grpcs", Scheme::grpcs},
                                                 {"auto", Scheme::automatic}}};

bool name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '.' || c == '_';
}

}  // namespace

std::string_view Endpoint::scheme_name(Scheme scheme) noexcept {
  for (const auto& s : kSchemes) {
    if (s.scheme == scheme) return s.name;
  }
  return "?";
}

Endpoint Endpoint::parse(std::string_view url) {
  const auto fail = [&](const std::string& what) -> void {
    throw Error(Errc::invalid_argument, "endpoint '" + std::string(url) + "': " + what);
  };
  Endpoint e;
  const std::size_t sep = url.find("://");
  if (sep == std::string_view::npos) fail("expected scheme://..., e.g. tcp://127.0.0.1:51966");
  const std::string_view scheme = url.substr(0, sep);
  bool known = false;
  for (const auto& s : kSchemes) {
    if (s.name == scheme) {
      e.scheme = s.scheme;
      known = true;
    }
  }
  if (!known) fail("unknown scheme '" + std::string(scheme) + "' (tcp, tls, shm, mqtt, mqtts, grpc, grpcs, auto)");
  std::string_view rest = url.substr(sep + 3);

  if (e.scheme == Scheme::shm) {
    if (rest.empty()) fail("missing name after shm://");
    if (rest.size() > 200) fail("name longer than 200 characters");
    for (const char c : rest) {
      if (!name_char(c)) fail("bad character '" + std::string(1, c) + "' in name (letters, digits, . - _)");
    }
    if (rest == "." || rest == "..") fail("name '" + std::string(rest) + "' is not allowed");
    e.path = std::string(rest);
    return e;
  }

  const bool mqtt = e.scheme == Scheme::mqtt || e.scheme == Scheme::mqtts;
  if (mqtt) {
    const std::size_t slash = rest.find('/');
    if (slash != std::string_view::npos) {
      e.path = std::string(rest.substr(slash + 1));
      for (const char c : e.path) {
        if (c == '+' || c == '#' || c == '\0') fail("topic prefix must not contain '+', '#' or NUL");
      }
      rest = rest.substr(0, slash);
    }
  } else if (rest.find('/') != std::string_view::npos) {
    fail("unexpected path after host:port");
  }

  std::string_view host;
  std::string_view port;
  bool has_port = false;
  if (!rest.empty() && rest.front() == '[') {
    const std::size_t close = rest.find(']');
    if (close == std::string_view::npos) fail("unterminated '[' in IPv6 host");
    host = rest.substr(1, close - 1);
    const std::string_view after = rest.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') fail("expected ':port' after ']'");
      port = after.substr(1);
      has_port = true;
    }
    if (host.empty()) fail("empty IPv6 host");
    for (const char c : host) {
      if (!(c == ':' || c == '.' || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))) {
        fail("bad IPv6 host '" + std::string(host) + "'");
      }
    }
  } else {
    const std::size_t colon = rest.rfind(':');
    if (colon != std::string_view::npos) {
      host = rest.substr(0, colon);
      port = rest.substr(colon + 1);
      has_port = true;
    } else {
      host = rest;
    }
    if (host.empty()) fail("missing host");
    for (const char c : host) {
      if (!name_char(c)) fail("bad character '" + std::string(1, c) + "' in host '" + std::string(host) + "'");
    }
  }
  e.host = std::string(host);
  if (!has_port) {
    if (e.scheme == Scheme::mqtt) {
      e.port = 1883;
    } else if (e.scheme == Scheme::mqtts) {
      e.port = 8883;
    } else {
      fail("missing port (host:port; 0 binds a free port)");
    }
    return e;
  }
  unsigned value = 0;
  const auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (port.empty() || ec != std::errc{} || end != port.data() + port.size()) {
    fail("bad port '" + std::string(port) + "'");
  }
  if (value > 65535) fail("port " + std::string(port) + " out of range (0-65535)");
  e.port = static_cast<std::uint16_t>(value);
  return e;
}

std::string Endpoint::to_string() const {
  std::string out(scheme_name(scheme));
  out += "://";
  if (scheme == Scheme::shm) return out + path;
  out += host.find(':') != std::string::npos ? "[" + host + "]" : host;
  out += ":" + std::to_string(port);
  if ((scheme == Scheme::mqtt || scheme == Scheme::mqtts) && !path.empty()) out += "/" + path;
  return out;
}

}  // namespace ferry
