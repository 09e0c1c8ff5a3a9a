// The asynchronous C++ API (logos_p2p/client.hpp) on one kj event loop, no facade:
// Node.request, Node.serve and openStream + a dropped Stream, for tests/test_cpp.py.
//
//   logos-p2p-unary-check unix:SOCKET request PEER_ADDR PROTO DATA   -> "reply <data>" | "error <kind> <message>"
//   logos-p2p-unary-check unix:SOCKET serve PROTO                    -> "ready", then "served <request>" per request
//   logos-p2p-unary-check unix:SOCKET drop PEER_ADDR PROTO           -> "dropped" after opening and dropping a stream
#include <kj/async-io.h>
#include <kj/debug.h>

#include <cstdio>
#include <string>

#include "logos_p2p/client.hpp"

using namespace logos::p2p;

namespace {
std::string peerOf(const std::string& addr) {
  auto at = addr.rfind("/p2p/");
  return at == std::string::npos ? "" : addr.substr(at + 5);
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s unix:SOCKET request|serve|drop ...\n", argv[0]);
    return 2;
  }
  std::string mode = argv[2];
  auto io = kj::setupAsyncIo();
  auto& ws = io.waitScope;
  try {
    Node node = wait(connect(io, argv[1]), ws);
    wait(node.setModuleName("cpp-unary-check"), ws);
    if (mode == "request" && argc == 6) {
      std::string data = argv[5];
      Bytes reply = wait(node.request(peerOf(argv[3]), {argv[4]}, Bytes(data.begin(), data.end()), {argv[3]}, 10000), ws,
                         node.shuttingDown());
      std::printf("reply %s\n", std::string(reply.begin(), reply.end()).c_str());
      return 0;
    }
    if (mode == "serve" && argc == 4) {
      auto registration = wait(node.serve({argv[3]},
                                          [](Bytes request, StreamInfo info) -> kj::Promise<Bytes> {
                                            std::string text(request.begin(), request.end());
                                            std::printf("served %s from %s\n", text.c_str(), info.remotePeerId.c_str());
                                            std::fflush(stdout);
                                            if (text == "fail") return KJ_EXCEPTION(FAILED, "asked to fail");
                                            std::string reply = "answer to " + text;
                                            return Bytes(reply.begin(), reply.end());
                                          }),
                               ws);
      std::printf("ready %llu\n", static_cast<unsigned long long>(registration.id()));
      std::fflush(stdout);
      wait(node.onEnded(), ws);
      return 0;
    }
    if (mode == "drop" && argc == 5) {
      {
        Stream stream = wait(node.openStream(peerOf(argv[3]), {argv[4]}, {argv[3]}, 10000), ws);
        wait(stream.write(Bytes{'h', 'i'}), ws);
      }  // dropped unclosed: the node resets it
      std::printf("dropped\n");
      std::fflush(stdout);
      wait(node.onEnded(), ws);
      return 0;
    }
  } catch (const Error& e) {
    std::printf("error %s %s\n", kindName(e.kind()), e.what());
    return 1;
  }
  std::fprintf(stderr, "bad arguments\n");
  return 2;
}
