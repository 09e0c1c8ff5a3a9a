/* Drives the C ABI (logos_p2p.h) from a line protocol, for tests/test_cpp.py.
 *
 *   logos-p2p-facade-driver unix:SOCKET
 *
 * Prints "ready <node peer id>", then reads commands "<tag> <command> <args...>" on stdin,
 * each run on a thread of its own (so calls are concurrent, and one may block while others
 * go on), and answers "<tag> ok <results...>" or "<tag> err <code> <cause> <message>".
 * Bytes are hex ("-" for none). Commands:
 *   mount PROTO | unmount PROTO | dial PEER PROTO ADDR TIMEOUT -> ID
 *   read ID MAX TIMEOUT | readexactly ID N TIMEOUT | readlp ID MAX TIMEOUT -> HEX ("-" = EOF)
 *   readall ID TIMEOUT -> HEX (until end of stream)
 *   write ID HEX TIMEOUT | writelp ID HEX TIMEOUT | closewrite ID TIMEOUT | close ID TIMEOUT
 *   reset ID | release ID
 *   request PEER PROTO ADDR HEX TIMEOUT MAX -> HEX (the reply)
 *   subscribe QUEUE | unsubscribe (peer events)
 *   mountshared PROTO (logos_p2p_mount_protocol_shared)
 *   serve PROTO SHARE MAX TIMEOUT | unserve PROTO: the responder (below) answers "re: " + request
 *   unhold: the responders holding a "hold" request reply now
 *   connectpeer ADDR TIMEOUT -> PEER | disconnectpeer PEER | peers -> PEER=ADDR,ADDR... per peer
 *   status -> key=value...: peerId streams registrations streamsTotal tasks subscriptions
 *             authFailures reservations, reset.CAUSE (the nonzero ones), and per module
 *             module.NAME=REGISTRATIONS,INBOUND,OUTBOUND,PROTO+PROTO...
 *   free: frees the facade now, whatever other commands are doing (later commands are refused)
 * Besides the answers, "note <text>" lines: the responder's, for each request
 * "note served <request hex> <peer id> <the node's peer id, asked from the responder>";
 * for a request "fail" it then returns nonzero (the stream is reset); for "hold",
 * "note holding", then it waits for unhold (then replies) or free (then calls the facade
 * until a call fails, "note after-free <code>", and returns nonzero).
 *   event TIMEOUT -> none | protocolStream ID PROTO PEER ADDR | streamReset ID CAUSE
 *                    | nodeShutdown | disconnected | peerConnected PEER ADDR DIRECTION
 *                    | peerDisconnected PEER REASON | peerIdentified PEER | overflowed
 *   quit (after the commands in progress): frees the facade, exits 0. So does end of input.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "logos_p2p.h"

static logos_p2p_facade* facade;
static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t count_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t count_cv = PTHREAD_COND_INITIALIZER;
static int running;
static pthread_mutex_t hold_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t hold_cv = PTHREAD_COND_INITIALIZER;
static unsigned long releases; /* hold_lock: unhold commands so far */
static int freeing;             /* hold_lock: the free command began */
static int freed;               /* hold_lock: later commands are refused */

static void reply(const char* tag, const char* text) {
  pthread_mutex_lock(&out_lock);
  printf("%s %s\n", tag, text);
  fflush(stdout);
  pthread_mutex_unlock(&out_lock);
}

static void reply_error(const char* tag, const logos_p2p_error* err) {
  size_t n = strlen(err->message) + 128;
  char* line = malloc(n);
  char* p;
  snprintf(line, n, "err %s %s %s", logos_p2p_code_name(err->code), logos_p2p_cause_name(err->cause), err->message);
  for (p = line; *p; ++p)
    if (*p == '\n') *p = ' ';
  reply(tag, line);
  free(line);
}

static char* to_hex(const uint8_t* data, size_t len) {
  static const char digits[] = "0123456789abcdef";
  char* out = malloc(len * 2 + 2);
  size_t i;
  if (len == 0) {
    strcpy(out, "-");
    return out;
  }
  for (i = 0; i < len; ++i) {
    out[2 * i] = digits[data[i] >> 4];
    out[2 * i + 1] = digits[data[i] & 15];
  }
  out[2 * len] = '\0';
  return out;
}

static int nibble(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

static uint8_t* from_hex(const char* hex, size_t* len) {
  size_t n = strcmp(hex, "-") == 0 ? 0 : strlen(hex) / 2, i;
  uint8_t* out = malloc(n + 1);
  for (i = 0; i < n; ++i) out[i] = (uint8_t)(nibble(hex[2 * i]) << 4 | nibble(hex[2 * i + 1]));
  *len = n;
  return out;
}

static void reply_bytes(const char* tag, uint8_t* data, size_t len) {
  char* hex = to_hex(data, len);
  char* line = malloc(strlen(hex) + 4);
  sprintf(line, "ok %s", hex);
  reply(tag, line);
  free(line);
  free(hex);
  logos_p2p_free(data);
}

static void note(const char* text) { reply("note", text); }

/* hold the caller until unhold; 1 if the facade is being freed instead */
static int hold(void) {
  unsigned long seen;
  int gone;
  pthread_mutex_lock(&hold_lock);
  seen = releases;
  note("holding"); /* after `seen`: an unhold sent once this is read releases it */
  while (releases == seen && !freeing) pthread_cond_wait(&hold_cv, &hold_lock);
  gone = freeing;
  pthread_mutex_unlock(&hold_lock);
  return gone;
}

static int responder(void* user, const uint8_t* request, size_t len, const char* peer_id, uint8_t** reply_data,
                     size_t* reply_len) {
  logos_p2p_error err;
  char* node_peer = NULL;
  char* hex = to_hex(request, len);
  char* line = malloc(strlen(hex) + strlen(peer_id) + 256);
  int rc = logos_p2p_peer_id(facade, &node_peer, &err); /* the facade, called from a responder */
  (void)user;
  sprintf(line, "served %s %s %s", hex, peer_id, rc == 0 ? node_peer : logos_p2p_code_name(rc));
  note(line);
  free(line);
  free(hex);
  logos_p2p_free(node_peer);
  if (len == 4 && memcmp(request, "fail", 4) == 0) return 1;
  if (len == 4 && memcmp(request, "hold", 4) == 0 && hold()) {
    char buf[128];
    /* the facade is being freed: calls now fail (they must not crash) */
    while ((rc = logos_p2p_peer_id(facade, &node_peer, &err)) == 0) logos_p2p_free(node_peer);
    snprintf(buf, sizeof buf, "after-free %s", logos_p2p_code_name(rc));
    note(buf);
    return 1;
  }
  *reply_len = len + 4;
  *reply_data = malloc(len + 4);
  memcpy(*reply_data, "re: ", 4);
  memcpy(*reply_data + 4, request, len);
  return 0;
}

/* a growing string */
struct text {
  char* data;
  size_t len, cap;
};

static void append(struct text* t, const char* s) {
  size_t n = strlen(s);
  if (t->len + n + 1 > t->cap) {
    t->cap = (t->len + n + 1) * 2;
    t->data = realloc(t->data, t->cap);
  }
  memcpy(t->data + t->len, s, n + 1);
  t->len += n;
}

/* s with each character of `from` replaced by `to` (malloc'ed) */
static char* replaced(const char* s, const char* from, char to) {
  char* out = strdup(s);
  char* p;
  for (p = out; *p; ++p)
    if (strchr(from, *p)) *p = to;
  return out;
}

/* "ok " + the status as key=value tokens (malloc'ed) */
static char* status_line(const logos_p2p_node_status* st) {
  struct text t = {NULL, 0, 0};
  char buf[512];
  size_t i;
  snprintf(buf, sizeof buf,
           "ok peerId=%s streams=%u registrations=%u streamsTotal=%llu tasks=%u subscriptions=%u "
           "authFailures=%llu reservations=%u",
           st->peer_id, st->streams, st->registrations, (unsigned long long)st->streams_total, st->tasks,
           st->subscriptions, (unsigned long long)st->auth_failures, st->reservations);
  append(&t, buf);
  for (i = 0; i < LOGOS_P2P_CAUSE_COUNT; ++i) {
    if (st->resets[i] == 0) continue;
    snprintf(buf, sizeof buf, " reset.%s=%llu", logos_p2p_cause_name((int)i), (unsigned long long)st->resets[i]);
    append(&t, buf);
  }
  for (i = 0; i < st->n_modules; ++i) {
    const logos_p2p_module_status* m = &st->modules[i];
    char* name = replaced(m->name, " =", '_');
    char* protocols = replaced(m->protocols, "\n", '+');
    size_t n = strlen(protocols);
    if (n > 0) protocols[n - 1] = '\0'; /* the last line's end */
    append(&t, " module.");
    append(&t, name);
    snprintf(buf, sizeof buf, "=%u,%u,%u,", m->registrations, m->inbound_streams, m->outbound_streams);
    append(&t, buf);
    append(&t, protocols);
    free(name);
    free(protocols);
  }
  return t.data;
}

#define MAX_ARGS 8

struct command {
  char* line; /* owns the strings below */
  char* tag;
  char* argv[MAX_ARGS];
  int argc;
};

static uint64_t num(const char* s) { return s ? strtoull(s, NULL, 10) : 0; }

static void run(struct command* c) {
  logos_p2p_error err;
  const char* cmd = c->argc > 0 ? c->argv[0] : "";
  char** a = c->argv;
  char buf[1024];
  uint8_t* data = NULL;
  size_t len = 0;
  int rc = -1;
  memset(&err, 0, sizeof err);
  pthread_mutex_lock(&hold_lock);
  rc = freed;
  pthread_mutex_unlock(&hold_lock);
  if (rc) {
    reply(c->tag, "err invalidArgument protocolError the facade was freed");
    return;
  }
  rc = -1;
  if (strcmp(cmd, "mount") == 0 && c->argc == 2) {
    rc = logos_p2p_mount_protocol(facade, a[1], &err);
  } else if (strcmp(cmd, "unmount") == 0 && c->argc == 2) {
    rc = logos_p2p_unmount_protocol(facade, a[1], &err);
  } else if (strcmp(cmd, "dial") == 0 && c->argc == 5) {
    uint64_t id = 0;
    const char* addrs[1];
    addrs[0] = a[3];
    rc = logos_p2p_dial(facade, a[1], a[2], addrs, 1, (uint32_t)num(a[4]), &id, &err);
    if (rc == 0) {
      snprintf(buf, sizeof buf, "ok %llu", (unsigned long long)id);
      reply(c->tag, buf);
      return;
    }
  } else if (strcmp(cmd, "read") == 0 && c->argc == 4) {
    rc = logos_p2p_stream_read(facade, num(a[1]), (size_t)num(a[2]), (uint32_t)num(a[3]), &data, &len, &err);
    if (rc == 0) return reply_bytes(c->tag, data, len);
  } else if (strcmp(cmd, "readexactly") == 0 && c->argc == 4) {
    rc = logos_p2p_stream_read_exactly(facade, num(a[1]), (size_t)num(a[2]), (uint32_t)num(a[3]), &data, &len, &err);
    if (rc == 0) return reply_bytes(c->tag, data, len);
  } else if (strcmp(cmd, "readlp") == 0 && c->argc == 4) {
    rc = logos_p2p_stream_read_lp(facade, num(a[1]), (uint32_t)num(a[2]), (uint32_t)num(a[3]), &data, &len, &err);
    if (rc == 0) return reply_bytes(c->tag, data, len);
  } else if (strcmp(cmd, "readall") == 0 && c->argc == 3) {
    uint8_t* all = malloc(1);
    size_t total = 0;
    while ((rc = logos_p2p_stream_read(facade, num(a[1]), 65536, (uint32_t)num(a[2]), &data, &len, &err)) == 0 &&
           len > 0) {
      all = realloc(all, total + len);
      memcpy(all + total, data, len);
      total += len;
      logos_p2p_free(data);
    }
    if (rc == 0) {
      logos_p2p_free(data);
      return reply_bytes(c->tag, all, total);
    }
    free(all);
  } else if ((strcmp(cmd, "write") == 0 || strcmp(cmd, "writelp") == 0) && c->argc == 4) {
    uint8_t* bytes = from_hex(a[2], &len);
    rc = strcmp(cmd, "write") == 0 ? logos_p2p_stream_write(facade, num(a[1]), bytes, len, (uint32_t)num(a[3]), &err)
                                   : logos_p2p_stream_write_lp(facade, num(a[1]), bytes, len, (uint32_t)num(a[3]), &err);
    free(bytes);
  } else if (strcmp(cmd, "closewrite") == 0 && c->argc == 3) {
    rc = logos_p2p_stream_close_with_eof(facade, num(a[1]), (uint32_t)num(a[2]), &err);
  } else if (strcmp(cmd, "close") == 0 && c->argc == 3) {
    rc = logos_p2p_stream_close(facade, num(a[1]), (uint32_t)num(a[2]), &err);
  } else if (strcmp(cmd, "reset") == 0 && c->argc == 2) {
    rc = logos_p2p_stream_reset(facade, num(a[1]), &err);
  } else if (strcmp(cmd, "release") == 0 && c->argc == 2) {
    rc = logos_p2p_stream_release(facade, num(a[1]), &err);
  } else if (strcmp(cmd, "request") == 0 && c->argc == 7) {
    const char* addrs[1];
    uint8_t* bytes = from_hex(a[4], &len);
    size_t reply_len = 0;
    addrs[0] = a[3];
    rc = logos_p2p_request(facade, a[1], a[2], addrs, 1, bytes, len, (uint32_t)num(a[5]), (uint32_t)num(a[6]), &data,
                           &reply_len, &err);
    free(bytes);
    if (rc == 0) return reply_bytes(c->tag, data, reply_len);
  } else if (strcmp(cmd, "subscribe") == 0 && c->argc == 2) {
    rc = logos_p2p_subscribe_peer_events(facade, (uint32_t)num(a[1]), &err);
  } else if (strcmp(cmd, "unsubscribe") == 0 && c->argc == 1) {
    rc = logos_p2p_unsubscribe_peer_events(facade, &err);
  } else if (strcmp(cmd, "event") == 0 && c->argc == 2) {
    logos_p2p_event ev;
    rc = logos_p2p_next_event(facade, (uint32_t)num(a[1]), &ev, &err);
    if (rc == 0) {
      switch (ev.type) {
        case LOGOS_P2P_EVENT_PROTOCOL_STREAM:
          snprintf(buf, sizeof buf, "ok protocolStream %llu %s %s %s", (unsigned long long)ev.stream_id, ev.proto,
                   ev.peer_id, ev.remote_addr[0] ? ev.remote_addr : "-");
          break;
        case LOGOS_P2P_EVENT_STREAM_RESET:
          snprintf(buf, sizeof buf, "ok streamReset %llu %s", (unsigned long long)ev.stream_id,
                   logos_p2p_cause_name(ev.cause));
          break;
        case LOGOS_P2P_EVENT_NODE_SHUTDOWN: snprintf(buf, sizeof buf, "ok nodeShutdown"); break;
        case LOGOS_P2P_EVENT_DISCONNECTED: snprintf(buf, sizeof buf, "ok disconnected"); break;
        case LOGOS_P2P_EVENT_PEER_CONNECTED:
          snprintf(buf, sizeof buf, "ok peerConnected %s %s %s", ev.peer_id, ev.remote_addr[0] ? ev.remote_addr : "-",
                   ev.direction == LOGOS_P2P_OUTBOUND ? "outbound" : "inbound");
          break;
        case LOGOS_P2P_EVENT_PEER_DISCONNECTED:
          snprintf(buf, sizeof buf, "ok peerDisconnected %s %s", ev.peer_id,
                   logos_p2p_disconnect_reason_name(ev.reason));
          break;
        case LOGOS_P2P_EVENT_PEER_IDENTIFIED: snprintf(buf, sizeof buf, "ok peerIdentified %s", ev.peer_id); break;
        case LOGOS_P2P_EVENT_OVERFLOWED: snprintf(buf, sizeof buf, "ok overflowed"); break;
        default: snprintf(buf, sizeof buf, "ok none");
      }
      logos_p2p_event_clear(&ev);
      reply(c->tag, buf);
      return;
    }
  } else if (strcmp(cmd, "mountshared") == 0 && c->argc == 2) {
    rc = logos_p2p_mount_protocol_shared(facade, a[1], &err);
  } else if (strcmp(cmd, "serve") == 0 && c->argc == 5) {
    rc = logos_p2p_serve(facade, a[1], (int)num(a[2]), (uint32_t)num(a[3]), (uint32_t)num(a[4]), responder, NULL,
                         &err);
  } else if (strcmp(cmd, "unserve") == 0 && c->argc == 2) {
    rc = logos_p2p_unserve(facade, a[1], &err);
  } else if (strcmp(cmd, "unhold") == 0 && c->argc == 1) {
    pthread_mutex_lock(&hold_lock);
    ++releases;
    pthread_cond_broadcast(&hold_cv);
    pthread_mutex_unlock(&hold_lock);
    rc = 0;
  } else if (strcmp(cmd, "free") == 0 && c->argc == 1) {
    pthread_mutex_lock(&hold_lock);
    freeing = freed = 1;
    pthread_cond_broadcast(&hold_cv);
    pthread_mutex_unlock(&hold_lock);
    logos_p2p_facade_free(facade); /* while other commands may be blocked inside it */
    rc = 0;
  } else if (strcmp(cmd, "connectpeer") == 0 && c->argc == 3) {
    char* peer = NULL;
    rc = logos_p2p_connect_peer(facade, a[1], (uint32_t)num(a[2]), &peer, &err);
    if (rc == 0) {
      snprintf(buf, sizeof buf, "ok %s", peer);
      logos_p2p_free(peer);
      reply(c->tag, buf);
      return;
    }
  } else if (strcmp(cmd, "disconnectpeer") == 0 && c->argc == 2) {
    rc = logos_p2p_disconnect_peer(facade, a[1], &err);
  } else if (strcmp(cmd, "peers") == 0 && c->argc == 1) {
    char* peers = NULL;
    rc = logos_p2p_peers(facade, &peers, &err);
    if (rc == 0) {
      /* "PEER ADDR ADDR\n..." -> "ok PEER=ADDR,ADDR ..." */
      char* line = malloc(strlen(peers) + 4);
      char* out = line + 3;
      char* p;
      int first = 1;
      strcpy(line, "ok ");
      for (p = peers; *p; ++p) {
        if (*p == '\n') {
          *out++ = ' ';
          first = 1;
        } else if (*p == ' ') {
          *out++ = first ? '=' : ',';
          first = 0;
        } else {
          *out++ = *p;
        }
      }
      while (out > line + 2 && out[-1] == ' ') --out;
      *out = '\0';
      reply(c->tag, line);
      free(line);
      logos_p2p_free(peers);
      return;
    }
  } else if (strcmp(cmd, "status") == 0 && c->argc == 1) {
    logos_p2p_node_status st;
    rc = logos_p2p_status(facade, &st, &err);
    if (rc == 0) {
      char* line = status_line(&st);
      logos_p2p_node_status_clear(&st);
      reply(c->tag, line);
      free(line);
      return;
    }
  } else {
    reply(c->tag, "err invalidArgument protocolError unknown command or wrong arguments");
    return;
  }
  if (rc == 0)
    reply(c->tag, "ok");
  else
    reply_error(c->tag, &err);
}

static void* worker(void* arg) {
  struct command* c = arg;
  run(c);
  free(c->line);
  free(c);
  pthread_mutex_lock(&count_lock);
  --running;
  pthread_cond_broadcast(&count_cv);
  pthread_mutex_unlock(&count_lock);
  return NULL;
}

static void wait_idle(void) {
  pthread_mutex_lock(&count_lock);
  while (running > 0) pthread_cond_wait(&count_cv, &count_lock);
  pthread_mutex_unlock(&count_lock);
}

int main(int argc, char** argv) {
  logos_p2p_error err;
  char* peer = NULL;
  char* line = NULL;
  size_t cap = 0;
  ssize_t got;
  logos_p2p_connect_options options = {NULL, NULL, NULL, NULL, NULL, -1};
  int explicit_options = 0;
  if (argc < 2) {
    fprintf(stderr, "usage: %s ADDRESS [token=T] [fingerprint=F] [ca=FILE] [cert=FILE] [key=FILE]\n", argv[0]);
    return 2;
  }
  for (int i = 2; i < argc; ++i) { /* logos_p2p_facade_connect's options */
    char* eq = strchr(argv[i], '=');
    if (!eq) continue;
    *eq = '\0';
    if (!strcmp(argv[i], "token")) options.token = eq + 1;
    else if (!strcmp(argv[i], "fingerprint")) options.fingerprint = eq + 1;
    else if (!strcmp(argv[i], "ca")) options.ca_file = eq + 1;
    else if (!strcmp(argv[i], "cert")) options.cert_file = eq + 1;
    else if (!strcmp(argv[i], "key")) options.key_file = eq + 1;
    explicit_options = 1;
  }
  int opened = explicit_options ? logos_p2p_facade_connect(argv[1], "cpp-driver", &options, &facade, &err)
                                : logos_p2p_facade_new(argv[1], "cpp-driver", &facade, &err);
  if (opened != 0 || logos_p2p_peer_id(facade, &peer, &err) != 0) {
    printf("failed %s %s\n", logos_p2p_code_name(err.code), err.message);
    return 1;
  }
  printf("ready %s\n", peer);
  fflush(stdout);
  logos_p2p_free(peer);
  while ((got = getline(&line, &cap, stdin)) > 0) {
    struct command* c = calloc(1, sizeof *c);
    char* save = NULL;
    char* tok;
    pthread_t thread;
    if (line[got - 1] == '\n') line[got - 1] = '\0';
    c->line = strdup(line);
    c->tag = strtok_r(c->line, " ", &save);
    if (!c->tag) {
      free(c->line);
      free(c);
      continue;
    }
    while ((tok = strtok_r(NULL, " ", &save)) && c->argc < MAX_ARGS) c->argv[c->argc++] = tok;
    if (c->argc == 1 && strcmp(c->argv[0], "quit") == 0) {
      free(c->line);
      free(c);
      break;
    }
    pthread_mutex_lock(&count_lock);
    ++running;
    pthread_mutex_unlock(&count_lock);
    if (pthread_create(&thread, NULL, worker, c) != 0) {
      fprintf(stderr, "pthread_create failed\n");
      return 1;
    }
    pthread_detach(thread);
  }
  free(line);
  wait_idle();
  if (!freed) logos_p2p_facade_free(facade);
  printf("bye\n");
  fflush(stdout);
  return 0;
}
