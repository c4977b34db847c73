/* socksbench.c - a SOCKS5 load generator: C clients on epoll loops (one thread per core) run
 * sessions (connect, SOCKS5 handshake, request, read to EOF), downloads or uploads through a proxy,
 * or straight to the target with --direct, and report rates, errors and latency percentiles.
 * --mode udp sends datagrams through a UDP ASSOCIATE to an echo server and times their round
 * trips; --udp-echo is that echo server. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* recvmmsg, sendmmsg */
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define SB_DEFAULT_PROXY    "127.0.0.1:1080"
#define SB_DEFAULT_CLIENTS  32
#define SB_DEFAULT_DURATION 5.0
#define SB_DEFAULT_TIMEOUT  10.0
#define SB_DEFAULT_UPLOAD   (1ull << 20)
#define SB_REQUEST_SESSION  "GET /small HTTP/1.0\r\nHost: x\r\n\r\n"
#define SB_REQUEST_BULK     "GET /large HTTP/1.0\r\nHost: x\r\n\r\n"
#define SB_IOBUF_SIZE       (256 * 1024) /* per-thread receive buffer; upload payload chunk */
#define SB_HS_BUF_SIZE      512          /* method + auth + longest reply (262) fit */
#define SB_EPOLL_EVENTS     512
#define SB_IO_BUDGET        16 /* reads/writes per turn before a client yields to the others */
#define SB_SCAN_MAX_NS      (100 * NS_PER_MS) /* timeout scan period, at most */
#define NS_PER_MS           1000000ull
#define NS_PER_S            1000000000ull
#define SB_MAX_CLIENTS      10000000
#define SB_MAX_THREADS      1024
#define SB_UDP_SIZE         64 /* default payload bytes per datagram */
#define SB_UDP_WINDOW       16 /* default datagrams in flight per client */
#define SB_UDP_MAX_WINDOW   4096
#define SB_UDP_MIN_SIZE     16 /* the stamp: send time, sequence number, window slot */
#define SB_UDP_MAX_SIZE     65000
#define SB_UDP_LOSS_TIMEOUT 1.0
#define SB_UDP_DRAIN        0.5
#define SB_UDP_BATCH        32 /* datagrams per recvmmsg/sendmmsg */
#define SB_UDP_HDR_MAX      (4 + 1 + 255 + 2)
#define SB_ECHO_BATCH       64
#define SB_ECHO_BUF         65536

#define SOCKS_VER        5
#define SOCKS_AUTH_VER   1
#define SOCKS_M_NOAUTH   0x00
#define SOCKS_M_USERPASS 0x02
#define SOCKS_M_NONE     0xff
#define SOCKS_CMD_CONN   1
#define SOCKS_CMD_UDP    3
#define SOCKS_ATYP_IPV4  1
#define SOCKS_ATYP_NAME  3
#define SOCKS_ATYP_IPV6  4

/* ---------------------------------------------------------------------------------------- */
/* histogram: log-linear buckets of microseconds, fixed size, merged at the end */

#define HIST_SUB_BITS 6
#define HIST_SUB      (1u << HIST_SUB_BITS)
#define HIST_MAX_BITS 40 /* values up to 2^40 us (12 days) */
#define HIST_BUCKETS  ((HIST_MAX_BITS - HIST_SUB_BITS + 1) * HIST_SUB)

struct hist {
	uint64_t count;
	uint64_t sum_ns;
	uint64_t min_ns;
	uint64_t max_ns;
	uint64_t bucket[HIST_BUCKETS];
};

/* Below 64 us one bucket per microsecond; above, 64 buckets per power of two (< 1.6% wide). */
static unsigned hist_index(uint64_t us)
{
	if (us >= (1ull << HIST_MAX_BITS))
		us = (1ull << HIST_MAX_BITS) - 1;
	if (us < HIST_SUB)
		return (unsigned)us;
	unsigned shift = (unsigned)(63 - __builtin_clzll(us)) - HIST_SUB_BITS;
	return (shift + 1) * HIST_SUB + (unsigned)((us >> shift) - HIST_SUB);
}

/* The middle of a bucket, in microseconds. */
static uint64_t hist_value(unsigned idx)
{
	if (idx < HIST_SUB)
		return idx;
	unsigned shift = idx / HIST_SUB - 1;
	uint64_t low = (uint64_t)(idx % HIST_SUB + HIST_SUB) << shift;
	return low + ((1ull << shift) >> 1);
}

static void hist_record(struct hist *h, uint64_t ns)
{
	if (h->count == 0 || ns < h->min_ns)
		h->min_ns = ns;
	if (ns > h->max_ns)
		h->max_ns = ns;
	h->count++;
	h->sum_ns += ns;
	h->bucket[hist_index(ns / 1000)]++;
}

static void hist_merge(struct hist *into, const struct hist *from)
{
	if (from->count == 0)
		return;
	if (into->count == 0 || from->min_ns < into->min_ns)
		into->min_ns = from->min_ns;
	if (from->max_ns > into->max_ns)
		into->max_ns = from->max_ns;
	into->count += from->count;
	into->sum_ns += from->sum_ns;
	for (unsigned i = 0; i < HIST_BUCKETS; i++)
		into->bucket[i] += from->bucket[i];
}

/* The q-quantile (0 < q <= 1) in microseconds, clamped to the exact min and max. */
static double hist_quantile(const struct hist *h, double q)
{
	if (h->count == 0)
		return 0;
	double want = q * (double)h->count;
	uint64_t rank = (uint64_t)want;
	if ((double)rank < want)
		rank++; /* ceil, without libm */
	if (rank < 1)
		rank = 1;
	uint64_t seen = 0;
	double v = (double)h->max_ns / 1000.0;
	for (unsigned i = 0; i < HIST_BUCKETS; i++) {
		seen += h->bucket[i];
		if (seen >= rank) {
			v = (double)hist_value(i);
			break;
		}
	}
	double lo = (double)h->min_ns / 1000.0, hi = (double)h->max_ns / 1000.0;
	return v < lo ? lo : v > hi ? hi : v;
}

/* ---------------------------------------------------------------------------------------- */
/* configuration */

enum sb_mode { MODE_SESSION, MODE_BULK, MODE_UPLOAD, MODE_UDP };
static const char *const sb_mode_names[] = {"session", "bulk", "upload", "udp"};

struct sb_config {
	enum sb_mode mode;
	int threads;
	int clients;
	double duration;   /* seconds, 0 = no limit */
	uint64_t sessions; /* 0 = no limit */
	double timeout;
	int direct, pipeline, fail_on_error, quiet;
	const char *json_path;
	const char *proxy_text, *target_text;
	struct sockaddr_storage proxy_addr, target_addr;
	socklen_t proxy_len, target_len;
	char target_host[256];
	uint16_t target_port;
	int auth;
	char user[256], pass[256];
	uint8_t *request;
	size_t request_len;
	int request_given;
	uint64_t bytes; /* bulk: receive limit (0 = to EOF); upload: payload */
	int bytes_given;
	/* the handshake on the wire, built once */
	uint8_t greeting[3];
	uint8_t method;
	uint8_t auth_msg[3 + 255 + 255];
	size_t auth_len;
	uint8_t connect_msg[4 + 1 + 255 + 2];
	size_t connect_len;
	uint8_t pipelined[3 + (3 + 255 + 255) + (4 + 1 + 255 + 2)];
	size_t pipelined_len;
	/* udp mode */
	uint32_t udp_size, udp_window;
	double udp_rate; /* datagrams/s in all, 0 = as fast as the windows allow */
	double loss_timeout, drain;
	uint8_t udp_hdr[SB_UDP_HDR_MAX]; /* RSV RSV FRAG ATYP DST.ADDR DST.PORT */
	size_t udp_hdr_len;
	int target_is_name;
	/* --udp-echo: serve mode */
	const char *echo_text;
	struct sockaddr_storage echo_addr;
	socklen_t echo_len;
};

static const char sb_usage[] =
    "usage: socksbench --target HOST:PORT [options]\n"
    "       socksbench --udp-echo HOST:PORT [-t N] [-d S] [-q] [--json FILE]\n"
    "A SOCKS5 load generator: C clients on epoll loops (one thread per core) run sessions\n"
    "through a SOCKS5 proxy (or straight to the target with --direct) and report rates,\n"
    "errors and latency percentiles. It stops by itself (-d and/or -n).\n"
    "\n"
    "  -m, --mode MODE        session (default): connect, handshake, send the request, read\n"
    "                         the response to EOF, close; repeat. Counts sessions.\n"
    "                         bulk: the same with a large response (see --request, --bytes).\n"
    "                         upload: after the handshake send the request (only if --request\n"
    "                         is given) and --bytes of payload, shut down writing, read to EOF\n"
    "                         udp: each client does UDP ASSOCIATE (DST 0.0.0.0:0) on a TCP\n"
    "                         control connection, then sends datagrams of --size payload bytes\n"
    "                         to the target (a UDP echo server, see --udp-echo) through the relay\n"
    "                         the reply names (the proxy's address if it names 0.0.0.0 or ::),\n"
    "                         with the RFC 1928 UDP header (FRAG 0), keeping --window of them in\n"
    "                         flight, and times the echoes. Sessions count associations: a\n"
    "                         client holds one for the whole run and retires if it fails or ends.\n"
    "      --proxy HOST:PORT  the SOCKS5 proxy (default " SB_DEFAULT_PROXY "); IPv6 as [::1]:1080\n"
    "      --target HOST:PORT the destination (required); an IPv4/IPv6 literal is sent as an\n"
    "                         address, any other host as a domain name for the proxy to resolve\n"
    "      --auth USER:PASS   offer username/password (RFC 1929) instead of \"no auth\"\n"
    "      --direct           no SOCKS: connect straight to the target (a name is resolved here);\n"
    "                         udp: plain datagrams straight to the target\n"
    "      --pipeline         send greeting, auth and CONNECT in one write, then read the\n"
    "                         replies (default: one step at a time, like real clients)\n"
    "  -r, --request STRING   bytes sent after the handshake; \\r \\n \\t \\\\ \\xHH are decoded.\n"
    "                         Default: \"GET /small HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n\" in "
    "session\n"
    "                         mode, the same for /large in bulk mode, nothing in upload mode\n"
    "  -b, --bytes N          bulk: a session ends (successfully) once N bytes are received,\n"
    "                         and EOF before N bytes is an error (default 0: read to EOF);\n"
    "                         upload: payload bytes per session (default 1M).\n"
    "                         Suffixes K, M, G are powers of 1024\n"
    "  -c, --clients N        concurrent clients, spread over the threads (default 32)\n"
    "  -t, --threads N        threads, one epoll loop each (default: online CPUs, at most -c)\n"
    "  -d, --duration S       stop after S seconds (default 5 unless -n is given); sessions\n"
    "                         still running then are closed and counted as aborted, not failed\n"
    "  -n, --sessions N       start N sessions in all (successful or not), wait for them, stop;\n"
    "                         udp: send N datagrams in all, then drain and stop\n"
    "      --timeout S        fail a session as \"timeout\" when its connect, a handshake step or\n"
    "                         a read or write makes no progress for S seconds (default 10);\n"
    "                         udp: the handshake only (datagrams have --loss-timeout)\n"
    "UDP (--mode udp):\n"
    "      --size N           payload bytes per datagram, 16 to 65000 (default 64); the first 16\n"
    "                         carry the send time, a sequence number and the window slot\n"
    "      --window N         datagrams in flight per client, 1 to 4096 (default 16)\n"
    "      --rate N           send at most N datagrams/s in all (spread over the clients; paced\n"
    "                         to the millisecond); default: as fast as the windows allow\n"
    "      --loss-timeout S   a datagram not echoed within S seconds is lost and frees its slot\n"
    "                         (default 1); an echo arriving later counts as late, not received\n"
    "      --drain S          after -d (or -n) stop sending and wait up to S seconds for the\n"
    "                         datagrams in flight (default 0.5); those still missing are lost\n"
    "      --udp-echo HOST:PORT  serve mode: echo every datagram back to its sender until "
    "SIGTERM,\n"
    "                         SIGINT or -d seconds; -t N threads (SO_REUSEPORT sockets, default\n"
    "                         1). PORT 0 picks a free port. First line on stdout: \"socksbench:\n"
    "                         udp echo on ADDR:PORT\"; at the end a count (and --json: echoed,\n"
    "                         bytes, dropped)\n"
    "      --json FILE        also write the results as JSON to FILE; \"-\" writes them to stdout\n"
    "                         and the text report to stderr\n"
    "  -q, --quiet            no text report\n"
    "      --fail-on-error    exit 1 if any session failed (udp: or any datagram was lost or bad)\n"
    "  -h, --help             show this help\n"
    "\n"
    "Errors: connect (TCP connect failed), handshake (method rejected, auth failed, non-zero\n"
    "reply, EOF, reset or malformed bytes before the reply was complete), io (reset, send\n"
    "failure or short read after the handshake), timeout.\n"
    "Bytes: only what is sent and received after the handshake (request, response, payload).\n"
    "MB/s = (bytes read + written) / elapsed / 10^6.\n"
    "Latency: session = connect start to the end (EOF); handshake = connect start to the success\n"
    "reply parsed (with --direct: to TCP connected). Percentiles come from per-thread\n"
    "log-linear histograms (1 us steps below 64 us, then 64 steps per power of two).\n"
    "JSON keys: mode, direct, pipeline, proxy, target, threads, clients, duration_s,\n"
    "sessions_limit, elapsed_s, sessions, sessions_started, sessions_aborted, sessions_per_s,\n"
    "bytes_read, bytes_written, mb_per_s, cpu_s,\n"
    "errors {total, connect, handshake, io, timeout, handshake_detail {method_rejected,\n"
    "auth_failed, reply_nonzero, eof, reset, malformed}, timeout_detail {connect, handshake,\n"
    "transfer}, reply_codes {\"CODE\": count}},\n"
    "latency_us {session, handshake: {count, min, mean, p50, p90, p99, p999, max}}.\n"
    "UDP mode: sessions = associations set up (sessions_aborted: still in the handshake at the\n"
    "end); bytes = payload only (bytes_read = udp.received x size); elapsed_s = the sending time\n"
    "(the drain is not in it); handshake = connect start to the UDP ASSOCIATE reply (none with\n"
    "--direct); latency_us.session is empty and latency_us gains rtt (send to echo received);\n"
    "and a key udp {size, window, rate_limit, loss_timeout_s, drain_s, sent,\n"
    "received, lost, late, bad, send_errors, datagrams_per_s, sent_per_s, loss_pct}: sent =\n"
    "received + lost; datagrams_per_s = received / elapsed_s; late = echoes after their\n"
    "--loss-timeout (or duplicates); bad = wrong size, header, source address (the target's;\n"
    "only its port when the target is a name) or truncated; send_errors = failed sends and\n"
    "ICMP errors (e.g. port unreachable) on the socket.\n"
    "Exit status: 0 when it ran (even with errors); 1 with --fail-on-error and any error, or\n"
    "when it cannot start; 2 for bad arguments.\n";

static void opt_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

/* Bad arguments: one line on stderr, exit 2. */
static void opt_fail(const char *fmt, ...)
{
	va_list ap;
	fputs("socksbench: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputs(" (see --help)\n", stderr);
	exit(2);
}

static uint64_t opt_count(const char *name, const char *s, uint64_t lo, uint64_t hi)
{
	char *end;
	errno = 0;
	if (*s < '0' || *s > '9')
		opt_fail("%s: not a number: '%s'", name, s);
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || *end || v < lo || v > hi)
		opt_fail("%s: '%s' is not a number from %llu to %llu", name, s,
		         (unsigned long long)lo, (unsigned long long)hi);
	return v;
}

static double opt_seconds(const char *name, const char *s)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (errno || end == s || *end || !isfinite(v) || v <= 0 || v > 1e7)
		opt_fail("%s: '%s' is not a positive number of seconds", name, s);
	return v;
}

/* Like opt_seconds, and 0 is allowed. */
static double opt_seconds0(const char *name, const char *s)
{
	if (strcmp(s, "0") == 0)
		return 0;
	return opt_seconds(name, s);
}

static uint64_t opt_size(const char *name, const char *s)
{
	char *end;
	errno = 0;
	if (*s < '0' || *s > '9')
		opt_fail("%s: not a size: '%s'", name, s);
	unsigned long long v = strtoull(s, &end, 10);
	unsigned shift = 0;
	if (*end == 'k' || *end == 'K')
		shift = 10;
	else if (*end == 'm' || *end == 'M')
		shift = 20;
	else if (*end == 'g' || *end == 'G')
		shift = 30;
	if (shift)
		end++;
	if (errno || *end || v > (UINT64_MAX >> 1 >> shift))
		opt_fail("%s: '%s' is not a size (N with an optional K, M or G)", name, s);
	return (uint64_t)v << shift;
}

/* Splits HOST:PORT or [V6]:PORT (PORT from min_port to 65535); host without brackets. */
static void opt_hostport(const char *name, const char *s, char *host, size_t cap, uint16_t *port,
                         unsigned min_port)
{
	const char *colon, *h = s;
	size_t hlen;
	if (*s == '[') {
		const char *close = strchr(s, ']');
		if (!close || close[1] != ':')
			opt_fail("%s: '%s' is not [IPV6]:PORT", name, s);
		h = s + 1;
		hlen = (size_t)(close - h);
		colon = close + 1;
	} else {
		colon = strrchr(s, ':');
		if (!colon)
			opt_fail("%s: '%s' is not HOST:PORT", name, s);
		hlen = (size_t)(colon - s);
		if (memchr(s, ':', hlen))
			opt_fail("%s: '%s': write an IPv6 address in brackets, [::1]:PORT", name,
			         s);
	}
	if (hlen == 0 || hlen >= cap)
		opt_fail("%s: '%s': the host is empty or longer than %zu bytes", name, s, cap - 1);
	memcpy(host, h, hlen);
	host[hlen] = 0;
	*port = (uint16_t)opt_count(name, colon + 1, min_port, 65535);
}

static void opt_resolve(const char *name, const char *host, uint16_t port,
                        struct sockaddr_storage *ss, socklen_t *len)
{
	struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res;
	char ports[8];
	snprintf(ports, sizeof(ports), "%u", port);
	int rc = getaddrinfo(host, ports, &hints, &res);
	if (rc != 0)
		opt_fail("%s: cannot resolve '%s': %s", name, host, gai_strerror(rc));
	memcpy(ss, res->ai_addr, res->ai_addrlen);
	*len = res->ai_addrlen;
	freeaddrinfo(res);
}

static int opt_hexval(char ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	if (ch >= 'a' && ch <= 'f')
		return ch - 'a' + 10;
	if (ch >= 'A' && ch <= 'F')
		return ch - 'A' + 10;
	return -1;
}

/* Decodes \r \n \t \\ \xHH into cfg->request. */
static void opt_unescape(struct sb_config *cfg, const char *s)
{
	size_t n = strlen(s), o = 0;
	uint8_t *out = cfg->request = malloc(n + 1);
	if (!out)
		opt_fail("out of memory");
	for (size_t i = 0; i < n; i++) {
		if (s[i] != '\\') {
			out[o++] = (uint8_t)s[i];
			continue;
		}
		char e = s[++i];
		if (e == 'r') {
			out[o++] = '\r';
		} else if (e == 'n') {
			out[o++] = '\n';
		} else if (e == 't') {
			out[o++] = '\t';
		} else if (e == '\\') {
			out[o++] = '\\';
		} else if (e == 'x' && opt_hexval(s[i + 1]) >= 0 && opt_hexval(s[i + 2]) >= 0) {
			out[o++] = (uint8_t)(opt_hexval(s[i + 1]) * 16 + opt_hexval(s[i + 2]));
			i += 2;
		} else {
			opt_fail("--request: unknown escape '\\%c' (use \\r \\n \\t \\\\ \\xHH)",
			         e ? e : ' ');
		}
	}
	cfg->request_len = o;
}

/* Builds the greeting, RFC 1929 request and CONNECT request once, for every client. */
static void opt_build_handshake(struct sb_config *cfg)
{
	uint8_t *p;
	cfg->method = cfg->auth ? SOCKS_M_USERPASS : SOCKS_M_NOAUTH;
	cfg->greeting[0] = SOCKS_VER;
	cfg->greeting[1] = 1;
	cfg->greeting[2] = cfg->method;
	if (cfg->auth) {
		size_t ul = strlen(cfg->user), pl = strlen(cfg->pass);
		p = cfg->auth_msg;
		*p++ = SOCKS_AUTH_VER;
		*p++ = (uint8_t)ul;
		memcpy(p, cfg->user, ul);
		p += ul;
		*p++ = (uint8_t)pl;
		memcpy(p, cfg->pass, pl);
		p += pl;
		cfg->auth_len = (size_t)(p - cfg->auth_msg);
	}
	p = cfg->connect_msg;
	*p++ = SOCKS_VER;
	*p++ = SOCKS_CMD_CONN;
	*p++ = 0;
	struct in_addr a4;
	struct in6_addr a6;
	if (inet_pton(AF_INET, cfg->target_host, &a4) == 1) {
		*p++ = SOCKS_ATYP_IPV4;
		memcpy(p, &a4, 4);
		p += 4;
	} else if (inet_pton(AF_INET6, cfg->target_host, &a6) == 1) {
		*p++ = SOCKS_ATYP_IPV6;
		memcpy(p, &a6, 16);
		p += 16;
	} else {
		size_t hl = strlen(cfg->target_host);
		*p++ = SOCKS_ATYP_NAME;
		*p++ = (uint8_t)hl;
		memcpy(p, cfg->target_host, hl);
		p += hl;
	}
	*p++ = (uint8_t)(cfg->target_port >> 8);
	*p++ = (uint8_t)cfg->target_port;
	cfg->connect_len = (size_t)(p - cfg->connect_msg);
	if (cfg->mode == MODE_UDP) {
		/* the datagrams carry the target (RSV RSV FRAG = 0); the request is
		 * UDP ASSOCIATE 0.0.0.0:0 */
		memset(cfg->udp_hdr, 0, 3);
		memcpy(cfg->udp_hdr + 3, cfg->connect_msg + 3, cfg->connect_len - 3);
		cfg->udp_hdr_len = cfg->connect_len;
		cfg->target_is_name = cfg->connect_msg[3] == SOCKS_ATYP_NAME;
		static const uint8_t assoc[] = {
		    SOCKS_VER, SOCKS_CMD_UDP, 0, SOCKS_ATYP_IPV4, 0, 0, 0, 0, 0, 0};
		memcpy(cfg->connect_msg, assoc, sizeof(assoc));
		cfg->connect_len = sizeof(assoc);
	}

	p = cfg->pipelined;
	memcpy(p, cfg->greeting, sizeof(cfg->greeting));
	p += sizeof(cfg->greeting);
	memcpy(p, cfg->auth_msg, cfg->auth_len);
	p += cfg->auth_len;
	memcpy(p, cfg->connect_msg, cfg->connect_len);
	p += cfg->connect_len;
	cfg->pipelined_len = (size_t)(p - cfg->pipelined);
}

enum {
	OPT_PROXY = 256,
	OPT_TARGET,
	OPT_AUTH,
	OPT_DIRECT,
	OPT_PIPELINE,
	OPT_TIMEOUT,
	OPT_JSON,
	OPT_FAIL_ON_ERROR,
	OPT_SIZE,
	OPT_WINDOW,
	OPT_RATE,
	OPT_LOSS_TIMEOUT,
	OPT_DRAIN,
	OPT_UDP_ECHO,
};

static const struct option sb_long_opts[] = {
    {"mode", required_argument, 0, 'm'},
    {"proxy", required_argument, 0, OPT_PROXY},
    {"target", required_argument, 0, OPT_TARGET},
    {"auth", required_argument, 0, OPT_AUTH},
    {"direct", no_argument, 0, OPT_DIRECT},
    {"pipeline", no_argument, 0, OPT_PIPELINE},
    {"request", required_argument, 0, 'r'},
    {"bytes", required_argument, 0, 'b'},
    {"clients", required_argument, 0, 'c'},
    {"threads", required_argument, 0, 't'},
    {"duration", required_argument, 0, 'd'},
    {"sessions", required_argument, 0, 'n'},
    {"timeout", required_argument, 0, OPT_TIMEOUT},
    {"json", required_argument, 0, OPT_JSON},
    {"quiet", no_argument, 0, 'q'},
    {"fail-on-error", no_argument, 0, OPT_FAIL_ON_ERROR},
    {"size", required_argument, 0, OPT_SIZE},
    {"window", required_argument, 0, OPT_WINDOW},
    {"rate", required_argument, 0, OPT_RATE},
    {"loss-timeout", required_argument, 0, OPT_LOSS_TIMEOUT},
    {"drain", required_argument, 0, OPT_DRAIN},
    {"udp-echo", required_argument, 0, OPT_UDP_ECHO},
    {"help", no_argument, 0, 'h'},
    {0, 0, 0, 0},
};

/* Parses and validates everything before anything starts; exits 2 on a bad argument. */
static void opt_parse(struct sb_config *cfg, int argc, char **argv)
{
	const char *request = NULL, *auth = NULL;
	const char *load_opt = NULL; /* an option of the load generator (not of --udp-echo) */
	const char *udp_opt = NULL;  /* an option of --mode udp only */
	int threads_given = 0, c;
	char host[256];
	uint16_t port;

	memset(cfg, 0, sizeof(*cfg));
	cfg->clients = SB_DEFAULT_CLIENTS;
	cfg->timeout = SB_DEFAULT_TIMEOUT;
	cfg->proxy_text = SB_DEFAULT_PROXY;
	cfg->udp_size = SB_UDP_SIZE;
	cfg->udp_window = SB_UDP_WINDOW;
	cfg->loss_timeout = SB_UDP_LOSS_TIMEOUT;
	cfg->drain = SB_UDP_DRAIN;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":m:r:b:c:t:d:n:qh", sb_long_opts, NULL)) != -1) {
		switch (c) {
		case 'm':
			load_opt = "--mode";
			if (strcmp(optarg, "session") == 0)
				cfg->mode = MODE_SESSION;
			else if (strcmp(optarg, "bulk") == 0)
				cfg->mode = MODE_BULK;
			else if (strcmp(optarg, "upload") == 0)
				cfg->mode = MODE_UPLOAD;
			else if (strcmp(optarg, "udp") == 0)
				cfg->mode = MODE_UDP;
			else
				opt_fail("--mode: '%s' is not session, bulk, upload or udp",
				         optarg);
			break;
		case OPT_PROXY:
			load_opt = "--proxy";
			cfg->proxy_text = optarg;
			break;
		case OPT_TARGET:
			load_opt = "--target";
			cfg->target_text = optarg;
			break;
		case OPT_AUTH:
			load_opt = "--auth";
			auth = optarg;
			break;
		case OPT_DIRECT:
			load_opt = "--direct";
			cfg->direct = 1;
			break;
		case OPT_PIPELINE:
			load_opt = "--pipeline";
			cfg->pipeline = 1;
			break;
		case 'r':
			load_opt = "--request";
			request = optarg;
			break;
		case 'b':
			load_opt = "--bytes";
			cfg->bytes = opt_size("--bytes", optarg);
			cfg->bytes_given = 1;
			break;
		case 'c':
			load_opt = "--clients";
			cfg->clients = (int)opt_count("--clients", optarg, 1, SB_MAX_CLIENTS);
			break;
		case 't':
			cfg->threads = (int)opt_count("--threads", optarg, 1, SB_MAX_THREADS);
			threads_given = 1;
			break;
		case 'd':
			cfg->duration = opt_seconds("--duration", optarg);
			break;
		case 'n':
			load_opt = "--sessions";
			cfg->sessions = opt_count("--sessions", optarg, 1, UINT64_MAX >> 2);
			break;
		case OPT_TIMEOUT:
			load_opt = "--timeout";
			cfg->timeout = opt_seconds("--timeout", optarg);
			break;
		case OPT_SIZE:
			load_opt = udp_opt = "--size";
			cfg->udp_size =
			    (uint32_t)opt_count("--size", optarg, SB_UDP_MIN_SIZE, SB_UDP_MAX_SIZE);
			break;
		case OPT_WINDOW:
			load_opt = udp_opt = "--window";
			cfg->udp_window =
			    (uint32_t)opt_count("--window", optarg, 1, SB_UDP_MAX_WINDOW);
			break;
		case OPT_RATE:
			load_opt = udp_opt = "--rate";
			cfg->udp_rate = (double)opt_count("--rate", optarg, 1, 100000000);
			break;
		case OPT_LOSS_TIMEOUT:
			load_opt = udp_opt = "--loss-timeout";
			cfg->loss_timeout = opt_seconds("--loss-timeout", optarg);
			break;
		case OPT_DRAIN:
			load_opt = udp_opt = "--drain";
			cfg->drain = opt_seconds0("--drain", optarg);
			break;
		case OPT_UDP_ECHO:
			cfg->echo_text = optarg;
			break;
		case OPT_JSON:
			cfg->json_path = optarg;
			break;
		case 'q':
			cfg->quiet = 1;
			break;
		case OPT_FAIL_ON_ERROR:
			load_opt = "--fail-on-error";
			cfg->fail_on_error = 1;
			break;
		case 'h':
			fputs(sb_usage, stdout);
			exit(0);
		case ':':
			opt_fail("option '%s' needs a value", argv[optind - 1]);
		default:
			if (optopt)
				opt_fail("unknown option '-%c'", optopt);
			opt_fail("unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind < argc)
		opt_fail("unexpected argument '%s'", argv[optind]);
	if (cfg->echo_text) {
		if (load_opt)
			opt_fail("--udp-echo serves and takes only -t, -d, -q and --json, not %s",
			         load_opt);
		opt_hostport("--udp-echo", cfg->echo_text, host, sizeof(host), &port, 0);
		opt_resolve("--udp-echo", host, port, &cfg->echo_addr, &cfg->echo_len);
		if (!threads_given)
			cfg->threads = 1;
		return;
	}
	if (!cfg->target_text)
		opt_fail("--target HOST:PORT is required");
	if (udp_opt && cfg->mode != MODE_UDP)
		opt_fail("%s is for --mode udp", udp_opt);

	opt_hostport("--target", cfg->target_text, cfg->target_host, sizeof(cfg->target_host),
	             &cfg->target_port, 1);
	if (cfg->direct)
		opt_resolve("--target", cfg->target_host, cfg->target_port, &cfg->target_addr,
		            &cfg->target_len);
	else {
		opt_hostport("--proxy", cfg->proxy_text, host, sizeof(host), &port, 1);
		opt_resolve("--proxy", host, port, &cfg->proxy_addr, &cfg->proxy_len);
	}
	if (auth) {
		const char *colon = strchr(auth, ':');
		size_t ul = colon ? (size_t)(colon - auth) : 0;
		if (!colon || ul < 1 || ul > 255 || strlen(colon + 1) < 1 ||
		    strlen(colon + 1) > 255)
			opt_fail("--auth: expected USER:PASS, each 1 to 255 bytes");
		memcpy(cfg->user, auth, ul);
		strcpy(cfg->pass, colon + 1);
		cfg->auth = 1;
	}
	if ((auth || cfg->pipeline) && cfg->direct)
		opt_fail("--direct has no SOCKS handshake: drop --auth and --pipeline");

	if (cfg->mode == MODE_UDP && (request || cfg->bytes_given))
		opt_fail("--mode udp sends datagrams of --size bytes: drop %s",
		         request ? "--request" : "--bytes");
	if (cfg->mode == MODE_UDP) {
		/* no request */
	} else if (request) {
		opt_unescape(cfg, request);
		cfg->request_given = 1;
	} else if (cfg->mode != MODE_UPLOAD) {
		const char *def = cfg->mode == MODE_BULK ? SB_REQUEST_BULK : SB_REQUEST_SESSION;
		cfg->request = (uint8_t *)strdup(def);
		cfg->request_len = strlen(def);
	}
	if (cfg->bytes_given && cfg->mode == MODE_SESSION)
		opt_fail("--bytes is for --mode bulk or upload");
	if (cfg->mode == MODE_UPLOAD && !cfg->bytes_given)
		cfg->bytes = SB_DEFAULT_UPLOAD;

	if (cfg->duration == 0 && cfg->sessions == 0)
		cfg->duration = SB_DEFAULT_DURATION;
	if (!threads_given) {
		long n = sysconf(_SC_NPROCESSORS_ONLN);
		cfg->threads = n > 0 ? (int)(n > SB_MAX_THREADS ? SB_MAX_THREADS : n) : 1;
	}
	if (cfg->threads > cfg->clients)
		cfg->threads = cfg->clients;
	if (cfg->mode != MODE_UDP && cfg->sessions && (uint64_t)cfg->clients > cfg->sessions)
		cfg->clients = (int)cfg->sessions; /* no idle clients: they would skew nothing */
	if (cfg->threads > cfg->clients)
		cfg->threads = cfg->clients;
	opt_build_handshake(cfg);
}

/* ---------------------------------------------------------------------------------------- */
/* one client: a state machine driven by edge-triggered epoll */

enum sb_err { ERR_CONNECT, ERR_HANDSHAKE, ERR_IO, ERR_TIMEOUT, ERR_KINDS };
enum sb_hs_err { HS_METHOD, HS_AUTH, HS_REPLY, HS_EOF, HS_RESET, HS_MALFORMED, HS_KINDS };
enum sb_phase { PHASE_CONNECT, PHASE_HANDSHAKE, PHASE_TRANSFER, PHASES };
static const char *const sb_err_names[] = {"connect", "handshake", "io", "timeout"};
static const char *const sb_hs_names[] = {"method_rejected", "auth_failed", "reply_nonzero", "eof",
                                          "reset",           "malformed"};
static const char *const sb_phase_names[] = {"connect", "handshake", "transfer"};

struct sb_stats {
	uint64_t started, ok, aborted;
	uint64_t bytes_read, bytes_written;
	uint64_t err[ERR_KINDS];
	uint64_t hs_err[HS_KINDS];
	uint64_t timeout_phase[PHASES];
	uint64_t reply_code[256];
	struct hist session, handshake;
	/* udp mode: sent = received + lost */
	uint64_t udp_sent, udp_received, udp_lost, udp_late, udp_bad, udp_send_errors;
	struct hist rtt;
};

enum client_state {
	CS_IDLE, /* between sessions, or retired */
	CS_CONNECTING,
	CS_SEND_GREETING,
	CS_READ_METHOD,
	CS_SEND_AUTH,
	CS_READ_AUTH,
	CS_SEND_CONNECT,
	CS_READ_REPLY,
	CS_SEND_REQUEST,
	CS_UPLOAD, /* sending the payload (and discarding anything that comes back) */
	CS_READ_RESPONSE,
	CS_UDP, /* udp mode: the association is up, datagrams flow */
};

/* The first 16 bytes of every datagram's payload (host byte order: it comes back to us). */
struct sb_stamp {
	uint64_t sent_ns;
	uint32_t seq;
	uint32_t slot;
};

/* One place in a client's window. */
struct sb_slot {
	uint64_t sent_ns;
	uint32_t seq;
	uint32_t used;
};

struct worker;

struct client {
	struct worker *w;
	int fd;
	enum client_state state;
	int queued;
	const uint8_t *out;
	size_t out_len, out_off;
	uint64_t t_start;
	uint64_t deadline;
	uint64_t rx; /* this session's bytes after the handshake */
	uint64_t upload_left;
	size_t in_len;
	uint8_t in[SB_HS_BUF_SIZE];
	/* udp mode */
	int ufd;     /* the datagram socket, connected to the relay (or the target), or -1 */
	int retired; /* its association failed or ended: it opens no other */
	int paced;   /* waiting for --rate: worker_pace() queues it */
	struct sockaddr_storage relay;
	socklen_t relay_len;
	struct sb_slot *slots; /* udp_window of them */
	uint32_t *free_slot;   /* a stack of the free slots' indexes */
	uint32_t nfree, seq;
	uint64_t next_send; /* --rate: the next datagram is due then */
};

struct worker {
	int id;
	pthread_t thread;
	int epfd;
	const struct sb_config *cfg;
	struct client *clients;
	int nclients;
	int active;            /* clients with an open socket */
	struct client **queue; /* clients to start or to resume, a ring of nclients */
	int q_head, q_len;
	uint8_t *iobuf;
	uint64_t now;
	uint64_t timeout_ns;
	uint64_t end_ns;
	int fatal; /* an errno that stopped this worker early */
	struct sb_stats st;
	/* udp mode */
	struct sb_slot *slots;
	uint32_t *free_slots;
	uint64_t inflight;  /* datagrams sent and neither echoed nor given up */
	uint64_t send_end;  /* when this worker stopped sending (0: still sending) */
	uint64_t pace_next; /* --rate: the earliest time a paced client waits for */
	uint64_t loss_ns, drain_ns, interval_ns;
	uint8_t *rxbuf;
	size_t rx_slot;
	struct mmsghdr tx[SB_UDP_BATCH], rx[SB_UDP_BATCH];
	struct iovec tx_iov[SB_UDP_BATCH][3], rx_iov[SB_UDP_BATCH];
	struct sb_stamp stamps[SB_UDP_BATCH];
};

static atomic_uint_fast64_t sb_tickets; /* sessions started, across threads, for -n */
static volatile sig_atomic_t sb_interrupted;
static uint64_t sb_start_ns, sb_deadline_ns;
static pthread_barrier_t sb_barrier;
static uint8_t sb_payload[SB_IOBUF_SIZE]; /* upload bytes: zeros, never written */

static uint64_t sb_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * NS_PER_S + (uint64_t)ts.tv_nsec;
}

static void worker_enqueue(struct worker *w, struct client *c)
{
	if (c->queued)
		return;
	c->queued = 1;
	w->queue[(w->q_head + w->q_len) % w->nclients] = c;
	w->q_len++;
}

static struct client *worker_dequeue(struct worker *w)
{
	struct client *c = w->queue[w->q_head];
	w->q_head = (w->q_head + 1) % w->nclients;
	w->q_len--;
	c->queued = 0;
	return c;
}

/* Gives up the datagrams in flight (lost) and closes the datagram socket. */
static void udp_close(struct client *c)
{
	struct worker *w = c->w;
	uint32_t window = w->cfg->udp_window, lost = window - c->nfree;
	w->st.udp_lost += lost;
	w->inflight -= lost;
	c->nfree = 0;
	for (uint32_t i = 0; i < window; i++) {
		c->slots[i].used = 0;
		c->free_slot[c->nfree++] = i;
	}
	close(c->ufd);
	c->ufd = -1;
}

/* Closes the session's socket; the client starts its next session on the next loop turn. In
 * udp mode the association was meant to last the run: the client retires. */
static void client_end(struct client *c)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	if (c->ufd >= 0)
		udp_close(c);
	c->state = CS_IDLE;
	c->w->active--;
	if (c->w->cfg->mode == MODE_UDP)
		c->retired = 1;
	else
		worker_enqueue(c->w, c);
}

static void client_ok(struct client *c)
{
	struct worker *w = c->w;
	w->st.ok++;
	hist_record(&w->st.session, sb_now() - c->t_start);
	client_end(c);
}

static void client_fail(struct client *c, enum sb_err kind, int detail)
{
	struct sb_stats *st = &c->w->st;
	st->err[kind]++;
	if (kind == ERR_HANDSHAKE)
		st->hs_err[detail]++;
	else if (kind == ERR_TIMEOUT)
		st->timeout_phase[detail]++;
	client_end(c);
}

static enum sb_phase client_phase(const struct client *c)
{
	switch (c->state) {
	case CS_CONNECTING:
		return PHASE_CONNECT;
	case CS_SEND_GREETING:
	case CS_READ_METHOD:
	case CS_SEND_AUTH:
	case CS_READ_AUTH:
	case CS_SEND_CONNECT:
	case CS_READ_REPLY:
		return PHASE_HANDSHAKE;
	default:
		return PHASE_TRANSFER;
	}
}

static void client_send(struct client *c, const uint8_t *buf, size_t len, enum client_state st)
{
	c->out = buf;
	c->out_len = len;
	c->out_off = 0;
	c->state = st;
}

/* Writes the rest of c->out: 1 all sent, 0 would block, -1 failed. */
static int client_flush(struct client *c, int count)
{
	while (c->out_off < c->out_len) {
		ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return errno == EAGAIN ? 0 : -1;
		}
		c->out_off += (size_t)n;
		if (count)
			c->w->st.bytes_written += (uint64_t)n;
	}
	return 1;
}

/* Reads until c->in holds `need` bytes: 1 enough, 0 would block, -HS_EOF or -HS_RESET. */
static int client_fill(struct client *c, size_t need)
{
	while (c->in_len < need) {
		ssize_t n = recv(c->fd, c->in + c->in_len, sizeof(c->in) - c->in_len, 0);
		if (n > 0) {
			c->in_len += (size_t)n;
		} else if (n == 0) {
			return -HS_EOF;
		} else if (errno != EINTR) {
			return errno == EAGAIN ? 0 : -HS_RESET;
		}
	}
	return 1;
}

static void client_consume(struct client *c, size_t n)
{
	memmove(c->in, c->in + n, c->in_len - n);
	c->in_len -= n;
}

static uint64_t client_rx_cap(const struct client *c, uint64_t want)
{
	const struct sb_config *cfg = c->w->cfg;
	if (cfg->mode == MODE_BULK && cfg->bytes && want > cfg->bytes - c->rx)
		return cfg->bytes - c->rx;
	return want;
}

/* ---------------------------------------------------------------------------------------- */
/* udp mode: one association per client, a window of stamped datagrams in flight */

/* The relay address of the UDP ASSOCIATE reply in c->in (complete): BND, or the proxy's own
 * address with BND.PORT when BND is 0.0.0.0 or ::. 0, or -1 when it is unusable. */
static int udp_relay_from_reply(struct client *c)
{
	const struct sb_config *cfg = c->w->cfg;
	const uint8_t *a = c->in + 4;
	int unspecified = 0;
	uint16_t port;

	memset(&c->relay, 0, sizeof(c->relay));
	if (c->in[3] == SOCKS_ATYP_IPV4) {
		struct sockaddr_in *sin = (struct sockaddr_in *)&c->relay;
		sin->sin_family = AF_INET;
		memcpy(&sin->sin_addr, a, 4);
		port = (uint16_t)(a[4] << 8 | a[5]);
		unspecified = sin->sin_addr.s_addr == htonl(INADDR_ANY);
		c->relay_len = sizeof(*sin);
	} else if (c->in[3] == SOCKS_ATYP_IPV6) {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&c->relay;
		sin6->sin6_family = AF_INET6;
		memcpy(&sin6->sin6_addr, a, 16);
		port = (uint16_t)(a[16] << 8 | a[17]);
		unspecified = IN6_IS_ADDR_UNSPECIFIED(&sin6->sin6_addr);
		c->relay_len = sizeof(*sin6);
	} else { /* a name: resolved here, once per association (rare) */
		struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_DGRAM}, *res;
		char name[256];
		memcpy(name, a + 1, a[0]);
		name[a[0]] = 0;
		port = (uint16_t)(a[1 + a[0]] << 8 | a[2 + a[0]]);
		if (getaddrinfo(name, NULL, &hints, &res) != 0)
			return -1;
		memcpy(&c->relay, res->ai_addr, res->ai_addrlen);
		c->relay_len = res->ai_addrlen;
		freeaddrinfo(res);
	}
	if (port == 0)
		return -1;
	if (unspecified) {
		memcpy(&c->relay, &cfg->proxy_addr, cfg->proxy_len);
		c->relay_len = cfg->proxy_len;
	}
	if (c->relay.ss_family == AF_INET)
		((struct sockaddr_in *)&c->relay)->sin_port = htons(port);
	else
		((struct sockaddr_in6 *)&c->relay)->sin6_port = htons(port);
	return 0;
}

/* Opens the datagram socket connected to `to` (so that only its datagrams come in), with an
 * empty window: the association is up. A failure is counted as `kind`. */
static void udp_open(struct client *c, const struct sockaddr_storage *to, socklen_t len,
                     enum sb_err kind)
{
	struct worker *w = c->w;
	const struct sb_config *cfg = w->cfg;
	int rcvbuf = (int)(cfg->udp_window * (cfg->udp_size + SB_UDP_HDR_MAX + 256) * 2);

	c->nfree = 0;
	for (uint32_t i = 0; i < cfg->udp_window; i++) {
		c->slots[i].used = 0;
		c->free_slot[c->nfree++] = i;
	}
	c->seq = 0;
	c->paced = 0;
	c->next_send = sb_now();
	if (cfg->udp_rate) { /* the clients' first datagrams spread over one interval, no burst */
		uint64_t k = (uint64_t)(c - w->clients) * (uint64_t)cfg->threads + (uint64_t)w->id;
		c->next_send +=
		    (uint64_t)((double)w->interval_ns * (double)k / (double)cfg->clients);
	}
	c->ufd = socket(to->ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (c->ufd < 0) {
		client_fail(c, kind, 0);
		return;
	}
	if (rcvbuf > 212992) /* the usual default; the kernel caps it at rmem_max */
		setsockopt(c->ufd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
	struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET,
	                         .data.u64 = (uint64_t)(uintptr_t)c | 1}; /* tagged: datagrams */
	if (connect(c->ufd, (const struct sockaddr *)to, len) < 0 ||
	    epoll_ctl(w->epfd, EPOLL_CTL_ADD, c->ufd, &ev) < 0) {
		client_fail(c, kind, 0);
		return;
	}
	c->state = CS_UDP;
	c->deadline = UINT64_MAX; /* datagrams have their own timeout; the scan gives them up */
	w->st.ok++;
	worker_enqueue(w, c);
}

/* The send phase is over (-d, a signal, or -n datagrams sent): clients still in their
 * handshake are closed and counted as aborted; the others drain. */
static void udp_stop_sending(struct worker *w)
{
	if (w->send_end)
		return;
	w->send_end = sb_now();
	for (int i = 0; i < w->nclients; i++) {
		struct client *c = &w->clients[i];
		if (c->fd >= 0 && c->state != CS_UDP) {
			close(c->fd);
			c->fd = -1;
			c->state = CS_IDLE;
			c->retired = 1;
			w->active--;
			w->st.aborted++;
		}
	}
}

/* One echo: checks the header (through the proxy), the size and the stamp, then frees its slot
 * and records the round trip. */
static void udp_echo_in(struct client *c, const uint8_t *p, size_t len, int flags, uint64_t now)
{
	struct worker *w = c->w;
	const struct sb_config *cfg = w->cfg;
	struct sb_stamp st;
	size_t hl = 0;

	if (flags & MSG_TRUNC)
		goto bad;
	if (!cfg->direct) {
		if (!cfg->target_is_name) { /* the source is the target: the header we send */
			hl = cfg->udp_hdr_len;
			if (len < hl || memcmp(p, cfg->udp_hdr, hl) != 0)
				goto bad;
		} else { /* a name was sent: the answer names an address; its port must match */
			if (len < 4 || p[0] || p[1] || p[2])
				goto bad;
			hl = p[3] == SOCKS_ATYP_IPV4 ? 10 : p[3] == SOCKS_ATYP_IPV6 ? 22 : 0;
			if (!hl || len < hl ||
			    (uint16_t)(p[hl - 2] << 8 | p[hl - 1]) != cfg->target_port)
				goto bad;
		}
	}
	if (len - hl != cfg->udp_size)
		goto bad;
	memcpy(&st, p + hl, sizeof(st));
	if (st.slot >= cfg->udp_window)
		goto bad;
	struct sb_slot *s = &c->slots[st.slot];
	if (!s->used || s->seq != st.seq || s->sent_ns != st.sent_ns) {
		w->st.udp_late++; /* given up already (lost), or a duplicate */
		return;
	}
	s->used = 0;
	c->free_slot[c->nfree++] = st.slot;
	w->inflight--;
	w->st.udp_received++;
	w->st.bytes_read += cfg->udp_size;
	hist_record(&w->st.rtt, now - st.sent_ns);
	return;
bad:
	w->st.udp_bad++;
}

/* Reads the echoes within the I/O budget: 0 none left, 2 budget spent. */
static int udp_recv(struct client *c, int *budget)
{
	struct worker *w = c->w;
	for (;;) {
		if ((*budget)-- <= 0)
			return 2;
		int n = recvmmsg(c->ufd, w->rx, SB_UDP_BATCH, MSG_DONTWAIT, NULL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return 0;
			/* an ICMP error for an earlier datagram (port unreachable...): reported
			 * once */
			w->st.udp_send_errors++;
			if (errno == ECONNREFUSED || errno == EHOSTUNREACH || errno == ENETUNREACH)
				continue;
			return 0;
		}
		uint64_t now = sb_now();
		for (int i = 0; i < n; i++)
			udp_echo_in(c, w->rxbuf + (size_t)i * w->rx_slot, w->rx[i].msg_len,
			            w->rx[i].msg_hdr.msg_flags, now);
		if (n < SB_UDP_BATCH)
			return 0;
	}
}

/* Fills the free slots of the window with new datagrams (sendmmsg in batches), as far as --rate
 * and -n allow. Stops on EAGAIN (EPOLLOUT resumes it) or an error (the next scan does). */
static void udp_send(struct client *c)
{
	struct worker *w = c->w;
	const struct sb_config *cfg = w->cfg;
	uint32_t size = cfg->udp_size;

	while (c->nfree > 0 && !w->send_end) {
		uint32_t n = c->nfree < SB_UDP_BATCH ? c->nfree : SB_UDP_BATCH;
		uint64_t now = sb_now();
		if (cfg->udp_rate) {
			if (c->next_send > now) {
				c->paced = 1;
				if (c->next_send < w->pace_next)
					w->pace_next = c->next_send;
				return;
			}
			uint64_t due = (now - c->next_send) / w->interval_ns + 1;
			if (due < n)
				n = (uint32_t)due;
			c->next_send += n * w->interval_ns;
			/* credit for at most a window: a stall (a full window, a slow turn) is
			 * made up for, but with no burst beyond that */
			uint64_t credit = (uint64_t)cfg->udp_window * w->interval_ns;
			if (now - c->next_send > credit && c->next_send < now)
				c->next_send = now - credit;
		}
		if (cfg->sessions) {
			uint64_t old = atomic_fetch_add(&sb_tickets, n);
			if (old >= cfg->sessions) {
				udp_stop_sending(w);
				return;
			}
			if (old + n > cfg->sessions)
				n = (uint32_t)(cfg->sessions - old);
		}
		for (uint32_t i = 0; i < n; i++) {
			uint32_t slot = c->free_slot[--c->nfree];
			struct iovec *iov = w->tx_iov[i];
			size_t k = 0;
			c->slots[slot] = (struct sb_slot){.sent_ns = now, .seq = c->seq, .used = 1};
			w->stamps[i] =
			    (struct sb_stamp){.sent_ns = now, .seq = c->seq, .slot = slot};
			c->seq++;
			if (!cfg->direct)
				iov[k++] = (struct iovec){(void *)(uintptr_t)cfg->udp_hdr,
				                          cfg->udp_hdr_len};
			iov[k++] = (struct iovec){&w->stamps[i], sizeof(struct sb_stamp)};
			if (size > sizeof(struct sb_stamp))
				iov[k++] =
				    (struct iovec){sb_payload, size - sizeof(struct sb_stamp)};
			w->tx[i].msg_hdr = (struct msghdr){.msg_iov = iov, .msg_iovlen = k};
		}
		int r = sendmmsg(c->ufd, w->tx, n, MSG_DONTWAIT);
		int err = r < 0 ? errno : 0;
		if (r < 0)
			r = 0;
		for (uint32_t i = n; i-- > (uint32_t)r;) { /* not sent: as if never taken */
			c->slots[w->stamps[i].slot].used = 0;
			c->free_slot[c->nfree++] = w->stamps[i].slot;
			c->seq--;
		}
		if ((uint32_t)r < n) {
			if (cfg->sessions)
				atomic_fetch_sub(&sb_tickets, n - (uint32_t)r);
			if (cfg->udp_rate)
				c->next_send -= (n - (uint32_t)r) * w->interval_ns;
		}
		w->st.udp_sent += (uint64_t)r;
		w->st.bytes_written += (uint64_t)r * size;
		w->inflight += (uint64_t)r;
		if (r == 0) {
			if (err == EINTR)
				continue;
			if (err != EAGAIN && err != EWOULDBLOCK)
				w->st.udp_send_errors++;
			return;
		}
	}
}

/* The association's datagrams: echoes first, then refill the window. 0, or 2 budget spent. */
static int udp_run(struct client *c, int *budget)
{
	int r = udp_recv(c, budget);
	udp_send(c);
	return r;
}

/* The TCP connection holding the association: the proxy closing or resetting it ends the
 * association (an io error; the client retires). Bytes on it are unexpected and dropped. */
static void udp_control(struct client *c)
{
	struct worker *w = c->w;
	for (int i = 0; i < SB_IO_BUDGET; i++) {
		ssize_t n = recv(c->fd, w->iobuf, SB_IOBUF_SIZE, 0);
		if (n > 0 || (n < 0 && errno == EINTR))
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		client_fail(c, ERR_IO, 0);
		return;
	}
}

/* The loss timeout: datagrams in flight for longer are lost and free their slots; clients with
 * free slots are queued (this also retries after a send error). */
static void udp_scan(struct worker *w)
{
	const struct sb_config *cfg = w->cfg;
	uint64_t now = sb_now(); /* not w->now: datagrams may have been sent since */
	for (int i = 0; i < w->nclients; i++) {
		struct client *c = &w->clients[i];
		if (c->ufd < 0)
			continue;
		if (c->nfree < cfg->udp_window) {
			for (uint32_t k = 0; k < cfg->udp_window; k++) {
				struct sb_slot *s = &c->slots[k];
				if (s->used && s->sent_ns + w->loss_ns <= now) {
					s->used = 0;
					c->free_slot[c->nfree++] = k;
					w->inflight--;
					w->st.udp_lost++;
				}
			}
		}
		if (c->nfree && !c->paced && !w->send_end)
			worker_enqueue(w, c);
	}
}

/* --rate: queues the clients whose next datagram is due. */
static void worker_pace(struct worker *w)
{
	if (!w->cfg->udp_rate || w->send_end || w->pace_next > w->now)
		return;
	w->pace_next = UINT64_MAX;
	for (int i = 0; i < w->nclients; i++) {
		struct client *c = &w->clients[i];
		if (c->paced) {
			c->paced = 0;
			if (c->ufd >= 0)
				worker_enqueue(w, c);
		}
	}
}

/* The handshake is done (or there is none): bytes after the reply already belong to the
 * response; send the request. */
static void client_begin_transfer(struct client *c)
{
	const struct sb_config *cfg = c->w->cfg;
	struct worker *w = c->w;
	hist_record(&w->st.handshake, sb_now() - c->t_start);
	if (cfg->mode == MODE_UDP) {
		c->in_len = 0;
		udp_open(c, &c->relay, c->relay_len, ERR_IO);
		return;
	}
	if (c->in_len) {
		uint64_t n = client_rx_cap(c, c->in_len);
		w->st.bytes_read += n;
		c->rx += n;
		c->in_len = 0;
	}
	c->upload_left = cfg->mode == MODE_UPLOAD ? cfg->bytes : 0;
	client_send(c, cfg->request, cfg->request_len, CS_SEND_REQUEST);
}

static void client_connected(struct client *c)
{
	const struct sb_config *cfg = c->w->cfg;
	if (cfg->direct)
		client_begin_transfer(c);
	else if (cfg->pipeline)
		client_send(c, cfg->pipelined, cfg->pipelined_len, CS_SEND_GREETING);
	else
		client_send(c, cfg->greeting, sizeof(cfg->greeting), CS_SEND_GREETING);
}

/* Parses the CONNECT reply in c->in: 1 success (consumed), 0 need more, -1 failed (counted).
 * A failure is judged as soon as its first two bytes are in: it may come short, then EOF. */
static int client_read_reply(struct client *c)
{
	size_t need;
	int r = client_fill(c, 5);
	if (c->in_len >= 1 && c->in[0] != SOCKS_VER) {
		client_fail(c, ERR_HANDSHAKE, HS_MALFORMED);
		return -1;
	}
	if (c->in_len >= 2 && c->in[1] != 0) {
		c->w->st.reply_code[c->in[1]]++;
		client_fail(c, ERR_HANDSHAKE, HS_REPLY);
		return -1;
	}
	if (r < 0)
		client_fail(c, ERR_HANDSHAKE, -r);
	if (r <= 0)
		return r < 0 ? -1 : 0;
	switch (c->in[3]) {
	case SOCKS_ATYP_IPV4:
		need = 4 + 4 + 2;
		break;
	case SOCKS_ATYP_IPV6:
		need = 4 + 16 + 2;
		break;
	case SOCKS_ATYP_NAME:
		need = 4 + 1 + (size_t)c->in[4] + 2;
		break;
	default:
		client_fail(c, ERR_HANDSHAKE, HS_MALFORMED);
		return -1;
	}
	r = client_fill(c, need);
	if (r < 0)
		client_fail(c, ERR_HANDSHAKE, -r);
	if (r <= 0)
		return r < 0 ? -1 : 0;
	if (c->w->cfg->mode == MODE_UDP && udp_relay_from_reply(c) < 0) {
		client_fail(c, ERR_HANDSHAKE, HS_MALFORMED);
		return -1;
	}
	client_consume(c, need);
	return 1;
}

/* Reads the response (to EOF, or to --bytes in bulk mode) within the I/O budget:
 * 1 session over (counted), 0 would block, 2 budget spent. */
static int client_read_response(struct client *c, int *budget)
{
	const struct sb_config *cfg = c->w->cfg;
	struct worker *w = c->w;
	for (;;) {
		if (cfg->mode == MODE_BULK && cfg->bytes && c->rx >= cfg->bytes) {
			client_ok(c);
			return 1;
		}
		if ((*budget)-- <= 0)
			return 2;
		ssize_t n = recv(c->fd, w->iobuf, client_rx_cap(c, SB_IOBUF_SIZE), 0);
		if (n > 0) {
			w->st.bytes_read += (uint64_t)n;
			c->rx += (uint64_t)n;
		} else if (n == 0) {
			if (cfg->mode == MODE_BULK && cfg->bytes && c->rx < cfg->bytes)
				client_fail(c, ERR_IO, 0); /* short read */
			else
				client_ok(c);
			return 1;
		} else if (errno == EAGAIN) {
			return 0;
		} else if (errno != EINTR) {
			client_fail(c, ERR_IO, 0);
			return 1;
		}
	}
}

/* Upload: discard what comes back (so an echoing peer cannot deadlock us), send the payload,
 * then shut down writing. 1 payload done or session over, 0 would block, 2 budget spent. */
static int client_upload(struct client *c, int *budget)
{
	struct worker *w = c->w;
	for (;;) {
		if ((*budget)-- <= 0)
			return 2;
		ssize_t n = recv(c->fd, w->iobuf, SB_IOBUF_SIZE, 0);
		if (n > 0) {
			w->st.bytes_read += (uint64_t)n;
			c->rx += (uint64_t)n;
			continue;
		}
		if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
			client_fail(c, ERR_IO, 0); /* the peer closed before the payload was sent */
			return 1;
		}
		if (errno == EAGAIN)
			break;
	}
	while (c->upload_left) {
		if ((*budget)-- <= 0)
			return 2;
		size_t len =
		    c->upload_left < SB_IOBUF_SIZE ? (size_t)c->upload_left : SB_IOBUF_SIZE;
		ssize_t n = send(c->fd, sb_payload, len, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN)
				return 0;
			client_fail(c, ERR_IO, 0);
			return 1;
		}
		w->st.bytes_written += (uint64_t)n;
		c->upload_left -= (uint64_t)n;
	}
	if (shutdown(c->fd, SHUT_WR) < 0) {
		client_fail(c, ERR_IO, 0);
		return 1;
	}
	c->state = CS_READ_RESPONSE;
	return 1;
}

/* Runs the state machine until it would block, the session ends, or the budget is spent (then
 * the client is queued to resume: edge-triggered epoll will not report the same data again). */
static void client_drive(struct client *c)
{
	const struct sb_config *cfg = c->w->cfg;
	int budget = SB_IO_BUDGET, r;

	for (;;) {
		switch (c->state) {
		case CS_IDLE:
		case CS_CONNECTING:
			return;
		case CS_SEND_GREETING:
			r = client_flush(c, 0);
			if (r <= 0)
				goto hs_sent;
			c->state = CS_READ_METHOD;
			break;
		case CS_READ_METHOD:
			r = client_fill(c, 2);
			if (r <= 0)
				goto hs_read;
			if (c->in[0] != SOCKS_VER) {
				client_fail(c, ERR_HANDSHAKE, HS_MALFORMED);
				return;
			}
			if (c->in[1] != cfg->method) {
				client_fail(c, ERR_HANDSHAKE,
				            c->in[1] == SOCKS_M_NONE ? HS_METHOD : HS_MALFORMED);
				return;
			}
			client_consume(c, 2);
			if (cfg->auth && cfg->pipeline)
				c->state = CS_READ_AUTH;
			else if (cfg->auth)
				client_send(c, cfg->auth_msg, cfg->auth_len, CS_SEND_AUTH);
			else if (cfg->pipeline)
				c->state = CS_READ_REPLY;
			else
				client_send(c, cfg->connect_msg, cfg->connect_len, CS_SEND_CONNECT);
			break;
		case CS_SEND_AUTH:
			r = client_flush(c, 0);
			if (r <= 0)
				goto hs_sent;
			c->state = CS_READ_AUTH;
			break;
		case CS_READ_AUTH:
			r = client_fill(c, 2);
			if (r <= 0)
				goto hs_read;
			if (c->in[0] != SOCKS_AUTH_VER) {
				client_fail(c, ERR_HANDSHAKE, HS_MALFORMED);
				return;
			}
			if (c->in[1] != 0) {
				client_fail(c, ERR_HANDSHAKE, HS_AUTH);
				return;
			}
			client_consume(c, 2);
			if (cfg->pipeline)
				c->state = CS_READ_REPLY;
			else
				client_send(c, cfg->connect_msg, cfg->connect_len, CS_SEND_CONNECT);
			break;
		case CS_SEND_CONNECT:
			r = client_flush(c, 0);
			if (r <= 0)
				goto hs_sent;
			c->state = CS_READ_REPLY;
			break;
		case CS_READ_REPLY:
			r = client_read_reply(c);
			if (r <= 0)
				return;
			client_begin_transfer(c);
			break;
		case CS_SEND_REQUEST:
			r = client_flush(c, 1);
			if (r == 0)
				return;
			if (r < 0) {
				client_fail(c, ERR_IO, 0);
				return;
			}
			c->state = cfg->mode == MODE_UPLOAD ? CS_UPLOAD : CS_READ_RESPONSE;
			break;
		case CS_UPLOAD:
			r = client_upload(c, &budget);
			if (r == 0)
				return;
			if (r == 2)
				goto yield;
			break;
		case CS_READ_RESPONSE:
			r = client_read_response(c, &budget);
			if (r == 0 || r == 1)
				return;
			goto yield;
		case CS_UDP:
			if (udp_run(c, &budget) == 2)
				goto yield;
			return;
		}
	}
hs_sent:
	if (r < 0)
		client_fail(c, ERR_HANDSHAKE, HS_RESET);
	return;
hs_read:
	if (r < 0)
		client_fail(c, ERR_HANDSHAKE, -r);
	return;
yield:
	worker_enqueue(c->w, c);
}

/* Starts the next session if the run is not over; a client with nothing left to do retires. */
static void client_start(struct client *c)
{
	struct worker *w = c->w;
	const struct sb_config *cfg = w->cfg;
	const struct sockaddr_storage *ss = cfg->direct ? &cfg->target_addr : &cfg->proxy_addr;
	socklen_t len = cfg->direct ? cfg->target_len : cfg->proxy_len;
	int one = 1;

	if (cfg->mode == MODE_UDP) {
		if (c->retired || w->send_end) /* -n counts datagrams, not associations */
			return;
	} else if (cfg->sessions && atomic_fetch_add(&sb_tickets, 1) >= cfg->sessions) {
		return;
	}
	w->st.started++;
	c->t_start = sb_now();
	c->deadline = c->t_start + w->timeout_ns;
	c->rx = 0;
	c->in_len = 0;
	if (cfg->mode == MODE_UDP && cfg->direct) {
		w->active++;
		udp_open(c, &cfg->target_addr, cfg->target_len, ERR_CONNECT);
		return;
	}
	c->state = CS_CONNECTING;
	c->fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (c->fd < 0) {
		/* out of descriptors or memory: a connect error, retried on the next turn */
		w->st.err[ERR_CONNECT]++;
		c->state = CS_IDLE;
		if (cfg->mode == MODE_UDP)
			c->retired = 1;
		else
			worker_enqueue(w, c);
		return;
	}
	w->active++;
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	int rc = connect(c->fd, (const struct sockaddr *)ss, len);
	if (rc < 0 && errno != EINPROGRESS) {
		client_fail(c, ERR_CONNECT, 0);
		return;
	}
	struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
	                         .data.ptr = c};
	if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0) {
		client_fail(c, ERR_CONNECT, 0);
		return;
	}
	if (rc == 0) {
		client_connected(c);
		client_drive(c);
	}
}

static void client_event(struct client *c, uint32_t events)
{
	struct worker *w = c->w;
	if (c->fd < 0)
		return;
	if (c->state == CS_UDP) {
		udp_control(c);
		return;
	}
	c->deadline = w->now + w->timeout_ns;
	if (c->state == CS_CONNECTING) {
		int err = 0;
		socklen_t elen = sizeof(err);
		if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &elen) < 0)
			err = errno;
		if (err || (events & (EPOLLERR | EPOLLHUP))) {
			client_fail(c, ERR_CONNECT, 0);
			return;
		}
		if (!(events & EPOLLOUT))
			return;
		client_connected(c);
	}
	client_drive(c);
}

/* ---------------------------------------------------------------------------------------- */
/* one worker thread: an epoll loop over its share of the clients */

/* udp mode: -d or a signal ends the sending, then the worker drains until nothing is in flight
 * or --drain has passed. */
static int worker_stopping(struct worker *w)
{
	int over = sb_interrupted || (sb_deadline_ns && w->now >= sb_deadline_ns);
	if (w->cfg->mode != MODE_UDP)
		return over;
	if (over)
		udp_stop_sending(w);
	return w->send_end && (w->inflight == 0 || w->now >= w->send_end + w->drain_ns);
}

/* An epoll event: the data pointer is the client, its low bit set for its datagram socket. */
static void worker_event(struct epoll_event *ev)
{
	uintptr_t v = (uintptr_t)ev->data.u64;
	struct client *c = (struct client *)(v & ~(uintptr_t)1);
	if (!(v & 1))
		client_event(c, ev->events);
	else if (c->ufd >= 0 && c->state == CS_UDP)
		client_drive(c);
}

/* A turn over many busy clients can take a while: look at the clock (a vDSO call, cheap beside
 * the syscalls of one client) before each of them so that -d stops on time. 1: the run is over. */
static int worker_check_clock(struct worker *w)
{
	w->now = sb_now();
	return worker_stopping(w);
}

static void worker_scan_timeouts(struct worker *w)
{
	for (int i = 0; i < w->nclients; i++) {
		struct client *c = &w->clients[i];
		if (c->fd >= 0 && c->deadline <= w->now)
			client_fail(c, ERR_TIMEOUT, client_phase(c));
	}
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct epoll_event events[SB_EPOLL_EVENTS];
	uint64_t scan_ns = w->timeout_ns / 10, next_scan;

	pthread_barrier_wait(&sb_barrier);
	if (w->cfg->mode == MODE_UDP && w->loss_ns / 10 < scan_ns)
		scan_ns = w->loss_ns / 10;
	if (scan_ns > SB_SCAN_MAX_NS)
		scan_ns = SB_SCAN_MAX_NS;
	if (scan_ns < NS_PER_MS)
		scan_ns = NS_PER_MS;
	w->now = sb_now();
	next_scan = w->now + scan_ns;
	for (int i = 0; i < w->nclients; i++)
		worker_enqueue(w, &w->clients[i]);

	for (;;) {
		w->now = sb_now();
		if (worker_stopping(w))
			break;
		worker_pace(w);
		/* start or resume the clients queued before this turn; those queued now wait */
		for (int n = w->q_len; n > 0; n--) {
			if (worker_check_clock(w))
				break;
			struct client *c = worker_dequeue(w);
			if (c->state == CS_IDLE)
				client_start(c);
			else
				client_drive(c);
		}
		if (w->q_len == 0 && w->active == 0)
			break; /* -n reached and every session finished */
		int wait_ms = 0;
		if (w->q_len == 0) {
			uint64_t until = next_scan;
			if (sb_deadline_ns && sb_deadline_ns < until && !w->send_end)
				until = sb_deadline_ns;
			if (w->send_end && w->send_end + w->drain_ns < until)
				until = w->send_end + w->drain_ns;
			if (w->cfg->udp_rate && !w->send_end && w->pace_next < until)
				until = w->pace_next;
			w->now = sb_now();
			wait_ms = until > w->now
			              ? (int)((until - w->now + NS_PER_MS - 1) / NS_PER_MS)
			              : 0;
		}
		int nev = epoll_wait(w->epfd, events, SB_EPOLL_EVENTS, wait_ms);
		if (nev < 0 && errno != EINTR) {
			w->fatal = errno;
			break;
		}
		w->now = sb_now();
		for (int i = 0; i < nev; i++) {
			if (worker_check_clock(w))
				break;
			worker_event(&events[i]);
		}
		if (w->now >= next_scan) {
			worker_scan_timeouts(w);
			if (w->cfg->mode == MODE_UDP)
				udp_scan(w);
			next_scan = w->now + scan_ns;
		}
	}
	w->end_ns = sb_now();
	if (w->cfg->mode == MODE_UDP) {
		if (w->send_end)
			w->end_ns = w->send_end; /* the rates are over the sending time */
		for (int i = 0; i < w->nclients; i++) {
			struct client *c = &w->clients[i];
			if (c->ufd >= 0)
				udp_close(c); /* still in flight after the drain: lost */
			if (c->fd >= 0) {
				close(c->fd);
				c->fd = -1;
				if (c->state != CS_UDP)
					w->st.aborted++;
			}
		}
		return NULL;
	}
	for (int i = 0; i < w->nclients; i++) {
		struct client *c = &w->clients[i];
		if (c->fd >= 0) {
			close(c->fd);
			c->fd = -1;
			w->st.aborted++;
		}
	}
	return NULL;
}

static int worker_init(struct worker *w, const struct sb_config *cfg, int id, int nclients)
{
	w->id = id;
	w->cfg = cfg;
	w->nclients = nclients;
	w->timeout_ns = (uint64_t)(cfg->timeout * (double)NS_PER_S);
	w->epfd = epoll_create1(EPOLL_CLOEXEC);
	w->clients = calloc((size_t)nclients, sizeof(*w->clients));
	w->queue = calloc((size_t)nclients, sizeof(*w->queue));
	w->iobuf = malloc(SB_IOBUF_SIZE);
	if (w->epfd < 0 || !w->clients || !w->queue || !w->iobuf)
		return -errno;
	for (int i = 0; i < nclients; i++) {
		w->clients[i].w = w;
		w->clients[i].fd = -1;
		w->clients[i].ufd = -1;
	}
	if (cfg->mode != MODE_UDP)
		return 0;
	size_t win = cfg->udp_window;
	w->loss_ns = (uint64_t)(cfg->loss_timeout * (double)NS_PER_S);
	w->drain_ns = (uint64_t)(cfg->drain * (double)NS_PER_S);
	if (cfg->udp_rate) /* each client sends 1/clients of the rate */
		w->interval_ns =
		    (uint64_t)((double)cfg->clients / cfg->udp_rate * (double)NS_PER_S);
	if (w->interval_ns == 0)
		w->interval_ns = 1;
	w->pace_next = UINT64_MAX;
	w->slots = calloc((size_t)nclients * win, sizeof(*w->slots));
	w->free_slots = calloc((size_t)nclients * win, sizeof(*w->free_slots));
	w->rx_slot = (SB_UDP_HDR_MAX + cfg->udp_size + 64 + 63) & ~(size_t)63;
	w->rxbuf = malloc(SB_UDP_BATCH * w->rx_slot);
	if (!w->slots || !w->free_slots || !w->rxbuf)
		return -ENOMEM;
	for (int i = 0; i < nclients; i++) {
		w->clients[i].slots = w->slots + (size_t)i * win;
		w->clients[i].free_slot = w->free_slots + (size_t)i * win;
	}
	for (int i = 0; i < SB_UDP_BATCH; i++) { /* recvmmsg only writes msg_len and msg_flags */
		w->rx_iov[i] = (struct iovec){w->rxbuf + (size_t)i * w->rx_slot, w->rx_slot};
		w->rx[i].msg_hdr = (struct msghdr){.msg_iov = &w->rx_iov[i], .msg_iovlen = 1};
	}
	return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* the report */

struct sb_result {
	struct sb_stats st;
	double elapsed;
	double cpu;
	uint64_t errors;
};

static void report_text(FILE *f, const struct sb_config *cfg, const struct sb_result *r)
{
	const struct sb_stats *st = &r->st;
	double el = r->elapsed > 0 ? r->elapsed : 1e-9;
	static const struct {
		const char *name;
		size_t off;
	} lat[] = {{"session", offsetof(struct sb_stats, session)},
	           {"handshake", offsetof(struct sb_stats, handshake)},
	           {"rtt", offsetof(struct sb_stats, rtt)}};
	int udp = cfg->mode == MODE_UDP;

	fprintf(f, "socksbench: %s mode, %s%s -> %s, %d threads, %d clients, %.2f s\n",
	        sb_mode_names[cfg->mode], cfg->direct ? "direct" : "via SOCKS5 ",
	        cfg->direct ? "" : cfg->proxy_text, cfg->target_text, cfg->threads, cfg->clients,
	        r->elapsed);
	if (udp) {
		fprintf(f, "  associations %llu up (%llu started, %llu aborted at the end)\n",
		        (unsigned long long)st->ok, (unsigned long long)st->started,
		        (unsigned long long)st->aborted);
		fprintf(f,
		        "  datagrams   sent %llu (%.1f/s), received %llu (%.1f/s), lost %llu "
		        "(%.3f%%), late %llu, bad %llu, send errors %llu\n",
		        (unsigned long long)st->udp_sent, (double)st->udp_sent / el,
		        (unsigned long long)st->udp_received, (double)st->udp_received / el,
		        (unsigned long long)st->udp_lost,
		        st->udp_sent ? 100.0 * (double)st->udp_lost / (double)st->udp_sent : 0.0,
		        (unsigned long long)st->udp_late, (unsigned long long)st->udp_bad,
		        (unsigned long long)st->udp_send_errors);
		fprintf(f, "  payload     %u B a datagram, window %u, ", cfg->udp_size,
		        cfg->udp_window);
		if (cfg->udp_rate)
			fprintf(f, "rate limit %.0f/s, ", cfg->udp_rate);
		fprintf(f, "drain %.2f s, loss timeout %.2f s\n", cfg->drain, cfg->loss_timeout);
	} else {
		fprintf(f,
		        "  sessions    %llu ok, %.1f/s (%llu started, %llu aborted at the end)\n",
		        (unsigned long long)st->ok, (double)st->ok / el,
		        (unsigned long long)st->started, (unsigned long long)st->aborted);
	}
	fprintf(f, "  bytes       read %llu, written %llu, %.2f MB/s\n",
	        (unsigned long long)st->bytes_read, (unsigned long long)st->bytes_written,
	        (double)(st->bytes_read + st->bytes_written) / el / 1e6);
	fprintf(f, "  errors      %llu (connect %llu, handshake %llu, io %llu, timeout %llu)\n",
	        (unsigned long long)r->errors, (unsigned long long)st->err[ERR_CONNECT],
	        (unsigned long long)st->err[ERR_HANDSHAKE], (unsigned long long)st->err[ERR_IO],
	        (unsigned long long)st->err[ERR_TIMEOUT]);
	if (st->err[ERR_HANDSHAKE]) {
		fprintf(f, "  handshake  ");
		for (int i = 0; i < HS_KINDS; i++)
			if (st->hs_err[i])
				fprintf(f, " %s %llu", sb_hs_names[i],
				        (unsigned long long)st->hs_err[i]);
		for (int i = 1; i < 256; i++)
			if (st->reply_code[i])
				fprintf(f, " (reply %d: %llu)", i,
				        (unsigned long long)st->reply_code[i]);
		fputc('\n', f);
	}
	if (st->err[ERR_TIMEOUT]) {
		fprintf(f, "  timeouts   ");
		for (int i = 0; i < PHASES; i++)
			fprintf(f, " %s %llu", sb_phase_names[i],
			        (unsigned long long)st->timeout_phase[i]);
		fputc('\n', f);
	}
	fprintf(f, "  latency ms  %10s %10s %10s %10s %10s %10s\n", "mean", "p50", "p90", "p99",
	        "p99.9", "max");
	for (size_t i = 0; i < sizeof(lat) / sizeof(lat[0]); i++) {
		const struct hist *h = (const struct hist *)((const char *)st + lat[i].off);
		if (udp ? lat[i].off == offsetof(struct sb_stats, session)
		        : lat[i].off == offsetof(struct sb_stats, rtt))
			continue;
		fprintf(f, "  %-10s  %10.3f %10.3f %10.3f %10.3f %10.3f %10.3f\n", lat[i].name,
		        h->count ? (double)h->sum_ns / (double)h->count / 1e6 : 0.0,
		        hist_quantile(h, 0.5) / 1e3, hist_quantile(h, 0.9) / 1e3,
		        hist_quantile(h, 0.99) / 1e3, hist_quantile(h, 0.999) / 1e3,
		        (double)h->max_ns / 1e6);
	}
	fprintf(f, "  cpu         %.2f s of socksbench (%.0f%% of one core)\n", r->cpu,
	        100.0 * r->cpu / el);
}

static void report_json_string(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;
		if (ch == '"' || ch == '\\')
			fprintf(f, "\\%c", ch);
		else if (ch < 0x20)
			fprintf(f, "\\u%04x", ch);
		else
			fputc(ch, f);
	}
	fputc('"', f);
}

static void report_json_hist(FILE *f, const char *name, const struct hist *h, const char *sep)
{
	fprintf(f,
	        "    \"%s\": {\"count\": %llu, \"min\": %.1f, \"mean\": %.1f, \"p50\": %.1f, "
	        "\"p90\": %.1f, \"p99\": %.1f, \"p999\": %.1f, \"max\": %.1f}%s\n",
	        name, (unsigned long long)h->count, (double)h->min_ns / 1e3,
	        h->count ? (double)h->sum_ns / (double)h->count / 1e3 : 0.0, hist_quantile(h, 0.5),
	        hist_quantile(h, 0.9), hist_quantile(h, 0.99), hist_quantile(h, 0.999),
	        (double)h->max_ns / 1e3, sep);
}

static void report_json(FILE *f, const struct sb_config *cfg, const struct sb_result *r)
{
	const struct sb_stats *st = &r->st;
	double el = r->elapsed > 0 ? r->elapsed : 1e-9;
	const char *sep = "";

	fprintf(f, "{\n  \"mode\": \"%s\",\n  \"direct\": %s,\n  \"pipeline\": %s,\n  \"proxy\": ",
	        sb_mode_names[cfg->mode], cfg->direct ? "true" : "false",
	        cfg->pipeline ? "true" : "false");
	if (cfg->direct)
		fputs("null", f);
	else
		report_json_string(f, cfg->proxy_text);
	fputs(",\n  \"target\": ", f);
	report_json_string(f, cfg->target_text);
	fprintf(f, ",\n  \"threads\": %d,\n  \"clients\": %d,\n", cfg->threads, cfg->clients);
	if (cfg->duration)
		fprintf(f, "  \"duration_s\": %.3f,\n", cfg->duration);
	else
		fputs("  \"duration_s\": null,\n", f);
	if (cfg->sessions)
		fprintf(f, "  \"sessions_limit\": %llu,\n", (unsigned long long)cfg->sessions);
	else
		fputs("  \"sessions_limit\": null,\n", f);
	fprintf(f,
	        "  \"elapsed_s\": %.6f,\n  \"sessions\": %llu,\n  \"sessions_started\": %llu,\n"
	        "  \"sessions_aborted\": %llu,\n  \"sessions_per_s\": %.2f,\n"
	        "  \"bytes_read\": %llu,\n  \"bytes_written\": %llu,\n  \"mb_per_s\": %.3f,\n"
	        "  \"cpu_s\": %.3f,\n",
	        r->elapsed, (unsigned long long)st->ok, (unsigned long long)st->started,
	        (unsigned long long)st->aborted, (double)st->ok / el,
	        (unsigned long long)st->bytes_read, (unsigned long long)st->bytes_written,
	        (double)(st->bytes_read + st->bytes_written) / el / 1e6, r->cpu);
	if (cfg->mode == MODE_UDP) {
		fprintf(f,
		        "  \"udp\": {\"size\": %u, \"window\": %u, \"rate_limit\": ", cfg->udp_size,
		        cfg->udp_window);
		if (cfg->udp_rate)
			fprintf(f, "%.0f", cfg->udp_rate);
		else
			fputs("null", f);
		fprintf(
		    f,
		    ", \"loss_timeout_s\": %.3f, \"drain_s\": %.3f,\n    \"sent\": %llu, "
		    "\"received\": %llu, \"lost\": %llu, \"late\": %llu, \"bad\": %llu, "
		    "\"send_errors\": %llu,\n    \"datagrams_per_s\": %.2f, \"sent_per_s\": %.2f, "
		    "\"loss_pct\": %.4f},\n",
		    cfg->loss_timeout, cfg->drain, (unsigned long long)st->udp_sent,
		    (unsigned long long)st->udp_received, (unsigned long long)st->udp_lost,
		    (unsigned long long)st->udp_late, (unsigned long long)st->udp_bad,
		    (unsigned long long)st->udp_send_errors, (double)st->udp_received / el,
		    (double)st->udp_sent / el,
		    st->udp_sent ? 100.0 * (double)st->udp_lost / (double)st->udp_sent : 0.0);
	}
	fprintf(f, "  \"errors\": {\n    \"total\": %llu,\n", (unsigned long long)r->errors);
	for (int i = 0; i < ERR_KINDS; i++)
		fprintf(f, "    \"%s\": %llu,\n", sb_err_names[i], (unsigned long long)st->err[i]);
	fputs("    \"handshake_detail\": {", f);
	for (int i = 0; i < HS_KINDS; i++)
		fprintf(f, "%s\"%s\": %llu", i ? ", " : "", sb_hs_names[i],
		        (unsigned long long)st->hs_err[i]);
	fputs("},\n    \"timeout_detail\": {", f);
	for (int i = 0; i < PHASES; i++)
		fprintf(f, "%s\"%s\": %llu", i ? ", " : "", sb_phase_names[i],
		        (unsigned long long)st->timeout_phase[i]);
	fputs("},\n    \"reply_codes\": {", f);
	for (int i = 1; i < 256; i++) {
		if (st->reply_code[i]) {
			fprintf(f, "%s\"%d\": %llu", sep, i, (unsigned long long)st->reply_code[i]);
			sep = ", ";
		}
	}
	fputs("}\n  },\n  \"latency_us\": {\n", f);
	report_json_hist(f, "session", &st->session, ",");
	report_json_hist(f, "handshake", &st->handshake, cfg->mode == MODE_UDP ? "," : "");
	if (cfg->mode == MODE_UDP)
		report_json_hist(f, "rtt", &st->rtt, "");
	fputs("  }\n}\n", f);
}

/* ---------------------------------------------------------------------------------------- */

static void sb_on_signal(int sig)
{
	(void)sig;
	sb_interrupted = 1;
}

static void sb_raise_nofile(int clients)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return;
	if (rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
		getrlimit(RLIMIT_NOFILE, &rl);
	}
	if (rl.rlim_cur != RLIM_INFINITY && (rlim_t)clients + 64 > rl.rlim_cur)
		fprintf(stderr,
		        "socksbench: warning: %d clients but only %llu descriptors (RLIMIT_NOFILE);"
		        " the rest will fail as connect errors\n",
		        clients, (unsigned long long)rl.rlim_cur);
}

static void worker_free(struct worker *w)
{
	if (w->epfd > 0)
		close(w->epfd);
	free(w->clients);
	free(w->queue);
	free(w->iobuf);
	free(w->slots);
	free(w->free_slots);
	free(w->rxbuf);
}

/* Adds one thread's counters and histograms into the total. */
static void sb_stats_merge(struct sb_stats *into, const struct sb_stats *s)
{
	into->started += s->started;
	into->ok += s->ok;
	into->aborted += s->aborted;
	into->bytes_read += s->bytes_read;
	into->bytes_written += s->bytes_written;
	for (int k = 0; k < ERR_KINDS; k++)
		into->err[k] += s->err[k];
	for (int k = 0; k < HS_KINDS; k++)
		into->hs_err[k] += s->hs_err[k];
	for (int k = 0; k < PHASES; k++)
		into->timeout_phase[k] += s->timeout_phase[k];
	for (int k = 0; k < 256; k++)
		into->reply_code[k] += s->reply_code[k];
	hist_merge(&into->session, &s->session);
	hist_merge(&into->handshake, &s->handshake);
	into->udp_sent += s->udp_sent;
	into->udp_received += s->udp_received;
	into->udp_lost += s->udp_lost;
	into->udp_late += s->udp_late;
	into->udp_bad += s->udp_bad;
	into->udp_send_errors += s->udp_send_errors;
	hist_merge(&into->rtt, &s->rtt);
}

/* Starts the threads together, waits for them and merges their results: 0 ran, 1 ran but a
 * thread failed, -1 could not start (all logged). */
static int sb_run(const struct sb_config *cfg, struct worker *workers, struct sb_result *res)
{
	struct rusage ru;
	int rc, fatal = 0;

	for (int i = 0; i < cfg->threads; i++) {
		int share = cfg->clients / cfg->threads + (i < cfg->clients % cfg->threads);
		rc = worker_init(&workers[i], cfg, i, share);
		if (rc < 0) {
			fprintf(stderr, "socksbench: cannot set up thread %d: %s\n", i,
			        strerror(-rc));
			return -1;
		}
	}
	pthread_barrier_init(&sb_barrier, NULL, (unsigned)cfg->threads + 1);
	for (int i = 0; i < cfg->threads; i++) {
		rc = pthread_create(&workers[i].thread, NULL, worker_main, &workers[i]);
		if (rc != 0) {
			/* the threads already started wait at the barrier: the caller exits */
			fprintf(stderr, "socksbench: cannot start thread %d: %s\n", i,
			        strerror(rc));
			return -1;
		}
	}
	sb_start_ns = sb_now();
	if (cfg->duration)
		sb_deadline_ns = sb_start_ns + (uint64_t)(cfg->duration * (double)NS_PER_S);
	pthread_barrier_wait(&sb_barrier);

	uint64_t end = sb_start_ns;
	for (int i = 0; i < cfg->threads; i++) {
		struct worker *w = &workers[i];
		pthread_join(w->thread, NULL);
		if (w->fatal) {
			fprintf(stderr, "socksbench: thread %d stopped: %s\n", i,
			        strerror(w->fatal));
			fatal = 1;
		}
		if (w->end_ns > end)
			end = w->end_ns;
		sb_stats_merge(&res->st, &w->st);
	}
	pthread_barrier_destroy(&sb_barrier);
	res->elapsed = (double)(end - sb_start_ns) / 1e9;
	for (int k = 0; k < ERR_KINDS; k++)
		res->errors += res->st.err[k];
	if (getrusage(RUSAGE_SELF, &ru) == 0)
		res->cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
		           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
	return fatal ? 1 : 0;
}

/* Text to stdout (stderr when the JSON goes to stdout), JSON to --json: 0 or -1 (logged). */
static int report_write(const struct sb_config *cfg, const struct sb_result *res)
{
	int json_stdout = cfg->json_path && strcmp(cfg->json_path, "-") == 0;
	if (!cfg->quiet)
		report_text(json_stdout ? stderr : stdout, cfg, res);
	if (json_stdout) {
		report_json(stdout, cfg, res);
		if (fflush(stdout) != 0)
			return -1;
	} else if (cfg->json_path) {
		FILE *f = fopen(cfg->json_path, "w");
		if (f)
			report_json(f, cfg, res);
		if (!f || fclose(f) != 0) {
			fprintf(stderr, "socksbench: cannot write %s: %s\n", cfg->json_path,
			        strerror(errno));
			return -1;
		}
	}
	return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* --udp-echo: every datagram goes back to its sender, until a signal or -d */

struct echo_thread {
	pthread_t thread;
	int fd;
	int fatal;
	uint64_t echoed, bytes, dropped;
};

static void *echo_main(void *arg)
{
	struct echo_thread *t = arg;
	struct mmsghdr msgs[SB_ECHO_BATCH];
	struct iovec iov[SB_ECHO_BATCH];
	struct sockaddr_storage from[SB_ECHO_BATCH];
	uint8_t *buf = malloc((size_t)SB_ECHO_BATCH * SB_ECHO_BUF);

	if (!buf) {
		t->fatal = ENOMEM;
		return NULL;
	}
	/* the socket's SO_RCVTIMEO (100 ms) bounds each wait: the flags are looked at that often */
	while (!sb_interrupted && !(sb_deadline_ns && sb_now() >= sb_deadline_ns)) {
		for (int i = 0; i < SB_ECHO_BATCH; i++) {
			iov[i] = (struct iovec){buf + (size_t)i * SB_ECHO_BUF, SB_ECHO_BUF};
			msgs[i].msg_hdr = (struct msghdr){.msg_name = &from[i],
			                                  .msg_namelen = sizeof(from[i]),
			                                  .msg_iov = &iov[i],
			                                  .msg_iovlen = 1};
		}
		int n = recvmmsg(t->fd, msgs, SB_ECHO_BATCH, MSG_WAITFORONE, NULL);
		if (n < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ||
			    errno == ECONNREFUSED || errno == EHOSTUNREACH || errno == ENETUNREACH)
				continue;
			t->fatal = errno;
			break;
		}
		for (int i = 0; i < n; i++)
			iov[i].iov_len = msgs[i].msg_len;
		for (int off = 0; off < n;) {
			int r = sendmmsg(t->fd, msgs + off, (unsigned)(n - off), MSG_DONTWAIT);
			if (r < 0) {
				if (errno != EINTR) { /* a full send buffer, say: UDP drops it */
					t->dropped++;
					off++;
				}
				continue;
			}
			for (int i = off; i < off + r; i++)
				t->bytes += msgs[i].msg_len;
			t->echoed += (uint64_t)r;
			off += r;
		}
	}
	free(buf);
	return NULL;
}

/* Binds -t sockets to the address (SO_REUSEPORT when more than one; PORT 0 picks one, shared by
 * all), says where on stdout, echoes until a signal or -d, then reports. 0, or 1 on failure. */
static int echo_run(const struct sb_config *cfg)
{
	struct sockaddr_storage addr = cfg->echo_addr;
	socklen_t len = cfg->echo_len;
	int n = cfg->threads, status = 0, started = 0;
	struct echo_thread *t = calloc((size_t)n, sizeof(*t));
	char host[INET6_ADDRSTRLEN];
	uint16_t port;

	if (!t) {
		fprintf(stderr, "socksbench: out of memory\n");
		return 1;
	}
	for (int i = 0; i < n; i++)
		t[i].fd = -1;
	for (int i = 0; i < n; i++) {
		int one = 1, bufsize = 4 << 20; /* capped by rmem_max/wmem_max */
		struct timeval tv = {.tv_sec = 0, .tv_usec = 100000};
		t[i].fd = socket(addr.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
		if (t[i].fd < 0 ||
		    (n > 1 &&
		     setsockopt(t[i].fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0) ||
		    setsockopt(t[i].fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0 ||
		    bind(t[i].fd, (struct sockaddr *)&addr, len) < 0) {
			fprintf(stderr, "socksbench: --udp-echo %s: %s\n", cfg->echo_text,
			        strerror(errno));
			status = 1;
			goto out;
		}
		setsockopt(t[i].fd, SOL_SOCKET, SO_RCVBUF, &bufsize, sizeof(bufsize));
		setsockopt(t[i].fd, SOL_SOCKET, SO_SNDBUF, &bufsize, sizeof(bufsize));
		if (i == 0) /* the port picked for PORT 0: the other sockets share it */
			getsockname(t[i].fd, (struct sockaddr *)&addr, &len);
	}
	if (addr.ss_family == AF_INET6) {
		const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&addr;
		inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
		port = ntohs(a->sin6_port);
		printf("socksbench: udp echo on [%s]:%u\n", host, port);
	} else {
		const struct sockaddr_in *a = (const struct sockaddr_in *)&addr;
		inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
		port = ntohs(a->sin_port);
		printf("socksbench: udp echo on %s:%u\n", host, port);
	}
	fflush(stdout);
	sb_start_ns = sb_now();
	if (cfg->duration)
		sb_deadline_ns = sb_start_ns + (uint64_t)(cfg->duration * (double)NS_PER_S);
	for (; started < n; started++) {
		int rc = pthread_create(&t[started].thread, NULL, echo_main, &t[started]);
		if (rc != 0) {
			fprintf(stderr, "socksbench: cannot start thread %d: %s\n", started,
			        strerror(rc));
			sb_interrupted = 1;
			status = 1;
			break;
		}
	}
	uint64_t echoed = 0, bytes = 0, dropped = 0;
	for (int i = 0; i < started; i++) {
		pthread_join(t[i].thread, NULL);
		if (t[i].fatal) {
			fprintf(stderr, "socksbench: udp echo thread %d stopped: %s\n", i,
			        strerror(t[i].fatal));
			status = 1;
		}
		echoed += t[i].echoed;
		bytes += t[i].bytes;
		dropped += t[i].dropped;
	}
	double el = (double)(sb_now() - sb_start_ns) / 1e9;
	int json_stdout = cfg->json_path && strcmp(cfg->json_path, "-") == 0;
	if (!cfg->quiet)
		fprintf(json_stdout ? stderr : stdout,
		        "socksbench: udp echo: %llu datagrams (%llu bytes) echoed, %llu dropped, "
		        "%.2f s\n",
		        (unsigned long long)echoed, (unsigned long long)bytes,
		        (unsigned long long)dropped, el);
	if (cfg->json_path) {
		FILE *f = json_stdout ? stdout : fopen(cfg->json_path, "w");
		if (f)
			fprintf(f,
			        "{\"udp_echo\": \"%s:%u\", \"elapsed_s\": %.3f, \"echoed\": %llu, "
			        "\"bytes\": %llu, \"dropped\": %llu}\n",
			        host, port, el, (unsigned long long)echoed,
			        (unsigned long long)bytes, (unsigned long long)dropped);
		if (!f || (json_stdout ? fflush(f) : fclose(f)) != 0) {
			fprintf(stderr, "socksbench: cannot write %s: %s\n", cfg->json_path,
			        strerror(errno));
			status = 1;
		}
	}
out:
	for (int i = 0; i < n; i++)
		if (t[i].fd >= 0)
			close(t[i].fd);
	free(t);
	return status;
}

int main(int argc, char **argv)
{
	static struct sb_result res; /* two histograms: keep them off the stack */
	struct sb_config cfg;
	struct sigaction sa = {.sa_handler = sb_on_signal};
	int status = 1;

	opt_parse(&cfg, argc, argv);
	signal(SIGPIPE, SIG_IGN);
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	if (cfg.echo_text)
		return echo_run(&cfg);
	sb_raise_nofile(cfg.mode == MODE_UDP && !cfg.direct ? 2 * cfg.clients : cfg.clients);

	struct worker *workers = calloc((size_t)cfg.threads, sizeof(*workers));
	if (!workers) {
		fprintf(stderr, "socksbench: out of memory\n");
	} else {
		int ran = sb_run(&cfg, workers, &res);
		if (ran >= 0 && report_write(&cfg, &res) == 0)
			status =
			    ran > 0 || (cfg.fail_on_error &&
			                (res.errors > 0 || res.st.udp_lost + res.st.udp_bad > 0))
			        ? 1
			        : 0;
	}
	for (int i = 0; workers && i < cfg.threads; i++)
		worker_free(&workers[i]);
	free(workers);
	free(cfg.request);
	return status;
}
