/*
 * AMQP 0-9-1 load generator on librabbitmq (rabbitmq-c): producers and consumers on their own threads
 * and connections, one JSON result on stdout. C, so that the client costs a few microseconds of CPU
 * per message and the broker, not the load generator, is what a run measures.
 *
 *   loadgen --port P --mode both --duration 10 --body 256 --prefetch 1000 --ack-every 100
 *   loadgen --port P --mode produce --count 500000 --confirm 1000 --queue q
 *   loadgen --port P --mode both --producers 10 --consumers 10 --max-backlog 10000   (closed loop)
 *   loadgen --port P --mode idle --connections 1000      (prints once all are open, closes on stdin EOF)
 *   loadgen --hosts 127.0.0.1:P1,127.0.0.1:P2 --mode produce --no-declare --queue q --confirm 1000 --persistent
 *       (producers move to the next address when their connection fails: failover runs; with
 *       --nack-reconnect, also when a publish is nacked)
 *   loadgen --port P --no-declare --exchange x --random-keys --consume-queues q1,q2   (x-consistent-hash)
 *   loadgen --port P --no-declare --exchange x --keys k1,k2,k3 ...   (a random one of these keys per publish)
 *
 * Every body starts with the CLOCK_MONOTONIC send time in nanoseconds, so a consumer in the same
 * machine measures publish-to-delivery latency. "go" and "end" lines on stderr mark the measured
 * window, so that the caller can sample the broker's CPU time over exactly that window. With confirms,
 * producers also measure publish-to-confirm latency and the longest wait between two confirms (its
 * CLOCK_MONOTONIC bounds, so that a caller who killed a node knows how long confirms stopped).
 */
#define _GNU_SOURCE
#include <getopt.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#if __has_include(<rabbitmq-c/amqp.h>)
#include <rabbitmq-c/amqp.h>
#include <rabbitmq-c/tcp.h>
#else
#include <amqp.h>
#include <amqp_tcp_socket.h>
#endif

#define CHANNEL 1
#define FRAME_MAX 131072
#define ERROR_LEN 256
/* Confirms are drained without blocking every this many publishes: often enough to keep the window
 * moving, rarely enough that the extra recv() costs little per message. */
#define CONFIRM_POLL_EVERY 64
/* A consumer with unacked deliveries acks them after this long without a delivery (low rates). */
#define IDLE_ACK_USEC 20000
/* A producer held back by --max-backlog is woken by acks, and looks again at least this often anyway. */
#define BACKLOG_RECHECK_NSEC 10000000
/* A producer whose connection failed waits this long before it tries the next address. */
#define RECONNECT_PAUSE_NSEC 20000000
/* Waits between two confirms longer than this are listed (bounds included), up to MAX_GAPS per producer. */
#define GAP_LISTED_NSEC 5000000
#define MAX_GAPS 1024
#define MAX_HOSTS 16
#define MAX_NAMES 256

struct options {
  const char *host;
  int port;
  const char *mode;
  double duration;
  long count;
  int body;
  int persistent;
  int durable;
  int confirm;
  int prefetch;
  int ack_every;
  const char *queue;
  int queues;
  const char *exchange;
  const char *exchange_type;
  int producers;
  int consumers;
  double rate;
  double warmup;
  int connections;
  int cleanup;
  long max_backlog;
  int no_declare;
  int random_keys;
  char **keys; /* --keys: each publish takes one of them at random */
  int nkeys;
  int nack_reconnect;
};

struct endpoint {
  char host[64];
  int port;
};

struct worker {
  int index;
  pthread_t thread;
  long published, confirmed, nacked, delivered;
  long abandoned; /* published on a connection that failed before their confirm came */
  long k;         /* the producer's publish schedule position (kept across reconnects) */
  int reconnects;
  int64_t finished; /* when this worker stopped counting */
  int64_t *latencies; /* nanoseconds: publish to delivery (consumers), publish to confirm (producers) */
  size_t nlat, caplat;
  int64_t *sent_at; /* producers with confirms: send time by delivery tag modulo the window + 1 */
  int64_t last_ack, gap_from, gap_to; /* the longest wait between two confirms */
  int64_t (*gaps)[2];                 /* the waits over GAP_LISTED_NSEC */
  int ngaps;
  char error[ERROR_LEN];
  char last_failure[ERROR_LEN]; /* why the producer last reconnected */
};

static struct options opt = {
    .host = "127.0.0.1", .port = 5672, .mode = "both", .duration = 10, .body = 256, .prefetch = 1000,
    .ack_every = 100, .queue = "bench", .queues = 1, .exchange = "", .exchange_type = "direct",
    .producers = 1, .consumers = 1,
};
static pthread_barrier_t ready, go;
static int64_t t0_ns, deadline_ns;
/* Kept only when --count or --max-backlog needs them: all threads touching one cache line costs. */
static atomic_long published_total, delivered_total;
static pthread_mutex_t backlog_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t backlog_drained;
static struct endpoint hosts[MAX_HOSTS];
static int nhosts;
static char *consume_names[MAX_NAMES];
static int nconsume;

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static struct timeval usec_timeval(int64_t usec) {
  if (usec < 0) usec = 0;
  struct timeval tv = {.tv_sec = usec / 1000000, .tv_usec = usec % 1000000};
  return tv;
}

static void set_error(char *error, const char *what, amqp_rpc_reply_t reply) {
  if (error[0]) return;
  switch (reply.reply_type) {
    case AMQP_RESPONSE_NORMAL:
      return;
    case AMQP_RESPONSE_NONE:
      snprintf(error, ERROR_LEN, "%s: no reply", what);
      return;
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
      snprintf(error, ERROR_LEN, "%s: %s", what, amqp_error_string2(reply.library_error));
      return;
    case AMQP_RESPONSE_SERVER_EXCEPTION:
      if (reply.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
        amqp_connection_close_t *m = reply.reply.decoded;
        snprintf(error, ERROR_LEN, "%s: connection closed %u %.*s", what, m->reply_code,
                 (int)m->reply_text.len, (char *)m->reply_text.bytes);
      } else if (reply.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
        amqp_channel_close_t *m = reply.reply.decoded;
        snprintf(error, ERROR_LEN, "%s: channel closed %u %.*s", what, m->reply_code,
                 (int)m->reply_text.len, (char *)m->reply_text.bytes);
      } else {
        snprintf(error, ERROR_LEN, "%s: server method 0x%08x", what, reply.reply.id);
      }
      return;
  }
}

/* Connect to host:port, log in (no heartbeats: runs are short) and open channel 1; NULL with `error` set
 * on failure. */
static amqp_connection_state_t connect_to(const char *host, int port, char *error) {
  amqp_connection_state_t conn = amqp_new_connection();
  amqp_socket_t *socket = amqp_tcp_socket_new(conn);
  int status = socket ? amqp_socket_open(socket, host, port) : AMQP_STATUS_NO_MEMORY;
  if (status != AMQP_STATUS_OK) {
    snprintf(error, ERROR_LEN, "connect %s:%d: %s", host, port, amqp_error_string2(status));
    amqp_destroy_connection(conn);
    return NULL;
  }
  set_error(error, "login",
            amqp_login(conn, "/", 0, FRAME_MAX, 0, AMQP_SASL_METHOD_PLAIN, "guest", "guest"));
  if (!error[0]) {
    amqp_channel_open(conn, CHANNEL);
    set_error(error, "channel.open", amqp_get_rpc_reply(conn));
  }
  if (error[0]) {
    amqp_destroy_connection(conn);
    return NULL;
  }
  return conn;
}

static amqp_connection_state_t connect_broker(char *error) { return connect_to(opt.host, opt.port, error); }

static void disconnect(amqp_connection_state_t conn) {
  amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
  amqp_destroy_connection(conn);
}

static void queue_name(char *buf, size_t len, int i) {
  if (opt.queues == 1)
    snprintf(buf, len, "%s", opt.queue);
  else
    snprintf(buf, len, "%s-%d", opt.queue, i);
}

/* Declare the exchange (when named) and the queues, bound by their own names. */
static int declare_topology(amqp_connection_state_t conn, char *error) {
  if (opt.exchange[0]) {
    amqp_exchange_declare(conn, CHANNEL, amqp_cstring_bytes(opt.exchange),
                          amqp_cstring_bytes(opt.exchange_type), 0, opt.durable, 0, 0, amqp_empty_table);
    set_error(error, "exchange.declare", amqp_get_rpc_reply(conn));
  }
  for (int i = 0; i < opt.queues && !error[0]; i++) {
    char name[256];
    queue_name(name, sizeof name, i);
    amqp_queue_declare(conn, CHANNEL, amqp_cstring_bytes(name), 0, opt.durable, 0, 0, amqp_empty_table);
    set_error(error, "queue.declare", amqp_get_rpc_reply(conn));
    if (opt.exchange[0] && !error[0]) {
      amqp_queue_bind(conn, CHANNEL, amqp_cstring_bytes(name), amqp_cstring_bytes(opt.exchange),
                      amqp_cstring_bytes(name), amqp_empty_table);
      set_error(error, "queue.bind", amqp_get_rpc_reply(conn));
    }
  }
  return error[0] ? -1 : 0;
}

/* Messages ready in all queues (passive declare), then optionally delete them; -1 on error. */
static long count_and_cleanup(amqp_connection_state_t conn, char *error) {
  long total = 0;
  for (int i = 0; i < opt.queues && !error[0]; i++) {
    char name[256];
    queue_name(name, sizeof name, i);
    amqp_queue_declare_ok_t *ok =
        amqp_queue_declare(conn, CHANNEL, amqp_cstring_bytes(name), 1, 0, 0, 0, amqp_empty_table);
    set_error(error, "queue.declare passive", amqp_get_rpc_reply(conn));
    if (ok) total += ok->message_count;
    if (opt.cleanup && !error[0]) {
      amqp_queue_delete(conn, CHANNEL, amqp_cstring_bytes(name), 0, 0);
      set_error(error, "queue.delete", amqp_get_rpc_reply(conn));
    }
  }
  if (opt.cleanup && opt.exchange[0] && !error[0]) {
    amqp_exchange_delete(conn, CHANNEL, amqp_cstring_bytes(opt.exchange), 0);
    set_error(error, "exchange.delete", amqp_get_rpc_reply(conn));
  }
  return error[0] ? -1 : total;
}

static int stopping(void) { return now_ns() >= deadline_ns; }

static int backlog_full(void) {
  return atomic_load(&published_total) - atomic_load(&delivered_total) >= opt.max_backlog;
}

/* Closed loop: hold producers back while the messages published and not yet delivered reach the bound. */
static void wait_for_backlog(void) {
  if (!backlog_full()) return;
  pthread_mutex_lock(&backlog_lock);
  while (backlog_full() && !stopping()) {
    int64_t wake = now_ns() + BACKLOG_RECHECK_NSEC;
    if (wake > deadline_ns) wake = deadline_ns;
    struct timespec ts = {.tv_sec = wake / 1000000000, .tv_nsec = wake % 1000000000};
    pthread_cond_timedwait(&backlog_drained, &backlog_lock, &ts);
  }
  pthread_mutex_unlock(&backlog_lock);
}

/* Called once per ack batch, not per message: a wake-up per delivery would cost more than it saves. */
static void backlog_shrank(void) {
  pthread_mutex_lock(&backlog_lock);
  pthread_cond_broadcast(&backlog_drained);
  pthread_mutex_unlock(&backlog_lock);
}

static void keep_latency(struct worker *w, int64_t sent, int64_t now) {
  if (sent < t0_ns + (int64_t)(opt.warmup * 1e9)) return;
  if (w->nlat == w->caplat) {
    w->caplat = w->caplat ? w->caplat * 2 : 65536;
    w->latencies = realloc(w->latencies, w->caplat * sizeof *w->latencies);
  }
  w->latencies[w->nlat++] = now - sent;
}

static void count_confirm(struct worker *w, uint64_t tag, int multiple, uint64_t *upto, int ack) {
  uint64_t first = multiple ? *upto + 1 : tag;
  long n = multiple ? (long)(tag > *upto ? tag - *upto : 0) : 1;
  if (tag > *upto) *upto = tag;
  if (!ack) {
    w->nacked += n;
    return;
  }
  w->confirmed += n;
  int64_t now = now_ns();
  for (uint64_t t = first; t <= tag; t++) keep_latency(w, w->sent_at[t % (uint64_t)(opt.confirm + 1)], now);
  if (w->last_ack && now - w->last_ack > w->gap_to - w->gap_from) {
    w->gap_from = w->last_ack;
    w->gap_to = now;
  }
  if (w->last_ack && now - w->last_ack > GAP_LISTED_NSEC && w->ngaps < MAX_GAPS) {
    w->gaps[w->ngaps][0] = w->last_ack;
    w->gaps[w->ngaps++][1] = now;
  }
  w->last_ack = now;
}

/* Read one frame (waiting at most `usec`; 0 polls) and account confirms; -1 on a fatal error. */
static int read_confirms(amqp_connection_state_t conn, struct worker *w, int64_t usec, uint64_t *upto) {
  amqp_frame_t frame;
  struct timeval tv = usec_timeval(usec);
  int status = amqp_simple_wait_frame_noblock(conn, &frame, &tv);
  if (status == AMQP_STATUS_TIMEOUT) return 0;
  if (status != AMQP_STATUS_OK) {
    snprintf(w->error, ERROR_LEN, "waiting for confirms: %s", amqp_error_string2(status));
    return -1;
  }
  if (frame.frame_type != AMQP_FRAME_METHOD) return 1;
  switch (frame.payload.method.id) {
    case AMQP_BASIC_ACK_METHOD: {
      amqp_basic_ack_t *m = frame.payload.method.decoded;
      count_confirm(w, m->delivery_tag, m->multiple, upto, 1);
      return 1;
    }
    case AMQP_BASIC_NACK_METHOD: {
      amqp_basic_nack_t *m = frame.payload.method.decoded;
      count_confirm(w, m->delivery_tag, m->multiple, upto, 0);
      if (opt.nack_reconnect && nhosts > 1) {
        snprintf(w->error, ERROR_LEN, "nacked");
        return -1;
      }
      return 1;
    }
    case AMQP_CHANNEL_CLOSE_METHOD:
    case AMQP_CONNECTION_CLOSE_METHOD: {
      amqp_rpc_reply_t reply = {.reply_type = AMQP_RESPONSE_SERVER_EXCEPTION, .reply = frame.payload.method};
      set_error(w->error, "publishing", reply);
      return -1;
    }
    default:
      return 1;
  }
}

static long in_flight(const struct worker *w) { return w->published - w->confirmed - w->nacked - w->abandoned; }

/* xorshift64: routing keys for --random-keys, a few ns each. */
static uint64_t next_random(uint64_t *state) {
  *state ^= *state << 13;
  *state ^= *state >> 7;
  *state ^= *state << 17;
  return *state;
}

/* Publish on `conn` until the deadline or this producer's share of --count; returns -1 on an error. */
static int publish(amqp_connection_state_t conn, struct worker *w, char *body) {
  amqp_basic_properties_t props = {._flags = AMQP_BASIC_DELIVERY_MODE_FLAG,
                                   .delivery_mode = opt.persistent ? 2 : 1};
  char names[opt.queues][256];
  for (int i = 0; i < opt.queues; i++) queue_name(names[i], sizeof names[i], i);
  long quota = opt.count ? opt.count / opt.producers + (w->index < opt.count % opt.producers) : 0;
  double interval_ns = opt.rate > 0 ? 1e9 * opt.producers / opt.rate : 0;
  uint64_t upto = 0, seq = 0; /* delivery tags of this connection's channel */
  uint64_t random_state = 0x9E3779B97F4A7C15ULL ^ ((uint64_t)w->index << 32) ^ (uint64_t)now_ns();
  char random_key[17];

  for (; !(quota && w->published >= quota); w->k++) {
    if (interval_ns > 0) {
      int64_t due = t0_ns + (int64_t)(w->k * interval_ns);
      /* With confirms, the wait for the next send is spent reading them, so that each is timed when it
       * arrives (not at the next poll). */
      for (int64_t left; opt.confirm && (left = due - now_ns()) > 0;) {
        if (read_confirms(conn, w, left / 1000, &upto) < 0) return -1;
        amqp_maybe_release_buffers(conn);
      }
      struct timespec ts = {.tv_sec = due / 1000000000, .tv_nsec = due % 1000000000};
      clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
    }
    while (opt.confirm && in_flight(w) >= opt.confirm && !stopping()) {
      if (read_confirms(conn, w, (deadline_ns - now_ns()) / 1000, &upto) < 0) return -1;
      amqp_maybe_release_buffers(conn);
    }
    if (opt.max_backlog) wait_for_backlog();
    if (stopping()) return 0;
    int64_t sent = now_ns();
    if (opt.body >= 8) memcpy(body, &sent, sizeof sent);
    amqp_bytes_t key = amqp_cstring_bytes(names[(w->index + w->k) % opt.queues]);
    if (opt.nkeys) {
      key = amqp_cstring_bytes(opt.keys[next_random(&random_state) % (uint64_t)opt.nkeys]);
    } else if (opt.random_keys) {
      snprintf(random_key, sizeof random_key, "%016llx", (unsigned long long)next_random(&random_state));
      key = amqp_cstring_bytes(random_key);
    }
    int status = amqp_basic_publish(conn, CHANNEL, amqp_cstring_bytes(opt.exchange), key, 0, 0, &props,
                                    (amqp_bytes_t){.len = (size_t)opt.body, .bytes = body});
    if (status != AMQP_STATUS_OK) {
      snprintf(w->error, ERROR_LEN, "basic.publish: %s", amqp_error_string2(status));
      return -1;
    }
    w->published++;
    if (opt.confirm) w->sent_at[++seq % (uint64_t)(opt.confirm + 1)] = sent;
    if (opt.max_backlog) atomic_fetch_add(&published_total, 1);
    if (opt.confirm && w->published % CONFIRM_POLL_EVERY == 0) {
      int got;
      while ((got = read_confirms(conn, w, 0, &upto)) > 0) amqp_maybe_release_buffers(conn);
      if (got < 0) return -1;
    }
  }
  /* In count mode the run ends when the last confirm is in, not when the last publish is sent. */
  while (opt.confirm && in_flight(w) > 0 && !stopping()) {
    if (read_confirms(conn, w, (deadline_ns - now_ns()) / 1000, &upto) < 0) return -1;
    amqp_maybe_release_buffers(conn);
  }
  return 0;
}

/* A producer's connection to hosts[index] (opt.host/opt.port without --hosts), in confirm mode if asked. */
static amqp_connection_state_t producer_connection(struct worker *w, int index) {
  amqp_connection_state_t conn =
      nhosts ? connect_to(hosts[index].host, hosts[index].port, w->error) : connect_broker(w->error);
  if (conn && opt.confirm) {
    amqp_confirm_select_t req = {0};
    amqp_simple_rpc_decoded(conn, CHANNEL, AMQP_CONFIRM_SELECT_METHOD, AMQP_CONFIRM_SELECT_OK_METHOD, &req);
    set_error(w->error, "confirm.select", amqp_get_rpc_reply(conn));
  }
  return conn;
}

/* With more than one address, a failed connection is a failover: its unconfirmed messages are abandoned
 * and the producer goes on through the next address that accepts it, until the deadline. */
static amqp_connection_state_t fail_over(struct worker *w, amqp_connection_state_t conn, int *index) {
  int nacked = !strcmp(w->error, "nacked");
  snprintf(w->last_failure, ERROR_LEN, "%s", w->error);
  w->error[0] = 0;
  w->abandoned += in_flight(w);
  w->reconnects++;
  if (conn && nacked)
    disconnect(conn);
  else if (conn)
    amqp_destroy_connection(conn); /* no close handshake with a dead peer */
  conn = NULL;
  struct timespec pause = {.tv_sec = 0, .tv_nsec = RECONNECT_PAUSE_NSEC};
  if (nacked) nanosleep(&pause, NULL); /* the queue has no leader yet: give it a moment */
  while (!conn && !stopping()) {
    *index = (*index + 1) % nhosts;
    conn = producer_connection(w, *index);
    if (!conn) {
      w->error[0] = 0;
      nanosleep(&pause, NULL);
    }
  }
  return conn;
}

static void *producer(void *arg) {
  struct worker *w = arg;
  int index = 0;
  if (opt.confirm) {
    w->sent_at = calloc((size_t)opt.confirm + 1, sizeof *w->sent_at);
    w->gaps = calloc(MAX_GAPS, sizeof *w->gaps);
  }
  amqp_connection_state_t conn = producer_connection(w, index);
  pthread_barrier_wait(&ready);
  pthread_barrier_wait(&go);
  if (!w->error[0]) {
    char *body = calloc(1, (size_t)opt.body + 1);
    while (publish(conn, w, body) < 0 && nhosts > 1 && !stopping()) conn = fail_over(w, conn, &index);
    free(body);
  }
  w->finished = now_ns();
  if (conn) disconnect(conn);
  free(w->sent_at);
  return NULL;
}

static void record_latency(struct worker *w, const amqp_bytes_t *body) {
  if (body->len < 8) return;
  int64_t sent;
  memcpy(&sent, body->bytes, sizeof sent);
  keep_latency(w, sent, now_ns());
}

/* Consumer c takes queues c, c+C, c+2C... of --consume-queues, or else of the declared queues (all of
 * them when there is one consumer). */
static int start_consuming(amqp_connection_state_t conn, struct worker *w) {
  amqp_basic_qos(conn, CHANNEL, 0, (uint16_t)opt.prefetch, 0);
  set_error(w->error, "basic.qos", amqp_get_rpc_reply(conn));
  int count = nconsume ? nconsume : opt.queues;
  for (int q = w->index % count; q < count && !w->error[0]; q += opt.consumers) {
    char name[256];
    if (nconsume)
      snprintf(name, sizeof name, "%s", consume_names[q]);
    else
      queue_name(name, sizeof name, q);
    amqp_basic_consume(conn, CHANNEL, amqp_cstring_bytes(name), amqp_empty_bytes, 0, 0, 0, amqp_empty_table);
    set_error(w->error, "basic.consume", amqp_get_rpc_reply(conn));
  }
  return w->error[0] ? -1 : 0;
}

/* A frame other than a delivery reached a consumer: a close (its reason is the error) or a cancel. */
static int other_frame(amqp_connection_state_t conn, struct worker *w) {
  amqp_frame_t frame;
  int status = amqp_simple_wait_frame(conn, &frame);
  if (status != AMQP_STATUS_OK) {
    snprintf(w->error, ERROR_LEN, "consuming: %s", amqp_error_string2(status));
    return -1;
  }
  if (frame.frame_type != AMQP_FRAME_METHOD) return 0;
  amqp_rpc_reply_t reply = {.reply_type = AMQP_RESPONSE_SERVER_EXCEPTION, .reply = frame.payload.method};
  switch (frame.payload.method.id) {
    case AMQP_CHANNEL_CLOSE_METHOD:
    case AMQP_CONNECTION_CLOSE_METHOD:
      set_error(w->error, "consuming", reply);
      return -1;
    case AMQP_BASIC_CANCEL_METHOD:
      snprintf(w->error, ERROR_LEN, "consuming: the broker cancelled the consumer");
      return -1;
    default:
      return 0;
  }
}

static void *consumer(void *arg) {
  struct worker *w = arg;
  amqp_connection_state_t conn = connect_broker(w->error);
  if (conn) start_consuming(conn, w);
  pthread_barrier_wait(&ready);
  pthread_barrier_wait(&go);
  uint64_t last_tag = 0;
  long unacked = 0;
  while (!w->error[0] && !stopping() && !(opt.count && atomic_load(&delivered_total) >= opt.count)) {
    amqp_envelope_t envelope;
    int64_t left_us = (deadline_ns - now_ns()) / 1000;
    struct timeval tv = usec_timeval(unacked && left_us > IDLE_ACK_USEC ? IDLE_ACK_USEC : left_us);
    amqp_maybe_release_buffers(conn);
    amqp_rpc_reply_t reply = amqp_consume_message(conn, &envelope, &tv, 0);
    if (reply.reply_type == AMQP_RESPONSE_NORMAL) {
      record_latency(w, &envelope.message.body);
      last_tag = envelope.delivery_tag;
      w->delivered++;
      unacked++;
      if (opt.count || opt.max_backlog) atomic_fetch_add(&delivered_total, 1);
      amqp_destroy_envelope(&envelope);
      if (unacked < opt.ack_every) continue;
    } else if (reply.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
               reply.library_error == AMQP_STATUS_UNEXPECTED_STATE) {
      if (other_frame(conn, w) < 0) break;
    } else if (!(reply.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
                 reply.library_error == AMQP_STATUS_TIMEOUT)) {
      set_error(w->error, "consuming", reply);
      break;
    }
    if (unacked) {
      int status = amqp_basic_ack(conn, CHANNEL, last_tag, 1);
      if (status != AMQP_STATUS_OK)
        snprintf(w->error, ERROR_LEN, "basic.ack: %s", amqp_error_string2(status));
      unacked = 0;
      if (opt.max_backlog) backlog_shrank();
    }
  }
  w->finished = now_ns();
  if (conn) disconnect(conn);
  return NULL;
}

static int compare_i64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

static void print_latency(const char *key, struct worker *workers, int n) {
  size_t total = 0;
  for (int i = 0; i < n; i++) total += workers[i].nlat;
  if (!total) {
    printf("\"%s\": null", key);
    return;
  }
  int64_t *all = malloc(total * sizeof *all);
  size_t k = 0;
  for (int i = 0; i < n; i++) {
    memcpy(all + k, workers[i].latencies, workers[i].nlat * sizeof *all);
    k += workers[i].nlat;
  }
  qsort(all, total, sizeof *all, compare_i64);
#define PCT(p) (all[(size_t)((p) * (double)(total - 1))] / 1e3)
  printf("\"%s\": {\"samples\": %zu, \"p50\": %.1f, \"p99\": %.1f, \"p999\": %.1f, \"max\": %.1f}",
         key, total, PCT(0.50), PCT(0.99), PCT(0.999), all[total - 1] / 1e3);
#undef PCT
  free(all);
}

static void print_json_string(const char *s) {
  putchar('"');
  for (; *s; s++) {
    if (*s == '"' || *s == '\\')
      printf("\\%c", *s);
    else if ((unsigned char)*s < 0x20)
      printf("\\u%04x", *s);
    else
      putchar(*s);
  }
  putchar('"');
}

struct result {
  double elapsed;
  struct rusage cpu; /* over the measured window */
  long queued;       /* -1: not counted */
  int connections;
  const char *setup_error;
};

static double seconds(struct timeval tv) { return (double)tv.tv_sec + tv.tv_usec / 1e6; }

static struct rusage usage_since(const struct rusage *start) {
  struct rusage now;
  getrusage(RUSAGE_SELF, &now);
  if (start) {
    timersub(&now.ru_utime, &start->ru_utime, &now.ru_utime);
    timersub(&now.ru_stime, &start->ru_stime, &now.ru_stime);
  }
  return now;
}

static void print_result(struct worker *workers, int n, const struct result *r) {
  long published = 0, confirmed = 0, nacked = 0, delivered = 0, abandoned = 0;
  int reconnects = 0;
  const struct worker *gap = NULL;
  int64_t last_ack = 0;
  for (int i = 0; i < n; i++) {
    const struct worker *w = &workers[i];
    published += w->published;
    confirmed += w->confirmed;
    nacked += w->nacked;
    delivered += w->delivered;
    abandoned += w->abandoned;
    reconnects += w->reconnects;
    if (w->last_ack > last_ack) last_ack = w->last_ack;
    if (w->gap_to && (!gap || w->gap_to - w->gap_from > gap->gap_to - gap->gap_from)) gap = w;
  }
  printf("{\"mode\": \"%s\", \"producers\": %d, \"consumers\": %d, \"queues\": %d, \"connections\": %d, ",
         opt.mode, opt.producers, opt.consumers, opt.queues, r->connections);
  printf("\"published\": %ld, \"confirmed\": %ld, \"nacked\": %ld, \"delivered\": %ld, ", published, confirmed,
         nacked, delivered);
  printf("\"abandoned\": %ld, \"reconnects\": %d, \"last_confirm_ns\": %lld, ", abandoned, reconnects,
         (long long)last_ack);
  if (gap)
    printf("\"confirm_gap\": {\"from_ns\": %lld, \"to_ns\": %lld, \"seconds\": %.6f}, ",
           (long long)gap->gap_from, (long long)gap->gap_to, (gap->gap_to - gap->gap_from) / 1e9);
  else
    printf("\"confirm_gap\": null, ");
  printf("\"confirm_gaps_ns\": [");
  for (int i = 0, listed = 0; i < n; i++)
    for (int g = 0; g < workers[i].ngaps; g++)
      printf("%s[%lld, %lld]", listed++ ? ", " : "", (long long)workers[i].gaps[g][0],
             (long long)workers[i].gaps[g][1]);
  printf("], ");
  printf("\"elapsed\": %.6f, \"cpu_user\": %.6f, \"cpu_sys\": %.6f, ", r->elapsed, seconds(r->cpu.ru_utime),
         seconds(r->cpu.ru_stime));
  if (r->queued >= 0)
    printf("\"queued\": %ld, ", r->queued);
  else
    printf("\"queued\": null, ");
  print_latency("latency_us", workers, opt.consumers < n ? opt.consumers : n);
  printf(", ");
  print_latency("confirm_latency_us", workers + (opt.consumers < n ? opt.consumers : n),
                n > opt.consumers ? n - opt.consumers : 0);
  printf(", \"failovers\": [");
  int listed = 0;
  for (int i = 0; i < n; i++) {
    if (!workers[i].last_failure[0]) continue;
    if (listed++) printf(", ");
    print_json_string(workers[i].last_failure);
  }
  printf("], \"errors\": [");
  int first = 1;
  if (r->setup_error && r->setup_error[0]) {
    print_json_string(r->setup_error);
    first = 0;
  }
  for (int i = 0; i < n; i++) {
    if (!workers[i].error[0]) continue;
    if (!first) printf(", ");
    print_json_string(workers[i].error);
    first = 0;
  }
  printf("]}\n");
  fflush(stdout);
}

static void mark(const char *what) {
  fprintf(stderr, "%s\n", what);
  fflush(stderr);
}

/* Open `connections` connections with one channel each, report, and hold them until stdin closes. */
static int run_idle(void) {
  amqp_connection_state_t *conns = calloc((size_t)opt.connections, sizeof *conns);
  char error[ERROR_LEN] = "";
  int64_t start = now_ns();
  int opened = 0;
  while (opened < opt.connections && (conns[opened] = connect_broker(error))) opened++;
  struct result r = {(now_ns() - start) / 1e9, usage_since(NULL), -1, opened, error};
  print_result(NULL, 0, &r);
  char buf[256];
  while (read(STDIN_FILENO, buf, sizeof buf) > 0) continue;
  for (int i = 0; i < opened; i++) disconnect(conns[i]);
  free(conns);
  return error[0] ? 1 : 0;
}

static void usage(void) {
  fprintf(stderr,
          "usage: loadgen [--host H] [--port P] [--mode produce|consume|both|idle] [--duration S]\n"
          "  [--count N] [--body BYTES] [--persistent] [--durable] [--confirm WINDOW] [--prefetch N]\n"
          "  [--ack-every N] [--queue NAME] [--queues N] [--exchange NAME] [--exchange-type T]\n"
          "  [--producers N] [--consumers N] [--rate MSG/S] [--warmup S] [--connections N] [--cleanup]\n"
          "  [--max-backlog N] [--hosts H:P,H:P...] [--no-declare] [--consume-queues Q1,Q2...]\n"
          "  [--random-keys | --keys K1,K2...] [--nack-reconnect]\n");
  exit(2);
}

/* --hosts H:P,H:P: the first is where every connection goes; producers fail over to the next ones. */
static void parse_hosts(char *list) {
  for (char *item = strtok(list, ","); item; item = strtok(NULL, ",")) {
    char *colon = strrchr(item, ':');
    if (!colon || nhosts == MAX_HOSTS) usage();
    *colon = 0;
    snprintf(hosts[nhosts].host, sizeof hosts[nhosts].host, "%s", item);
    hosts[nhosts++].port = atoi(colon + 1);
  }
  opt.host = hosts[0].host;
  opt.port = hosts[0].port;
}

static void parse(int argc, char **argv) {
  static const struct option longopts[] = {
      {"host", 1, 0, 'h'},         {"port", 1, 0, 'p'},       {"mode", 1, 0, 'm'},
      {"duration", 1, 0, 'd'},     {"count", 1, 0, 'n'},      {"body", 1, 0, 'b'},
      {"persistent", 0, 0, 'P'},   {"durable", 0, 0, 'D'},    {"confirm", 1, 0, 'c'},
      {"prefetch", 1, 0, 'f'},     {"ack-every", 1, 0, 'a'},  {"queue", 1, 0, 'q'},
      {"queues", 1, 0, 'Q'},       {"exchange", 1, 0, 'e'},   {"exchange-type", 1, 0, 't'},
      {"producers", 1, 0, 'x'},    {"consumers", 1, 0, 'y'},  {"rate", 1, 0, 'r'},
      {"warmup", 1, 0, 'w'},       {"connections", 1, 0, 'C'}, {"cleanup", 0, 0, 'X'},
      {"max-backlog", 1, 0, 'B'},  {"hosts", 1, 0, 'H'},      {"no-declare", 0, 0, 'N'},
      {"consume-queues", 1, 0, 'L'}, {"random-keys", 0, 0, 'R'}, {"nack-reconnect", 0, 0, 'K'},
      {"keys", 1, 0, 'Y'},         {0, 0, 0, 0}};
  int c;
  while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
    switch (c) {
      case 'h': opt.host = optarg; break;
      case 'p': opt.port = atoi(optarg); break;
      case 'm': opt.mode = optarg; break;
      case 'd': opt.duration = atof(optarg); break;
      case 'n': opt.count = atol(optarg); break;
      case 'b': opt.body = atoi(optarg); break;
      case 'P': opt.persistent = 1; break;
      case 'D': opt.durable = 1; break;
      case 'c': opt.confirm = atoi(optarg); break;
      case 'f': opt.prefetch = atoi(optarg); break;
      case 'a': opt.ack_every = atoi(optarg); break;
      case 'q': opt.queue = optarg; break;
      case 'Q': opt.queues = atoi(optarg); break;
      case 'e': opt.exchange = optarg; break;
      case 't': opt.exchange_type = optarg; break;
      case 'x': opt.producers = atoi(optarg); break;
      case 'y': opt.consumers = atoi(optarg); break;
      case 'r': opt.rate = atof(optarg); break;
      case 'w': opt.warmup = atof(optarg); break;
      case 'C': opt.connections = atoi(optarg); break;
      case 'X': opt.cleanup = 1; break;
      case 'B': opt.max_backlog = atol(optarg); break;
      case 'H': parse_hosts(optarg); break;
      case 'N': opt.no_declare = 1; break;
      case 'L':
        for (char *name = strtok(optarg, ","); name && nconsume < MAX_NAMES; name = strtok(NULL, ","))
          consume_names[nconsume++] = name;
        break;
      case 'R': opt.random_keys = 1; break;
      case 'Y':
        /* A consistent-hash-aware producer's keys: ones the caller knows land on this node's queues. */
        for (char *key = strtok(optarg, ","); key; key = strtok(NULL, ",")) {
          opt.keys = realloc(opt.keys, (size_t)(opt.nkeys + 1) * sizeof *opt.keys);
          opt.keys[opt.nkeys++] = key;
        }
        break;
      case 'K': opt.nack_reconnect = 1; break;
      default: usage();
    }
  }
  if (optind != argc || opt.queues < 1 || opt.body < 0 || opt.ack_every < 1 || opt.duration <= 0) usage();
  if (!strcmp(opt.mode, "produce"))
    opt.consumers = 0;
  else if (!strcmp(opt.mode, "consume"))
    opt.producers = 0;
  else if (strcmp(opt.mode, "both") && strcmp(opt.mode, "idle"))
    usage();
}

int main(int argc, char **argv) {
  parse(argc, argv);
  if (!strcmp(opt.mode, "idle")) return run_idle();

  char setup_error[ERROR_LEN] = "";
  /* With --no-declare the caller made the topology and counts what is left: no set-up connection. */
  amqp_connection_state_t setup = opt.no_declare ? NULL : connect_broker(setup_error);
  if (!opt.no_declare && (!setup || declare_topology(setup, setup_error) < 0)) {
    struct result r = {0, usage_since(NULL), -1, 0, setup_error};
    print_result(NULL, 0, &r);
    return 1;
  }
  int n = opt.producers + opt.consumers;
  struct worker *workers = calloc((size_t)n, sizeof *workers);
  pthread_barrier_init(&ready, NULL, (unsigned)n + 1);
  pthread_barrier_init(&go, NULL, (unsigned)n + 1);
  pthread_condattr_t monotonic;
  pthread_condattr_init(&monotonic);
  pthread_condattr_setclock(&monotonic, CLOCK_MONOTONIC);
  pthread_cond_init(&backlog_drained, &monotonic);
  /* Every consumer is subscribed before the first publish: all threads meet at the `ready` barrier. */
  for (int i = 0; i < n; i++) {
    struct worker *w = &workers[i];
    w->index = i < opt.consumers ? i : i - opt.consumers;
    pthread_create(&w->thread, NULL, i < opt.consumers ? consumer : producer, w);
  }
  pthread_barrier_wait(&ready);
  t0_ns = now_ns();
  deadline_ns = t0_ns + (int64_t)(opt.duration * 1e9);
  struct rusage start;
  getrusage(RUSAGE_SELF, &start);
  mark("go");
  pthread_barrier_wait(&go);
  struct result r = {.queued = -1, .connections = n + !opt.no_declare, .setup_error = setup_error};
  if (!opt.count) {
    /* A timed run's window closes at the deadline, before the threads disconnect. */
    struct timespec ts = {.tv_sec = deadline_ns / 1000000000, .tv_nsec = deadline_ns % 1000000000};
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
    mark("end");
    r.cpu = usage_since(&start);
  }
  int64_t end = t0_ns;
  for (int i = 0; i < n; i++) {
    pthread_join(workers[i].thread, NULL);
    if (workers[i].finished > end) end = workers[i].finished;
  }
  if (opt.count) {
    mark("end");
    r.cpu = usage_since(&start);
  }
  /* Counting stops at the deadline (or the last confirm in count mode); closing takes no part. */
  r.elapsed = ((end < deadline_ns ? end : deadline_ns) - t0_ns) / 1e9;
  if (setup) {
    r.queued = count_and_cleanup(setup, setup_error);
    disconnect(setup);
  }
  print_result(workers, n, &r);
  int failed = setup_error[0] != 0;
  for (int i = 0; i < n; i++) failed |= workers[i].error[0] != 0;
  return failed;
}
