#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Installs every Debian 12 package Ferry needs to build, test, benchmark and run its demo.
# Idempotent: does nothing when all packages are present; runs `apt-get update` once otherwise.
set -euo pipefail

packages=(
  # toolchain
  build-essential g++-12 clang-14 lld-14 libclang-rt-14-dev cmake ninja-build pkg-config git
  # libraries
  libboost1.81-dev libssl-dev
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libpaho-mqttpp-dev libpaho-mqtt-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libcli11-dev nlohmann-json3-dev
  # the peers ferry-bench compare measures Ferry against (ZeroMQ, Eclipse iceoryx and its RouDi)
  libzmq3-dev libiceoryx-posh-dev iceoryx
  # tests and tools
  mosquitto mosquitto-clients openssl iproute2 procps util-linux
  # ferry-bench compare --plot
  gnuplot-nox fonts-dejavu-core
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#packages[@]} packages present"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "setup: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  SUDO="sudo"
fi

echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
# Mosquitto's package enables a system broker; tests start their own on free ports.
if command -v systemctl >/dev/null && systemctl is-active --quiet mosquitto 2>/dev/null; then
  $SUDO systemctl disable --now mosquitto >/dev/null 2>&1 || true
fi
echo "setup: done"
