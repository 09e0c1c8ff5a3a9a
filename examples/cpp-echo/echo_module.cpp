// A C++ echo module: mounts /echo/1.0.0 through the facade and echoes every inbound
// stream until the peer half-closes, then half-closes too (closeWithEOF) and closes.
//
//   cpp-echo-module unix:/path/to/node.sock [/echo/1.0.0] [--share] [--quiet]
//
// --share: mount with RegisterOptions.share, so several processes can serve the protocol.
// --quiet: no line per stream (for a benchmark that does not read them).
// Prints "ready <node peer id>" once mounted, and "echoed <n> bytes" per stream.
// Each stream is served on a thread of its own: the facade is used from all of them.
#include <cstdio>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "logos_p2p/facade.hpp"

using namespace logos::p2p;

namespace {
std::mutex out;
bool quiet = false;

void say(const std::string& line) {
  std::lock_guard<std::mutex> lock(out);
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
}

void echo(Facade& node, uint64_t id) {
  size_t total = 0;
  try {
    while (true) {
      Bytes chunk = node.streamRead(id, 65536);
      if (chunk.empty()) break;  // the peer half-closed
      node.streamWrite(id, chunk);
      total += chunk.size();
    }
    node.streamCloseWithEOF(id, 10000);
    node.streamClose(id, 10000);
    if (!quiet) say("echoed " + std::to_string(total) + " bytes");
  } catch (const Error& e) {
    if (!quiet) say(std::string("stream ended: ") + kindName(e.kind()) + ": " + e.what());
    try {
      node.streamRelease(id);
    } catch (const Error&) {
    }
  }
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s unix:SOCKET [PROTOCOL] [--share] [--quiet]\n", argv[0]);
    return 2;
  }
  std::string proto = "/echo/1.0.0";
  bool share = false;
  for (int i = 2; i < argc; ++i) {
    if (std::string(argv[i]) == "--share")
      share = true;
    else if (std::string(argv[i]) == "--quiet")
      quiet = true;
    else
      proto = argv[i];
  }
  std::vector<std::thread> workers;
  try {
    Facade node(argv[1], "cpp-echo");
    node.mountProtocol(proto, 10000, share);
    say("ready " + node.peerId());
    while (true) {
      auto event = node.nextEvent();
      if (!event) continue;
      if (event->type == FacadeEvent::Type::protocolStream) {
        workers.emplace_back(echo, std::ref(node), event->streamId);
      } else if (event->type == FacadeEvent::Type::nodeShutdown ||
                 event->type == FacadeEvent::Type::disconnected) {
        say(std::string("node gone: ") + eventTypeName(event->type));
        break;
      }
    }
    for (auto& t : workers) t.join();
  } catch (const Error& e) {
    for (auto& t : workers) t.join();
    std::fprintf(stderr, "cpp-echo-module: %s: %s\n", kindName(e.kind()), e.what());
    return 1;
  }
  return 0;
}
