/* worker.h - one worker thread: its io_uring, listeners, connection table, pipe pool and
 * resolver. Nothing here is shared between workers except the process-wide live count. */
#ifndef RINGSOCKS_WORKER_H
#define RINGSOCKS_WORKER_H

#include <liburing.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#include "config.h"
#include "conn.h"
#include "relay.h"
#include "upstream.h"

struct dns;
struct udp_worker;

struct worker_stats {
	uint64_t accepted;
	uint64_t refused_limit; /* closed at once: --max-conns or no free slot */
	uint64_t accept_errors;
	uint64_t sessions_ok;
	uint64_t sessions_failed;
	uint64_t bind_refused; /* BIND: connections from an address other than DST.ADDR */
	uint64_t bytes_up;     /* relayed to destinations by the sessions that have ended */
	uint64_t bytes_down;   /* relayed back to their clients */
};

struct worker {
	int id;
	int cpu; /* -1: not pinned */
	pthread_t thread;
	const struct config *cfg;
	struct io_uring ring;
	unsigned ring_flags;
	int listen_fd[CONFIG_MAX_LISTEN];
	int nlisten;
	uint32_t accept_armed; /* bit per listener */
	uint64_t accept_retry_ms;
	uint64_t accept_warn_ms;
	int wake_fd;
	uint64_t wake_buf;
	atomic_int stop;
	atomic_int report; /* SIGUSR1: log the counters (worker_report) */
	struct conn_table conns;
	struct pipe_pool pipes;
	struct relay_bufs bufs;
	struct dns *dns;
	struct udp_worker *udp;  /* UDP ASSOCIATE and tunnel -U (udp.c) */
	uint32_t bind_port_next; /* --bind-ports: where the next BIND starts looking */
	/* relay directions that used up their budget and have more to move */
	uint64_t *runq;
	uint32_t runq_head, runq_len, runq_cap;
	uint64_t now_ms;
	/* upstream proxies (forwarder and tunnel modes) */
	struct upstream_hs *uphs; /* one per slot, touched only while a handshake runs */
	struct upstream_health up_health[CONFIG_MAX_UPSTREAMS];
	unsigned up_rr;
	struct worker_stats stats;
	int start_err; /* set when the thread failed to start */
	int run_err;   /* its loop ended on an error: the process stops, exit status 1 */
	pthread_barrier_t *ready;
};

/* Process-wide count of live client connections (for --max-conns). */
extern atomic_long worker_live;
/* Count one more live connection: 0; -1 when --max-conns are live; -2 when the descriptor
 * pairs are all taken (worker_take_fd_pair). Nothing is counted on failure. */
int worker_take_live(const struct worker *w);
/* One live connection fewer (it closed, or was not set up after all). */
void worker_put_live(void);

/* Descriptors, process-wide, in pairs: RLIMIT_NOFILE leaves room for worker_fd_pairs_max (set
 * once by worker_fd_limit before the workers start). A live connection holds a pair (the
 * client's socket and the destination's); a UDP association holds up to four descriptors (its
 * TCP connection or two, and up to three UDP sockets), so it takes a second pair. */
extern long worker_fd_pairs_max;
/* Size worker_fd_pairs_max from RLIMIT_NOFILE; returns the limit it was sized from. */
unsigned long worker_fd_limit(void);
/* Take a pair: 0, or -1 (nothing taken) when all are taken. */
int worker_take_fd_pair(void);
void worker_put_fd_pair(void);

/* Set up w (listeners already open in w->listen_fd) and run its loop until w->stop. */
void *worker_main(void *arg);

/* Ask a worker to stop (from another thread). */
void worker_wake(struct worker *w);
/* Ask a worker to log its counters (from another thread). */
void worker_report(struct worker *w);

/* An SQE from the worker's ring, submitting first when the SQ is full. Never NULL. */
struct io_uring_sqe *worker_sqe(struct worker *w);

/* Track an operation of c in flight and return its user_data. */
uint64_t worker_op(struct worker *w, struct conn *c, enum conn_op op);

/* An IPv4-mapped IPv6 address (::ffff:a.b.c.d) becomes the IPv4 address it stands for, in
 * place (a sockaddr_in fits in a sockaddr_in6): sockets here are IPv6-only, so a mapped
 * address can be neither bound nor sent to from an IPv6 socket. */
static inline void worker_unmap_v4(struct sockaddr_in6 *a)
{
	if (a->sin6_family == AF_INET6 && IN6_IS_ADDR_V4MAPPED(&a->sin6_addr)) {
		struct sockaddr_in v4 = {.sin_family = AF_INET, .sin_port = a->sin6_port};
		memcpy(&v4.sin_addr, &a->sin6_addr.s6_addr[12], 4);
		memset(a, 0, sizeof(*a));
		memcpy(a, &v4, sizeof(v4));
	}
}

/* TCP keepalive per --keepalive on a listening socket (its accepted ones inherit it). */
int worker_set_keepalive(const struct config *cfg, int fd);

/* Close both sockets of c, cancel what is in flight, log the session; the slot is
 * freed once nothing of it is in flight. */
void worker_conn_close(struct worker *w, struct conn *c, const char *why);
/* The same after an error: both peers get a reset (SO_LINGER 0), not a FIN. */
void worker_conn_abort(struct worker *w, struct conn *c, const char *why);

/* Called by the resolver with the addresses for a pending request (port already set),
 * or status < 0 when the name did not resolve. */
void worker_resolved(struct worker *w, uint64_t ud, int status, const struct sockaddr_in6 *addrs,
                     int n);

uint64_t worker_now_ms(void);

/* Used by upstream.c. */
/* Connect to c->addrs[c->addr_i..naddrs) in turn. */
void worker_connect_next(struct worker *w, struct conn *c);

/* --congestion: set the TCP congestion control of fd, whose peer is at peer (a listener:
 * its own address, its accepted sockets inherit it; NULL: unknown): the configured one, or
 * with none configured, cfg->loopback_cc when peer is on a loopback address. 0, or -errno. */
int worker_set_congestion(const struct config *cfg, int fd, const struct sockaddr *peer);
/* peer is 127.0.0.0/8, ::1 or ::ffff:127.0.0.0/104 */
int addr_is_loopback(const struct sockaddr *peer);
/* 0.0.0.0 or :: (a wildcard listen address). */
int addr_is_any(const struct sockaddr *a);
/* Cancel the operations of c in mask (CONN_OP_BIT); their CQEs still arrive. */
/* Close *fd behind the SQEs already prepared (IORING_OP_CLOSE) and set it to -1; nothing
 * when it is -1 already. */
void worker_close_fd(struct worker *w, int *fd);
void worker_cancel_ops(struct worker *w, struct conn *c, uint32_t mask);
/* Send a reply of len bytes to the client (queued behind one being sent) and stay in the
 * current state (BIND's first reply, UDP ASSOCIATE's reply). */
void worker_send_reply(struct worker *w, struct conn *c, const uint8_t *buf, size_t len);
/* Send buf (len may be 0) to the client and early data to the target, then relay. */
void worker_reply_and_relay(struct worker *w, struct conn *c, const uint8_t *buf, size_t len);
/* The connect phase starts: --connect-timeout's deadline, with the client watched for a
 * reset once the phase has lasted a second (worker.c, connect_watch). */
void worker_connect_deadline(struct worker *w, struct conn *c);
/* A multishot poll of fd for POLLERR | POLLHUP (a reset), as operation op. */
void worker_watch_reset(struct worker *w, struct conn *c, int fd, enum conn_op op);
/* The destination cannot be reached: reply rep (a tunnel client is reset) and close. why, a
 * string literal, is logged (and kept for -v's session line). */
void worker_conn_give_up(struct worker *w, struct conn *c, uint8_t rep, const char *why);
/* An upstream's failure reply: passed to the client as it came (a tunnel client is reset). */
void worker_conn_pass_failure(struct worker *w, struct conn *c, uint8_t rep, const uint8_t *reply,
                              size_t len);

#endif
