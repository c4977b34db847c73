/* bind.c - the BIND command in direct mode (RFC 1928 section 4): listen on the local address
 * used toward DST.ADDR, send the first reply, accept exactly one connection from DST.ADDR
 * (others are closed and counted), send the second reply and hand both sockets to the relay.
 * Forwarder mode does not come here: upstream.c forwards BIND unchanged. */
#include "bind.h"

#include <errno.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conn.h"
#include "dns.h"
#include "log.h"
#include "worker.h"

#define BIND_DEFAULT_PROBE_PORT 9 /* for finding the route when DST.PORT is 0 */

static int addr_is_zero(const struct socks5_addr *a)
{
	static const uint8_t zero[16];

	return (a->atyp == SOCKS5_ATYP_IPV4 && memcmp(a->u.ipv4, zero, 4) == 0) ||
	       (a->atyp == SOCKS5_ATYP_IPV6 && memcmp(a->u.ipv6, zero, 16) == 0);
}

static socklen_t sa_len(int family)
{
	return family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
}

static uint8_t errno_reply(int err)
{
	switch (err) {
	case ENETUNREACH:
	case ENETDOWN:
		return SOCKS5_REP_NET_UNREACHABLE;
	case EHOSTUNREACH:
		return SOCKS5_REP_HOST_UNREACHABLE;
	default:
		return SOCKS5_REP_GENERAL_FAILURE;
	}
}

/* The local address the kernel would use toward dst: a connected UDP socket says so without
 * sending anything. Returns 0 or -errno. */
static int local_toward(const struct sockaddr_in6 *dst, struct sockaddr_storage *out,
                        socklen_t *len)
{
	struct sockaddr_in6 to = *dst; /* big enough for sockaddr_in too */
	int fd, ret = 0;

	if (to.sin6_port == 0)
		to.sin6_port =
		    htons(BIND_DEFAULT_PROBE_PORT); /* sin_port sits at the same offset */
	fd = socket(to.sin6_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	*len = sizeof(*out);
	if (connect(fd, (struct sockaddr *)&to, sa_len(to.sin6_family)) < 0 ||
	    getsockname(fd, (struct sockaddr *)out, len) < 0)
		ret = -errno;
	close(fd);
	return ret;
}

static void set_port(struct sockaddr_storage *ss, uint16_t port)
{
	if (ss->ss_family == AF_INET)
		((struct sockaddr_in *)ss)->sin_port = htons(port);
	else
		((struct sockaddr_in6 *)ss)->sin6_port = htons(port);
}

/* A listening socket on addr, port 0 (ephemeral) or one from --bind-ports. Returns the socket
 * or -errno. A port in the range that is taken (bind or listen says EADDRINUSE) is skipped. */
static int open_listener(struct worker *w, struct sockaddr_storage *addr)
{
	uint32_t lo = w->cfg->bind_port_lo, n = lo ? (uint32_t)w->cfg->bind_port_hi - lo + 1 : 1;
	/* at most BIND_PORT_TRIES ports a request, from where the last one stopped: with a wide
	 * --bind-ports range in use, trying all of it (a socket, bind and close a port) held the
	 * worker for each BIND a client asked for */
	uint32_t tries = n < BIND_PORT_TRIES ? n : BIND_PORT_TRIES;
	int one = 1, err = -EADDRINUSE;

	for (uint32_t i = 0; i < tries; i++) {
		uint32_t k = (w->bind_port_next + i) % n;
		int fd = socket(addr->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

		if (fd < 0)
			return -errno;
		set_port(addr, lo ? (uint16_t)(lo + k) : 0);
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		worker_set_congestion(w->cfg, fd,
		                      (struct sockaddr *)addr); /* its peer's inherits */
		if (addr->ss_family == AF_INET6)
			setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
		if (bind(fd, (struct sockaddr *)addr, sa_len(addr->ss_family)) == 0 &&
		    listen(fd, BIND_BACKLOG) == 0) {
			w->bind_port_next =
			    (k + 1) % n; /* the next BIND tries the next port first */
			return fd;
		}
		err = -errno;
		close(fd);
		if (err != -EADDRINUSE)
			break;
	}
	w->bind_port_next = (w->bind_port_next + tries) % n; /* the next BIND tries further on */
	return err;
}

static void arm_watch(struct worker *w, struct conn *c)
{
	struct io_uring_sqe *sqe = worker_sqe(w);
	/* one-shot: completes when the client hangs up; data it sends stays in the socket */
	io_uring_prep_poll_add(sqe, c->cfd, POLLRDHUP);
	sqe->user_data = worker_op(w, c, OP_WATCH_C);
}

static void arm_accept(struct worker *w, struct conn *c)
{
	struct io_uring_sqe *sqe = worker_sqe(w);
	io_uring_prep_accept(sqe, c->tfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	sqe->user_data = worker_op(w, c, OP_BIND_ACCEPT);
}

void bind_start(struct worker *w, struct conn *c)
{
	const struct socks5_addr *dst = &c->hs.req.dst;
	struct sockaddr_storage ss;
	socklen_t len;

	/* resolving DST.ADDR counts against --connect-timeout, like CONNECT's */
	conn_timer_set(&w->conns, c, TIMER_CONNECT, w->now_ms);
	if (dst->atyp == SOCKS5_ATYP_DOMAIN) {
		if (strlen(dst->u.name) != dst->len) {
			worker_conn_give_up(w, c, SOCKS5_REP_HOST_UNREACHABLE, "bad name");
			return;
		}
		c->state = CONN_RESOLVING; /* worker_resolved calls bind_listen */
		dns_resolve(w->dns, dst->u.name, dst->port,
		            conn_ud(OP_NONE, c->gen, conn_index(&w->conns, c)));
		return;
	}
	if (socks5_addr_to_sockaddr(dst, &ss, &len) < 0) {
		worker_conn_give_up(w, c, SOCKS5_REP_ATYP_NOT_SUPPORTED, "bad address");
		return;
	}
	memset(&c->addrs[0], 0, sizeof(c->addrs[0]));
	memcpy(&c->addrs[0], &ss, len);
	worker_unmap_v4(&c->addrs[0]);
	c->naddrs = 1;
	bind_listen(w, c);
}

void bind_listen(struct worker *w, struct conn *c)
{
	struct sockaddr_storage local;
	socklen_t len = sizeof(local);
	struct socks5_addr bnd;
	uint8_t reply[SOCKS5_MAX_REPLY];
	int fd, n, err = 0;

	conn_timer_clear(&w->conns, c);
	/* DST.ADDR 0.0.0.0 / :: says nothing about the peer: listen where the client came in */
	if (addr_is_zero(&c->hs.req.dst))
		err = getsockname(c->cfd, (struct sockaddr *)&local, &len) < 0 ? -errno : 0;
	else
		err = local_toward(&c->addrs[0], &local, &len);
	if (err < 0) {
		worker_conn_give_up(w, c, errno_reply(-err), "no route to DST.ADDR");
		return;
	}
	fd = open_listener(w, &local);
	if (fd < 0) {
		log_warn_limited("BIND: cannot listen: %s", strerror(-fd));
		worker_conn_give_up(w, c, SOCKS5_REP_GENERAL_FAILURE, "cannot listen");
		return;
	}
	len = sizeof(local);
	if (getsockname(fd, (struct sockaddr *)&local, &len) < 0 ||
	    socks5_addr_from_sockaddr(&bnd, (struct sockaddr *)&local) < 0 ||
	    (n = socks5_encode_reply(reply, sizeof(reply), SOCKS5_REP_SUCCEEDED, &bnd)) < 0) {
		close(fd);
		worker_conn_give_up(w, c, SOCKS5_REP_GENERAL_FAILURE, "cannot listen");
		return;
	}
	c->tfd = fd; /* closed with the connection while we wait */
	c->state = CONN_BIND_WAIT;
	c->result = SOCKS5_REP_SUCCEEDED;
	conn_timer_set(&w->conns, c, TIMER_BIND, w->now_ms);
	arm_watch(w, c);
	/* the peer may connect at once: the kernel queues it; we accept once the reply is out,
	 * so that the second reply can never overtake the first */
	worker_send_reply(w, c, reply, (size_t)n);
}

void bind_sent(struct worker *w, struct conn *c)
{
	if (!(c->pending & CONN_OP_BIT(OP_BIND_ACCEPT)))
		arm_accept(w, c);
}

/* Is the peer's address one of DST.ADDR's (port not compared)? */
static int peer_expected(const struct conn *c, const struct sockaddr_storage *peer)
{
	for (int i = 0; i < c->naddrs; i++) {
		const struct sockaddr_in6 *a = &c->addrs[i];
		if (a->sin6_family != peer->ss_family)
			continue;
		if (a->sin6_family == AF_INET &&
		    ((const struct sockaddr_in *)a)->sin_addr.s_addr ==
		        ((const struct sockaddr_in *)peer)->sin_addr.s_addr)
			return 1;
		if (a->sin6_family == AF_INET6 &&
		    memcmp(&a->sin6_addr, &((const struct sockaddr_in6 *)peer)->sin6_addr, 16) == 0)
			return 1;
	}
	return 0;
}

void bind_on_accept(struct worker *w, struct conn *c, int res)
{
	struct sockaddr_storage peer;
	socklen_t len = sizeof(peer);
	struct socks5_addr a;
	int one = 1, n;

	if (c->state != CONN_BIND_WAIT) {
		if (res >= 0)
			close(res); /* accepted just as we gave up */
		return;
	}
	if (res < 0) {
		if (res == -ECANCELED)
			return;
		if (res == -ECONNABORTED || res == -EINTR || res == -EAGAIN) {
			arm_accept(w, c); /* that peer gave up before we took it */
			return;
		}
		log_warn_limited("BIND: accept: %s", strerror(-res));
		worker_cancel_ops(w, c, CONN_OP_BIT(OP_WATCH_C));
		worker_conn_give_up(w, c, SOCKS5_REP_GENERAL_FAILURE, "accept failed");
		return;
	}
	if (getpeername(res, (struct sockaddr *)&peer, &len) < 0 ||
	    socks5_addr_from_sockaddr(&a, (struct sockaddr *)&peer) < 0) {
		close(res);
		arm_accept(w, c);
		return;
	}
	if (!addr_is_zero(&c->hs.req.dst) && !peer_expected(c, &peer)) {
		char got[64], want[SOCKS5_MAX_NAME + 16];
		w->stats.bind_refused++;
		log_info("BIND: refused a connection from %s (expecting %s)",
		         socks5_addr_str(&a, got, sizeof(got)),
		         socks5_addr_str(&c->hs.req.dst, want, sizeof(want)));
		close(res);
		arm_accept(w, c);
		return;
	}
	worker_cancel_ops(w, c, CONN_OP_BIT(OP_WATCH_C)); /* the relay watches the client now */
	worker_close_fd(w, &c->tfd);                      /* the listening socket */
	c->tfd = res;
	setsockopt(res, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	n = socks5_encode_reply(c->txbuf, CONN_TXBUF, SOCKS5_REP_SUCCEEDED, &a);
	if (n < 0) {
		worker_conn_give_up(w, c, SOCKS5_REP_GENERAL_FAILURE, "cannot encode reply");
		return;
	}
	worker_reply_and_relay(w, c, c->txbuf, (size_t)n);
}

void bind_timeout(struct worker *w, struct conn *c)
{
	/* leave the LISTEN state now: the accept in flight holds the socket until it ends */
	shutdown(c->tfd, SHUT_RDWR);
	worker_cancel_ops(w, c, CONN_OP_BIT(OP_BIND_ACCEPT) | CONN_OP_BIT(OP_WATCH_C));
	worker_conn_give_up(w, c, SOCKS5_REP_TTL_EXPIRED, "no peer connected");
}
