#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The main job: installs what is missing, builds Ferry, and shows what it does with figures
# measured on this machine: the shared-memory ring between two processes (one-way throughput
# and round trips); messaging through the Communicator between two processes over TCP and TLS
# on loopback, next to a plain Boost.Asio sender/receiver run in the same run; over gRPC and
# MQTT (a Mosquitto that ferry-bench starts on loopback and stops) next to plain gRPC and plain
# paho; over shared memory next to the raw ring; and auto://, where the same client code
# reaches a local server over shared memory and one in another network namespace over TCP;
# Ferry beside iceoryx, ZeroMQ, Boost's message_queue and Unix sockets (ferry-bench compare);
# and same-host RPC with ferry::rpc (the ferry-kv example service, and ferry-bench rpc next to
# plain gRPC unary calls).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null

# Same configuration as scripts/test.sh, so the two commands share one build.
cmake -S . -B build -G Ninja -DFERRY_WARNINGS_AS_ERRORS=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" --target ferry_bench_tool ferry_asio_baseline ferry_grpc_baseline \
  ferry_paho_baseline ferry_uds_baseline ferry_bmq_baseline ferry_zmq_baseline ferry_iox_baseline \
  ferry_cli ferry_kv >/dev/null
bench=build/bin/ferry-bench
seconds=${FERRY_DEMO_SECONDS:-1}
# What to undo on exit (the hugepage pool, a network namespace), in reverse order.
cleanups=()
run_cleanups() { for ((i = ${#cleanups[@]} - 1; i >= 0; i--)); do "${cleanups[i]}"; done; }
trap run_cleanups EXIT
reps=${FERRY_DEMO_REPS:-3}

echo "== Machine"
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores"
echo "Kernel: $(uname -r); 2 MiB hugepages reserved: $(cat /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages 2>/dev/null || echo n/a)"
echo
echo "== One-way streaming, two processes pinned to CPUs 0 and 1, copy in and out"
echo "   (each figure: median of $reps runs of ${seconds} s; lost must be 0). Each size also runs"
echo "   'ideal', a minimal spin-only ring without checks (tools/ideal_ring.hpp), alternately"
echo "   with Ferry, so the ratio compares the two under the same machine state."
"$bench" ring --size 8,64,1264,64K,2M --batch 64 --impl ferry,ideal --seconds "$seconds" --reps "$reps"
echo
echo "-- publication of every message (batch 1) instead of every 64"
"$bench" ring --size 8,64 --batch 1 --seconds "$seconds" --reps "$reps" | tail -n +3
echo
echo "-- zero-copy (reserve/commit, peek/release; only the sequence number is touched,"
echo "   so only msgs/s is meaningful)"
"$bench" ring --size 8,64 --batch 64 --zero-copy --seconds "$seconds" --reps "$reps" | tail -n +3
echo
echo "-- spinning vs spin-then-sleep waits (64 B and 64 KiB, batch 64; the two modes run"
echo "   alternately, 5 runs each, so both see the same machine state)"
"$bench" ring --size 64,64K --batch 64 --wait spin,block --seconds "$seconds" --reps 5 | tail -n +3
echo
echo "== Round trips of 64 B messages"
"$bench" ring-pingpong --size 64 --count 200000 --wait spin
"$bench" ring-pingpong --size 64 --count 5000 --wait spin --echo-wait sleep --interval-us 200
echo "-- the machine's floor for a sleeping waiter: a bare futex wake-up, no ring"
"$bench" futex-pingpong --count 5000 --interval-us 200

echo
echo "== Messaging through the Communicator: a server and a client process on loopback"
echo "-- hello over the command-line tool (ferry recv / ferry send)"
log=$(mktemp)
build/bin/ferry recv tcp://127.0.0.1:0 --count 2 2>"$log" &
recv_pid=$!
for _ in $(seq 100); do grep -q listening "$log" && break; sleep 0.05; done
url=$(awk '/listening/{print $2}' "$log")
build/bin/ferry send "$url" "hello from ferry send"
echo "and a second line from stdin" | build/bin/ferry send "$url" -
wait "$recv_pid"
rm -f "$log"
echo
echo "-- one-way streaming, TCP, Ferry vs plain Asio (one write per message) alternately"
"$bench" comm --transport tcp --size 64,1K,64K,2M --impl ferry,asio --seconds "$seconds" --reps "$reps" --pin auto
echo
echo "-- the same over TLS (OpenSSL, TLS 1.3), 2 MiB messages"
"$bench" comm --transport tls --size 2M --impl ferry,asio --seconds "$seconds" --reps "$reps" --pin auto
echo
echo "-- 64 B round trips over TCP (processes pinned to one CPU each: get() sleeps at once)"
"$bench" comm --transport tcp --size 64 --pingpong --count 10000 --impl ferry,asio --reps 3
echo "-- the same unpinned, Ferry's get() polling 50 us before it sleeps (Options::receive_spin)"
"$bench" comm --transport tcp --size 64 --pingpong --count 10000 --impl ferry,asio --reps 3 --pin none --receive-spin 50
echo
echo "-- net-queue's iops workload: 500 x 2 MiB, sync (client puts all, then gets all back)"
"$bench" iops tcp pair sync --step-size 0 --max-size 21 --reps 500

echo
echo "== The same API through an RPC stack and a broker, for peers on other hosts"
echo "-- gRPC (grpc://): one bidirectional stream per client; Ferry vs a plain gRPC callback stream"
"$bench" comm --transport grpc --size 64,64K,2M --impl ferry,grpc --seconds "$seconds" --reps "$reps" --pin auto
echo "-- MQTT (mqtt://broker:port/prefix), QoS 1, through a Mosquitto that ferry-bench starts on"
echo "   loopback (server and client are both its clients); Ferry vs plain paho publishing with"
echo "   the same workarounds (TCP_NODELAY, publishes of at most 512 KiB, 1 MiB unacknowledged)"
"$bench" comm --transport mqtt --size 64,64K,2M --impl ferry,paho --seconds "$seconds" --reps "$reps" --pin auto
"$bench" comm --transport mqtt --size 64 --pingpong --count 2000 --impl ferry,paho --reps 3

echo
echo "== The Communicator over shared memory (shm://): the same API, rings between the processes"
echo "-- one-way streaming, Ferry vs the raw byte ring of the same size (ring) alternately"
"$bench" comm --transport shm --size 64,64K,2M --impl ferry,ring --seconds "$seconds" --reps "$reps" --pin auto
echo "-- 64 B round trips, pinned (get() polls its ring for ShmOptions::spin = 20 us, then sleeps)"
"$bench" comm --transport shm --size 64 --pingpong --count 10000 --impl ferry,ring --reps 3
echo "-- net-queue's iops workload over shm: 500 x 2 MiB, sync"
"$bench" iops shm pair sync --step-size 0 --max-size 21 --reps 500

echo
echo "== Ferry beside the others on this host: iceoryx, ZeroMQ, Boost message_queue, a Unix socket"
echo "   (ferry-bench compare, shortened: $reps runs of 0.5 s per system and size; the README's table"
echo "   is the full command's)"
"$bench" compare --seconds 0.5 --reps "$reps" --count 10000 2>/dev/null

echo
echo "== Same-host microservice RPC (ferry::rpc): ferry-kv, the example key-value service"
kvlog=$(mktemp)
build/bin/ferry-kv serve auto://127.0.0.1:0 >"$kvlog" 2>/dev/null &
kv_pid=$!
stop_kv() { kill "$kv_pid" 2>/dev/null || true; wait "$kv_pid" 2>/dev/null || true; rm -f "$kvlog"; }
cleanups+=(stop_kv)
for _ in $(seq 100); do grep -q listening "$kvlog" && break; sleep 0.05; done
kv_url=$(awk '/listening/{print $2}' "$kvlog")
echo "ferry-kv serve listens on $kv_url (shared memory for local clients, TCP for the others)"
build/bin/ferry-kv put "$kv_url" greeting "hello over ferry::rpc"
echo "get greeting: $(build/bin/ferry-kv get "$kv_url" greeting)"
echo "-- the same client code, on this host (auto:// picks shared memory) and over TCP"
build/bin/ferry-kv bench "$kv_url" --count 20000 --spin 50
build/bin/ferry-kv bench "tcp://127.0.0.1:${kv_url##*:}" --count 5000
stop_kv
echo "-- ferry-bench rpc: calls between two pinned processes, next to plain gRPC unary calls"
"$bench" rpc --transport shm --impl ferry,grpc --count 20000 --reps "$reps"
"$bench" rpc --transport tcp --impl ferry,grpc --count 5000 --reps "$reps"
echo "-- the service asleep between calls (200 us apart): one wake-up per call"
"$bench" rpc --transport shm --sleeping-server --interval-us 200 --count 5000 --reps "$reps"
echo "-- throughput: 2 clients, 8 calls outstanding each, 2 workers"
"$bench" rpc --transport shm --clients 2 --pipeline 8 --workers 2 --count 100000 --reps "$reps"

echo
echo "== auto://host:port: one URL, and the handshake picks the transport"
echo "-- a server on this host: the client finds it local (same boot id and IPC namespace)"
"$bench" comm --transport auto --size 64K --impl ferry --seconds "$seconds" --reps "$reps" --pin auto
"$bench" comm --transport auto --size 64 --pingpong --count 10000 --impl ferry --reps 3
# A second "host": a network namespace with its own IPC namespace, joined by a veth pair.
ns=ferry-demo-$$
if [ "$(id -u)" -eq 0 ] && command -v ip >/dev/null && ip netns add "$ns" 2>/dev/null; then
  cleanup_ns() { ip link del fd$$a 2>/dev/null || true; ip netns del "$ns" 2>/dev/null || true; }
  cleanups+=(cleanup_ns)
  ip link add fd$$a type veth peer name fd$$b
  ip link set fd$$b netns "$ns"
  ip addr add 10.214.0.1/24 dev fd$$a && ip link set fd$$a up
  ip netns exec "$ns" ip addr add 10.214.0.2/24 dev fd$$b
  ip netns exec "$ns" ip link set fd$$b up && ip netns exec "$ns" ip link set lo up
  echo "-- the server in another network and IPC namespace (as in a container): the same client"
  echo "   code stays on TCP, over a veth pair"
  prefix="ip netns exec $ns unshare --ipc"
  "$bench" comm --transport auto --server-host 10.214.0.2 --server-prefix "$prefix" --size 64K --impl ferry --seconds "$seconds" --reps "$reps" --pin auto
  "$bench" comm --transport auto --server-host 10.214.0.2 --server-prefix "$prefix" --size 64 --pingpong --count 10000 --impl ferry --reps 3
else
  echo "-- (network namespaces need root and iproute2: a TCP-only client of the same kind of server instead)"
  "$bench" comm --transport tcp --size 64K --impl ferry --seconds "$seconds" --reps "$reps" --pin auto
fi

# Hugepage-backed rings: only where this user may reserve pages for the run (restored after).
pool=/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages
if [ "$(id -u)" -eq 0 ] && [ -w "$pool" ]; then
  saved=$(cat "$pool")
  restore_pool() { echo "$saved" > "$pool"; }
  cleanups+=(restore_pool)
  bash scripts/hugepages.sh reserve $((saved + 24)) --size 2M >/dev/null || true
  echo
  echo "== The same ring on 2 MiB hugepages (pool raised to $(cat "$pool") for this run, restored after)"
  "$bench" ring --size 64,64K,2M --batch 64 --hugepages --seconds "$seconds" --reps "$reps" | tail -n +2
  echo "-- the Communicator over shm with its rings on hugepages (the page size is in stats())"
  "$bench" comm --transport shm --size 64K,2M --impl ferry,ring --seconds "$seconds" --reps "$reps" --pin auto | tail -n +2
else
  echo
  echo "(hugepage rows skipped: reserving pages needs root; see scripts/hugepages.sh)"
fi
