// SPDX-License-Identifier: Apache-2.0
// Segment: a mapped shared-memory region holding one ring (layout.hpp), named or anonymous,
// on hugepages when asked and available. Creation, validation on join, stale-name reclaim.
// Layer: shm/.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "ferry/shm/layout.hpp"

namespace ferry::shm {

using layout::RingKind;

/// Hugepage policy. `prefer`: 1 GiB pages (for segments of at least 512 MiB), then 2 MiB,
/// then normal pages with transparent hugepages advised; what was used is in `info()`.
/// `require`: hugepages or Errc::unavailable. `off`: normal pages.
enum class HugePages { off, prefer, require };

/// What to do when `create` finds a segment of that name whose processes are all dead.
enum class OnStale { reclaim, report };

/// The ring a segment holds: checked against the header when joining.
struct RingSpec {
  RingKind kind = RingKind::byte_ring;
  std::uint64_t capacity = 0;   ///< bytes (byte ring) or slots; a power of two. 0 on open: any
  std::uint64_t slot_size = 0;  ///< bytes per slot (typed/overwrite rings). 0 on open: any
};

struct SegmentOptions {
  HugePages huge_pages = HugePages::off;
  /// hugetlbfs mount for named hugepage segments; empty: the mounts in /proc/mounts.
  std::string hugetlbfs_dir{};
  unsigned mode = 0600;  ///< permissions of a named segment (owner-only by default)
  OnStale on_stale = OnStale::reclaim;
  bool prefault = true;  ///< populate every page at map time
  /// How long `open` waits for a segment that does not exist yet or is still being
  /// initialised by its creator.
  std::chrono::milliseconds open_timeout{0};
};

/// What backs a mapped segment.
struct SegmentInfo {
  std::string name;         ///< segment name ("" for anonymous)
  std::string path;         ///< file backing a named segment ("" for anonymous)
  std::string backing;      ///< "posix-shm", "hugetlbfs", "memfd", "memfd-hugetlb"
  std::size_t page_size{};  ///< page size in use (4096, 2 MiB or 1 GiB)
  bool thp_advised{};       ///< normal pages with madvise(MADV_HUGEPAGE)
  std::string fallback;     ///< why hugepages were not used, when they were preferred
  std::size_t mapped_bytes{};
  bool creator{};           ///< this process created the segment
};

struct HeaderCopy;  // internal: a validated copy of a segment header

/// A mapped segment. Move-only; unmaps on destruction. A named segment is unlinked on
/// destruction by its creator, and by a joiner that finds the creator dead, so no file
/// outlives its processes. Thread-safety: the object itself is not synchronised; the rings
/// built on it define what may run concurrently.
class Segment {
 public:
  /// Creates a named segment (race-free: O_EXCL; an existing segment is joined by
  /// `create_or_open`, refused by `create`). Throws ferry::Error: address_in_use (exists
  /// and alive, or stale with OnStale::report), invalid_argument (bad name or spec),
  /// permission_denied, unavailable (hugepages required but not available), system.
  static Segment create(std::string_view name, const RingSpec& spec,
                        const SegmentOptions& options = {});

  /// Joins a named segment, validating every header field against `expect`.
  /// Throws ferry::Error: not_found, version_mismatch, protocol_error (not a ferry segment,
  /// corrupt header), invalid_argument (kind/capacity/slot size differ), timed_out
  /// (still initialising after open_timeout), permission_denied, system.
  static Segment open(std::string_view name, const RingSpec& expect,
                      const SegmentOptions& options = {});

  /// Joins the segment if it exists and is alive, creates it otherwise.
  static Segment create_or_open(std::string_view name, const RingSpec& spec,
                                const SegmentOptions& options = {});

  /// Creates an anonymous segment (memfd) to hand to another process as a descriptor.
  static Segment create_anonymous(const RingSpec& spec, const SegmentOptions& options = {});

  /// Joins an anonymous segment from a descriptor (duplicated; the caller keeps `fd`).
  static Segment open_fd(int fd, const RingSpec& expect, const SegmentOptions& options = {});

  /// Unlinks a named segment wherever it lives. Returns false if there was none.
  static bool remove(std::string_view name, const SegmentOptions& options = {});

  Segment(Segment&& other) noexcept;
  Segment& operator=(Segment&& other) noexcept;
  Segment(const Segment&) = delete;
  Segment& operator=(const Segment&) = delete;
  ~Segment();

  [[nodiscard]] layout::Control& control() const noexcept { return *m_control; }
  [[nodiscard]] std::byte* data() const noexcept { return m_base + layout::kDataOffset; }
  [[nodiscard]] std::byte* base() const noexcept { return m_base; }
  [[nodiscard]] const SegmentInfo& info() const noexcept { return m_info; }
  /// The ring's geometry as validated when the segment was created or joined (a private
  /// copy: later writes to the shared header by a peer do not change it).
  [[nodiscard]] const RingSpec& spec() const noexcept { return m_spec; }
  /// Descriptor of the backing file (for anonymous segments: pass it to the peer).
  [[nodiscard]] int fd() const noexcept { return m_fd; }

 private:
  Segment() = default;
  // Adopts a new mapping of a segment this process created, prefaults it, writes the header.
  void finish_create(std::byte* base, std::size_t bytes, const RingSpec& spec, bool prefault_pages);
  // Validates a copy of a joined segment's header and keeps it as the ring's geometry.
  void adopt(const HeaderCopy& header, std::size_t file_size, const RingSpec& expect,
             const std::string& what);
  void reset() noexcept;

  std::byte* m_base = nullptr;
  layout::Control* m_control = nullptr;
  int m_fd = -1;
  SegmentInfo m_info;
  std::uint64_t m_inode = 0;  // to unlink only the file we mapped
  std::uint64_t m_device = 0;
  RingSpec m_spec{};
  bool m_owned = false;  // created by us, or joined and validated: may unlink the name
};

/// The name of the file a named segment uses in /dev/shm or on a hugetlbfs mount.
std::string segment_file_name(std::string_view name);

}  // namespace ferry::shm
