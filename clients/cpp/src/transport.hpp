// The byte stream under the RPC connection: unix:, tcp: (token exchange) or tls:. Private.
#pragma once

#include <kj/async-io.h>

#include <string>

#include "logos_p2p/client.hpp"

namespace logos::p2p::transport {

// A connected stream to the node at `address`, authenticated as `options` say; fails with
// invalidArgument (address, options), authenticationFailed, or DISCONNECTED (unreachable).
kj::Promise<kj::Own<kj::AsyncIoStream>> open(kj::AsyncIoContext& io, const std::string& address,
                                             const ConnectOptions& options);

}  // namespace logos::p2p::transport
