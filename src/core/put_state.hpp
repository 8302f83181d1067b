// SPDX-License-Identifier: Apache-2.0
// The shared state behind a PutHandle: the payload (shared by every addressed peer, so a
// broadcast is serialised once) and each peer's progress. Layer: src/core.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <system_error>
#include <vector>

#include <ferry/message.hpp>
#include <ferry/put_handle.hpp>

namespace ferry::detail {

class PutState {
 public:
  PutState(Payload payload, std::span<const PeerId> peers);

  /// The bytes to send, shared: a session holds them while it may still write them; the put
  /// state lets go of them once every peer is delivered or failed, so a PutHandle kept by the
  /// caller does not keep the message alive.
  [[nodiscard]] const std::shared_ptr<const Payload>& payload() const noexcept { return m_payload; }
  [[nodiscard]] bool borrowed() const noexcept { return m_borrowed; }
  [[nodiscard]] std::size_t peer_count() const noexcept { return m_slots.size(); }
  [[nodiscard]] const PeerId& peer(std::size_t slot) const noexcept { return m_slots[slot].peer; }

  /// Milestones of one peer (any thread). Each is idempotent and never goes backwards; a
  /// failure after delivery is ignored.
  void sent(std::size_t slot);
  void delivered(std::size_t slot);
  void fail(std::size_t slot, std::error_code error);

  [[nodiscard]] bool ready() const;
  [[nodiscard]] bool all_delivered() const;
  /// Waits for all peers to reach `delivered ? delivered : sent`; false on timeout.
  [[nodiscard]] bool wait(bool delivered, std::chrono::nanoseconds timeout) const;
  [[nodiscard]] std::vector<PeerError> errors() const;
  [[nodiscard]] std::vector<PeerId> peers() const;

 private:
  enum class Progress : std::uint8_t { pending, sent, delivered, failed };
  struct Slot {
    PeerId peer;
    Progress progress = Progress::pending;
    std::error_code error;
  };
  void advance(std::size_t slot, Progress to, std::error_code error);

  std::shared_ptr<const Payload> m_payload;  // reset when every peer is done
  bool m_borrowed;
  mutable std::mutex m_mutex;
  mutable std::condition_variable m_cv;
  std::vector<Slot> m_slots;
  std::size_t m_unsent;       // peers neither sent, delivered nor failed
  std::size_t m_undelivered;  // peers neither delivered nor failed
};

}  // namespace ferry::detail
