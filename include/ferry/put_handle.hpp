// SPDX-License-Identifier: Apache-2.0
// ferry::PutHandle: the completion of one put() to one or many peers. Public API.
#pragma once

#include <chrono>
#include <memory>
#include <system_error>
#include <vector>

#include <ferry/peer_id.hpp>

namespace ferry {

namespace detail {
class PutState;
}

/// The failure of one addressed peer.
struct PeerError {
  PeerId peer;
  std::error_code error;
};

/// Tracks one put(). Two milestones per addressed peer:
///  - sent: Ferry no longer reads the caller's bytes (written to the connection, or for a
///    borrowed payload acknowledged) — the caller may reuse them;
///  - delivered: the peer acknowledged the whole message (it sits in the peer's receive queue).
/// A peer that fails (closed, lost, message too large, queue full) completes both milestones
/// with its error. A put to many peers completes when every peer has. Copyable (shared
/// state); any thread may wait.
class PutHandle {
 public:
  PutHandle() = default;
  explicit PutHandle(std::shared_ptr<detail::PutState> state) noexcept;

  /// Sent to (or failed for) every addressed peer. Never blocks.
  [[nodiscard]] bool ready() const noexcept;
  /// Delivered to (or failed for) every addressed peer. Never blocks.
  [[nodiscard]] bool delivered() const noexcept;
  /// Blocks until ready(); throws ferry::Error with the first peer's error if any peer failed.
  void wait() const;
  /// As wait(), with a deadline: false when it passed first.
  [[nodiscard]] bool wait_for(std::chrono::nanoseconds timeout) const;
  /// Blocks until delivered(); throws ferry::Error if any peer failed.
  void wait_delivered() const;
  [[nodiscard]] bool wait_delivered_for(std::chrono::nanoseconds timeout) const;
  /// The peers that failed so far, each with its error.
  [[nodiscard]] std::vector<PeerError> errors() const;
  /// The peers this put addressed (a broadcast: the peers connected at put()).
  [[nodiscard]] std::vector<PeerId> peers() const;

 private:
  std::shared_ptr<detail::PutState> m_state;
};

}  // namespace ferry
