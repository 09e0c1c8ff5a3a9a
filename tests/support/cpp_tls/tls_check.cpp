// The C++ client's connect() with explicit ConnectOptions, for tests/test_cpp_tls.py.
//
//   logos-p2p-tls-check ADDRESS [--fingerprint F] [--ca FILE] [--cert FILE] [--key FILE] [--token T]
//                               [--echo PEER_ADDR BYTES]
//
// Connects, asks Node.info and prints "ok <peerId>"; with --echo also opens /echo/1.0.0 on
// PEER_ADDR, writes BYTES bytes of a fixed pattern, half-closes, reads the echo back and
// prints "echoed <n> <matches:0|1>". On a failure: "failed <kind> <message>", exit 1.
#include <cstdio>
#include <cstring>
#include <string>

#include "logos_p2p/client.hpp"

using namespace logos::p2p;

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s ADDRESS [--fingerprint F] [--ca F] [--cert F] [--key F] [--token T]\n", argv[0]);
    return 2;
  }
  ConnectOptions options;
  std::string echoPeer;
  size_t echoBytes = 0;
  for (int i = 2; i + 1 < argc; i += 2) {
    std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--fingerprint") options.fingerprint = value;
    else if (flag == "--ca") options.caFile = value;
    else if (flag == "--cert") options.certFile = value;
    else if (flag == "--key") options.keyFile = value;
    else if (flag == "--token") options.token = value;
    else if (flag == "--echo" && i + 2 < argc) {
      echoPeer = value;
      echoBytes = std::stoul(argv[i + 2]);
      ++i;
    } else {
      std::fprintf(stderr, "unknown option %s\n", flag.c_str());
      return 2;
    }
  }
  try {
    auto io = kj::setupAsyncIo();
    auto& ws = io.waitScope;
    Node node = wait(connect(io, argv[1], options), ws);
    std::printf("ok %s\n", wait(node.info(), ws).peerId.c_str());
    std::fflush(stdout);
    if (!echoPeer.empty()) {
      Bytes data(echoBytes);
      for (size_t i = 0; i < echoBytes; ++i) data[i] = static_cast<uint8_t>((i * 31 + 7) & 0xff);
      Stream stream = wait(node.openStream("", {"/echo/1.0.0"}, {echoPeer}, 10000), ws);
      auto writing = stream.write(data).then([&stream]() { return stream.closeWrite(); }).eagerlyEvaluate(nullptr);
      Bytes back;
      while (true) {
        Bytes chunk = wait(stream.read(65536), ws);
        if (chunk.empty()) break;
        back.insert(back.end(), chunk.begin(), chunk.end());
      }
      wait(kj::mv(writing), ws);
      wait(stream.close(), ws);
      std::printf("echoed %zu %d\n", back.size(), back == data ? 1 : 0);
    }
    return 0;
  } catch (const Error& e) {
    std::printf("failed %s %s\n", kindName(e.kind()), e.what());
    return 1;
  }
}
