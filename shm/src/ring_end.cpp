// SPDX-License-Identifier: Apache-2.0
// Attaching ring ends to a segment, and closing them. Layer: shm/.
#include "ferry/shm/detail/ring_end.hpp"

#include <string>
#include <utility>

namespace ferry::shm::detail {

void attach(Segment& segment, RingKind kind, Role role) {
  auto& ctl = segment.control();
  const char* role_name = role == Role::producer ? "producer" : "consumer";
  if (segment.spec().kind != kind)
    throw Error(Errc::invalid_argument, "segment holds another ring kind");
  auto& owner = role == Role::producer ? ctl.producer.owner : ctl.consumer.owner;
  layout::Identity expected = 0;
  const layout::Identity me = self_identity();
  // sync(ring.attach) acq_rel: claims the role exactly once; pairs with itself in a
  // competing attach (the loser reads the winner's identity).
  if (owner.compare_exchange_strong(expected, me, std::memory_order_acq_rel,
                                    std::memory_order_acquire))
    return;
  const std::string holder = "pid " + std::to_string(layout::identity_pid(expected));
  if (expected == me || is_alive(expected))
    throw Error(Errc::address_in_use,
                std::string("the ring's ") + role_name + " role is held by " + holder);
  const auto& closed = role == Role::producer ? ctl.wait.producer_closed : ctl.wait.consumer_closed;
  // relaxed: only decides which error to report.
  if (closed.load(std::memory_order_relaxed) != 0)
    throw Error(Errc::closed, std::string("the ring's ") + role_name + " (" + holder +
                                  ") closed it; create a new segment");
  throw Error(Errc::peer_lost, std::string("the ring's ") + role_name + " (" + holder +
                                   ") died; the ring cannot be resumed, create a new segment");
}

RingEnd::RingEnd(Segment& segment, RingKind kind, Role role, const WaitOptions& wait)
    : m_ctl(&segment.control()),
      m_data(segment.data()),
      m_capacity(segment.spec().capacity),
      m_mask(segment.spec().capacity - 1),
      m_align_mask(kind == RingKind::byte_ring ? layout::kRecordAlign - 1 : 0),
      m_wait(wait) {
  attach(segment, kind, role);
}

RingEnd::RingEnd(RingEnd&& other) noexcept
    : m_ctl(std::exchange(other.m_ctl, nullptr)),
      m_data(other.m_data),
      m_capacity(other.m_capacity),
      m_mask(other.m_mask),
      m_align_mask(other.m_align_mask),
      m_wait(other.m_wait),
      m_peer_wake_fd(other.m_peer_wake_fd),
      m_peer_wake_fd2(other.m_peer_wake_fd2),
      m_closed(other.m_closed) {}

ProducerEnd::ProducerEnd(Segment& segment, RingKind kind, const WaitOptions& wait,
                         std::uint32_t batch)
    : RingEnd(segment, kind, Role::producer, wait),
      m_batch(batch == 0 ? 1 : batch),
      m_half_capacity(m_capacity / 2 == 0 ? 1 : m_capacity / 2) {
  // sync(segment.ready) acquire: the role was never held before (attach), so these are the
  // creator's initial positions, released with the segment state.
  m_write_pos = m_ctl->producer.write_pos.load(std::memory_order_acquire);
  m_published_pos = m_write_pos;
  // sync(segment.ready) acquire: as above.
  m_cached_read_pos = m_ctl->consumer.read_pos.load(std::memory_order_acquire);
  if (!positions_valid(m_cached_read_pos, m_write_pos))
    throw Error(Errc::protocol_error, "segment has impossible ring positions");
}

ProducerEnd::ProducerEnd(ProducerEnd&& other) noexcept
    : RingEnd(std::move(other)),
      m_write_pos(other.m_write_pos),
      m_published_pos(other.m_published_pos),
      m_cached_read_pos(other.m_cached_read_pos),
      m_unpublished(other.m_unpublished),
      m_batch(other.m_batch),
      m_half_capacity(other.m_half_capacity) {}

void ProducerEnd::close() noexcept {
  if (m_ctl == nullptr || m_closed) return;
  flush();
  // sync(ring.close) seq_cst store: after every commit; pairs with the consumer's acquire
  // load in refresh_write_pos() and its seq_cst re-check before sleeping.
  m_ctl->wait.producer_closed.store(1, std::memory_order_seq_cst);
  wake_if_sleeping(m_ctl->wait.consumer_sleeping, m_peer_wake_fd, m_peer_wake_fd2);
  m_closed = true;
}

ConsumerEnd::ConsumerEnd(Segment& segment, RingKind kind, const WaitOptions& wait)
    : RingEnd(segment, kind, Role::consumer, wait),
      m_read_batch(m_capacity / 16 == 0 ? 1 : m_capacity / 16) {
  // sync(segment.ready) acquire: the creator's initial position (see ProducerEnd).
  m_read_pos = m_ctl->consumer.read_pos.load(std::memory_order_acquire);
  // sync(segment.ready) acquire: as above.
  if (!positions_valid(m_read_pos, m_ctl->producer.write_pos.load(std::memory_order_acquire)))
    throw Error(Errc::protocol_error, "segment has impossible ring positions");
  m_cached_write_pos = m_read_pos;
  m_stored_read_pos = m_read_pos;
}

ConsumerEnd::ConsumerEnd(ConsumerEnd&& other) noexcept
    : RingEnd(std::move(other)),
      m_read_pos(other.m_read_pos),
      m_stored_read_pos(other.m_stored_read_pos),
      m_cached_write_pos(other.m_cached_write_pos),
      m_read_batch(other.m_read_batch),
      m_dirty(other.m_dirty) {}

void ConsumerEnd::close() noexcept {
  if (m_ctl == nullptr || m_closed) return;
  publish_read();
  // sync(ring.close) seq_cst store: pairs with the producer's acquire load in full_status()
  // and its seq_cst re-check before sleeping.
  m_ctl->wait.consumer_closed.store(1, std::memory_order_seq_cst);
  wake_if_sleeping(m_ctl->wait.producer_sleeping, m_peer_wake_fd, m_peer_wake_fd2);
  m_closed = true;
}

}  // namespace ferry::shm::detail
