// TLS on a kj stream: OpenSSL reads from and writes to two memory BIOs; this file moves
// their bytes to and from the TCP stream. Everything runs on the loop thread of the stream.
//
// Reads: SSL_read until it wants more ciphertext, then one read of the TCP stream into the
// input BIO. Writes: SSL_write into the output BIO, then its bytes are queued on the TCP
// stream in order (one write at a time: kj streams allow no more).
#include "tls.hpp"

#include <arpa/inet.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cctype>
#include <climits>
#include <cstring>
#include <memory>
#include <vector>

#include "logos_p2p/errors.hpp"
#include "text.hpp"

namespace logos::p2p::tls {

namespace {

constexpr size_t kReadChunk = 64 * 1024;      // ciphertext read from TCP at a time
constexpr size_t kCoalesce = 256 * 1024;      // write pieces joined into one SSL_write up to this

std::string opensslError() {
  std::string out;
  while (unsigned long code = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(code, buf, sizeof(buf));
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out.empty() ? "unknown error" : out;
}

kj::Exception refused(const std::string& why) { return makeException(ErrorKind::authenticationFailed, why); }
kj::Exception invalid(const std::string& why) { return makeException(ErrorKind::invalidArgument, why); }
kj::Exception broken(const std::string& why) {
  return kj::Exception(kj::Exception::Type::DISCONNECTED, __FILE__, __LINE__, kj::str("TLS: ", why.c_str()));
}

std::string hex(const unsigned char* data, size_t n) {
  static const char digits[] = "0123456789abcdef";
  std::string out;
  out.reserve(2 * n);
  for (size_t i = 0; i < n; ++i) {
    out += digits[data[i] >> 4];
    out += digits[data[i] & 15];
  }
  return out;
}

// sha256:<hex> of the peer's certificate's DER bytes, or "" if it sent none.
std::string peerFingerprint(SSL* ssl) {
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
  X509* cert = SSL_get1_peer_certificate(ssl);
#else
  X509* cert = SSL_get_peer_certificate(ssl);
#endif
  if (cert == nullptr) return "";
  unsigned char* der = nullptr;
  int len = i2d_X509(cert, &der);
  X509_free(cert);
  if (len <= 0) return "";
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int mdLen = 0;
  int ok = EVP_Digest(der, static_cast<size_t>(len), md, &mdLen, EVP_sha256(), nullptr);
  OPENSSL_free(der);
  return ok == 1 ? "sha256:" + hex(md, mdLen) : "";
}

bool isIpAddress(const std::string& host) {
  unsigned char buf[sizeof(struct in6_addr)];
  return inet_pton(AF_INET, host.c_str(), buf) == 1 || inet_pton(AF_INET6, host.c_str(), buf) == 1;
}

struct CtxDeleter {
  void operator()(SSL_CTX* ctx) const { SSL_CTX_free(ctx); }
};
using CtxPtr = std::unique_ptr<SSL_CTX, CtxDeleter>;

CtxPtr makeContext(const Trust& trust) {
  ERR_clear_error();
  CtxPtr ctx(SSL_CTX_new(TLS_client_method()));
  if (!ctx) kj::throwFatalException(invalid("cannot create a TLS context: " + opensslError()));
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_3_VERSION);
  if (!trust.fingerprint.empty()) {
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_NONE, nullptr);  // the pin is the check, after the handshake
  } else {
    if (SSL_CTX_load_verify_locations(ctx.get(), trust.caFile.c_str(), nullptr) != 1)
      kj::throwFatalException(invalid("cannot load the CA file " + trust.caFile + ": " + opensslError()));
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
  }
  if (!trust.certFile.empty()) {
    const std::string& key = trust.keyFile.empty() ? trust.certFile : trust.keyFile;
    if (SSL_CTX_use_certificate_chain_file(ctx.get(), trust.certFile.c_str()) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx.get(), key.c_str(), SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx.get()) != 1)
      kj::throwFatalException(
          invalid("cannot use the client certificate " + trust.certFile + " / key " + key + ": " + opensslError()));
  }
  return ctx;
}

class TlsStream final : public kj::AsyncIoStream {
 public:
  TlsStream(kj::Own<kj::AsyncIoStream> inner, SSL* ssl) : inner_(kj::mv(inner)), ssl_(ssl) {
    in_ = BIO_new(BIO_s_mem());
    out_ = BIO_new(BIO_s_mem());
    BIO_set_mem_eof_return(in_, -1);  // empty = "want more", not end of stream
    SSL_set_bio(ssl_, in_, out_);     // ssl_ owns both now
  }
  ~TlsStream() noexcept(false) { SSL_free(ssl_); }

  SSL* ssl() { return ssl_; }

  kj::Promise<void> handshake() {
    ERR_clear_error();
    int r = SSL_do_handshake(ssl_);
    if (r == 1) return flush();
    int err = SSL_get_error(ssl_, r);
    if (err == SSL_ERROR_WANT_READ) {
      return flush().then([this]() { return fill(); }).then([this](bool more) -> kj::Promise<void> {
        if (!more) return refused("the node closed the connection in the TLS handshake: is it a tls: endpoint?");
        return handshake();
      });
    }
    std::string why;
    long verify = SSL_get_verify_result(ssl_);
    if (verify != X509_V_OK) {
      why = std::string("the node's certificate did not verify: ") + X509_verify_cert_error_string(verify);
    } else {
      why = "TLS with the node failed (" + opensslError() + "): is it a tls: endpoint?";
    }
    // send our alert, if any, then fail
    return flush().then([why]() -> kj::Promise<void> { return refused(why); },
                        [why](kj::Exception&&) -> kj::Promise<void> { return refused(why); });
  }

  kj::Promise<size_t> tryRead(void* buffer, size_t minBytes, size_t maxBytes) override {
    return readLoop(static_cast<kj::byte*>(buffer), minBytes, maxBytes, 0);
  }

  kj::Promise<void> write(const void* buffer, size_t size) override {
    if (size == 0) return flush();
    if (!seal(static_cast<const kj::byte*>(buffer), size)) return broken("write failed: " + opensslError());
    return flush();
  }

  kj::Promise<void> write(kj::ArrayPtr<const kj::ArrayPtr<const kj::byte>> pieces) override {
    size_t total = 0;
    for (auto& piece : pieces) total += piece.size();
    if (total <= kCoalesce && pieces.size() > 1) {
      // one SSL_write: fewer, fuller records than one per piece (Cap'n Proto writes a
      // segment table and its segments as pieces)
      joined_.resize(total);
      size_t at = 0;
      for (auto& piece : pieces) {
        if (piece.size() == 0) continue;
        std::memcpy(joined_.data() + at, piece.begin(), piece.size());
        at += piece.size();
      }
      if (!seal(joined_.data(), total)) return broken("write failed: " + opensslError());
    } else {
      for (auto& piece : pieces)
        if (piece.size() && !seal(piece.begin(), piece.size())) return broken("write failed: " + opensslError());
    }
    return flush();
  }

  kj::Promise<void> whenWriteDisconnected() override { return inner_->whenWriteDisconnected(); }

  void shutdownWrite() override {
    ERR_clear_error();
    SSL_shutdown(ssl_);  // queues close_notify; we do not wait for the node's
    auto done = flush().then([this]() { inner_->shutdownWrite(); });
    writes_ = done.fork();
  }

  void abortRead() override { inner_->abortRead(); }

  void getsockopt(int level, int option, void* value, uint* length) override {
    inner_->getsockopt(level, option, value, length);
  }
  void setsockopt(int level, int option, const void* value, uint length) override {
    inner_->setsockopt(level, option, value, length);
  }
  void getsockname(struct sockaddr* addr, uint* length) override { inner_->getsockname(addr, length); }
  void getpeername(struct sockaddr* addr, uint* length) override { inner_->getpeername(addr, length); }
  // no getFd(): bytes written to the socket directly would bypass TLS

 private:
  bool seal(const kj::byte* data, size_t size) {
    ERR_clear_error();
    while (size > 0) {
      int n = SSL_write(ssl_, data, static_cast<int>(std::min<size_t>(size, INT_MAX)));
      if (n <= 0) return false;
      data += n;
      size -= static_cast<size_t>(n);
    }
    return true;
  }

  // Queue the output BIO's bytes on the TCP stream after the earlier ones; resolves once
  // they (and all before them) are written.
  kj::Promise<void> flush() {
    size_t pending = BIO_ctrl_pending(out_);
    if (pending > 0) {
      auto bytes = kj::heapArray<kj::byte>(pending);
      BIO_read(out_, bytes.begin(), static_cast<int>(pending));
      auto next = writes_.addBranch().then([this, bytes = kj::mv(bytes)]() mutable {
        auto* begin = bytes.begin();
        size_t size = bytes.size();
        return inner_->write(begin, size).attach(kj::mv(bytes));
      });
      writes_ = next.fork();
    }
    return writes_.addBranch();
  }

  // One read of ciphertext into the input BIO; false at the TCP stream's end.
  kj::Promise<bool> fill() {
    return inner_->tryRead(chunk_, 1, sizeof(chunk_)).then([this](size_t n) {
      if (n == 0) return false;
      BIO_write(in_, chunk_, static_cast<int>(n));
      return true;
    });
  }

  kj::Promise<size_t> readLoop(kj::byte* buffer, size_t minBytes, size_t maxBytes, size_t got) {
    while (got < maxBytes) {
      ERR_clear_error();
      int n = SSL_read(ssl_, buffer + got, static_cast<int>(std::min<size_t>(maxBytes - got, INT_MAX)));
      if (n > 0) {
        got += static_cast<size_t>(n);
        if (got >= minBytes) break;
        continue;
      }
      int err = SSL_get_error(ssl_, n);
      if (err == SSL_ERROR_WANT_READ) {
        // SSL_read may have queued an answer (a key update): send it, but do not wait for it
        if (BIO_ctrl_pending(out_) > 0) (void)flush();
        return fill().then([this, buffer, minBytes, maxBytes, got](bool more) -> kj::Promise<size_t> {
          if (!more) return got;  // the TCP stream ended (without close_notify)
          return readLoop(buffer, minBytes, maxBytes, got);
        });
      }
      if (err == SSL_ERROR_ZERO_RETURN) break;  // close_notify: the end of the stream
      return broken("read failed: " + opensslError());
    }
    if (BIO_ctrl_pending(out_) > 0) (void)flush();
    return got;
  }

  kj::Own<kj::AsyncIoStream> inner_;
  SSL* ssl_;
  BIO* in_ = nullptr;   // ciphertext from the node (owned by ssl_)
  BIO* out_ = nullptr;  // ciphertext to the node (owned by ssl_)
  kj::byte chunk_[kReadChunk];
  std::vector<kj::byte> joined_;
  kj::ForkedPromise<void> writes_ = kj::Promise<void>(kj::READY_NOW).fork();  // declared last: dropped first
};

}  // namespace

std::string parseFingerprint(const std::string& text) {
  std::string value, lower;
  for (char c : trim(text)) lower += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (lower.rfind("sha256:", 0) == 0) lower = lower.substr(7);
  for (char c : lower)
    if (c != ':') value += c;
  bool ok = value.size() == 64 && std::all_of(value.begin(), value.end(), [](char c) {
              return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
            });
  if (!ok) kj::throwFatalException(invalid("not a sha256 certificate fingerprint: '" + text + "'"));
  return "sha256:" + value;
}

kj::Promise<kj::Own<kj::AsyncIoStream>> connect(kj::Own<kj::AsyncIoStream> raw, const Trust& trust) {
  CtxPtr ctx = makeContext(trust);
  SSL* ssl = SSL_new(ctx.get());  // holds its own reference to ctx
  if (ssl == nullptr) return invalid("cannot create a TLS session: " + opensslError());
  SSL_set_connect_state(ssl);
  if (trust.fingerprint.empty()) {
    X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
    bool ok = isIpAddress(trust.host) ? X509_VERIFY_PARAM_set1_ip_asc(param, trust.host.c_str()) == 1
                                      : X509_VERIFY_PARAM_set1_host(param, trust.host.c_str(), 0) == 1;
    if (!ok) {
      SSL_free(ssl);
      return invalid("cannot check the host name " + trust.host);
    }
  }
  if (!isIpAddress(trust.host) && !trust.host.empty()) SSL_set_tlsext_host_name(ssl, trust.host.c_str());
  auto stream = kj::heap<TlsStream>(kj::mv(raw), ssl);
  auto& ref = *stream;
  std::string pinned = trust.fingerprint;
  return ref.handshake().then([s = kj::mv(stream), pinned]() mutable -> kj::Promise<kj::Own<kj::AsyncIoStream>> {
    if (!pinned.empty()) {
      std::string seen = peerFingerprint(s->ssl());
      if (seen.size() != pinned.size() || CRYPTO_memcmp(seen.data(), pinned.data(), seen.size()) != 0)
        return refused("the node's certificate is " + (seen.empty() ? std::string("(none)") : seen) +
                       ", not the pinned " + pinned +
                       ": another server answers at this address (or the node's certificate changed)");
    }
    return kj::Own<kj::AsyncIoStream>(kj::mv(s));
  });
}

}  // namespace logos::p2p::tls
