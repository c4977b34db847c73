/* worker.c - one io_uring event loop: multishot accept, the SOCKS5 handshake driven by
 * recv/send SQEs, resolution and connect, deadlines, then hand-off to the relay.
 * Splicing itself lives in relay.c, name resolution in dns.c. */
#include "worker.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "bind.h"
#include "dns.h"
#include "log.h"
#include "udp.h"

#ifndef IORING_SETUP_COOP_TASKRUN
#define IORING_SETUP_COOP_TASKRUN (1U << 8)
#endif
#ifndef IORING_SETUP_SINGLE_ISSUER
#define IORING_SETUP_SINGLE_ISSUER (1U << 12)
#endif
#ifndef IORING_SETUP_DEFER_TASKRUN
#define IORING_SETUP_DEFER_TASKRUN (1U << 13)
#endif

#define RING_ENTRIES    4096
#define RING_CQ_ENTRIES 65536
/* io-wq threads a worker's ring may start (bounded, unbounded work); see ring_setup */
#define RING_IOWQ_MAX    1
#define LINGER_MS        2000 /* how long a refused client may take to close */
#define HALF_CLOSED_MS   1000 /* a relay half-closed this long watches its finished side */
#define CONNECT_STEP_MS  2000 /* at most this long for one of several addresses */
#define CONNECT_WATCH_MS 1000 /* a connect phase this long watches its client (connect_watch) */
#define ACCEPT_RETRY_MS  100  /* pause after EMFILE and friends */
#define MAX_WAIT_MS      1000

#define FD_RESERVE 32 /* descriptors not for connections: ring, listeners, resolver... */

atomic_long worker_live;
static atomic_long worker_fd_pairs;
long worker_fd_pairs_max = LONG_MAX;

unsigned long worker_fd_limit(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return 0;
	worker_fd_pairs_max =
	    rl.rlim_cur > 2 * FD_RESERVE ? (long)((rl.rlim_cur - FD_RESERVE) / 2) : FD_RESERVE / 2;
	return (unsigned long)rl.rlim_cur;
}

int worker_take_fd_pair(void)
{
	if (atomic_fetch_add(&worker_fd_pairs, 1) >= worker_fd_pairs_max) {
		atomic_fetch_sub(&worker_fd_pairs, 1);
		return -1;
	}
	return 0;
}

void worker_put_fd_pair(void)
{
	atomic_fetch_sub(&worker_fd_pairs, 1);
}

uint64_t worker_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

struct io_uring_sqe *worker_sqe(struct worker *w)
{
	struct io_uring_sqe *sqe;
	int ret;

	while (!(sqe = io_uring_get_sqe(&w->ring))) {
		ret = io_uring_submit(&w->ring);
		if (ret < 0 && ret != -EINTR) {
			/* -EAGAIN: the kernel had no memory for a request. Only time gives it back:
			 * wait a millisecond rather than spin on a full ring, and say why */
			struct timespec ms = {.tv_nsec = 1000000};
			log_err_limited("worker %d: io_uring_submit: %s; retrying", w->id,
			                strerror(-ret));
			nanosleep(&ms, NULL);
		}
	}
	return sqe;
}

uint64_t worker_op(struct worker *w, struct conn *c, enum conn_op op)
{
	c->pending |= CONN_OP_BIT(op);
	return conn_ud(op, c->gen, conn_index(&w->conns, c));
}

static void poke(struct worker *w)
{
	uint64_t one = 1;
	if (write(w->wake_fd, &one, sizeof(one)) < 0) {
		/* the counter cannot overflow: the worker reads it at every wake */
	}
}

void worker_wake(struct worker *w)
{
	atomic_store(&w->stop, 1);
	poke(w);
}

void worker_report(struct worker *w)
{
	atomic_store(&w->report, 1);
	poke(w);
}

/* w's counters as one "stats" line (from its own thread). */
static void log_stats(struct worker *w)
{
	const struct worker_stats *s = &w->stats;
	const struct relay_bufs *b = &w->bufs;

	log_msg("stats",
	        "worker=%d live=%u accepted=%llu refused=%llu accept_errors=%llu "
	        "sessions_ok=%llu sessions_failed=%llu bind_refused=%llu bytes_up=%llu "
	        "bytes_down=%llu chunks_kib=%zu chunks_peak_kib=%zu ring_waiting=%u "
	        "pipes_lent=%u pipes=%u udp_bufs_lent=%u",
	        w->id, w->conns.live, (unsigned long long)s->accepted,
	        (unsigned long long)s->refused_limit, (unsigned long long)s->accept_errors,
	        (unsigned long long)s->sessions_ok, (unsigned long long)s->sessions_failed,
	        (unsigned long long)s->bind_refused, (unsigned long long)s->bytes_up,
	        (unsigned long long)s->bytes_down, b->chunk_bytes >> 10, b->chunk_peak >> 10,
	        b->queued, w->pipes.live - w->pipes.nfree, w->pipes.live, udp_bufs_lent(w));
}

/* ---- accept ---- */

static void arm_accept(struct worker *w, int i)
{
	struct io_uring_sqe *sqe = worker_sqe(w);
	io_uring_prep_multishot_accept(sqe, w->listen_fd[i], NULL, NULL,
	                               SOCK_NONBLOCK | SOCK_CLOEXEC);
	sqe->user_data = conn_ud(OP_ACCEPT, 0, (uint32_t)i);
	w->accept_armed |= 1u << i;
}

static void set_nodelay(int fd)
{
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

int addr_is_any(const struct sockaddr *a)
{
	if (a->sa_family == AF_INET)
		return ((const struct sockaddr_in *)a)->sin_addr.s_addr == htonl(INADDR_ANY);
	return a->sa_family == AF_INET6 &&
	       IN6_IS_ADDR_UNSPECIFIED(&((const struct sockaddr_in6 *)a)->sin6_addr);
}

int addr_is_loopback(const struct sockaddr *peer)
{
	if (peer->sa_family == AF_INET)
		return (ntohl(((const struct sockaddr_in *)peer)->sin_addr.s_addr) >> 24) == 127;
	if (peer->sa_family == AF_INET6) {
		const struct in6_addr *a = &((const struct sockaddr_in6 *)peer)->sin6_addr;
		return IN6_IS_ADDR_LOOPBACK(a) ||
		       (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
	}
	return 0;
}

int worker_set_congestion(const struct config *cfg, int fd, const struct sockaddr *peer)
{
	const char *alg = cfg->congestion;

	if (!alg[0]) {
		/* pacing (bbr) a connection within this machine buys nothing and costs timers */
		if (!cfg->loopback_cc[0] || !peer || !addr_is_loopback(peer))
			return 0;
		alg = cfg->loopback_cc;
	}
	if (setsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, alg, strlen(alg)) < 0)
		return -errno;
	return 0;
}

static void hs_recv(struct worker *w, struct conn *c);

/* The default congestion control leaves loopback unpaced: a listener on a loopback address
 * passes that on to what it accepts (open_listener), but on a wildcard address only the
 * client's address tells, so each of its sockets is looked at (a getpeername, plus a
 * setsockopt for a client on this machine). */
static int unpaced_by_peer(const struct config *cfg, uint32_t li)
{
	const struct sockaddr_storage *ss = &cfg->listen[li];

	if (cfg->congestion[0] || !cfg->loopback_cc[0])
		return 0;
	return addr_is_any((const struct sockaddr *)ss);
}

int worker_set_keepalive(const struct config *cfg, int fd)
{
	/* A client that vanishes (powered off, a NAT that forgot it) sends no FIN: without
	 * probes its relay, slot and descriptors stay for good, and count against --max-conns.
	 * Set on the listeners, so accepted sockets inherit it at no cost per connection. */
	int on = cfg->keepalive_s > 0, idle = cfg->keepalive_s, intvl = idle / 10, cnt = 5;

	if (intvl < 1)
		intvl = 1;
	if (setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof(on)) < 0)
		return -errno;
	if (on && (setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle)) < 0 ||
	           setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl)) < 0 ||
	           setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt)) < 0))
		return -errno;
	return 0;
}

int worker_take_live(const struct worker *w)
{
	/* taken first and then checked: workers taking one at the same moment would otherwise
	 * all see room for one more and together pass --max-conns (the price: right at the
	 * limit, a refusal's brief count can refuse a client while a close frees a slot) */
	long live = atomic_fetch_add(&worker_live, 1);

	if (w->cfg->max_conns && live >= w->cfg->max_conns) {
		atomic_fetch_sub(&worker_live, 1);
		return -1;
	}
	if (worker_take_fd_pair() < 0) {
		atomic_fetch_sub(&worker_live, 1);
		return -2;
	}
	return 0;
}

void worker_put_live(void)
{
	worker_put_fd_pair();
	atomic_fetch_sub(&worker_live, 1);
}

static void on_accept(struct worker *w, uint32_t li, int res, unsigned flags)
{
	struct conn *c;
	int unpaced, ret;

	if (!(flags & IORING_CQE_F_MORE)) {
		w->accept_armed &= ~(1u << li);
		/* The kernel ends a multishot accept on any error, and on a full completion
		 * queue even with a client in res: armed again at the next turn of the loop, or
		 * after ACCEPT_RETRY_MS for an error (none spins), or this worker's share of the
		 * clients would wait in its listener's queue for good. */
		if (res != -ECANCELED && !w->accept_retry_ms && !atomic_load(&w->stop))
			w->accept_retry_ms = w->now_ms + (res >= 0 ? 0 : ACCEPT_RETRY_MS);
	}
	if (res < 0) {
		if (res == -ECANCELED)
			return;
		w->stats.accept_errors++;
		if (res == -EMFILE || res == -ENFILE || res == -ENOBUFS || res == -ENOMEM) {
			/* out of descriptors: pause accepting instead of spinning */
			if (w->now_ms >= w->accept_warn_ms) {
				log_err("accept: %s; pausing accepts for %d ms (live connections: "
				        "%ld)",
				        strerror(-res), ACCEPT_RETRY_MS, atomic_load(&worker_live));
				w->accept_warn_ms = w->now_ms + 5000;
			}
			w->accept_retry_ms = w->now_ms + ACCEPT_RETRY_MS;
		}
		return;
	}
	w->stats.accepted++;
	if (atomic_load(&w->stop)) {
		close(res);
		return;
	}
	if ((ret = worker_take_live(w)) < 0) {
		w->stats.refused_limit++;
		if (ret == -1)
			log_warn_limited("refusing clients: --max-conns %ld reached",
			                 w->cfg->max_conns);
		else
			log_warn_limited(
			    "refusing clients: the descriptor limit leaves room for %ld "
			    "connections (a UDP association counts as two)",
			    worker_fd_pairs_max);
		close(res);
		return;
	}
	c = conn_alloc(&w->conns);
	if (!c) {
		worker_put_live();
		w->stats.refused_limit++;
		log_warn_limited("worker %d: refusing clients: all %u connection slots in use "
		                 "(the descriptor limit)",
		                 w->id, w->conns.size);
		close(res);
		return;
	}
	c->cfd = res;
	c->start_ms = w->now_ms; /* TCP_NODELAY is inherited from the listener */
	unpaced = unpaced_by_peer(w->cfg, li);
	if (log_verbose || unpaced) {
		socklen_t len = sizeof(c->peer);
		if (getpeername(res, (struct sockaddr *)&c->peer, &len) == 0 && unpaced)
			worker_set_congestion(w->cfg, res, (struct sockaddr *)&c->peer);
	}
	c->listener = (uint8_t)li;
	if (w->cfg->mode == MODE_TUNNEL) {
		c->via = VIA_TUNNEL;
		upstream_start(w, c);
		return;
	}
	socks5_server_init(&c->hs, w->cfg->nusers ? SOCKS5_OFFER_USERPASS : SOCKS5_OFFER_NOAUTH);
	conn_timer_set(&w->conns, c, TIMER_HANDSHAKE, w->now_ms);
	hs_recv(w, c);
}

/* ---- closing ---- */

/* The fixed destination of a tunnel connection (-L) or datagram session (-U). */
static const struct socks5_addr *tunnel_dst(const struct worker *w, const struct conn *c)
{
	return udp_is_tunnel(w, c) ? &w->cfg->udp_dst[c->listener]
	                           : &w->cfg->tunnel_dst[c->listener];
}

static void conn_free_if_idle(struct worker *w, struct conn *c)
{
	if (c->state == CONN_CLOSING && c->pending == 0) {
		/* sockets a splice SQE held are closed now (worker_conn_close) */
		worker_close_fd(w, &c->cfd);
		worker_close_fd(w, &c->tfd);
		/* only now: a cancelled send may still have been reading a buffer */
		relay_release(w, c);
		conn_release(&w->conns, c);
	}
}

/* Why a refusal happened, when the reply code alone does not say (-v's session line). The
 * connect's own error is added to WHY_CONNECT. */
static const char WHY_CONNECT[] = "connect failed";

static void log_session(struct worker *w, struct conn *c, const char *why)
{
	char client[INET6_ADDRSTRLEN + 8] = "?", dst[SOCKS5_MAX_NAME + 16] = "-", udp[96];
	char reason[96];
	struct socks5_addr a;

	if (!why && c->fail_why == WHY_CONNECT) {
		snprintf(reason, sizeof(reason), "%s: %s", WHY_CONNECT, strerror(c->last_err));
		why = reason;
	} else if (!why)
		why = c->fail_why;

	if (socks5_addr_from_sockaddr(&a, (struct sockaddr *)&c->peer) == 0)
		socks5_addr_str(&a, client, sizeof(client));
	if (c->via == VIA_TUNNEL)
		socks5_addr_str(tunnel_dst(w, c), dst, sizeof(dst));
	else if (c->hs.state == SOCKS5_SRV_DONE)
		socks5_addr_str(&c->hs.req.dst, dst, sizeof(dst));
	udp_log_counters(w, c, udp, sizeof(udp));
	/* a reply still on its way out when the session ended never reached the client (the
	 * counters call it failed) */
	log_msg("info", "session client=%s dst=%s%s%s result=%s%s%s%s up=%llu down=%llu ms=%llu%s",
	        client, dst, c->via != VIA_DIRECT ? " via=" : "",
	        c->via != VIA_DIRECT ? w->cfg->upstreams[c->up_i].text : "",
	        c->result == 0xFF ? "no-reply" : socks5_reply_str(c->result),
	        c->result != 0xFF && c->state == CONN_REPLYING ? " (not delivered)" : "",
	        why ? " reason=" : "", why ? why : "", (unsigned long long)c->dir[DIR_UP].bytes,
	        (unsigned long long)c->dir[DIR_DOWN].bytes,
	        (unsigned long long)(w->now_ms - c->start_ms), udp);
}

void worker_conn_close(struct worker *w, struct conn *c, const char *why)
{
	if (c->state == CONN_CLOSING || c->state == CONN_FREE)
		return;
	if (c->result == 0 && c->state != CONN_REPLYING) /* not if the reply never got out */
		w->stats.sessions_ok++;
	else
		w->stats.sessions_failed++;
	w->stats.bytes_up += c->dir[DIR_UP].bytes;
	w->stats.bytes_down += c->dir[DIR_DOWN].bytes;
	if (log_verbose)
		log_session(w, c, why);
	udp_release(w, c); /* an association's own sockets and waiting datagrams */
	/* An SQE ahead of the close in the ring gets its file before the close runs, except a
	 * splice: io-wq looks its descriptors up when it runs it, which may be after the close,
	 * when another worker's accept or socket() may have the number. Sockets a splice SQE
	 * names are closed once it is over (conn_free_if_idle). */
	if (!(c->pending & CONN_SPLICE_OPS)) {
		worker_close_fd(w, &c->cfd);
		worker_close_fd(w, &c->tfd);
	}
	conn_timer_clear(&w->conns, c);
	c->state = CONN_CLOSING;
	worker_put_live();
	/* closing a socket does not end requests that hold it: cancel each one */
	worker_cancel_ops(w, c, c->pending);
	conn_free_if_idle(w, c);
}

void worker_conn_abort(struct worker *w, struct conn *c, const char *why)
{
	struct linger lg = {.l_onoff = 1, .l_linger = 0};

	/* A relay cut by an error (a reset, a failed write) must not look complete at the
	 * other end: its peer sees a reset, as it would with no proxy between, rather than the
	 * orderly close that ends a whole stream. */
	if (c->cfd >= 0)
		setsockopt(c->cfd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	if (c->tfd >= 0)
		setsockopt(c->tfd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	worker_conn_close(w, c, why);
}

/* ---- handshake ---- */

static void hs_recv(struct worker *w, struct conn *c)
{
	struct io_uring_sqe *sqe = worker_sqe(w);
	io_uring_prep_recv(sqe, c->cfd, c->rbuf, CONN_RBUF, 0);
	sqe->user_data = worker_op(w, c, OP_RECV);
}

static void hs_send(struct worker *w, struct conn *c)
{
	struct io_uring_sqe *sqe = worker_sqe(w);
	io_uring_prep_send(sqe, c->cfd, c->tx_base + c->tx_off, (size_t)(c->tx_len - c->tx_off),
	                   MSG_NOSIGNAL);
	sqe->user_data = worker_op(w, c, OP_SEND);
}

static void after_tx(struct worker *w, struct conn *c);

/* The client's connection broke (a reset, as a rule) before what we had for it was out. A
 * destination may already hold the data the client sent after its request: a reset tells it
 * the stream was cut, where a plain close (a FIN after that data) made it look whole. */
static void tx_failed(struct worker *w, struct conn *c)
{
	worker_conn_abort(w, c, "client error during handshake");
}

/* Send what tx holds. Handshake messages are small and the socket's buffer is empty, so a
 * plain non-blocking send(2) takes them whole and the next step starts in the same loop turn;
 * only if the kernel cannot take it all does a SEND SQE finish the job. Then after_tx. */
static void tx_flush(struct worker *w, struct conn *c)
{
	if (c->pending & CONN_OP_BIT(OP_SEND))
		return; /* its completion continues */
	while (c->tx_off < c->tx_len) {
		ssize_t n = send(c->cfd, c->tx_base + c->tx_off, (size_t)(c->tx_len - c->tx_off),
		                 MSG_DONTWAIT | MSG_NOSIGNAL);
		if (n > 0) {
			c->tx_off = (uint16_t)(c->tx_off + n);
		} else if (n < 0 && errno == EAGAIN) {
			hs_send(w, c);
			return;
		} else if (!(n < 0 && errno == EINTR)) {
			tx_failed(w, c);
			return;
		}
	}
	c->tx_off = c->tx_len = 0;
	after_tx(w, c);
}

static void tx_append(struct conn *c, const uint8_t *p, size_t n)
{
	c->tx_base = c->txbuf;
	if (n > (size_t)(CONN_TXBUF - c->tx_len))
		n = (size_t)(CONN_TXBUF - c->tx_len); /* cannot happen: replies are bounded */
	memcpy(c->txbuf + c->tx_len, p, n);
	c->tx_len = (uint16_t)(c->tx_len + n);
}

void worker_send_reply(struct worker *w, struct conn *c, const uint8_t *buf, size_t len)
{
	if (c->tx_off == c->tx_len)
		c->tx_len = c->tx_off = 0;
	tx_append(c, buf, len);
	tx_flush(w, c);
}

/* Send a failure reply (rep) and close once it is out. */
/* Refuse the request with reply rep; why (a string literal, or NULL) goes to -v's session line. */
static void conn_fail(struct worker *w, struct conn *c, uint8_t rep, const char *why)
{
	uint8_t buf[SOCKS5_MAX_REPLY];
	int n = socks5_encode_reply(buf, sizeof(buf), rep, NULL);

	worker_close_fd(w, &c->tfd);
	conn_timer_clear(&w->conns, c);
	c->result = rep;
	c->fail_why = why;
	c->state = CONN_REPLYING;
	c->closing_after_send = 1;
	if (n > 0)
		tx_append(c, buf, (size_t)n);
	tx_flush(w, c);
}

/* After an error reply: shut our side, read until the client closes (so the reply is not
 * lost to a reset caused by unread bytes), bounded by LINGER_MS. */
static void conn_linger(struct worker *w, struct conn *c)
{
	shutdown(c->cfd, SHUT_WR);
	c->state = CONN_LINGER;
	conn_timer_set(&w->conns, c, TIMER_LINGER, w->now_ms);
	if (!(c->pending & CONN_OP_BIT(OP_RECV)))
		hs_recv(w, c);
}

static void maybe_start_relay(struct worker *w, struct conn *c);

static uint8_t errno_to_reply(int err)
{
	switch (err) {
	case ECONNREFUSED:
		return SOCKS5_REP_CONN_REFUSED;
	case ENETUNREACH:
	case ENETDOWN:
		return SOCKS5_REP_NET_UNREACHABLE;
	case EHOSTUNREACH:
	case EHOSTDOWN:
	case ENOENT:
		return SOCKS5_REP_HOST_UNREACHABLE;
	case ETIMEDOUT:
		return SOCKS5_REP_TTL_EXPIRED;
	default:
		return SOCKS5_REP_GENERAL_FAILURE;
	}
}

void worker_connect_next(struct worker *w, struct conn *c)
{
	while (c->addr_i < c->naddrs) {
		struct sockaddr_in6 *a = &c->addrs[c->addr_i];
		socklen_t len = a->sin6_family == AF_INET ? sizeof(struct sockaddr_in)
		                                          : sizeof(struct sockaddr_in6);
		int fd = socket(a->sin6_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		struct io_uring_sqe *sqe;

		if (fd < 0) {
			/* out of descriptors, as a rule: every client past the limit meets it,
			 * so it is said once per LOG_LIMIT_MS, not once per client */
			c->last_err = errno;
			log_err_limited(
			    "cannot open a socket to connect: %s (live connections: %ld)",
			    strerror(errno), atomic_load(&worker_live));
			if (c->via != VIA_DIRECT) {
				/* our own shortage, not the upstream's fault: no other upstream
				 * would do better, and backing this one off skewed the
				 * round-robin once descriptors were free again */
				worker_conn_give_up(w, c, SOCKS5_REP_GENERAL_FAILURE,
				                    "cannot open a socket");
				return;
			}
			break;
		}
		set_nodelay(fd);
		worker_set_congestion(w->cfg, fd, (struct sockaddr *)a); /* checked at start-up */
		c->tfd = fd;
		c->state = CONN_CONNECTING;
		/* With more addresses to try, this one gets a share of the time only: one that
		 * drops our SYNs (IPv6 without a route out, say) must not take the whole timeout
		 * from the next. TIMER_CONNECT keeps the whole deadline meanwhile. */
		if (c->addr_i + 1 < c->naddrs)
			conn_step_set(&w->conns, c, w->now_ms);
		else
			conn_step_clear(&w->conns, c);
		sqe = worker_sqe(w);
		io_uring_prep_connect(sqe, fd, (struct sockaddr *)a, len);
		sqe->user_data = worker_op(w, c, OP_CONNECT);
		return;
	}
	if (c->via != VIA_DIRECT) {
		char why[128];
		snprintf(why, sizeof(why), "unreachable: %s", strerror(c->last_err));
		upstream_failed(w, c, why);
		return;
	}
	conn_fail(w, c, errno_to_reply(c->last_err), WHY_CONNECT);
}

static void on_connect(struct worker *w, struct conn *c, int res)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	struct socks5_addr bnd;
	uint8_t buf[SOCKS5_MAX_REPLY];
	int n;

	if (c->state == CONN_CONNECT_NEXT) {
		/* cancelled for taking too long (or done just before the cancel: then used) */
		c->state = CONN_CONNECTING;
		if (res < 0)
			res = -ETIMEDOUT;
	}
	if (c->state != CONN_CONNECTING)
		return; /* timed out meanwhile */
	if (res < 0) {
		c->last_err = -res;
		worker_close_fd(w, &c->tfd);
		c->addr_i++;
		worker_connect_next(w, c);
		return;
	}
	if (c->via != VIA_DIRECT) {
		conn_step_clear(&w->conns, c); /* the connect deadline covers its handshake too */
		upstream_connected(w, c);
		return;
	}
	conn_timer_clear(&w->conns, c);
	if (getsockname(c->tfd, (struct sockaddr *)&ss, &len) < 0 ||
	    socks5_addr_from_sockaddr(&bnd, (struct sockaddr *)&ss) < 0) {
		conn_fail(w, c, SOCKS5_REP_GENERAL_FAILURE, "getsockname failed");
		return;
	}
	n = socks5_encode_reply(buf, sizeof(buf), SOCKS5_REP_SUCCEEDED, &bnd);
	if (n < 0) {
		conn_fail(w, c, SOCKS5_REP_GENERAL_FAILURE, "cannot encode reply");
		return;
	}
	c->result = SOCKS5_REP_SUCCEEDED;
	c->tx_len = c->tx_off = 0;
	tx_append(c, buf, (size_t)n);
	worker_reply_and_relay(w, c, c->txbuf, c->tx_len);
}

void worker_reply_and_relay(struct worker *w, struct conn *c, const uint8_t *buf, size_t len)
{
	conn_timer_clear(&w->conns, c);
	/* the connect phase's watch (connect_watch): the relay watches the client its own way */
	if (c->pending & CONN_OP_BIT(OP_WATCH_C))
		worker_cancel_ops(w, c, CONN_OP_BIT(OP_WATCH_C));
	c->state = CONN_REPLYING;
	c->tx_base = buf;
	c->tx_len = (uint16_t)len;
	c->tx_off = 0;
	while (c->early_len) {
		/* data the client pipelined after its request goes to the destination first */
		ssize_t n = send(c->tfd, c->rbuf, c->early_len, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (n > 0) {
			c->dir[DIR_UP].bytes += (uint64_t)n;
			c->early_len = (uint16_t)(c->early_len - n);
			memmove(c->rbuf, c->rbuf + n, c->early_len);
		} else if (n < 0 && errno == EAGAIN) {
			struct io_uring_sqe *sqe = worker_sqe(w);
			io_uring_prep_send(sqe, c->tfd, c->rbuf, c->early_len, MSG_NOSIGNAL);
			sqe->user_data = worker_op(w, c, OP_SEND_T);
			break;
		} else if (!(n < 0 && errno == EINTR)) {
			worker_conn_close(w, c, "target error");
			return;
		}
	}
	tx_flush(w, c); /* then after_tx starts the relay */
}

/* A descriptor that SQEs prepared in this batch may still name is closed by an SQE behind
 * them, not by close(2). The kernel resolves an SQE's descriptor only when the batch is
 * submitted, and close(2) frees the number at once: the other workers share the descriptor
 * table, and an accept or a socket() of theirs took the number meanwhile, so a send prepared
 * for one connection went out on another worker's new connection (test_stress: a client read
 * another connection's data as its CONNECT reply). In the ring the close comes after the
 * requests that name the descriptor, so they get the file they were prepared for. */
void worker_close_fd(struct worker *w, int *fd)
{
	struct io_uring_sqe *sqe;

	if (*fd < 0)
		return;
	sqe = worker_sqe(w);
	io_uring_prep_close(sqe, *fd);
	sqe->user_data = conn_ud(OP_IGNORE, 0, 0);
	*fd = -1;
}

void worker_watch_reset(struct worker *w, struct conn *c, int fd, enum conn_op op)
{
	struct io_uring_sqe *sqe = worker_sqe(w);
	/* io_uring reports POLLRDHUP whatever the mask, and after the peer's FIN that is true
	 * from the start: a one-shot poll would end at once. A multishot one reports it and
	 * then only the wakeups that follow (a reset's), not the room sends make (POLLOUT). */
	io_uring_prep_poll_multishot(sqe, fd, POLLERR | POLLHUP);
	sqe->user_data = worker_op(w, c, op);
}

void worker_cancel_ops(struct worker *w, struct conn *c, uint32_t mask)
{
	uint32_t idx = conn_index(&w->conns, c);

	for (int op = OP_RECV; op < OP__COUNT; op++) {
		if (c->pending & mask & CONN_OP_BIT(op)) {
			struct io_uring_sqe *sqe = worker_sqe(w);
			io_uring_prep_cancel64(sqe, conn_ud((enum conn_op)op, c->gen, idx), 0);
			sqe->user_data = conn_ud(OP_IGNORE, 0, 0);
		}
	}
}

/* A tunnel client speaks no SOCKS: it learns of a failure by a reset. */
static void conn_reset(struct worker *w, struct conn *c, const char *why)
{
	struct linger lg = {.l_onoff = 1, .l_linger = 0};
	setsockopt(c->cfd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	worker_conn_close(w, c, why);
}

void worker_conn_give_up(struct worker *w, struct conn *c, uint8_t rep, const char *why)
{
	c->result = rep;
	if (c->via == VIA_TUNNEL) {
		log_warn_limited("tunnel to %s failed: %s",
		                 socks5_addr_str(tunnel_dst(w, c), (char[300]){0}, 300), why);
		conn_reset(w, c, why);
		return;
	}
	if (c->via == VIA_UPSTREAM)
		log_warn_limited("forwarding to %s failed: %s (last upstream tried: %s)",
		                 socks5_addr_str(&c->hs.req.dst, (char[300]){0}, 300), why,
		                 w->cfg->upstreams[c->up_i].text);
	conn_fail(w, c, rep, why);
}

void worker_conn_pass_failure(struct worker *w, struct conn *c, uint8_t rep, const uint8_t *reply,
                              size_t len)
{
	char dst[300];

	c->result = rep;
	if (c->via == VIA_TUNNEL) {
		log_warn_limited("tunnel to %s: the proxy replied %u (%s)",
		                 socks5_addr_str(tunnel_dst(w, c), dst, sizeof(dst)), rep,
		                 socks5_reply_str(rep));
		conn_reset(w, c, "proxy refused");
		return;
	}
	log_info("upstream %s replied %u (%s) for %s", w->cfg->upstreams[c->up_i].text, rep,
	         socks5_reply_str(rep), socks5_addr_str(&c->hs.req.dst, dst, sizeof(dst)));
	worker_close_fd(w, &c->tfd);
	conn_timer_clear(&w->conns, c);
	c->tx_len = c->tx_off = 0;
	tx_append(c, reply, len);
	c->state = CONN_REPLYING;
	c->closing_after_send = 1;
	tx_flush(w, c);
}

static void start_request(struct worker *w, struct conn *c)
{
	const struct socks5_request *req = &c->hs.req;

	if (w->cfg->nupstreams) {
		/* forwarder: every command goes to the upstream as sent (BIND's second reply
		 * then flows through the relay unchanged; udp.c rewrites UDP ASSOCIATE's reply) */
		if (req->cmd == SOCKS5_CMD_UDP_ASSOCIATE && !udp_supported(w)) {
			conn_fail(w, c, SOCKS5_REP_CMD_NOT_SUPPORTED, "no UDP");
			return;
		}
		c->via = VIA_UPSTREAM;
		upstream_start(w, c);
		return;
	}
	if (req->cmd == SOCKS5_CMD_BIND) {
		bind_start(w, c);
		return;
	}
	if (req->cmd == SOCKS5_CMD_UDP_ASSOCIATE) {
		udp_start(w, c);
		return;
	}
	if (req->cmd != SOCKS5_CMD_CONNECT) {
		conn_fail(w, c, SOCKS5_REP_CMD_NOT_SUPPORTED, NULL);
		return;
	}
	worker_connect_deadline(w, c);
	c->addr_i = 0;
	c->last_err = EHOSTUNREACH;
	if (req->dst.atyp == SOCKS5_ATYP_DOMAIN) {
		if (strlen(req->dst.u.name) != req->dst.len) {
			conn_fail(w, c, SOCKS5_REP_HOST_UNREACHABLE, "a NUL byte in the name");
			return;
		}
		c->state = CONN_RESOLVING;
		dns_resolve(w->dns, req->dst.u.name, req->dst.port,
		            conn_ud(OP_NONE, c->gen, conn_index(&w->conns, c)));
		return;
	}
	struct sockaddr_storage ss;
	socklen_t len;
	if (socks5_addr_to_sockaddr(&req->dst, &ss, &len) < 0) {
		conn_fail(w, c, SOCKS5_REP_ATYP_NOT_SUPPORTED, NULL);
		return;
	}
	memset(&c->addrs[0], 0, sizeof(c->addrs[0]));
	memcpy(&c->addrs[0], &ss, len);
	c->naddrs = 1;
	worker_connect_next(w, c);
}

void worker_resolved(struct worker *w, uint64_t ud, int status, const struct sockaddr_in6 *addrs,
                     int n)
{
	struct conn *c;

	if ((unsigned)conn_ud_op(ud) == CONN_RESOLVE_UDP) {
		udp_resolved(w, ud, status, addrs, n); /* a datagram's destination */
		return;
	}
	c = conn_lookup(&w->conns, ud);
	if ((unsigned)conn_ud_op(ud) & CONN_RESOLVE_RELAY) {
		/* an upstream's UDP relay, named by a domain; only for the attempt that asked */
		if (c && c->state == CONN_UP_HANDSHAKE &&
		    ((unsigned)conn_ud_op(ud) & ~CONN_RESOLVE_RELAY) == c->up_tries)
			udp_relay_resolved(w, c, status, addrs, n);
		return;
	}
	if (!c || c->state != CONN_RESOLVING || conn_ud_op(ud) != c->up_tries)
		return; /* the client is gone, timed out, or moved on to another upstream */
	if (status < 0 || n == 0) {
		if (c->via != VIA_DIRECT)
			upstream_failed(w, c, "its name does not resolve");
		else
			conn_fail(w, c, SOCKS5_REP_HOST_UNREACHABLE, "the name does not resolve");
		return;
	}
	memcpy(c->addrs, addrs, sizeof(addrs[0]) * (size_t)n);
	c->naddrs = (uint8_t)n;
	c->last_err = EHOSTUNREACH;
	if (c->via == VIA_DIRECT && c->hs.req.cmd == SOCKS5_CMD_BIND) {
		bind_listen(w, c);
		return;
	}
	worker_connect_next(w, c);
}

/* Feed received handshake bytes to the codec and act on what it asks. */
static void hs_feed(struct worker *w, struct conn *c, size_t n)
{
	size_t pos = 0;

	while (c->hs.state != SOCKS5_SRV_DONE && c->hs.state != SOCKS5_SRV_FAILED) {
		size_t used = 0;
		enum socks5_status st = socks5_server_feed(&c->hs, c->rbuf + pos, n - pos, &used);
		pos += used;
		switch (st) {
		case SOCKS5_NEED_MORE:
			goto flush;
		case SOCKS5_SEND:
			tx_append(c, c->hs.out, c->hs.out_len);
			break;
		case SOCKS5_CHECK_AUTH: {
			int ok = config_check_user(w->cfg, c->hs.user, c->hs.user_len, c->hs.pass,
			                           c->hs.pass_len);
			st = socks5_server_auth_verdict(&c->hs, ok);
			tx_append(c, c->hs.out, c->hs.out_len);
			if (st == SOCKS5_ERROR) {
				log_info("auth failed for user '%s'", c->hs.user);
				c->closing_after_send = 1;
				goto flush;
			}
			break;
		}
		case SOCKS5_REQUEST:
			c->early_len = (uint16_t)(n - pos);
			memmove(c->rbuf, c->rbuf + pos, c->early_len);
			goto flush;
		case SOCKS5_REPLY:
		case SOCKS5_ERROR:
			/* a full reply (>= 10 bytes) carries a reply code; 05 FF / 01 01 do not */
			c->result = c->hs.out_len >= 10 ? c->hs.reply : 0xFF;
			if (c->hs.out_len)
				tx_append(c, c->hs.out, c->hs.out_len);
			c->closing_after_send = 1;
			goto flush;
		}
	}
flush:
	tx_flush(w, c); /* what comes next is decided when it is out */
}

static void on_recv(struct worker *w, struct conn *c, int res)
{
	if (c->state == CONN_LINGER) {
		if (res > 0)
			hs_recv(w, c);
		else
			worker_conn_close(w, c, NULL);
		return;
	}
	if (c->state != CONN_HANDSHAKE)
		return;
	if (res <= 0) {
		worker_conn_close(w, c,
		                  res == 0 ? "client closed during handshake"
		                           : "client error during handshake");
		return;
	}
	hs_feed(w, c, (size_t)res);
}

static void maybe_start_relay(struct worker *w, struct conn *c)
{
	if (c->pending & (CONN_OP_BIT(OP_SEND) | CONN_OP_BIT(OP_SEND_T)))
		return;
	relay_start(w, c);
}

static void on_send(struct worker *w, struct conn *c, int res)
{
	if (res < 0) {
		tx_failed(w, c);
		return;
	}
	c->tx_off = (uint16_t)(c->tx_off + res);
	if (c->tx_off < c->tx_len) {
		hs_send(w, c);
		return;
	}
	c->tx_off = c->tx_len = 0;
	after_tx(w, c);
}

/* Everything queued for the client is out: the next step of the handshake. */
static void after_tx(struct worker *w, struct conn *c)
{
	if (c->closing_after_send) {
		conn_linger(w, c); /* a refusal, or nothing to say (not SOCKS5 at all) */
		return;
	}
	switch (c->state) {
	case CONN_HANDSHAKE:
		if (c->hs.state == SOCKS5_SRV_DONE)
			start_request(w, c);
		else
			hs_recv(w, c);
		break;
	case CONN_REPLYING:
		maybe_start_relay(w, c);
		break;
	case CONN_BIND_WAIT:
		bind_sent(w, c);
		break;
	default:
		break;
	}
}

static void on_send_target(struct worker *w, struct conn *c, int res)
{
	if (c->tfd < 0)
		return; /* a send of the upstream handshake that ended after the attempt failed */
	if (res < 0) {
		/* the client may have its success reply already: not a whole (empty) stream */
		worker_conn_abort(w, c, "target error");
		return;
	}
	c->dir[DIR_UP].bytes += (uint64_t)res;
	if (res < c->early_len) {
		struct io_uring_sqe *sqe;
		c->early_len = (uint16_t)(c->early_len - res);
		memmove(c->rbuf, c->rbuf + res, c->early_len);
		sqe = worker_sqe(w);
		io_uring_prep_send(sqe, c->tfd, c->rbuf, c->early_len, MSG_NOSIGNAL);
		sqe->user_data = worker_op(w, c, OP_SEND_T);
		return;
	}
	c->early_len = 0;
	maybe_start_relay(w, c);
}

/* An address of several had its share of --connect-timeout: cancel its connect, and once
 * that has ended (on_connect) try the next one, within what is left of TIMER_CONNECT. */
static void on_step(struct worker *w, struct conn *c)
{
	conn_step_clear(&w->conns, c);
	if (c->state != CONN_CONNECTING || c->addr_i + 1 >= c->naddrs)
		return;
	c->state = CONN_CONNECT_NEXT;
	worker_cancel_ops(w, c, CONN_OP_BIT(OP_CONNECT));
}

static int connecting(const struct conn *c)
{
	return c->state == CONN_RESOLVING || c->state == CONN_CONNECTING ||
	       c->state == CONN_CONNECT_NEXT || c->state == CONN_UP_HANDSHAKE ||
	       c->state == CONN_UP_RETRY;
}

void worker_connect_deadline(struct worker *w, struct conn *c)
{
	conn_timer_set(&w->conns, c,
	               w->conns.timers[TIMER_CONNECT_REST].timeout_ms ? TIMER_CONNECT_WATCH
	                                                              : TIMER_CONNECT,
	               w->now_ms);
}

/* The connect phase has lasted CONNECT_WATCH_MS (a slow name, a destination that drops our
 * SYNs, an upstream that does not answer): watch the client from now on. Nothing else reads
 * it meanwhile, so a client that reset kept its slot and the connect going until
 * --connect-timeout, and the forwarder even sent its request on to the next upstream.
 * Most connects end well within that time and never arm it. A UDP ASSOCIATE's control
 * connection gets its own watch once the upstream has answered (udp.c). */
static void connect_watch(struct worker *w, struct conn *c)
{
	conn_timer_move(&w->conns, c, TIMER_CONNECT_REST, w->now_ms); /* a step stays */
	if (connecting(c) && c->cfd >= 0 && c->hs.req.cmd != SOCKS5_CMD_UDP_ASSOCIATE &&
	    !(c->pending & CONN_OP_BIT(OP_WATCH_C)))
		worker_watch_reset(w, c, c->cfd, OP_WATCH_C);
}

static void on_timeout(struct worker *w, struct conn *c)
{
	if (c->timer == TIMER_CONNECT_WATCH) {
		connect_watch(w, c);
		return;
	}
	conn_timer_clear(&w->conns, c);
	switch (c->state) {
	case CONN_HANDSHAKE:
		worker_conn_close(w, c, "handshake timeout");
		break;
	case CONN_RESOLVING:
	case CONN_CONNECTING:
	case CONN_CONNECT_NEXT:
	case CONN_UP_HANDSHAKE:
		if (c->via != VIA_DIRECT) {
			upstream_timeout(w, c);
			break;
		}
		/* the connect still in flight ends cancelled; on_connect ignores it */
		worker_cancel_ops(w, c, CONN_OP_BIT(OP_CONNECT));
		conn_fail(w, c, SOCKS5_REP_TTL_EXPIRED, "connect timed out");
		break;
	case CONN_BIND_WAIT:
		bind_timeout(w, c);
		break;
	case CONN_UDP:
		worker_conn_close(w, c, "idle");
		break;
	case CONN_RELAY:
		relay_watch_finished(w, c); /* TIMER_HALF_CLOSED */
		break;
	default:
		worker_conn_close(w, c, NULL);
		break;
	}
}

/* ---- the loop ---- */

static void arm_wake(struct worker *w);

static void handle_cqe(struct worker *w, struct io_uring_cqe *cqe)
{
	uint64_t ud = cqe->user_data;
	enum conn_op op = conn_ud_op(ud);
	struct conn *c;

	switch (op) {
	case OP_ACCEPT:
		on_accept(w, conn_ud_idx(ud), cqe->res, cqe->flags);
		return;
	case OP_WAKE:
		if (atomic_load(&w->stop))
			return;
		if (cqe->res < 0) {
			/* the loop still sees a stop within MAX_WAIT_MS; reports are lost */
			log_err("worker %d: eventfd read: %s", w->id, strerror(-cqe->res));
			return;
		}
		arm_wake(w); /* a report: stay awake for the next */
		if (atomic_exchange(&w->report, 0))
			log_stats(w);
		return;
	case OP_DNS_POLL:
		dns_poll_event(w->dns, conn_ud_idx(ud), conn_ud_gen(ud), cqe->res);
		return;
	case OP_UDP_SEND:
		udp_send_done(w, ud, cqe->res);
		return;
	case OP_UDP_LOCAL:
		udp_local_event(w, conn_ud_idx(ud), cqe->res, cqe->flags);
		return;
	case OP_NONE:
	case OP_IGNORE:
	case OP__COUNT:
		return;
	default:
		break;
	}
	c = conn_lookup(&w->conns, ud);
	if (!c)
		return; /* stale: the slot has a new tenant */
	if (!(cqe->flags & IORING_CQE_F_MORE))
		c->pending &= ~CONN_OP_BIT(op);
	switch (op) {
	/* an accepted socket or a provided buffer must be dealt with in every state */
	case OP_BIND_ACCEPT:
		bind_on_accept(w, c, cqe->res);
		conn_free_if_idle(w, c);
		return;
	case OP_UDP_RECV_C:
	case OP_UDP_RECV_4:
	case OP_UDP_RECV_6:
		udp_on_recv(w, c, op, cqe->res, cqe->flags);
		conn_free_if_idle(w, c);
		return;
	default:
		break;
	}
	if (c->state == CONN_CLOSING) {
		/* a copy-relay recv may still deliver a buffer after the close: give it back */
		if ((op == OP_POLLIN_C || op == OP_POLLIN_T) && (cqe->flags & IORING_CQE_F_BUFFER))
			relay_drop_buffer(w, cqe->flags);
		/* a multishot request that goes on after the close was cancelled (that cancel
		 * has not run yet, or found it between two rounds): cancel it again, or it holds
		 * the slot and its socket for as long as the peer sends */
		if (cqe->flags & IORING_CQE_F_MORE)
			worker_cancel_ops(w, c, CONN_OP_BIT(op));
		conn_free_if_idle(w, c);
		return;
	}
	if (op == OP_WATCH_C && connecting(c)) {
		/* connect_watch's: a reset (not the POLLRDHUP of a client that half-closed after
		 * its request, which still wants the answer) ends the attempt at once */
		if (cqe->res > 0 && (cqe->res & (POLLERR | POLLHUP)))
			worker_conn_abort(w, c, "client reset while connecting");
		return;
	}
	if (c->state == CONN_UP_RETRY) {
		if (!(c->pending & UPSTREAM_OPS))
			upstream_retry(w, c);
		return;
	}
	switch (op) {
	case OP_RECV:
		on_recv(w, c, cqe->res);
		break;
	case OP_SEND:
		on_send(w, c, cqe->res);
		break;
	case OP_CONNECT:
		on_connect(w, c, cqe->res);
		break;
	case OP_SEND_T:
		if (c->state == CONN_UP_HANDSHAKE)
			upstream_on_send(w, c, cqe->res);
		else
			on_send_target(w, c, cqe->res);
		break;
	case OP_RECV_T:
		if (c->state == CONN_UP_HANDSHAKE)
			upstream_on_recv(w, c, cqe->res);
		break;
	case OP_POLLIN_C:
	case OP_POLLIN_T:
	case OP_POLLOUT_C:
	case OP_POLLOUT_T:
	case OP_SPLIN_C:
	case OP_SPLIN_T:
	case OP_SPLOUT_C:
	case OP_SPLOUT_T:
		if (c->state == CONN_RELAY)
			relay_event(w, c, op, cqe->flags, cqe->res);
		break;
	case OP_WATCH_C:
	case OP_WATCH_T:
		/* BIND wait / UDP association: the control connection hung up */
		if (cqe->res != -ECANCELED && (c->state == CONN_BIND_WAIT || c->state == CONN_UDP))
			worker_conn_close(w, c,
			                  op == OP_WATCH_C ? "client closed" : "upstream closed");
		/* relay: a side that had sent its EOF was reset (relay.c, watch_src); anything
		 * else (the POLLRDHUP of its FIN; a BIND wait's watch ending late) means nothing */
		else if (c->state == CONN_RELAY && cqe->res > 0 && (cqe->res & (POLLERR | POLLHUP)))
			worker_conn_abort(w, c, op == OP_WATCH_C ? "client reset" : "target reset");
		/* the kernel ended the watch (a full completion queue ends multishot requests):
		 * watched again a second later, never at once, so an ending that repeats cannot
		 * spin */
		else if (c->state == CONN_RELAY && cqe->res != -ECANCELED &&
		         !(cqe->flags & IORING_CQE_F_MORE) && c->timer == TIMER_NONE)
			conn_timer_set(&w->conns, c, TIMER_HALF_CLOSED, w->now_ms);
		break;
	default:
		break;
	}
}

static int ring_setup(struct worker *w)
{
	static const unsigned tries[] = {
	    IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
	    IORING_SETUP_COOP_TASKRUN,
	    0,
	};
	/* io_uring hands what it cannot do inline to io-wq threads (only the splice SQEs of
	 * --relay splice-sqe here), and starts one for each request in flight: 64 bulk relays
	 * made 19 of them, and the last of each ring never exits. Every such operation here is
	 * non-blocking (a splice that cannot move returns -EAGAIN), so one thread is enough:
	 * a worker has at most one kernel thread beside it, whatever the load. */
	unsigned int iowq[2] = {RING_IOWQ_MAX, RING_IOWQ_MAX};
	int ret = -EINVAL;
	unsigned sq = RING_ENTRIES, cq = RING_CQ_ENTRIES;
	/* RINGSOCKS_RING_ENTRIES=N (tests only): a ring of N submissions and 2N completions, so
	 * that a test can overflow the completion queue, which ends multishot requests */
	const char *env = getenv("RINGSOCKS_RING_ENTRIES");

	if (env && atoi(env) >= 1 && atoi(env) <= RING_ENTRIES) {
		sq = (unsigned)atoi(env);
		cq = 2 * sq;
	}
	for (size_t i = 0; i < sizeof(tries) / sizeof(tries[0]); i++) {
		struct io_uring_params p;
		memset(&p, 0, sizeof(p));
		p.flags = tries[i] | IORING_SETUP_CQSIZE;
		p.cq_entries = cq;
		ret = io_uring_queue_init_params(sq, &w->ring, &p);
		if (ret == 0) {
			w->ring_flags = p.flags;
			break;
		}
		if (ret != -EINVAL)
			return ret;
	}
	if (ret < 0)
		return ret;
	ret = io_uring_register_iowq_max_workers(&w->ring, iowq);
	if (ret < 0 && w->id == 0)
		log_warn("io-wq threads not limited (%s): --relay splice-sqe may start one per "
		         "relay in flight",
		         strerror(-ret));
	return 0;
}

static void run_queued(struct worker *w)
{
	uint32_t n = w->runq_len;

	/* only what was queued before this pass: a direction that requeues waits a turn */
	for (uint32_t i = 0; i < n; i++) {
		uint64_t ud = w->runq[w->runq_head];
		struct conn *c;
		w->runq_head = (w->runq_head + 1) % w->runq_cap;
		w->runq_len--;
		c = conn_lookup(&w->conns, ud);
		if (c)
			relay_resume(w, c, (int)conn_ud_op(ud));
	}
}

static void stop_all(struct worker *w)
{
	for (int i = 0; i < w->nlisten; i++) {
		if (w->listen_fd[i] >= 0)
			close(w->listen_fd[i]);
		w->listen_fd[i] = -1;
	}
	for (uint32_t i = 0; i < w->conns.size; i++) {
		struct conn *c = &w->conns.slots[i];
		if (c->state != CONN_FREE && c->state != CONN_CLOSING)
			worker_conn_close(w, c, "shutting down");
	}
	io_uring_submit(&w->ring); /* the closes, before the ring goes */
}

static int worker_setup(struct worker *w)
{
	uint32_t slots;
	int ret;

	if (w->cpu >= 0) {
		cpu_set_t set;
		CPU_ZERO(&set);
		CPU_SET(w->cpu, &set);
		ret = pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
		if (ret) {
			log_err("worker %d: cannot pin to CPU %d: %s", w->id, w->cpu,
			        strerror(ret));
			return -ret;
		}
	}
	ret = ring_setup(w);
	if (ret < 0) {
		log_err("worker %d: io_uring_queue_init: %s", w->id, strerror(-ret));
		return ret;
	}
	/* a relay holds a pair of sockets: size the table to what the descriptor limit allows
	 * (worker_fd_limit, from main; all of it: clients are not spread evenly over the
	 * workers, and worker_take_live counts the pairs of the whole process) */
	slots =
	    worker_fd_pairs_max < UINT32_MAX / 2 ? (uint32_t)worker_fd_pairs_max : UINT32_MAX / 2;
	if (w->cfg->max_conns && (uint64_t)w->cfg->max_conns < slots)
		slots = (uint32_t)w->cfg->max_conns;
	if ((ret = conn_table_init(&w->conns, slots)) < 0 || (ret = relay_init(w, slots)) < 0)
		return ret;
	w->conns.timers[TIMER_HANDSHAKE].timeout_ms =
	    (uint64_t)(w->cfg->handshake_timeout * 1000 + 0.5);
	w->conns.timers[TIMER_CONNECT].timeout_ms =
	    (uint64_t)(w->cfg->connect_timeout * 1000 + 0.5);
	w->conns.timers[TIMER_LINGER].timeout_ms = LINGER_MS;
	w->conns.timers[TIMER_HALF_CLOSED].timeout_ms = HALF_CLOSED_MS;
	w->conns.timers[TIMER_CONNECT_WATCH].timeout_ms = CONNECT_WATCH_MS;
	if (w->conns.timers[TIMER_CONNECT].timeout_ms > CONNECT_WATCH_MS)
		w->conns.timers[TIMER_CONNECT_REST].timeout_ms =
		    w->conns.timers[TIMER_CONNECT].timeout_ms - CONNECT_WATCH_MS;
	w->conns.timers[TIMER_BIND].timeout_ms = (uint64_t)(w->cfg->bind_timeout * 1000 + 0.5);
	w->conns.timers[TIMER_UDP_IDLE].timeout_ms =
	    (uint64_t)(w->cfg->udp_idle_timeout * 1000 + 0.5);
	/* the share of one of several addresses: half the timeout, at most CONNECT_STEP_MS */
	w->conns.step.timeout_ms = w->conns.timers[TIMER_CONNECT].timeout_ms / 2 < CONNECT_STEP_MS
	                               ? w->conns.timers[TIMER_CONNECT].timeout_ms / 2
	                               : CONNECT_STEP_MS;
	if (w->cfg->nupstreams) {
		w->uphs = calloc(slots, sizeof(*w->uphs));
		if (!w->uphs)
			return -ENOMEM;
	}
	w->runq_cap = slots * 2;
	w->runq = calloc(w->runq_cap, sizeof(*w->runq));
	if (!w->runq)
		return -ENOMEM;
	if ((ret = dns_init(w, &w->dns)) < 0)
		return ret;
	if ((ret = udp_init(w, slots)) < 0)
		return ret;
	return 0;
}

static void worker_teardown(struct worker *w)
{
	dns_destroy(w->dns);
	w->dns = NULL;
	relay_destroy(w);
	conn_table_free(&w->conns);
	free(w->runq);
	w->runq = NULL;
	free(w->uphs);
	w->uphs = NULL;
	io_uring_queue_exit(&w->ring);
	udp_destroy(w); /* after the ring: nothing may write into its buffers any more */
}

static void arm_wake(struct worker *w)
{
	struct io_uring_sqe *sqe = worker_sqe(w);
	io_uring_prep_read(sqe, w->wake_fd, &w->wake_buf, sizeof(w->wake_buf), 0);
	sqe->user_data = conn_ud(OP_WAKE, 0, 0);
}

void *worker_main(void *arg)
{
	struct worker *w = arg;

	w->now_ms = worker_now_ms();
	w->start_err = worker_setup(w);
	pthread_barrier_wait(w->ready);
	if (w->start_err < 0) {
		worker_teardown(w);
		return NULL;
	}
	for (int i = 0; i < w->nlisten; i++)
		arm_accept(w, i);
	arm_wake(w);

	while (!atomic_load(&w->stop)) {
		struct io_uring_cqe *cqe;
		struct __kernel_timespec ts;
		uint64_t next, dns_next;
		unsigned head, count = 0;
		struct conn *c;
		int ret;

		w->now_ms = worker_now_ms();
		while ((c = conn_step_expired(&w->conns, w->now_ms)))
			on_step(w, c);
		while ((c = conn_timer_expired(&w->conns, w->now_ms)))
			on_timeout(w, c);
		dns_next = dns_tick(w->dns, w->now_ms);
		relay_tick(w);
		log_limited_flush(0); /* within MAX_WAIT_MS of a period's end */
		if (w->accept_retry_ms && w->now_ms >= w->accept_retry_ms) {
			w->accept_retry_ms = 0;
			for (int i = 0; i < w->nlisten; i++)
				if (!(w->accept_armed & (1u << i)))
					arm_accept(w, i);
		}
		next = conn_timer_next(&w->conns);
		if (dns_next < next)
			next = dns_next;
		if (w->accept_retry_ms && w->accept_retry_ms < next)
			next = w->accept_retry_ms;
		if (w->runq_len)
			next = w->now_ms;
		if (next > w->now_ms + MAX_WAIT_MS)
			next = w->now_ms + MAX_WAIT_MS;
		next = next > w->now_ms ? next - w->now_ms : 0;
		ts.tv_sec = (long long)(next / 1000);
		ts.tv_nsec = (long long)(next % 1000) * 1000000;
		ret = io_uring_submit_and_wait_timeout(&w->ring, &cqe, 1, &ts, NULL);
		if (ret < 0 && ret != -ETIME && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY) {
			log_err("worker %d: io_uring_enter: %s; stopping", w->id, strerror(-ret));
			/* the kernel would go on queueing this worker's share of new clients on
			 * its listener, and nobody would accept them: the process stops instead */
			w->run_err = ret;
			kill(getpid(), SIGTERM);
			break;
		}
		w->now_ms = worker_now_ms();
		io_uring_for_each_cqe(&w->ring, head, cqe)
		{
			handle_cqe(w, cqe);
			count++;
		}
		io_uring_cq_advance(&w->ring, count);
		if (w->runq_len)
			run_queued(w);
	}
	stop_all(w);
	log_limited_flush(1); /* the counts of the last periods, before they go */
	if (log_verbose)
		log_stats(w);
	worker_teardown(w);
	return NULL;
}
