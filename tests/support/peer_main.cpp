// SPDX-License-Identifier: Apache-2.0
// ferry_test_peer: the helper process multi-process tests spawn. One end of a byte ring per
// process; prints "ready" once attached, exits 0 on success or 10 + ferry::Errc on error.
//
//   ferry_test_peer produce NAME COUNT SEED [--create] [--capacity C] [--fd N] [--huge]
//   ferry_test_peer consume NAME COUNT SEED [--create] [--capacity C] [--fd N] [--huge]
//   ferry_test_peer produce-forever NAME          (pushes until killed or an error)
//   ferry_test_peer attach-consumer-and-hang NAME (holds the consumer role, never reads)
//
// Messages: sizes drawn by tests/support/pattern.hpp; every byte is checked by the consumer.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "ferry/shm/ring.hpp"
#include "support/pattern.hpp"

using namespace ferry::shm;

namespace {

struct Args {
  std::string mode, name;
  std::uint64_t count = 0, seed = 1, capacity = 1 << 20;
  bool create = false, huge = false;
  int fd = -1;
};

Segment attach_segment(const Args& a) {
  SegmentOptions options;
  options.huge_pages = a.huge ? HugePages::require : HugePages::off;
  options.open_timeout = std::chrono::seconds(10);
  if (a.fd >= 0) return Segment::open_fd(a.fd, ByteRing::spec(0), options);
  if (a.create) return Segment::create_or_open(a.name, ByteRing::spec(a.capacity), options);
  return Segment::open(a.name, ByteRing::spec(0), options);
}

void ready() {
  std::printf("ready\n");
  std::fflush(stdout);
}

int run(const Args& a) {
  Segment segment = attach_segment(a);
  if (a.mode == "produce" || a.mode == "produce-forever") {
    ByteRing::Producer producer(segment);
    ready();
    std::vector<std::byte> buf(ferry::test::kMaxMessage);
    for (std::uint64_t i = 0; a.mode == "produce-forever" || i < a.count; ++i) {
      const std::size_t n = ferry::test::message_size(a.seed, i);
      auto out = producer.reserve(n);
      ferry::test::fill(out, a.seed, i);
      producer.commit(n);
    }
    producer.close();
    return 0;
  }
  if (a.mode == "consume") {
    ByteRing::Consumer consumer(segment);
    ready();
    std::uint64_t bytes = 0;
    for (std::uint64_t i = 0; i < a.count; ++i) {
      const auto msg = consumer.peek(std::chrono::seconds(30));
      if (!ferry::test::check(msg, a.seed, i)) {
        std::printf("mismatch at message %llu (size %zu)\n", static_cast<unsigned long long>(i),
                    msg.size());
        return 2;
      }
      bytes += msg.size();
      consumer.release();
    }
    std::printf("ok %llu %llu\n", static_cast<unsigned long long>(a.count),
                static_cast<unsigned long long>(bytes));
    return 0;
  }
  if (a.mode == "attach-consumer-and-hang") {
    ByteRing::Consumer consumer(segment);
    ready();
    for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
  }
  std::fprintf(stderr, "unknown mode %s\n", a.mode.c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: ferry_test_peer MODE NAME [COUNT SEED] [options]\n");
    return 2;
  }
  Args a;
  a.mode = argv[1];
  a.name = argv[2];
  int i = 3;
  if (a.mode == "produce" || a.mode == "consume") {
    if (argc < 5) return 2;
    a.count = std::strtoull(argv[3], nullptr, 10);
    a.seed = std::strtoull(argv[4], nullptr, 10);
    i = 5;
  }
  for (; i < argc; ++i) {
    const std::string opt = argv[i];
    if (opt == "--create") a.create = true;
    else if (opt == "--huge") a.huge = true;
    else if (opt == "--capacity" && i + 1 < argc) a.capacity = std::strtoull(argv[++i], nullptr, 10);
    else if (opt == "--fd" && i + 1 < argc) a.fd = std::atoi(argv[++i]);
    else {
      std::fprintf(stderr, "unknown option %s\n", opt.c_str());
      return 2;
    }
  }
  try {
    return run(a);
  } catch (const ferry::Error& e) {
    std::printf("error %d %s\n", static_cast<int>(e.errc()), e.what());
    std::fflush(stdout);
    return 10 + static_cast<int>(e.errc());
  }
}
