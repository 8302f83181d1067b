// SPDX-License-Identifier: Apache-2.0
// ferry-bench's Communicator benchmarks over TCP/TLS (sub-commands comm and iops): the one hook
// ferry_bench.cpp calls to register and run them. Layer: tools/.
#pragma once

#include <functional>
#include <optional>

namespace CLI {
class App;
}

namespace ferry::bench {

/// Adds the sub-commands `comm` and `iops` (and the hidden process roles they re-execute this
/// binary with) to app. Call before parsing. The returned function, called after parsing, runs
/// the one of them that was chosen and returns its exit code, or std::nullopt when the command
/// line chose another sub-command. It throws std::exception on failure (set-up errors, a
/// process that failed or stalled, ferry::Error).
[[nodiscard]] std::function<std::optional<int>()> add_comm_commands(CLI::App& app);

/// The same for `rpc` (tools/bench_rpc.cpp): ferry::rpc calls between two processes, and
/// plain gRPC unary calls beside them.
[[nodiscard]] std::function<std::optional<int>()> add_rpc_commands(CLI::App& app);

/// The same for `compare` (tools/bench_compare.cpp): Ferry beside the peers installed from
/// Debian (iceoryx, ZeroMQ, Boost message_queue, Unix sockets), every workload in one run.
[[nodiscard]] std::function<std::optional<int>()> add_compare_commands(CLI::App& app);

} // namespace ferry::bench
