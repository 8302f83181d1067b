// SPDX-License-Identifier: Apache-2.0
// Receive side of the framing: checks each data chunk against the message in progress and
// says where its bytes go (straight into a buffer of the message's size). Layer: src/framing.
#pragma once

#include <cstddef>
#include <cstdint>
#include <new>
#include <span>
#include <string>

#include <ferry/bytes.hpp>
#include <ferry/error.hpp>

#include "framing/frame.hpp"

namespace ferry::framing {

/// One direction of one connection. Not thread-safe (one reader).
class Reassembler {
 public:
  /// Starts a connection: the next message must carry id next_expected. Drops a partial one.
  void reset(std::uint64_t next_expected, std::uint64_t max_message) noexcept {
    m_next_id = next_expected;
    m_max_message = max_message;
    m_message = Bytes();
    m_received = 0;
    m_in_message = false;
    m_chunk_left = 0;
  }

  /// A decoded data header (decode_header already checked offset + length <= total). Checks it
  /// continues the stream: the next id at offset 0, or the message in progress at the offset
  /// reached, with the same total. A new message larger than max_message is
  /// Errc::message_too_large (the peer ignored the limit it was told). Allocates the message
  /// buffer on its first chunk.
  [[nodiscard]] Errc begin_chunk(const FrameHeader& h, std::string& why) {
    if (!m_in_message) {
      if (h.a != m_next_id || h.b != 0) {
        why = "data frame for message " + std::to_string(h.a) + " at offset " +
              std::to_string(h.b) + " where message " + std::to_string(m_next_id) +
              " at offset 0 was due";
        return Errc::protocol_error;
      }
      if (h.c > m_max_message) {
        why = "message of " + std::to_string(h.c) + " bytes over the limit of " +
              std::to_string(m_max_message);
        return Errc::message_too_large;
      }
      try {
        m_message = Bytes::pooled(static_cast<std::size_t>(h.c));
      } catch (const std::bad_alloc&) {
        // The announced size is within our limit but the memory is not there: refuse this
        // connection's message rather than let the exception end the process.
        why = "no memory for a message of " + std::to_string(h.c) + " bytes";
        return Errc::message_too_large;
      }
      m_received = 0;
      m_in_message = true;
    } else if (h.a != m_next_id || h.b != m_received || h.c != m_message.size()) {
      why = "data frame (message " + std::to_string(h.a) + ", offset " + std::to_string(h.b) +
            ", total " + std::to_string(h.c) + ") does not continue message " +
            std::to_string(m_next_id) + " at offset " + std::to_string(m_received);
      return Errc::protocol_error;
    }
    m_chunk_left = h.length;
    m_chunk_start = m_received;
    m_chunk_size = h.length;
    return Errc{};
  }
  /// The bytes of the chunk begun last (complete once chunk_done()), for its checksum.
  [[nodiscard]] std::span<const std::byte> current_chunk() const noexcept {
    return m_chunk_size == 0 ? std::span<const std::byte>() : m_message.span().subspan(m_chunk_start, m_chunk_size);
  }

  /// Where the rest of the current chunk goes.
  [[nodiscard]] std::span<std::byte> chunk_target() noexcept {
    return m_message.span().subspan(static_cast<std::size_t>(m_received), m_chunk_left);
  }
  /// n bytes of the chunk were written into chunk_target(). Requires: n <= its size.
  void advance(std::size_t n) noexcept {
    m_received += n;
    m_chunk_left -= n;
  }
  [[nodiscard]] bool chunk_done() const noexcept { return m_chunk_left == 0; }
  /// The current message is complete (after its last chunk).
  [[nodiscard]] bool message_done() const noexcept {
    return m_in_message && m_chunk_left == 0 && m_received == m_message.size();
  }
  /// Takes the completed message; the next one is expected. Requires: message_done().
  [[nodiscard]] Bytes take() noexcept {
    m_in_message = false;
    ++m_next_id;
    return std::move(m_message);
  }
  [[nodiscard]] std::uint64_t next_expected() const noexcept { return m_next_id; }

 private:
  Bytes m_message;
  std::uint64_t m_next_id = 1;
  std::uint64_t m_max_message = 0;
  std::uint64_t m_received = 0;
  std::size_t m_chunk_left = 0;
  std::size_t m_chunk_start = 0;
  std::size_t m_chunk_size = 0;
  bool m_in_message = false;
};

}  // namespace ferry::framing
