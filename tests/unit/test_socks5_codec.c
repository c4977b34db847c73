/* test_socks5_codec.c - the stateless half of the codec: request/reply encoders, the message
 * parser and the address helpers. The handshake state machines have their own test files. */
#include <criterion/criterion.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/un.h>

#include <ringsocks/socks5.h>

#include "testutil.h"

/* ---- socks5_encode_request ---- */

Test(encode_request, writes_ipv4_connect_with_port_big_endian)
{
	struct socks5_addr a = addr4(192, 168, 1, 2, 0x1F90);
	uint8_t out[SOCKS5_MAX_REQUEST];

	assert_encoded(out, socks5_encode_request(out, sizeof(out), SOCKS5_CMD_CONNECT, &a),
	               BYTES(0x05, 0x01, 0x00, 0x01, 192, 168, 1, 2, 0x1F, 0x90));
}

Test(encode_request, writes_ipv6_bind)
{
	struct socks5_addr a = addr6("2001:db8::1", 443);
	uint8_t out[SOCKS5_MAX_REQUEST];

	assert_encoded(out, socks5_encode_request(out, sizeof(out), SOCKS5_CMD_BIND, &a),
	               BYTES(0x05, 0x02, 0x00, 0x04, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0,
	                     0, 0, 0, 0x01, 0x01, 0xBB));
}

Test(encode_request, writes_domain_udp_associate_with_length_prefix)
{
	struct socks5_addr a = addr_name("example.com", 53);
	uint8_t out[SOCKS5_MAX_REQUEST];

	assert_encoded(out, socks5_encode_request(out, sizeof(out), SOCKS5_CMD_UDP_ASSOCIATE, &a),
	               BYTES(0x05, 0x03, 0x00, 0x03, 11, 'e', 'x', 'a', 'm', 'p', 'l', 'e', '.',
	                     'c', 'o', 'm', 0x00, 0x35));
}

Test(encode_request, writes_255_byte_domain_in_max_request_size)
{
	char name[256];
	uint8_t out[SOCKS5_MAX_REQUEST], want[SOCKS5_MAX_REQUEST];
	struct socks5_addr a;

	memset(name, 'a', 255);
	name[255] = '\0';
	a = addr_name(name, 0xFFFF);
	memcpy(want, (uint8_t[]){5, 1, 0, 3, 255}, 5);
	memset(want + 5, 'a', 255);
	want[260] = 0xFF;
	want[261] = 0xFF;
	assert_encoded(out, socks5_encode_request(out, sizeof(out), SOCKS5_CMD_CONNECT, &a), want,
	               SOCKS5_MAX_REQUEST);
}

Test(encode_request, passes_any_command_byte_through)
{
	struct socks5_addr a = addr4(1, 2, 3, 4, 5);
	uint8_t out[SOCKS5_MAX_REQUEST];

	assert_encoded(out, socks5_encode_request(out, sizeof(out), 0x09, &a),
	               BYTES(5, 9, 0, 1, 1, 2, 3, 4, 0, 5));
}

Test(encode_request, rejects_unknown_atyp_and_wrong_lengths)
{
	uint8_t out[SOCKS5_MAX_REQUEST];
	struct socks5_addr a;

	cr_assert_eq(socks5_encode_request(out, sizeof(out), 1, NULL), -EINVAL);
	a = addr4(1, 2, 3, 4, 80);
	a.atyp = 2;
	cr_assert_eq(socks5_encode_request(out, sizeof(out), 1, &a), -EINVAL);
	a.atyp = 0;
	cr_assert_eq(socks5_encode_request(out, sizeof(out), 1, &a), -EINVAL);
	a = addr4(1, 2, 3, 4, 80);
	a.len = 16;
	cr_assert_eq(socks5_encode_request(out, sizeof(out), 1, &a), -EINVAL);
	a = addr6("::1", 80);
	a.len = 4;
	cr_assert_eq(socks5_encode_request(out, sizeof(out), 1, &a), -EINVAL);
	a = addr_name("x", 80);
	a.len = 0;
	cr_assert_eq(socks5_encode_request(out, sizeof(out), 1, &a), -EINVAL);
}

Test(encode_request, reports_enospc_when_one_byte_short_and_fits_exactly)
{
	struct socks5_addr a4 = addr4(1, 2, 3, 4, 80), a6 = addr6("::1", 80);
	struct socks5_addr an = addr_name("abc", 80);
	uint8_t out[SOCKS5_MAX_REQUEST];

	cr_assert_eq(socks5_encode_request(out, 9, 1, &a4), -ENOSPC);
	cr_assert_eq(socks5_encode_request(out, 10, 1, &a4), 10);
	cr_assert_eq(socks5_encode_request(out, 21, 1, &a6), -ENOSPC);
	cr_assert_eq(socks5_encode_request(out, 22, 1, &a6), 22);
	cr_assert_eq(socks5_encode_request(out, 9, 1, &an), -ENOSPC);
	cr_assert_eq(socks5_encode_request(out, 10, 1, &an), 10);
	cr_assert_eq(socks5_encode_request(out, 0, 1, &a4), -ENOSPC);
	cr_assert_eq(socks5_encode_request(NULL, 0, 1, &a4), -ENOSPC);
}

/* ---- socks5_encode_reply ---- */

Test(encode_reply, writes_every_reply_code_with_zero_ipv4_bnd_when_bnd_is_null)
{
	uint8_t out[SOCKS5_MAX_REPLY];

	for (unsigned rep = 0; rep <= 8; rep++)
		assert_encoded(out, socks5_encode_reply(out, sizeof(out), (uint8_t)rep, NULL),
		               BYTES(5, (uint8_t)rep, 0, 1, 0, 0, 0, 0, 0, 0));
}

Test(encode_reply, writes_every_reply_code_for_every_address_type)
{
	struct socks5_addr a4 = addr4(10, 0, 0, 1, 1080), a6 = addr6("::1", 1),
	                   an = addr_name("h.example", 65535);
	uint8_t out[SOCKS5_MAX_REPLY];

	for (unsigned r = 0; r <= 8; r++) {
		uint8_t rep = (uint8_t)r;

		assert_encoded(out, socks5_encode_reply(out, sizeof(out), rep, &a4),
		               BYTES(5, rep, 0, 1, 10, 0, 0, 1, 0x04, 0x38));
		assert_encoded(
		    out, socks5_encode_reply(out, sizeof(out), rep, &a6),
		    BYTES(5, rep, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1));
		assert_encoded(out, socks5_encode_reply(out, sizeof(out), rep, &an),
		               BYTES(5, rep, 0, 3, 9, 'h', '.', 'e', 'x', 'a', 'm', 'p', 'l', 'e',
		                     0xFF, 0xFF));
	}
}

Test(encode_reply, rejects_bad_bnd_and_short_buffer)
{
	struct socks5_addr a = addr4(1, 2, 3, 4, 80);
	uint8_t out[SOCKS5_MAX_REPLY];

	a.atyp = 5;
	cr_assert_eq(socks5_encode_reply(out, sizeof(out), 0, &a), -EINVAL);
	cr_assert_eq(socks5_encode_reply(out, 9, 0, NULL), -ENOSPC);
	cr_assert_eq(socks5_encode_reply(out, 10, 0, NULL), 10);
}

/* ---- socks5_parse_message ---- */

static void assert_parses_only_when_complete(const uint8_t *msg, size_t len,
                                             const struct socks5_addr *want, uint8_t want_code)
{
	uint8_t buf[SOCKS5_MAX_REPLY + 8], code;
	struct socks5_addr a;

	for (size_t k = 0; k < len; k++)
		cr_assert_eq(socks5_parse_message(msg, k, &code, &a), 0, "prefix of %zu bytes", k);
	code = 0xEE;
	cr_assert_eq(socks5_parse_message(msg, len, &code, &a), (int)len);
	cr_assert_eq(code, want_code);
	assert_addr_eq(&a, want);
	/* bytes after the message are not part of it */
	memcpy(buf, msg, len);
	memset(buf + len, 0xAB, 8);
	cr_assert_eq(socks5_parse_message(buf, len + 8, NULL, NULL), (int)len);
}

Test(parse_message, needs_every_byte_of_each_address_type_and_no_more)
{
	struct socks5_addr a4 = addr4(127, 0, 0, 1, 80), a6 = addr6("fe80::1:2", 8080),
	                   an = addr_name("localhost", 443);
	uint8_t m[SOCKS5_MAX_REPLY];
	int n;

	n = socks5_encode_reply(m, sizeof(m), 0, &a4);
	assert_parses_only_when_complete(m, (size_t)n, &a4, 0);
	n = socks5_encode_request(m, sizeof(m), 2, &a6);
	assert_parses_only_when_complete(m, (size_t)n, &a6, 2);
	n = socks5_encode_reply(m, sizeof(m), 5, &an);
	assert_parses_only_when_complete(m, (size_t)n, &an, 5);
}

Test(parse_message, round_trips_boundary_ports_and_max_domain)
{
	static const uint16_t ports[] = {0, 1, 255, 256, 65535};
	char name[256];
	uint8_t m[SOCKS5_MAX_REPLY];
	struct socks5_addr a, back;
	uint8_t code;
	int n;

	memset(name, 'z', 255);
	name[255] = '\0';
	for (size_t i = 0; i < sizeof(ports) / sizeof(ports[0]); i++) {
		struct socks5_addr in[3] = {
		    addr4(0, 0, 0, 0, ports[i]),
		    addr6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", ports[i]),
		    addr_name(name, ports[i])};
		for (int t = 0; t < 3; t++) {
			a = in[t];
			n = socks5_encode_request(m, sizeof(m), 3, &a);
			cr_assert_gt(n, 0);
			cr_assert_eq(socks5_parse_message(m, (size_t)n, &code, &back), n);
			cr_assert_eq(code, 3);
			assert_addr_eq(&back, &a);
		}
	}
}

Test(parse_message, reports_unknown_atyp_as_soon_as_the_atyp_byte_is_there)
{
	static const uint8_t atyps[] = {0, 2, 5, 0xFF};

	for (size_t i = 0; i < sizeof(atyps); i++) {
		uint8_t m[] = {5, 0, 0, atyps[i]};

		cr_assert_eq(socks5_parse_message(m, 3, NULL, NULL), 0);
		cr_assert_eq(socks5_parse_message(m, 4, NULL, NULL),
		             -SOCKS5_REP_ATYP_NOT_SUPPORTED);
	}
}

Test(parse_message, reports_wrong_version_at_first_byte)
{
	cr_assert_eq(socks5_parse_message(BYTES(4), NULL, NULL), -SOCKS5_REP_GENERAL_FAILURE);
	cr_assert_eq(socks5_parse_message(BYTES(0), NULL, NULL), -SOCKS5_REP_GENERAL_FAILURE);
	cr_assert_eq(socks5_parse_message(BYTES(4, 1, 0, 1, 1, 2, 3, 4, 0, 80), NULL, NULL),
	             -SOCKS5_REP_GENERAL_FAILURE);
	cr_assert_eq(socks5_parse_message(NULL, 0, NULL, NULL), 0);
}

Test(parse_message, reports_zero_length_domain_after_the_length_byte)
{
	cr_assert_eq(socks5_parse_message(BYTES(5, 1, 0, 3), NULL, NULL), 0);
	cr_assert_eq(socks5_parse_message(BYTES(5, 1, 0, 3, 0), NULL, NULL),
	             -SOCKS5_REP_GENERAL_FAILURE);
	cr_assert_eq(socks5_parse_message(BYTES(5, 1, 0, 3, 0, 0, 80), NULL, NULL),
	             -SOCKS5_REP_GENERAL_FAILURE);
}

Test(parse_message, keeps_embedded_nul_in_domain_and_terminates_it)
{
	struct socks5_addr a;
	uint8_t code;

	cr_assert_eq(
	    socks5_parse_message(BYTES(5, 1, 0x7F, 3, 3, 'a', 0, 'b', 0x12, 0x34), &code, &a), 10);
	cr_assert_eq(code, 1);
	cr_assert_eq(a.atyp, SOCKS5_ATYP_DOMAIN);
	cr_assert_eq(a.len, 3);
	cr_assert_arr_eq(a.u.name, ((char[]){'a', 0, 'b', 0}), 4);
	cr_assert_eq(a.port, 0x1234);
}

/* ---- address conversions ---- */

Test(addr, from_sockaddr_in_takes_address_and_host_order_port)
{
	struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(8080)};
	struct socks5_addr a;

	inet_pton(AF_INET, "10.1.2.3", &sin.sin_addr);
	cr_assert_eq(socks5_addr_from_sockaddr(&a, (struct sockaddr *)&sin), 0);
	cr_assert_eq(a.atyp, SOCKS5_ATYP_IPV4);
	cr_assert_eq(a.len, 4);
	cr_assert_eq(a.port, 8080);
	cr_assert_arr_eq(a.u.ipv4, ((uint8_t[]){10, 1, 2, 3}), 4);
}

Test(addr, from_sockaddr_in6_takes_address_and_host_order_port)
{
	struct sockaddr_in6 sin6 = {.sin6_family = AF_INET6, .sin6_port = htons(443)};
	struct socks5_addr a, want = addr6("2001:db8::42", 443);

	inet_pton(AF_INET6, "2001:db8::42", &sin6.sin6_addr);
	cr_assert_eq(socks5_addr_from_sockaddr(&a, (struct sockaddr *)&sin6), 0);
	assert_addr_eq(&a, &want);
}

Test(addr, from_sockaddr_keeps_v4_mapped_address_as_ipv6)
{
	struct sockaddr_in6 sin6 = {.sin6_family = AF_INET6, .sin6_port = htons(1)};
	struct socks5_addr a;

	inet_pton(AF_INET6, "::ffff:1.2.3.4", &sin6.sin6_addr);
	cr_assert_eq(socks5_addr_from_sockaddr(&a, (struct sockaddr *)&sin6), 0);
	cr_assert_eq(a.atyp, SOCKS5_ATYP_IPV6);
	cr_assert_eq(a.len, 16);
	cr_assert_arr_eq(a.u.ipv6,
	                 ((uint8_t[]){0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 1, 2, 3, 4}), 16);
}

Test(addr, from_sockaddr_rejects_other_families)
{
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	struct socks5_addr a;

	cr_assert_eq(socks5_addr_from_sockaddr(&a, (struct sockaddr *)&sun), -EAFNOSUPPORT);
}

Test(addr, to_sockaddr_fills_ipv4_and_length)
{
	struct socks5_addr a = addr4(192, 0, 2, 7, 1080);
	struct sockaddr_storage ss;
	struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
	socklen_t len = 0;

	cr_assert_eq(socks5_addr_to_sockaddr(&a, &ss, &len), 0);
	cr_assert_eq(len, sizeof(struct sockaddr_in));
	cr_assert_eq(sin->sin_family, AF_INET);
	cr_assert_eq(sin->sin_port, htons(1080));
	cr_assert_eq(sin->sin_addr.s_addr, htonl(0xC0000207));
}

Test(addr, to_sockaddr_fills_ipv6_and_length)
{
	struct socks5_addr a = addr6("::1", 65535);
	struct sockaddr_storage ss;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
	socklen_t len = 0;

	cr_assert_eq(socks5_addr_to_sockaddr(&a, &ss, &len), 0);
	cr_assert_eq(len, sizeof(struct sockaddr_in6));
	cr_assert_eq(sin6->sin6_family, AF_INET6);
	cr_assert_eq(sin6->sin6_port, htons(65535));
	cr_assert(IN6_IS_ADDR_LOOPBACK(&sin6->sin6_addr));
}

Test(addr, to_sockaddr_rejects_domain_and_bad_length)
{
	struct socks5_addr a = addr_name("example.com", 80);
	struct sockaddr_storage ss;
	socklen_t len;

	cr_assert_eq(socks5_addr_to_sockaddr(&a, &ss, &len), -EINVAL);
	a = addr4(1, 2, 3, 4, 5);
	a.len = 3;
	cr_assert_eq(socks5_addr_to_sockaddr(&a, &ss, &len), -EINVAL);
	a.atyp = 9;
	a.len = 4;
	cr_assert_eq(socks5_addr_to_sockaddr(&a, &ss, &len), -EINVAL);
}

Test(addr, sockaddr_round_trip_is_identity)
{
	struct socks5_addr in[2] = {addr4(203, 0, 113, 9, 7), addr6("fd00::abcd", 9999)}, back;
	struct sockaddr_storage ss;
	socklen_t len;

	for (int i = 0; i < 2; i++) {
		cr_assert_eq(socks5_addr_to_sockaddr(&in[i], &ss, &len), 0);
		cr_assert_eq(socks5_addr_from_sockaddr(&back, (struct sockaddr *)&ss), 0);
		assert_addr_eq(&back, &in[i]);
	}
}

Test(addr, set_name_fills_a_terminated_domain)
{
	struct socks5_addr a;

	cr_assert_eq(socks5_addr_set_name(&a, "example.org:junk", 11, 8443), 0);
	cr_assert_eq(a.atyp, SOCKS5_ATYP_DOMAIN);
	cr_assert_eq(a.len, 11);
	cr_assert_eq(a.port, 8443);
	cr_assert_str_eq(a.u.name, "example.org");
}

Test(addr, set_name_accepts_255_bytes_and_rejects_empty_or_256)
{
	char name[257];
	struct socks5_addr a;

	memset(name, 'n', 256);
	name[256] = '\0';
	cr_assert_eq(socks5_addr_set_name(&a, name, 255, 1), 0);
	cr_assert_eq(a.len, 255);
	cr_assert_eq(a.u.name[255], '\0');
	cr_assert_eq(socks5_addr_set_name(&a, name, 256, 1), -EINVAL);
	cr_assert_eq(socks5_addr_set_name(&a, name, 0, 1), -EINVAL);
	cr_assert_eq(socks5_addr_set_name(&a, NULL, 3, 1), -EINVAL);
}

Test(addr, set_name_keeps_embedded_nul)
{
	struct socks5_addr a;

	cr_assert_eq(socks5_addr_set_name(&a, "a\0b", 3, 1), 0);
	cr_assert_eq(a.len, 3);
	cr_assert_arr_eq(a.u.name, ((char[]){'a', 0, 'b', 0}), 4);
}

/* ---- text ---- */

Test(text, reply_str_names_every_code)
{
	cr_assert_str_eq(socks5_reply_str(0), "succeeded");
	cr_assert_str_eq(socks5_reply_str(1), "general SOCKS server failure");
	cr_assert_str_eq(socks5_reply_str(2), "connection not allowed by ruleset");
	cr_assert_str_eq(socks5_reply_str(3), "network unreachable");
	cr_assert_str_eq(socks5_reply_str(4), "host unreachable");
	cr_assert_str_eq(socks5_reply_str(5), "connection refused");
	cr_assert_str_eq(socks5_reply_str(6), "TTL expired");
	cr_assert_str_eq(socks5_reply_str(7), "command not supported");
	cr_assert_str_eq(socks5_reply_str(8), "address type not supported");
	cr_assert_str_eq(socks5_reply_str(9), "unknown reply");
	cr_assert_str_eq(socks5_reply_str(0xFF), "unknown reply");
}

Test(text, addr_str_formats_each_address_type)
{
	struct socks5_addr a4 = addr4(1, 2, 3, 4, 80), a6 = addr6("::1", 1080),
	                   a6b = addr6("2001:db8::1", 65535), an = addr_name("example.com", 443);
	char buf[300];

	cr_assert_eq(socks5_addr_str(&a4, buf, sizeof(buf)), buf);
	cr_assert_str_eq(buf, "1.2.3.4:80");
	cr_assert_str_eq(socks5_addr_str(&a6, buf, sizeof(buf)), "[::1]:1080");
	cr_assert_str_eq(socks5_addr_str(&a6b, buf, sizeof(buf)), "[2001:db8::1]:65535");
	cr_assert_str_eq(socks5_addr_str(&an, buf, sizeof(buf)), "example.com:443");
}

Test(text, addr_str_formats_a_255_byte_name)
{
	char name[256], want[300], buf[300];
	struct socks5_addr a;

	memset(name, 'q', 255);
	name[255] = '\0';
	a = addr_name(name, 65535);
	snprintf(want, sizeof(want), "%s:65535", name);
	cr_assert_str_eq(socks5_addr_str(&a, buf, sizeof(buf)), want);
	cr_assert_eq(strlen(buf), 261);
}

Test(text, addr_str_truncates_within_cap_and_terminates)
{
	struct socks5_addr a = addr4(1, 2, 3, 4, 80), a6 = addr6("2001:db8::1", 1);
	char buf[16];

	memset(buf, 'X', sizeof(buf));
	socks5_addr_str(&a, buf, 5);
	cr_assert_str_eq(buf, "1.2.");
	cr_assert_eq(buf[5], 'X', "wrote past cap");
	memset(buf, 'X', sizeof(buf));
	socks5_addr_str(&a6, buf, 8);
	cr_assert_str_eq(buf, "[2001:d");
	cr_assert_eq(buf[8], 'X', "wrote past cap");
	memset(buf, 'X', sizeof(buf));
	socks5_addr_str(&a, buf, 1);
	cr_assert_eq(buf[0], '\0');
	cr_assert_eq(buf[1], 'X');
	memset(buf, 'X', sizeof(buf));
	cr_assert_eq(socks5_addr_str(&a, buf, 0), buf);
	cr_assert_eq(buf[0], 'X', "cap 0 must not write");
}
