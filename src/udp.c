/* udp.c - UDP ASSOCIATE (RFC 1928 section 7) on the worker's ring. An association has a socket
 * facing the client (bound where the client reached us) and, made on first use, one socket per
 * address family toward destinations (or toward the upstream's relay). All are read by multishot
 * recvmsg into one per-worker provided-buffer ring and written by SENDMSG straight from the
 * buffer (the SOCKS5 header is stripped by offset, or written into the headroom in front of the
 * data), so no datagram is copied or allocated for. Answers are let back only from addresses
 * the client has sent to. tunnel -U sessions are associations whose client is a local port. */
#include "udp.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conn.h"
#include "dns.h"
#include "log.h"
#include "worker.h"

#define UDP_REARM_AT (UDP_BUF_COUNT / 8) /* free buffers before starved sockets read again */

/* The sockets of an association, in the order of their recv ops (OP_UDP_RECV_C + s). */
enum { S_CLIENT = 0, S_OUT4, S_OUT6, S__COUNT };

enum udp_mode {
	UDP_DIRECT = 0, /* decapsulate, send to DST, encapsulate the answers */
	UDP_FORWARD,    /* forwarder: datagrams as they are to and from the upstream's relay */
	UDP_TUNNEL,     /* tunnel -U: the client is a local sender; encapsulate toward the relay */
};

/* One per buffer: what its send needs until the CQE. */
struct udp_tx {
	struct msghdr mh;
	struct iovec iov;
	struct sockaddr_in6 to; /* big enough for sockaddr_in too */
	uint32_t slot, gen;
	uint8_t toward_client;
	union { /* the source address of an answer on a wildcard tunnel -U port */
		struct cmsghdr align;
		uint8_t buf[CMSG_SPACE(sizeof(struct in6_pktinfo))];
	} ctl;
};

/* A datagram waiting for its destination's name to resolve, or for a tunnel to come up. */
struct udp_wait {
	uint16_t bid;
	uint16_t off; /* where its SOCKS5 header (direct) or its data (tunnel) starts */
	uint32_t len;
};

struct udp_assoc {
	int sock[S__COUNT]; /* -1 when not open */
	uint8_t live;       /* the association exists (from start to udp_release) */
	uint8_t mode;       /* enum udp_mode */
	uint8_t starved;    /* bit per socket whose recv ended for want of buffers */
	uint8_t resolving;  /* the first waiting datagram's name is being resolved */
	uint8_t nwait, whead;
	uint8_t ncontacted, cnext;
	uint8_t client_known;       /* client holds the port to answer to */
	uint8_t client_fixed;       /* the request named the port: only it is accepted */
	uint8_t fd_pair;            /* holds a second descriptor pair (worker_take_fd_pair) */
	uint8_t local_known;        /* tunnel -U on a wildcard address: local is known */
	uint32_t sprev, snext;      /* list of associations with a starved socket */
	uint32_t hnext;             /* tunnel -U: sender hash chain */
	struct sockaddr_in6 client; /* IP of the TCP peer (tunnel: the local sender) */
	struct sockaddr_in6 relay;  /* forwarder / tunnel: the upstream's relay */
	struct in6_addr local;      /* there, where the sender sent to (IPv4: 4 bytes) */
	uint32_t local_if;          /* and its interface (IPv6) */
	struct sockaddr_in6 contacted[UDP_MAX_CONTACTED];
	struct udp_wait wait[UDP_MAX_WAITING];
	uint64_t in, out, dropped;
};

struct udp_worker {
	struct io_uring_buf_ring *br; /* NULL: no provided-buffer rings, UDP is off */
	uint8_t *mem;
	uint32_t mask, nfree;
	struct msghdr rmsg; /* the layout of every received buffer */
	struct udp_tx tx[UDP_BUF_COUNT];
	struct udp_assoc *assoc; /* one per connection slot */
	uint32_t slots;
	uint32_t starved_head;
	/* tunnel -U */
	int local[CONFIG_MAX_LISTEN];
	int nlocal;
	uint32_t local_starved; /* bit per port whose recv ended for want of buffers */
	uint32_t local_any;     /* bit per port bound to a wildcard address (IP_PKTINFO on) */
	uint8_t thdr[CONFIG_MAX_LISTEN][SOCKS5_UDP_MAX_HEADER]; /* header toward each destination */
	uint16_t thdr_len[CONFIG_MAX_LISTEN];
	uint32_t *hash; /* sender -> slot chains */
	uint32_t hmask;
	uint64_t local_dropped;
	uint32_t held; /* buffers held by waiting datagrams, all associations */
};

static struct udp_assoc *assoc_of(struct worker *w, const struct conn *c)
{
	return &w->udp->assoc[conn_index(&w->conns, c)];
}

/* A datagram waits (for its name, or for a tunnel's association) in the buffer it came in,
 * at most UDP_MAX_WAITING an association and UDP_MAX_HELD a worker: associations whose
 * names never resolve could otherwise hold every buffer of the ring for as long as their
 * queries take to fail, and stop all UDP on the worker. NULL: drop it. */
static struct udp_wait *wait_push(struct udp_worker *u, struct udp_assoc *a)
{
	if (a->nwait == UDP_MAX_WAITING || u->held >= UDP_MAX_HELD)
		return NULL;
	u->held++;
	return &a->wait[(a->whead + a->nwait++) % UDP_MAX_WAITING];
}

static struct udp_wait wait_pop(struct udp_worker *u, struct udp_assoc *a)
{
	struct udp_wait q = a->wait[a->whead];

	a->whead = (uint8_t)((a->whead + 1) % UDP_MAX_WAITING);
	a->nwait--;
	u->held--;
	return q;
}

static socklen_t sa_len(int family)
{
	return family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
}

static uint8_t *buf_at(const struct udp_worker *u, uint32_t bid)
{
	return u->mem + (size_t)bid * UDP_BUF_SIZE;
}

/* Same family, address and (unless any_port) port. */
static int sa_equal(const struct sockaddr_in6 *a, const struct sockaddr_in6 *b, int any_port)
{
	if (a->sin6_family != b->sin6_family)
		return 0;
	if (a->sin6_family == AF_INET) {
		const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
		return x->sin_addr.s_addr == y->sin_addr.s_addr &&
		       (any_port || x->sin_port == y->sin_port);
	}
	return memcmp(&a->sin6_addr, &b->sin6_addr, 16) == 0 &&
	       (any_port || a->sin6_port == b->sin6_port);
}

static void sa_copy(struct sockaddr_in6 *dst, const void *src, socklen_t len)
{
	memset(dst, 0, sizeof(*dst));
	memcpy(dst, src, len < sizeof(*dst) ? len : sizeof(*dst));
}

/* ---- buffers ---- */

static void arm_recv(struct worker *w, struct conn *c, int s);
static void arm_local(struct worker *w, int i);

/* Let the sockets that ran out of buffers read again. */
static void rearm_starved(struct worker *w)
{
	struct udp_worker *u = w->udp;

	while (u->starved_head != CONN_NIL) {
		uint32_t idx = u->starved_head;
		struct udp_assoc *a = &u->assoc[idx];
		struct conn *c = &w->conns.slots[idx];
		uint8_t bits = a->starved;

		u->starved_head = a->snext;
		if (a->snext != CONN_NIL)
			u->assoc[a->snext].sprev = CONN_NIL;
		a->snext = a->sprev = CONN_NIL;
		a->starved = 0;
		for (int s = 0; s < S__COUNT; s++)
			if ((bits & (1u << s)) && c->state == CONN_UDP)
				arm_recv(w, c, s);
	}
	for (int i = 0; i < u->nlocal; i++) {
		if (u->local_starved & (1u << i)) {
			u->local_starved &= ~(1u << i);
			arm_local(w, i);
		}
	}
}

static void buf_put(struct worker *w, uint32_t bid)
{
	struct udp_worker *u = w->udp;

	io_uring_buf_ring_add(u->br, buf_at(u, bid), UDP_BUF_SIZE, (unsigned short)bid,
	                      (int)u->mask, 0);
	io_uring_buf_ring_advance(u->br, 1);
	u->nfree++;
	if (u->nfree >= UDP_REARM_AT && (u->starved_head != CONN_NIL || u->local_starved))
		rearm_starved(w);
}

/* Nothing was starved so far: say once that the ring ran dry (then reading stops). */
static void note_dry(struct worker *w)
{
	if (w->udp->starved_head == CONN_NIL && !w->udp->local_starved)
		log_info(
		    "UDP: worker %d ran out of datagram buffers; reading resumes as they return",
		    w->id);
}

static void starve(struct worker *w, struct conn *c, int s)
{
	struct udp_worker *u = w->udp;
	struct udp_assoc *a = assoc_of(w, c);
	uint32_t idx = conn_index(&w->conns, c);

	if (u->nfree >= UDP_REARM_AT) {
		/* buffers came back before we saw the -ENOBUFS: read again at once */
		arm_recv(w, c, s);
		return;
	}
	note_dry(w);
	if (!a->starved) {
		a->sprev = CONN_NIL;
		a->snext = u->starved_head;
		if (u->starved_head != CONN_NIL)
			u->assoc[u->starved_head].sprev = idx;
		u->starved_head = idx;
	}
	a->starved |= (uint8_t)(1u << s);
}

static void unstarve(struct worker *w, struct udp_assoc *a)
{
	struct udp_worker *u = w->udp;

	if (!a->starved)
		return;
	if (a->sprev != CONN_NIL)
		u->assoc[a->sprev].snext = a->snext;
	else
		u->starved_head = a->snext;
	if (a->snext != CONN_NIL)
		u->assoc[a->snext].sprev = a->sprev;
	a->sprev = a->snext = CONN_NIL;
	a->starved = 0;
}

/* ---- set-up ---- */

int udp_init(struct worker *w, uint32_t slots)
{
	struct io_uring_buf_reg reg;
	struct udp_worker *u;
	int ret;

	if (w->cfg->mode == MODE_TUNNEL && w->cfg->nudp == 0)
		return 0; /* a TCP-only tunnel has no use for datagrams */
	u = calloc(1, sizeof(*u));
	if (!u)
		return -ENOMEM;
	w->udp = u;
	u->starved_head = CONN_NIL;
	for (int i = 0; i < CONFIG_MAX_LISTEN; i++)
		u->local[i] = -1;
	u->slots = slots;
	u->assoc = calloc(slots, sizeof(*u->assoc));
	if (!u->assoc)
		return -ENOMEM;
	/* recvmsg layout: io_uring_recvmsg_out, the sender's address, then UDP_HEADROOM bytes of
	 * "control" space that no option fills: room to put a SOCKS5 header in front of the data */
	u->rmsg.msg_namelen = sizeof(struct sockaddr_in6);
	u->rmsg.msg_controllen = UDP_HEADROOM;
	/* liburing 2.3 has no io_uring_setup_buf_ring: map and register the ring ourselves */
	u->br = mmap(NULL, sizeof(struct io_uring_buf) * UDP_BUF_COUNT, PROT_READ | PROT_WRITE,
	             MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
	if (u->br == MAP_FAILED) {
		u->br = NULL;
		return -errno;
	}
	/* untouched pages cost nothing: small datagrams use the first page of each buffer */
	u->mem = mmap(NULL, (size_t)UDP_BUF_COUNT * UDP_BUF_SIZE, PROT_READ | PROT_WRITE,
	              MAP_ANONYMOUS | MAP_PRIVATE | MAP_NORESERVE, -1, 0);
	if (u->mem == MAP_FAILED) {
		u->mem = NULL;
		return -errno;
	}
	io_uring_buf_ring_init(u->br);
	memset(&reg, 0, sizeof(reg));
	reg.ring_addr = (uint64_t)(uintptr_t)u->br;
	reg.ring_entries = UDP_BUF_COUNT;
	reg.bgid = UDP_BGID;
	ret = io_uring_register_buf_ring(&w->ring, &reg, 0);
	if (ret < 0) {
		munmap(u->br, sizeof(struct io_uring_buf) * UDP_BUF_COUNT);
		u->br = NULL;
		if (w->cfg->nudp) {
			log_err("tunnel -U needs provided-buffer rings (kernel 5.19+): %s",
			        strerror(-ret));
			return ret;
		}
		if (w->id == 0)
			log_warn(
			    "UDP ASSOCIATE disabled: no provided-buffer rings (kernel 5.19+): %s",
			    strerror(-ret));
		return 0;
	}
	u->mask = (uint32_t)io_uring_buf_ring_mask(UDP_BUF_COUNT);
	for (uint32_t i = 0; i < UDP_BUF_COUNT; i++)
		io_uring_buf_ring_add(u->br, buf_at(u, i), UDP_BUF_SIZE, (unsigned short)i,
		                      (int)u->mask, (int)i);
	io_uring_buf_ring_advance(u->br, UDP_BUF_COUNT);
	u->nfree = UDP_BUF_COUNT;

	/* tunnel -U: one SO_REUSEPORT socket per worker and port; the kernel keeps a sender on
	 * one worker (it hashes the addresses), so each worker knows its senders alone */
	if (w->cfg->nudp) {
		uint32_t n = 1;
		while (n < slots * 2)
			n <<= 1;
		u->hash = malloc(sizeof(*u->hash) * n);
		if (!u->hash)
			return -ENOMEM;
		for (uint32_t i = 0; i < n; i++)
			u->hash[i] = CONN_NIL;
		u->hmask = n - 1;
	}
	for (int i = 0; i < w->cfg->nudp; i++) {
		const struct sockaddr_storage *ss = &w->cfg->udp_listen[i];
		int one = 1, fd, hl;

		hl = socks5_udp_encode_header(u->thdr[i], sizeof(u->thdr[i]), 0,
		                              &w->cfg->udp_dst[i]);
		if (hl < 0)
			return hl;
		u->thdr_len[i] = (uint16_t)hl;
		fd = socket(ss->ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (fd < 0)
			return -errno;
		u->local[i] = fd;
		u->nlocal = i + 1;
		/* on a wildcard address, answers must leave from the address each sender sent
		 * to: the routing's choice of source is another address where the host has
		 * several, and a sender's connected socket (as resolvers use) drops them */
		if (addr_is_any((const struct sockaddr *)ss))
			u->local_any |= 1u << i;
		if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0 ||
		    (ss->ss_family == AF_INET6 &&
		     setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) < 0) ||
		    ((u->local_any & (1u << i)) &&
		     (ss->ss_family == AF_INET
		          ? setsockopt(fd, IPPROTO_IP, IP_PKTINFO, &one, sizeof(one))
		          : setsockopt(fd, IPPROTO_IPV6, IPV6_RECVPKTINFO, &one, sizeof(one))) <
		         0) ||
		    bind(fd, (const struct sockaddr *)ss, w->cfg->udp_listen_len[i]) < 0) {
			struct socks5_addr a;
			char text[64] = "?";
			ret = -errno;
			if (socks5_addr_from_sockaddr(&a, (const struct sockaddr *)ss) == 0)
				socks5_addr_str(&a, text, sizeof(text));
			log_err("tunnel -U: cannot bind %s/udp: %s", text, strerror(-ret));
			return ret;
		}
		arm_local(w, i);
	}
	return 0;
}

void udp_destroy(struct worker *w)
{
	struct udp_worker *u = w->udp;

	if (!u)
		return;
	for (int i = 0; i < u->nlocal; i++)
		if (u->local[i] >= 0)
			close(u->local[i]);
	if (u->br)
		munmap(u->br, sizeof(struct io_uring_buf) * UDP_BUF_COUNT);
	if (u->mem)
		munmap(u->mem, (size_t)UDP_BUF_COUNT * UDP_BUF_SIZE);
	free(u->assoc);
	free(u->hash);
	free(u);
	w->udp = NULL;
}

int udp_supported(const struct worker *w)
{
	return w->udp && w->udp->br;
}

uint32_t udp_bufs_lent(const struct worker *w)
{
	return udp_supported(w) ? UDP_BUF_COUNT - w->udp->nfree : 0;
}

int udp_is_tunnel(const struct worker *w, const struct conn *c)
{
	const struct udp_assoc *a;

	if (!w->udp || !w->udp->assoc)
		return 0;
	a = &w->udp->assoc[conn_index(&w->conns, c)];
	return a->live && a->mode == UDP_TUNNEL;
}

static struct udp_assoc *assoc_init(struct worker *w, struct conn *c, enum udp_mode mode)
{
	struct udp_assoc *a = assoc_of(w, c);

	memset(a, 0, sizeof(*a));
	for (int s = 0; s < S__COUNT; s++)
		a->sock[s] = -1;
	a->sprev = a->snext = a->hnext = CONN_NIL;
	a->mode = (uint8_t)mode;
	a->live = 1;
	return a;
}

/* An association of a client (direct or forwarder) holds its TCP connection's descriptor (and
 * the upstream's), the client-facing UDP socket and one per family toward destinations: up
 * to four, a second pair beside the connection's. Without it there is no association: the
 * client is told at once (reply 1), where once it was told yes and then its datagrams were
 * dropped when a socket toward a destination could not be opened (EMFILE). */
static int assoc_take_fds(struct worker *w, struct conn *c, struct udp_assoc *a)
{
	if (worker_take_fd_pair() < 0) {
		a->live = 0;
		log_warn_limited("UDP ASSOCIATE refused: the descriptor limit leaves room for %ld "
		                 "connections, an association counting as two",
		                 worker_fd_pairs_max);
		worker_conn_give_up(w, c, SOCKS5_REP_GENERAL_FAILURE, "descriptor limit");
		return -1;
	}
	a->fd_pair = 1;
	return 0;
}

static void assoc_put_fds(struct udp_assoc *a)
{
	if (a->fd_pair)
		worker_put_fd_pair();
	a->fd_pair = 0;
}

static void arm_recv(struct worker *w, struct conn *c, int s)
{
	struct udp_assoc *a = assoc_of(w, c);
	enum conn_op op = (enum conn_op)(OP_UDP_RECV_C + s);
	struct io_uring_sqe *sqe;

	if (a->sock[s] < 0 || (c->pending & CONN_OP_BIT(op)))
		return;
	sqe = worker_sqe(w);
	io_uring_prep_recvmsg_multishot(sqe, a->sock[s], &w->udp->rmsg, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = UDP_BGID;
	sqe->user_data = worker_op(w, c, op);
}

static void arm_watch(struct worker *w, struct conn *c, int fd, enum conn_op op)
{
	struct io_uring_sqe *sqe = worker_sqe(w);
	/* one-shot: completes when the peer hangs up; data it sends stays in the socket */
	io_uring_prep_poll_add(sqe, fd, POLLRDHUP);
	sqe->user_data = worker_op(w, c, op);
}

/* The client-facing socket, bound where the client reached us (getsockname of its TCP
 * connection), on an ephemeral port; *bnd receives its address. Returns 0 or -errno. */
static int open_client_socket(struct conn *c, struct udp_assoc *a, struct socks5_addr *bnd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	int one = 1, fd;

	if (getsockname(c->cfd, (struct sockaddr *)&ss, &len) < 0)
		return -errno;
	if (ss.ss_family == AF_INET)
		((struct sockaddr_in *)&ss)->sin_port = 0;
	else
		((struct sockaddr_in6 *)&ss)->sin6_port = 0;
	fd = socket(ss.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if ((ss.ss_family == AF_INET6 &&
	     setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) < 0) ||
	    bind(fd, (struct sockaddr *)&ss, sa_len(ss.ss_family)) < 0 ||
	    getsockname(fd, (struct sockaddr *)&ss, &(socklen_t){sizeof(ss)}) < 0 ||
	    socks5_addr_from_sockaddr(bnd, (struct sockaddr *)&ss) < 0) {
		int err = -errno;
		close(fd);
		return err ? err : -EINVAL;
	}
	a->sock[S_CLIENT] = fd;
	return 0;
}

/* Whose datagrams the client-facing socket takes: the TCP peer's IP (and the port the request
 * named, when it named one). */
static int set_client(struct conn *c, struct udp_assoc *a, uint16_t port)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);

	if (getpeername(c->cfd, (struct sockaddr *)&ss, &len) < 0)
		return -errno;
	sa_copy(&a->client, &ss, len);
	a->client.sin6_port = htons(port); /* sin_port sits at the same offset */
	a->client_fixed = a->client_known = port != 0;
	return 0;
}

/* The association is up: reply (unless a tunnel), watch the control connection(s), read. */
static void assoc_go(struct worker *w, struct conn *c, const struct socks5_addr *bnd)
{
	uint8_t reply[SOCKS5_MAX_REPLY];
	int n = 0;

	if (bnd && (n = socks5_encode_reply(reply, sizeof(reply), SOCKS5_REP_SUCCEEDED, bnd)) < 0) {
		worker_conn_give_up(w, c, SOCKS5_REP_GENERAL_FAILURE, "cannot encode reply");
		return;
	}
	c->state = CONN_UDP;
	c->result = SOCKS5_REP_SUCCEEDED;
	conn_timer_set(&w->conns, c, TIMER_UDP_IDLE, w->now_ms);
	if (c->cfd >= 0)
		arm_watch(w, c, c->cfd, OP_WATCH_C);
	if (c->tfd >= 0)
		arm_watch(w, c, c->tfd, OP_WATCH_T);
	arm_recv(w, c, S_CLIENT);
	if (n > 0)
		worker_send_reply(w, c, reply, (size_t)n);
}

void udp_start(struct worker *w, struct conn *c)
{
	struct socks5_addr bnd;
	struct udp_assoc *a;
	int err;

	if (!udp_supported(w)) {
		worker_conn_give_up(w, c, SOCKS5_REP_CMD_NOT_SUPPORTED, "no UDP");
		return;
	}
	a = assoc_init(w, c, UDP_DIRECT);
	if (assoc_take_fds(w, c, a) < 0)
		return;
	if ((err = set_client(c, a, c->hs.req.dst.port)) < 0 ||
	    (err = open_client_socket(c, a, &bnd)) < 0) {
		a->live = 0;
		assoc_put_fds(a);
		log_warn_limited("UDP ASSOCIATE: cannot open the relay socket: %s", strerror(-err));
		worker_conn_give_up(w, c, SOCKS5_REP_GENERAL_FAILURE, "no relay socket");
		return;
	}
	assoc_go(w, c, &bnd);
}

static void send_waiting(struct worker *w, struct conn *c, struct udp_assoc *a);
static void session_unhash(struct worker *w, struct conn *c, struct udp_assoc *a);

static void relay_known(struct worker *w, struct conn *c, struct sockaddr_in6 *to);

void udp_upstream_ready(struct worker *w, struct conn *c, struct upstream_hs *u)
{
	struct sockaddr_storage proxy, relay;
	socklen_t plen = sizeof(proxy), rlen = sizeof(relay);
	struct sockaddr_in6 to;

	if (u->cli.bnd.atyp == SOCKS5_ATYP_DOMAIN && u->cli.bnd.port != 0 &&
	    strlen(u->cli.bnd.u.name) == u->cli.bnd.len) {
		/* RFC 1928 lets a reply name its address by a domain: resolved as a request's
		 * would be (udp_relay_resolved); the state stays CONN_UP_HANDSHAKE meanwhile,
		 * under the connect deadline */
		dns_resolve(w->dns, u->cli.bnd.u.name, u->cli.bnd.port,
		            conn_ud((enum conn_op)(CONN_RESOLVE_RELAY | c->up_tries), c->gen,
		                    conn_index(&w->conns, c)));
		return;
	}
	if (getpeername(c->tfd, (struct sockaddr *)&proxy, &plen) < 0 ||
	    socks5_client_udp_relay(&u->cli, (struct sockaddr *)&proxy, &relay, &rlen) < 0) {
		worker_conn_give_up(w, c, SOCKS5_REP_GENERAL_FAILURE,
		                    "the upstream's UDP relay address is not usable");
		return;
	}
	sa_copy(&to, &relay, rlen);
	relay_known(w, c, &to);
}

void udp_relay_resolved(struct worker *w, struct conn *c, int status,
                        const struct sockaddr_in6 *addrs, int n)
{
	struct sockaddr_in6 to;

	if (status < 0 || n < 1) {
		worker_conn_give_up(w, c, SOCKS5_REP_GENERAL_FAILURE,
		                    "the upstream's UDP relay name does not resolve");
		return;
	}
	to = addrs[0]; /* datagrams have no connect to fail over with: the first address */
	relay_known(w, c, &to);
}

/* The upstream's relay is at *to: open the association (and reply, unless a tunnel). */
static void relay_known(struct worker *w, struct conn *c, struct sockaddr_in6 *to)
{
	struct socks5_addr bnd;
	struct udp_assoc *a;
	int tunnel = udp_is_tunnel(w, c), err;

	/* An upstream on a dual-stack socket names its relay ::ffff:a.b.c.d: our IPv6 sockets
	 * are IPv6-only and could not send there, so every datagram was dropped. */
	worker_unmap_v4(to);
	if (tunnel) {
		a = assoc_of(w, c);
		a->relay = *to;
		assoc_go(w, c, NULL);
		send_waiting(w, c, a);
		return;
	}
	/* forwarder: the client talks to our relay socket, which passes datagrams on as-is */
	a = assoc_init(w, c, UDP_FORWARD);
	if (assoc_take_fds(w, c, a) < 0)
		return;
	a->relay = *to;
	if ((err = set_client(c, a, c->hs.req.dst.port)) < 0 ||
	    (err = open_client_socket(c, a, &bnd)) < 0) {
		a->live = 0;
		assoc_put_fds(a);
		log_warn_limited("UDP ASSOCIATE: cannot open the relay socket: %s", strerror(-err));
		worker_conn_give_up(w, c, SOCKS5_REP_GENERAL_FAILURE, "no relay socket");
		return;
	}
	assoc_go(w, c, &bnd);
}

/* ---- datagrams ---- */

static void drop(struct worker *w, struct udp_assoc *a, uint32_t bid)
{
	a->dropped++;
	buf_put(w, bid);
}

/* The socket toward family (made and read on first use: most associations use one family). */
static int out_socket(struct worker *w, struct conn *c, struct udp_assoc *a, int family)
{
	int s = family == AF_INET ? S_OUT4 : S_OUT6, one = 1, fd;
	struct sockaddr_in6 any;

	if (a->sock[s] >= 0)
		return a->sock[s];
	fd = socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	memset(&any, 0, sizeof(any));
	any.sin6_family = (sa_family_t)family; /* the wildcard address, an ephemeral port */
	if ((family == AF_INET6 &&
	     setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) < 0) ||
	    bind(fd, (struct sockaddr *)&any, sa_len(family)) < 0) {
		int err = -errno;
		close(fd);
		return err;
	}
	a->sock[s] = fd;
	arm_recv(w, c, s);
	return fd;
}

/* tx's one control message: level, type and len bytes of data */
static void set_cmsg(struct udp_tx *tx, int level, int type, const void *data, size_t len)
{
	struct cmsghdr *cm;

	memset(&tx->ctl, 0, sizeof(tx->ctl));
	tx->mh.msg_control = tx->ctl.buf;
	tx->mh.msg_controllen = CMSG_SPACE(len);
	cm = CMSG_FIRSTHDR(&tx->mh);
	cm->cmsg_level = level;
	cm->cmsg_type = type;
	cm->cmsg_len = CMSG_LEN(len);
	memcpy(CMSG_DATA(cm), data, len);
}

/* An answer on a wildcard tunnel -U port leaves from where its sender sent to. */
static void set_source(struct udp_tx *tx, const struct udp_assoc *a)
{
	if (a->client.sin6_family == AF_INET) {
		struct in_pktinfo pi = {0};
		memcpy(&pi.ipi_spec_dst, &a->local, 4);
		set_cmsg(tx, IPPROTO_IP, IP_PKTINFO, &pi, sizeof(pi));
	} else {
		struct in6_pktinfo pi = {.ipi6_addr = a->local, .ipi6_ifindex = a->local_if};
		set_cmsg(tx, IPPROTO_IPV6, IPV6_PKTINFO, &pi, sizeof(pi));
	}
}

static void send_buf(struct worker *w, struct conn *c, int fd, uint32_t bid, uint8_t *data,
                     size_t len, const struct sockaddr_in6 *to, int toward_client)
{
	struct udp_tx *tx = &w->udp->tx[bid];
	struct udp_assoc *a = assoc_of(w, c);
	struct io_uring_sqe *sqe;

	tx->to = *to;
	tx->iov.iov_base = data;
	tx->iov.iov_len = len;
	memset(&tx->mh, 0, sizeof(tx->mh));
	tx->mh.msg_name = &tx->to;
	tx->mh.msg_namelen = sa_len(to->sin6_family);
	tx->mh.msg_iov = &tx->iov;
	tx->mh.msg_iovlen = 1;
	if (toward_client && a->local_known)
		set_source(tx, a);
	tx->slot = conn_index(&w->conns, c);
	tx->gen = c->gen;
	tx->toward_client = (uint8_t)toward_client;
	sqe = worker_sqe(w);
	io_uring_prep_sendmsg(sqe, fd, &tx->mh, 0);
	/* the buffer, not the slot, is what the send holds: the CQE finds it by id */
	sqe->user_data = conn_ud(OP_UDP_SEND, 0, bid);
	conn_timer_set(&w->conns, c, TIMER_UDP_IDLE, w->now_ms);
}

static void remember(struct udp_assoc *a, const struct sockaddr_in6 *to)
{
	for (int i = 0; i < a->ncontacted; i++)
		if (sa_equal(&a->contacted[i], to, 0))
			return;
	a->contacted[a->cnext] = *to;
	a->cnext = (uint8_t)((a->cnext + 1) % UDP_MAX_CONTACTED);
	if (a->ncontacted < UDP_MAX_CONTACTED)
		a->ncontacted++;
}

static int contacted(const struct udp_assoc *a, const struct sockaddr_in6 *from)
{
	for (int i = 0; i < a->ncontacted; i++)
		if (sa_equal(&a->contacted[i], from, 0))
			return 1;
	return 0;
}

/* Data from the client (header stripped) to a destination. */
static void send_out(struct worker *w, struct conn *c, struct udp_assoc *a, uint32_t bid,
                     uint8_t *data, size_t len, const struct sockaddr_in6 *to)
{
	int fd;

	if (to->sin6_port == 0) { /* sin_port sits at the same offset */
		drop(w, a, bid);
		return;
	}
	fd = out_socket(w, c, a, to->sin6_family);
	if (fd < 0) {
		log_info("UDP: cannot open a socket toward a destination: %s", strerror(-fd));
		drop(w, a, bid);
		return;
	}
	if (a->mode == UDP_DIRECT)
		remember(a, to);
	send_buf(w, c, fd, bid, data, len, to, 0);
}

/* Prefix data with the SOCKS5 UDP header (written into the headroom before it). */
static uint8_t *encapsulate(uint8_t *data, const uint8_t *hdr, size_t hl)
{
	memcpy(data - hl, hdr, hl);
	return data - hl;
}

static void resolve_next(struct worker *w, struct conn *c, struct udp_assoc *a);

/* Direct mode: a datagram from the client. */
static void client_datagram(struct worker *w, struct conn *c, struct udp_assoc *a, uint32_t bid,
                            uint8_t *data, size_t len)
{
	struct socks5_udp_header h;
	struct sockaddr_storage ss;
	struct sockaddr_in6 to;
	socklen_t sl;
	size_t hl;

	if (socks5_udp_decode(data, len, &h, &hl) < 0 || h.frag != 0) {
		drop(w, a, bid); /* malformed, or a fragment: we do not reassemble */
		return;
	}
	if (h.addr.atyp == SOCKS5_ATYP_DOMAIN) {
		struct udp_wait *q;
		if (strlen(h.addr.u.name) != h.addr.len || !(q = wait_push(w->udp, a))) {
			drop(w, a, bid);
			return;
		}
		q->bid = (uint16_t)bid;
		q->off = (uint16_t)(data - buf_at(w->udp, bid));
		q->len = (uint32_t)len;
		conn_timer_set(&w->conns, c, TIMER_UDP_IDLE, w->now_ms);
		resolve_next(w, c, a);
		return;
	}
	if (socks5_addr_to_sockaddr(&h.addr, &ss, &sl) < 0) {
		drop(w, a, bid);
		return;
	}
	sa_copy(&to, &ss, sl);
	worker_unmap_v4(&to);
	send_out(w, c, a, bid, data + hl, len - hl, &to);
}

/* Resolve the first waiting datagram's name (the answer may come before this returns). */
static void resolve_next(struct worker *w, struct conn *c, struct udp_assoc *a)
{
	while (!a->resolving && a->nwait) {
		struct udp_wait *q = &a->wait[a->whead];
		struct socks5_udp_header h;

		if (socks5_udp_decode(buf_at(w->udp, q->bid) + q->off, q->len, &h, NULL) < 0) {
			drop(w, a, wait_pop(w->udp, a).bid); /* cannot happen: it decoded before */
			continue;
		}
		a->resolving = 1;
		dns_resolve(
		    w->dns, h.addr.u.name, h.addr.port,
		    conn_ud((enum conn_op)CONN_RESOLVE_UDP, c->gen, conn_index(&w->conns, c)));
	}
}

void udp_resolved(struct worker *w, uint64_t ud, int status, const struct sockaddr_in6 *addrs,
                  int n)
{
	struct conn *c = conn_lookup(&w->conns, ud);
	struct udp_assoc *a;
	struct udp_wait q;
	struct socks5_udp_header h;
	size_t hl = 0;

	if (!c || c->state != CONN_UDP || !w->udp)
		return; /* the association is gone; its datagrams went back with it */
	a = assoc_of(w, c);
	if (!a->live || !a->resolving || a->nwait == 0)
		return;
	a->resolving = 0;
	q = wait_pop(w->udp, a);
	if (status < 0 || n == 0 ||
	    socks5_udp_decode(buf_at(w->udp, q.bid) + q.off, q.len, &h, &hl) < 0) {
		drop(w, a, q.bid);
	} else {
		uint8_t *data = buf_at(w->udp, q.bid) + q.off;
		struct sockaddr_in6 to = addrs[0];
		worker_unmap_v4(&to); /* an AAAA of ::ffff:a.b.c.d */
		send_out(w, c, a, q.bid, data + hl, q.len - hl, &to);
	}
	resolve_next(w, c, a);
}

/* A datagram from outside on a socket toward destinations (or the upstream's relay). */
static void remote_datagram(struct worker *w, struct conn *c, struct udp_assoc *a, uint32_t bid,
                            uint8_t *data, size_t len, const struct sockaddr_in6 *from)
{
	struct udp_worker *u = w->udp;
	uint8_t hdr[SOCKS5_UDP_MAX_HEADER];
	struct socks5_udp_header h;
	struct socks5_addr src;
	size_t hl;
	int n;

	switch (a->mode) {
	case UDP_DIRECT:
		/* only from where the client sent: the relay port is no open reflector */
		if (!a->client_known || !contacted(a, from) ||
		    socks5_addr_from_sockaddr(&src, (const struct sockaddr *)from) < 0 ||
		    (n = socks5_udp_encode_header(hdr, sizeof(hdr), 0, &src)) < 0) {
			drop(w, a, bid);
			return;
		}
		send_buf(w, c, a->sock[S_CLIENT], bid, encapsulate(data, hdr, (size_t)n),
		         len + (size_t)n, &a->client, 1);
		return;
	case UDP_FORWARD:
		if (!a->client_known || !sa_equal(from, &a->relay, 0)) {
			drop(w, a, bid);
			return;
		}
		send_buf(w, c, a->sock[S_CLIENT], bid, data, len, &a->client, 1);
		return;
	case UDP_TUNNEL:
		if (!sa_equal(from, &a->relay, 0) || socks5_udp_decode(data, len, &h, &hl) < 0 ||
		    h.frag != 0) {
			drop(w, a, bid);
			return;
		}
		send_buf(w, c, u->local[c->listener], bid, data + hl, len - hl, &a->client, 1);
		return;
	default:
		drop(w, a, bid);
	}
}

/* Parse a received buffer: the sender into *from, the data into *data / *len. */
static int parse(struct udp_worker *u, uint32_t bid, int res, struct sockaddr_in6 *from,
                 uint8_t **data, size_t *len)
{
	struct io_uring_recvmsg_out *o = io_uring_recvmsg_validate(buf_at(u, bid), res, &u->rmsg);

	if (!o || (o->flags & MSG_TRUNC) || o->namelen > sizeof(*from) || o->namelen == 0)
		return -EMSGSIZE; /* a datagram larger than our buffers, or no sender */
	sa_copy(from, io_uring_recvmsg_name(o), o->namelen);
	*data = io_uring_recvmsg_payload(o, &u->rmsg);
	*len = io_uring_recvmsg_payload_length(o, res, &u->rmsg);
	return 0;
}

void udp_on_recv(struct worker *w, struct conn *c, int op, int res, unsigned flags)
{
	struct udp_worker *u = w->udp;
	struct udp_assoc *a = assoc_of(w, c);
	int s = op - OP_UDP_RECV_C;
	int has_buf = (flags & IORING_CQE_F_BUFFER) != 0;
	uint32_t bid = flags >> IORING_CQE_BUFFER_SHIFT;
	struct socks5_udp_header h;
	struct sockaddr_in6 from;
	uint8_t *data;
	size_t len;

	if (has_buf)
		u->nfree--;
	if (c->state != CONN_UDP || !a->live || a->sock[s] < 0) {
		if (has_buf)
			buf_put(w, bid); /* the association is closing */
		return;
	}
	if (res < 0) {
		if (has_buf)
			buf_put(w, bid);
		if (res == -ENOBUFS)
			starve(w, c, s); /* the datagram waits in the socket */
		else if (res != -ECANCELED)
			worker_conn_close(w, c, "UDP socket error");
		return;
	}
	if (has_buf) {
		if (parse(u, bid, res, &from, &data, &len) < 0) {
			drop(w, a, bid);
		} else if (s != S_CLIENT) {
			remote_datagram(w, c, a, bid, data, len, &from);
		} else if (!sa_equal(&from, &a->client, !a->client_fixed)) {
			drop(w, a, bid); /* not from the client */
		} else if (!a->client_fixed && socks5_udp_decode(data, len, &h, NULL) < 0) {
			drop(w, a, bid); /* no client's datagram: it does not choose the port */
		} else {
			/* The first datagram of the client's address (the request named no port)
			 * fixes the port: following every port of that address let the
			 * association's own outgoing socket, which has the client's address when
			 * the client is on this host, become its client, a loop that sent one
			 * datagram round 6500 times; and let any sender there take the answers. */
			a->client = from;
			a->client_known = a->client_fixed = 1;
			if (a->mode == UDP_FORWARD)
				send_out(w, c, a, bid, data, len, &a->relay);
			else
				client_datagram(w, c, a, bid, data, len);
		}
	}
	if (!(flags & IORING_CQE_F_MORE) && c->state == CONN_UDP)
		arm_recv(w, c, s);
}

void udp_send_done(struct worker *w, uint64_t ud, int res)
{
	struct udp_worker *u = w->udp;
	uint32_t bid = conn_ud_idx(ud);
	struct udp_tx *tx;

	if (!u || bid >= UDP_BUF_COUNT)
		return;
	tx = &u->tx[bid];
	if (tx->slot < w->conns.size) {
		struct conn *c = &w->conns.slots[tx->slot];
		struct udp_assoc *a = &u->assoc[tx->slot];
		if (c->gen == tx->gen && c->state == CONN_UDP && a->live) {
			if (res < 0)
				a->dropped++;
			else if (tx->toward_client)
				a->out++, c->dir[DIR_DOWN].bytes += (uint64_t)res;
			else
				a->in++, c->dir[DIR_UP].bytes += (uint64_t)res;
		}
	}
	buf_put(w, bid);
}

void udp_release(struct worker *w, struct conn *c)
{
	struct udp_worker *u = w->udp;
	struct udp_assoc *a;

	if (!u || !u->assoc)
		return;
	a = assoc_of(w, c);
	if (!a->live)
		return;
	assoc_put_fds(a);
	unstarve(w, a);
	if (a->mode == UDP_TUNNEL)
		session_unhash(w, c, a);
	for (int s = 0; s < S__COUNT; s++)
		worker_close_fd(w, &a->sock[s]);
	a->live = 0; /* before the buffers go back: nothing re-arms this association */
	while (a->nwait)
		buf_put(w, wait_pop(w->udp, a).bid);
	a->resolving = 0;
}

void udp_log_counters(const struct worker *w, const struct conn *c, char *buf, size_t cap)
{
	const struct udp_assoc *a;

	buf[0] = '\0';
	if (!w->udp || !w->udp->assoc)
		return;
	a = &w->udp->assoc[conn_index(&w->conns, c)];
	if (a->live)
		snprintf(buf, cap, " udp_in=%llu udp_out=%llu udp_dropped=%llu",
		         (unsigned long long)a->in, (unsigned long long)a->out,
		         (unsigned long long)a->dropped);
}

/* ---- tunnel -U ---- */

static void arm_local(struct worker *w, int i)
{
	struct io_uring_sqe *sqe = worker_sqe(w);

	io_uring_prep_recvmsg_multishot(sqe, w->udp->local[i], &w->udp->rmsg, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = UDP_BGID;
	sqe->user_data = conn_ud(OP_UDP_LOCAL, 0, (uint32_t)i);
}

static uint32_t sender_hash(const struct sockaddr_in6 *a, uint32_t listener)
{
	const uint8_t *p = a->sin6_family == AF_INET
	                       ? (const uint8_t *)&((const struct sockaddr_in *)a)->sin_addr
	                       : a->sin6_addr.s6_addr;
	size_t n = a->sin6_family == AF_INET ? 4 : 16;
	uint32_t h = 2166136261u ^ listener;

	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 16777619u;
	h = (h ^ (a->sin6_port & 0xFFu)) * 16777619u; /* sin_port sits at the same offset */
	return (h ^ (uint32_t)(a->sin6_port >> 8)) * 16777619u;
}

static struct conn *session_find(struct worker *w, uint32_t listener,
                                 const struct sockaddr_in6 *from)
{
	struct udp_worker *u = w->udp;

	for (uint32_t i = u->hash[sender_hash(from, listener) & u->hmask]; i != CONN_NIL;
	     i = u->assoc[i].hnext) {
		if (w->conns.slots[i].listener == listener &&
		    sa_equal(&u->assoc[i].client, from, 0))
			return &w->conns.slots[i];
	}
	return NULL;
}

static void session_unhash(struct worker *w, struct conn *c, struct udp_assoc *a)
{
	struct udp_worker *u = w->udp;
	uint32_t idx = conn_index(&w->conns, c);
	uint32_t *p = &u->hash[sender_hash(&a->client, c->listener) & u->hmask];

	while (*p != CONN_NIL && *p != idx)
		p = &u->assoc[*p].hnext;
	if (*p == idx)
		*p = a->hnext;
	a->hnext = CONN_NIL;
}

/* A new sender on tunnel -U port i: its own association through the proxy. */
static struct conn *session_new(struct worker *w, uint32_t i, const struct sockaddr_in6 *from)
{
	struct udp_worker *u = w->udp;
	struct udp_assoc *a;
	struct conn *c;
	uint32_t *head;
	int ret;

	/* counted and said as for a TCP client (the stats line had sessions that were never
	 * accepted): a refused sender learns nothing from a dropped datagram */
	w->stats.accepted++;
	if ((ret = worker_take_live(w)) < 0) {
		w->stats.refused_limit++;
		if (ret == -1)
			log_warn_limited("tunnel -U: dropping datagrams of new senders: "
			                 "--max-conns %ld reached",
			                 w->cfg->max_conns);
		else
			log_warn_limited("tunnel -U: dropping datagrams of new senders: the "
			                 "descriptor limit leaves room for %ld sessions",
			                 worker_fd_pairs_max);
		return NULL;
	}
	c = conn_alloc(&w->conns);
	if (!c) {
		worker_put_live();
		w->stats.refused_limit++;
		log_warn_limited("tunnel -U: dropping datagrams of new senders: all %u "
		                 "session slots of worker %d in use",
		                 w->conns.size, w->id);
		return NULL;
	}
	c->start_ms = w->now_ms;
	c->listener = (uint8_t)i;
	c->via = VIA_TUNNEL;
	c->peer = *from;
	a = assoc_init(w, c, UDP_TUNNEL);
	a->client = *from;
	a->client_known = 1;
	head = &u->hash[sender_hash(from, i) & u->hmask];
	a->hnext = *head;
	*head = conn_index(&w->conns, c);
	upstream_start(w, c);
	return a->live ? c : NULL; /* every upstream may have failed already */
}

/* Encapsulate toward the fixed destination and send to the proxy's relay. */
static void tunnel_send(struct worker *w, struct conn *c, struct udp_assoc *a, uint32_t bid,
                        uint8_t *data, size_t len)
{
	struct udp_worker *u = w->udp;
	size_t hl = u->thdr_len[c->listener];

	send_out(w, c, a, bid, encapsulate(data, u->thdr[c->listener], hl), len + hl, &a->relay);
}

static void send_waiting(struct worker *w, struct conn *c, struct udp_assoc *a)
{
	while (a->nwait && c->state == CONN_UDP) {
		struct udp_wait q = wait_pop(w->udp, a);
		tunnel_send(w, c, a, q.bid, buf_at(w->udp, q.bid) + q.off, q.len);
	}
}

/* Where a datagram on a wildcard port was sent to (IP_PKTINFO / IPV6_PKTINFO), as an answer's
 * source: the local address it reached (a broadcast's or multicast's is no source). Returns 1
 * if found. The control messages sit in the headroom, unaligned: they are copied out. */
static int local_dst(struct udp_worker *u, uint32_t bid, int res, struct in6_addr *addr,
                     uint32_t *ifindex)
{
	struct io_uring_recvmsg_out *o = io_uring_recvmsg_validate(buf_at(u, bid), res, &u->rmsg);
	uint8_t *p;
	size_t left;

	if (!o)
		return 0;
	p = (uint8_t *)io_uring_recvmsg_name(o) + u->rmsg.msg_namelen;
	left = o->controllen;
	while (left >= sizeof(struct cmsghdr)) {
		struct cmsghdr cm;
		memcpy(&cm, p, sizeof(cm));
		if (cm.cmsg_len < sizeof(cm) || cm.cmsg_len > left)
			break;
		if (cm.cmsg_level == IPPROTO_IP && cm.cmsg_type == IP_PKTINFO &&
		    cm.cmsg_len >= CMSG_LEN(sizeof(struct in_pktinfo))) {
			struct in_pktinfo pi;
			memcpy(&pi, p + CMSG_LEN(0), sizeof(pi));
			memset(addr, 0, sizeof(*addr));
			memcpy(addr, &pi.ipi_spec_dst, 4); /* ipi_addr may be a broadcast */
			*ifindex = 0;
			return 1;
		}
		if (cm.cmsg_level == IPPROTO_IPV6 && cm.cmsg_type == IPV6_PKTINFO &&
		    cm.cmsg_len >= CMSG_LEN(sizeof(struct in6_pktinfo))) {
			struct in6_pktinfo pi;
			memcpy(&pi, p + CMSG_LEN(0), sizeof(pi));
			if (IN6_IS_ADDR_MULTICAST(&pi.ipi6_addr))
				return 0;
			*addr = pi.ipi6_addr;
			*ifindex = (uint32_t)pi.ipi6_ifindex;
			return 1;
		}
		if (CMSG_ALIGN(cm.cmsg_len) >= left)
			break;
		p += CMSG_ALIGN(cm.cmsg_len);
		left -= CMSG_ALIGN(cm.cmsg_len);
	}
	return 0;
}

static void local_datagram(struct worker *w, uint32_t i, uint32_t bid, int res)
{
	struct udp_worker *u = w->udp;
	struct sockaddr_in6 from;
	struct in6_addr dst;
	uint32_t dst_if = 0;
	struct udp_assoc *a;
	struct conn *c;
	uint8_t *data;
	size_t len;
	int dst_known;

	if (parse(u, bid, res, &from, &data, &len) < 0) {
		u->local_dropped++;
		buf_put(w, bid);
		return;
	}
	/* before the header goes into the headroom, over the control messages */
	dst_known = (u->local_any & (1u << i)) && local_dst(u, bid, res, &dst, &dst_if);
	c = session_find(w, i, &from);
	if (!c)
		c = session_new(w, i, &from);
	if (!c) {
		u->local_dropped++; /* out of slots, or the proxy is unreachable */
		buf_put(w, bid);
		return;
	}
	a = assoc_of(w, c);
	if (dst_known) {
		a->local = dst;
		a->local_if = dst_if;
		a->local_known = 1;
	}
	if (c->state != CONN_UDP) {
		/* the association is being set up: keep a few datagrams for then */
		struct udp_wait *q = wait_push(u, a);
		if (!q) {
			drop(w, a, bid);
			return;
		}
		q->bid = (uint16_t)bid;
		q->off = (uint16_t)(data - buf_at(u, bid));
		q->len = (uint32_t)len;
		return;
	}
	tunnel_send(w, c, a, bid, data, len);
}

void udp_local_event(struct worker *w, uint32_t i, int res, unsigned flags)
{
	struct udp_worker *u = w->udp;
	int has_buf = (flags & IORING_CQE_F_BUFFER) != 0;
	uint32_t bid = flags >> IORING_CQE_BUFFER_SHIFT;

	if (!u)
		return;
	if (has_buf)
		u->nfree--;
	if ((int)i >= u->nlocal || atomic_load(&w->stop)) {
		if (has_buf)
			buf_put(w, bid);
		return;
	}
	if (res < 0) {
		if (has_buf)
			buf_put(w, bid);
		if (res == -ENOBUFS) {
			if (u->nfree >= UDP_REARM_AT) {
				arm_local(w, (int)i);
			} else {
				note_dry(w);
				u->local_starved |= 1u << i;
			}
		} else if (res != -ECANCELED) {
			struct socks5_addr a;
			char text[64] = "?";
			if (socks5_addr_from_sockaddr(
			        &a, (const struct sockaddr *)&w->cfg->udp_listen[i]) == 0)
				socks5_addr_str(&a, text, sizeof(text));
			log_err("tunnel -U: worker %d stopped receiving on %s/udp: %s", w->id, text,
			        strerror(-res));
		}
		return;
	}
	if (has_buf)
		local_datagram(w, i, bid, res);
	if (!(flags & IORING_CQE_F_MORE))
		arm_local(w, (int)i);
}
