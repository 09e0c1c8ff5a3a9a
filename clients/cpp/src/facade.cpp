// The facade: a kj event loop on a thread of its own, calls marshalled onto it.
#include "logos_p2p/facade.hpp"

#include <kj/async-io.h>
#include <kj/debug.h>
#include <kj/vector.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <future>
#include <map>
#include <mutex>
#include <thread>
#include <type_traits>

#include "logos_p2p/client.hpp"

// ThreadSanitizer cannot see kj's cross-thread handoffs (kj::Mutex waits on futexes inside
// libkj, which is not instrumented): say where they synchronise. No-ops without TSan.
#if defined(__SANITIZE_THREAD__)
extern "C" void __tsan_acquire(void* addr);
extern "C" void __tsan_release(void* addr);
#define LOGOS_P2P_TSAN_ACQUIRE(addr) __tsan_acquire(addr)
#define LOGOS_P2P_TSAN_RELEASE(addr) __tsan_release(addr)
// the object at addr is written out before what follows (no store to it sinks past a release)
#define LOGOS_P2P_TSAN_ESCAPE(addr) asm volatile("" : : "r"(addr) : "memory")
#else
#define LOGOS_P2P_TSAN_ACQUIRE(addr) static_cast<void>(addr)
#define LOGOS_P2P_TSAN_RELEASE(addr) static_cast<void>(addr)
#define LOGOS_P2P_TSAN_ESCAPE(addr) static_cast<void>(addr)
#endif

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

bool isPeerEvent(FacadeEvent::Type type) {
  return type == FacadeEvent::Type::peerConnected || type == FacadeEvent::Type::peerDisconnected ||
         type == FacadeEvent::Type::peerIdentified || type == FacadeEvent::Type::overflowed;
}

constexpr uint32_t kDefaultPeerQueue = 256;  // the node's default queueSize
const char kClosed[] = "the facade is closed";

// The failure of a call once destruction began: NodeDisconnected, cause moduleGone.
kj::Exception closedException() { return makeException(ErrorKind::streamReset, kClosed, Cause::moduleGone); }

kj::Exception mountedHere(const std::string& proto) {
  return makeException(ErrorKind::protocolInUse, proto + " is already mounted by this facade");
}

FacadeStreamInfo facadeInfo(const StreamInfo& i, uint64_t id) {
  FacadeStreamInfo out;
  out.streamId = id;
  out.nodeStreamId = i.id;
  out.proto = i.protocol;
  out.peerId = i.remotePeerId;
  out.remoteAddr = i.remoteAddr;
  out.outbound = i.direction == Direction::outbound;
  return out;
}


// A responder's answer, handed from its thread to the loop's (no kj::Exception crosses).
struct Answer {
  bool ok = false;
  Bytes reply;
  std::string error;
};

// One served protocol, shared by the loop (which queues its requests) and the responders.
struct ServeState {
  FacadeResponder responder;
  bool live = true;    // the pool's mutex: false once unserved (waiting requests then fail)
  size_t running = 0;  // the pool's mutex: responders of it running now
};

struct Job {
  std::shared_ptr<ServeState> serve;
  Bytes request;
  FacadeStreamInfo info;
  // on the heap: GCC 12 -O3 warns (-Wmaybe-uninitialized) about an ExceptionOr of its strings
  kj::Own<kj::CrossThreadPromiseFulfiller<kj::Own<Answer>>> fulfiller;
};

thread_local const ServeState* tlsServing = nullptr;  // the responder this thread is running

// For TSan, what kj's executor mutex orders: a caller's writes before executeSync and the
// loop's work on them, the loop's answer and the caller's reads after. One address for all
// calls (the loop must find it without reading anything the caller wrote), as kj's one mutex.
int executorToken;

// `promise`, releasing `token` (for TSan) once it settled, before kj hands the result over.
template <typename T>
kj::Promise<T> releasing(kj::Promise<T>&& promise, void* token) {
  return promise.then(
      [token](T value) {
        LOGOS_P2P_TSAN_RELEASE(token);
        return value;
      },
      [token](kj::Exception&& e) -> T {
        LOGOS_P2P_TSAN_RELEASE(token);
        kj::throwFatalException(kj::mv(e));
      });
}
template <>
kj::Promise<void> releasing(kj::Promise<void>&& promise, void* token) {
  return promise.then([token]() { LOGOS_P2P_TSAN_RELEASE(token); },
                      [token](kj::Exception&& e) {
                        LOGOS_P2P_TSAN_RELEASE(token);
                        kj::throwFatalException(kj::mv(e));
                      });
}

void joinOrDetach(std::thread& t) {
  if (!t.joinable()) return;
  if (t.get_id() == std::this_thread::get_id()) {
    t.detach();  // destroyed from its own callback/responder: it ends once that returns
  } else {
    t.join();
  }
}

}  // namespace

// Everything below `loop` lives on the loop thread and is touched only there; the event
// queue, the flags and the responders' queue are shared (mutexes, atomics).
struct Facade::Impl : std::enable_shared_from_this<Facade::Impl> {
  // -- shared ---------------------------------------------------------------------------------
  std::mutex mutex;
  std::condition_variable cv;    // an event, the end, or closing
  std::condition_variable idle;  // a thread left a facade method
  std::deque<FacadeEvent> events;
  bool ended = false;    // the last event was queued
  bool stopping = false;  // the dispatcher is to stop
  bool closing = false;   // destruction began: calls fail, blocked ones return
  size_t active = 0;      // threads inside facade methods
  size_t peerBound = kDefaultPeerQueue;  // peer events held for the owner at most
  size_t peerWaiting = 0;                // peer events in `events`
  bool newestPeerIsOverflow = false;     // the newest of them is an overflowed event
  std::function<void(const FacadeEvent&)> callback;
  std::thread dispatcher;
  std::atomic<bool> shuttingDown{false};
  std::atomic<bool> connectedFlag{false};
  kj::Own<const kj::Executor> executor;
  std::thread thread;

  // -- responders (poolMutex) -------------------------------------------------------------------
  std::mutex poolMutex;
  std::condition_variable poolCv;    // a job, or stop
  std::condition_variable poolIdle;  // a responder returned
  std::deque<Job> jobs;
  std::vector<std::thread> workers;
  size_t idleWorkers = 0;
  bool poolStop = false;

  // -- loop thread only -------------------------------------------------------------------------
  struct Loop {
    kj::AsyncIoContext& io;
    Node node;
    std::map<uint64_t, std::shared_ptr<Entry>> streams;
    std::map<std::string, Registration> mounts;  // mounted and served protocols
    std::map<std::string, std::shared_ptr<ServeState>> serves;
    kj::Maybe<Subscription> peerEvents;
    uint64_t nextId = 1;
    bool closing = false;
    kj::Own<kj::PromiseFulfiller<void>> closer;
    kj::ForkedPromise<void> closed;  // resolves when destruction begins
    Loop(kj::AsyncIoContext& i, Node n, kj::PromiseFulfillerPair<void> paf)
        : io(i), node(kj::mv(n)), closer(kj::mv(paf.fulfiller)), closed(paf.promise.fork()) {}
  };
  Loop* loop = nullptr;
  kj::Own<kj::PromiseFulfiller<void>> stop;

  // A thread inside a facade method, for the destructor to wait for. It holds the Impl, so
  // leaving touches nothing the destructor frees.
  class Inside {
   public:
    explicit Inside(const std::shared_ptr<Impl>& impl) : impl_(impl) {
      std::lock_guard<std::mutex> lock(impl_->mutex);
      if (impl_->closing) throw NodeDisconnected(kClosed);
      ++impl_->active;
    }
    ~Inside() {
      std::lock_guard<std::mutex> lock(impl_->mutex);
      if (--impl_->active == 0) impl_->idle.notify_all();
    }
    Inside(const Inside&) = delete;
    Inside& operator=(const Inside&) = delete;
    Impl* get() const { return impl_.get(); }

   private:
    std::shared_ptr<Impl> impl_;
  };

  void push(FacadeEvent event) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      if (ended || closing) return;
      if (event.type == FacadeEvent::Type::nodeShutdown || event.type == FacadeEvent::Type::disconnected)
        ended = true;
      if (isPeerEvent(event.type) && !admitPeerEvent(event)) return;
      events.push_back(kj::mv(event));
    }
    cv.notify_all();
  }

  // Under `mutex`: whether to queue the peer event `event`. Over the bound, the waiting peer
  // events and this one make way for one overflowed event (which `event` becomes).
  bool admitPeerEvent(FacadeEvent& event) {
    if (event.type == FacadeEvent::Type::overflowed && newestPeerIsOverflow) return false;
    if (peerWaiting >= peerBound) {
      events.erase(std::remove_if(events.begin(), events.end(),
                                  [](const FacadeEvent& e) { return isPeerEvent(e.type); }),
                   events.end());
      peerWaiting = 0;
      event = FacadeEvent();
      event.type = FacadeEvent::Type::overflowed;
    }
    ++peerWaiting;
    newestPeerIsOverflow = event.type == FacadeEvent::Type::overflowed;
    return true;
  }

  // Under `mutex`: the front event, taken by the owner.
  FacadeEvent take() {
    FacadeEvent ev = kj::mv(events.front());
    events.pop_front();
    if (isPeerEvent(ev.type) && --peerWaiting == 0) newestPeerIsOverflow = false;
    return ev;
  }

  // Run fn() -> Promise<T> on the loop thread, bounded by timeoutMs and by the facade's
  // destruction; typed errors here.
  template <typename Fn>
  auto call(uint32_t timeoutMs, Fn&& fn) -> kj::_::UnwrapPromise<decltype(fn())> {
    using T = kj::_::UnwrapPromise<decltype(fn())>;
    if (!executor->isLive()) raise(ErrorInfo{shuttingDown ? ErrorKind::nodeShutdown : ErrorKind::nodeDisconnected,
                                             shuttingDown ? Cause::nodeShutdown : Cause::moduleGone,
                                             "the facade's connection is gone"});
    auto onLoop = [&]() -> kj::Promise<T> {
      LOGOS_P2P_TSAN_ACQUIRE(&executorToken);
      if (loop == nullptr || loop->closing) return releasing<T>(closedException(), &executorToken);
      auto promise = kj::evalNow([&]() -> kj::Promise<T> { return fn(); })
                         .exclusiveJoin(loop->closed.addBranch().then(
                             []() -> kj::Promise<T> { return closedException(); }));
      if (timeoutMs != 0)
        promise = promise.exclusiveJoin(
            loop->io.provider->getTimer().afterDelay(timeoutMs * kj::MILLISECONDS).then([timeoutMs]() -> kj::Promise<T> {
              return makeException(ErrorKind::timeout, "no answer within " + std::to_string(timeoutMs) + " ms");
            }));
      return releasing<T>(kj::mv(promise), &executorToken);
    };
    LOGOS_P2P_TSAN_ESCAPE(&onLoop);
    LOGOS_P2P_TSAN_RELEASE(&executorToken);  // everything this thread wrote, onLoop included
    try {
      if constexpr (std::is_void_v<T>) {
        executor->executeSync(onLoop);
        LOGOS_P2P_TSAN_ACQUIRE(&executorToken);
      } else {
        T answer = executor->executeSync(onLoop);
        LOGOS_P2P_TSAN_ACQUIRE(&executorToken);
        return answer;
      }
    } catch (const kj::Exception& e) {
      LOGOS_P2P_TSAN_ACQUIRE(&executorToken);
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

  // -- responders -----------------------------------------------------------------------------

  // On the loop thread: a request for a responder thread (one is started if none is idle and
  // fewer than kFacadeResponderThreads run). Dropped once the pool stopped: the fulfiller's
  // destruction then fails the request.
  void submit(Job job) {
    std::lock_guard<std::mutex> lock(poolMutex);
    if (poolStop) return;
    jobs.push_back(kj::mv(job));
    if (idleWorkers == 0 && workers.size() < kFacadeResponderThreads) {
      auto self = shared_from_this();
      workers.emplace_back([self]() { self->work(); });
    } else {
      poolCv.notify_one();
    }
  }

  void work() {
    std::unique_lock<std::mutex> lock(poolMutex);
    while (true) {
      if (jobs.empty()) {
        if (poolStop) return;
        ++idleWorkers;
        poolCv.wait(lock, [this]() { return !jobs.empty() || poolStop; });
        --idleWorkers;
        continue;
      }
      Job job = kj::mv(jobs.front());
      jobs.pop_front();
      Answer answer;
      if (!job.serve->live || poolStop) {
        answer.error = "the protocol is no longer served";
      } else {
        ++job.serve->running;
        lock.unlock();
        answer = respond(job);
        lock.lock();
        --job.serve->running;
        poolIdle.notify_all();
      }
      lock.unlock();
      LOGOS_P2P_TSAN_RELEASE(job.serve.get());  // the answer's bytes, to the loop (kj's handoff)
      job.fulfiller->fulfill(kj::heap<Answer>(kj::mv(answer)));
      job = Job();
      lock.lock();
    }
  }

  static Answer respond(Job& job) {
    Answer answer;
    tlsServing = job.serve.get();
    try {
      answer.reply = job.serve->responder(job.request, job.info);
      answer.ok = true;
    } catch (const std::exception& e) {
      answer.error = e.what();
    } catch (...) {
      answer.error = "the responder threw";
    }
    tlsServing = nullptr;
    return answer;
  }

  // No responder of `serve` is called any more; wait for those running (but this thread's).
  void retire(const std::shared_ptr<ServeState>& serve) {
    std::unique_lock<std::mutex> lock(poolMutex);
    serve->live = false;
    size_t mine = tlsServing == serve.get() ? 1 : 0;
    poolIdle.wait(lock, [&]() { return serve->running <= mine; });
  }

  // The kj side of a served protocol: each request goes to a responder thread; its answer
  // comes back through a cross-thread fulfiller.
  Responder responderFor(std::shared_ptr<ServeState> serve) {
    return [this, serve](Bytes request, StreamInfo info) -> kj::Promise<Bytes> {
      auto paf = kj::newPromiseAndCrossThreadFulfiller<kj::Own<Answer>>();
      submit(Job{serve, kj::mv(request), facadeInfo(info, 0), kj::mv(paf.fulfiller)});
      return paf.promise.then([serve](kj::Own<Answer> answer) -> kj::Promise<Bytes> {
        LOGOS_P2P_TSAN_ACQUIRE(serve.get());
        if (answer->ok) return kj::mv(answer->reply);
        std::string message = "the responder failed: " + answer->error;
        return kj::Exception(kj::Exception::Type::FAILED, __FILE__, __LINE__, kj::heapString(message.c_str()));
      });
    };
  }

  // unmountProtocol / unserve on the loop thread; `served` gets the serve state, if any.
  kj::Promise<void> unmount(const std::string& proto, bool servedOnly, std::shared_ptr<ServeState>& served) {
    auto it = loop->mounts.find(proto);
    auto s = loop->serves.find(proto);
    if (it == loop->mounts.end() || (servedOnly && s == loop->serves.end()))
      return makeException(ErrorKind::invalidArgument, proto + (servedOnly ? " is not served" : " is not mounted"));
    if (s != loop->serves.end()) {
      served = s->second;
      loop->serves.erase(s);
    }
    auto reg = std::make_shared<Registration>(kj::mv(it->second));
    loop->mounts.erase(it);
    return reg->unregister().attach(kj::mv(reg));
  }

  // unmountProtocol / unserve from the caller's thread: unmount on the loop, then wait for
  // the served protocol's running responders (whether or not the node's answer came).
  void unmountNow(const std::string& proto, bool servedOnly, uint32_t timeoutMs) {
    std::shared_ptr<ServeState> served;
    try {
      call(timeoutMs, [this, &proto, servedOnly, &served]() { return unmount(proto, servedOnly, served); });
    } catch (...) {
      if (served) retire(served);
      throw;
    }
    if (served) retire(served);
  }

  // -- the loop ---------------------------------------------------------------------------------

  void run(std::string address, ConnectOptions options, std::string name, uint32_t connectTimeoutMs,
           std::promise<void>& ready) {
    try {
      auto io = kj::setupAsyncIo();
      auto connecting = connect(io, address, options);
      if (connectTimeoutMs)
        connecting = io.provider->getTimer().timeoutAfter(connectTimeoutMs * kj::MILLISECONDS, kj::mv(connecting));
      Node node = connecting.wait(io.waitScope);
      if (!name.empty()) node.setModuleName(name).wait(io.waitScope);
      Loop state(io, node, kj::newPromiseAndFulfiller<void>());
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
      state.serves.clear();
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

  // On the loop thread, once no thread is inside: reset every stream, unmount everything
  // (bounded), then stop.
  kj::Promise<void> teardown() {
    {
      std::lock_guard<std::mutex> lock(poolMutex);
      for (auto& [proto, serve] : loop->serves) serve->live = false;
    }
    kj::Vector<kj::Promise<void>> pending;
    for (auto& [id, e] : loop->streams) pending.add(e->stream.reset());
    for (auto& [proto, reg] : loop->mounts) pending.add(reg.unregister().catch_([](kj::Exception&&) {}));
    auto all = kj::joinPromises(pending.releaseAsArray());
    return all.exclusiveJoin(loop->io.provider->getTimer().afterDelay(1 * kj::SECONDS)).then([this]() {
      loop->streams.clear();
      loop->mounts.clear();
      loop->serves.clear();
      loop->peerEvents = nullptr;
      stop->fulfill();
    });
  }

  // The destructor's work (see facade.hpp).
  void close() {
    {
      std::lock_guard<std::mutex> lock(mutex);
      if (closing) return;
      closing = true;
      stopping = true;
    }
    cv.notify_all();  // nextEvent and the dispatcher
    if (executor && executor->isLive()) {
      try {  // calls blocked on the loop return now
        executor->executeSync([this]() {
          if (loop != nullptr && !loop->closing) {
            loop->closing = true;
            loop->closer->fulfill();
          }
        });
      } catch (const kj::Exception&) {
        // the loop is gone already
      }
    }
    {
      std::unique_lock<std::mutex> lock(mutex);
      idle.wait(lock, [this]() { return active == 0; });
    }
    if (executor && executor->isLive()) {
      try {
        executor->executeSync([this]() -> kj::Promise<void> {
          if (loop == nullptr) return kj::READY_NOW;
          return teardown();
        });
      } catch (const kj::Exception&) {
        // the loop is gone already
      }
    }
    if (thread.joinable()) thread.join();
    {
      std::lock_guard<std::mutex> lock(poolMutex);
      poolStop = true;
    }
    poolCv.notify_all();
    for (auto& w : workers) joinOrDetach(w);  // no loop thread left to add one
    joinOrDetach(dispatcher);
  }
};

Facade::Facade(const std::string& address, const std::string& moduleName, uint32_t connectTimeoutMs)
    : Facade(address, ConnectOptions{}, moduleName, connectTimeoutMs) {}

Facade::Facade(const std::string& address, const ConnectOptions& options, const std::string& moduleName,
               uint32_t connectTimeoutMs)
    : impl_(std::make_shared<Impl>()) {
  std::promise<void> ready;
  auto started = ready.get_future();
  Impl* impl = impl_.get();
  impl_->thread = std::thread([impl, address, options, moduleName, connectTimeoutMs, &ready]() {
    impl->run(address, options, moduleName, connectTimeoutMs, ready);
  });
  try {
    started.get();
  } catch (...) {
    impl_->thread.join();
    throw;
  }
}

Facade::~Facade() {
  std::shared_ptr<Impl> impl = impl_;  // kept for the threads still leaving
  impl->close();
}

using Inside = Facade::Impl::Inside;

std::string Facade::peerId(uint32_t timeoutMs) {
  Inside in(impl_);
  Impl* impl = in.get();
  return impl->call(timeoutMs, [impl]() {
    return impl->loop->node.info().then([](NodeInfo info) { return info.peerId; });
  });
}

std::vector<std::string> Facade::addrs(uint32_t timeoutMs) {
  Inside in(impl_);
  Impl* impl = in.get();
  return impl->call(timeoutMs, [impl]() {
    return impl->loop->node.info().then([](NodeInfo info) { return info.addrs; });
  });
}

void Facade::mountProtocol(const std::string& proto, uint32_t timeoutMs, bool share) {
  Inside in(impl_);
  Impl* impl = in.get();
  impl->call(timeoutMs, [impl, proto, share]() -> kj::Promise<void> {
    if (impl->loop->mounts.count(proto))
      return mountedHere(proto);
    auto handler = [impl](Stream stream) {
      if (impl->loop == nullptr || impl->loop->closing) return;  // closing: dropping it resets it
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
    return impl->loop->node.registerProtocols({proto}, handler, options)
        .then([impl, proto](Registration reg) -> kj::Promise<void> {
          if (!impl->loop->mounts.emplace(proto, kj::mv(reg)).second)  // two at once: this one goes
            return mountedHere(proto);
          return kj::READY_NOW;
        });
  });
}

void Facade::unmountProtocol(const std::string& proto, uint32_t timeoutMs) {
  Inside in(impl_);
  in.get()->unmountNow(proto, false, timeoutMs);
}

void Facade::serve(const std::string& proto, FacadeResponder responder, const FacadeServeOptions& options,
                   uint32_t timeoutMs) {
  Inside in(impl_);
  Impl* impl = in.get();
  if (!responder) throw InvalidArgument("serve needs a responder");
  auto state = std::make_shared<ServeState>();
  state->responder = kj::mv(responder);
  impl->call(timeoutMs, [impl, proto, options, state]() -> kj::Promise<void> {
    if (impl->loop->mounts.count(proto))
      return mountedHere(proto);
    ServeOptions serveOptions;
    serveOptions.share = options.share;
    serveOptions.maxSize = options.maxSize;
    serveOptions.timeoutMs = options.timeoutMs;
    return impl->loop->node.serve({proto}, impl->responderFor(state), serveOptions)
        .then([impl, proto, state](Registration reg) -> kj::Promise<void> {
          if (!impl->loop->mounts.emplace(proto, kj::mv(reg)).second)
            return mountedHere(proto);
          impl->loop->serves[proto] = state;
          return kj::READY_NOW;
        });
  });
}

void Facade::unserve(const std::string& proto, uint32_t timeoutMs) {
  Inside in(impl_);
  in.get()->unmountNow(proto, true, timeoutMs);
}

FacadePeerInfo Facade::connectPeer(const std::string& addr, uint32_t timeoutMs) {
  Inside in(impl_);
  Impl* impl = in.get();
  FacadePeerInfo out;  // filled on the loop thread (call waits), as streamInfo
  uint32_t outer = timeoutMs ? timeoutMs + 2000 : 0;  // the node's timeout error wins
  impl->call(outer, [impl, &addr, timeoutMs, &out]() {
    return impl->loop->node.connectPeer(addr, timeoutMs).then([&out](PeerInfo peer) { out = kj::mv(peer); });
  });
  return out;
}

void Facade::disconnectPeer(const std::string& peerId, uint32_t timeoutMs) {
  Inside in(impl_);
  Impl* impl = in.get();
  impl->call(timeoutMs, [impl, &peerId]() { return impl->loop->node.disconnectPeer(peerId); });
}

std::vector<FacadePeerInfo> Facade::peers(uint32_t timeoutMs) {
  Inside in(impl_);
  Impl* impl = in.get();
  std::vector<FacadePeerInfo> out;
  impl->call(timeoutMs, [impl, &out]() {
    return impl->loop->node.peers().then([&out](std::vector<PeerInfo> peers) { out = kj::mv(peers); });
  });
  return out;
}

FacadeNodeStatus Facade::status(uint32_t timeoutMs) {
  Inside in(impl_);
  Impl* impl = in.get();
  FacadeNodeStatus out;
  impl->call(timeoutMs, [impl, &out]() {
    return impl->loop->node.status().then([&out](NodeStatus s) { out = kj::mv(s); });
  });
  return out;
}

uint64_t Facade::dial(const std::string& peerId, const std::string& proto, const std::vector<std::string>& addrs,
                      uint32_t timeoutMs) {
  Inside in(impl_);
  Impl* impl = in.get();
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
  Inside in(impl_);
  Impl* impl = in.get();
  uint32_t outer = timeoutMs ? timeoutMs + 2000 : 0;  // the node's timeout error wins
  return impl->call(outer, [impl, &peerId, &proto, &data, &addrs, timeoutMs, maxSize]() {
    return impl->loop->node.request(peerId, {proto}, data, addrs, timeoutMs, maxSize);
  });
}

void Facade::subscribePeerEvents(uint32_t queueSize, uint32_t timeoutMs) {
  Inside in(impl_);
  Impl* impl = in.get();
  impl->call(timeoutMs, [impl, queueSize]() -> kj::Promise<void> {
    if (impl->loop->peerEvents != nullptr)
      return makeException(ErrorKind::invalidArgument, "this facade already subscribed to peer events");
    {
      std::lock_guard<std::mutex> lock(impl->mutex);
      impl->peerBound = queueSize ? queueSize : kDefaultPeerQueue;
    }
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
  Inside in(impl_);
  Impl* impl = in.get();
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
  Inside in(impl_);
  Impl* impl = in.get();
  return impl->call(timeoutMs, [impl, id, maxBytes]() {
    return impl->onStream<Bytes>(id, [maxBytes](Stream& s) { return s.read(maxBytes); });
  });
}

Bytes Facade::streamReadExactly(uint64_t id, size_t n, uint32_t timeoutMs) {
  Inside in(impl_);
  Impl* impl = in.get();
  return impl->call(timeoutMs, [impl, id, n]() {
    return impl->onStream<Bytes>(id, [n](Stream& s) { return s.readExactly(n); });
  });
}

Bytes Facade::streamReadLp(uint64_t id, uint32_t maxSize, uint32_t timeoutMs) {
  Inside in(impl_);
  Impl* impl = in.get();
  return impl->call(timeoutMs, [impl, id, maxSize]() {
    return impl->onStream<Bytes>(id, [maxSize](Stream& s) { return s.readLp(maxSize); });
  });
}

void Facade::streamWrite(uint64_t id, const Bytes& data, uint32_t timeoutMs) {
  Inside in(impl_);
  Impl* impl = in.get();
  impl->call(timeoutMs, [impl, id, &data]() {
    return impl->onStream<void>(id, [&data](Stream& s) { return s.write(data); });
  });
}

void Facade::streamWriteLp(uint64_t id, const Bytes& data, uint32_t timeoutMs) {
  Inside in(impl_);
  Impl* impl = in.get();
  impl->call(timeoutMs, [impl, id, &data]() {
    return impl->onStream<void>(id, [&data](Stream& s) { return s.writeLp(data); });
  });
}

void Facade::streamCloseWithEOF(uint64_t id, uint32_t timeoutMs) {
  Inside in(impl_);
  Impl* impl = in.get();
  impl->call(timeoutMs, [impl, id]() { return impl->onStream<void>(id, [](Stream& s) { return s.closeWrite(); }); });
}

void Facade::streamClose(uint64_t id, uint32_t timeoutMs) {
  Inside in(impl_);
  Impl* impl = in.get();
  impl->call(timeoutMs, [impl, id]() {
    auto e = impl->entry(id);
    impl->loop->streams.erase(id);  // the id is freed whatever happens
    return e->stream.close().attach(kj::mv(e));
  });
}

void Facade::streamReset(uint64_t id) {
  Inside in(impl_);
  Impl* impl = in.get();
  impl->call(5000, [impl, id]() {
    auto e = impl->entry(id);
    impl->loop->streams.erase(id);
    return e->stream.reset().attach(kj::mv(e));
  });
}

void Facade::streamRelease(uint64_t id) {
  Inside in(impl_);
  Impl* impl = in.get();
  impl->call(5000, [impl, id]() -> kj::Promise<void> {
    auto e = impl->entry(id);
    impl->loop->streams.erase(id);
    e->stream.release();  // pending operations on it fail; the node resets an unclosed stream
    return kj::READY_NOW;
  });
}

FacadeStreamInfo Facade::streamInfo(uint64_t id) {
  Inside in(impl_);
  Impl* impl = in.get();
  FacadeStreamInfo out;  // filled on the loop thread (call waits): no promise of a struct of
                         // strings, which GCC 12 -O3 warns about (-Wmaybe-uninitialized)
  impl->call(5000, [impl, id, &out]() -> kj::Promise<void> {
    out = facadeInfo(impl->entry(id)->stream.info(), id);
    return kj::READY_NOW;
  });
  return out;
}

size_t Facade::streamCount() {
  Inside in(impl_);
  Impl* impl = in.get();
  return impl->call(5000, [impl]() -> kj::Promise<size_t> { return impl->loop->streams.size(); });
}

std::optional<FacadeEvent> Facade::nextEvent(uint32_t timeoutMs) {
  Inside in(impl_);
  Impl* impl = in.get();
  std::unique_lock<std::mutex> lock(impl->mutex);
  auto ready = [impl]() { return !impl->events.empty() || impl->ended || impl->closing; };
  if (timeoutMs == 0) {
    impl->cv.wait(lock, ready);
  } else if (!impl->cv.wait_for(lock, std::chrono::milliseconds(timeoutMs), ready)) {
    return std::nullopt;
  }
  if (impl->closing) throw NodeDisconnected(kClosed);
  if (impl->events.empty()) {
    if (impl->shuttingDown) throw NodeShutdown("the node shut down");
    throw NodeDisconnected("the connection to the node is closed");
  }
  return impl->take();
}

void Facade::setEventCallback(std::function<void(const FacadeEvent&)> callback) {
  Inside in(impl_);
  Impl* impl = in.get();
  std::lock_guard<std::mutex> lock(impl->mutex);
  if (impl->dispatcher.joinable()) throw InvalidArgument("the event callback is already set");
  impl->callback = kj::mv(callback);
  auto self = impl->shared_from_this();  // kept: the callback may destroy the facade
  impl->dispatcher = std::thread([self]() {
    Impl* impl = self.get();
    std::unique_lock<std::mutex> lock(impl->mutex);
    while (true) {
      impl->cv.wait(lock, [impl]() { return !impl->events.empty() || impl->stopping; });
      if (impl->stopping) return;
      FacadeEvent ev = impl->take();
      lock.unlock();
      impl->callback(ev);
      lock.lock();
    }
  });
}

bool Facade::shuttingDown() const { return impl_->shuttingDown; }
bool Facade::connected() const { return impl_->connectedFlag; }

}  // namespace logos::p2p
