// tcp: endpoints: HMAC-SHA256 proofs on fresh nonces before any Cap'n Proto byte.
//   node -> client  41 bytes  "LP2PAUTH" 0x01 N(32)
//   client -> node  64 bytes  C(32) HMAC(token, "logos-p2p client" N C)
//   node -> client  32 bytes  HMAC(token, "logos-p2p node" N C)
#include "auth.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <unistd.h>

#include <array>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>

#include "logos_p2p/errors.hpp"
#include "text.hpp"

namespace logos::p2p::auth {

namespace {

constexpr size_t kNonce = 32;
constexpr size_t kHello = 8 + 1 + kNonce;
const char kMagic[] = "LP2PAUTH";

std::string checked(const std::string& text) {
  std::string token = trim(text);
  if (token.size() < 16)
    kj::throwFatalException(makeException(ErrorKind::invalidArgument, "a token must be at least 16 characters"));
  return token;
}

bool readFile(const std::string& path, std::string& out) {
  std::ifstream f(path);
  if (!f) return false;
  std::stringstream ss;
  ss << f.rdbuf();
  out = ss.str();
  return true;
}

kj::Exception refused(const std::string& why) { return makeException(ErrorKind::authenticationFailed, why); }

std::string proof(const std::string& token, const char* role, const uint8_t* nodeNonce, const uint8_t* clientNonce) {
  std::string message = std::string("logos-p2p ") + role;
  message.append(reinterpret_cast<const char*>(nodeNonce), kNonce);
  message.append(reinterpret_cast<const char*>(clientNonce), kNonce);
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), token.data(), static_cast<int>(token.size()), reinterpret_cast<const unsigned char*>(message.data()),
       message.size(), out, &len);
  return std::string(reinterpret_cast<char*>(out), len);
}

}  // namespace

std::string clientToken(const std::string& given) {
  if (!given.empty()) return checked(given);
  if (const char* env = std::getenv("LOGOS_P2P_TOKEN"); env && *env) return checked(env);
  std::string text;
  if (const char* file = std::getenv("LOGOS_P2P_TOKEN_FILE"); file && *file) {
    if (!readFile(file, text))
      kj::throwFatalException(
          makeException(ErrorKind::invalidArgument, std::string("$LOGOS_P2P_TOKEN_FILE names a missing file: ") + file));
    return checked(text);
  }
  const char* runtime = std::getenv("XDG_RUNTIME_DIR");
  std::string dir = runtime && *runtime && access(runtime, X_OK) == 0
                        ? std::string(runtime) + "/logos-p2p"
                        : "/tmp/logos-p2p-" + std::to_string(getuid());
  if (!readFile(dir + "/rpc-token", text)) return "";
  return checked(text);
}

kj::Promise<void> authenticate(kj::AsyncIoStream& stream, kj::Timer& timer, std::string token, bool inTls) {
  auto buf = std::make_shared<std::array<uint8_t, kHello + 3 * kNonce>>();
  auto hello = std::make_shared<bool>(false);  // the node's hello arrived
  auto exchange =
      stream.tryRead(buf->data(), kHello, kHello)
          .then([&stream, buf, token, inTls, hello](size_t got) -> kj::Promise<void> {
            *hello = got > 0;
            if (got < kHello || std::memcmp(buf->data(), kMagic, 8) != 0 || (buf->at(8) != 1 && buf->at(8) != 2))
              return refused("the endpoint does not speak logos-p2p token authentication");
            if (buf->at(8) == 2) {
              if (!inTls) return refused("the endpoint skips the token outside TLS: refused");
              return kj::READY_NOW;  // the node admitted this client by its certificate
            }
            if (token.empty())
              return refused(
                  "this node's endpoint needs its token: set $LOGOS_P2P_TOKEN or $LOGOS_P2P_TOKEN_FILE");
            uint8_t* nodeNonce = buf->data() + 9;
            uint8_t* answer = buf->data() + kHello;  // C ++ proof
            if (RAND_bytes(answer, kNonce) != 1) return refused("no random bytes for a nonce");
            std::string mine = proof(token, "client", nodeNonce, answer);
            std::memcpy(answer + kNonce, mine.data(), kNonce);
            return stream.write(answer, 2 * kNonce)
                .then([&stream, buf]() { return stream.tryRead(buf->data() + kHello + 2 * kNonce, kNonce, kNonce); })
                .then([buf, token](size_t got) -> kj::Promise<void> {
                  std::string expected = proof(token, "node", buf->data() + 9, buf->data() + kHello);
                  if (got < kNonce || CRYPTO_memcmp(expected.data(), buf->data() + kHello + 2 * kNonce, kNonce) != 0)
                    return refused(got < kNonce ? "the node refused this client's token"
                                                : "the node's proof is wrong: it does not know this token");
                  return kj::READY_NOW;
                });
          })
          .catch_([](kj::Exception&& e) -> kj::Promise<void> {
            if (std::string(e.getDescription().cStr()).find("[logos-p2p:") != std::string::npos) return kj::mv(e);
            return refused(std::string("the node refused this client's token (") + e.getDescription().cStr() + ")");
          });
  return timer.timeoutAfter(5 * kj::SECONDS, kj::mv(exchange))
      .catch_([hello, inTls](kj::Exception&& e) -> kj::Promise<void> {
        if (std::string(e.getDescription().cStr()).find("[logos-p2p:") != std::string::npos) return kj::mv(e);
        if (*hello || inTls) return refused("the node did not complete authentication in time");
        return refused("no logos-p2p hello from the endpoint in time (if the node serves tls:, connect with tls:HOST:PORT)");
      });
}

}  // namespace logos::p2p::auth
