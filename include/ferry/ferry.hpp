// SPDX-License-Identifier: Apache-2.0
// The umbrella include of Ferry's public API.
#pragma once

#include <ferry/bytes.hpp>
#include <ferry/codec.hpp>
#include <ferry/communicator.hpp>
#include <ferry/endpoint.hpp>
#include <ferry/error.hpp>
#include <ferry/message.hpp>
#include <ferry/options.hpp>
#include <ferry/peer_id.hpp>
#include <ferry/put_handle.hpp>
#include <ferry/rpc.hpp>
