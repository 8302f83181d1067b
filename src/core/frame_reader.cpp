// SPDX-License-Identifier: Apache-2.0
// FrameReader: frames from a byte stream into sessions and the receive queue. Layer: src/core.
#include "core/frame_reader.hpp"

#include <algorithm>
#include <cstring>

#include "core/communicator_impl.hpp"
#include "core/session.hpp"
#include "framing/crc32c.hpp"

namespace ferry::detail {
namespace {

constexpr unsigned kWakeEveryRounds = 16;
constexpr std::uint64_t kWakeEveryBytes = std::uint64_t{256} << 10;
constexpr unsigned kMaxDamagedInARow = 8;

// Bytes of a fixed-size piece (a header, a trailer) that may arrive split across feeds: adds
// what `in` has from `pos` to `buf` (holding `len` so far); true once it is whole.
template <std::size_t N>
bool gather(std::array<std::byte, N>& buf, std::size_t& len, std::span<const std::byte> in, std::size_t& pos) {
  const std::size_t take = std::min(N - len, in.size() - pos);
  if (take) std::memcpy(buf.data() + len, in.data() + pos, take);
  len += take;
  pos += take;
  return len == N;
}

}  // namespace

FrameReader::FrameReader(CommunicatorImpl& owner) : m_owner(owner) {}

void FrameReader::start(std::shared_ptr<Session> session, std::uint64_t next_expected, bool checksums) {
  m_session = std::move(session);
  m_reassembler.reset(next_expected, m_owner.options().connection.message_size);
  m_carry_len = 0;
  m_in_payload = false;
  m_paused = false;
  m_checksums = checksums;
  m_in_trailer = false;
  m_trailer_len = 0;
  m_verified = 0;
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
      if (m_checksums) {
        m_crc = framing::crc32c(m_reassembler.current_chunk(), m_crc);
        m_in_trailer = true;
        continue;
      }
      if (!apply(m_pending, error, why)) return pos;
      continue;
    }
    if (m_in_trailer) {
      if (!gather(m_trailer, m_trailer_len, in, pos)) return pos;
      m_trailer_len = 0;
      m_in_trailer = false;
      std::uint32_t sent = 0;
      for (std::size_t i = 0; i < framing::kTrailerSize; ++i) sent |= std::to_integer<std::uint32_t>(m_trailer[i]) << (8 * i);
      if (sent != m_crc) {
        damaged(error, why, "its checksum does not match");
        return pos;
      }
      ++m_verified;
      if (!apply(m_pending, error, why)) return pos;
      continue;
    }
    const std::byte* header = nullptr;
    if (m_carry_len > 0 || in.size() - pos < framing::kHeaderSize) {
      if (!gather(m_carry, m_carry_len, in, pos)) return pos;
      m_carry_len = 0;
      header = m_carry.data();
    } else {
      header = in.data() + pos;
      pos += framing::kHeaderSize;
    }
    const std::span<const std::byte, framing::kHeaderSize> encoded(header, framing::kHeaderSize);
    error = framing::decode_header(encoded, m_owner.max_chunk(), m_pending, why);
    if (error != Errc{}) {
      if (m_checksums) damaged(error, why, why);
      return pos;
    }
    if (m_checksums) m_crc = framing::crc32c(encoded);
    if (m_pending.type == framing::FrameType::data) {
      // The chunk's checks (continuity, size) come first; it takes effect after its payload
      // (and trailer).
      error = m_reassembler.begin_chunk(m_pending, why);
      if (error != Errc{}) {
        if (m_checksums) damaged(error, why, why);
        return pos;
      }
      m_in_payload = true;
      m_round_progress = true;
      continue;
    }
    if (m_checksums) {
      m_in_trailer = true;
      continue;
    }
    if (!apply(m_pending, error, why)) return pos;
  }
}

void FrameReader::damaged(Errc& error, std::string& why, const std::string& what) {
  // With checksums, bytes that do not make a valid frame before its checksum could vouch for
  // it were damaged on the way (a lost or altered byte shifts or spoils what follows): the
  // connection is lost, the session resumes and resends what was not acknowledged. A peer
  // whose every connection is damaged before a single frame checks out is refused instead
  // (a lossy link still carries verified frames, acks at least, between its faults).
  const unsigned in_a_row = m_session->damaged_connection(m_verified > 0);
  if (in_a_row > kMaxDamagedInARow) {
    error = Errc::protocol_error;
    why = "a frame damaged on the way (" + what + "), on " + std::to_string(in_a_row) +
          " connections in a row without one good frame: the session ends";
    return;
  }
  error = Errc::peer_lost;
  why = "a frame damaged on the way (" + what + "); the session resumes on a new connection";
}

bool FrameReader::apply(const framing::FrameHeader& h, Errc& error, std::string& why) {
  switch (h.type) {
    case framing::FrameType::data:
      if (m_reassembler.message_done()) {
        m_round_delivered = true;
        Bytes message = m_reassembler.take();
        m_unwoken_bytes += message.size();
        ++m_delivered;
        if (!m_owner.deliver(m_session, std::move(message), false)) m_paused = true;
      }
      return true;
    case framing::FrameType::ack:
      error = m_session->on_ack(h.a, h.b, why);
      return error == Errc{};
    case framing::FrameType::keepalive:
      return true;
    case framing::FrameType::close:
      if (m_defer_close) {
        m_close_reason = static_cast<Errc>(h.a);
        m_close_pending = true;
        return false;
      }
      m_session->on_peer_close(static_cast<Errc>(h.a));
      return true;
  }
  return true;
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
