// SPDX-License-Identifier: Apache-2.0
// The Mosquitto fixture of the MQTT tests: its three listeners work as configured (checked
// with Mosquitto's own clients), it refuses a wrong password, and it can be killed and
// restarted on the same ports.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "support/mosquitto.hpp"

namespace ferry::testing {
namespace {

/// Publishes a retained message, then reads it back with a fresh subscriber.
CommandResult round_trip(const std::vector<std::string>& connect, const std::string& topic, const std::string& text) {
  std::vector<std::string> pub{"mosquitto_pub", "-q", "1", "-r", "-t", topic, "-m", text};
  pub.insert(pub.end(), connect.begin(), connect.end());
  const CommandResult p = run_command(pub, std::chrono::seconds(10));
  if (p.exit_code != 0) return p;
  std::vector<std::string> sub{"mosquitto_sub", "-t", topic, "-C", "1", "-W", "5"};
  sub.insert(sub.end(), connect.begin(), connect.end());
  return run_command(sub, std::chrono::seconds(10));
}

std::vector<std::string> at(std::uint16_t port) { return {"-h", "127.0.0.1", "-p", std::to_string(port)}; }

TEST(MosquittoFixture, ServesPlainTlsAndAuthenticatedListeners) {
  MosquittoBroker broker;
  auto r = round_trip(at(broker.port()), "ferry/plain", "hello");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, "hello\n");

  auto tls = at(broker.tls_port());
  tls.insert(tls.end(), {"--cafile", broker.certs()->ca().string()});
  r = round_trip(tls, "ferry/tls", "over tls");
  EXPECT_EQ(r.exit_code, 0) << r.output << broker.log();
  EXPECT_EQ(r.output, "over tls\n");

  auto auth = at(broker.auth_port());
  auth.insert(auth.end(), {"-u", MosquittoBroker::user(), "-P", MosquittoBroker::password()});
  r = round_trip(auth, "ferry/auth", "with a password");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, "with a password\n");

  auto wrong = at(broker.auth_port());
  wrong.insert(wrong.end(), {"-u", MosquittoBroker::user(), "-P", "wrong"});
  r = round_trip(wrong, "ferry/auth", "refused");
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("not authori"), std::string::npos) << r.output;
}

TEST(MosquittoFixture, KilledAndRestartedOnTheSamePorts) {
  MosquittoBroker broker(MosquittoBroker::Config{.tls = false, .auth = false});
  const std::uint16_t port = broker.port();
  broker.kill();
  const auto down = round_trip(at(port), "ferry/x", "lost");
  EXPECT_NE(down.exit_code, 0) << down.output;
  broker.restart();
  EXPECT_EQ(broker.port(), port);
  const auto up = round_trip(at(port), "ferry/x", "back");
  EXPECT_EQ(up.exit_code, 0) << up.output;
  EXPECT_EQ(up.output, "back\n");
}

}  // namespace
}  // namespace ferry::testing
