/*
 * loadgen.c: a single-threaded epoll load generator for the rawrt bench.
 *
 * Why C: a Python client cannot read 100k+ WebSocket frames per second on
 * one core, so it would measure itself instead of the server.  This program
 * runs pinned to one core (taskset -c 1) while the server under test runs on
 * the other; it reports its own CPU time so the harness can show that it was
 * never the bottleneck.
 *
 * Build:  gcc -O2 -o loadgen loadgen.c
 *
 * Usage:
 *   loadgen --port P --transport ws|sse|poll --mode fanout|rate|idle [options]
 *
 *   --host A           server address, 127.0.0.0/8 only (default 127.0.0.1)
 *   --port P           server port (required)
 *   --transport T      ws:   GET /ws, subscribe/publish over WebSocket
 *                      sse:  GET /api/sse/subscribe/CH, publish by POST
 *                      poll: POST /api/poll/CH?since=CURSOR, publish by POST
 *   --mode M           fanout: for each B in --bursts, publish --messages
 *                              messages in bursts of B (B=1: one at a time),
 *                              waiting after each burst until every
 *                              subscriber has all of it (bounded wait)
 *                      rate:   for each R in --rates, publish R/N messages
 *                              per second (R deliveries/s) for --duration s
 *                      idle:   open and confirm N subscribers, print
 *                              "READY n", hold them until stdin closes,
 *                              SIGTERM/SIGINT, or --hold seconds pass
 *                      listen: as idle, and count what someone else
 *                              publishes: messages k = 0 .. --messages - 1
 *                              (phase 0 is k = 0, phase 1 the rest); prints
 *                              "ALL k" once every live subscriber has k,
 *                              and each phase's latency histogram ("hist":
 *                              [[ns, count], ...]) so that the results of
 *                              several processes can be merged exactly, and
 *                              "got": how many subscribers had each k
 *   --subscribers N    subscriber connections (default 100)
 *   --messages L       messages per fanout phase, a comma list matching
 *                      --bursts (the last value serves the rest; default 100)
 *   --bursts L         comma list of burst sizes (default 1)
 *   --rates L          comma list of deliveries/s for rate mode (default 10000)
 *   --duration S       seconds per rate phase (default 3)
 *   --size BYTES       size of the published data JSON (default 100)
 *   --channel NAME     channel (default bench)
 *   --pub ws|http      publisher kind (default: ws for ws, http otherwise)
 *   --timeout-ms MS    bounded wait per burst, and drain wait per rate phase
 *                      (default 10000)
 *   --stall-ms MS      a burst also ends when nothing arrives for this long
 *                      (default 1000); it counts as a timeout
 *   --max-timeouts N   this many timed-out bursts in a row abort a phase
 *                      (default 3)
 *   --ready-timeout S  time allowed to open and confirm everyone (default 60)
 *   --settle-ms MS     quiet window before publishing (default 500); see
 *                      wait_settled() for what "quiet" means (it is how
 *                      parked polls are confirmed)
 *   --server-pid PID   read the server's CPU from /proc/PID/stat at exact
 *                      phase boundaries, and use it to detect quiet
 *   --server-cpu C     also report the busy time of CPU C (/proc/stat) per
 *                      phase, to see other work on the server's core
 *   --src-base X       first source address is 127.0.0.X (default 2)
 *   --per-src N        connections per source address (default 10000;
 *                      the kernel has 28,232 ephemeral ports per address)
 *   --window N         connections being opened at once (default 256)
 *   --hold S           idle mode: longest hold (default 600)
 *   --max-s S          hard limit on the whole run (default 900)
 *   --header LINE      one more header line ("Name: value", at most 1000
 *                      bytes) on every request: the upgrade, the stream, each
 *                      poll and each HTTP publish (a credential, when the
 *                      server requires one)
 *
 * Output: stdout gets "READY n" (idle mode only) and, at the end, one JSON
 * object: deliveries, expected, lost, duplicates, duration_s,
 * deliveries_per_s, lat_p50_us/p99/p999/max/mean, errors (and their kinds),
 * this program's CPU time from getrusage (loadgen_cpu_s, _share, _total_s;
 * _busy_share leaves out the timed spin, see SPIN_NS),
 * and a "phases" array with the same per phase plus server_cpu_s (ns
 * precise, see server_cpu_ns), server_cpu_us_per_delivery, server_cpu_stat_s
 * (utime+stime in ticks, a cross-check), server_core_busy_s, timeouts,
 * aborted and drain_ms.  Progress goes to stderr.  Latency is receive time minus the
 * CLOCK_MONOTONIC stamp the publisher put in "t": publisher and subscribers
 * share this process, hence one clock.  Loss is counted per subscriber with
 * a bitmap of message numbers "k", which also shows duplicates.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

/* ------------------------------------------------------------------ limits */

/* One read per readiness event: large enough that a burst of frames for one
 * socket arrives in one call, small enough to stay in L2. */
#define READ_CHUNK (128 * 1024)
/* A frame, response head or poll body that stays incomplete past this size
 * is a protocol error, not something to buffer forever. */
#define MAX_PENDING_IN (16u * 1024 * 1024)
/* Bytes we queue for a socket that the server does not read. */
#define MAX_PENDING_OUT (8u * 1024 * 1024)
#define MAX_HEAD 16384
#define MAX_PHASES 8
#define MAX_MESSAGES 4000000u
#define MAX_EVENTS 1024
#define MAX_BATCH 1000
#define STDIN_TAG 0xffffffffu
#define SEC 1000000000ull
#define MS 1000000ull

/* ----------------------------------------------------------------- options */

enum transport { T_WS, T_SSE, T_POLL };
enum mode { M_FANOUT, M_RATE, M_IDLE, M_LISTEN };

static struct opts {
    const char *host;
    int port;
    int transport;
    int mode;
    int subs;
    int messages[MAX_PHASES];
    int nmessages;
    int bursts[MAX_PHASES];
    int nbursts;
    double rates[MAX_PHASES];
    int nrates;
    double duration_s;
    int size;
    const char *channel;
    int pub_ws;
    int timeout_ms;
    int max_timeouts;
    int stall_ms;
    int ready_timeout_s;
    int settle_ms;
    int server_pid;
    int server_cpu;
    int src_base;
    int per_src;
    int window;
    int hold_s;
    int max_s;
    char header[1024]; /* "Name: value\r\n" or "" */
} O;

/* ------------------------------------------------------------------- state */

enum role { ROLE_SUB, ROLE_PUB };
enum stage { ST_CONNECTING, ST_WS_UPGRADE, ST_WS_OPEN, ST_HTTP, ST_CLOSED };
enum http_state {
    H_HEAD, H_LEN, H_UNTIL_CLOSE, H_CHUNK_SIZE, H_CHUNK_DATA, H_CHUNK_END, H_TRAILER
};
enum { EV_HAS_T = 1, EV_HAS_K = 2, EV_CONNECTED = 4 };

struct buf {
    char *p;
    uint32_t len, cap;
};

struct conn {
    int fd;
    uint32_t id;          /* index in S.conns; subscribers first */
    uint8_t role, stage;
    uint8_t ready;        /* subscriber confirmed / publisher usable */
    uint8_t out_armed;    /* EPOLLOUT registered */
    uint8_t again;        /* on S.again: more to read without a new edge */
    uint8_t http_state;
    uint8_t ev_flags;     /* SSE event being assembled */
    uint16_t status;      /* HTTP status of the response being read */
    uint64_t body_rem;    /* Content-Length or chunk bytes still to come */
    uint64_t ev_t, ev_k;
    struct buf in;        /* unparsed tail of the byte stream */
    struct buf aux;       /* SSE partial line, poll body, WS fragments */
    struct buf out;       /* bytes the socket did not take yet */
    char *cursor;         /* poll: last cursor, URL-encoded */
    uint64_t connect_ns;  /* when the current connect() started */
    uint16_t attempts;
};

/* Latency histogram: exact below 256 ns, then 128 linear steps per power of
 * two (error under 0.8%), so percentiles need no sample storage. */
#define H_SUB_BITS 7
#define H_BUCKETS (256 + (64 - 8) * 128)
struct hist {
    uint64_t n, sum_ns, max_ns;
    uint64_t b[H_BUCKETS];
};

struct phase {
    int burst;            /* fanout: burst size */
    double rate;          /* rate: target deliveries/s */
    uint64_t k_begin, k_end, k_published;
    uint64_t deliveries, dups, timeouts;
    uint64_t t_start, t_end, t_last_pub, drain_ns;
    double cpu_start, cpu_end;
    uint64_t spin_start, spin_end;
    int64_t srv_start, srv_end;   /* ns, schedstat */
    long srv_ticks_start, srv_ticks_end;
    long core_start, core_end;
    int aborted;
    struct hist h;
};

struct errors {
    uint64_t connect, handshake, closed, protocol, not_ready, bad_k, unpaired;
    uint64_t pub_error, out_overflow;
};

static struct state {
    int ep;
    struct conn *conns;   /* subs, then the publisher */
    struct conn *pub;
    uint32_t *again, nagain;
    uint32_t nconns;
    uint32_t next_sub, inflight, ready, closed_ready;
    uint64_t now;
    uint64_t seed, rng;
    char *scratch;
    size_t scratch_cap;
    /* delivery bookkeeping */
    uint64_t total_msgs, words, delivered;
    uint64_t *seen;       /* per-subscriber bitmap of received k */
    uint32_t *got;        /* per-k count of subscribers that have it */
    struct phase ph[MAX_PHASES];
    int nph;
    struct hist all;
    /* poll settling */
    uint64_t poll_answers, last_answer_ns;
    uint64_t sse_unconfirmed;
    uint64_t redials;
    /* publisher responses */
    uint64_t pub_sent, pub_answers;
    struct errors err;
    volatile sig_atomic_t stop;
    int stdin_open;
    uint64_t t0, deadline;
    int spinning;                 /* a phase is being measured */
    uint64_t last_event_ns, spin_ns;
    /* pairing scratch for find_pairs */
    const char **tpos, **kpos;
    size_t pos_cap;
} S;

/* ------------------------------------------------------------------ basics */

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("loadgen: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static uint64_t now_ns(void);
static uint32_t alive(void);

static void note(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "loadgen %7.3f: ", (double)(now_ns() - S.t0) / 1e9);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * SEC + (uint64_t)ts.tv_nsec;
}

static double cpu_self_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec +
           (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

/* utime+stime of the server in clock ticks, or -1 when unknown. */
static long server_ticks(void) {
    if (!O.server_pid) return -1;
    char path[64], text[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", O.server_pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = 0;
    /* The command name may hold spaces: fields count from the last ')'. */
    char *p = strrchr(text, ')');
    if (!p) return -1;
    unsigned long utime = 0, stime = 0;
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu",
               &utime, &stime) != 2)
        return -1;
    return (long)(utime + stime);
}

/* CPU time of all the server's threads, in ns: the sum of the first field
 * of /proc/PID/task/TID/schedstat.  That is the same sum_exec_runtime that
 * /proc/PID/stat reports as utime+stime, but without the 10 ms ticks, which
 * would make a 100 ms phase's µs/delivery 10% uncertain.  Falls back to the
 * ticks; -1 when unknown. */
static int64_t server_cpu_ns(void) {
    if (!O.server_pid) return -1;
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", O.server_pid);
    DIR *dir = opendir(path);
    int64_t total = 0;
    int found = 0;
    for (struct dirent *e; dir && (e = readdir(dir));) {
        if (e->d_name[0] == '.') continue;
        char file[384];
        snprintf(file, sizeof file, "%s/%s/schedstat", path, e->d_name);
        FILE *f = fopen(file, "r");
        unsigned long long ns;
        if (f && fscanf(f, "%llu", &ns) == 1) total += (int64_t)ns, found = 1;
        if (f) fclose(f);
    }
    if (dir) closedir(dir);
    if (found) return total;
    long ticks = server_ticks();
    return ticks < 0 ? -1 : ticks * (int64_t)(SEC / (uint64_t)sysconf(_SC_CLK_TCK));
}

/* Busy clock ticks of one CPU from /proc/stat (everything but idle and
 * iowait): shows work on the server's core that its own counters miss, such
 * as other processes. -1 when unknown. */
static long core_busy_ticks(int cpu) {
    if (cpu < 0) return -1;
    FILE *f = fopen("/proc/stat", "r");
    if (!f) return -1;
    char line[512], name[16];
    long busy = -1;
    snprintf(name, sizeof name, "cpu%d ", cpu);
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, name, strlen(name))) continue;
        unsigned long v[10] = {0};
        sscanf(line + strlen(name), "%lu %lu %lu %lu %lu %lu %lu %lu", &v[0], &v[1], &v[2],
               &v[3], &v[4], &v[5], &v[6], &v[7]);
        busy = (long)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]);
        break;
    }
    fclose(f);
    return busy;
}

static uint64_t splitmix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static uint32_t rand32(void) {
    S.rng = splitmix64(S.rng);
    return (uint32_t)S.rng;
}

static void *xrealloc(void *p, size_t n) {
    p = realloc(p, n);
    if (!p && n) die("out of memory (%zu bytes)", n);
    return p;
}

static void buf_reserve(struct buf *b, size_t need) {
    if (need <= b->cap) return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need) cap *= 2;
    b->p = xrealloc(b->p, cap);
    b->cap = (uint32_t)cap;
}

static void buf_append(struct buf *b, const void *p, size_t n) {
    buf_reserve(b, (size_t)b->len + n);
    memcpy(b->p + b->len, p, n);
    b->len += (uint32_t)n;
}

static void buf_free(struct buf *b) {
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* -------------------------------------------------------- SHA-1, base64 */
/* Only to check Sec-WebSocket-Accept (RFC 6455 section 4.1). */

static uint32_t rol(uint32_t x, int n) { return (x << n) | (x >> (32 - n)); }

static void sha1_block(uint32_t h[5], const uint8_t *p) {
    uint32_t w[80];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 80; i++) w[i] = rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
    for (int i = 0; i < 80; i++) {
        uint32_t f, k;
        if (i < 20) f = (b & c) | (~b & d), k = 0x5a827999;
        else if (i < 40) f = b ^ c ^ d, k = 0x6ed9eba1;
        else if (i < 60) f = (b & c) | (b & d) | (c & d), k = 0x8f1bbcdc;
        else f = b ^ c ^ d, k = 0xca62c1d6;
        uint32_t t = rol(a, 5) + f + e + k + w[i];
        e = d, d = c, c = rol(b, 30), b = a, a = t;
    }
    h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e;
}

static void sha1(const void *data, size_t n, uint8_t out[20]) {
    uint32_t h[5] = {0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476, 0xc3d2e1f0};
    const uint8_t *p = data;
    uint8_t tail[128] = {0};
    size_t full = n & ~(size_t)63, rest = n - full;
    for (size_t i = 0; i < full; i += 64) sha1_block(h, p + i);
    memcpy(tail, p + full, rest);
    tail[rest] = 0x80;
    size_t tl = rest + 9 <= 64 ? 64 : 128;
    uint64_t bits = (uint64_t)n * 8;
    for (int i = 0; i < 8; i++) tail[tl - 1 - i] = (uint8_t)(bits >> (8 * i));
    for (size_t i = 0; i < tl; i += 64) sha1_block(h, tail + i);
    for (int i = 0; i < 5; i++)
        for (int j = 0; j < 4; j++) out[4 * i + j] = (uint8_t)(h[i] >> (24 - 8 * j));
}

static size_t base64(const uint8_t *p, size_t n, char *out) {
    static const char tbl[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;
        if (i + 1 < n) v |= (uint32_t)p[i + 1] << 8;
        if (i + 2 < n) v |= p[i + 2];
        out[o++] = tbl[(v >> 18) & 63];
        out[o++] = tbl[(v >> 12) & 63];
        out[o++] = i + 1 < n ? tbl[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < n ? tbl[v & 63] : '=';
    }
    out[o] = 0;
    return o;
}

/* The key is derived from the connection id, so the expected accept value
 * can be recomputed instead of stored for 15,000 connections. */
static void ws_key(uint32_t id, char out[25]) {
    uint64_t raw[2] = {splitmix64(S.seed + 2 * (uint64_t)id),
                       splitmix64(S.seed + 2 * (uint64_t)id + 1)};
    base64((const uint8_t *)raw, 16, out);
}

static void ws_accept_for(uint32_t id, char out[29]) {
    char key[25], cat[64];
    uint8_t digest[20];
    ws_key(id, key);
    int n = snprintf(cat, sizeof cat, "%s258EAFA5-E914-47DA-95CA-C5AB0DC85B11", key);
    sha1(cat, (size_t)n, digest);
    base64(digest, 20, out);
}

/* ------------------------------------------------------------- histogram */

static size_t hist_index(uint64_t v) {
    if (v < 256) return (size_t)v;
    int e = 63 - __builtin_clzll(v);
    return 256 + (size_t)(e - 8) * 128 + ((v >> (e - H_SUB_BITS)) & 127);
}

/* Midpoint of a bucket, the value a percentile reports. */
static uint64_t hist_value(size_t i) {
    if (i < 256) return i;
    size_t e = (i - 256) / 128 + 8, sub = (i - 256) % 128;
    uint64_t width = 1ull << (e - H_SUB_BITS);
    return ((128 + sub) << (e - H_SUB_BITS)) + width / 2;
}

static void hist_add(struct hist *h, uint64_t v) {
    h->b[hist_index(v)]++;
    h->n++;
    h->sum_ns += v;
    if (v > h->max_ns) h->max_ns = v;
}

static void hist_merge(struct hist *into, const struct hist *h) {
    for (size_t i = 0; i < H_BUCKETS; i++) into->b[i] += h->b[i];
    into->n += h->n;
    into->sum_ns += h->sum_ns;
    if (h->max_ns > into->max_ns) into->max_ns = h->max_ns;
}

static double hist_pct_us(const struct hist *h, double q) {
    if (!h->n) return -1;
    uint64_t rank = (uint64_t)(q * (double)h->n);
    if (rank >= h->n) rank = h->n - 1;
    uint64_t seen = 0;
    for (size_t i = 0; i < H_BUCKETS; i++) {
        seen += h->b[i];
        if (seen > rank) return hist_value(i) / 1000.0;
    }
    return h->max_ns / 1000.0;
}

/* ------------------------------------------------------------ deliveries */

static struct phase *phase_of(uint64_t k) {
    for (int i = 0; i < S.nph; i++)
        if (k >= S.ph[i].k_begin && k < S.ph[i].k_end) return &S.ph[i];
    return NULL;
}

/* Record that subscriber c got message k stamped t: dedupe with the
 * subscriber's bitmap, then count and time it in k's phase. */
static void deliver(struct conn *c, uint64_t k, uint64_t t) {
    struct phase *ph;
    if (c->role != ROLE_SUB || k >= S.total_msgs || !(ph = phase_of(k))) {
        S.err.bad_k++;
        return;
    }
    uint64_t *w = &S.seen[(size_t)c->id * S.words + (k >> 6)];
    uint64_t bit = 1ull << (k & 63);
    if (*w & bit) {
        ph->dups++;
        return;
    }
    *w |= bit;
    S.got[k]++;
    S.delivered++;
    ph->deliveries++;
    hist_add(&ph->h, S.now > t ? S.now - t : 0);
    if (O.mode == M_LISTEN && S.got[k] == alive()) {
        printf("ALL %" PRIu64 "\n", k);
        fflush(stdout);
    }
}

/* Parses a JSON number after `"x":` (spaces allowed).  Integers are exact;
 * a server that turned the stamp into a float still gets close. */
static uint64_t parse_num(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\t')) p++;
    uint64_t v = 0;
    const char *s = p;
    while (p < end && *p >= '0' && *p <= '9') v = v * 10 + (uint64_t)(*p++ - '0');
    if (p < end && (*p == '.' || *p == 'e' || *p == 'E')) {
        char tmp[40];
        size_t n = (size_t)(end - s) < sizeof tmp - 1 ? (size_t)(end - s) : sizeof tmp - 1;
        memcpy(tmp, s, n);
        tmp[n] = 0;
        v = (uint64_t)strtod(tmp, NULL);
    }
    return v;
}

static void pos_push(const char ***arr, size_t *n, const char *p) {
    if (*n == S.pos_cap) {
        S.pos_cap = S.pos_cap ? S.pos_cap * 2 : 1024;
        S.tpos = xrealloc(S.tpos, S.pos_cap * sizeof *S.tpos);
        S.kpos = xrealloc(S.kpos, S.pos_cap * sizeof *S.kpos);
    }
    (*arr)[(*n)++] = p;
}

static size_t find_all(const char *p, size_t n, const char *needle, const char ***arr) {
    size_t count = 0;
    const char *end = p + n, *q = p;
    while (q < end && (q = memmem(q, (size_t)(end - q), needle, 4))) {
        pos_push(arr, &count, q + 4);
        q += 4;
    }
    return count;
}

/* Delivers every message in a text (one WebSocket frame, one SSE data line,
 * one poll body).  Each message data holds exactly one "t" and one "k"; they
 * are paired in order of appearance, so the servers' key order and
 * envelope layout do not matter. */
static void deliver_text(struct conn *c, const char *p, size_t n) {
    size_t nt = find_all(p, n, "\"t\":", &S.tpos);
    size_t nk = find_all(p, n, "\"k\":", &S.kpos);
    if (nt != nk) S.err.unpaired++;
    size_t pairs = nt < nk ? nt : nk;
    for (size_t i = 0; i < pairs; i++)
        deliver(c, parse_num(S.kpos[i], p + n), parse_num(S.tpos[i], p + n));
}

/* ----------------------------------------------------------- connections */

/* Edge-triggered: a level-triggered fd is polled again by every following
 * epoll_wait, a cost per delivery that showed up as a third of our CPU. */
static void arm(struct conn *c, int want_out) {
    struct epoll_event ev = {.events = EPOLLIN | EPOLLET | (want_out ? EPOLLOUT : 0),
                             .data.u32 = c->id};
    epoll_ctl(S.ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->out_armed = (uint8_t)want_out;
}

static void conn_close(struct conn *c, uint64_t *counter) {
    if (c->stage == ST_CLOSED) return;
    if (counter) (*counter)++;
    if (c->role == ROLE_SUB) {
        if (c->ready) S.closed_ready++;
        else if (S.inflight) S.inflight--;
    }
    close(c->fd);
    c->fd = -1;
    c->stage = ST_CLOSED;
    buf_free(&c->in);
    buf_free(&c->aux);
    buf_free(&c->out);
    free(c->cursor);
    c->cursor = NULL;
}

static void flush_out(struct conn *c) {
    while (c->out.len) {
        ssize_t w = send(c->fd, c->out.p, c->out.len, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN || errno == EINTR) break;
            conn_close(c, &S.err.closed);
            return;
        }
        memmove(c->out.p, c->out.p + w, c->out.len - (size_t)w);
        c->out.len -= (uint32_t)w;
    }
    if (!!c->out.len != c->out_armed) arm(c, c->out.len > 0);
}

/* Writes now if nothing is queued; keeps the rest for EPOLLOUT. */
static void conn_send(struct conn *c, const void *p, size_t n) {
    if (c->stage == ST_CLOSED) return;
    if (!c->out.len && c->stage != ST_CONNECTING) {
        ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno != EAGAIN && errno != EINTR) {
            conn_close(c, &S.err.closed);
            return;
        }
        if (w > 0) p = (const char *)p + w, n -= (size_t)w;
        if (!n) return;
    }
    if ((size_t)c->out.len + n > MAX_PENDING_OUT) {
        conn_close(c, &S.err.out_overflow);
        return;
    }
    buf_append(&c->out, p, n);
    if (!c->out_armed && c->stage != ST_CONNECTING) arm(c, 1);
}

static int open_socket(uint32_t id) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    /* Let connect() pick the port per 4-tuple, not per address. */
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    struct sockaddr_in src = {.sin_family = AF_INET};
    src.sin_addr.s_addr = htonl(0x7f000000u | (uint32_t)(O.src_base + (int)(id / (uint32_t)O.per_src)));
    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons((uint16_t)O.port)};
    inet_pton(AF_INET, O.host, &dst.sin_addr);
    if (bind(fd, (struct sockaddr *)&src, sizeof src) < 0 ||
        (connect(fd, (struct sockaddr *)&dst, sizeof dst) < 0 && errno != EINPROGRESS)) {
        close(fd);
        return -1;
    }
    return fd;
}

static void conn_start(struct conn *c) {
    c->fd = open_socket(c->id);
    if (c->fd < 0) {
        c->stage = ST_CLOSED;
        S.err.connect++;
        if (c->role == ROLE_SUB && S.inflight) S.inflight--;
        return;
    }
    c->stage = ST_CONNECTING;
    c->connect_ns = now_ns();
    c->attempts++;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.u32 = c->id};
    epoll_ctl(S.ep, EPOLL_CTL_ADD, c->fd, &ev);
    c->out_armed = 1;
}

static void mark_ready(struct conn *c) {
    if (c->ready) return;
    c->ready = 1;
    if (c->role == ROLE_SUB) {
        S.ready++;
        if (S.inflight) S.inflight--;
    }
}

static uint32_t alive(void) { return S.ready - S.closed_ready; }

/* ------------------------------------------------------------- WebSocket */

/* Client frames are masked (RFC 6455 section 5.3), with a fresh key each. */
static size_t ws_frame(char *dst, int opcode, const char *p, size_t n) {
    size_t h = 0;
    dst[h++] = (char)(0x80 | opcode);
    if (n < 126) {
        dst[h++] = (char)(0x80 | n);
    } else if (n < 65536) {
        dst[h++] = (char)(0x80 | 126);
        dst[h++] = (char)(n >> 8);
        dst[h++] = (char)n;
    } else {
        dst[h++] = (char)(0x80 | 127);
        for (int i = 7; i >= 0; i--) dst[h++] = (char)((uint64_t)n >> (8 * i));
    }
    uint32_t key = rand32();
    memcpy(dst + h, &key, 4);
    const uint8_t *m = (const uint8_t *)dst + h;
    h += 4;
    for (size_t i = 0; i < n; i++) dst[h + i] = (char)(p[i] ^ m[i & 3]);
    return h + n;
}

static void ws_send(struct conn *c, int opcode, const char *p, size_t n) {
    char stack[512];
    char *f = n + 14 <= sizeof stack ? stack : xrealloc(NULL, n + 14);
    conn_send(c, f, ws_frame(f, opcode, p, n));
    if (f != stack) free(f);
}

static void ws_send_upgrade(struct conn *c) {
    char key[25], req[2048];
    ws_key(c->id, key);
    int n = snprintf(req, sizeof req,
                     "GET /ws HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                     "Sec-WebSocket-Version: 13\r\n%s\r\n",
                     O.host, O.port, key, O.header);
    c->stage = ST_WS_UPGRADE;
    conn_send(c, req, (size_t)n);
}

static void ws_on_open(struct conn *c) {
    if (c->role == ROLE_PUB) {
        mark_ready(c);
        return;
    }
    char msg[256];
    int n = snprintf(msg, sizeof msg, "{\"type\":\"subscribe\",\"channel\":\"%s\"}", O.channel);
    ws_send(c, 1, msg, (size_t)n);
}

static void ws_on_message(struct conn *c, const char *p, size_t n) {
    if (c->role == ROLE_PUB) {
        if (memmem(p, n, "\"error\"", 7)) S.err.pub_error++;
        return;
    }
    if (!c->ready && memmem(p, n, "\"subscribed\"", 12)) {
        mark_ready(c);
        return;
    }
    deliver_text(c, p, n);
}

static void ws_on_frame(struct conn *c, int fin, int op, const char *p, size_t n) {
    switch (op) {
    case 0x0: /* continuation */
    case 0x1:
    case 0x2:
        if (fin && op != 0 && !c->aux.len) {
            ws_on_message(c, p, n);
            return;
        }
        buf_append(&c->aux, p, n);
        if (c->aux.len > MAX_PENDING_IN) conn_close(c, &S.err.protocol);
        else if (fin) {
            ws_on_message(c, c->aux.p, c->aux.len);
            c->aux.len = 0;
        }
        return;
    case 0x8: /* close: echo the status code, then go */
        ws_send(c, 0x8, p, n >= 2 ? 2 : 0);
        conn_close(c, &S.err.closed);
        return;
    case 0x9:
        ws_send(c, 0xA, p, n);
        return;
    default: /* pong, reserved */
        return;
    }
}

/* Parses whole frames; returns the bytes used (a split frame waits). */
static size_t ws_consume(struct conn *c, char *p, size_t n) {
    size_t off = 0;
    while (n - off >= 2 && c->stage == ST_WS_OPEN) {
        uint8_t b0 = (uint8_t)p[off], b1 = (uint8_t)p[off + 1];
        uint64_t len = b1 & 0x7f;
        size_t h = 2;
        if (len == 126) {
            if (n - off < 4) break;
            len = (uint64_t)(uint8_t)p[off + 2] << 8 | (uint8_t)p[off + 3];
            h = 4;
        } else if (len == 127) {
            if (n - off < 10) break;
            len = 0;
            for (int i = 0; i < 8; i++) len = len << 8 | (uint8_t)p[off + 2 + i];
            h = 10;
        }
        if (b1 & 0x80) h += 4; /* servers must not mask; unmask anyway */
        if (len > MAX_PENDING_IN) {
            conn_close(c, &S.err.protocol);
            return n;
        }
        if (n - off < h + len) break;
        char *payload = p + off + h;
        if (b1 & 0x80)
            for (uint64_t i = 0; i < len; i++) payload[i] ^= p[off + h - 4 + (i & 3)];
        ws_on_frame(c, b0 & 0x80, b0 & 0x0f, payload, (size_t)len);
        off += h + (size_t)len;
    }
    return off;
}

static int header_has(const char *head, size_t n, const char *name, const char *value) {
    size_t nl = strlen(name);
    for (const char *p = head; p && p < head + n;) {
        const char *eol = memmem(p, (size_t)(head + n - p), "\r\n", 2);
        if (!eol) break;
        if ((size_t)(eol - p) > nl && !strncasecmp(p, name, nl) && p[nl] == ':') {
            size_t vl = strlen(value);
            for (const char *v = p + nl + 1; v + vl <= eol; v++)
                if (!strncasecmp(v, value, vl)) return 1;
            return 0;
        }
        p = eol + 2;
    }
    return 0;
}

/* Checks the 101 answer and its Sec-WebSocket-Accept. */
static size_t ws_upgrade_consume(struct conn *c, char *p, size_t n) {
    const char *end = memmem(p, n, "\r\n\r\n", 4);
    if (!end) {
        if (n > MAX_HEAD) conn_close(c, &S.err.handshake);
        return n > MAX_HEAD ? n : 0;
    }
    size_t hl = (size_t)(end - p) + 4;
    char accept[29];
    ws_accept_for(c->id, accept);
    if (strncmp(p, "HTTP/1.1 101", 12) || !header_has(p, hl, "Sec-WebSocket-Accept", accept)) {
        conn_close(c, &S.err.handshake);
        return n;
    }
    c->stage = ST_WS_OPEN;
    ws_on_open(c);
    return hl + ws_consume(c, p + hl, n - hl);
}

/* ------------------------------------------------------------------ HTTP */

static void http_send_request(struct conn *c);

static void sse_dispatch(struct conn *c) {
    if (c->ev_flags & EV_HAS_K) {
        deliver(c, c->ev_k, c->ev_t);
    } else if (c->ev_flags & EV_CONNECTED) {
        mark_ready(c);
    }
    c->ev_flags = 0;
}

/* One SSE line (WHATWG HTML 9.2.6): blank dispatches, "data:" carries the
 * JSON; comments, "id:", "event:" and "retry:" lines need no action here. */
static void sse_line(struct conn *c, const char *p, size_t n) {
    if (n && p[n - 1] == '\r') n--;
    if (!n) {
        sse_dispatch(c);
        return;
    }
    if (n < 5 || memcmp(p, "data:", 5)) return;
    const char *t = memmem(p, n, "\"t\":", 4), *k = memmem(p, n, "\"k\":", 4);
    if (t && k) {
        c->ev_t = parse_num(t + 4, p + n);
        c->ev_k = parse_num(k + 4, p + n);
        c->ev_flags |= EV_HAS_T | EV_HAS_K;
    } else if (memmem(p, n, "connected", 9)) {
        c->ev_flags |= EV_CONNECTED;
    }
}

/* De-chunked body bytes of an event stream; lines may span reads. */
static void sse_body(struct conn *c, const char *p, size_t n) {
    while (n) {
        const char *nl = memchr(p, '\n', n);
        if (!nl) {
            buf_append(&c->aux, p, n);
            if (c->aux.len > MAX_PENDING_IN) conn_close(c, &S.err.protocol);
            return;
        }
        size_t ln = (size_t)(nl - p);
        if (c->aux.len) {
            buf_append(&c->aux, p, ln);
            sse_line(c, c->aux.p, c->aux.len);
            c->aux.len = 0;
        } else {
            sse_line(c, p, ln);
        }
        p = nl + 1;
        n -= ln + 1;
    }
}

static void on_body(struct conn *c, const char *p, size_t n) {
    if (c->role == ROLE_PUB) return;
    if (O.transport == T_SSE) {
        sse_body(c, p, n);
    } else {
        buf_append(&c->aux, p, n);
        if (c->aux.len > MAX_PENDING_IN) conn_close(c, &S.err.protocol);
    }
}

/* Copies the cursor out of {"messages":[...],"cursor":...}, URL-encoded. */
static void poll_take_cursor(struct conn *c, const char *p, size_t n) {
    const char *q = memmem(p, n, "\"cursor\":", 9), *end = p + n;
    if (!q) return;
    q += 9;
    while (q < end && *q == ' ') q++;
    int quoted = q < end && *q == '"';
    q += quoted;
    const char *s = q;
    while (q < end && (quoted ? *q != '"' : (*q != ',' && *q != '}' && *q != ' '))) q++;
    if (!quoted && q - s == 4 && !memcmp(s, "null", 4)) return;
    char *enc = xrealloc(c->cursor, (size_t)(q - s) * 3 + 1), *o = enc;
    for (; s < q; s++) {
        unsigned char ch = (unsigned char)*s;
        if ((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
            ch == '-' || ch == '_' || ch == '.' || ch == '~')
            *o++ = (char)ch;
        else
            o += sprintf(o, "%%%02X", ch);
    }
    *o = 0;
    c->cursor = enc;
}

static void poll_answered(struct conn *c) {
    S.poll_answers++;
    S.last_answer_ns = S.now;
    if (c->status != 200) {
        conn_close(c, &S.err.handshake);
        return;
    }
    deliver_text(c, c->aux.p, c->aux.len);
    poll_take_cursor(c, c->aux.p, c->aux.len);
    c->aux.len = 0;
    http_send_request(c);
}

static void end_response(struct conn *c) {
    c->http_state = H_HEAD;
    if (c->role == ROLE_PUB) {
        S.pub_answers++;
        if (c->status < 200 || c->status >= 300) S.err.pub_error++;
    } else if (O.transport == T_POLL) {
        poll_answered(c);
    } else {
        conn_close(c, &S.err.closed); /* an event stream ended */
    }
}

static void on_head(struct conn *c, const char *head, size_t n) {
    if (n < 16 || memcmp(head, "HTTP/1.", 7)) {
        conn_close(c, &S.err.protocol);
        return;
    }
    c->status = (uint16_t)atoi(head + 9);
    if (c->role == ROLE_SUB && O.transport == T_SSE && c->status != 200) {
        conn_close(c, &S.err.handshake);
        return;
    }
    const char *cl = NULL;
    for (const char *p = head; p < head + n;) {
        const char *eol = memmem(p, (size_t)(head + n - p), "\r\n", 2);
        if (!eol) break;
        if (!strncasecmp(p, "Content-Length:", 15)) cl = p + 15;
        p = eol + 2;
    }
    if (header_has(head, n, "Transfer-Encoding", "chunked")) {
        c->http_state = H_CHUNK_SIZE;
    } else if (cl) {
        c->body_rem = strtoull(cl, NULL, 10);
        c->http_state = H_LEN;
        if (!c->body_rem) end_response(c);
    } else {
        c->http_state = H_UNTIL_CLOSE; /* close-delimited (RFC 9112 6.3) */
    }
}

/* One step of the response parser; returns bytes used, 0 = need more. */
static size_t http_step(struct conn *c, const char *p, size_t n) {
    const char *nl;
    size_t take;
    switch (c->http_state) {
    case H_HEAD:
        if (!(nl = memmem(p, n, "\r\n\r\n", 4))) return 0;
        take = (size_t)(nl - p) + 4;
        on_head(c, p, take);
        return take;
    case H_LEN:
    case H_CHUNK_DATA:
        take = n < c->body_rem ? n : (size_t)c->body_rem;
        on_body(c, p, take);
        if (c->stage == ST_CLOSED || (c->body_rem -= take)) return take;
        if (c->http_state == H_LEN) end_response(c);
        else c->http_state = H_CHUNK_END;
        return take;
    case H_UNTIL_CLOSE:
        on_body(c, p, n);
        return n;
    case H_CHUNK_SIZE:
        if (!(nl = memchr(p, '\n', n))) return 0;
        c->body_rem = strtoull(p, NULL, 16); /* stops at ';' extensions */
        c->http_state = c->body_rem ? H_CHUNK_DATA : H_TRAILER;
        return (size_t)(nl - p) + 1;
    case H_CHUNK_END:
        if (!(nl = memchr(p, '\n', n))) return 0;
        c->http_state = H_CHUNK_SIZE;
        return (size_t)(nl - p) + 1;
    case H_TRAILER:
        if (!(nl = memchr(p, '\n', n))) return 0;
        if (nl == p || (nl == p + 1 && *p == '\r')) end_response(c);
        return (size_t)(nl - p) + 1;
    }
    return 0;
}

static size_t http_consume(struct conn *c, char *p, size_t n) {
    size_t off = 0, used;
    while (off < n && c->stage == ST_HTTP && (used = http_step(c, p + off, n - off)))
        off += used;
    if (c->stage == ST_HTTP && n - off > MAX_HEAD && c->http_state != H_LEN &&
        c->http_state != H_CHUNK_DATA && c->http_state != H_UNTIL_CLOSE) {
        conn_close(c, &S.err.protocol);
        return n;
    }
    return off;
}

static void http_send_request(struct conn *c) {
    char req[2048];
    int n;
    if (O.transport == T_SSE) {
        n = snprintf(req, sizeof req,
                     "GET /api/sse/subscribe/%s HTTP/1.1\r\nHost: %s:%d\r\n"
                     "Accept: text/event-stream\r\nCache-Control: no-cache\r\n%s\r\n",
                     O.channel, O.host, O.port, O.header);
    } else {
        /* The first poll carries no cursor: "from now on". */
        n = snprintf(req, sizeof req,
                     "POST /api/poll/%s%s%s HTTP/1.1\r\nHost: %s:%d\r\n"
                     "Content-Length: 0\r\n%s\r\n",
                     O.channel, c->cursor ? "?since=" : "", c->cursor ? c->cursor : "",
                     O.host, O.port, O.header);
    }
    if (n >= (int)sizeof req) {
        conn_close(c, &S.err.protocol);
        return;
    }
    conn_send(c, req, (size_t)n);
}

/* ------------------------------------------------------------ event loop */

static void on_connected(struct conn *c) {
    int err = 0;
    socklen_t el = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
    if (err) {
        conn_close(c, &S.err.connect);
        return;
    }
    int ws = c->role == ROLE_PUB ? O.pub_ws : O.transport == T_WS;
    c->stage = ws ? ST_WS_UPGRADE : ST_HTTP;
    arm(c, 0);
    if (ws) {
        ws_send_upgrade(c);
        return;
    }
    c->http_state = H_HEAD;
    if (c->role == ROLE_PUB) {
        mark_ready(c);
        return;
    }
    http_send_request(c);
    /* A poll is established once asked; wait_settled() checks it parks. */
    if (O.transport == T_POLL) mark_ready(c);
}

static size_t consume(struct conn *c, char *p, size_t n) {
    switch (c->stage) {
    case ST_WS_UPGRADE: return ws_upgrade_consume(c, p, n);
    case ST_WS_OPEN: return ws_consume(c, p, n);
    case ST_HTTP: return http_consume(c, p, n);
    default: return n;
    }
}

static void on_eof(struct conn *c) {
    /* A close-delimited body ends here; for everything else it is a close. */
    conn_close(c, &S.err.closed);
}

/* Reads once behind the unparsed tail of the previous read and parses what
 * is complete.  Returns the bytes read, or -1 when there is nothing more. */
static ssize_t read_once(struct conn *c) {
    size_t have = c->in.len;
    if (S.scratch_cap < have + READ_CHUNK) {
        S.scratch_cap = have + READ_CHUNK;
        S.scratch = xrealloc(S.scratch, S.scratch_cap);
    }
    if (have) memcpy(S.scratch, c->in.p, have);
    ssize_t r = recv(c->fd, S.scratch + have, READ_CHUNK, 0);
    if (r <= 0) {
        if (r == 0 || (errno != EAGAIN && errno != EINTR)) on_eof(c);
        return -1;
    }
    S.now = now_ns();
    size_t total = have + (size_t)r, used = consume(c, S.scratch, total);
    if (c->stage == ST_CLOSED) return -1;
    c->in.len = 0;
    if (used < total) {
        if (total - used > MAX_PENDING_IN) {
            conn_close(c, &S.err.protocol);
            return -1;
        }
        buf_append(&c->in, S.scratch + used, total - used);
    } else if (c->in.cap > 65536) {
        buf_free(&c->in); /* a one-off large frame should not pin memory */
    }
    return r;
}

/* Edge-triggered: read until a short read (the queue was drained; new data
 * raises a new edge).  A socket still full after many reads goes on the
 * again list so that one busy socket cannot starve the others. */
static void on_readable(struct conn *c) {
    for (int i = 0; i < 16; i++)
        if (read_once(c) < READ_CHUNK) return;
    if (!c->again) {
        c->again = 1;
        S.again[S.nagain++] = c->id;
    }
}

static void on_stdin(void) {
    char tmp[256];
    ssize_t r = read(0, tmp, sizeof tmp);
    if (r <= 0 && !(r < 0 && (errno == EAGAIN || errno == EINTR))) {
        S.stdin_open = 0;
        epoll_ctl(S.ep, EPOLL_CTL_DEL, 0, NULL);
    }
}

static void on_event(struct epoll_event *ev) {
    if (ev->data.u32 == STDIN_TAG) {
        on_stdin();
        return;
    }
    struct conn *c = &S.conns[ev->data.u32];
    if (c->stage == ST_CLOSED) return;
    if (c->stage == ST_CONNECTING) {
        if (ev->events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) on_connected(c);
        return;
    }
    if (ev->events & EPOLLOUT) flush_out(c);
    if (c->stage != ST_CLOSED && (ev->events & (EPOLLIN | EPOLLHUP | EPOLLERR))) on_readable(c);
}

/* Sockets that had more to read than one turn allows get another turn. */
static void drain_again(void) {
    uint32_t n = S.nagain;
    S.nagain = 0;
    for (uint32_t i = 0; i < n; i++) {
        struct conn *c = &S.conns[S.again[i]];
        c->again = 0;
        if (c->stage != ST_CLOSED) on_readable(c);
    }
}

/* While a phase is measured, poll instead of sleeping for SPIN_NS after the
 * last event.  On loopback the server's write wakes a sleeping reader, and
 * that wake-up (an IPI on a VM) is charged to the server: 10-15% of its
 * CPU per delivery here, a cost no server pays toward remote clients.  The
 * spin is timed and subtracted, so the busy share we report is work only. */
#define SPIN_NS (200 * 1000ull)

/* Waits up to timeout_ns for events and handles them all. */
static void loop_once(uint64_t timeout_ns) {
    struct epoll_event ev[MAX_EVENTS];
    uint64_t before = now_ns();
    int spin = S.spinning && before - S.last_event_ns < SPIN_NS;
    if (S.nagain || spin) timeout_ns = 0;
    struct timespec ts = {.tv_sec = (time_t)(timeout_ns / SEC), .tv_nsec = (long)(timeout_ns % SEC)};
    int n = epoll_pwait2(S.ep, ev, MAX_EVENTS, &ts, NULL);
    if (n < 0) {
        if (errno != EINTR) die("epoll_pwait2: %s", strerror(errno));
        return;
    }
    S.now = now_ns();
    if (n > 0) S.last_event_ns = S.now;
    else if (spin) S.spin_ns += S.now - before;
    for (int i = 0; i < n; i++) on_event(&ev[i]);
    drain_again();
    if (S.now > S.deadline) S.stop = 1;
}

/* -------------------------------------------------------------- phases */

/* A SYN that meets a full accept queue is dropped and resent only after
 * 1 s, 3 s, 7 s...; re-dialing a connect that has not finished after
 * CONNECT_RETRY_MS gets through as soon as the server accepts again.
 * (WebSocket and SSE rarely need it, as the window waits for answers; a
 * poll is established as soon as it is sent, so polls outrun accept().) */
#define CONNECT_RETRY_MS 100
#define CONNECT_ATTEMPTS 200

static void redial_stuck(uint64_t now) {
    for (uint32_t i = 0; i < S.next_sub; i++) {
        struct conn *c = &S.conns[i];
        if (c->stage != ST_CONNECTING || now - c->connect_ns < CONNECT_RETRY_MS * MS) continue;
        close(c->fd);
        c->stage = ST_CLOSED;
        if (c->attempts >= CONNECT_ATTEMPTS) {
            S.err.connect++;
            if (S.inflight) S.inflight--;
            continue;
        }
        S.redials++;
        conn_start(c);
    }
}

static void open_subscribers(void) {
    uint64_t deadline = now_ns() + (uint64_t)O.ready_timeout_s * SEC;
    while (!S.stop && (S.next_sub < (uint32_t)O.subs || S.inflight)) {
        while (S.next_sub < (uint32_t)O.subs && S.inflight < (uint32_t)O.window) {
            S.inflight++;
            conn_start(&S.conns[S.next_sub++]);
        }
        if (now_ns() > deadline) break;
        loop_once(20 * MS);
        redial_stuck(now_ns());
    }
    /* Whoever is not confirmed by now is out, so "expected" stays honest. */
    for (uint32_t i = 0; i < S.next_sub; i++) {
        struct conn *c = &S.conns[i];
        if (c->ready || c->stage == ST_CLOSED) continue;
        if (O.transport == T_SSE && c->stage == ST_HTTP && c->http_state != H_HEAD) {
            S.sse_unconfirmed++; /* 200 stream but no "connected" event */
            mark_ready(c);
            continue;
        }
        conn_close(c, &S.err.not_ready);
    }
    S.inflight = 0;
    note("%u of %d subscribers ready (%" PRIu64 " connects redialed)", S.ready, O.subs, S.redials);
}

static int open_publisher(void) {
    S.pub = &S.conns[O.subs];
    conn_start(S.pub);
    uint64_t deadline = now_ns() + 10 * SEC;
    while (!S.stop && !S.pub->ready && S.pub->stage != ST_CLOSED && now_ns() < deadline)
        loop_once(20 * MS);
    return S.pub->ready;
}

/* Before publishing, the server must be done with the subscribes: no poll
 * was answered and (with --server-pid) the server used at most 10% of one
 * core during a whole settle window (an idle server still runs its timers:
 * 15,000 parked polls cost a Python peer 2-3% of a core).  Parked polls only
 * count as parked after this; the first delivery of the run verifies it. */
static void wait_settled(uint64_t max_ns) {
    uint64_t start = now_ns(), win = (uint64_t)O.settle_ms * MS;
    uint64_t win_start = start;
    int64_t cpu0 = server_cpu_ns();
    uint64_t answers0 = S.poll_answers;
    while (!S.stop && now_ns() - start < max_ns) {
        loop_once(20 * MS);
        uint64_t t = now_ns();
        if (S.poll_answers != answers0) {
            answers0 = S.poll_answers, win_start = t, cpu0 = server_cpu_ns();
            continue;
        }
        if (t - win_start < win) continue;
        int64_t cpu = server_cpu_ns();
        if (cpu < 0 || (double)(cpu - cpu0) <= 0.1 * (double)(t - win_start)) return;
        win_start = t, cpu0 = cpu;
    }
    note("server did not settle within %.1f s", max_ns / 1e9);
}

static size_t make_data(char *dst, uint64_t t, uint64_t k) {
    int n = sprintf(dst, "{\"t\":%" PRIu64 ",\"k\":%" PRIu64 ",\"pad\":\"", t, k);
    int pad = O.size - n - 2;
    if (pad < 0) pad = 0;
    memset(dst + n, 'x', (size_t)pad);
    memcpy(dst + n + pad, "\"}", 2);
    return (size_t)(n + pad + 2);
}

/* Appends one publish of message k, stamped t, to out. */
static size_t make_publish(char *out, uint64_t t, uint64_t k) {
    char data[4096], body[4300];
    size_t dl = make_data(data, t, k);
    if (O.pub_ws) {
        int bl = snprintf(body, sizeof body,
                          "{\"type\":\"publish\",\"channel\":\"%s\",\"data\":%.*s}",
                          O.channel, (int)dl, data);
        return ws_frame(out, 1, body, (size_t)bl);
    }
    int hl = sprintf(out,
                     "POST /api/broadcast/%s HTTP/1.1\r\nHost: %s:%d\r\n"
                     "Content-Type: application/json\r\nContent-Length: %zu\r\n%s\r\n",
                     O.channel, O.host, O.port, dl, O.header);
    memcpy(out + hl, data, dl);
    return (size_t)hl + dl;
}

/* Publishes messages [k, k+count) in one write: a burst is one segment. */
static void publish(struct phase *ph, uint64_t k, uint64_t count) {
    static char *buf;
    static size_t cap;
    size_t need = count * ((size_t)O.size + 512 + sizeof O.header);
    if (need > cap) buf = xrealloc(buf, cap = need);
    uint64_t t = now_ns();
    size_t len = 0;
    for (uint64_t i = 0; i < count; i++) len += make_publish(buf + len, t, k + i);
    conn_send(S.pub, buf, len);
    S.pub_sent += count;
    ph->k_published = k + count;
    ph->t_last_pub = t;
}

static int burst_done(uint64_t k, uint64_t count) {
    uint32_t need = alive();
    for (uint64_t i = k; i < k + count; i++)
        if (S.got[i] < need) return 0;
    return 1;
}

/* Waits until every live subscriber has [k, k+count), or timeout_ns pass,
 * or nothing at all arrives for --stall-ms: a server that dropped a message
 * for some subscriber will never complete the burst, and waiting the full
 * timeout for each would only cost time (what arrives late still counts). */
static int wait_burst(uint64_t k, uint64_t count, uint64_t timeout_ns, uint64_t stall) {
    uint64_t start = now_ns(), deadline = start + timeout_ns;
    uint64_t seen = S.delivered, last_progress = start;
    while (!burst_done(k, count)) {
        uint64_t now = now_ns();
        if (S.delivered != seen) seen = S.delivered, last_progress = now;
        if (S.stop || S.pub->stage == ST_CLOSED || now > deadline || now - last_progress > stall)
            return 0;
        loop_once(deadline - now < 20 * MS ? deadline - now : 20 * MS);
    }
    return 1;
}

static void phase_begin(struct phase *ph) {
    ph->srv_ticks_start = server_ticks();
    ph->srv_start = server_cpu_ns();
    ph->core_start = core_busy_ticks(O.server_cpu);
    ph->cpu_start = cpu_self_s();
    ph->spin_start = S.spin_ns;
    ph->t_start = now_ns();
    S.spinning = 1;
}

static void phase_end(struct phase *ph) {
    S.spinning = 0;
    ph->t_end = now_ns();
    ph->cpu_end = cpu_self_s();
    ph->spin_end = S.spin_ns;
    ph->srv_end = server_cpu_ns();
    ph->srv_ticks_end = server_ticks();
    ph->core_end = core_busy_ticks(O.server_cpu);
}

static void run_fanout(struct phase *ph) {
    int misses = 0;
    phase_begin(ph);
    for (uint64_t k = ph->k_begin; k < ph->k_end && !S.stop; k += (uint64_t)ph->burst) {
        uint64_t count = ph->k_end - k < (uint64_t)ph->burst ? ph->k_end - k : (uint64_t)ph->burst;
        publish(ph, k, count);
        if (wait_burst(k, count, (uint64_t)O.timeout_ms * MS, (uint64_t)O.stall_ms * MS)) {
            misses = 0;
            continue;
        }
        ph->timeouts++;
        if (S.pub->stage == ST_CLOSED || ++misses >= O.max_timeouts) {
            ph->aborted = 1;
            break;
        }
    }
    phase_end(ph);
}

/* Publishes on a fixed schedule (message j due at start + j/rate), catching
 * up in one write when late, then waits for the stragglers. */
static void run_rate(struct phase *ph, double msgs_per_s) {
    double interval = 1e9 / msgs_per_s;
    phase_begin(ph);
    uint64_t k = ph->k_begin;
    while (k < ph->k_end && !S.stop && S.pub->stage != ST_CLOSED) {
        uint64_t now = now_ns();
        uint64_t due = ph->t_start + (uint64_t)((double)(k - ph->k_begin) * interval);
        if (now < due) {
            loop_once(due - now);
            continue;
        }
        uint64_t late = (uint64_t)((double)(now - ph->t_start) / interval) + ph->k_begin + 1;
        uint64_t count = late > k ? late - k : 1;
        if (count > MAX_BATCH) count = MAX_BATCH;
        if (count > ph->k_end - k) count = ph->k_end - k;
        publish(ph, k, count);
        k += count;
        loop_once(0);
    }
    uint64_t last = now_ns();
    if (!wait_burst(ph->k_begin, ph->k_published - ph->k_begin, (uint64_t)O.timeout_ms * MS,
                    (uint64_t)O.stall_ms * MS))
        ph->timeouts++;
    ph->drain_ns = now_ns() - last;
    phase_end(ph);
}

/* ---------------------------------------------------------------- output */

static double phase_expected(const struct phase *ph) {
    return (double)(ph->k_published - ph->k_begin) * (double)S.ready;
}

static void print_lat(const struct hist *h) {
    printf("\"lat_p50_us\":%.1f,\"lat_p99_us\":%.1f,\"lat_p999_us\":%.1f,"
           "\"lat_max_us\":%.1f,\"lat_mean_us\":%.1f",
           hist_pct_us(h, 0.50), hist_pct_us(h, 0.99), hist_pct_us(h, 0.999),
           h->max_ns / 1000.0, h->n ? (double)h->sum_ns / (double)h->n / 1000.0 : -1.0);
}

static void print_phase(const struct phase *ph) {
    double dur = (ph->t_end - ph->t_start) / 1e9, cpu = ph->cpu_end - ph->cpu_start;
    double expected = phase_expected(ph);
    double srv = ph->srv_start >= 0 && ph->srv_end >= 0
                     ? (double)(ph->srv_end - ph->srv_start) / 1e9
                     : -1;
    double srv_ticks = ph->srv_ticks_start >= 0 && ph->srv_ticks_end >= 0
                           ? (double)(ph->srv_ticks_end - ph->srv_ticks_start) /
                                 (double)sysconf(_SC_CLK_TCK)
                           : -1;
    double core = ph->core_start >= 0 && ph->core_end >= 0
                      ? (double)(ph->core_end - ph->core_start) / (double)sysconf(_SC_CLK_TCK)
                      : -1;
    double lost = expected - (double)ph->deliveries;
    printf("{\"burst\":%d,\"rate\":%.0f,\"messages\":%" PRIu64 ",\"published\":%" PRIu64 ","
           "\"deliveries\":%" PRIu64 ",\"expected\":%.0f,\"lost\":%.0f,\"duplicates\":%" PRIu64 ","
           "\"timeouts\":%" PRIu64 ",\"aborted\":%d,\"duration_s\":%.6f,"
           "\"deliveries_per_s\":%.1f,",
           ph->burst, ph->rate, ph->k_end - ph->k_begin, ph->k_published - ph->k_begin,
           ph->deliveries, expected, lost < 0 ? 0 : lost, ph->dups, ph->timeouts, ph->aborted,
           dur, dur > 0 ? (double)ph->deliveries / dur : 0.0);
    print_lat(&ph->h);
    double busy = cpu - (double)(ph->spin_end - ph->spin_start) / 1e9;
    printf(",\"drain_ms\":%.1f,\"loadgen_cpu_s\":%.4f,\"loadgen_cpu_share\":%.4f,"
           "\"loadgen_busy_share\":%.4f,"
           "\"server_cpu_s\":%.6f,\"server_cpu_us_per_delivery\":%.4f,"
           "\"server_cpu_stat_s\":%.2f,\"server_core_busy_s\":%.3f",
           ph->drain_ns / 1e6, cpu, dur > 0 ? cpu / dur : 0.0,
           dur > 0 ? (busy > 0 ? busy : 0.0) / dur : 0.0, srv,
           srv >= 0 && ph->deliveries ? srv * 1e6 / (double)ph->deliveries : -1.0, srv_ticks,
           core);
    if (O.mode != M_LISTEN) return;
    /* Sparse: the buckets that hold anything, as [midpoint ns, count]. */
    printf(",\"hist\":[");
    for (size_t i = 0, first = 1; i < H_BUCKETS; i++) {
        if (!ph->h.b[i]) continue;
        printf("%s[%" PRIu64 ",%" PRIu64 "]", first ? "" : ",", hist_value(i), ph->h.b[i]);
        first = 0;
    }
    printf("]");
}

static void print_result(void) {
    static const char *tn[] = {"ws", "sse", "poll"},
                      *mn[] = {"fanout", "rate", "idle", "listen"};
    uint64_t deliveries = 0, dups = 0;
    double expected = 0, dur = 0, cpu = 0, spin = 0;
    for (int i = 0; i < S.nph; i++) {
        deliveries += S.ph[i].deliveries;
        dups += S.ph[i].dups;
        expected += phase_expected(&S.ph[i]);
        dur += (S.ph[i].t_end - S.ph[i].t_start) / 1e9;
        cpu += S.ph[i].cpu_end - S.ph[i].cpu_start;
        spin += (double)(S.ph[i].spin_end - S.ph[i].spin_start) / 1e9;
        hist_merge(&S.all, &S.ph[i].h);
    }
    const struct errors *e = &S.err;
    uint64_t errors = e->connect + e->handshake + e->closed + e->protocol + e->not_ready +
                      e->bad_k + e->unpaired + e->pub_error + e->out_overflow;
    double wall = (now_ns() - S.t0) / 1e9, lost = expected - (double)deliveries;
    printf("{\"mode\":\"%s\",\"transport\":\"%s\",\"subscribers\":%d,\"ready\":%u,"
           "\"closed_after_ready\":%u,\"sse_no_connected_event\":%" PRIu64 ","
           "\"deliveries\":%" PRIu64 ",\"expected\":%.0f,\"lost\":%.0f,\"duplicates\":%" PRIu64 ","
           "\"duration_s\":%.6f,\"deliveries_per_s\":%.1f,",
           mn[O.mode], tn[O.transport], O.subs, S.ready, S.closed_ready, S.sse_unconfirmed,
           deliveries, expected, lost < 0 ? 0 : lost, dups, dur,
           dur > 0 ? (double)deliveries / dur : 0.0);
    print_lat(&S.all);
    printf(",\"errors\":%" PRIu64 ",\"error_detail\":{\"connect\":%" PRIu64 ",\"handshake\":%" PRIu64
           ",\"closed\":%" PRIu64 ",\"protocol\":%" PRIu64 ",\"not_ready\":%" PRIu64
           ",\"bad_k\":%" PRIu64 ",\"unpaired\":%" PRIu64 ",\"pub_error\":%" PRIu64
           ",\"out_overflow\":%" PRIu64 "},\"pub_sent\":%" PRIu64 ",\"pub_answers\":%" PRIu64 ","
           "\"loadgen_cpu_s\":%.4f,\"loadgen_cpu_share\":%.4f,\"loadgen_busy_share\":%.4f,"
           "\"loadgen_cpu_total_s\":%.4f,"
           "\"wall_s\":%.3f,\"phases\":[",
           errors, e->connect, e->handshake, e->closed, e->protocol, e->not_ready, e->bad_k,
           e->unpaired, e->pub_error, e->out_overflow, S.pub_sent, S.pub_answers, cpu,
           dur > 0 ? cpu / dur : 0.0, dur > 0 ? (cpu - spin) / dur : 0.0, cpu_self_s(), wall);
    for (int i = 0; i < S.nph; i++) {
        if (i) putchar(',');
        print_phase(&S.ph[i]);
        putchar('}');
    }
    printf("]");
    if (O.mode == M_LISTEN) {
        /* How many subscribers got each k: loss per message the publisher knows it sent. */
        printf(",\"got\":[");
        for (uint64_t k = 0; k < S.total_msgs; k++) printf("%s%u", k ? "," : "", S.got[k]);
        printf("],\"alive\":%u", alive());
    }
    printf("}\n");
    fflush(stdout);
}

/* ----------------------------------------------------------------- setup */

static int parse_list(const char *s, double *out, int max) {
    int n = 0;
    char *end;
    while (*s && n < max) {
        out[n++] = strtod(s, &end);
        if (end == s) die("bad list: %s", s);
        s = *end == ',' ? end + 1 : end;
    }
    return n;
}

static void usage(void) {
    fputs("usage: loadgen --port P --transport ws|sse|poll --mode fanout|rate|idle "
          "[options]\n(see the comment at the top of loadgen.c)\n", stderr);
    exit(2);
}

static void parse_args(int argc, char **argv) {
    O = (struct opts){.host = "127.0.0.1", .transport = T_WS, .mode = M_FANOUT, .subs = 100,
                      .messages = {100}, .nmessages = 1, .bursts = {1}, .nbursts = 1, .rates = {10000}, .nrates = 1,
                      .duration_s = 3, .size = 100, .channel = "bench", .pub_ws = -1,
                      .timeout_ms = 10000, .max_timeouts = 3, .stall_ms = 1000, .ready_timeout_s = 60, .settle_ms = 500,
                      .server_cpu = -1, .src_base = 2, .per_src = 10000, .window = 256, .hold_s = 600,
                      .max_s = 900};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) usage();
        i++;
        double tmp[MAX_PHASES];
        if (!strcmp(a, "--host")) O.host = v;
        else if (!strcmp(a, "--port")) O.port = atoi(v);
        else if (!strcmp(a, "--transport"))
            O.transport = !strcmp(v, "ws") ? T_WS : !strcmp(v, "sse") ? T_SSE
                        : !strcmp(v, "poll") ? T_POLL : (usage(), 0);
        else if (!strcmp(a, "--mode"))
            O.mode = !strcmp(v, "fanout") ? M_FANOUT : !strcmp(v, "rate") ? M_RATE
                   : !strcmp(v, "idle") ? M_IDLE : !strcmp(v, "listen") ? M_LISTEN
                   : (usage(), 0);
        else if (!strcmp(a, "--subscribers")) O.subs = atoi(v);
        else if (!strcmp(a, "--messages")) {
            O.nmessages = parse_list(v, tmp, MAX_PHASES);
            for (int j = 0; j < O.nmessages; j++) O.messages[j] = (int)tmp[j];
        }
        else if (!strcmp(a, "--bursts")) {
            O.nbursts = parse_list(v, tmp, MAX_PHASES);
            for (int j = 0; j < O.nbursts; j++) O.bursts[j] = (int)tmp[j];
        } else if (!strcmp(a, "--rates")) O.nrates = parse_list(v, O.rates, MAX_PHASES);
        else if (!strcmp(a, "--duration")) O.duration_s = atof(v);
        else if (!strcmp(a, "--size")) O.size = atoi(v);
        else if (!strcmp(a, "--channel")) O.channel = v;
        else if (!strcmp(a, "--pub")) O.pub_ws = !strcmp(v, "ws");
        else if (!strcmp(a, "--timeout-ms")) O.timeout_ms = atoi(v);
        else if (!strcmp(a, "--max-timeouts")) O.max_timeouts = atoi(v);
        else if (!strcmp(a, "--stall-ms")) O.stall_ms = atoi(v);
        else if (!strcmp(a, "--ready-timeout")) O.ready_timeout_s = atoi(v);
        else if (!strcmp(a, "--settle-ms")) O.settle_ms = atoi(v);
        else if (!strcmp(a, "--server-pid")) O.server_pid = atoi(v);
        else if (!strcmp(a, "--server-cpu")) O.server_cpu = atoi(v);
        else if (!strcmp(a, "--src-base")) O.src_base = atoi(v);
        else if (!strcmp(a, "--per-src")) O.per_src = atoi(v);
        else if (!strcmp(a, "--window")) O.window = atoi(v);
        else if (!strcmp(a, "--hold")) O.hold_s = atoi(v);
        else if (!strcmp(a, "--max-s")) O.max_s = atoi(v);
        else if (!strcmp(a, "--header")) {
            if (strlen(v) > 1000 || strpbrk(v, "\r\n") || !strchr(v, ':'))
                die("--header must be one 'Name: value' line of at most 1000 bytes");
            snprintf(O.header, sizeof O.header, "%s\r\n", v);
        }
        else usage();
    }
    if (O.pub_ws < 0) O.pub_ws = O.transport == T_WS;
    if (O.port <= 0 || O.port > 65535) usage();
    if (O.size < 40 || O.size > 3000) die("--size must be 40..3000");
    struct in_addr addr;
    /* Only loopback: this tool is for benchmarks on one machine. */
    if (inet_pton(AF_INET, O.host, &addr) != 1 || (ntohl(addr.s_addr) >> 24) != 127)
        die("--host must be an IPv4 address in 127.0.0.0/8");
    if (O.per_src < 1 || O.per_src > 28000) die("--per-src must be 1..28000");
    if (O.src_base < 1 || O.src_base + O.subs / O.per_src > 254) die("bad --src-base");
    for (int j = 0; j < O.nbursts; j++)
        if (O.bursts[j] < 1 || O.bursts[j] > MAX_BATCH) die("burst sizes must be 1..%d", MAX_BATCH);
}

/* Raise the soft file limit to the hard one (20,000 here) and check N fits. */
static void setup_limits(void) {
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    /* stdio, epoll, the publisher, and a little slack. */
    if ((rlim_t)O.subs + 16 > rl.rlim_cur)
        die("%d subscribers need more than the %lu open files allowed", O.subs,
            (unsigned long)rl.rlim_cur);
}

static void on_signal(int sig) {
    (void)sig;
    S.stop = 1;
}

static void setup_signals(void) {
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

static void setup_state(void) {
    S.t0 = now_ns();
    S.deadline = S.t0 + (uint64_t)O.max_s * SEC;
    S.seed = splitmix64(S.t0 ^ ((uint64_t)getpid() << 32));
    S.rng = S.seed;
    S.ep = epoll_create1(EPOLL_CLOEXEC);
    S.nconns = (uint32_t)O.subs + 1;
    S.conns = calloc(S.nconns, sizeof *S.conns);
    S.again = calloc(S.nconns, sizeof *S.again);
    if (!S.conns || !S.again || S.ep < 0) die("setup failed");
    for (uint32_t i = 0; i < S.nconns; i++) {
        S.conns[i].id = i;
        S.conns[i].fd = -1;
        S.conns[i].role = i < (uint32_t)O.subs ? ROLE_SUB : ROLE_PUB;
        S.conns[i].stage = ST_CLOSED;
    }
}

/* Lays out the phases' message ranges once the live subscriber count is
 * known (rate mode turns deliveries/s into messages/s with it). */
static void plan_phases(void) {
    uint64_t k = 0;
    int n = O.mode == M_FANOUT ? O.nbursts : O.mode == M_RATE ? O.nrates : 0;
    if (O.mode == M_LISTEN) {
        /* k = 0 alone (the first message), then the rest (a steady rate). */
        uint64_t total = O.messages[0] > 1 ? (uint64_t)O.messages[0] : 1;
        S.ph[0] = (struct phase){.k_begin = 0, .k_end = 1, .k_published = 1};
        S.ph[1] = (struct phase){.k_begin = 1, .k_end = total, .k_published = total};
        S.nph = total > 1 ? 2 : 1;
        k = total;
    }
    for (int i = 0; i < n; i++) {
        struct phase *ph = &S.ph[S.nph++];
        uint64_t count;
        if (O.mode == M_FANOUT) {
            ph->burst = O.bursts[i];
            /* One count per burst size; the last one serves the rest. */
            count = (uint64_t)O.messages[i < O.nmessages ? i : O.nmessages - 1];
        } else {
            ph->rate = O.rates[i];
            double mps = O.rates[i] / (S.ready ? S.ready : 1);
            count = (uint64_t)(mps * O.duration_s + 0.999);
            if (!count) count = 1;
        }
        ph->k_begin = k;
        ph->k_end = k += count;
        ph->k_published = ph->k_begin;
    }
    if (k > MAX_MESSAGES) die("too many messages (%" PRIu64 ")", k);
    S.total_msgs = k;
    S.words = (k + 63) / 64;
    S.seen = calloc((size_t)O.subs * S.words + 1, sizeof *S.seen);
    S.got = calloc(k + 1, sizeof *S.got);
    if (!S.seen || !S.got) die("out of memory for %d x %" PRIu64 " receipts", O.subs, k);
}

static void hold_idle(void) {
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = STDIN_TAG};
    /* stdin that cannot be watched (/dev/null) leaves signals and --hold. */
    if (epoll_ctl(S.ep, EPOLL_CTL_ADD, 0, &ev) < 0) note("not watching stdin");
    S.stdin_open = 1;
    printf("READY %u\n", alive());
    fflush(stdout);
    uint64_t end = now_ns() + (uint64_t)O.hold_s * SEC;
    while (!S.stop && S.stdin_open && now_ns() < end) loop_once(100 * MS);
    note("idle hold over: %u of %u still open", alive(), S.ready);
}

/* RST instead of FIN: no TIME_WAIT pile-up across repeated runs. */
static void close_all(void) {
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    for (uint32_t i = 0; i < S.nconns; i++) {
        struct conn *c = &S.conns[i];
        if (c->stage == ST_CLOSED) continue;
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        close(c->fd);
        c->stage = ST_CLOSED;
    }
}

/* A burst that ended on a stall may still be on its way; earlier phases'
 * stragglers are counted while later phases run, the last phase's here
 * (bounded by a stall of at least 1 s).  Only what never arrives is lost. */
static void wait_stragglers(void) {
    uint64_t published = 0;
    for (int i = 0; i < S.nph; i++) published += S.ph[i].k_published - S.ph[i].k_begin;
    uint64_t stall = (uint64_t)(O.stall_ms < 1000 ? 1000 : O.stall_ms) * MS;
    uint64_t deadline = now_ns() + (uint64_t)O.timeout_ms * MS, last = now_ns();
    uint64_t seen = S.delivered;
    while (!S.stop && S.delivered < published * alive() && now_ns() < deadline) {
        loop_once(20 * MS);
        if (S.delivered != seen) seen = S.delivered, last = now_ns();
        if (now_ns() - last > stall) return;
    }
}

static void run_phases(void) {
    for (int i = 0; i < S.nph && !S.stop; i++) {
        struct phase *ph = &S.ph[i];
        if (O.mode == M_FANOUT) {
            note("phase %d: %" PRIu64 " messages in bursts of %d", i, ph->k_end - ph->k_begin,
                 ph->burst);
            run_fanout(ph);
        } else {
            double mps = ph->rate / (alive() ? alive() : 1);
            note("phase %d: %.0f deliveries/s = %.2f messages/s for %.1f s", i, ph->rate, mps,
                 O.duration_s);
            run_rate(ph, mps);
        }
    }
}

int main(int argc, char **argv) {
    parse_args(argc, argv);
    setup_limits();
    setup_signals();
    setup_state();
    open_subscribers();
    if (O.mode == M_IDLE) {
        wait_settled(30 * SEC);
        hold_idle();
    } else if (O.mode == M_LISTEN) {
        plan_phases();
        wait_settled(30 * SEC);
        for (int i = 0; i < S.nph; i++) phase_begin(&S.ph[i]);
        S.spinning = 0; /* someone else publishes: no measured phase to spin for */
        hold_idle();
        for (int i = 0; i < S.nph; i++) phase_end(&S.ph[i]);
    } else {
        plan_phases();
        if (!S.stop && S.ready && open_publisher()) {
            wait_settled(30 * SEC);
            run_phases();
            wait_stragglers();
        } else {
            note("no publisher or no subscribers: nothing published");
        }
    }
    print_result();
    close_all();
    return 0;
}
