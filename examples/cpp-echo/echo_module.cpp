// A C++ echo module: mounts /echo/1.0.0 through the facade and echoes every inbound
// stream until the peer half-closes, then half-closes too (closeWithEOF) and closes.
//
//   cpp-echo-module unix:/path/to/node.sock [/echo/1.0.0] [--share] [--quiet]
//
// --share: mount with RegisterOptions.share, so several processes can serve the protocol.
// --quiet: no line per stream (for a benchmark that does not read them).
// Prints "ready <node peer id>" once mounted, and "echoed <n> bytes" per stream.
// Each stream is served on a thread of its own: the facade is used from all of them. A
// thread that finished is joined at once (by a reaper thread), so a long-running module
// holds threads only for the streams open now.
#include <condition_variable>
#include <cstdio>
#include <functional>
#include <map>
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

// One thread per task; each is joined as soon as it has finished, by the reaper thread.
class Workers {
 public:
  Workers() : reaper_([this]() { reap(); }) {}
  ~Workers() {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      stopping_ = true;  // the reaper ends once every worker is joined
    }
    changed_.notify_all();
    reaper_.join();
  }
  Workers(const Workers&) = delete;
  Workers& operator=(const Workers&) = delete;

  void start(std::function<void()> task) {
    std::lock_guard<std::mutex> lock(mutex_);
    uint64_t key = next_++;
    running_.emplace(key, std::thread([this, key, task = std::move(task)]() {
      task();
      {
        std::lock_guard<std::mutex> lock(mutex_);
        finished_.push_back(key);
      }
      changed_.notify_all();
    }));
  }

 private:
  void reap() {
    std::unique_lock<std::mutex> lock(mutex_);
    while (true) {
      changed_.wait(lock, [this]() { return !finished_.empty() || (stopping_ && running_.empty()); });
      if (finished_.empty()) return;  // stopping, and nothing runs
      std::vector<std::thread> done;
      for (uint64_t key : finished_) {
        auto it = running_.find(key);
        done.push_back(std::move(it->second));
        running_.erase(it);
      }
      finished_.clear();
      lock.unlock();
      for (auto& t : done) t.join();  // each has announced its end: this returns promptly
      lock.lock();
    }
  }

  std::mutex mutex_;
  std::condition_variable changed_;
  std::map<uint64_t, std::thread> running_;
  std::vector<uint64_t> finished_;
  uint64_t next_ = 0;
  bool stopping_ = false;
  std::thread reaper_;  // last: started once the rest is built
};

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
  try {
    Facade node(argv[1], "cpp-echo");
    Workers workers;  // destroyed (every echo joined) before the facade they use
    node.mountProtocol(proto, 10000, share);
    say("ready " + node.peerId());
    while (true) {
      auto event = node.nextEvent();
      if (!event) continue;
      if (event->type == FacadeEvent::Type::protocolStream) {
        uint64_t id = event->streamId;
        workers.start([&node, id]() { echo(node, id); });
      } else if (event->type == FacadeEvent::Type::nodeShutdown ||
                 event->type == FacadeEvent::Type::disconnected) {
        say(std::string("node gone: ") + eventTypeName(event->type));
        break;
      }
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "cpp-echo-module: %s: %s\n", kindName(e.kind()), e.what());
    return 1;
  }
  return 0;
}
