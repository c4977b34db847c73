/* test_socks5_client.c - the client handshake state machine: set-up checks, every message it
 * sends (exact bytes), every server answer it rejects, and that any split gives the same result. */
#include <criterion/criterion.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <ringsocks/socks5.h>

#include "testutil.h"

static void feed_expect(struct socks5_client *c, const uint8_t *in, size_t len,
                        enum socks5_status want, size_t want_used)
{
	size_t used = 12345;
	enum socks5_status st = socks5_client_feed(c, in, len, &used);

	cr_assert_eq(st, want, "status %d, want %d", st, want);
	cr_assert_eq(used, want_used, "consumed %zu, want %zu", used, want_used);
}

static void assert_failed(const struct socks5_client *c, int err)
{
	cr_assert_eq(c->state, SOCKS5_CLI_FAILED);
	cr_assert_eq(c->err, err, "err %d, want %d", c->err, err);
	cr_assert_eq(c->out_len, 0);
}

static const struct socks5_addr dst4 = {
    .atyp = SOCKS5_ATYP_IPV4, .len = 4, .port = 80, .u.ipv4 = {10, 0, 0, 2}};
static const uint8_t dst4_req[] = {5, 1, 0, 1, 10, 0, 0, 2, 0, 80};

/* Client after start, greeting checked. */
static void client_started(struct socks5_client *c, uint8_t cmd, const char *user, const char *pass)
{
	cr_assert_eq(socks5_client_init(c, cmd, &dst4, user, pass), 0);
	cr_assert_eq(socks5_client_start(c), SOCKS5_SEND);
	cr_assert_eq(c->state, SOCKS5_CLI_METHOD);
}

/* Client whose request (CONNECT 10.0.0.2:80 unless cmd says otherwise) has been sent. */
static void client_at_reply(struct socks5_client *c, uint8_t cmd)
{
	client_started(c, cmd, NULL, NULL);
	feed_expect(c, BYTES(5, 0), SOCKS5_SEND, 2);
	cr_assert_eq(c->state, SOCKS5_CLI_REPLY);
}

/* ---- set-up ---- */

Test(client_init, rejects_commands_outside_1_to_3)
{
	struct socks5_client c;

	cr_assert_eq(socks5_client_init(&c, 0, &dst4, NULL, NULL), -EINVAL);
	cr_assert_eq(socks5_client_init(&c, 4, &dst4, NULL, NULL), -EINVAL);
	cr_assert_eq(socks5_client_init(&c, 0xFF, &dst4, NULL, NULL), -EINVAL);
	for (uint8_t cmd = 1; cmd <= 3; cmd++)
		cr_assert_eq(socks5_client_init(&c, cmd, &dst4, NULL, NULL), 0);
}

Test(client_init, rejects_invalid_destinations)
{
	struct socks5_client c;
	struct socks5_addr a = dst4;

	cr_assert_eq(socks5_client_init(&c, 1, NULL, NULL, NULL), -EINVAL);
	a.atyp = 2;
	cr_assert_eq(socks5_client_init(&c, 1, &a, NULL, NULL), -EINVAL);
	a = dst4;
	a.len = 3;
	cr_assert_eq(socks5_client_init(&c, 1, &a, NULL, NULL), -EINVAL);
	a.atyp = SOCKS5_ATYP_IPV6;
	a.len = 4;
	cr_assert_eq(socks5_client_init(&c, 1, &a, NULL, NULL), -EINVAL);
	a.atyp = SOCKS5_ATYP_DOMAIN;
	a.len = 0;
	cr_assert_eq(socks5_client_init(&c, 1, &a, NULL, NULL), -EINVAL);
}

Test(client_init, rejects_half_or_oversized_credentials)
{
	char big[257];
	struct socks5_client c;

	memset(big, 'b', 256);
	big[256] = '\0';
	cr_assert_eq(socks5_client_init(&c, 1, &dst4, "u", NULL), -EINVAL);
	cr_assert_eq(socks5_client_init(&c, 1, &dst4, NULL, "p"), -EINVAL);
	cr_assert_eq(socks5_client_init(&c, 1, &dst4, "", "p"), -EINVAL);
	cr_assert_eq(socks5_client_init(&c, 1, &dst4, big, "p"), -EINVAL);
	cr_assert_eq(socks5_client_init(&c, 1, &dst4, "u", big), -EINVAL);
	big[255] = '\0';
	cr_assert_eq(socks5_client_init(&c, 1, &dst4, big, big), 0);
	cr_assert_eq(c.user_len, 255);
	cr_assert_eq(c.pass_len, 255);
	cr_assert_eq(socks5_client_init(&c, 1, &dst4, "u", ""), 0);
	cr_assert_eq(c.pass_len, 0);
}

Test(client_init, failed_init_refuses_to_start)
{
	struct socks5_client c;

	cr_assert_eq(socks5_client_init(&c, 9, &dst4, NULL, NULL), -EINVAL);
	cr_assert_eq(socks5_client_start(&c), SOCKS5_ERROR);
	cr_assert_eq(c.err, -EINVAL);
	cr_assert_eq(c.out_len, 0);
}

Test(client_init, encodes_the_request_and_copies_credentials)
{
	char user[] = "name", pass[] = "word";
	struct socks5_client c;

	cr_assert_eq(socks5_client_init(&c, SOCKS5_CMD_CONNECT, &dst4, user, pass), 0);
	memset(user, 'X', 4);
	memset(pass, 'X', 4);
	cr_assert_eq(c.cmd, SOCKS5_CMD_CONNECT);
	cr_assert_null(c.raw_req);
	assert_bytes(c.req_buf, c.raw_len, dst4_req, sizeof(dst4_req));
	cr_assert_str_eq(c.user, "name");
	cr_assert_str_eq(c.pass, "word");
}

Test(client_init_raw, accepts_each_well_formed_request_and_keeps_the_pointer)
{
	static const uint8_t r4[] = {5, 1, 0, 1, 1, 2, 3, 4, 0, 80};
	static const uint8_t r6[] = {5, 2, 9, 4, 0, 0, 0, 0, 0, 0, 0,
	                             0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1};
	static const uint8_t rn[] = {5, 3, 0, 3, 1, 'x', 0, 0};
	const uint8_t *reqs[] = {r4, r6, rn};
	const size_t lens[] = {sizeof(r4), sizeof(r6), sizeof(rn)};
	struct socks5_client c;

	for (int i = 0; i < 3; i++) {
		cr_assert_eq(socks5_client_init_raw(&c, reqs[i], lens[i], NULL, NULL), 0);
		cr_assert_eq(c.cmd, reqs[i][1]);
		cr_assert_eq(socks5_client_start(&c), SOCKS5_SEND);
		feed_expect(&c, BYTES(5, 0), SOCKS5_SEND, 2);
		cr_assert_eq(c.out, reqs[i], "raw request must be sent from the caller's bytes");
		cr_assert_eq(c.out_len, lens[i]);
	}
}

Test(client_init_raw, rejects_anything_but_exactly_one_well_formed_request)
{
	struct socks5_client c;

	cr_assert_eq(
	    socks5_client_init_raw(&c, BYTES(5, 1, 0, 1, 1, 2, 3, 4, 0, 80, 0), NULL, NULL),
	    -EINVAL); /* trailing byte */
	cr_assert_eq(socks5_client_init_raw(&c, BYTES(5, 1, 0, 1, 1, 2, 3, 4, 0), NULL, NULL),
	             -EINVAL); /* truncated */
	cr_assert_eq(socks5_client_init_raw(&c, BYTES(4, 1, 0, 1, 1, 2, 3, 4, 0, 80), NULL, NULL),
	             -EINVAL);
	cr_assert_eq(socks5_client_init_raw(&c, BYTES(5, 1, 0, 2, 1, 2, 3, 4, 0, 80), NULL, NULL),
	             -EINVAL);
	cr_assert_eq(socks5_client_init_raw(&c, BYTES(5, 1, 0, 3, 0, 0, 80), NULL, NULL), -EINVAL);
	cr_assert_eq(socks5_client_init_raw(&c, BYTES(5, 0, 0, 1, 1, 2, 3, 4, 0, 80), NULL, NULL),
	             -EINVAL);
	cr_assert_eq(socks5_client_init_raw(&c, BYTES(5, 4, 0, 1, 1, 2, 3, 4, 0, 80), NULL, NULL),
	             -EINVAL);
	cr_assert_eq(socks5_client_init_raw(&c, dst4_req, 0, NULL, NULL), -EINVAL);
	cr_assert_eq(socks5_client_init_raw(&c, NULL, 10, NULL, NULL), -EINVAL);
	cr_assert_eq(socks5_client_init_raw(&c, dst4_req, sizeof(dst4_req), "u", NULL), -EINVAL);
	cr_assert_eq(socks5_client_start(&c), SOCKS5_ERROR);
}

/* ---- greeting and method selection ---- */

Test(client_start, offers_only_noauth_without_credentials)
{
	struct socks5_client c;

	client_started(&c, 1, NULL, NULL);
	assert_bytes(c.out, c.out_len, BYTES(5, 1, 0));
}

Test(client_start, offers_noauth_and_userpass_with_credentials)
{
	struct socks5_client c;

	client_started(&c, 1, "u", "p");
	assert_bytes(c.out, c.out_len, BYTES(5, 2, 0, 2));
}

Test(client_start, second_start_is_einval)
{
	struct socks5_client c;

	client_started(&c, 1, NULL, NULL);
	cr_assert_eq(socks5_client_start(&c), SOCKS5_ERROR);
	cr_assert_eq(c.err, -EINVAL);
}

Test(client_method, feeding_before_start_is_einval)
{
	struct socks5_client c;

	cr_assert_eq(socks5_client_init(&c, 1, &dst4, NULL, NULL), 0);
	feed_expect(&c, BYTES(5, 0), SOCKS5_ERROR, 0);
	assert_failed(&c, -EINVAL);
}

Test(client_method, noauth_sends_the_request)
{
	struct socks5_client c;

	client_started(&c, 1, "u", "p");
	feed_expect(&c, BYTES(5, 0, 5, 0), SOCKS5_SEND, 2);
	assert_bytes(c.out, c.out_len, dst4_req, sizeof(dst4_req));
	cr_assert_eq(c.state, SOCKS5_CLI_REPLY);
}

Test(client_method, userpass_sends_rfc1929_credentials)
{
	struct socks5_client c;

	client_started(&c, 1, "alice", "pw");
	feed_expect(&c, BYTES(5, 2), SOCKS5_SEND, 2);
	assert_bytes(c.out, c.out_len, BYTES(1, 5, 'a', 'l', 'i', 'c', 'e', 2, 'p', 'w'));
	cr_assert_eq(c.state, SOCKS5_CLI_AUTH);
}

Test(client_method, userpass_sends_empty_password_and_255_byte_maximums)
{
	char big[256];
	uint8_t want[SOCKS5_MAX_AUTH];
	struct socks5_client c;

	client_started(&c, 1, "u", "");
	feed_expect(&c, BYTES(5, 2), SOCKS5_SEND, 2);
	assert_bytes(c.out, c.out_len, BYTES(1, 1, 'u', 0));

	memset(big, 'm', 255);
	big[255] = '\0';
	want[0] = 1;
	want[1] = 255;
	memset(want + 2, 'm', 255);
	want[257] = 255;
	memset(want + 258, 'm', 255);
	client_started(&c, 1, big, big);
	feed_expect(&c, BYTES(5, 2), SOCKS5_SEND, 2);
	assert_bytes(c.out, c.out_len, want, sizeof(want));
}

Test(client_method, rejects_userpass_it_did_not_offer)
{
	struct socks5_client c;

	client_started(&c, 1, NULL, NULL);
	feed_expect(&c, BYTES(5, 2), SOCKS5_ERROR, 2);
	assert_failed(&c, -EPROTO);
}

Test(client_method, no_acceptable_method_is_enotsup)
{
	struct socks5_client c;

	client_started(&c, 1, "u", "p");
	feed_expect(&c, BYTES(5, 0xFF), SOCKS5_ERROR, 2);
	assert_failed(&c, -ENOTSUP);
}

Test(client_method, rejects_gssapi_and_unknown_methods)
{
	static const uint8_t methods[] = {1, 3, 0x80, 0xFE};
	struct socks5_client c;

	for (size_t i = 0; i < sizeof(methods); i++) {
		uint8_t m[] = {5, methods[i]};

		client_started(&c, 1, "u", "p");
		feed_expect(&c, m, 2, SOCKS5_ERROR, 2);
		assert_failed(&c, -EPROTO);
	}
}

Test(client_method, rejects_wrong_version_at_first_byte)
{
	struct socks5_client c;

	client_started(&c, 1, NULL, NULL);
	feed_expect(&c, BYTES(4, 0), SOCKS5_ERROR, 1);
	assert_failed(&c, -EPROTO);
}

/* ---- username/password status ---- */

static void client_at_auth(struct socks5_client *c)
{
	client_started(c, 1, "u", "p");
	feed_expect(c, BYTES(5, 2), SOCKS5_SEND, 2);
	cr_assert_eq(c->state, SOCKS5_CLI_AUTH);
}

Test(client_auth, success_sends_the_request)
{
	struct socks5_client c;

	client_at_auth(&c);
	feed_expect(&c, BYTES(1, 0, 5), SOCKS5_SEND, 2);
	assert_bytes(c.out, c.out_len, dst4_req, sizeof(dst4_req));
	cr_assert_eq(c.state, SOCKS5_CLI_REPLY);
}

Test(client_auth, accepts_socks_version_in_status)
{
	struct socks5_client c;

	client_at_auth(&c);
	feed_expect(&c, BYTES(5, 0), SOCKS5_SEND, 2);
	assert_bytes(c.out, c.out_len, dst4_req, sizeof(dst4_req));
}

Test(client_auth, rejects_other_status_versions_at_first_byte)
{
	struct socks5_client c;

	client_at_auth(&c);
	feed_expect(&c, BYTES(2, 0), SOCKS5_ERROR, 1);
	assert_failed(&c, -EPROTO);
}

Test(client_auth, nonzero_status_is_eacces)
{
	struct socks5_client c;

	client_at_auth(&c);
	feed_expect(&c, BYTES(1, 1), SOCKS5_ERROR, 2);
	assert_failed(&c, -EACCES);
	client_at_auth(&c);
	feed_expect(&c, BYTES(1, 0xFF), SOCKS5_ERROR, 2);
	assert_failed(&c, -EACCES);
}

/* ---- replies ---- */

Test(client_reply, success_fills_bnd_and_leaves_payload_unconsumed)
{
	struct socks5_client c;

	client_at_reply(&c, SOCKS5_CMD_CONNECT);
	feed_expect(&c, BYTES(5, 0, 0, 1, 192, 0, 2, 1, 0x9C, 0x40, 'd', 'a', 't', 'a'),
	            SOCKS5_REPLY, 10);
	cr_assert_eq(c.reply, 0);
	cr_assert_eq(c.nreplies, 1);
	cr_assert_eq(c.state, SOCKS5_CLI_DONE);
	cr_assert_eq(c.bnd.atyp, SOCKS5_ATYP_IPV4);
	cr_assert_arr_eq(c.bnd.u.ipv4, ((uint8_t[]){192, 0, 2, 1}), 4);
	cr_assert_eq(c.bnd.port, 40000);
}

Test(client_reply, fills_ipv6_and_domain_bnd)
{
	struct socks5_client c;

	client_at_reply(&c, SOCKS5_CMD_CONNECT);
	feed_expect(&c,
	            BYTES(5, 0, 0, 4, 0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 0, 7),
	            SOCKS5_REPLY, 22);
	cr_assert_eq(c.bnd.atyp, SOCKS5_ATYP_IPV6);
	cr_assert_eq(c.bnd.len, 16);
	cr_assert_eq(c.bnd.u.ipv6[0], 0xfe);
	cr_assert_eq(c.bnd.u.ipv6[15], 9);
	cr_assert_eq(c.bnd.port, 7);

	client_at_reply(&c, SOCKS5_CMD_CONNECT);
	feed_expect(&c, BYTES(5, 0, 0, 3, 2, 'g', 'w', 1, 0), SOCKS5_REPLY, 9);
	cr_assert_eq(c.bnd.atyp, SOCKS5_ATYP_DOMAIN);
	cr_assert_str_eq(c.bnd.u.name, "gw");
	cr_assert_eq(c.bnd.port, 256);
}

Test(client_reply, each_failure_code_is_econnaborted_with_the_code)
{
	struct socks5_client c;

	for (unsigned rep = 1; rep <= 9; rep++) {
		uint8_t m[] = {5, (uint8_t)rep, 0, 1, 0, 0, 0, 0, 0, 0, 'x'};

		client_at_reply(&c, SOCKS5_CMD_CONNECT);
		feed_expect(&c, m, sizeof(m), SOCKS5_ERROR, 10);
		assert_failed(&c, -ECONNABORTED);
		cr_assert_eq(c.reply, rep);
		cr_assert_eq(c.nreplies, 0);
	}
}

Test(client_reply, rejects_malformed_replies_as_eproto)
{
	struct socks5_client c;

	client_at_reply(&c, 1);
	feed_expect(&c, BYTES(4, 0, 0, 1, 0, 0, 0, 0, 0, 0), SOCKS5_ERROR, 1);
	assert_failed(&c, -EPROTO);
	client_at_reply(&c, 1);
	feed_expect(&c, BYTES(5, 0, 0, 2, 0, 0, 0, 0, 0, 0), SOCKS5_ERROR, 4);
	assert_failed(&c, -EPROTO);
	client_at_reply(&c, 1);
	feed_expect(&c, BYTES(5, 0, 0, 3, 0, 0, 0), SOCKS5_ERROR, 5);
	assert_failed(&c, -EPROTO);
}

Test(client_reply, keeps_the_whole_reply_in_ibuf_for_forwarding)
{
	static const uint8_t ok[] = {5, 0, 0, 3, 4, 'h', 'o', 's', 't', 0x01, 0xBB};
	static const uint8_t refused[] = {5, 5, 0, 1, 9, 8, 7, 6, 0, 1};
	struct socks5_client c;
	uint8_t code;

	client_at_reply(&c, SOCKS5_CMD_CONNECT);
	feed_expect(&c, ok, sizeof(ok), SOCKS5_REPLY, sizeof(ok));
	cr_assert_eq(socks5_parse_message(c.ibuf, sizeof(c.ibuf), &code, NULL), (int)sizeof(ok));
	assert_bytes(c.ibuf, sizeof(ok), ok, sizeof(ok));

	client_at_reply(&c, SOCKS5_CMD_CONNECT);
	feed_expect(&c, refused, sizeof(refused), SOCKS5_ERROR, sizeof(refused));
	cr_assert_eq(socks5_parse_message(c.ibuf, sizeof(c.ibuf), &code, NULL),
	             (int)sizeof(refused));
	cr_assert_eq(code, SOCKS5_REP_CONN_REFUSED);
	assert_bytes(c.ibuf, sizeof(refused), refused, sizeof(refused));
}

Test(client_reply, feeding_after_done_is_einval_and_consumes_nothing)
{
	struct socks5_client c;

	client_at_reply(&c, SOCKS5_CMD_CONNECT);
	feed_expect(&c, BYTES(5, 0, 0, 1, 0, 0, 0, 0, 0, 0), SOCKS5_REPLY, 10);
	feed_expect(&c, BYTES(5, 0, 0, 1, 0, 0, 0, 0, 0, 0), SOCKS5_ERROR, 0);
	assert_failed(&c, -EINVAL);
	feed_expect(&c, NULL, 0, SOCKS5_ERROR, 0);
}

Test(client_reply, feeding_after_failure_is_einval)
{
	struct socks5_client c;

	client_at_reply(&c, SOCKS5_CMD_CONNECT);
	feed_expect(&c, BYTES(5, 5, 0, 1, 0, 0, 0, 0, 0, 0), SOCKS5_ERROR, 10);
	feed_expect(&c, BYTES(5), SOCKS5_ERROR, 0);
	cr_assert_eq(c.err, -EINVAL);
}

Test(client_reply, udp_associate_takes_one_reply)
{
	struct socks5_client c;

	client_at_reply(&c, SOCKS5_CMD_UDP_ASSOCIATE);
	feed_expect(&c, BYTES(5, 0, 0, 1, 127, 0, 0, 1, 0x30, 0x39), SOCKS5_REPLY, 10);
	cr_assert_eq(c.state, SOCKS5_CLI_DONE);
	cr_assert_eq(c.bnd.port, 12345);
}

Test(client_reply, bind_takes_two_replies)
{
	struct socks5_client c;

	client_at_reply(&c, SOCKS5_CMD_BIND);
	feed_expect(&c, BYTES(5, 0, 0, 1, 10, 0, 0, 1, 0x10, 0x00, 5, 0), SOCKS5_REPLY, 10);
	cr_assert_eq(c.state, SOCKS5_CLI_REPLY2);
	cr_assert_eq(c.nreplies, 1);
	cr_assert_eq(c.bnd.port, 4096);
	feed_expect(&c, BYTES(5, 0), SOCKS5_NEED_MORE, 2);
	feed_expect(&c, BYTES(0, 1, 10, 0, 0, 9, 0xC3, 0x51, 'p'), SOCKS5_REPLY, 8);
	cr_assert_eq(c.state, SOCKS5_CLI_DONE);
	cr_assert_eq(c.nreplies, 2);
	cr_assert_arr_eq(c.bnd.u.ipv4, ((uint8_t[]){10, 0, 0, 9}), 4);
	cr_assert_eq(c.bnd.port, 50001);
}

Test(client_reply, bind_second_reply_failure_is_econnaborted)
{
	struct socks5_client c;

	client_at_reply(&c, SOCKS5_CMD_BIND);
	feed_expect(&c, BYTES(5, 0, 0, 1, 10, 0, 0, 1, 0x10, 0x00), SOCKS5_REPLY, 10);
	feed_expect(&c, BYTES(5, 4, 0, 1, 0, 0, 0, 0, 0, 0), SOCKS5_ERROR, 10);
	assert_failed(&c, -ECONNABORTED);
	cr_assert_eq(c.reply, SOCKS5_REP_HOST_UNREACHABLE);
	cr_assert_eq(c.nreplies, 1);
}

Test(client_reply, bind_second_reply_in_its_own_feed_gives_a_second_event)
{
	static const uint8_t first[] = {5, 0, 0, 1, 192, 0, 2, 10, 0x1F, 0x90};
	static const uint8_t second[] = {5, 0, 0, 3, 4, 'p', 'e', 'e', 'r', 0xD4, 0x31};
	struct socks5_client c;

	client_at_reply(&c, SOCKS5_CMD_BIND);
	feed_expect(&c, first, sizeof(first), SOCKS5_REPLY, sizeof(first));
	cr_assert_eq(c.state, SOCKS5_CLI_REPLY2);
	cr_assert_eq(c.nreplies, 1);
	cr_assert_eq(c.bnd.atyp, SOCKS5_ATYP_IPV4);
	cr_assert_arr_eq(c.bnd.u.ipv4, ((uint8_t[]){192, 0, 2, 10}), 4);
	cr_assert_eq(c.bnd.port, 8080);
	feed_expect(&c, NULL, 0, SOCKS5_NEED_MORE, 0);
	feed_expect(&c, second, sizeof(second), SOCKS5_REPLY, sizeof(second));
	cr_assert_eq(c.state, SOCKS5_CLI_DONE);
	cr_assert_eq(c.nreplies, 2);
	cr_assert_eq(c.reply, SOCKS5_REP_SUCCEEDED);
	cr_assert_eq(c.bnd.atyp, SOCKS5_ATYP_DOMAIN);
	cr_assert_str_eq(c.bnd.u.name, "peer");
	cr_assert_eq(c.bnd.port, 54321);
}

Test(client_reply, bind_both_replies_in_one_buffer_leave_trailing_data_unconsumed)
{
	static const uint8_t in[] = {
	    5,   0,   0,   1,   10,  0,    0,   1, 0x10, 0x00, /* listening on 10.0.0.1:4096 */
	    5,   0,   0,   1,   10,  0,    0,   9, 0xC3, 0x51, /* peer 10.0.0.9:50001 */
	    'G', 'E', 'T', ' ', '/', '\r', '\n'};
	struct socks5_client c;
	size_t pos = 0, used = 0;

	client_at_reply(&c, SOCKS5_CMD_BIND);
	cr_assert_eq(socks5_client_feed(&c, in + pos, sizeof(in) - pos, &used), SOCKS5_REPLY);
	cr_assert_eq(used, 10, "the first event takes the first reply only");
	pos += used;
	cr_assert_eq(c.state, SOCKS5_CLI_REPLY2);
	cr_assert_eq(c.nreplies, 1);
	cr_assert_arr_eq(c.bnd.u.ipv4, ((uint8_t[]){10, 0, 0, 1}), 4);
	cr_assert_eq(c.bnd.port, 4096);
	cr_assert_eq(socks5_client_feed(&c, in + pos, sizeof(in) - pos, &used), SOCKS5_REPLY);
	cr_assert_eq(used, 10, "the second event takes the second reply only");
	pos += used;
	cr_assert_eq(c.state, SOCKS5_CLI_DONE);
	cr_assert_eq(c.nreplies, 2);
	cr_assert_arr_eq(c.bnd.u.ipv4, ((uint8_t[]){10, 0, 0, 9}), 4);
	cr_assert_eq(c.bnd.port, 50001);
	assert_bytes(in + pos, sizeof(in) - pos, BYTES('G', 'E', 'T', ' ', '/', '\r', '\n'));
}

Test(client_reply, zero_byte_feed_needs_more)
{
	struct socks5_client c;

	client_at_reply(&c, SOCKS5_CMD_CONNECT);
	feed_expect(&c, NULL, 0, SOCKS5_NEED_MORE, 0);
	feed_expect(&c, BYTES(5, 0, 0), SOCKS5_NEED_MORE, 3);
	feed_expect(&c, NULL, 0, SOCKS5_NEED_MORE, 0);
	feed_expect(&c, BYTES(1, 0, 0, 0, 0, 0, 0), SOCKS5_REPLY, 7);
}

/* ---- any split of the server's bytes ---- */

struct run {
	uint8_t out[2048]; /* every message sent after the greeting */
	size_t out_len;
	enum socks5_status events[8];
	size_t nevents;
	size_t consumed;
	struct socks5_addr bnd[2];
	int err;
	uint8_t reply, nreplies, state;
};

static void run_client(struct run *r, uint8_t cmd, const char *user, const char *pass,
                       const uint8_t *in, size_t len, const size_t *cuts, size_t ncuts)
{
	struct socks5_client c;
	size_t pos = 0, avail, used;
	enum socks5_status st;

	memset(r, 0, sizeof(*r));
	cr_assert_eq(socks5_client_init(&c, cmd, &dst4, user, pass), 0);
	cr_assert_eq(socks5_client_start(&c), SOCKS5_SEND);
	for (size_t k = 0; k <= ncuts; k++) {
		avail = k < ncuts ? cuts[k] : len;
		for (;;) {
			st = socks5_client_feed(&c, in + pos, avail - pos, &used);
			cr_assert_leq(used, avail - pos);
			pos += used;
			if (st == SOCKS5_NEED_MORE) {
				cr_assert_eq(pos, avail);
				break;
			}
			cr_assert_lt(r->nevents, 8);
			r->events[r->nevents++] = st;
			if (st == SOCKS5_SEND) {
				memcpy(r->out + r->out_len, c.out, c.out_len);
				r->out_len += c.out_len;
				continue;
			}
			if (st == SOCKS5_REPLY) {
				r->bnd[c.nreplies - 1] = c.bnd;
				if (c.state != SOCKS5_CLI_DONE)
					continue;
			}
			goto finished;
		}
	}
finished:
	r->consumed = pos;
	r->err = c.err;
	r->reply = c.reply;
	r->nreplies = c.nreplies;
	r->state = c.state;
}

static void assert_same_run(const struct run *a, const struct run *b, const char *how)
{
	assert_bytes(a->out, a->out_len, b->out, b->out_len);
	cr_assert_eq(a->nevents, b->nevents, "%s", how);
	for (size_t i = 0; i < a->nevents; i++)
		cr_assert_eq(a->events[i], b->events[i], "%s: event %zu", how, i);
	cr_assert_eq(a->consumed, b->consumed, "%s", how);
	for (int i = 0; i < 2; i++) {
		cr_assert_eq(a->bnd[i].atyp, b->bnd[i].atyp, "%s", how);
		cr_assert_eq(a->bnd[i].len, b->bnd[i].len, "%s", how);
		cr_assert_eq(a->bnd[i].port, b->bnd[i].port, "%s", how);
		cr_assert_arr_eq(a->bnd[i].u.name, b->bnd[i].u.name, sizeof(a->bnd[i].u.name), "%s",
		                 how);
	}
	cr_assert_eq(a->err, b->err, "%s", how);
	cr_assert_eq(a->reply, b->reply, "%s", how);
	cr_assert_eq(a->nreplies, b->nreplies, "%s", how);
	cr_assert_eq(a->state, b->state, "%s", how);
}

static void assert_split_invariant(uint8_t cmd, const char *user, const char *pass,
                                   const uint8_t *in, size_t len, const struct run *whole)
{
	size_t cuts[1024];
	struct run r;
	char how[64];

	cr_assert_lt(len, sizeof(cuts) / sizeof(cuts[0]));
	for (size_t k = 0; k <= len; k++) {
		cuts[0] = k;
		run_client(&r, cmd, user, pass, in, len, cuts, 1);
		snprintf(how, sizeof(how), "cut at %zu", k);
		assert_same_run(&r, whole, how);
	}
	for (size_t k = 1; k < len; k++)
		cuts[k - 1] = k;
	run_client(&r, cmd, user, pass, in, len, cuts, len > 0 ? len - 1 : 0);
	assert_same_run(&r, whole, "byte at a time");
}

Test(client_split, noauth_connect_same_result_for_every_cut)
{
	static const uint8_t in[] = {5, 0, 5, 0, 0, 3, 3, 'b', 'n', 'd', 0, 99, 'x', 'y'};
	struct run whole;

	run_client(&whole, 1, NULL, NULL, in, sizeof(in), NULL, 0);
	assert_bytes(whole.out, whole.out_len, dst4_req, sizeof(dst4_req));
	cr_assert_eq(whole.nevents, 2);
	cr_assert_eq(whole.events[1], SOCKS5_REPLY);
	cr_assert_eq(whole.consumed, sizeof(in) - 2);
	cr_assert_str_eq(whole.bnd[0].u.name, "bnd");
	assert_split_invariant(1, NULL, NULL, in, sizeof(in), &whole);
}

Test(client_split, userpass_bind_two_ipv6_replies_same_result_for_every_cut)
{
	static const uint8_t in[] = {
	    5,  2,                                                                   /* method */
	    1,  0,                                                                   /* status */
	    5,  0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x04, 0x00, /* reply */
	    5,  0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0x04, 0x01, /* reply */
	    'z'};
	struct run whole;

	run_client(&whole, SOCKS5_CMD_BIND, "me", "pw", in, sizeof(in), NULL, 0);
	assert_bytes(whole.out, whole.out_len,
	             BYTES(1, 2, 'm', 'e', 2, 'p', 'w', 5, 2, 0, 1, 10, 0, 0, 2, 0, 80));
	cr_assert_eq(whole.nevents, 4);
	cr_assert_eq(whole.events[2], SOCKS5_REPLY);
	cr_assert_eq(whole.events[3], SOCKS5_REPLY);
	cr_assert_eq(whole.nreplies, 2);
	cr_assert_eq(whole.bnd[0].port, 1024);
	cr_assert_eq(whole.bnd[1].port, 1025);
	cr_assert_eq(whole.consumed, sizeof(in) - 1);
	assert_split_invariant(SOCKS5_CMD_BIND, "me", "pw", in, sizeof(in), &whole);
}

Test(client_split, failures_same_result_for_every_cut)
{
	static const struct {
		uint8_t in[16];
		size_t len;
		size_t consumed;
		int err;
	} cases[] = {
	    {{5, 0xFF}, 2, 2, -ENOTSUP},
	    {{5, 2, 1, 1}, 4, 4, -EACCES},
	    {{5, 2, 3}, 3, 3, -EPROTO},
	    {{5, 0, 5, 2, 0, 1, 0, 0, 0, 0, 0, 0, 'x'}, 13, 12, -ECONNABORTED},
	    {{5, 0, 5, 0, 0, 7}, 6, 6, -EPROTO},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct run whole;

		run_client(&whole, 1, "u", "p", cases[i].in, cases[i].len, NULL, 0);
		cr_assert_eq(whole.consumed, cases[i].consumed, "case %zu", i);
		cr_assert_eq(whole.err, cases[i].err, "case %zu", i);
		cr_assert_eq(whole.state, SOCKS5_CLI_FAILED, "case %zu", i);
		assert_split_invariant(1, "u", "p", cases[i].in, cases[i].len, &whole);
	}
}
