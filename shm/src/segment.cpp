// SPDX-License-Identifier: Apache-2.0
// Segment creation, joining and validation; hugepage policy; stale-name reclaim.
// Layer: shm/. Named POSIX segments go through Boost.Interprocess; every segment is mapped
// by one mmap path so hugetlb, prefault and validation behave the same for all backings.
#include "ferry/shm/segment.hpp"

#include <fcntl.h>
#include <linux/memfd.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <boost/interprocess/exceptions.hpp>
#include <boost/interprocess/permissions.hpp>
#include <boost/interprocess/shared_memory_object.hpp>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <optional>
#include <sstream>
#include <thread>
#include <utility>
#include <vector>

#include "ferry/error.hpp"
#include "ferry/shm/process.hpp"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14; older kernels answer EINVAL and we touch pages
#endif

namespace ferry::shm {
namespace bip = boost::interprocess;
using layout::Control;
using layout::SegmentState;

namespace {

constexpr std::size_t k4K = 4096;
constexpr std::size_t k2M = std::size_t{2} << 20;
constexpr std::size_t k1G = std::size_t{1} << 30;
constexpr std::uint64_t kMaxCapacityBytes = std::uint64_t{1} << 40;
constexpr const char* kDevShm = "/dev/shm/";
constexpr int kSizeSeals = F_SEAL_SHRINK | F_SEAL_GROW;

[[noreturn]] void fail(Errc code, const std::string& what) { throw Error(code, what); }

// A stale segment reported (OnStale::report): create_or_open must not join it.
class StaleSegment : public Error {
 public:
  using Error::Error;
};

Errc errc_from_errno(int err) {
  switch (err) {
    case EACCES:
    case EPERM: return Errc::permission_denied;
    case ENOENT: return Errc::not_found;
    case EEXIST: return Errc::address_in_use;
    case ENOMEM:
    case ENOSPC: return Errc::unavailable;
    case EINVAL: return Errc::invalid_argument;
    default: return Errc::system;
  }
}

[[noreturn]] void fail_errno(const std::string& what, int err) {
  fail(errc_from_errno(err), what + ": " + std::strerror(err) + " (errno " + std::to_string(err) + ")");
}

std::string human_size(std::size_t bytes) {
  if (bytes >= k1G && bytes % k1G == 0) return std::to_string(bytes / k1G) + " GiB";
  if (bytes >= (1u << 20) && bytes % (1u << 20) == 0) return std::to_string(bytes >> 20) + " MiB";
  if (bytes >= 1024 && bytes % 1024 == 0) return std::to_string(bytes >> 10) + " KiB";
  return std::to_string(bytes) + " B";
}

const char* kind_name(std::uint32_t kind) {
  switch (static_cast<RingKind>(kind)) {
    case RingKind::byte_ring: return "byte ring";
    case RingKind::typed_ring: return "typed ring";
    case RingKind::overwrite_ring: return "overwrite ring";
  }
  return "unknown ring kind";
}

void validate_name(std::string_view name) {
  if (name.empty() || name.size() > 200)
    fail(Errc::invalid_argument, "segment name must have 1 to 200 characters");
  if (name.front() == '.') fail(Errc::invalid_argument, "segment name must not start with '.'");
  for (const char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    if (!ok)
      fail(Errc::invalid_argument,
           "segment name '" + std::string(name) + "' may only use letters, digits, '.', '_', '-'");
  }
}

bool is_pow2(std::uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }
std::uint64_t round_up(std::uint64_t v, std::uint64_t to) { return (v + to - 1) / to * to; }

// Checks a spec for creation and returns the bytes of its data region.
std::uint64_t checked_data_bytes(const RingSpec& spec) {
  if (!is_pow2(spec.capacity))
    fail(Errc::invalid_argument,
         "ring capacity must be a power of two, got " + std::to_string(spec.capacity));
  if (spec.kind == RingKind::byte_ring) {
    if (spec.capacity < 64) fail(Errc::invalid_argument, "byte ring capacity must be >= 64 bytes");
    if (spec.capacity > kMaxCapacityBytes) fail(Errc::invalid_argument, "ring capacity too large");
    return spec.capacity;
  }
  if (spec.slot_size == 0 || spec.slot_size % 8 != 0)
    fail(Errc::invalid_argument, "slot size must be a non-zero multiple of 8");
  if (spec.capacity > kMaxCapacityBytes / spec.slot_size)
    fail(Errc::invalid_argument, "ring capacity too large");
  return spec.capacity * spec.slot_size;
}

std::uint64_t new_epoch() {
  std::uint64_t epoch = 0;
  if (::getrandom(&epoch, sizeof epoch, 0) != sizeof epoch)
    epoch = static_cast<std::uint64_t>(
                std::chrono::steady_clock::now().time_since_epoch().count()) ^
            self_identity();
  return epoch | 1;  // never 0
}

struct HugeMount {
  std::string dir;
  std::size_t page_size;
};

std::size_t default_huge_page_size() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  std::size_t kib = 0;
  while (meminfo >> key) {
    if (key == "Hugepagesize:" && meminfo >> kib) return kib * 1024;
    meminfo.ignore(256, '\n');
  }
  return k2M;
}

std::size_t parse_page_size(std::string_view s) {
  std::size_t value = 0;
  std::size_t i = 0;
  for (; i < s.size() && s[i] >= '0' && s[i] <= '9'; ++i) value = value * 10 + (s[i] - '0');
  const char unit = i < s.size() ? s[i] : 'B';
  switch (unit) {
    case 'K': case 'k': return value << 10;
    case 'M': case 'm': return value << 20;
    case 'G': case 'g': return value << 30;
    default: return value;
  }
}

std::vector<HugeMount> hugetlbfs_mounts(const SegmentOptions& options) {
  std::vector<HugeMount> mounts;
  std::ifstream in("/proc/mounts");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string device, dir, type, opts;
    if (!(fields >> device >> dir >> type >> opts) || type != "hugetlbfs") continue;
    std::size_t page = default_huge_page_size();
    if (const auto at = opts.find("pagesize="); at != std::string::npos)
      page = parse_page_size(std::string_view(opts).substr(at + 9));
    if (!options.hugetlbfs_dir.empty() && dir != options.hugetlbfs_dir) continue;
    mounts.push_back({dir, page});
  }
  return mounts;
}

// Where a named segment of this name currently exists, if anywhere.
struct Location {
  std::string path;
  bool posix_shm;  // in /dev/shm through Boost.Interprocess
};

std::optional<Location> find_existing(const std::string& file, const SegmentOptions& options) {
  struct stat st {};
  if (::stat((kDevShm + file).c_str(), &st) == 0) return Location{kDevShm + file, true};
  for (const auto& m : hugetlbfs_mounts(options)) {
    const std::string path = m.dir + "/" + file;
    if (::stat(path.c_str(), &st) == 0) return Location{path, false};
  }
  return std::nullopt;
}

// Opens an existing named segment's file; -1 with errno set if it is gone.
int open_existing(const std::string& file, const Location& where) {
  if (!where.posix_shm) return ::open(where.path.c_str(), O_RDWR | O_CLOEXEC);
  try {
    bip::shared_memory_object obj(bip::open_only, file.c_str(), bip::read_write);
    return ::fcntl(obj.get_mapping_handle().handle, F_DUPFD_CLOEXEC, 0);
  } catch (const bip::interprocess_exception& e) {
    errno = e.get_native_error() != 0 ? e.get_native_error() : ENOENT;
    return -1;
  }
}

// Creates a POSIX shm object exclusively; -1 with errno = EEXIST if the name is taken.
int create_posix_shm(const std::string& file, unsigned mode) {
  try {
    bip::permissions perm(mode);
    bip::shared_memory_object obj(bip::create_only, file.c_str(), bip::read_write, perm);
    return ::fcntl(obj.get_mapping_handle().handle, F_DUPFD_CLOEXEC, 0);
  } catch (const bip::interprocess_exception& e) {
    errno = e.get_error_code() == bip::already_exists_error ? EEXIST
            : e.get_native_error() != 0                   ? e.get_native_error()
                                                          : EIO;
    return -1;
  }
}

void unlink_location(const std::string& file, const Location& where) {
  if (where.posix_shm)
    bip::shared_memory_object::remove(file.c_str());
  else
    ::unlink(where.path.c_str());
}

void* map_fd(int fd, std::size_t bytes) {
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  return p == MAP_FAILED ? nullptr : p;
}

// Faults every page in now, so the first messages do not pay for page faults.
void prefault(std::byte* base, std::size_t bytes, std::size_t page) {
  if (::madvise(base, bytes, MADV_POPULATE_WRITE) == 0) return;
  for (std::size_t off = 0; off < bytes; off += page) {
    // relaxed: a fetch_add of 0 only faults the page in writable; it orders nothing.
    std::atomic_ref<std::uint32_t>(*reinterpret_cast<std::uint32_t*>(base + off))
        .fetch_add(0, std::memory_order_relaxed);
  }
}

// Claims a new segment: blank -> initialising, creator identity first, so a process that
// finds the name while we prefault sees a live creator instead of a stale segment.
void begin_header(Control& ctl) {
  auto expected = static_cast<std::uint32_t>(SegmentState::blank);
  // relaxed: this process created the file exclusively; the CAS only asserts the blank state
  // (a joiner waits for `ready` in init_header() before reading any field).
  if (!ctl.header.state.compare_exchange_strong(
          expected, static_cast<std::uint32_t>(SegmentState::initialising),
          std::memory_order_relaxed, std::memory_order_relaxed))
    fail(Errc::internal, "new segment is not blank");
  ctl.header.creator = self_identity();
}

void init_header(Control& ctl, const RingSpec& spec, std::size_t segment_size,
                 std::size_t page_size) {
  ctl.header.magic = layout::kMagic;
  ctl.header.layout_version = layout::kLayoutVersion;
  ctl.header.kind = static_cast<std::uint32_t>(spec.kind);
  ctl.header.flags = 0;
  ctl.header.capacity = spec.capacity;
  ctl.header.slot_size = spec.kind == RingKind::byte_ring ? layout::kRecordAlign : spec.slot_size;
  ctl.header.data_offset = layout::kDataOffset;
  ctl.header.segment_size = segment_size;
  ctl.header.page_size = page_size;
  ctl.header.epoch = new_epoch();
  // sync(segment.ready) release: every header field above is visible before `ready`.
  // Partner: acquire load of state in validate_header().
  ctl.header.state.store(static_cast<std::uint32_t>(SegmentState::ready),
                         std::memory_order_release);
}

// A private copy of the header's plain fields: validated once, then the only source of the
// ring's geometry, so a peer that rewrites the shared header later cannot change it.
}  // namespace

struct HeaderCopy {
  std::uint64_t magic, capacity, slot_size, data_offset, segment_size, page_size, creator;
  std::uint32_t layout_version, kind;
};

namespace {

HeaderCopy copy_header(const Control& ctl) {
  const auto& h = ctl.header;
  return {h.magic,     h.capacity,  h.slot_size,      h.data_offset, h.segment_size,
          h.page_size, h.creator,   h.layout_version, h.kind};
}

// Throws unless the header describes a valid segment of `file_size` bytes matching `expect`.
void validate_header(const HeaderCopy& h, std::size_t file_size, const RingSpec& expect,
                     const std::string& what) {
  if (h.magic != layout::kMagic) {
    std::ostringstream os;
    os << what << " is not a ferry segment (magic 0x" << std::hex << h.magic << ")";
    fail(Errc::protocol_error, os.str());
  }
  if (h.layout_version != layout::kLayoutVersion)
    fail(Errc::version_mismatch, what + " has layout version " + std::to_string(h.layout_version) +
                                     ", this library reads version " +
                                     std::to_string(layout::kLayoutVersion));
  if (h.kind < 1 || h.kind > 3)
    fail(Errc::protocol_error, what + " has a corrupt header: ring kind " + std::to_string(h.kind));
  if (h.kind != static_cast<std::uint32_t>(expect.kind))
    fail(Errc::invalid_argument, what + " holds a " + kind_name(h.kind) + ", expected a " +
                                     kind_name(static_cast<std::uint32_t>(expect.kind)));
  if (!is_pow2(h.capacity) || h.capacity > kMaxCapacityBytes)
    fail(Errc::protocol_error,
         what + " has a corrupt header: capacity " + std::to_string(h.capacity));
  if (expect.capacity != 0 && h.capacity != expect.capacity)
    fail(Errc::invalid_argument, what + " has capacity " + std::to_string(h.capacity) +
                                     ", expected " + std::to_string(expect.capacity));
  const bool byte_ring = h.kind == static_cast<std::uint32_t>(RingKind::byte_ring);
  if (byte_ring ? h.slot_size != layout::kRecordAlign
                : (h.slot_size == 0 || h.slot_size % 8 != 0 || h.slot_size > kMaxCapacityBytes))
    fail(Errc::protocol_error,
         what + " has a corrupt header: slot size " + std::to_string(h.slot_size));
  if (expect.slot_size != 0 && !byte_ring && h.slot_size != expect.slot_size)
    fail(Errc::invalid_argument, what + " has slot size " + std::to_string(h.slot_size) +
                                     ", expected " + std::to_string(expect.slot_size));
  if (h.data_offset != layout::kDataOffset)
    fail(Errc::protocol_error,
         what + " has a corrupt header: data offset " + std::to_string(h.data_offset));
  if (h.page_size != k4K && h.page_size != k2M && h.page_size != k1G)
    fail(Errc::protocol_error,
         what + " has a corrupt header: page size " + std::to_string(h.page_size));
  const std::uint64_t data_bytes = byte_ring ? h.capacity : h.capacity * h.slot_size;
  if (h.segment_size != file_size || h.capacity > kMaxCapacityBytes / h.slot_size ||
      h.segment_size < layout::kDataOffset + data_bytes)
    fail(Errc::protocol_error, what + " has a corrupt header: segment size " +
                                   std::to_string(h.segment_size) + " for a " +
                                   std::to_string(file_size) + "-byte file");
  if (h.creator == 0) fail(Errc::protocol_error, what + " has a corrupt header: no creator");
}

struct Mapping {
  std::byte* base = nullptr;
  std::size_t bytes = 0;
};

// True if no live process holds the segment (creator, producer, consumer), not counting this
// one when `except_self` (it is letting go). The one rule for reclaiming a stale name and for
// a joiner unlinking it. `holder` receives the pid of a live holder.
bool no_live_holder(const Control& ctl, bool except_self, std::string* holder = nullptr) {
  // relaxed: identities are only compared with /proc; no data is read through them.
  const layout::Identity ids[] = {ctl.header.creator,
                                  ctl.producer.owner.load(std::memory_order_relaxed),
                                  ctl.consumer.owner.load(std::memory_order_relaxed)};
  for (const auto id : ids) {
    if (id != 0 && !(except_self && id == self_identity()) && is_alive(id)) {
      if (holder != nullptr) *holder = "pid " + std::to_string(layout::identity_pid(id));
      return false;
    }
  }
  return true;
}

// A segment file whose creator never got as far as writing its identity is taken for
// abandoned once it is this old (a live creator writes it within milliseconds).
bool abandoned(const struct stat& st) {
  constexpr auto kCreationGrace = std::chrono::seconds(2);
  return std::chrono::system_clock::now().time_since_epoch() -
             std::chrono::seconds(st.st_mtim.tv_sec) > kCreationGrace;
}

// Unlinks `path` only if it still names the file (inode, device) we looked at.
void unlink_if_same(const std::string& file, const Location& where, std::uint64_t inode,
                    std::uint64_t device) {
  struct stat st {};
  if (::stat(where.path.c_str(), &st) == 0 && st.st_ino == inode && st.st_dev == device)
    unlink_location(file, where);
}

std::uint64_t segment_bytes(const RingSpec& spec) {
  return layout::kDataOffset + checked_data_bytes(spec);
}

}  // namespace

std::string segment_file_name(std::string_view name) { return "ferry." + std::string(name); }

Segment::Segment(Segment&& other) noexcept
    : m_base(std::exchange(other.m_base, nullptr)),
      m_control(std::exchange(other.m_control, nullptr)),
      m_fd(std::exchange(other.m_fd, -1)),
      m_info(std::move(other.m_info)),
      m_inode(other.m_inode),
      m_device(other.m_device),
      m_spec(other.m_spec),
      m_owned(std::exchange(other.m_owned, false)) {}

Segment& Segment::operator=(Segment&& other) noexcept {
  if (this != &other) {
    reset();
    m_base = std::exchange(other.m_base, nullptr);
    m_control = std::exchange(other.m_control, nullptr);
    m_fd = std::exchange(other.m_fd, -1);
    m_info = std::move(other.m_info);
    m_inode = other.m_inode;
    m_device = other.m_device;
    m_spec = other.m_spec;
    m_owned = std::exchange(other.m_owned, false);
  }
  return *this;
}

Segment::~Segment() { reset(); }

void Segment::finish_create(std::byte* base, std::size_t bytes, const RingSpec& spec,
                            bool prefault_pages) {
  m_base = base;
  m_info.mapped_bytes = bytes;
  m_control = reinterpret_cast<Control*>(base);
  m_spec = spec;
  if (spec.kind == RingKind::byte_ring) m_spec.slot_size = layout::kRecordAlign;
  begin_header(*m_control);
  m_owned = true;  // from here on the name is ours to unlink, even if the rest throws
  if (prefault_pages) prefault(m_base, bytes, m_info.page_size);
  init_header(*m_control, spec, bytes, m_info.page_size);
}

void Segment::adopt(const HeaderCopy& header, std::size_t file_size, const RingSpec& expect,
                    const std::string& what) {
  validate_header(header, file_size, expect, what);
  m_spec = {static_cast<RingKind>(header.kind), header.capacity, header.slot_size};
  m_info.page_size = header.page_size;
  m_owned = true;
}

void Segment::reset() noexcept {
  if (m_base != nullptr) {
    // A named segment is unlinked by its creator, or by a joiner once no other process
    // holds it, and only while the name still refers to the file we mapped. A refused join
    // (m_owned false) never unlinks.
    if (m_owned && !m_info.path.empty() &&
        (m_info.creator || no_live_holder(*m_control, /*except_self=*/true)))
      unlink_if_same(segment_file_name(m_info.name),
                     Location{m_info.path, m_info.backing == "posix-shm"}, m_inode, m_device);
    ::munmap(m_base, m_info.mapped_bytes);
  }
  if (m_fd >= 0) ::close(m_fd);
  m_base = nullptr;
  m_control = nullptr;
  m_fd = -1;
  m_owned = false;
}

namespace {

// Maps `fd` (a new, empty file) for `spec`, sizing it with `page`; nullopt (errno set) if
// the kernel refuses the size or the mapping (e.g. no free hugepages).
std::optional<Mapping> size_and_map(int fd, const RingSpec& spec, std::size_t page) {
  const std::size_t bytes = round_up(segment_bytes(spec), page);
  if (::ftruncate(fd, static_cast<off_t>(bytes)) != 0) return std::nullopt;
  // Allocate now: a full tmpfs or an empty hugepage pool is an error here, not a SIGBUS on
  // first touch.
  if (::fallocate(fd, 0, 0, static_cast<off_t>(bytes)) != 0 && errno != EOPNOTSUPP) return std::nullopt;
  void* p = map_fd(fd, bytes);
  if (p == nullptr) return std::nullopt;
  return Mapping{static_cast<std::byte*>(p), bytes};
}

// The active transparent-hugepage mode for shared memory: the bracketed word of
// /sys/kernel/mm/transparent_hugepage/shmem_enabled, or "" if unknown.
std::string shmem_thp_mode() {
  std::ifstream in("/sys/kernel/mm/transparent_hugepage/shmem_enabled");
  std::string word;
  while (in >> word)
    if (word.size() > 2 && word.front() == '[' && word.back() == ']')
      return word.substr(1, word.size() - 2);
  return "";
}

// Asks for transparent hugepages on a shared-memory mapping and records whether the kernel
// can honour it; never claims hugepages the kernel will not give.
void advise_thp(Mapping m, SegmentInfo& info) {
  const std::string mode = shmem_thp_mode();
  const bool advised = ::madvise(m.base, m.bytes, MADV_HUGEPAGE) == 0;
  info.thp_advised = advised && (mode == "advise" || mode == "always" || mode == "within_size" ||
                                 mode == "force");
  if (!info.thp_advised) {
    info.fallback += std::string(info.fallback.empty() ? "" : "; ") +
                     "transparent hugepages for shared memory are off (shmem_enabled=" +
                     (mode.empty() ? "unknown" : mode) + ")";
  }
}

}  // namespace

Segment Segment::create(std::string_view name, const RingSpec& spec,
                        const SegmentOptions& options) {
  validate_name(name);
  const std::string file = segment_file_name(name);
  const std::string what = "segment '" + std::string(name) + "'";
  checked_data_bytes(spec);

  for (int attempt = 0; attempt < 8; ++attempt) {
    if (const auto existing = find_existing(file, options)) {
      // Something holds the name: alive (refuse), initialising (refuse), or stale.
      const int fd = open_existing(file, *existing);
      if (fd < 0) {
        if (errno == ENOENT) continue;
        fail_errno("cannot inspect existing " + what + " at " + existing->path, errno);
      }
      struct stat st {};
      ::fstat(fd, &st);
      bool stale = false;
      std::string holder;
      // hugetlbfs maps whole huge pages: map (and unmap) the header in the file's block size.
      const std::size_t header_len = std::max<std::size_t>(layout::kDataOffset, st.st_blksize);
      if (static_cast<std::size_t>(st.st_size) >= header_len) {
        void* p = ::mmap(nullptr, header_len, PROT_READ, MAP_SHARED, fd, 0);
        if (p != MAP_FAILED) {
          const auto& ctl = *static_cast<const Control*>(p);
          // relaxed: the state only tells a creator still at work from a finished segment;
          // no field is read on the strength of it.
          const auto state = ctl.header.state.load(std::memory_order_relaxed);
          if (ctl.header.creator == 0) {
            // Claimed but not yet identified (or never claimed): judge by age, as below.
            stale = state == static_cast<std::uint32_t>(SegmentState::blank) && abandoned(st);
            holder = "a creator still initialising it";
          } else {
            stale = no_live_holder(ctl, /*except_self=*/false, &holder);
            if (stale)
              holder = "dead pid " + std::to_string(layout::identity_pid(ctl.header.creator));
          }
          ::munmap(p, header_len);
        }
      } else {
        // Never sized: a creator died before ftruncate, or is between open and ftruncate.
        stale = abandoned(st);
        holder = "a creator that never finished";
      }
      ::close(fd);
      if (!stale) fail(Errc::address_in_use, what + " already exists (in use by " + holder + ")");
      if (options.on_stale == OnStale::report)
        throw StaleSegment(Errc::address_in_use, what + " is stale (left by " + holder + ") at " +
                                                     existing->path +
                                                     "; remove it or use OnStale::reclaim");
      // Only the file we judged: a racing reclaimer may already have put a new one there.
      unlink_if_same(file, *existing, st.st_ino, st.st_dev);
      continue;
    }

    Segment seg;
    seg.m_info.name = std::string(name);
    seg.m_info.creator = true;
    std::optional<Mapping> mapping;
    std::string reasons;
    bool raced = false;
    if (options.huge_pages != HugePages::off) {
      const std::uint64_t need = segment_bytes(spec);
      auto mounts = hugetlbfs_mounts(options);
      std::stable_sort(mounts.begin(), mounts.end(),
                       [](const HugeMount& a, const HugeMount& b) { return a.page_size > b.page_size; });
      if (mounts.empty()) reasons = "no hugetlbfs mount (scripts/hugepages.sh mount)";
      for (const auto& m : mounts) {
        if (m.page_size >= k1G && need < k1G / 2) continue;  // would waste most of a 1 GiB page
        const std::string path = m.dir + "/" + file;
        const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, options.mode);
        if (fd < 0) {
          if (errno == EEXIST) {  // raced with another creator: start over
            raced = true;
            break;
          }
          reasons += (reasons.empty() ? "" : "; ") + path + ": " + std::strerror(errno);
          continue;
        }
        ::fchmod(fd, options.mode);
        mapping = size_and_map(fd, spec, m.page_size);
        if (!mapping) {
          reasons += (reasons.empty() ? "" : "; ") + human_size(m.page_size) + " pages on " +
                     m.dir + ": " + std::strerror(errno);
          ::close(fd);
          ::unlink(path.c_str());
          continue;
        }
        seg.m_fd = fd;
        seg.m_info.path = path;
        seg.m_info.backing = "hugetlbfs";
        seg.m_info.page_size = m.page_size;
        break;
      }
      if (raced) continue;
      if (!mapping && options.huge_pages == HugePages::require)
        fail(Errc::unavailable, "hugepages required for " + what + " but unavailable: " + reasons);
    }
    if (!mapping) {
      const int fd = create_posix_shm(file, options.mode);
      if (fd < 0) {
        if (errno == EEXIST) continue;
        fail_errno("cannot create " + what, errno);
      }
      seg.m_fd = fd;
      seg.m_info.path = kDevShm + file;
      seg.m_info.backing = "posix-shm";
      seg.m_info.page_size = k4K;
      seg.m_info.fallback = reasons;
      mapping = size_and_map(fd, spec, k4K);
      if (!mapping) {
        const int err = errno;
        bip::shared_memory_object::remove(file.c_str());
        fail_errno("cannot size or map " + what + " (" + human_size(segment_bytes(spec)) + ")", err);
      }
      if (options.huge_pages == HugePages::prefer) advise_thp(*mapping, seg.m_info);
    }
    struct stat st {};
    ::fstat(seg.m_fd, &st);
    seg.m_inode = st.st_ino;
    seg.m_device = st.st_dev;
    seg.finish_create(mapping->base, mapping->bytes, spec, options.prefault);
    return seg;
  }
  fail(Errc::address_in_use, "cannot create " + what + ": the name keeps changing hands");
}

Segment Segment::open(std::string_view name, const RingSpec& expect,
                      const SegmentOptions& options) {
  validate_name(name);
  const std::string file = segment_file_name(name);
  const std::string what = "segment '" + std::string(name) + "'";
  const auto deadline = std::chrono::steady_clock::now() + options.open_timeout;
  bool initialising = false;
  for (;;) {
    if (const auto where = find_existing(file, options)) {
      const int fd = open_existing(file, *where);
      if (fd < 0 && errno != ENOENT) fail_errno("cannot open " + what, errno);
      if (fd >= 0) {
        struct stat st {};
        ::fstat(fd, &st);
        const auto size = static_cast<std::size_t>(st.st_size);
        void* p = size >= layout::kDataOffset ? map_fd(fd, size) : nullptr;
        if (p != nullptr) {
          auto* ctl = static_cast<Control*>(p);
          // sync(segment.ready) acquire: pairs with the release store in init_header(); the
          // header fields read by validate_header() are complete.
          if (ctl->header.state.load(std::memory_order_acquire) ==
              static_cast<std::uint32_t>(SegmentState::ready)) {
            Segment seg;
            seg.m_base = static_cast<std::byte*>(p);
            seg.m_control = ctl;
            seg.m_fd = fd;
            seg.m_inode = st.st_ino;
            seg.m_device = st.st_dev;
            seg.m_info.name = std::string(name);
            seg.m_info.path = where->path;
            seg.m_info.backing = where->posix_shm ? "posix-shm" : "hugetlbfs";
            seg.m_info.mapped_bytes = size;
            seg.adopt(copy_header(*ctl), size, expect, what);  // on throw, ~Segment unmaps
            if (options.prefault) prefault(seg.m_base, size, seg.m_info.page_size);
            return seg;
          }
          ::munmap(p, size);
        }
        ::close(fd);
        initialising = true;
      }
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      if (initialising)
        fail(Errc::timed_out, what + " is still being initialised by its creator");
      fail(Errc::not_found, what + " does not exist");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

Segment Segment::create_or_open(std::string_view name, const RingSpec& spec,
                                const SegmentOptions& options) {
  for (int attempt = 0;; ++attempt) {
    try {
      return create(name, spec, options);
    } catch (const StaleSegment&) {
      throw;  // reported, not joined
    } catch (const Error& e) {
      if (e.errc() != Errc::address_in_use || attempt >= 3) throw;
    }
    SegmentOptions wait = options;
    if (wait.open_timeout < std::chrono::milliseconds(1000))
      wait.open_timeout = std::chrono::milliseconds(1000);
    try {
      return open(name, spec, wait);
    } catch (const Error& e) {
      if (e.errc() != Errc::not_found) throw;  // vanished between create and open: retry
    }
  }
}

Segment Segment::create_anonymous(const RingSpec& spec, const SegmentOptions& options) {
  checked_data_bytes(spec);
  Segment seg;
  seg.m_info.creator = true;
  std::optional<Mapping> mapping;
  std::string reasons;
  if (options.huge_pages != HugePages::off) {
    const std::uint64_t need = segment_bytes(spec);
    struct Candidate {
      std::size_t page;
      unsigned flag;
    };
    for (const Candidate c : {Candidate{k1G, MFD_HUGE_1GB}, Candidate{k2M, MFD_HUGE_2MB}}) {
      if (c.page >= k1G && need < k1G / 2) continue;
      const int fd = ::memfd_create("ferry", MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_HUGETLB | c.flag);
      if (fd < 0) {
        reasons += (reasons.empty() ? "" : "; ") + human_size(c.page) + " memfd: " + std::strerror(errno);
        continue;
      }
      mapping = size_and_map(fd, spec, c.page);
      if (!mapping) {
        reasons += (reasons.empty() ? "" : "; ") + human_size(c.page) + " pages: " + std::strerror(errno);
        ::close(fd);
        continue;
      }
      seg.m_fd = fd;
      seg.m_info.backing = "memfd-hugetlb";
      seg.m_info.page_size = c.page;
      break;
    }
    if (!mapping && options.huge_pages == HugePages::require)
      fail(Errc::unavailable, "hugepages required but unavailable: " + reasons);
  }
  if (!mapping) {
    const int fd = ::memfd_create("ferry", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) fail_errno("memfd_create", errno);
    seg.m_fd = fd;
    seg.m_info.backing = "memfd";
    seg.m_info.page_size = k4K;
    seg.m_info.fallback = reasons;
    mapping = size_and_map(fd, spec, k4K);
    if (!mapping) fail_errno("cannot size or map an anonymous segment", errno);
    if (options.huge_pages == HugePages::prefer) advise_thp(*mapping, seg.m_info);
  }
  // The peer gets this descriptor: seal its size, so it cannot truncate the memory under us
  // (SIGBUS on the next access).
  if (::fcntl(seg.m_fd, F_ADD_SEALS, kSizeSeals | F_SEAL_SEAL) != 0)
    fail_errno("cannot seal the anonymous segment", errno);
  seg.finish_create(mapping->base, mapping->bytes, spec, options.prefault);
  return seg;
}

Segment Segment::open_fd(int fd, const RingSpec& expect, const SegmentOptions& options) {
  const std::string what = "segment fd " + std::to_string(fd);
  const int own = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (own < 0) fail_errno("cannot use " + what, errno);
  Segment seg;
  seg.m_fd = own;
  struct stat st {};
  if (::fstat(own, &st) != 0) fail_errno("cannot stat " + what, errno);
  const auto size = static_cast<std::size_t>(st.st_size);
  if (size < layout::kDataOffset)
    fail(Errc::protocol_error, what + " is too small to be a ferry segment");
  // A memfd that its owner could shrink would let it crash us with SIGBUS. (Other files
  // cannot be sealed: F_GET_SEALS fails and they are accepted, like named segments.)
  if (const int seals = ::fcntl(own, F_GET_SEALS); seals >= 0 && (seals & kSizeSeals) != kSizeSeals)
    fail(Errc::protocol_error, what + " is a memfd whose size is not sealed: refusing it");
  void* p = map_fd(own, size);
  if (p == nullptr) fail_errno("cannot map " + what, errno);
  seg.m_base = static_cast<std::byte*>(p);
  seg.m_control = static_cast<Control*>(p);
  seg.m_info.mapped_bytes = size;
  seg.m_info.backing = "memfd";
  // sync(segment.ready) acquire: pairs with the release store in init_header().
  if (seg.m_control->header.state.load(std::memory_order_acquire) !=
      static_cast<std::uint32_t>(SegmentState::ready))
    fail(Errc::protocol_error, what + " was never initialised");
  seg.adopt(copy_header(*seg.m_control), size, expect, what);
  if (seg.m_info.page_size != k4K) seg.m_info.backing = "memfd-hugetlb";
  if (options.prefault) prefault(seg.m_base, size, seg.m_info.page_size);
  return seg;
}

bool Segment::remove(std::string_view name, const SegmentOptions& options) {
  validate_name(name);
  const std::string file = segment_file_name(name);
  bool removed = false;
  // Each location once: a name can exist in /dev/shm and on a hugetlbfs mount.
  if (bip::shared_memory_object::remove(file.c_str())) removed = true;
  for (const auto& m : hugetlbfs_mounts(options))
    if (::unlink((m.dir + "/" + file).c_str()) == 0) removed = true;
  return removed;
}

}  // namespace ferry::shm
