/* test_socks5_roundtrip.c - the client and server state machines driven against each other
 * through in-memory byte streams, including forwarding a received request unchanged upstream. */
#include <criterion/criterion.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <ringsocks/socks5.h>

#include "testutil.h"

struct stream {
	uint8_t buf[4096];
	size_t len, pos; /* written, read */
};

static void stream_put(struct stream *st, const uint8_t *p, size_t n)
{
	cr_assert_leq(st->len + n, sizeof(st->buf));
	if (n == 0)
		return;
	memcpy(st->buf + st->len, p, n);
	st->len += n;
}

/* The proxy side: its offer, the credentials it accepts, and what its "daemon" answers once a
 * request arrives (one reply, or two for BIND). */
struct proxy {
	unsigned offer;
	const char *user, *pass;
	const uint8_t *replies;
	size_t replies_len;
};

/* Outcome of one handshake. */
struct outcome {
	enum socks5_status srv, cli; /* last status of each side */
	unsigned cli_replies;
	struct stream c2s, s2c;
};

/* Runs client c (initialised, not started) against a fresh server s until neither moves. */
static void handshake(struct socks5_client *c, struct socks5_server *s, const struct proxy *p,
                      struct outcome *o)
{
	int srv_done = 0, cli_done = 0, moved;
	size_t used;

	memset(o, 0, sizeof(*o));
	socks5_server_init(s, p->offer);
	o->cli = socks5_client_start(c);
	cr_assert_eq(o->cli, SOCKS5_SEND);
	stream_put(&o->c2s, c->out, c->out_len);
	do {
		moved = 0;
		while (!srv_done && o->c2s.pos < o->c2s.len) {
			o->srv = socks5_server_feed(s, o->c2s.buf + o->c2s.pos,
			                            o->c2s.len - o->c2s.pos, &used);
			o->c2s.pos += used;
			moved = 1;
			switch (o->srv) {
			case SOCKS5_NEED_MORE:
				break;
			case SOCKS5_CHECK_AUTH:
				o->srv = socks5_server_auth_verdict(
				    s, p->user && !strcmp(s->user, p->user) &&
				           !strcmp(s->pass, p->pass));
				stream_put(&o->s2c, s->out, s->out_len);
				srv_done = o->srv == SOCKS5_ERROR;
				break;
			case SOCKS5_SEND:
				stream_put(&o->s2c, s->out, s->out_len);
				break;
			case SOCKS5_REQUEST:
				stream_put(&o->s2c, p->replies, p->replies_len);
				srv_done = 1;
				break;
			default:
				stream_put(&o->s2c, s->out, s->out_len);
				srv_done = 1;
				break;
			}
		}
		while (!cli_done && o->s2c.pos < o->s2c.len) {
			o->cli = socks5_client_feed(c, o->s2c.buf + o->s2c.pos,
			                            o->s2c.len - o->s2c.pos, &used);
			o->s2c.pos += used;
			moved = 1;
			switch (o->cli) {
			case SOCKS5_NEED_MORE:
				break;
			case SOCKS5_SEND:
				stream_put(&o->c2s, c->out, c->out_len);
				break;
			case SOCKS5_REPLY:
				o->cli_replies++;
				cli_done = c->state == SOCKS5_CLI_DONE;
				break;
			default:
				cli_done = 1;
				break;
			}
		}
	} while (moved);
}

static struct socks5_addr dst_ipv4(void)
{
	return (struct socks5_addr){
	    .atyp = SOCKS5_ATYP_IPV4, .len = 4, .port = 443, .u.ipv4 = {198, 51, 100, 7}};
}

static struct socks5_addr dst_ipv6(void)
{
	return (struct socks5_addr){.atyp = SOCKS5_ATYP_IPV6,
	                            .len = 16,
	                            .port = 22,
	                            .u.ipv6 = {0x20, 0x01, 0x0d, 0xb8, [15] = 0x22}};
}

static struct socks5_addr dst_name(void)
{
	struct socks5_addr a;

	cr_assert_eq(socks5_addr_set_name(&a, "upstream.example.net", 20, 8080), 0);
	return a;
}

/* A success reply bound to 0.0.0.0:0 and one bound to 192.0.2.1:1080. */
static const uint8_t ok_reply[] = {5, 0, 0, 1, 0, 0, 0, 0, 0, 0};
static const uint8_t bind_replies[] = {5, 0, 0, 1, 192, 0, 2,   1, 0x04, 0x38,
                                       5, 0, 0, 1, 203, 0, 113, 5, 0xD4, 0x31};

static void check_connect(const struct socks5_addr *dst, const char *user, const char *pass,
                          unsigned offer)
{
	struct proxy p = {offer, "user", "pass", ok_reply, sizeof(ok_reply)};
	struct socks5_client c;
	struct socks5_server s;
	struct outcome o;
	uint8_t want_req[SOCKS5_MAX_REQUEST];
	int n = socks5_encode_request(want_req, sizeof(want_req), SOCKS5_CMD_CONNECT, dst);

	cr_assert_eq(socks5_client_init(&c, SOCKS5_CMD_CONNECT, dst, user, pass), 0);
	handshake(&c, &s, &p, &o);
	cr_assert_eq(o.srv, SOCKS5_REQUEST);
	cr_assert_eq(o.cli, SOCKS5_REPLY);
	cr_assert_eq(c.state, SOCKS5_CLI_DONE);
	cr_assert_eq(s.req.cmd, SOCKS5_CMD_CONNECT);
	assert_addr_fields_eq(&s.req.dst, dst);
	assert_bytes(s.raw, s.raw_len, want_req, (size_t)n);
	/* both streams fully read: nothing left over on either side */
	cr_assert_eq(o.c2s.pos, o.c2s.len);
	cr_assert_eq(o.s2c.pos, o.s2c.len);
	cr_assert_eq(s.method, user && (offer & SOCKS5_OFFER_USERPASS) ? SOCKS5_METHOD_USERPASS
	                                                               : SOCKS5_METHOD_NOAUTH);
}

Test(roundtrip, noauth_connect_for_each_address_type)
{
	struct socks5_addr a[3] = {dst_ipv4(), dst_ipv6(), dst_name()};

	for (int i = 0; i < 3; i++)
		check_connect(&a[i], NULL, NULL, SOCKS5_OFFER_NOAUTH);
}

Test(roundtrip, userpass_connect_for_each_address_type)
{
	struct socks5_addr a[3] = {dst_ipv4(), dst_ipv6(), dst_name()};

	for (int i = 0; i < 3; i++)
		check_connect(&a[i], "user", "pass", BOTH);
}

Test(roundtrip, client_with_credentials_uses_noauth_when_server_offers_only_that)
{
	struct socks5_addr a = dst_ipv4();

	check_connect(&a, "user", "pass", SOCKS5_OFFER_NOAUTH);
}

Test(roundtrip, client_without_credentials_uses_noauth_when_both_offered)
{
	struct socks5_addr a = dst_name();

	check_connect(&a, NULL, NULL, BOTH);
}

Test(roundtrip, wrong_password_fails_both_sides_with_eacces)
{
	struct socks5_addr a = dst_ipv4();
	struct proxy p = {BOTH, "user", "pass", ok_reply, sizeof(ok_reply)};
	struct socks5_client c;
	struct socks5_server s;
	struct outcome o;

	cr_assert_eq(socks5_client_init(&c, 1, &a, "user", "wrong"), 0);
	handshake(&c, &s, &p, &o);
	cr_assert_eq(o.srv, SOCKS5_ERROR);
	cr_assert_eq(s.err, -EACCES);
	cr_assert_eq(o.cli, SOCKS5_ERROR);
	cr_assert_eq(c.err, -EACCES);
	assert_bytes(o.s2c.buf, o.s2c.len, (const uint8_t[]){5, 2, 1, 1}, 4);
}

Test(roundtrip, client_without_credentials_refused_by_userpass_only_server)
{
	struct socks5_addr a = dst_ipv4();
	struct proxy p = {SOCKS5_OFFER_USERPASS, "user", "pass", ok_reply, sizeof(ok_reply)};
	struct socks5_client c;
	struct socks5_server s;
	struct outcome o;

	cr_assert_eq(socks5_client_init(&c, 1, &a, NULL, NULL), 0);
	handshake(&c, &s, &p, &o);
	cr_assert_eq(s.err, -ENOTSUP);
	cr_assert_eq(o.cli, SOCKS5_ERROR);
	cr_assert_eq(c.err, -ENOTSUP);
	assert_bytes(o.s2c.buf, o.s2c.len, (const uint8_t[]){5, 0xFF}, 2);
}

Test(roundtrip, failure_reply_reaches_client_as_econnaborted)
{
	struct socks5_addr a = dst_name();
	uint8_t refused[SOCKS5_MAX_REPLY];
	int n = socks5_encode_reply(refused, sizeof(refused), SOCKS5_REP_CONN_REFUSED, NULL);
	struct proxy p = {BOTH, NULL, NULL, refused, (size_t)n};
	struct socks5_client c;
	struct socks5_server s;
	struct outcome o;

	cr_assert_eq(socks5_client_init(&c, 1, &a, NULL, NULL), 0);
	handshake(&c, &s, &p, &o);
	cr_assert_eq(o.srv, SOCKS5_REQUEST);
	cr_assert_eq(o.cli, SOCKS5_ERROR);
	cr_assert_eq(c.err, -ECONNABORTED);
	cr_assert_eq(c.reply, SOCKS5_REP_CONN_REFUSED);
	cr_assert_str_eq(socks5_reply_str(c.reply), "connection refused");
}

Test(roundtrip, bind_delivers_both_replies)
{
	struct socks5_addr a = dst_ipv6();
	struct proxy p = {BOTH, "user", "pass", bind_replies, sizeof(bind_replies)};
	struct socks5_client c;
	struct socks5_server s;
	struct outcome o;
	char text[64];

	cr_assert_eq(socks5_client_init(&c, SOCKS5_CMD_BIND, &a, "user", "pass"), 0);
	handshake(&c, &s, &p, &o);
	cr_assert_eq(s.req.cmd, SOCKS5_CMD_BIND);
	cr_assert_eq(o.cli_replies, 2);
	cr_assert_eq(c.nreplies, 2);
	cr_assert_eq(c.state, SOCKS5_CLI_DONE);
	cr_assert_str_eq(socks5_addr_str(&c.bnd, text, sizeof(text)), "203.0.113.5:54321");
}

Test(roundtrip, udp_associate_request_arrives)
{
	struct socks5_addr a = dst_ipv4();
	struct proxy p = {SOCKS5_OFFER_NOAUTH, NULL, NULL, ok_reply, sizeof(ok_reply)};
	struct socks5_client c;
	struct socks5_server s;
	struct outcome o;

	cr_assert_eq(socks5_client_init(&c, SOCKS5_CMD_UDP_ASSOCIATE, &a, NULL, NULL), 0);
	handshake(&c, &s, &p, &o);
	cr_assert_eq(s.req.cmd, SOCKS5_CMD_UDP_ASSOCIATE);
	cr_assert_eq(o.cli, SOCKS5_REPLY);
	cr_assert_eq(c.state, SOCKS5_CLI_DONE);
}

/* A request received by one server, forwarded with client_init_raw, reaches a second server
 * byte for byte; the first hop uses no-auth, the second user/pass (and vice versa). */
static void check_forward(const struct socks5_addr *dst, uint8_t cmd, int auth_first)
{
	struct proxy hop1 = {BOTH, "a", "1", NULL, 0};
	struct proxy hop2 = {BOTH, "b", "", ok_reply, sizeof(ok_reply)};
	struct socks5_client c1, c2;
	struct socks5_server s1, s2;
	struct outcome o1, o2;
	uint8_t sent[SOCKS5_MAX_REQUEST];
	size_t sent_len;

	cr_assert_eq(
	    socks5_client_init(&c1, cmd, dst, auth_first ? "a" : NULL, auth_first ? "1" : NULL), 0);
	handshake(&c1, &s1, &hop1, &o1);
	cr_assert_eq(o1.srv, SOCKS5_REQUEST);
	sent_len = c1.raw_len;
	memcpy(sent, c1.req_buf, sent_len);
	assert_bytes(s1.raw, s1.raw_len, sent, sent_len);

	cr_assert_eq(socks5_client_init_raw(&c2, s1.raw, s1.raw_len, auth_first ? NULL : "b",
	                                    auth_first ? NULL : ""),
	             0);
	cr_assert_eq(c2.cmd, cmd);
	handshake(&c2, &s2, &hop2, &o2);
	cr_assert_eq(o2.srv, SOCKS5_REQUEST);
	cr_assert_eq(o2.cli, SOCKS5_REPLY);
	assert_bytes(s2.raw, s2.raw_len, sent, sent_len);
	cr_assert_eq(s2.req.cmd, cmd);
	assert_addr_fields_eq(&s2.req.dst, dst);
	/* the request was sent from s1's buffer, not from a copy */
	cr_assert_eq(c2.raw_req, s1.raw);
}

Test(roundtrip, forwarded_raw_request_arrives_byte_identical)
{
	struct socks5_addr a[3] = {dst_ipv4(), dst_ipv6(), dst_name()};

	for (int i = 0; i < 3; i++)
		for (uint8_t cmd = 1; cmd <= 3; cmd++)
			for (int auth_first = 0; auth_first < 2; auth_first++)
				check_forward(&a[i], cmd, auth_first);
}

Test(roundtrip, forwarded_request_keeps_nonzero_reserved_byte)
{
	static const uint8_t req[] = {5, 1, 0x42, 3, 3, 'a', 'b', 'c', 0, 80};
	struct proxy p = {SOCKS5_OFFER_NOAUTH, NULL, NULL, ok_reply, sizeof(ok_reply)};
	struct socks5_client c;
	struct socks5_server s;
	struct outcome o;

	cr_assert_eq(socks5_client_init_raw(&c, req, sizeof(req), NULL, NULL), 0);
	handshake(&c, &s, &p, &o);
	cr_assert_eq(o.srv, SOCKS5_REQUEST);
	assert_bytes(s.raw, s.raw_len, req, sizeof(req));
}

Test(roundtrip, longest_credentials_and_name)
{
	char user[256], pass[256], name[256];
	struct socks5_addr a;
	struct proxy p = {BOTH, user, pass, ok_reply, sizeof(ok_reply)};
	struct socks5_client c;
	struct socks5_server s;
	struct outcome o;

	memset(user, 'U', 255);
	memset(pass, 'P', 255);
	memset(name, 'N', 255);
	user[255] = pass[255] = name[255] = '\0';
	cr_assert_eq(socks5_addr_set_name(&a, name, 255, 65535), 0);
	cr_assert_eq(socks5_client_init(&c, 1, &a, user, pass), 0);
	handshake(&c, &s, &p, &o);
	cr_assert_eq(o.srv, SOCKS5_REQUEST);
	cr_assert_eq(o.cli, SOCKS5_REPLY);
	cr_assert_eq(s.raw_len, SOCKS5_MAX_REQUEST);
	assert_addr_fields_eq(&s.req.dst, &a);
	/* greeting 4 + auth 513 + request 262 */
	cr_assert_eq(o.c2s.len, 4 + SOCKS5_MAX_AUTH + SOCKS5_MAX_REQUEST);
}
