/* socks5.c - the sans-I/O SOCKS5 codec: server and client handshake state machines fed with
 * bytes, plus message encoders, a parser, address helpers and the UDP datagram header. No
 * sockets, no allocation and no global state here; the caller owns every byte and does all I/O. */
#include "ringsocks/socks5.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

/* Fixed part of a request/reply around the address: VER CMD RSV ATYP ... PORT[2]. */
#define MSG_HEAD 4
#define MSG_PORT 2

/* Where each server phase writes its answer in obuf. Answers never share bytes, so an answer
 * still being sent (05 00 while the pipelined request is fed) is not overwritten by a later one. */
#define SRV_OUT_GREETING    0
#define SRV_OUT_AUTH        2
#define SRV_OUT_REQUEST     4
#define SRV_ERROR_REPLY_LEN 10 /* 05 REP 00 01 0.0.0.0 0 */

/* ---- messages ---- */

/* Bytes in the address part of a (valid) a, or -EINVAL. */
static int addr_wire_len(const struct socks5_addr *a)
{
	if (!a)
		return -EINVAL;
	switch (a->atyp) {
	case SOCKS5_ATYP_IPV4:
		return a->len == 4 ? 4 : -EINVAL;
	case SOCKS5_ATYP_IPV6:
		return a->len == 16 ? 16 : -EINVAL;
	case SOCKS5_ATYP_DOMAIN:
		return a->len >= 1 ? 1 + a->len : -EINVAL;
	default:
		return -EINVAL;
	}
}

static int encode_message(uint8_t *out, size_t cap, uint8_t code, const struct socks5_addr *a)
{
	static const struct socks5_addr any = {.atyp = SOCKS5_ATYP_IPV4, .len = 4};
	int alen, n;
	uint8_t *p;

	if (!a)
		a = &any;
	alen = addr_wire_len(a);
	if (alen < 0)
		return alen;
	n = MSG_HEAD + alen + MSG_PORT;
	if (!out || cap < (size_t)n)
		return -ENOSPC;
	out[0] = SOCKS5_VERSION;
	out[1] = code;
	out[2] = 0; /* RSV */
	out[3] = a->atyp;
	p = out + MSG_HEAD;
	if (a->atyp == SOCKS5_ATYP_DOMAIN)
		*p++ = a->len;
	memcpy(p, &a->u, a->len); /* every member starts at the union */
	p += a->len;
	p[0] = (uint8_t)(a->port >> 8);
	p[1] = (uint8_t)a->port;
	return n;
}

/* How many bytes of the request/reply starting at m must be buffered before the next decision,
 * given that `have` are: the whole length once it is known (so a result <= have means the
 * message is complete), or a negative reply code as soon as the message is known to be bad.
 * Asking for no more than the next decision point lets callers stop at the first bad byte. */
static int message_need(const uint8_t *m, size_t have)
{
	if (have < 1)
		return 1;
	if (m[0] != SOCKS5_VERSION)
		return -SOCKS5_REP_GENERAL_FAILURE;
	if (have < MSG_HEAD)
		return MSG_HEAD;
	switch (m[3]) {
	case SOCKS5_ATYP_IPV4:
		return MSG_HEAD + 4 + MSG_PORT;
	case SOCKS5_ATYP_IPV6:
		return MSG_HEAD + 16 + MSG_PORT;
	case SOCKS5_ATYP_DOMAIN:
		if (have < MSG_HEAD + 1)
			return MSG_HEAD + 1;
		if (m[MSG_HEAD] == 0)
			return -SOCKS5_REP_GENERAL_FAILURE;
		return MSG_HEAD + 1 + m[MSG_HEAD] + MSG_PORT;
	default:
		return -SOCKS5_REP_ATYP_NOT_SUPPORTED;
	}
}

/* Address and port of a complete message already checked by message_need. */
static void message_addr(const uint8_t *m, struct socks5_addr *a)
{
	const uint8_t *p = m + MSG_HEAD;

	memset(a, 0, sizeof(*a));
	a->atyp = m[3];
	switch (a->atyp) {
	case SOCKS5_ATYP_IPV4:
		a->len = 4;
		memcpy(a->u.ipv4, p, 4);
		break;
	case SOCKS5_ATYP_IPV6:
		a->len = 16;
		memcpy(a->u.ipv6, p, 16);
		break;
	default: /* SOCKS5_ATYP_DOMAIN */
		a->len = *p++;
		memcpy(a->u.name, p, a->len);
		a->u.name[a->len] = '\0';
		break;
	}
	p += a->len;
	a->port = (uint16_t)(p[0] << 8 | p[1]);
}

int socks5_encode_request(uint8_t *out, size_t cap, uint8_t cmd, const struct socks5_addr *dst)
{
	if (!dst)
		return -EINVAL;
	return encode_message(out, cap, cmd, dst);
}

int socks5_encode_reply(uint8_t *out, size_t cap, uint8_t rep, const struct socks5_addr *bnd)
{
	return encode_message(out, cap, rep, bnd);
}

int socks5_parse_message(const uint8_t *in, size_t len, uint8_t *code, struct socks5_addr *addr)
{
	int need = message_need(in, len);

	if (need < 0)
		return need;
	if (len < (size_t)need)
		return 0;
	if (code)
		*code = in[1];
	if (addr)
		message_addr(in, addr);
	return need;
}

/* ---- server ---- */

void socks5_server_init(struct socks5_server *s, unsigned offer)
{
	memset(s, 0, sizeof(*s));
	s->state = SOCKS5_SRV_GREETING;
	s->offer = (uint8_t)(offer & (SOCKS5_OFFER_NOAUTH | SOCKS5_OFFER_USERPASS));
	s->method = SOCKS5_METHOD_NONE;
}

/* Ends the handshake; the answer (out_len bytes, possibly none) is already at obuf + off. */
static enum socks5_status server_fail(struct socks5_server *s, int err, uint8_t reply, size_t off,
                                      uint16_t out_len)
{
	s->state = SOCKS5_SRV_FAILED;
	s->err = err;
	s->reply = reply;
	s->out = s->obuf + off;
	s->out_len = out_len;
	return SOCKS5_ERROR;
}

/* A two-byte answer "ver code" to a greeting or an auth message. */
static enum socks5_status server_fail_pair(struct socks5_server *s, int err, size_t off,
                                           uint8_t ver, uint8_t code)
{
	s->obuf[off] = ver;
	s->obuf[off + 1] = code;
	return server_fail(s, err, code, off, 2);
}

/* A reply to a bad request: code rep, BND 0.0.0.0:0. */
static enum socks5_status server_fail_request(struct socks5_server *s, int err, uint8_t rep)
{
	socks5_encode_reply(s->obuf + SRV_OUT_REQUEST, SRV_ERROR_REPLY_LEN, rep, NULL);
	return server_fail(s, err, rep, SRV_OUT_REQUEST, SRV_ERROR_REPLY_LEN);
}

/* The caller broke the protocol of this API (fed a finished handshake, ...): nothing to send. */
static enum socks5_status server_misuse(struct socks5_server *s)
{
	s->state = SOCKS5_SRV_FAILED;
	s->err = -EINVAL;
	s->out = s->obuf;
	s->out_len = 0;
	return SOCKS5_ERROR;
}

static enum socks5_status server_send(struct socks5_server *s, size_t off, uint8_t ver,
                                      uint8_t code)
{
	s->obuf[off] = ver;
	s->obuf[off + 1] = code;
	s->out = s->obuf + off;
	s->out_len = 2;
	return SOCKS5_SEND;
}

/* Bytes the current message needs buffered before the next decision (see message_need), or -1
 * once the handshake has failed on the bytes buffered so far. */
static int server_need(struct socks5_server *s)
{
	const uint8_t *b = s->buf;
	int need;

	switch (s->state) {
	case SOCKS5_SRV_GREETING:
		if (s->have < 1)
			return 1;
		if (b[0] != SOCKS5_VERSION) {
			/* Not SOCKS5 (HTTP, SOCKS4): it would not understand an answer. */
			server_fail(s, -EPROTO, SOCKS5_METHOD_NONE, SRV_OUT_GREETING, 0);
			return -1;
		}
		if (s->have < 2)
			return 2;
		if (b[1] == 0) {
			server_fail_pair(s, -EPROTO, SRV_OUT_GREETING, SOCKS5_VERSION,
			                 SOCKS5_METHOD_NONE);
			return -1;
		}
		return 2 + b[1];
	case SOCKS5_SRV_AUTH:
		if (s->have < 1)
			return 1;
		if (b[0] != SOCKS5_AUTH_VERSION) {
			server_fail_pair(s, -EPROTO, SRV_OUT_AUTH, SOCKS5_AUTH_VERSION, 1);
			return -1;
		}
		if (s->have < 2)
			return 2;
		if (b[1] == 0) {
			server_fail_pair(s, -EPROTO, SRV_OUT_AUTH, SOCKS5_AUTH_VERSION, 1);
			return -1;
		}
		if (s->have < 3 + b[1])
			return 3 + b[1];
		return 3 + b[1] + b[2 + b[1]];
	case SOCKS5_SRV_REQUEST:
		need = message_need(b, s->have);
		if (need == -SOCKS5_REP_ATYP_NOT_SUPPORTED) {
			server_fail_request(s, -EAFNOSUPPORT, SOCKS5_REP_ATYP_NOT_SUPPORTED);
			return -1;
		}
		if (need < 0) {
			server_fail_request(s, -EPROTO, SOCKS5_REP_GENERAL_FAILURE);
			return -1;
		}
		return need;
	default:
		return -1; /* not reached: feed checks the state */
	}
}

static enum socks5_status server_greeting_done(struct socks5_server *s)
{
	int noauth = 0, userpass = 0;

	for (unsigned i = 0; i < s->buf[1]; i++) {
		noauth |= s->buf[2 + i] == SOCKS5_METHOD_NOAUTH;
		userpass |= s->buf[2 + i] == SOCKS5_METHOD_USERPASS;
	}
	if (userpass && (s->offer & SOCKS5_OFFER_USERPASS)) {
		s->method = SOCKS5_METHOD_USERPASS;
		s->state = SOCKS5_SRV_AUTH;
	} else if (noauth && (s->offer & SOCKS5_OFFER_NOAUTH)) {
		s->method = SOCKS5_METHOD_NOAUTH;
		s->state = SOCKS5_SRV_REQUEST;
	} else {
		return server_fail_pair(s, -ENOTSUP, SRV_OUT_GREETING, SOCKS5_VERSION,
		                        SOCKS5_METHOD_NONE);
	}
	return server_send(s, SRV_OUT_GREETING, SOCKS5_VERSION, s->method);
}

static enum socks5_status server_auth_done(struct socks5_server *s)
{
	uint8_t *b = s->buf;

	s->user_len = b[1];
	s->pass_len = b[2 + s->user_len];
	/* NUL-terminate in place: the user's NUL takes the PLEN byte, already read. */
	b[2 + s->user_len] = '\0';
	b[3 + s->user_len + s->pass_len] = '\0';
	s->user = (const char *)b + 2;
	s->pass = (const char *)b + 3 + s->user_len;
	s->state = SOCKS5_SRV_AUTH_CHECK;
	return SOCKS5_CHECK_AUTH;
}

static enum socks5_status server_request_done(struct socks5_server *s)
{
	s->req.cmd = s->buf[1];
	message_addr(s->buf, &s->req.dst);
	switch (s->req.cmd) {
	case SOCKS5_CMD_CONNECT:
	case SOCKS5_CMD_BIND:
	case SOCKS5_CMD_UDP_ASSOCIATE:
		break;
	default:
		return server_fail_request(s, -EOPNOTSUPP, SOCKS5_REP_CMD_NOT_SUPPORTED);
	}
	s->raw = s->buf;
	s->raw_len = s->have;
	s->state = SOCKS5_SRV_DONE;
	return SOCKS5_REQUEST;
}

enum socks5_status socks5_server_feed(struct socks5_server *s, const uint8_t *in, size_t len,
                                      size_t *consumed)
{
	enum socks5_status st;
	size_t used = 0, n;
	int need;

	*consumed = 0;
	switch (s->state) {
	case SOCKS5_SRV_GREETING:
	case SOCKS5_SRV_AUTH:
	case SOCKS5_SRV_REQUEST:
		break;
	default:
		return server_misuse(s);
	}
	/* Take bytes only up to the next decision point, so the input is never read past the
	 * end of the current message (or past the byte that makes it invalid). */
	for (;;) {
		need = server_need(s);
		if (need < 0) {
			*consumed = used;
			return SOCKS5_ERROR;
		}
		if (s->have >= need)
			break;
		if (used == len) {
			*consumed = used;
			return SOCKS5_NEED_MORE;
		}
		n = (size_t)need - s->have;
		if (n > len - used)
			n = len - used;
		memcpy(s->buf + s->have, in + used, n);
		s->have = (uint16_t)(s->have + n);
		used += n;
	}
	*consumed = used;

	switch (s->state) {
	case SOCKS5_SRV_GREETING:
		st = server_greeting_done(s);
		break;
	case SOCKS5_SRV_AUTH:
		st = server_auth_done(s);
		break;
	default: /* SOCKS5_SRV_REQUEST */
		st = server_request_done(s);
		break;
	}
	s->have = 0; /* buf keeps the message (user, pass, raw) until the next feed */
	return st;
}

enum socks5_status socks5_server_auth_verdict(struct socks5_server *s, int ok)
{
	if (s->state != SOCKS5_SRV_AUTH_CHECK)
		return server_misuse(s);
	if (!ok)
		return server_fail_pair(s, -EACCES, SRV_OUT_AUTH, SOCKS5_AUTH_VERSION, 1);
	s->state = SOCKS5_SRV_REQUEST;
	return server_send(s, SRV_OUT_AUTH, SOCKS5_AUTH_VERSION, 0);
}

/* ---- client ---- */

/* strlen that stops looking after max bytes (strnlen is not C11). */
static size_t bounded_len(const char *str, size_t max)
{
	size_t n = 0;

	while (n < max && str[n] != '\0')
		n++;
	return n;
}

/* Copies the optional credentials; both absent, or user 1..255 and pass 0..255 bytes. */
static int client_credentials(struct socks5_client *c, const char *user, const char *pass)
{
	size_t ulen, plen;

	if (!user && !pass)
		return 0;
	if (!user || !pass)
		return -EINVAL;
	ulen = bounded_len(user, SOCKS5_MAX_NAME + 1);
	plen = bounded_len(pass, SOCKS5_MAX_NAME + 1);
	if (ulen < 1 || ulen > SOCKS5_MAX_NAME || plen > SOCKS5_MAX_NAME)
		return -EINVAL;
	memcpy(c->user, user, ulen + 1);
	memcpy(c->pass, pass, plen + 1);
	c->user_len = (uint8_t)ulen;
	c->pass_len = (uint8_t)plen;
	return 0;
}

static int client_valid_cmd(uint8_t cmd)
{
	return cmd >= SOCKS5_CMD_CONNECT && cmd <= SOCKS5_CMD_UDP_ASSOCIATE;
}

int socks5_client_init(struct socks5_client *c, uint8_t cmd, const struct socks5_addr *dst,
                       const char *user, const char *pass)
{
	int n;

	memset(c, 0, sizeof(*c));
	c->state = SOCKS5_CLI_FAILED; /* until everything checks out */
	c->err = -EINVAL;
	if (!client_valid_cmd(cmd))
		return -EINVAL;
	n = socks5_encode_request(c->req_buf, sizeof(c->req_buf), cmd, dst);
	if (n < 0)
		return -EINVAL;
	if (client_credentials(c, user, pass) < 0)
		return -EINVAL;
	c->cmd = cmd;
	c->raw_len = (uint16_t)n;
	c->err = 0;
	c->state = SOCKS5_CLI_START;
	return 0;
}

int socks5_client_init_raw(struct socks5_client *c, const uint8_t *req, size_t len,
                           const char *user, const char *pass)
{
	memset(c, 0, sizeof(*c));
	c->state = SOCKS5_CLI_FAILED;
	c->err = -EINVAL;
	if (!req || len == 0 || socks5_parse_message(req, len, NULL, NULL) != (int)len)
		return -EINVAL;
	if (!client_valid_cmd(req[1]))
		return -EINVAL;
	if (client_credentials(c, user, pass) < 0)
		return -EINVAL;
	c->cmd = req[1];
	c->raw_req = req;
	c->raw_len = (uint16_t)len;
	c->err = 0;
	c->state = SOCKS5_CLI_START;
	return 0;
}

static enum socks5_status client_fail(struct socks5_client *c, int err)
{
	c->state = SOCKS5_CLI_FAILED;
	c->err = err;
	c->out = NULL;
	c->out_len = 0;
	return SOCKS5_ERROR;
}

static enum socks5_status client_send_request(struct socks5_client *c)
{
	c->out = c->raw_req ? c->raw_req : c->req_buf;
	c->out_len = c->raw_len;
	c->state = SOCKS5_CLI_REPLY;
	return SOCKS5_SEND;
}

enum socks5_status socks5_client_start(struct socks5_client *c)
{
	uint8_t *o = c->obuf;

	if (c->state != SOCKS5_CLI_START)
		return client_fail(c, -EINVAL);
	*o++ = SOCKS5_VERSION;
	if (c->user_len) {
		*o++ = 2;
		*o++ = SOCKS5_METHOD_NOAUTH;
		*o++ = SOCKS5_METHOD_USERPASS;
	} else {
		*o++ = 1;
		*o++ = SOCKS5_METHOD_NOAUTH;
	}
	c->out = c->obuf;
	c->out_len = (uint16_t)(o - c->obuf);
	c->state = SOCKS5_CLI_METHOD;
	return SOCKS5_SEND;
}

/* Bytes the current server message needs before the next decision, or -1 once failed. */
static int client_need(struct socks5_client *c)
{
	const uint8_t *b = c->ibuf;
	int need;

	switch (c->state) {
	case SOCKS5_CLI_METHOD:
		if (c->have < 1)
			return 1;
		if (b[0] != SOCKS5_VERSION) {
			client_fail(c, -EPROTO);
			return -1;
		}
		return 2;
	case SOCKS5_CLI_AUTH:
		if (c->have < 1)
			return 1;
		/* RFC 1929 says 01; some servers answer with the SOCKS version. */
		if (b[0] != SOCKS5_AUTH_VERSION && b[0] != SOCKS5_VERSION) {
			client_fail(c, -EPROTO);
			return -1;
		}
		return 2;
	case SOCKS5_CLI_REPLY:
	case SOCKS5_CLI_REPLY2:
		need = message_need(b, c->have);
		if (need < 0) {
			client_fail(c, -EPROTO);
			return -1;
		}
		return need;
	default:
		return -1; /* not reached: feed checks the state */
	}
}

static enum socks5_status client_method_done(struct socks5_client *c)
{
	uint8_t *o = c->obuf;

	switch (c->ibuf[1]) {
	case SOCKS5_METHOD_NOAUTH:
		return client_send_request(c);
	case SOCKS5_METHOD_USERPASS:
		if (!c->user_len)
			return client_fail(c, -EPROTO); /* a method we did not offer */
		*o++ = SOCKS5_AUTH_VERSION;
		*o++ = c->user_len;
		memcpy(o, c->user, c->user_len);
		o += c->user_len;
		*o++ = c->pass_len;
		memcpy(o, c->pass, c->pass_len);
		o += c->pass_len;
		c->out = c->obuf;
		c->out_len = (uint16_t)(o - c->obuf);
		c->state = SOCKS5_CLI_AUTH;
		return SOCKS5_SEND;
	case SOCKS5_METHOD_NONE:
		return client_fail(c, -ENOTSUP);
	default:
		return client_fail(c, -EPROTO);
	}
}

static enum socks5_status client_reply_done(struct socks5_client *c)
{
	message_addr(c->ibuf, &c->bnd);
	c->reply = c->ibuf[1];
	if (c->reply != SOCKS5_REP_SUCCEEDED)
		return client_fail(c, -ECONNABORTED);
	c->nreplies++;
	/* BIND answers twice: once listening, once the peer has connected. */
	if (c->cmd == SOCKS5_CMD_BIND && c->state == SOCKS5_CLI_REPLY)
		c->state = SOCKS5_CLI_REPLY2;
	else
		c->state = SOCKS5_CLI_DONE;
	return SOCKS5_REPLY;
}

enum socks5_status socks5_client_feed(struct socks5_client *c, const uint8_t *in, size_t len,
                                      size_t *consumed)
{
	enum socks5_status st;
	size_t used = 0, n;
	int need;

	*consumed = 0;
	switch (c->state) {
	case SOCKS5_CLI_METHOD:
	case SOCKS5_CLI_AUTH:
	case SOCKS5_CLI_REPLY:
	case SOCKS5_CLI_REPLY2:
		break;
	default:
		return client_fail(c, -EINVAL);
	}
	for (;;) {
		need = client_need(c);
		if (need < 0) {
			*consumed = used;
			return SOCKS5_ERROR;
		}
		if (c->have >= need)
			break;
		if (used == len) {
			*consumed = used;
			return SOCKS5_NEED_MORE;
		}
		n = (size_t)need - c->have;
		if (n > len - used)
			n = len - used;
		memcpy(c->ibuf + c->have, in + used, n);
		c->have = (uint16_t)(c->have + n);
		used += n;
	}
	*consumed = used;
	c->have = 0;

	switch (c->state) {
	case SOCKS5_CLI_METHOD:
		st = client_method_done(c);
		break;
	case SOCKS5_CLI_AUTH:
		if (c->ibuf[1] != 0)
			st = client_fail(c, -EACCES);
		else
			st = client_send_request(c);
		break;
	default: /* SOCKS5_CLI_REPLY, SOCKS5_CLI_REPLY2 */
		st = client_reply_done(c);
		break;
	}
	return st;
}

/* ---- addresses ---- */

int socks5_addr_from_sockaddr(struct socks5_addr *a, const struct sockaddr *sa)
{
	const struct sockaddr_in *sin;
	const struct sockaddr_in6 *sin6;

	if (!a || !sa)
		return -EINVAL;
	memset(a, 0, sizeof(*a));
	switch (sa->sa_family) {
	case AF_INET:
		sin = (const struct sockaddr_in *)sa;
		a->atyp = SOCKS5_ATYP_IPV4;
		a->len = 4;
		memcpy(a->u.ipv4, &sin->sin_addr, 4);
		a->port = ntohs(sin->sin_port);
		return 0;
	case AF_INET6:
		/* A v4-mapped address stays IPv6: it names the socket the peer really used. */
		sin6 = (const struct sockaddr_in6 *)sa;
		a->atyp = SOCKS5_ATYP_IPV6;
		a->len = 16;
		memcpy(a->u.ipv6, &sin6->sin6_addr, 16);
		a->port = ntohs(sin6->sin6_port);
		return 0;
	default:
		return -EAFNOSUPPORT;
	}
}

int socks5_addr_to_sockaddr(const struct socks5_addr *a, struct sockaddr_storage *ss,
                            socklen_t *len)
{
	struct sockaddr_in *sin = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;

	if (!a || !ss || addr_wire_len(a) < 0)
		return -EINVAL;
	memset(ss, 0, sizeof(*ss));
	switch (a->atyp) {
	case SOCKS5_ATYP_IPV4:
		sin->sin_family = AF_INET;
		sin->sin_port = htons(a->port);
		memcpy(&sin->sin_addr, a->u.ipv4, 4);
		if (len)
			*len = sizeof(*sin);
		return 0;
	case SOCKS5_ATYP_IPV6:
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons(a->port);
		memcpy(&sin6->sin6_addr, a->u.ipv6, 16);
		if (len)
			*len = sizeof(*sin6);
		return 0;
	default: /* a name needs resolving first */
		return -EINVAL;
	}
}

int socks5_addr_set_name(struct socks5_addr *a, const char *name, size_t len, uint16_t port)
{
	if (!a || !name || len < 1 || len > SOCKS5_MAX_NAME)
		return -EINVAL;
	memset(a, 0, sizeof(*a));
	a->atyp = SOCKS5_ATYP_DOMAIN;
	a->len = (uint8_t)len;
	a->port = port;
	memcpy(a->u.name, name, len);
	a->u.name[len] = '\0';
	return 0;
}

const char *socks5_reply_str(uint8_t rep)
{
	switch (rep) {
	case SOCKS5_REP_SUCCEEDED:
		return "succeeded";
	case SOCKS5_REP_GENERAL_FAILURE:
		return "general SOCKS server failure";
	case SOCKS5_REP_NOT_ALLOWED:
		return "connection not allowed by ruleset";
	case SOCKS5_REP_NET_UNREACHABLE:
		return "network unreachable";
	case SOCKS5_REP_HOST_UNREACHABLE:
		return "host unreachable";
	case SOCKS5_REP_CONN_REFUSED:
		return "connection refused";
	case SOCKS5_REP_TTL_EXPIRED:
		return "TTL expired";
	case SOCKS5_REP_CMD_NOT_SUPPORTED:
		return "command not supported";
	case SOCKS5_REP_ATYP_NOT_SUPPORTED:
		return "address type not supported";
	default:
		return "unknown reply";
	}
}

char *socks5_addr_str(const struct socks5_addr *a, char *buf, size_t cap)
{
	char ip[INET6_ADDRSTRLEN];

	if (!buf || cap == 0)
		return buf;
	if (!a) {
		snprintf(buf, cap, "?");
		return buf;
	}
	switch (a->atyp) {
	case SOCKS5_ATYP_IPV4:
		inet_ntop(AF_INET, a->u.ipv4, ip, sizeof(ip));
		snprintf(buf, cap, "%s:%u", ip, (unsigned)a->port);
		break;
	case SOCKS5_ATYP_IPV6:
		inet_ntop(AF_INET6, a->u.ipv6, ip, sizeof(ip));
		snprintf(buf, cap, "[%s]:%u", ip, (unsigned)a->port);
		break;
	case SOCKS5_ATYP_DOMAIN:
		snprintf(buf, cap, "%.*s:%u", (int)a->len, a->u.name, (unsigned)a->port);
		break;
	default:
		snprintf(buf, cap, "?:%u", (unsigned)a->port);
		break;
	}
	return buf;
}

/* ---- UDP datagrams ---- */

/* RSV RSV FRAG ATYP: from ATYP on, a UDP header is laid out like a request (VER CMD RSV ATYP). */
#define UDP_HEAD 4

int socks5_udp_encode_header(uint8_t *out, size_t cap, uint8_t frag, const struct socks5_addr *a)
{
	int n;

	if (!a)
		return -EINVAL; /* encode_message would take NULL for 0.0.0.0:0 */
	/* Same checks and bytes as a request from ATYP on; only VER CMD RSV become RSV RSV FRAG. */
	n = encode_message(out, cap, 0, a);
	if (n < 0)
		return n;
	out[0] = 0; /* RSV */
	out[1] = 0; /* RSV */
	out[2] = frag;
	return n;
}

int socks5_udp_decode(const uint8_t *in, size_t len, struct socks5_udp_header *h,
                      size_t *header_len)
{
	size_t need;

	if (len < UDP_HEAD)
		return -EMSGSIZE;
	if (in[0] != 0 || in[1] != 0)
		return -EPROTO;
	switch (in[3]) {
	case SOCKS5_ATYP_IPV4:
		need = UDP_HEAD + 4 + MSG_PORT;
		break;
	case SOCKS5_ATYP_IPV6:
		need = UDP_HEAD + 16 + MSG_PORT;
		break;
	case SOCKS5_ATYP_DOMAIN:
		if (len < UDP_HEAD + 1)
			return -EMSGSIZE;
		if (in[UDP_HEAD] == 0)
			return -EINVAL;
		need = UDP_HEAD + 1 + (size_t)in[UDP_HEAD] + MSG_PORT;
		break;
	default:
		return -EAFNOSUPPORT;
	}
	if (len < need)
		return -EMSGSIZE;
	if (h) {
		h->frag = in[2];
		message_addr(in, &h->addr);
	}
	if (header_len)
		*header_len = need;
	return 0;
}

static int addr_is_zero(const struct socks5_addr *a)
{
	static const uint8_t zero[16];

	return memcmp(&a->u, zero, a->len) == 0;
}

/* The proxy's address with the port replaced; scope id and flow label stay as they were. */
static int proxy_with_port(const struct sockaddr *proxy, uint16_t port,
                           struct sockaddr_storage *out, socklen_t *len)
{
	struct sockaddr_in sin;
	struct sockaddr_in6 sin6;

	if (!proxy)
		return -EINVAL;
	switch (proxy->sa_family) {
	case AF_INET:
		memcpy(&sin, proxy, sizeof(sin));
		sin.sin_port = htons(port);
		memset(out, 0, sizeof(*out));
		memcpy(out, &sin, sizeof(sin));
		if (len)
			*len = sizeof(sin);
		return 0;
	case AF_INET6:
		memcpy(&sin6, proxy, sizeof(sin6));
		sin6.sin6_port = htons(port);
		memset(out, 0, sizeof(*out));
		memcpy(out, &sin6, sizeof(sin6));
		if (len)
			*len = sizeof(sin6);
		return 0;
	default:
		return -EAFNOSUPPORT;
	}
}

int socks5_client_udp_relay(const struct socks5_client *c, const struct sockaddr *proxy,
                            struct sockaddr_storage *out, socklen_t *len)
{
	if (!c || !out || c->cmd != SOCKS5_CMD_UDP_ASSOCIATE || c->state != SOCKS5_CLI_DONE)
		return -EINVAL;
	if (c->bnd.port == 0)
		return -EINVAL; /* nothing can be sent to port 0: every datagram would be lost */
	switch (c->bnd.atyp) {
	case SOCKS5_ATYP_IPV4:
	case SOCKS5_ATYP_IPV6:
		/* A relay bound to the wildcard address reports it as is: reach it where the
		 * control connection reached the proxy. */
		if (addr_is_zero(&c->bnd))
			return proxy_with_port(proxy, c->bnd.port, out, len);
		return socks5_addr_to_sockaddr(&c->bnd, out, len);
	default: /* a name: resolving it is the caller's business */
		return -EINVAL;
	}
}
