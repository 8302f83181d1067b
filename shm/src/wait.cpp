// SPDX-License-Identifier: Apache-2.0
// Status names and their mapping onto ferry::Errc. Layer: shm/.
#include "ferry/shm/wait.hpp"

namespace ferry::shm {

const char* to_string(Status s) noexcept {
  switch (s) {
    case Status::ok: return "ok";
    case Status::would_block: return "would block";
    case Status::closed: return "closed";
    case Status::message_too_large: return "message too large";
    case Status::peer_lost: return "peer lost";
    case Status::protocol_error: return "protocol error (corrupt segment)";
    case Status::timed_out: return "timed out";
  }
  return "unknown";
}

Errc to_errc(Status s) noexcept {
  switch (s) {
    case Status::ok: return Errc::internal;
    case Status::would_block: return Errc::would_block;
    case Status::closed: return Errc::closed;
    case Status::message_too_large: return Errc::message_too_large;
    case Status::peer_lost: return Errc::peer_lost;
    case Status::protocol_error: return Errc::protocol_error;
    case Status::timed_out: return Errc::timed_out;
  }
  return Errc::internal;
}

void throw_status(Status s, const char* context) {
  throw Error(to_errc(s), context);  // what(): "<context>: <status>" via the category
}

}  // namespace ferry::shm
