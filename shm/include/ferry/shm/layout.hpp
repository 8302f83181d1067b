// SPDX-License-Identifier: Apache-2.0
// The on-segment layout shared by every ring kind: header, control lines, record format.
// Layer: shm/ (standalone). Drawn once here; every offset is checked by static_assert.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace ferry::shm::layout {

// Segment image (byte offsets from the start of the mapping):
//
//     0 +--------------------------------------------------------------------+
//       | SegmentHeader (256 B): magic "FERRYSHM", layout version, ring kind, |
//       | state word (blank -> initialising -> ready, by CAS), capacity,       |
//       | slot size, data offset, segment size, page size, creator identity,   |
//       | epoch. Written once by the creator before state = ready.             |
//   256 +--------------------------------------------------------------------+
//       | ProducerLine (128 B): write_pos (published), producer identity       |
//   384 +--------------------------------------------------------------------+
//       | ConsumerLine (128 B): read_pos (published), consumer identity        |
//   512 +--------------------------------------------------------------------+
//       | WaitLine (128 B): futex words and closed flags. Written only when a  |
//       | side sleeps, wakes the other or closes, so both sides can read it on |
//       | every call without stealing the other's line.                        |
//   640 +--------------------------------------------------------------------+
//       | unused                                                               |
//  4096 +--------------------------------------------------------------------+
//       | data region: `capacity` bytes (byte ring) or `capacity` slots        |
//       +--------------------------------------------------------------------+
//
// The producer's and the consumer's hot fields are 128 bytes apart (two 64-byte lines),
// so the adjacent-line prefetcher does not pair them. Positions are 64-bit and only grow;
// a ring index is `position & (capacity - 1)`.
//
// Byte-ring record (8-byte aligned position; the header word is written after the payload,
// and the publication of write_pos that covers the record is the commit point):
//
//    63                     32 31                      0
//   +-------------------------+-------------------------+
//   |  type: 1 data,          |  length: payload bytes  |  header word (std::uint64_t)
//   |  2 padding, else corrupt|                         |
//   +-------------------------+-------------------------+
//   |  payload (length bytes), then unspecified bytes up to a multiple of 8             |
//   +-----------------------------------------------------------------------------------+
//
// A padding record fills the tail of the region when the next record does not fit before
// the end, so every payload is contiguous; its length runs to the end of the region.
// A consumer reads only below the published write_pos and checks every header against it.
//
// Overwrite-ring slot: [sequence word][payload words...]; sequence 2*pos+1 while slot `pos`
// is being written, 2*pos+2 once written (see overwrite_ring.hpp).

inline constexpr std::uint64_t kMagic = 0x4d48535952524546ULL;  // "FERRYSHM" little-endian
inline constexpr std::uint32_t kLayoutVersion = 1;
inline constexpr std::size_t kLineSize = 128;
inline constexpr std::size_t kDataOffset = 4096;

inline constexpr std::size_t kRecordAlign = 8;
inline constexpr std::size_t kRecordHeaderSize = 8;
inline constexpr std::uint32_t kRecordData = 1;
inline constexpr std::uint32_t kRecordPadding = 2;

enum class RingKind : std::uint32_t { byte_ring = 1, typed_ring = 2, overwrite_ring = 3 };

/// State word of the segment header.
enum class SegmentState : std::uint32_t { blank = 0, initialising = 1, ready = 2 };

/// A process identity that survives pid reuse: pid in the low 22 bits (Linux pid_max is at
/// most 2^22), the process start time (clock ticks since boot) above. 0 means "nobody".
using Identity = std::uint64_t;
inline constexpr unsigned kIdentityPidBits = 22;

struct SegmentHeader {
  std::uint64_t magic;
  std::uint32_t layout_version;
  std::uint32_t kind;                // RingKind
  std::atomic<std::uint32_t> state;  // SegmentState
  std::uint32_t flags;               // reserved, 0
  std::uint64_t capacity;            // byte ring: data bytes; typed/overwrite: slots
  std::uint64_t slot_size;           // bytes per slot (byte ring: kRecordAlign)
  std::uint64_t data_offset;         // kDataOffset
  std::uint64_t segment_size;        // bytes mapped (rounded up to page_size)
  std::uint64_t page_size;           // page size backing the segment
  std::uint64_t creator;             // Identity of the creating process
  std::uint64_t epoch;               // distinguishes incarnations of one name
  std::uint64_t reserved[22];
};

struct alignas(kLineSize) ProducerLine {
  std::atomic<std::uint64_t> write_pos;  // published producer position
  std::atomic<std::uint64_t> owner;      // Identity of the attached producer, 0 if none
};

struct alignas(kLineSize) ConsumerLine {
  std::atomic<std::uint64_t> read_pos;  // published consumer position
  std::atomic<std::uint64_t> owner;     // Identity of the attached consumer, 0 if none
};

/// consumer_sleeping/producer_sleeping: 0 awake; 1 asleep on the futex or on the first wake-up
/// descriptor it gave its peer; kSleepingSecond asleep on the second one (an external waiter
/// with two waiting threads, see RingEnd::set_peer_wake_fd()); kSleepingSoon asleep on the
/// first descriptor, but a thread of that side has just stopped polling and is likely to poll
/// again within microseconds (it left a get() with a message): the waker first waits up to
/// kSoonWaitNs for the announcement to be withdrawn, and makes no system call if it is. Any
/// other value wakes the first descriptor.
inline constexpr std::uint32_t kSleepingSecond = 2;
inline constexpr std::uint32_t kSleepingSoon = 3;
inline constexpr std::int64_t kSoonWaitNs = 5'000;

struct alignas(kLineSize) WaitLine {
  std::atomic<std::uint32_t> consumer_sleeping;  // futex word: 1 (or 2, see kSleepingSecond) while the consumer may sleep
  std::atomic<std::uint32_t> producer_sleeping;  // futex word: 1 while the producer may sleep
  std::atomic<std::uint32_t> producer_closed;    // 1 once the producer closed (no more data)
  std::atomic<std::uint32_t> consumer_closed;    // 1 once the consumer closed (no more reads)
  std::atomic<std::uint32_t> readers_sleeping;   // overwrite ring: 1 while a reader may sleep
  std::atomic<std::uint32_t> readers_wake_seq;   // overwrite ring: futex word readers wait on
};

/// The whole control block at the start of a segment.
struct Control {
  SegmentHeader header;
  ProducerLine producer;
  ConsumerLine consumer;
  WaitLine wait;
};

static_assert(std::atomic<std::uint64_t>::is_always_lock_free);
static_assert(std::atomic<std::uint32_t>::is_always_lock_free);
static_assert(sizeof(std::atomic<std::uint64_t>) == 8 && sizeof(std::atomic<std::uint32_t>) == 4);
static_assert(std::is_standard_layout_v<Control>);
static_assert(sizeof(SegmentHeader) == 256);
static_assert(offsetof(SegmentHeader, state) == 16);
static_assert(offsetof(SegmentHeader, capacity) == 24);
static_assert(offsetof(SegmentHeader, epoch) == 72);
static_assert(offsetof(Control, producer) == 256);
static_assert(offsetof(Control, consumer) == 384);
static_assert(offsetof(Control, wait) == 512);
static_assert(offsetof(Control, consumer) - offsetof(Control, producer) >= 2 * 64,
              "producer and consumer fields must be two cache lines apart");
static_assert(sizeof(Control) == 640);
static_assert(sizeof(Control) <= kDataOffset);
static_assert(kDataOffset % kLineSize == 0);

inline constexpr std::uint64_t make_record_header(std::uint32_t type, std::uint32_t length) {
  return (static_cast<std::uint64_t>(type) << 32) | length;
}
inline constexpr std::uint32_t record_type(std::uint64_t word) {
  return static_cast<std::uint32_t>(word >> 32);
}
inline constexpr std::uint32_t record_length(std::uint64_t word) {
  return static_cast<std::uint32_t>(word);
}
/// Bytes a record with `length` payload bytes occupies in the region.
inline constexpr std::uint64_t record_size(std::uint64_t length) {
  return (kRecordHeaderSize + length + kRecordAlign - 1) & ~std::uint64_t{kRecordAlign - 1};
}
static_assert(record_size(0) == 8 && record_size(1) == 16 && record_size(8) == 16);

inline constexpr Identity make_identity(std::uint64_t pid, std::uint64_t start_time) {
  return (start_time << kIdentityPidBits) | pid;
}
inline constexpr std::uint64_t identity_pid(Identity id) {
  return id & ((std::uint64_t{1} << kIdentityPidBits) - 1);
}
inline constexpr std::uint64_t identity_start_time(Identity id) { return id >> kIdentityPidBits; }

}  // namespace ferry::shm::layout
