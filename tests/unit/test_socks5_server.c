/* test_socks5_server.c - the server handshake state machine: every message, every rejection
 * with its exact bytes, and that any split of the input gives the same result. */
#include <criterion/criterion.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <ringsocks/socks5.h>

#include "testutil.h"

/* One feed call that must use exactly `want_used` bytes and return `want`. */
static void feed_expect(struct socks5_server *s, const uint8_t *in, size_t len,
                        enum socks5_status want, size_t want_used)
{
	size_t used = 12345;
	enum socks5_status st = socks5_server_feed(s, in, len, &used);

	cr_assert_eq(st, want, "status %d, want %d", st, want);
	cr_assert_eq(used, want_used, "consumed %zu, want %zu", used, want_used);
}

/* Server in state REQUEST after a no-auth greeting. */
static void server_at_request(struct socks5_server *s)
{
	socks5_server_init(s, SOCKS5_OFFER_NOAUTH);
	feed_expect(s, BYTES(5, 1, 0), SOCKS5_SEND, 3);
	cr_assert_eq(s->state, SOCKS5_SRV_REQUEST);
}

/* Server in state AUTH after a user/pass greeting. */
static void server_at_auth(struct socks5_server *s)
{
	socks5_server_init(s, SOCKS5_OFFER_USERPASS);
	feed_expect(s, BYTES(5, 1, 2), SOCKS5_SEND, 3);
	cr_assert_eq(s->state, SOCKS5_SRV_AUTH);
}

static void assert_failed(const struct socks5_server *s, int err, uint8_t reply)
{
	cr_assert_eq(s->state, SOCKS5_SRV_FAILED);
	cr_assert_eq(s->err, err, "err %d, want %d", s->err, err);
	cr_assert_eq(s->reply, reply, "reply %#x, want %#x", s->reply, reply);
}

/* ---- greeting ---- */

Test(greeting, selects_noauth_and_answers_05_00)
{
	struct socks5_server s;

	socks5_server_init(&s, SOCKS5_OFFER_NOAUTH);
	feed_expect(&s, BYTES(5, 1, 0), SOCKS5_SEND, 3);
	assert_bytes(s.out, s.out_len, BYTES(5, 0));
	cr_assert_eq(s.method, SOCKS5_METHOD_NOAUTH);
	cr_assert_eq(s.state, SOCKS5_SRV_REQUEST);
}

Test(greeting, prefers_userpass_whatever_the_client_order)
{
	static const uint8_t lists[][5] = {{5, 2, 0, 2}, {5, 2, 2, 0}, {5, 3, 1, 0, 2}};
	static const size_t lens[] = {4, 4, 5};
	struct socks5_server s;

	for (int i = 0; i < 3; i++) {
		socks5_server_init(&s, BOTH);
		feed_expect(&s, lists[i], lens[i], SOCKS5_SEND, lens[i]);
		assert_bytes(s.out, s.out_len, BYTES(5, 2));
		cr_assert_eq(s.method, SOCKS5_METHOD_USERPASS);
		cr_assert_eq(s.state, SOCKS5_SRV_AUTH);
	}
}

Test(greeting, falls_back_to_noauth_when_client_lists_no_userpass)
{
	struct socks5_server s;

	socks5_server_init(&s, BOTH);
	feed_expect(&s, BYTES(5, 2, 1, 0), SOCKS5_SEND, 4);
	assert_bytes(s.out, s.out_len, BYTES(5, 0));
	cr_assert_eq(s.state, SOCKS5_SRV_REQUEST);
}

Test(greeting, rejects_noauth_client_when_only_userpass_offered_with_05_ff)
{
	struct socks5_server s;

	socks5_server_init(&s, SOCKS5_OFFER_USERPASS);
	feed_expect(&s, BYTES(5, 1, 0), SOCKS5_ERROR, 3);
	assert_bytes(s.out, s.out_len, BYTES(5, 0xFF));
	assert_failed(&s, -ENOTSUP, 0xFF);
}

Test(greeting, rejects_userpass_client_when_only_noauth_offered_with_05_ff)
{
	struct socks5_server s;

	socks5_server_init(&s, SOCKS5_OFFER_NOAUTH);
	feed_expect(&s, BYTES(5, 1, 2), SOCKS5_ERROR, 3);
	assert_bytes(s.out, s.out_len, BYTES(5, 0xFF));
	assert_failed(&s, -ENOTSUP, 0xFF);
}

Test(greeting, never_selects_gssapi)
{
	struct socks5_server s;

	socks5_server_init(&s, BOTH);
	feed_expect(&s, BYTES(5, 2, 1, 0x80), SOCKS5_ERROR, 4);
	assert_bytes(s.out, s.out_len, BYTES(5, 0xFF));
	assert_failed(&s, -ENOTSUP, 0xFF);
}

Test(greeting, rejects_everything_when_nothing_offered)
{
	struct socks5_server s;

	socks5_server_init(&s, 0);
	feed_expect(&s, BYTES(5, 2, 0, 2), SOCKS5_ERROR, 4);
	assert_bytes(s.out, s.out_len, BYTES(5, 0xFF));
	assert_failed(&s, -ENOTSUP, 0xFF);
}

Test(greeting, rejects_http_request_at_first_byte_without_answer)
{
	static const char get[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
	struct socks5_server s;

	socks5_server_init(&s, BOTH);
	feed_expect(&s, (const uint8_t *)get, sizeof(get) - 1, SOCKS5_ERROR, 1);
	cr_assert_eq(s.out_len, 0);
	cr_assert_eq(s.err, -EPROTO);
	cr_assert_eq(s.state, SOCKS5_SRV_FAILED);
}

Test(greeting, rejects_socks4_client_at_first_byte_without_answer)
{
	struct socks5_server s;

	socks5_server_init(&s, BOTH);
	feed_expect(&s, BYTES(4, 1, 0, 80, 1, 2, 3, 4, 0), SOCKS5_ERROR, 1);
	cr_assert_eq(s.out_len, 0);
	cr_assert_eq(s.err, -EPROTO);
	cr_assert_eq(s.state, SOCKS5_SRV_FAILED);
	/* a lone first byte is enough to decide */
	socks5_server_init(&s, BOTH);
	feed_expect(&s, BYTES(4), SOCKS5_ERROR, 1);
	cr_assert_eq(s.out_len, 0);
}

Test(greeting, rejects_zero_methods_with_05_ff_after_nmethods)
{
	struct socks5_server s;

	socks5_server_init(&s, BOTH);
	feed_expect(&s, BYTES(5), SOCKS5_NEED_MORE, 1);
	feed_expect(&s, BYTES(0, 0, 1, 0), SOCKS5_ERROR, 1);
	assert_bytes(s.out, s.out_len, BYTES(5, 0xFF));
	assert_failed(&s, -EPROTO, 0xFF);
}

Test(greeting, accepts_255_methods_with_userpass_last)
{
	uint8_t g[SOCKS5_MAX_GREETING + 1];
	struct socks5_server s;

	g[0] = 5;
	g[1] = 255;
	for (int i = 0; i < 255; i++)
		g[2 + i] = (uint8_t)(0x80 + i % 0x70); /* private methods, never 0 or 2 */
	g[256] = 2;
	g[257] = 0x99; /* first byte of the next message */
	socks5_server_init(&s, BOTH);
	feed_expect(&s, g, sizeof(g), SOCKS5_SEND, SOCKS5_MAX_GREETING);
	assert_bytes(s.out, s.out_len, BYTES(5, 2));
}

Test(greeting, waits_for_all_methods_before_answering)
{
	struct socks5_server s;

	socks5_server_init(&s, BOTH);
	feed_expect(&s, BYTES(5, 3, 0x80, 0x81), SOCKS5_NEED_MORE, 4);
	cr_assert_eq(s.have, 4);
	feed_expect(&s, BYTES(0, 2, 5), SOCKS5_SEND, 1);
	assert_bytes(s.out, s.out_len, BYTES(5, 0));
}

Test(greeting, zero_byte_feed_needs_more_and_consumes_nothing)
{
	struct socks5_server s;

	socks5_server_init(&s, BOTH);
	feed_expect(&s, NULL, 0, SOCKS5_NEED_MORE, 0);
	feed_expect(&s, BYTES(5), SOCKS5_NEED_MORE, 1);
	feed_expect(&s, NULL, 0, SOCKS5_NEED_MORE, 0);
	feed_expect(&s, BYTES(1, 0), SOCKS5_SEND, 2);
	assert_bytes(s.out, s.out_len, BYTES(5, 0));
	feed_expect(&s, NULL, 0, SOCKS5_NEED_MORE, 0);
}

/* ---- username/password ---- */

Test(auth, delivers_nul_terminated_credentials)
{
	struct socks5_server s;

	server_at_auth(&s);
	feed_expect(&s, BYTES(1, 5, 'a', 'l', 'i', 'c', 'e', 3, 'p', 'w', 'd', 5, 1),
	            SOCKS5_CHECK_AUTH, 11);
	cr_assert_eq(s.state, SOCKS5_SRV_AUTH_CHECK);
	cr_assert_eq(s.user_len, 5);
	cr_assert_eq(s.pass_len, 3);
	cr_assert_str_eq(s.user, "alice");
	cr_assert_str_eq(s.pass, "pwd");
	cr_assert(s.user >= (const char *)s.buf && s.pass < (const char *)s.buf + sizeof(s.buf));
}

Test(auth, accepts_empty_password)
{
	struct socks5_server s;

	server_at_auth(&s);
	feed_expect(&s, BYTES(1, 1, 'u', 0), SOCKS5_CHECK_AUTH, 4);
	cr_assert_str_eq(s.user, "u");
	cr_assert_eq(s.pass_len, 0);
	cr_assert_str_eq(s.pass, "");
}

Test(auth, accepts_255_byte_user_and_password)
{
	uint8_t m[SOCKS5_MAX_AUTH];
	char want_user[256], want_pass[256];
	struct socks5_server s;

	m[0] = 1;
	m[1] = 255;
	memset(m + 2, 'U', 255);
	m[257] = 255;
	memset(m + 258, 'P', 255);
	memset(want_user, 'U', 255);
	memset(want_pass, 'P', 255);
	want_user[255] = want_pass[255] = '\0';
	server_at_auth(&s);
	feed_expect(&s, m, sizeof(m), SOCKS5_CHECK_AUTH, SOCKS5_MAX_AUTH);
	cr_assert_eq(s.user_len, 255);
	cr_assert_eq(s.pass_len, 255);
	cr_assert_str_eq(s.user, want_user);
	cr_assert_str_eq(s.pass, want_pass);
}

Test(auth, rejects_wrong_subnegotiation_version_at_first_byte_with_01_01)
{
	struct socks5_server s;

	server_at_auth(&s);
	feed_expect(&s, BYTES(5, 1, 'u', 1, 'p'), SOCKS5_ERROR, 1);
	assert_bytes(s.out, s.out_len, BYTES(1, 1));
	assert_failed(&s, -EPROTO, 1);
}

Test(auth, rejects_empty_username_after_ulen_with_01_01)
{
	struct socks5_server s;

	server_at_auth(&s);
	feed_expect(&s, BYTES(1, 0, 1, 'p'), SOCKS5_ERROR, 2);
	assert_bytes(s.out, s.out_len, BYTES(1, 1));
	assert_failed(&s, -EPROTO, 1);
}

Test(auth, accepted_verdict_answers_01_00_and_moves_to_request)
{
	struct socks5_server s;

	server_at_auth(&s);
	feed_expect(&s, BYTES(1, 1, 'u', 1, 'p'), SOCKS5_CHECK_AUTH, 5);
	cr_assert_eq(socks5_server_auth_verdict(&s, 1), SOCKS5_SEND);
	assert_bytes(s.out, s.out_len, BYTES(1, 0));
	cr_assert_eq(s.state, SOCKS5_SRV_REQUEST);
	feed_expect(&s, BYTES(5, 1, 0, 1, 1, 2, 3, 4, 0, 80), SOCKS5_REQUEST, 10);
}

Test(auth, rejected_verdict_answers_01_01_with_eacces)
{
	struct socks5_server s;

	server_at_auth(&s);
	feed_expect(&s, BYTES(1, 1, 'u', 1, 'p'), SOCKS5_CHECK_AUTH, 5);
	cr_assert_eq(socks5_server_auth_verdict(&s, 0), SOCKS5_ERROR);
	assert_bytes(s.out, s.out_len, BYTES(1, 1));
	assert_failed(&s, -EACCES, 1);
}

Test(auth, feeding_while_awaiting_verdict_is_einval_and_consumes_nothing)
{
	struct socks5_server s;

	server_at_auth(&s);
	feed_expect(&s, BYTES(1, 1, 'u', 1, 'p'), SOCKS5_CHECK_AUTH, 5);
	feed_expect(&s, BYTES(5, 1, 0, 1, 1, 2, 3, 4, 0, 80), SOCKS5_ERROR, 0);
	cr_assert_eq(s.out_len, 0);
	cr_assert_eq(s.err, -EINVAL);
	cr_assert_eq(s.state, SOCKS5_SRV_FAILED);
}

Test(auth, verdict_outside_auth_check_is_einval)
{
	struct socks5_server s;

	socks5_server_init(&s, BOTH);
	cr_assert_eq(socks5_server_auth_verdict(&s, 1), SOCKS5_ERROR);
	cr_assert_eq(s.err, -EINVAL);
	cr_assert_eq(s.out_len, 0);
	server_at_request(&s);
	cr_assert_eq(socks5_server_auth_verdict(&s, 1), SOCKS5_ERROR);
	cr_assert_eq(s.err, -EINVAL);
	cr_assert_eq(s.out_len, 0);
}

/* ---- request ---- */

Test(request, delivers_ipv4_connect_with_raw_bytes)
{
	static const uint8_t m[] = {5, 1, 0, 1, 93, 184, 216, 34, 0x01, 0xBB};
	struct socks5_server s;

	server_at_request(&s);
	feed_expect(&s, m, sizeof(m), SOCKS5_REQUEST, sizeof(m));
	cr_assert_eq(s.state, SOCKS5_SRV_DONE);
	cr_assert_eq(s.req.cmd, SOCKS5_CMD_CONNECT);
	cr_assert_eq(s.req.dst.atyp, SOCKS5_ATYP_IPV4);
	cr_assert_eq(s.req.dst.len, 4);
	cr_assert_eq(s.req.dst.port, 443);
	cr_assert_arr_eq(s.req.dst.u.ipv4, ((uint8_t[]){93, 184, 216, 34}), 4);
	assert_bytes(s.raw, s.raw_len, m, sizeof(m));
}

Test(request, delivers_ipv6_bind)
{
	static const uint8_t m[] = {5, 2, 0, 4, 0x20, 1, 0xd, 0xb8, 1,  2,    3,
	                            4, 5, 6, 7, 8,    9, 10,  11,   12, 0x10, 0x00};
	struct socks5_server s;

	server_at_request(&s);
	feed_expect(&s, m, sizeof(m), SOCKS5_REQUEST, sizeof(m));
	cr_assert_eq(s.req.cmd, SOCKS5_CMD_BIND);
	cr_assert_eq(s.req.dst.atyp, SOCKS5_ATYP_IPV6);
	cr_assert_eq(s.req.dst.len, 16);
	cr_assert_eq(s.req.dst.port, 4096);
	cr_assert_arr_eq(s.req.dst.u.ipv6, m + 4, 16);
	assert_bytes(s.raw, s.raw_len, m, sizeof(m));
}

Test(request, delivers_domain_udp_associate_with_terminated_name)
{
	static const uint8_t m[] = {5, 3, 0, 3, 7, 'a', '.', 'e', 'x', 'a', 'm', 'p', 0, 53};
	struct socks5_server s;

	server_at_request(&s);
	feed_expect(&s, m, sizeof(m), SOCKS5_REQUEST, sizeof(m));
	cr_assert_eq(s.req.cmd, SOCKS5_CMD_UDP_ASSOCIATE);
	cr_assert_eq(s.req.dst.atyp, SOCKS5_ATYP_DOMAIN);
	cr_assert_eq(s.req.dst.len, 7);
	cr_assert_str_eq(s.req.dst.u.name, "a.examp");
	cr_assert_eq(s.req.dst.port, 53);
	assert_bytes(s.raw, s.raw_len, m, sizeof(m));
}

Test(request, delivers_255_byte_domain)
{
	uint8_t m[SOCKS5_MAX_REQUEST];
	struct socks5_server s;

	memcpy(m, (uint8_t[]){5, 1, 0, 3, 255}, 5);
	memset(m + 5, 'd', 255);
	m[260] = 0xFF;
	m[261] = 0xFE;
	server_at_request(&s);
	feed_expect(&s, m, sizeof(m), SOCKS5_REQUEST, SOCKS5_MAX_REQUEST);
	cr_assert_eq(s.req.dst.len, 255);
	cr_assert_arr_eq(s.req.dst.u.name, m + 5, 255);
	cr_assert_eq(s.req.dst.u.name[255], '\0');
	cr_assert_eq(s.req.dst.port, 0xFFFE);
	assert_bytes(s.raw, s.raw_len, m, sizeof(m));
}

Test(request, ignores_reserved_byte)
{
	static const uint8_t m[] = {5, 1, 0xAA, 1, 1, 2, 3, 4, 0, 80};
	struct socks5_server s;

	server_at_request(&s);
	feed_expect(&s, m, sizeof(m), SOCKS5_REQUEST, sizeof(m));
	assert_bytes(s.raw, s.raw_len, m, sizeof(m));
}

Test(request, rejects_wrong_version_at_first_byte_with_general_failure)
{
	struct socks5_server s;

	server_at_request(&s);
	feed_expect(&s, BYTES(4, 1, 0, 1, 1, 2, 3, 4, 0, 80), SOCKS5_ERROR, 1);
	assert_bytes(s.out, s.out_len, BYTES(5, 1, 0, 1, 0, 0, 0, 0, 0, 0));
	assert_failed(&s, -EPROTO, SOCKS5_REP_GENERAL_FAILURE);
}

Test(request, rejects_unknown_atyp_after_the_atyp_byte_with_reply_8)
{
	static const uint8_t atyps[] = {0, 2, 5, 0xFF};
	struct socks5_server s;

	for (size_t i = 0; i < sizeof(atyps); i++) {
		uint8_t m[] = {5, 1, 0, atyps[i], 1, 2, 3, 4, 0, 80};

		server_at_request(&s);
		feed_expect(&s, m, sizeof(m), SOCKS5_ERROR, 4);
		assert_bytes(s.out, s.out_len, BYTES(5, 8, 0, 1, 0, 0, 0, 0, 0, 0));
		assert_failed(&s, -EAFNOSUPPORT, SOCKS5_REP_ATYP_NOT_SUPPORTED);
	}
}

Test(request, rejects_empty_domain_after_the_length_byte_with_reply_1)
{
	struct socks5_server s;

	server_at_request(&s);
	feed_expect(&s, BYTES(5, 1, 0, 3, 0, 0, 80), SOCKS5_ERROR, 5);
	assert_bytes(s.out, s.out_len, BYTES(5, 1, 0, 1, 0, 0, 0, 0, 0, 0));
	assert_failed(&s, -EPROTO, SOCKS5_REP_GENERAL_FAILURE);
}

Test(request, reads_whole_request_with_unknown_command_then_replies_7)
{
	static const uint8_t cmds[] = {0, 4, 0x7F, 0xFF};
	struct socks5_server s;

	for (size_t i = 0; i < sizeof(cmds); i++) {
		uint8_t m[] = {5, cmds[i], 0, 3, 2, 'h', 'i', 0, 80, 'x', 'y'};

		server_at_request(&s);
		feed_expect(&s, m, 4, SOCKS5_NEED_MORE, 4);
		feed_expect(&s, m + 4, sizeof(m) - 4, SOCKS5_ERROR, 5);
		assert_bytes(s.out, s.out_len, BYTES(5, 7, 0, 1, 0, 0, 0, 0, 0, 0));
		assert_failed(&s, -EOPNOTSUPP, SOCKS5_REP_CMD_NOT_SUPPORTED);
	}
}

Test(request, keeps_an_unsent_greeting_answer_intact_when_the_request_fails)
{
	struct socks5_server s;
	const uint8_t *greeting_out;

	socks5_server_init(&s, SOCKS5_OFFER_NOAUTH);
	feed_expect(&s, BYTES(5, 1, 0), SOCKS5_SEND, 3);
	greeting_out = s.out;
	feed_expect(&s, BYTES(5, 1, 0, 9), SOCKS5_ERROR, 4);
	assert_bytes(greeting_out, 2, BYTES(5, 0));
	assert_bytes(s.out, s.out_len, BYTES(5, 8, 0, 1, 0, 0, 0, 0, 0, 0));
}

Test(request, keeps_an_unsent_auth_answer_intact_when_the_request_fails)
{
	struct socks5_server s;
	const uint8_t *greeting_out, *auth_out;

	socks5_server_init(&s, SOCKS5_OFFER_USERPASS);
	feed_expect(&s, BYTES(5, 1, 2), SOCKS5_SEND, 3);
	greeting_out = s.out;
	feed_expect(&s, BYTES(1, 1, 'u', 0), SOCKS5_CHECK_AUTH, 4);
	cr_assert_eq(socks5_server_auth_verdict(&s, 1), SOCKS5_SEND);
	auth_out = s.out;
	feed_expect(&s, BYTES(7), SOCKS5_ERROR, 1);
	assert_bytes(greeting_out, 2, BYTES(5, 2));
	assert_bytes(auth_out, 2, BYTES(1, 0));
	assert_bytes(s.out, s.out_len, BYTES(5, 1, 0, 1, 0, 0, 0, 0, 0, 0));
}

Test(request, feeding_after_done_is_einval_and_consumes_nothing)
{
	struct socks5_server s;

	server_at_request(&s);
	feed_expect(&s, BYTES(5, 1, 0, 1, 1, 2, 3, 4, 0, 80), SOCKS5_REQUEST, 10);
	feed_expect(&s, BYTES('G', 'E', 'T'), SOCKS5_ERROR, 0);
	cr_assert_eq(s.out_len, 0);
	cr_assert_eq(s.err, -EINVAL);
	feed_expect(&s, NULL, 0, SOCKS5_ERROR, 0);
	cr_assert_eq(s.out_len, 0);
}

Test(request, feeding_after_failure_is_einval_and_consumes_nothing)
{
	struct socks5_server s;

	socks5_server_init(&s, BOTH);
	feed_expect(&s, BYTES(4), SOCKS5_ERROR, 1);
	feed_expect(&s, BYTES(5, 1, 0), SOCKS5_ERROR, 0);
	cr_assert_eq(s.out_len, 0);
	cr_assert_eq(s.err, -EINVAL);
	cr_assert_eq(s.state, SOCKS5_SRV_FAILED);
}

/* ---- pipelining ---- */

Test(pipeline, greeting_request_and_payload_in_one_buffer)
{
	static const uint8_t in[] = {5, 1, 0, 5, 1, 0, 1, 10, 0, 0, 1, 0, 22, 'S', 'S', 'H', '-'};
	struct socks5_server s;
	size_t used, pos = 0;

	socks5_server_init(&s, SOCKS5_OFFER_NOAUTH);
	cr_assert_eq(socks5_server_feed(&s, in, sizeof(in), &used), SOCKS5_SEND);
	cr_assert_eq(used, 3);
	assert_bytes(s.out, s.out_len, BYTES(5, 0));
	pos += used;
	cr_assert_eq(socks5_server_feed(&s, in + pos, sizeof(in) - pos, &used), SOCKS5_REQUEST);
	cr_assert_eq(used, 10);
	assert_bytes(s.raw, s.raw_len, in + 3, 10);
	pos += used;
	assert_bytes(in + pos, sizeof(in) - pos, BYTES('S', 'S', 'H', '-'));
}

Test(pipeline, greeting_auth_request_and_payload_in_one_buffer)
{
	static const uint8_t in[] = {5,   2,   0,   2,                /* greeting */
	                             1,   2,   'm', 'e', 2, 'p', 'w', /* auth */
	                             5,   1,   0,   3,   3, 'f', 'o', 'o', 0x1F, 0x90, /* request */
	                             'G', 'E', 'T', ' '};
	struct socks5_server s;
	size_t used, pos = 0;

	socks5_server_init(&s, BOTH);
	cr_assert_eq(socks5_server_feed(&s, in, sizeof(in), &used), SOCKS5_SEND);
	cr_assert_eq(used, 4);
	assert_bytes(s.out, s.out_len, BYTES(5, 2));
	pos += used;
	cr_assert_eq(socks5_server_feed(&s, in + pos, sizeof(in) - pos, &used), SOCKS5_CHECK_AUTH);
	cr_assert_eq(used, 7);
	cr_assert_str_eq(s.user, "me");
	cr_assert_str_eq(s.pass, "pw");
	pos += used;
	cr_assert_eq(socks5_server_auth_verdict(&s, 1), SOCKS5_SEND);
	assert_bytes(s.out, s.out_len, BYTES(1, 0));
	cr_assert_eq(socks5_server_feed(&s, in + pos, sizeof(in) - pos, &used), SOCKS5_REQUEST);
	cr_assert_eq(used, 10);
	cr_assert_str_eq(s.req.dst.u.name, "foo");
	cr_assert_eq(s.req.dst.port, 8080);
	assert_bytes(s.raw, s.raw_len, in + 11, 10);
	pos += used;
	assert_bytes(in + pos, sizeof(in) - pos, BYTES('G', 'E', 'T', ' '));
}

/* ---- any split of the input ---- */

/* What a server did with one input stream, independent of how the stream was cut. */
struct run {
	uint8_t out[2048];
	size_t out_len;
	enum socks5_status events[8]; /* statuses other than NEED_MORE, in order */
	size_t nevents;
	size_t consumed; /* input used when the handshake ended */
	char user[256], pass[256];
	struct socks5_request req;
	uint8_t raw[SOCKS5_MAX_REQUEST];
	size_t raw_len;
	int err;
	uint8_t reply, state;
};

static void run_event(struct run *r, enum socks5_status st)
{
	cr_assert_lt(r->nevents, sizeof(r->events) / sizeof(r->events[0]));
	r->events[r->nevents++] = st;
}

static void run_output(struct run *r, const struct socks5_server *s)
{
	cr_assert_leq(r->out_len + s->out_len, sizeof(r->out));
	memcpy(r->out + r->out_len, s->out, s->out_len);
	r->out_len += s->out_len;
}

/* How the server is set up: offered methods and the only credentials it accepts. */
struct setup {
	unsigned offer;
	const char *user, *pass;
};

static const struct setup noauth = {SOCKS5_OFFER_NOAUTH, NULL, NULL};
static const struct setup both = {BOTH, "user", "secret"};

/* Delivers in[0..len) in pieces ending at cuts[0..ncuts) and then len, and like a daemon keeps
 * feeding after each answer until the server needs more or is finished. */
static void run_server(struct run *r, const struct setup *setup, const uint8_t *in, size_t len,
                       const size_t *cuts, size_t ncuts)
{
	struct socks5_server s;
	size_t pos = 0, avail, used;
	enum socks5_status st;

	memset(r, 0, sizeof(*r));
	socks5_server_init(&s, setup->offer);
	for (size_t c = 0; c <= ncuts; c++) {
		avail = c < ncuts ? cuts[c] : len;
		cr_assert_geq(avail, pos);
		for (;;) {
			st = socks5_server_feed(&s, in + pos, avail - pos, &used);
			cr_assert_leq(used, avail - pos);
			pos += used;
			if (st == SOCKS5_NEED_MORE) {
				cr_assert_eq(pos, avail, "NEED_MORE left input unconsumed");
				break;
			}
			run_event(r, st);
			if (st == SOCKS5_SEND) {
				run_output(r, &s);
				continue;
			}
			if (st == SOCKS5_CHECK_AUTH) {
				memcpy(r->user, s.user, s.user_len + 1u);
				memcpy(r->pass, s.pass, s.pass_len + 1u);
				st = socks5_server_auth_verdict(
				    &s, setup->user && !strcmp(s.user, setup->user) &&
				            !strcmp(s.pass, setup->pass));
				run_event(r, st);
				run_output(r, &s);
				if (st == SOCKS5_SEND)
					continue;
			} else if (st == SOCKS5_REQUEST) {
				r->req = s.req;
				memcpy(r->raw, s.raw, s.raw_len);
				r->raw_len = s.raw_len;
			} else {
				run_output(r, &s);
			}
			goto finished;
		}
	}
finished:
	r->consumed = pos;
	r->err = s.err;
	r->reply = s.reply;
	r->state = s.state;
}

static void assert_same_run(const struct run *a, const struct run *b, const char *how)
{
	assert_bytes(a->out, a->out_len, b->out, b->out_len);
	cr_assert_eq(a->nevents, b->nevents, "%s: event count", how);
	for (size_t i = 0; i < a->nevents; i++)
		cr_assert_eq(a->events[i], b->events[i], "%s: event %zu", how, i);
	cr_assert_eq(a->consumed, b->consumed, "%s: consumed %zu vs %zu", how, a->consumed,
	             b->consumed);
	cr_assert_str_eq(a->user, b->user, "%s", how);
	cr_assert_str_eq(a->pass, b->pass, "%s", how);
	cr_assert_eq(a->req.cmd, b->req.cmd, "%s", how);
	cr_assert_eq(a->req.dst.atyp, b->req.dst.atyp, "%s", how);
	cr_assert_eq(a->req.dst.len, b->req.dst.len, "%s", how);
	cr_assert_eq(a->req.dst.port, b->req.dst.port, "%s", how);
	cr_assert_arr_eq(a->req.dst.u.name, b->req.dst.u.name, sizeof(a->req.dst.u.name), "%s",
	                 how);
	assert_bytes(a->raw, a->raw_len, b->raw, b->raw_len);
	cr_assert_eq(a->err, b->err, "%s", how);
	cr_assert_eq(a->reply, b->reply, "%s", how);
	cr_assert_eq(a->state, b->state, "%s", how);
}

/* Every two-piece cut (including empty pieces) and one byte at a time match the whole. */
static void assert_split_invariant(const struct setup *setup, const uint8_t *in, size_t len,
                                   const struct run *whole)
{
	size_t cuts[2048];
	struct run r;
	char how[64];

	cr_assert_lt(len, sizeof(cuts) / sizeof(cuts[0]));
	for (size_t k = 0; k <= len; k++) {
		cuts[0] = k;
		run_server(&r, setup, in, len, cuts, 1);
		snprintf(how, sizeof(how), "cut at %zu", k);
		assert_same_run(&r, whole, how);
	}
	for (size_t k = 1; k < len; k++)
		cuts[k - 1] = k;
	run_server(&r, setup, in, len, cuts, len > 0 ? len - 1 : 0);
	assert_same_run(&r, whole, "byte at a time");
}

static const uint8_t req_ipv4[] = {5, 1, 0, 1, 127, 0, 0, 1, 0x1F, 0x90};
static const uint8_t req_ipv6[] = {5, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0,
                                   0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 21};
static const uint8_t req_name[] = {5, 3, 0, 3, 4, 'h', 'o', 's', 't', 0xC3, 0x50};
static const uint8_t payload[] = {'P', 'A', 'Y'};

/* Builds greeting [+ auth] + request + payload into buf; returns the length. */
static size_t build_stream(uint8_t *buf, int with_auth, const uint8_t *req, size_t req_len)
{
	static const uint8_t g_noauth[] = {5, 1, 0};
	static const uint8_t g_both[] = {5, 2, 0, 2};
	static const uint8_t auth[] = {1, 4, 'u', 's', 'e', 'r', 6, 's', 'e', 'c', 'r', 'e', 't'};
	size_t n = 0;

	if (with_auth) {
		memcpy(buf, g_both, sizeof(g_both));
		n += sizeof(g_both);
		memcpy(buf + n, auth, sizeof(auth));
		n += sizeof(auth);
	} else {
		memcpy(buf, g_noauth, sizeof(g_noauth));
		n += sizeof(g_noauth);
	}
	memcpy(buf + n, req, req_len);
	n += req_len;
	memcpy(buf + n, payload, sizeof(payload));
	return n + sizeof(payload);
}

static void check_valid_exchange(int with_auth, const uint8_t *req, size_t req_len)
{
	uint8_t in[512];
	size_t len = build_stream(in, with_auth, req, req_len);
	const struct setup *setup = with_auth ? &both : &noauth;
	struct run whole;

	run_server(&whole, setup, in, len, NULL, 0);
	/* the unsplit run itself is right */
	if (with_auth) {
		assert_bytes(whole.out, whole.out_len, BYTES(5, 2, 1, 0));
		cr_assert_eq(whole.nevents, 4);
		cr_assert_eq(whole.events[1], SOCKS5_CHECK_AUTH);
		cr_assert_str_eq(whole.user, "user");
		cr_assert_str_eq(whole.pass, "secret");
	} else {
		assert_bytes(whole.out, whole.out_len, BYTES(5, 0));
		cr_assert_eq(whole.nevents, 2);
	}
	cr_assert_eq(whole.events[whole.nevents - 1], SOCKS5_REQUEST);
	cr_assert_eq(whole.consumed, len - sizeof(payload));
	assert_bytes(whole.raw, whole.raw_len, req, req_len);
	cr_assert_eq(whole.req.cmd, req[1]);
	cr_assert_eq(whole.req.dst.atyp, req[3]);
	cr_assert_eq(whole.state, SOCKS5_SRV_DONE);
	assert_split_invariant(setup, in, len, &whole);
}

Test(split, noauth_ipv4_same_result_for_every_cut)
{
	check_valid_exchange(0, req_ipv4, sizeof(req_ipv4));
}

Test(split, noauth_ipv6_same_result_for_every_cut)
{
	check_valid_exchange(0, req_ipv6, sizeof(req_ipv6));
}

Test(split, noauth_domain_same_result_for_every_cut)
{
	check_valid_exchange(0, req_name, sizeof(req_name));
}

Test(split, userpass_ipv4_same_result_for_every_cut)
{
	check_valid_exchange(1, req_ipv4, sizeof(req_ipv4));
}

Test(split, userpass_ipv6_same_result_for_every_cut)
{
	check_valid_exchange(1, req_ipv6, sizeof(req_ipv6));
}

Test(split, userpass_domain_same_result_for_every_cut)
{
	check_valid_exchange(1, req_name, sizeof(req_name));
}

Test(split, max_lengths_same_result_byte_at_a_time)
{
	uint8_t in[1200];
	size_t n = 0;
	char user[256], pass[256];
	struct setup longest = {BOTH, user, pass};
	struct run whole;

	memset(user, 'u', 255);
	memset(pass, 'p', 255);
	user[255] = pass[255] = '\0';
	/* 255 methods, 255-byte user and password, 255-byte domain */
	in[n++] = 5;
	in[n++] = 255;
	for (int i = 0; i < 254; i++)
		in[n++] = (uint8_t)(0x80 + i % 0x70);
	in[n++] = 2;
	in[n++] = 1;
	in[n++] = 255;
	memset(in + n, 'u', 255);
	n += 255;
	in[n++] = 255;
	memset(in + n, 'p', 255);
	n += 255;
	memcpy(in + n, (uint8_t[]){5, 1, 0, 3, 255}, 5);
	n += 5;
	memset(in + n, 'h', 255);
	n += 255;
	in[n++] = 0;
	in[n++] = 80;
	run_server(&whole, &longest, in, n, NULL, 0);
	cr_assert_eq(whole.nevents, 4);
	cr_assert_eq(whole.events[3], SOCKS5_REQUEST);
	cr_assert_eq(whole.consumed, n);
	cr_assert_str_eq(whole.user, user);
	cr_assert_str_eq(whole.pass, pass);
	assert_bytes(whole.out, whole.out_len, BYTES(5, 2, 1, 0));
	assert_bytes(whole.raw, whole.raw_len, in + n - SOCKS5_MAX_REQUEST, SOCKS5_MAX_REQUEST);
	cr_assert_eq(whole.req.dst.len, 255);
	assert_split_invariant(&longest, in, n, &whole);
}

Test(split, rejections_same_result_for_every_cut)
{
	static const struct setup userpass_only = {SOCKS5_OFFER_USERPASS, "user", "secret"};
	const struct {
		const struct setup *setup;
		uint8_t in[32];
		size_t len;
		uint8_t out[16];
		size_t out_len;
		size_t consumed;
		int err;
	} cases[] = {
	    {&both, {'G', 'E', 'T', ' ', '/'}, 5, {0}, 0, 1, -EPROTO},
	    {&both, {5, 0, 5, 1, 0}, 5, {5, 0xFF}, 2, 2, -EPROTO},
	    {&userpass_only, {5, 1, 0, 1}, 4, {5, 0xFF}, 2, 3, -ENOTSUP},
	    {&both, {5, 1, 2, 5, 1, 'u', 0}, 7, {5, 2, 1, 1}, 4, 4, -EPROTO},
	    {&both, {5, 1, 2, 1, 0, 0}, 6, {5, 2, 1, 1}, 4, 5, -EPROTO},
	    {&both, {5, 1, 2, 1, 1, 'u', 1, 'p', 5, 1, 0, 1}, 12, {5, 2, 1, 1}, 4, 8, -EACCES},
	    {&both,
	     {5, 1, 0, 5, 1, 0, 6, 1, 2, 3, 4, 0, 80},
	     13,
	     {5, 0, 5, 8, 0, 1, 0, 0, 0, 0, 0, 0},
	     12,
	     7,
	     -EAFNOSUPPORT},
	    {&both,
	     {5, 1, 0, 5, 1, 0, 3, 0, 0, 80},
	     10,
	     {5, 0, 5, 1, 0, 1, 0, 0, 0, 0, 0, 0},
	     12,
	     8,
	     -EPROTO},
	    {&both,
	     {5, 1, 0, 5, 9, 0, 1, 1, 2, 3, 4, 0, 80, 'x'},
	     14,
	     {5, 0, 5, 7, 0, 1, 0, 0, 0, 0, 0, 0},
	     12,
	     13,
	     -EOPNOTSUPP},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct run whole;

		run_server(&whole, cases[i].setup, cases[i].in, cases[i].len, NULL, 0);
		assert_bytes(whole.out, whole.out_len, cases[i].out, cases[i].out_len);
		cr_assert_eq(whole.consumed, cases[i].consumed, "case %zu", i);
		cr_assert_eq(whole.err, cases[i].err, "case %zu", i);
		cr_assert_eq(whole.state, SOCKS5_SRV_FAILED, "case %zu", i);
		cr_assert_eq(whole.events[whole.nevents - 1], SOCKS5_ERROR, "case %zu", i);
		assert_split_invariant(cases[i].setup, cases[i].in, cases[i].len, &whole);
	}
}
