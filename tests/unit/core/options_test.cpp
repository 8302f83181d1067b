// SPDX-License-Identifier: Apache-2.0
// open() checks Options before it creates anything: each bad setting is refused with
// invalid_argument and a message naming it.
#include <gtest/gtest.h>

#include <ferry/ferry.hpp>

#include <functional>
#include <string>

namespace ferry {
namespace {

std::string refusal(const std::function<void(Options&)>& change) {
  Options o;
  o.endpoint = "tcp://127.0.0.1:0";
  change(o);
  try {
    (void)open(Purpose::server, o);
  } catch (const Error& e) {
    EXPECT_EQ(e.errc(), Errc::invalid_argument) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "open() accepted the options";
  return {};
}

TEST(Options, BadSettingsAreRefusedByName) {
  EXPECT_NE(refusal([](Options& o) { o.connection.message_size = 0; }).find("message_size"), std::string::npos);
  EXPECT_NE(refusal([](Options& o) { o.connection.message_size = (std::size_t{1} << 40) + 1; }).find("message_size must be in [1, 1 TiB]"),
            std::string::npos);
  EXPECT_NE(refusal([](Options& o) { o.connection.transport_size = 0; }).find("transport_size"), std::string::npos);
  EXPECT_NE(refusal([](Options& o) { o.connection.send_window = 0; }).find("send_window"), std::string::npos);
  EXPECT_NE(refusal([](Options& o) { o.connection.keepalive_timeout = o.connection.keepalive_interval; }).find("keepalive"),
            std::string::npos);
  EXPECT_NE(refusal([](Options& o) { o.workers = 0; }).find("workers"), std::string::npos);
  EXPECT_NE(refusal([](Options& o) { o.receive_spin = std::chrono::milliseconds(11); }).find("receive_spin"),
            std::string::npos);
  EXPECT_NE(refusal([](Options& o) { o.id = PeerId{}; }).find("nil UUID"), std::string::npos);
}

TEST(Options, TheLargestMessageSizeIsAccepted) {
  Options o;
  o.endpoint = "tcp://127.0.0.1:0";
  o.connection.message_size = std::size_t{1} << 40;
  auto server = open(Purpose::server, o);
  EXPECT_NE(server.local_endpoint(), o.endpoint);  // the real port
}

}  // namespace
}  // namespace ferry
