/* upstream.c - the client side of the codec put to work: connect to an upstream SOCKS5 proxy
 * (round-robin over healthy ones, failing over to the next), authenticate, send the request
 * (the client's raw bytes in forwarder mode, a CONNECT to the fixed destination in tunnel
 * mode), and pass the upstream's reply back. The relay then takes over. */
#include "upstream.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "dns.h"
#include "log.h"
#include "udp.h"
#include "worker.h"

_Static_assert(CONFIG_MAX_UPSTREAMS <= 16, "upstream_hs.tried has a bit per upstream");

static struct upstream_hs *uphs(struct worker *w, struct conn *c)
{
	return &w->uphs[conn_index(&w->conns, c)];
}

/* A UDP ASSOCIATE: the client's (forwarder) or a tunnel -U session's. */
static int is_udp(struct worker *w, struct conn *c)
{
	if (c->via == VIA_TUNNEL)
		return udp_is_tunnel(w, c);
	return c->hs.req.cmd == SOCKS5_CMD_UDP_ASSOCIATE;
}

/* The next upstream to try, of those this client has not tried: healthy ones in round-robin
 * order first, then the one whose back-off ends soonest (a back-off is a preference, not a
 * ban). A failover chooses so too: stepping on to the next in the list took a backed-off
 * one (silent, say) before a healthy one after it, and the client waited its whole
 * --connect-timeout there. */
static int pick(struct worker *w, unsigned tried)
{
	int n = w->cfg->nupstreams, best = -1;

	for (int k = 0; k < n; k++) {
		int i = (int)((w->up_rr + (unsigned)k) % (unsigned)n);
		if (tried & (1u << i))
			continue;
		if (w->up_health[i].backoff_until_ms <= w->now_ms) {
			w->up_rr = (unsigned)i + 1;
			return i;
		}
		if (best < 0 ||
		    w->up_health[i].backoff_until_ms < w->up_health[best].backoff_until_ms)
			best = i;
	}
	return best;
}

static void attempt(struct worker *w, struct conn *c)
{
	const struct config_upstream *u;

	if (c->up_tries >= w->cfg->nupstreams) {
		worker_conn_give_up(w, c, SOCKS5_REP_GENERAL_FAILURE, "all upstreams failed");
		return;
	}
	if (c->up_tries == 0)
		uphs(w, c)->tried = 0;
	c->up_i = (uint8_t)pick(w, uphs(w, c)->tried);
	uphs(w, c)->tried |= (uint16_t)(1u << c->up_i);
	c->up_tries++;
	u = &w->cfg->upstreams[c->up_i];
	worker_connect_deadline(w, c);
	c->addr_i = 0;
	c->last_err = EHOSTUNREACH;
	if (u->addr.atyp == SOCKS5_ATYP_DOMAIN) {
		c->state = CONN_RESOLVING;
		/* the attempt number tags the query: a late answer for an earlier attempt
		 * is not applied to this one */
		dns_resolve(w->dns, u->addr.u.name, u->addr.port,
		            conn_ud((enum conn_op)c->up_tries, c->gen, conn_index(&w->conns, c)));
		return;
	}
	struct sockaddr_storage ss;
	socklen_t len;
	socks5_addr_to_sockaddr(&u->addr, &ss, &len);
	memset(&c->addrs[0], 0, sizeof(c->addrs[0]));
	memcpy(&c->addrs[0], &ss, len);
	c->naddrs = 1;
	worker_connect_next(w, c);
}

void upstream_start(struct worker *w, struct conn *c)
{
	c->up_tries = 0;
	attempt(w, c);
}

void upstream_failed(struct worker *w, struct conn *c, const char *reason)
{
	struct upstream_health *h = &w->up_health[c->up_i];

	log_limited(&h->warned, "warn", "upstream %s: %s", w->cfg->upstreams[c->up_i].text, reason);
	h->backoff_ms = h->backoff_ms ? h->backoff_ms * 2 : UPSTREAM_BACKOFF_MIN_MS;
	if (h->backoff_ms > UPSTREAM_BACKOFF_MAX_MS)
		h->backoff_ms = UPSTREAM_BACKOFF_MAX_MS;
	h->backoff_until_ms = w->now_ms + h->backoff_ms;
	worker_close_fd(w, &c->tfd);
	conn_timer_clear(&w->conns, c);
	if (c->pending & UPSTREAM_OPS) {
		/* requests on the old socket may still write into this slot's buffers: cancel
		 * them and try the next upstream once their completions are in */
		worker_cancel_ops(w, c, UPSTREAM_OPS);
		c->state = CONN_UP_RETRY;
		return;
	}
	attempt(w, c);
}

void upstream_timeout(struct worker *w, struct conn *c)
{
	/* the request counts as taken once all of it is out (the codec is in CLI_REPLY as soon
	 * as it is queued); a UDP ASSOCIATE has no destination to reach: its reply is the
	 * upstream's alone */
	if (c->state != CONN_UP_HANDSHAKE || uphs(w, c)->cli.state != SOCKS5_CLI_REPLY ||
	    (c->pending & CONN_OP_BIT(OP_SEND_T)) || is_udp(w, c)) {
		upstream_failed(w, c, "timed out");
		return;
	}
	/* The upstream took our request and is reaching the destination itself (resolving
	 * it, connecting, maybe through a slow DNS): that is the destination's time, not a
	 * fault of the upstream. Trying the next upstream would send the same request again,
	 * and backing this one off would count a slow destination against a healthy proxy.
	 * The client gets reply 6, as for a destination that does not answer in time. */
	worker_cancel_ops(w, c, UPSTREAM_OPS);
	worker_conn_give_up(w, c, SOCKS5_REP_TTL_EXPIRED, "no reply in time from the upstream");
}

void upstream_retry(struct worker *w, struct conn *c)
{
	attempt(w, c);
}

static void send_out(struct worker *w, struct conn *c)
{
	struct upstream_hs *u = uphs(w, c);
	struct io_uring_sqe *sqe = worker_sqe(w);
	io_uring_prep_send(sqe, c->tfd, u->cli.out + u->out_off,
	                   (size_t)(u->cli.out_len - u->out_off), MSG_NOSIGNAL);
	sqe->user_data = worker_op(w, c, OP_SEND_T);
}

static void recv_in(struct worker *w, struct conn *c)
{
	struct upstream_hs *u = uphs(w, c);
	struct io_uring_sqe *sqe = worker_sqe(w);
	io_uring_prep_recv(sqe, c->tfd, u->in + u->in_len, sizeof(u->in) - u->in_len, 0);
	sqe->user_data = worker_op(w, c, OP_RECV_T);
}

void upstream_connected(struct worker *w, struct conn *c)
{
	const struct config_upstream *cu = &w->cfg->upstreams[c->up_i];
	struct upstream_hs *u = uphs(w, c);
	const char *user = cu->has_auth ? cu->user : NULL;
	const char *pass = cu->has_auth ? cu->pass : NULL;
	int ret;

	if (is_udp(w, c)) {
		/* our own socket sends the datagrams, not the address the client announced */
		struct socks5_addr any = {.atyp = SOCKS5_ATYP_IPV4, .len = 4};
		ret = socks5_client_init(&u->cli, SOCKS5_CMD_UDP_ASSOCIATE, &any, user, pass);
	} else if (c->via == VIA_TUNNEL)
		ret = socks5_client_init(&u->cli, SOCKS5_CMD_CONNECT,
		                         &w->cfg->tunnel_dst[c->listener], user, pass);
	else
		ret = socks5_client_init_raw(&u->cli, c->hs.raw, c->hs.raw_len, user, pass);
	if (ret < 0) {
		worker_conn_give_up(w, c, SOCKS5_REP_GENERAL_FAILURE, "cannot build request");
		return;
	}
	c->state = CONN_UP_HANDSHAKE;
	u->in_len = 0;
	u->out_off = 0;
	socks5_client_start(&u->cli);
	/* One request in flight at a time, so none is left over when the relay starts: the
	 * recv is posted once the greeting is out. A recv posted beside the send could
	 * complete first and be posted again; the reply parsed when the send completed then
	 * started the relay with that recv still pending on u->in, and what the upstream
	 * sent next landed there and was lost. An upstream that speaks first is read a
	 * little later, from the socket's queue. */
	send_out(w, c);
}

static void feed(struct worker *w, struct conn *c);

void upstream_on_send(struct worker *w, struct conn *c, int res)
{
	struct upstream_hs *u = uphs(w, c);

	if (res < 0) {
		upstream_failed(w, c, "connection lost during the handshake");
		return;
	}
	u->out_off = (uint16_t)(u->out_off + res);
	if (u->out_off < u->cli.out_len)
		send_out(w, c);
	else if (u->in_len)
		feed(w, c); /* what came with the previous message, pipelined */
	else
		recv_in(w, c);
}

/* The reply (and what followed it) goes to the client, early data to the upstream. */
static void succeeded(struct worker *w, struct conn *c, size_t reply_len, const uint8_t *extra,
                      size_t extra_len)
{
	struct upstream_hs *u = uphs(w, c);
	size_t n = 0;

	w->up_health[c->up_i].backoff_ms = 0;
	w->up_health[c->up_i].backoff_until_ms = 0;
	if (is_udp(w, c)) {
		udp_upstream_ready(w, c, u); /* its reply names our relay socket instead */
		return;
	}
	if (c->via != VIA_TUNNEL) {
		/* the upstream's reply exactly as it came (ibuf keeps the whole message) */
		memcpy(u->tx, u->cli.ibuf, reply_len);
		n = reply_len;
	}
	memcpy(u->tx + n, extra, extra_len);
	n += extra_len;
	c->result = SOCKS5_REP_SUCCEEDED;
	worker_reply_and_relay(w, c, u->tx, n);
}

/* Feed what the upstream sent (u->in[0..in_len)) to the client codec. */
static void feed(struct worker *w, struct conn *c)
{
	struct upstream_hs *u = uphs(w, c);
	size_t pos = 0, n = u->in_len;
	struct socks5_addr a;
	uint8_t code;
	int len;

	while (pos < n) {
		size_t used = 0;
		enum socks5_status st = socks5_client_feed(&u->cli, u->in + pos, n - pos, &used);

		pos += used;
		switch (st) {
		case SOCKS5_NEED_MORE:
			break;
		case SOCKS5_SEND:
			/* one message in flight at a time: keep the rest until it is out */
			memmove(u->in, u->in + pos, n - pos);
			u->in_len = (uint16_t)(n - pos);
			u->out_off = 0;
			send_out(w, c);
			return;
		case SOCKS5_REPLY:
			len = socks5_parse_message(u->cli.ibuf, sizeof(u->cli.ibuf), &code, &a);
			succeeded(w, c, len > 0 ? (size_t)len : 0, u->in + pos, n - pos);
			return;
		default:
			switch (u->cli.err) {
			case -ECONNABORTED:
				/* the upstream answered for the destination: pass its reply on */
				len = socks5_parse_message(u->cli.ibuf, sizeof(u->cli.ibuf), &code,
				                           &a);
				worker_conn_pass_failure(w, c, u->cli.reply, u->cli.ibuf,
				                         len > 0 ? (size_t)len : 0);
				return;
			case -EACCES:
				upstream_failed(w, c, "rejected our username/password");
				return;
			case -ENOTSUP:
				upstream_failed(w, c, "accepts none of our authentication methods");
				return;
			default:
				upstream_failed(w, c, "sent a malformed handshake");
				return;
			}
		}
	}
	u->in_len = 0; /* the codec keeps partial messages itself */
	recv_in(w, c);
}

void upstream_on_recv(struct worker *w, struct conn *c, int res)
{
	struct upstream_hs *u = uphs(w, c);

	if (res <= 0) {
		upstream_failed(w, c,
		                res == 0 ? "closed the connection during the handshake"
		                         : "connection lost during the handshake");
		return;
	}
	u->in_len = (uint16_t)(u->in_len + res);
	feed(w, c);
}
