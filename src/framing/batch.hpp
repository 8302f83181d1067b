// SPDX-License-Identifier: Apache-2.0
// Send side of the framing: gathers frames into one write. Headers and small payloads are
// copied into a staging buffer (merging); large payloads are referenced where they lie
// (scatter-gather, no copy). Layer: src/framing.
#pragma once

#include <cstddef>
#include <cstring>
#include <span>
#include <vector>

#include "framing/crc32c.hpp"
#include "framing/frame.hpp"

namespace ferry::framing {

/// One write's worth of frames. Not thread-safe. The spans returned by buffers() stay valid
/// until clear() (the staging buffer never reallocates while a batch is built).
class Batch {
 public:
  /// Payloads up to kCopyBelow bytes are copied into the staging buffer: copying 2 KiB costs
  /// less than another gather entry, and lets one write carry merge_size bytes of them.
  static constexpr std::size_t kCopyBelow = 2048;
  static constexpr std::size_t kMaxBuffers = 64;

  explicit Batch(std::size_t merge_size)
      : m_merge_size(merge_size < 4096 ? 4096 : merge_size) {
    // Frames are added while !full(): the last one may start just below merge_size and carry
    // kCopyBelow bytes, and Session::fill may follow it with an ack and a close frame.
    m_staging.resize(m_merge_size + kCopyBelow + 3 * (kHeaderSize + kTrailerSize));
    m_buffers.reserve(kMaxBuffers + 1);
  }

  void clear() noexcept {
    m_buffers.clear();
    m_staged = 0;
    m_bytes = 0;
    m_open_start = 0;
  }
  /// Each frame added from now on carries its CRC-32C trailer (kHelloChecksums was agreed).
  /// Set while the batch is empty.
  void set_checksums(bool on) noexcept { m_checksums = on; }
  [[nodiscard]] bool empty() const noexcept { return m_bytes == 0; }
  [[nodiscard]] std::size_t bytes() const noexcept { return m_bytes; }
  /// No more frames should be added: the merged bytes reached merge_size, or the write has as
  /// many pieces as one gather write should carry.
  [[nodiscard]] bool full() const noexcept {
    return m_staged >= m_merge_size || m_buffers.size() >= kMaxBuffers;
  }
  /// Adds a frame with its payload (header.length == payload.size()), and its trailer when
  /// checksums are on.
  void add(const FrameHeader& header, std::span<const std::byte> payload) {
    const std::span<std::byte, kHeaderSize> encoded(m_staging.data() + m_staged, kHeaderSize);
    encode_header(header, encoded);
    m_staged += kHeaderSize;
    if (payload.size() <= kCopyBelow) {
      if (!payload.empty()) std::memcpy(m_staging.data() + m_staged, payload.data(), payload.size());
      m_staged += payload.size();
    } else {
      close_staged();
      m_buffers.push_back(payload);
    }
    m_bytes += kHeaderSize + payload.size();
    if (m_checksums) {
      const std::uint32_t crc = crc32c(payload, crc32c(encoded));
      for (std::size_t i = 0; i < kTrailerSize; ++i) m_staging[m_staged + i] = static_cast<std::byte>(crc >> (8 * i));
      m_staged += kTrailerSize;
      m_bytes += kTrailerSize;
    }
  }
  /// The pieces of the write, in order.
  [[nodiscard]] const std::vector<std::span<const std::byte>>& buffers() {
    close_staged();
    return m_buffers;
  }

 private:
  void close_staged() {
    if (m_staged > m_open_start) {
      m_buffers.emplace_back(m_staging.data() + m_open_start, m_staged - m_open_start);
      m_open_start = m_staged;
    }
  }

  std::size_t m_merge_size;
  std::vector<std::byte> m_staging;
  std::vector<std::span<const std::byte>> m_buffers;
  std::size_t m_staged = 0;      // bytes used in m_staging
  std::size_t m_open_start = 0;  // start of the staged run not yet in m_buffers
  std::size_t m_bytes = 0;
  bool m_checksums = false;
};

}  // namespace ferry::framing
