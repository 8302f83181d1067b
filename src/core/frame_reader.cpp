// SPDX-License-Identifier: Apache-2.0
// FrameReader: frames from a byte stream into sessions and the receive queue. Layer: src/core.
#include "core/frame_reader.hpp"

#include <algorithm>
#include <cstring>

#include "core/communicator_impl.hpp"
#include "core/session.hpp"

namespace ferry::detail {
namespace {

constexpr unsigned kWakeEveryRounds = 16;
constexpr std::uint64_t kWakeEveryBytes = std::uint64_t{256} << 10;

}  // namespace

FrameReader::FrameReader(CommunicatorImpl& owner) : m_owner(owner) {}

void FrameReader::start(std::shared_ptr<Session> session, std::uint64_t next_expected) {
  m_session = std::move(session);
  m_reassembler.reset(next_expected, m_owner.options().connection.message_size);
  m_carry_len = 0;
  m_in_payload = false;
  m_paused = false;
}

void FrameReader::advance(std::size_t n) noexcept {
  m_reassembler.advance(n);
  m_round_bytes += n;
  m_round_progress = true;
}

std::size_t FrameReader::feed(std::span<const std::byte> in, Errc& error, std::string& why) {
  std::size_t pos = 0;
  for (;;) {
    if (m_paused || m_close_pending) return pos;
    if (m_in_payload) {
      const std::span<std::byte> target = m_reassembler.chunk_target();
      const std::size_t take = std::min(target.size(), in.size() - pos);
      if (take) {
        std::memcpy(target.data(), in.data() + pos, take);
        pos += take;
        advance(take);
      }
      if (!m_reassembler.chunk_done()) return pos;  // the rest of the chunk comes later
      m_in_payload = false;
      if (m_reassembler.message_done()) {
        m_round_delivered = true;
        Bytes message = m_reassembler.take();
        m_unwoken_bytes += message.size();
        ++m_delivered;
        if (!m_owner.deliver(m_session, std::move(message), false)) m_paused = true;
      }
      continue;
    }
    const std::byte* header = nullptr;
    if (m_carry_len > 0 || in.size() - pos < framing::kHeaderSize) {
      const std::size_t take = std::min(framing::kHeaderSize - m_carry_len, in.size() - pos);
      if (take) std::memcpy(m_carry.data() + m_carry_len, in.data() + pos, take);
      m_carry_len += take;
      pos += take;
      if (m_carry_len < framing::kHeaderSize) return pos;
      m_carry_len = 0;
      header = m_carry.data();
    } else {
      header = in.data() + pos;
      pos += framing::kHeaderSize;
    }
    framing::FrameHeader h;
    error = framing::decode_header(std::span<const std::byte, framing::kHeaderSize>(header, framing::kHeaderSize),
                                   m_owner.max_chunk(), h, why);
    if (error != Errc{}) return pos;
    switch (h.type) {
      case framing::FrameType::data:
        error = m_reassembler.begin_chunk(h, why);
        if (error != Errc{}) return pos;
        m_in_payload = true;
        m_round_progress = true;
        break;
      case framing::FrameType::ack:
        error = m_session->on_ack(h.a, h.b, why);
        if (error != Errc{}) return pos;
        break;
      case framing::FrameType::keepalive:
        break;
      case framing::FrameType::close:
        if (m_defer_close) {
          m_close_reason = static_cast<Errc>(h.a);
          m_close_pending = true;
          return pos;
        }
        m_session->on_peer_close(static_cast<Errc>(h.a));
        break;
    }
  }
}

void FrameReader::end_round(bool source_idle, bool buffered_empty) {
  if (!round_open()) return;
  // Wake get() once per burst, not once per read: when the source has nothing more, when we
  // stop reading, before a large direct read (it would hold the delivered messages back until
  // it completes), or every kWakeEveryRounds reads or kWakeEveryBytes of a long stream. A
  // reader that keeps up with a stream would otherwise be woken (a context switch) for every
  // message.
  const bool long_read_next = m_in_payload && buffered_empty && m_reassembler.chunk_target().size() >= kWakeEveryBytes;
  if (m_round_delivered && (source_idle || m_paused || long_read_next || ++m_unwoken_rounds >= kWakeEveryRounds ||
                            m_unwoken_bytes >= kWakeEveryBytes)) {
    wake_getters();
  }
  if (m_round_progress) {
    if (m_round_bytes) m_session->received_bytes(m_round_bytes);
    m_unacked_bytes += m_round_bytes;
    m_round_bytes = 0;
    m_round_progress = false;
    m_unacked = true;
  }
  if (!m_unacked) return;
  // Acknowledge on the same pauses (and nothing buffered), or every quarter window: one ack
  // per burst instead of one per read. Acks also ride along with outgoing data
  // (Session::fill).
  const bool idle = source_idle && buffered_empty;
  const std::uint64_t every =
      std::min<std::uint64_t>(m_owner.options().connection.send_window / 4, std::uint64_t{4} << 20);
  if (idle || m_paused || m_unacked_bytes >= every) {
    m_unacked_bytes = 0;
    m_unacked = false;
    m_session->ack_due();
  }
}

void FrameReader::apply_close() {
  if (!m_close_pending) return;
  m_close_pending = false;
  m_session->on_peer_close(m_close_reason);
}

void FrameReader::wake_pending() {
  if (m_round_delivered) wake_getters();
}

void FrameReader::wake_getters() {
  m_round_delivered = false;
  m_unwoken_rounds = 0;
  m_unwoken_bytes = 0;
  m_owner.wake_getters();
}

}  // namespace ferry::detail
