// A C++ dialer: opens /echo/1.0.0 on a peer through the facade, writes a message,
// half-closes, reads everything back and prints it.
//
//   cpp-echo-dial unix:/path/to/node.sock PEER_MULTIADDR/p2p/PEER_ID MESSAGE [PROTOCOL]
//
// Prints "got <n> bytes: <message>"; exit 0 iff the echo matches, 1 on an error
// (printed as "error <kind>: <message>").
#include <cstdio>
#include <string>

#include "logos_p2p/facade.hpp"

using namespace logos::p2p;

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s unix:SOCKET PEER_ADDR MESSAGE [PROTOCOL]\n", argv[0]);
    return 2;
  }
  std::string addr = argv[2], message = argv[3], proto = argc > 4 ? argv[4] : "/echo/1.0.0";
  auto at = addr.rfind("/p2p/");
  std::string peer = at == std::string::npos ? "" : addr.substr(at + 5);
  try {
    Facade node(argv[1], "cpp-echo-dial");
    uint64_t id = node.dial(peer, proto, {addr}, 10000);
    node.streamWrite(id, Bytes(message.begin(), message.end()), 10000);
    node.streamCloseWithEOF(id, 10000);
    std::string back;
    while (true) {
      Bytes chunk = node.streamRead(id, 65536, 10000);
      if (chunk.empty()) break;
      back.append(chunk.begin(), chunk.end());
    }
    node.streamClose(id, 10000);
    std::printf("got %zu bytes: %s\n", back.size(), back.c_str());
    return back == message ? 0 : 1;
  } catch (const Error& e) {
    std::printf("error %s: %s\n", kindName(e.kind()), e.what());
    return 1;
  }
}
