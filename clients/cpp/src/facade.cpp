// The facade: a kj event loop on a thread of its own, calls marshalled onto it.
#include "logos_p2p/facade.hpp"

#include <kj/async-io.h>
#include <kj/debug.h>
#include <kj/vector.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <future>
#include <map>
#include <mutex>
#include <thread>

#include "logos_p2p/client.hpp"

namespace logos::p2p {

const char* eventTypeName(FacadeEvent::Type type) {
  switch (type) {
    case FacadeEvent::Type::protocolStream: return "protocolStream";
    case FacadeEvent::Type::streamReset: return "streamReset";
    case FacadeEvent::Type::nodeShutdown: return "nodeShutdown";
    case FacadeEvent::Type::disconnected: return "disconnected";
    case FacadeEvent::Type::peerConnected: return "peerConnected";
    case FacadeEvent::Type::peerDisconnected: return "peerDisconnected";
    case FacadeEvent::Type::peerIdentified: return "peerIdentified";
    case FacadeEvent::Type::overflowed: return "overflowed";
  }
  return "unknown";
}

namespace {

struct Entry {
  uint64_t id;
  Stream stream;
  bool resetReported = false;
  Entry(uint64_t i, Stream s) : id(i), stream(kj::mv(s)) {}
};

bool isReset(ErrorKind kind) {
  return kind == ErrorKind::streamReset || kind == ErrorKind::nodeShutdown || kind == ErrorKind::nodeDisconnected;
}

}  // namespace

// Everything below `loop` lives on the loop thread and is touched only there; the event
// queue and the flags are shared (mutex, atomics).
struct Facade::Impl {
  // -- shared ---------------------------------------------------------------------------------
  std::mutex mutex;
  std::condition_variable cv;
  std::deque<FacadeEvent> events;
  bool ended = false;  // the last event was queued
  bool stopping = false;
  std::function<void(const FacadeEvent&)> callback;
  std::thread dispatcher;
  std::atomic<bool> shuttingDown{false};
  std::atomic<bool> connectedFlag{false};
  kj::Own<const kj::Executor> executor;
  std::thread thread;

  // -- loop thread only -------------------------------------------------------------------------
  struct Loop {
    kj::AsyncIoContext& io;
    Node node;
    std::map<uint64_t, std::shared_ptr<Entry>> streams;
    std::map<std::string, Registration> mounts;
    kj::Maybe<Subscription> peerEvents;
    uint64_t nextId = 1;
    Loop(kj::AsyncIoContext& i, Node n) : io(i), node(kj::mv(n)) {}
  };
  Loop* loop = nullptr;
  kj::Own<kj::PromiseFulfiller<void>> stop;

  void push(FacadeEvent event) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      if (ended) return;
      if (event.type == FacadeEvent::Type::nodeShutdown || event.type == FacadeEvent::Type::disconnected)
        ended = true;
      events.push_back(kj::mv(event));
    }
    cv.notify_all();
  }

  // Run fn() -> Promise<T> on the loop thread, bounded by timeoutMs; typed errors here.
  template <typename Fn>
  auto call(uint32_t timeoutMs, Fn&& fn) -> kj::_::UnwrapPromise<decltype(fn())> {
    using T = kj::_::UnwrapPromise<decltype(fn())>;
    if (!executor->isLive()) raise(ErrorInfo{shuttingDown ? ErrorKind::nodeShutdown : ErrorKind::nodeDisconnected,
                                             shuttingDown ? Cause::nodeShutdown : Cause::moduleGone,
                                             "the facade's connection is gone"});
    try {
      return executor->executeSync([&]() -> kj::Promise<T> {
        auto promise = kj::evalNow([&]() -> kj::Promise<T> { return fn(); });
        if (timeoutMs == 0) return promise;
        return promise.exclusiveJoin(
            loop->io.provider->getTimer().afterDelay(timeoutMs * kj::MILLISECONDS).then([timeoutMs]() -> kj::Promise<T> {
              return makeException(ErrorKind::timeout, "no answer within " + std::to_string(timeoutMs) + " ms");
            }));
      });
    } catch (const kj::Exception& e) {
      raise(e, shuttingDown);
    }
  }

  std::shared_ptr<Entry> entry(uint64_t id) {
    auto it = loop->streams.find(id);
    if (it == loop->streams.end())
      kj::throwFatalException(makeException(ErrorKind::invalidArgument, "unknown stream id " + std::to_string(id)));
    return it->second;
  }

  // A stream operation: report a reset once (as an event), whoever finds it.
  template <typename T>
  kj::Promise<T> onStream(uint64_t id, kj::Function<kj::Promise<T>(Stream&)> op) {
    auto e = entry(id);
    return op(e->stream).catch_([this, e](kj::Exception&& ex) -> kj::Promise<T> {
      auto info = classify(ex, shuttingDown);
      if (isReset(info.kind) && !e->resetReported) {
        e->resetReported = true;
        FacadeEvent ev;
        ev.type = FacadeEvent::Type::streamReset;
        ev.streamId = e->id;
        ev.cause = info.cause;
        ev.message = info.message;
        push(kj::mv(ev));
      }
      return kj::mv(ex);
    });
  }

  uint64_t adopt(Stream stream) {
    uint64_t id = loop->nextId++;
    loop->streams.emplace(id, std::make_shared<Entry>(id, kj::mv(stream)));
    return id;
  }

  void run(std::string address, std::string name, uint32_t connectTimeoutMs, std::promise<void>& ready) {
    try {
      auto io = kj::setupAsyncIo();
      auto connecting = connect(io, address);
      if (connectTimeoutMs)
        connecting = io.provider->getTimer().timeoutAfter(connectTimeoutMs * kj::MILLISECONDS, kj::mv(connecting));
      Node node = connecting.wait(io.waitScope);
      if (!name.empty()) node.setModuleName(name).wait(io.waitScope);
      Loop state(io, node);
      loop = &state;
      connectedFlag = true;
      auto watch = node.onEnded()
                       .then([this, node]() mutable {
                         connectedFlag = !node.disconnected();
                         FacadeEvent ev;
                         if (node.shuttingDown()) {
                           shuttingDown = true;
                           ev.type = FacadeEvent::Type::nodeShutdown;
                           ev.cause = Cause::nodeShutdown;
                           ev.message = "the node is shutting down";
                         } else {
                           ev.type = FacadeEvent::Type::disconnected;
                           ev.cause = Cause::moduleGone;
                           ev.message = "the RPC connection to the node broke";
                         }
                         push(kj::mv(ev));
                       })
                       .eagerlyEvaluate(nullptr);
      auto paf = kj::newPromiseAndFulfiller<void>();
      stop = kj::mv(paf.fulfiller);
      executor = kj::getCurrentThreadExecutor().addRef();
      ready.set_value();
      paf.promise.wait(io.waitScope);
      // torn down on this thread: streams, registrations, then the connection
      state.streams.clear();
      state.mounts.clear();
      state.peerEvents = nullptr;
      loop = nullptr;
      connectedFlag = false;
    } catch (const kj::Exception& e) {
      // a kj::Exception belongs to its thread (kj aborts if another destroys it): cross as ours
      connectedFlag = false;
      auto info = classify(e);
      if (info.kind == ErrorKind::internal) info.kind = ErrorKind::nodeDisconnected;
      try {
        raise(info);
      } catch (...) {
        fail(ready, std::current_exception());
      }
    } catch (...) {
      connectedFlag = false;
      fail(ready, std::current_exception());
    }
  }

  static void fail(std::promise<void>& ready, std::exception_ptr error) {
    try {
      ready.set_exception(error);
    } catch (const std::future_error&) {
      // already running: the loop failed later; calls will find the executor gone
    }
  }

  // On the loop thread: reset every stream, unmount everything (bounded), then stop.
  kj::Promise<void> teardown() {
    kj::Vector<kj::Promise<void>> pending;
    for (auto& [id, e] : loop->streams) pending.add(e->stream.reset());
    for (auto& [proto, reg] : loop->mounts) pending.add(reg.unregister().catch_([](kj::Exception&&) {}));
    auto all = kj::joinPromises(pending.releaseAsArray());
    return all.exclusiveJoin(loop->io.provider->getTimer().afterDelay(1 * kj::SECONDS)).then([this]() {
      loop->streams.clear();
      loop->mounts.clear();
      loop->peerEvents = nullptr;
      stop->fulfill();
    });
  }
};

Facade::Facade(const std::string& address, const std::string& moduleName, uint32_t connectTimeoutMs)
    : impl_(std::make_shared<Impl>()) {
  std::promise<void> ready;
  auto started = ready.get_future();
  Impl* impl = impl_.get();
  impl_->thread = std::thread([impl, address, moduleName, connectTimeoutMs, &ready]() {
    impl->run(address, moduleName, connectTimeoutMs, ready);
  });
  try {
    started.get();
  } catch (...) {
    impl_->thread.join();
    throw;
  }
}

Facade::~Facade() {
  if (impl_->executor && impl_->executor->isLive()) {
    try {
      impl_->executor->executeSync([this]() { return impl_->teardown(); });
    } catch (const kj::Exception&) {
      // the loop is gone already
    }
  }
  if (impl_->thread.joinable()) impl_->thread.join();
  {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    impl_->stopping = true;
  }
  impl_->cv.notify_all();
  if (impl_->dispatcher.joinable()) impl_->dispatcher.join();
}

std::string Facade::peerId(uint32_t timeoutMs) {
  return impl_->call(timeoutMs, [this]() {
    return impl_->loop->node.info().then([](NodeInfo info) { return info.peerId; });
  });
}

std::vector<std::string> Facade::addrs(uint32_t timeoutMs) {
  return impl_->call(timeoutMs, [this]() {
    return impl_->loop->node.info().then([](NodeInfo info) { return info.addrs; });
  });
}

void Facade::mountProtocol(const std::string& proto, uint32_t timeoutMs, bool share) {
  Impl* impl = impl_.get();
  impl->call(timeoutMs, [impl, proto, share]() -> kj::Promise<void> {
    if (impl->loop->mounts.count(proto))
      return makeException(ErrorKind::protocolInUse, proto + " is already mounted by this facade");
    auto handler = [impl](Stream stream) {
      if (impl->loop == nullptr) return;  // tearing down: dropping it resets it
      FacadeEvent ev;
      ev.type = FacadeEvent::Type::protocolStream;
      ev.proto = stream.info().protocol;
      ev.peerId = stream.info().remotePeerId;
      ev.remoteAddr = stream.info().remoteAddr;
      ev.streamId = impl->adopt(kj::mv(stream));
      impl->push(kj::mv(ev));
    };
    RegisterOptions options;
    options.share = share;
    return impl->loop->node.registerProtocols({proto}, handler, options).then([impl, proto](Registration reg) {
      impl->loop->mounts.emplace(proto, kj::mv(reg));
    });
  });
}

void Facade::unmountProtocol(const std::string& proto, uint32_t timeoutMs) {
  Impl* impl = impl_.get();
  impl->call(timeoutMs, [impl, proto]() -> kj::Promise<void> {
    auto it = impl->loop->mounts.find(proto);
    if (it == impl->loop->mounts.end()) return makeException(ErrorKind::invalidArgument, proto + " is not mounted");
    auto reg = std::make_shared<Registration>(kj::mv(it->second));
    impl->loop->mounts.erase(it);
    return reg->unregister().attach(kj::mv(reg));
  });
}

uint64_t Facade::dial(const std::string& peerId, const std::string& proto, const std::vector<std::string>& addrs,
                      uint32_t timeoutMs) {
  Impl* impl = impl_.get();
  // the node's own timeout first; the facade's a little later, so the node's error wins
  uint32_t outer = timeoutMs ? timeoutMs + 2000 : 0;
  return impl->call(outer, [impl, peerId, proto, addrs, timeoutMs]() {
    return impl->loop->node.openStream(peerId, {proto}, addrs, timeoutMs).then([impl](Stream stream) {
      return impl->adopt(kj::mv(stream));
    });
  });
}

Bytes Facade::request(const std::string& peerId, const std::string& proto, const Bytes& data,
                      const std::vector<std::string>& addrs, uint32_t timeoutMs, uint32_t maxSize) {
  Impl* impl = impl_.get();
  uint32_t outer = timeoutMs ? timeoutMs + 2000 : 0;  // the node's timeout error wins
  return impl->call(outer, [impl, &peerId, &proto, &data, &addrs, timeoutMs, maxSize]() {
    return impl->loop->node.request(peerId, {proto}, data, addrs, timeoutMs, maxSize);
  });
}

void Facade::subscribePeerEvents(uint32_t queueSize, uint32_t timeoutMs) {
  Impl* impl = impl_.get();
  impl->call(timeoutMs, [impl, queueSize]() -> kj::Promise<void> {
    if (impl->loop->peerEvents != nullptr)
      return makeException(ErrorKind::invalidArgument, "this facade already subscribed to peer events");
    auto handler = [impl](const PeerEvent& pe) {
      FacadeEvent ev;
      ev.peerId = pe.peerId;
      switch (pe.type) {
        case PeerEvent::Type::connected:
          ev.type = FacadeEvent::Type::peerConnected;
          ev.remoteAddr = pe.remoteAddr;
          ev.outbound = pe.direction == Direction::outbound;
          break;
        case PeerEvent::Type::disconnected:
          ev.type = FacadeEvent::Type::peerDisconnected;
          ev.reason = disconnectReasonName(pe.reason);
          break;
        case PeerEvent::Type::identified:
          ev.type = FacadeEvent::Type::peerIdentified;
          ev.agentVersion = pe.agentVersion;
          ev.protocols = pe.protocols;
          break;
        case PeerEvent::Type::overflowed: ev.type = FacadeEvent::Type::overflowed; break;
      }
      impl->push(kj::mv(ev));
    };
    return impl->loop->node.subscribePeerEvents(handler, queueSize).then([impl](Subscription sub) -> kj::Promise<void> {
      if (impl->loop->peerEvents != nullptr)  // two calls at once: the later one is dropped
        return makeException(ErrorKind::invalidArgument, "this facade already subscribed to peer events");
      impl->loop->peerEvents = kj::mv(sub);
      return kj::READY_NOW;
    });
  });
}

void Facade::unsubscribePeerEvents(uint32_t timeoutMs) {
  Impl* impl = impl_.get();
  impl->call(timeoutMs, [impl]() -> kj::Promise<void> {
    KJ_IF_MAYBE(sub, impl->loop->peerEvents) {
      auto held = std::make_shared<Subscription>(kj::mv(*sub));
      impl->loop->peerEvents = nullptr;
      return held->cancel().attach(kj::mv(held));
    }
    return makeException(ErrorKind::invalidArgument, "this facade is not subscribed to peer events");
  });
}

Bytes Facade::streamRead(uint64_t id, size_t maxBytes, uint32_t timeoutMs) {
  Impl* impl = impl_.get();
  return impl->call(timeoutMs, [impl, id, maxBytes]() {
    return impl->onStream<Bytes>(id, [maxBytes](Stream& s) { return s.read(maxBytes); });
  });
}

Bytes Facade::streamReadExactly(uint64_t id, size_t n, uint32_t timeoutMs) {
  Impl* impl = impl_.get();
  return impl->call(timeoutMs, [impl, id, n]() {
    return impl->onStream<Bytes>(id, [n](Stream& s) { return s.readExactly(n); });
  });
}

Bytes Facade::streamReadLp(uint64_t id, uint32_t maxSize, uint32_t timeoutMs) {
  Impl* impl = impl_.get();
  return impl->call(timeoutMs, [impl, id, maxSize]() {
    return impl->onStream<Bytes>(id, [maxSize](Stream& s) { return s.readLp(maxSize); });
  });
}

void Facade::streamWrite(uint64_t id, const Bytes& data, uint32_t timeoutMs) {
  Impl* impl = impl_.get();
  impl->call(timeoutMs, [impl, id, &data]() {
    return impl->onStream<void>(id, [&data](Stream& s) { return s.write(data); });
  });
}

void Facade::streamWriteLp(uint64_t id, const Bytes& data, uint32_t timeoutMs) {
  Impl* impl = impl_.get();
  impl->call(timeoutMs, [impl, id, &data]() {
    return impl->onStream<void>(id, [&data](Stream& s) { return s.writeLp(data); });
  });
}

void Facade::streamCloseWithEOF(uint64_t id, uint32_t timeoutMs) {
  Impl* impl = impl_.get();
  impl->call(timeoutMs, [impl, id]() { return impl->onStream<void>(id, [](Stream& s) { return s.closeWrite(); }); });
}

void Facade::streamClose(uint64_t id, uint32_t timeoutMs) {
  Impl* impl = impl_.get();
  impl->call(timeoutMs, [impl, id]() {
    auto e = impl->entry(id);
    impl->loop->streams.erase(id);  // the id is freed whatever happens
    return e->stream.close().attach(kj::mv(e));
  });
}

void Facade::streamReset(uint64_t id) {
  Impl* impl = impl_.get();
  impl->call(5000, [impl, id]() {
    auto e = impl->entry(id);
    impl->loop->streams.erase(id);
    return e->stream.reset().attach(kj::mv(e));
  });
}

void Facade::streamRelease(uint64_t id) {
  Impl* impl = impl_.get();
  impl->call(5000, [impl, id]() -> kj::Promise<void> {
    auto e = impl->entry(id);
    impl->loop->streams.erase(id);
    e->stream.release();  // pending operations on it fail; the node resets an unclosed stream
    return kj::READY_NOW;
  });
}

FacadeStreamInfo Facade::streamInfo(uint64_t id) {
  Impl* impl = impl_.get();
  FacadeStreamInfo out;  // filled on the loop thread (call waits): no promise of a struct of
                         // strings, which GCC 12 -O3 warns about (-Wmaybe-uninitialized)
  impl->call(5000, [impl, id, &out]() -> kj::Promise<void> {
    auto e = impl->entry(id);
    const auto& i = e->stream.info();
    out.streamId = id;
    out.nodeStreamId = i.id;
    out.proto = i.protocol;
    out.peerId = i.remotePeerId;
    out.remoteAddr = i.remoteAddr;
    out.outbound = i.direction == Direction::outbound;
    return kj::READY_NOW;
  });
  return out;
}

size_t Facade::streamCount() {
  Impl* impl = impl_.get();
  return impl->call(5000, [impl]() -> kj::Promise<size_t> { return impl->loop->streams.size(); });
}

std::optional<FacadeEvent> Facade::nextEvent(uint32_t timeoutMs) {
  std::unique_lock<std::mutex> lock(impl_->mutex);
  auto ready = [this]() { return !impl_->events.empty() || impl_->ended || impl_->stopping; };
  if (timeoutMs == 0) {
    impl_->cv.wait(lock, ready);
  } else if (!impl_->cv.wait_for(lock, std::chrono::milliseconds(timeoutMs), ready)) {
    return std::nullopt;
  }
  if (impl_->events.empty()) {
    if (impl_->shuttingDown) throw NodeShutdown("the node shut down");
    throw NodeDisconnected("the connection to the node is closed");
  }
  FacadeEvent ev = kj::mv(impl_->events.front());
  impl_->events.pop_front();
  return ev;
}

void Facade::setEventCallback(std::function<void(const FacadeEvent&)> callback) {
  Impl* impl = impl_.get();
  std::lock_guard<std::mutex> lock(impl->mutex);
  if (impl->dispatcher.joinable()) throw InvalidArgument("the event callback is already set");
  impl->callback = kj::mv(callback);
  impl->dispatcher = std::thread([impl]() {
    std::unique_lock<std::mutex> lock(impl->mutex);
    while (true) {
      impl->cv.wait(lock, [impl]() { return !impl->events.empty() || impl->stopping; });
      if (impl->events.empty()) return;
      FacadeEvent ev = kj::mv(impl->events.front());
      impl->events.pop_front();
      lock.unlock();
      impl->callback(ev);
      lock.lock();
    }
  });
}

bool Facade::shuttingDown() const { return impl_->shuttingDown; }
bool Facade::connected() const { return impl_->connectedFlag; }

}  // namespace logos::p2p
