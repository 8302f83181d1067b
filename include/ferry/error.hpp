// SPDX-License-Identifier: Apache-2.0
// ferry::Errc, ferry::Error and the ferry error category. Public API; header-only and
// dependent on the standard library alone, so the standalone ring library (shm/) uses it too.
#pragma once

#include <string>
#include <system_error>

namespace ferry {

/// Every error Ferry reports. Small and stable: a new code needs a test that produces it.
enum class Errc {
  timed_out = 1,      ///< a deadline passed before the operation could complete
  would_block,        ///< a non-blocking call could not proceed now (full / empty)
  closed,             ///< the local or remote side closed; queued data was delivered first
  peer_lost,          ///< the peer process or connection died without closing
  message_too_large,  ///< a message exceeds the configured or structural limit
  invalid_argument,   ///< a caller-supplied value is out of range or inconsistent
  address_in_use,     ///< a name, port or ring role is already taken
  not_found,          ///< a named segment, endpoint or peer does not exist
  permission_denied,  ///< the OS refused access (file mode, uid, capabilities)
  version_mismatch,   ///< the peer or segment speaks another layout or protocol version
  unavailable,        ///< a required resource is missing (hugepages, memory, a backend)
  protocol_error,     ///< bytes from a peer or a segment violate the format
  system,             ///< an unexpected OS error; the errno is kept in the message
  internal,           ///< a bug in Ferry
  cancelled,          ///< the caller cancelled the operation (ferry::rpc::Call::cancel)
  remote_error,       ///< a remote handler failed (threw); the message carries its what()
};

namespace detail {
class ErrorCategory final : public std::error_category {
 public:
  [[nodiscard]] const char* name() const noexcept override { return "ferry"; }
  [[nodiscard]] std::string message(int code) const override {
    switch (static_cast<Errc>(code)) {
      case Errc::timed_out: return "timed out";
      case Errc::would_block: return "operation would block";
      case Errc::closed: return "closed";
      case Errc::peer_lost: return "peer lost";
      case Errc::message_too_large: return "message too large";
      case Errc::invalid_argument: return "invalid argument";
      case Errc::address_in_use: return "address in use";
      case Errc::not_found: return "not found";
      case Errc::permission_denied: return "permission denied";
      case Errc::version_mismatch: return "version mismatch";
      case Errc::unavailable: return "unavailable";
      case Errc::protocol_error: return "protocol error";
      case Errc::system: return "system error";
      case Errc::internal: return "internal error";
      case Errc::cancelled: return "cancelled";
      case Errc::remote_error: return "remote error";
    }
    return "unknown ferry error";
  }
};
}  // namespace detail

/// The category of every ferry::Errc.
inline const std::error_category& error_category() noexcept {
  static const detail::ErrorCategory category;
  return category;
}

inline std::error_code make_error_code(Errc e) noexcept {
  return {static_cast<int>(e), error_category()};
}

/// Thrown by set-up and blocking calls. what() is "<context>: <message>".
class Error : public std::system_error {
 public:
  Error(Errc code, const std::string& context) : std::system_error(make_error_code(code), context) {}
  [[nodiscard]] Errc errc() const noexcept { return static_cast<Errc>(code().value()); }
};

}  // namespace ferry

template <>
struct std::is_error_code_enum<ferry::Errc> : std::true_type {};
