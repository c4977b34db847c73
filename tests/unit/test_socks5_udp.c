/* test_socks5_udp.c - the UDP relay half of the codec: the datagram header encoder and decoder
 * (RFC 1928 section 7, exact bytes and exact errors), the relay-address helper, and a client
 * UDP ASSOCIATE handshake driven byte by byte. */
#include <criterion/criterion.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/un.h>

#include <ringsocks/socks5.h>

#include "testutil.h"

/* Decoding in[0..len) must fail with exactly err and leave *h and *header_len alone. */
static void decode_fails(const uint8_t *in, size_t len, int err)
{
	struct socks5_udp_header h, before;
	size_t hl = 777;
	int r;

	memset(&h, 0xA5, sizeof(h));
	before = h;
	r = socks5_udp_decode(in, len, &h, &hl);
	cr_assert_eq(r, err, "len %zu: got %d, want %d", len, r, err);
	cr_assert_eq(hl, 777, "header_len written on error");
	cr_assert_eq(memcmp(&h, &before, sizeof(h)), 0, "header written on error");
}

/* ---- encoder ---- */

Test(udp_encode, ipv4_header_is_rsv_frag_atyp_addr_port)
{
	struct socks5_addr a = addr4(192, 0, 2, 1, 0x1F90);
	uint8_t out[SOCKS5_UDP_MAX_HEADER];

	assert_encoded(out, socks5_udp_encode_header(out, sizeof(out), 0, &a),
	               BYTES(0, 0, 0, 1, 192, 0, 2, 1, 0x1F, 0x90));
}

Test(udp_encode, ipv6_header_is_22_bytes)
{
	struct socks5_addr a = addr6("2001:db8::1:2", 53);
	uint8_t out[SOCKS5_UDP_MAX_HEADER];

	assert_encoded(
	    out, socks5_udp_encode_header(out, sizeof(out), 0, &a),
	    BYTES(0, 0, 0, 4, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 2, 0, 53));
}

Test(udp_encode, name_header_is_7_plus_len_bytes)
{
	struct socks5_addr a = addr_name_len("example.org", 11, 443);
	uint8_t out[SOCKS5_UDP_MAX_HEADER];

	assert_encoded(out, socks5_udp_encode_header(out, sizeof(out), 0, &a),
	               BYTES(0, 0, 0, 3, 11, 'e', 'x', 'a', 'm', 'p', 'l', 'e', '.', 'o', 'r', 'g',
	                     0x01, 0xBB));
	a = addr_name_len("x", 1, 0xFFFF);
	assert_encoded(out, socks5_udp_encode_header(out, sizeof(out), 0, &a),
	               BYTES(0, 0, 0, 3, 1, 'x', 0xFF, 0xFF));
}

Test(udp_encode, writes_frag_as_given)
{
	struct socks5_addr a = addr4(10, 0, 0, 1, 1);
	uint8_t out[SOCKS5_UDP_MAX_HEADER];

	assert_encoded(out, socks5_udp_encode_header(out, sizeof(out), 1, &a),
	               BYTES(0, 0, 1, 1, 10, 0, 0, 1, 0, 1));
	assert_encoded(out, socks5_udp_encode_header(out, sizeof(out), 0x83, &a),
	               BYTES(0, 0, 0x83, 1, 10, 0, 0, 1, 0, 1));
	assert_encoded(out, socks5_udp_encode_header(out, sizeof(out), 0xFF, &a),
	               BYTES(0, 0, 0xFF, 1, 10, 0, 0, 1, 0, 1));
}

Test(udp_encode, rsv_is_zero_even_over_a_dirty_buffer)
{
	struct socks5_addr a = addr4(1, 2, 3, 4, 5);
	uint8_t out[SOCKS5_UDP_MAX_HEADER];

	memset(out, 0xEE, sizeof(out));
	assert_encoded(out, socks5_udp_encode_header(out, sizeof(out), 0, &a),
	               BYTES(0, 0, 0, 1, 1, 2, 3, 4, 0, 5));
	cr_assert_eq(out[10], 0xEE, "wrote past the header");
}

Test(udp_encode, a_255_byte_name_fills_the_maximum_header)
{
	char name[255];
	uint8_t out[SOCKS5_UDP_MAX_HEADER], want[SOCKS5_UDP_MAX_HEADER];
	struct socks5_addr a;

	cr_assert_eq(SOCKS5_UDP_MAX_HEADER, 262);
	memset(name, 'n', sizeof(name));
	a = addr_name_len(name, sizeof(name), 0x0102);
	want[0] = 0;
	want[1] = 0;
	want[2] = 0;
	want[3] = SOCKS5_ATYP_DOMAIN;
	want[4] = 255;
	memset(want + 5, 'n', 255);
	want[260] = 1;
	want[261] = 2;
	assert_encoded(out, socks5_udp_encode_header(out, sizeof(out), 0, &a), want, sizeof(want));
}

Test(udp_encode, rejects_malformed_addresses_with_einval)
{
	uint8_t out[SOCKS5_UDP_MAX_HEADER];
	struct socks5_addr a;

	cr_assert_eq(socks5_udp_encode_header(out, sizeof(out), 0, NULL), -EINVAL);
	for (unsigned atyp = 0; atyp <= 0xFF; atyp++) {
		if (atyp == SOCKS5_ATYP_IPV4 || atyp == SOCKS5_ATYP_IPV6 ||
		    atyp == SOCKS5_ATYP_DOMAIN)
			continue;
		a = addr4(1, 2, 3, 4, 5);
		a.atyp = (uint8_t)atyp;
		cr_assert_eq(socks5_udp_encode_header(out, sizeof(out), 0, &a), -EINVAL, "atyp %u",
		             atyp);
	}
	a = addr4(1, 2, 3, 4, 5);
	a.len = 3;
	cr_assert_eq(socks5_udp_encode_header(out, sizeof(out), 0, &a), -EINVAL);
	a.len = 16;
	cr_assert_eq(socks5_udp_encode_header(out, sizeof(out), 0, &a), -EINVAL);
	a = addr6("::1", 5);
	a.len = 4;
	cr_assert_eq(socks5_udp_encode_header(out, sizeof(out), 0, &a), -EINVAL);
	a.len = 17;
	cr_assert_eq(socks5_udp_encode_header(out, sizeof(out), 0, &a), -EINVAL);
	a = addr_name_len("x", 1, 5);
	a.len = 0;
	cr_assert_eq(socks5_udp_encode_header(out, sizeof(out), 0, &a), -EINVAL);
}

Test(udp_encode, bad_address_is_einval_even_without_room)
{
	struct socks5_addr a = addr4(1, 2, 3, 4, 5);

	a.len = 0;
	cr_assert_eq(socks5_udp_encode_header(NULL, 0, 0, &a), -EINVAL);
	cr_assert_eq(socks5_udp_encode_header(NULL, 0, 0, NULL), -EINVAL);
}

Test(udp_encode, enospc_at_every_cap_below_the_length_and_nothing_written)
{
	char name[255];
	struct socks5_addr addrs[4];
	const int lens[4] = {10, 22, 10, 262};
	uint8_t out[SOCKS5_UDP_MAX_HEADER + 1];

	memset(name, 'q', sizeof(name));
	addrs[0] = addr4(1, 2, 3, 4, 5);
	addrs[1] = addr6("fe80::1", 5);
	addrs[2] = addr_name_len("abc", 3, 5);
	addrs[3] = addr_name_len(name, sizeof(name), 5);
	for (int i = 0; i < 4; i++) {
		for (int cap = 0; cap < lens[i]; cap++) {
			memset(out, 0xEE, sizeof(out));
			cr_assert_eq(socks5_udp_encode_header(out, (size_t)cap, 0, &addrs[i]),
			             -ENOSPC, "address %d cap %d", i, cap);
			for (size_t k = 0; k < sizeof(out); k++)
				cr_assert_eq(out[k], 0xEE, "address %d cap %d: byte %zu written", i,
				             cap, k);
		}
		cr_assert_eq(socks5_udp_encode_header(out, (size_t)lens[i], 0, &addrs[i]), lens[i],
		             "address %d at exact cap", i);
		cr_assert_eq(out[lens[i]], 0xEE, "address %d: wrote past the header", i);
		cr_assert_eq(socks5_udp_encode_header(NULL, 1000, 0, &addrs[i]), -ENOSPC);
	}
}

/* ---- decoder: fields ---- */

Test(udp_decode, ipv4_fields_port_in_host_order_and_data_offset)
{
	static const uint8_t d[] = {0, 0, 0, 1, 198, 51, 100, 7, 0x1F, 0x90, 'h', 'i'};
	struct socks5_udp_header h;
	size_t hl = 0;

	cr_assert_eq(socks5_udp_decode(d, sizeof(d), &h, &hl), 0);
	cr_assert_eq(h.frag, 0);
	cr_assert_eq(h.addr.atyp, SOCKS5_ATYP_IPV4);
	cr_assert_eq(h.addr.len, 4);
	cr_assert_arr_eq(h.addr.u.ipv4, ((uint8_t[]){198, 51, 100, 7}), 4);
	cr_assert_eq(h.addr.port, 8080);
	cr_assert_eq(hl, 10);
	cr_assert_eq(memcmp(d + hl, "hi", 2), 0);
}

Test(udp_decode, ipv6_fields)
{
	static const uint8_t d[] = {0,    0,    0,    4,                /* RSV FRAG ATYP */
	                            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, /* 2001:db8:: */
	                            0,    0,    0,    0,    0, 0, 0, 9, /* ::9 */
	                            0,    53,   'q'};
	struct socks5_addr want = addr6("2001:db8::9", 53);
	struct socks5_udp_header h;
	size_t hl = 0;

	cr_assert_eq(socks5_udp_decode(d, sizeof(d), &h, &hl), 0);
	cr_assert_eq(h.frag, 0);
	assert_addr_eq(&h.addr, &want);
	cr_assert_eq(hl, 22);
}

Test(udp_decode, name_is_nul_terminated_with_its_length)
{
	static const uint8_t d[] = {0,   0,   0,   3,    7,    'a', '.', 'b', '.',
	                            'c', 'o', 'm', 0x30, 0x39, 'x', 'y', 'z'};
	struct socks5_udp_header h;
	size_t hl = 0;

	memset(&h, 0xA5, sizeof(h));
	cr_assert_eq(socks5_udp_decode(d, sizeof(d), &h, &hl), 0);
	cr_assert_eq(h.addr.atyp, SOCKS5_ATYP_DOMAIN);
	cr_assert_eq(h.addr.len, 7);
	cr_assert_str_eq(h.addr.u.name, "a.b.com");
	cr_assert_eq(h.addr.port, 12345);
	cr_assert_eq(hl, 14);
}

Test(udp_decode, name_with_an_embedded_nul_keeps_len)
{
	struct socks5_udp_header h;
	size_t hl = 0;

	cr_assert_eq(socks5_udp_decode(BYTES(0, 0, 0, 3, 3, 'a', 0, 'b', 0, 1), &h, &hl), 0);
	cr_assert_eq(h.addr.len, 3);
	cr_assert_arr_eq(h.addr.u.name, ((char[]){'a', 0, 'b', 0}), 4);
	cr_assert_eq(hl, 10);
}

Test(udp_decode, reports_frag_without_judging_it)
{
	for (unsigned frag = 0; frag <= 0xFF; frag++) {
		uint8_t d[] = {0, 0, (uint8_t)frag, 1, 1, 2, 3, 4, 0, 9};
		struct socks5_udp_header h;

		cr_assert_eq(socks5_udp_decode(d, sizeof(d), &h, NULL), 0, "frag %u", frag);
		cr_assert_eq(h.frag, frag);
	}
}

Test(udp_decode, empty_data_is_valid_for_every_address_type)
{
	struct socks5_udp_header h;
	size_t hl = 0;

	cr_assert_eq(socks5_udp_decode(BYTES(0, 0, 0, 1, 1, 2, 3, 4, 0, 1), &h, &hl), 0);
	cr_assert_eq(hl, 10);
	cr_assert_eq(
	    socks5_udp_decode(
	        BYTES(0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1), &h, &hl),
	    0);
	cr_assert_eq(hl, 22);
	cr_assert_eq(socks5_udp_decode(BYTES(0, 0, 0, 3, 1, 'n', 0, 1), &h, &hl), 0);
	cr_assert_eq(hl, 8);
}

Test(udp_decode, h_and_header_len_are_optional)
{
	struct socks5_udp_header h;
	size_t hl = 0;

	cr_assert_eq(socks5_udp_decode(BYTES(0, 0, 0, 1, 1, 2, 3, 4, 0, 1, 'd'), NULL, NULL), 0);
	cr_assert_eq(socks5_udp_decode(BYTES(0, 0, 0, 1, 1, 2, 3, 4, 0, 1, 'd'), NULL, &hl), 0);
	cr_assert_eq(hl, 10);
	cr_assert_eq(socks5_udp_decode(BYTES(0, 0, 5, 1, 1, 2, 3, 4, 0, 1, 'd'), &h, NULL), 0);
	cr_assert_eq(h.frag, 5);
	cr_assert_eq(socks5_udp_decode(BYTES(0, 1, 0, 1, 1, 2, 3, 4, 0, 1), NULL, NULL), -EPROTO);
}

/* ---- decoder: errors ---- */

Test(udp_decode, shorter_than_the_fixed_part_is_emsgsize)
{
	static const uint8_t d[] = {0, 0, 0, 1};
	static const uint8_t junk[] = {0xFF, 0xFF, 0xFF, 0xFF};

	decode_fails(NULL, 0, -EMSGSIZE);
	for (size_t len = 0; len < 4; len++) {
		decode_fails(d, len, -EMSGSIZE);
		decode_fails(junk, len, -EMSGSIZE); /* length is judged before RSV and ATYP */
	}
}

Test(udp_decode, nonzero_rsv_is_eproto)
{
	decode_fails(BYTES(1, 0, 0, 1, 1, 2, 3, 4, 0, 1), -EPROTO);
	decode_fails(BYTES(0, 1, 0, 1, 1, 2, 3, 4, 0, 1), -EPROTO);
	decode_fails(BYTES(0x80, 0x00, 0, 1, 1, 2, 3, 4, 0, 1), -EPROTO);
	decode_fails(BYTES(0xFF, 0xFF, 0, 1, 1, 2, 3, 4, 0, 1), -EPROTO);
	/* a SOCKS5 request is not a datagram */
	decode_fails(BYTES(5, 1, 0, 1, 1, 2, 3, 4, 0, 1), -EPROTO);
}

Test(udp_decode, rsv_is_judged_before_atyp_and_the_rest_of_the_length)
{
	decode_fails(BYTES(0, 1, 0, 9), -EPROTO);
	decode_fails(BYTES(0, 1, 0, 1), -EPROTO);
	decode_fails(BYTES(0, 1, 0, 3, 0), -EPROTO);
}

Test(udp_decode, unknown_atyp_is_eafnosupport)
{
	for (unsigned atyp = 0; atyp <= 0xFF; atyp++) {
		uint8_t d[] = {0, 0, 0, (uint8_t)atyp, 1, 2, 3, 4, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0,
		               0, 0, 0};

		if (atyp == SOCKS5_ATYP_IPV4 || atyp == SOCKS5_ATYP_IPV6 ||
		    atyp == SOCKS5_ATYP_DOMAIN)
			continue;
		decode_fails(d, sizeof(d), -EAFNOSUPPORT);
		decode_fails(d, 4, -EAFNOSUPPORT); /* judged before the rest of the length */
	}
}

Test(udp_decode, zero_length_name_is_einval)
{
	decode_fails(BYTES(0, 0, 0, 3, 0, 0, 80), -EINVAL);
	decode_fails(BYTES(0, 0, 0, 3, 0, 0, 80, 'd', 'a', 't', 'a'), -EINVAL);
	/* the name length is judged before the rest of the length */
	decode_fails(BYTES(0, 0, 0, 3, 0), -EINVAL);
}

Test(udp_decode, name_without_its_length_byte_is_emsgsize)
{
	decode_fails(BYTES(0, 0, 0, 3), -EMSGSIZE);
}

Test(udp_decode, name_length_past_the_end_is_emsgsize)
{
	uint8_t d[4 + 1 + 255 + 2];

	decode_fails(BYTES(0, 0, 0, 3, 10, 'a', 'b'), -EMSGSIZE);
	decode_fails(BYTES(0, 0, 0, 3, 2, 'a', 'b', 0), -EMSGSIZE); /* one port byte short */
	memset(d, 'n', sizeof(d));
	d[0] = 0;
	d[1] = 0;
	d[2] = 0;
	d[3] = SOCKS5_ATYP_DOMAIN;
	d[4] = 255;
	decode_fails(d, sizeof(d) - 1, -EMSGSIZE);
	cr_assert_eq(socks5_udp_decode(d, sizeof(d), NULL, NULL), 0);
}

Test(udp_decode, every_truncation_of_every_address_type_is_emsgsize)
{
	static const uint8_t d4[] = {0, 0, 0, 1, 1, 2, 3, 4, 0, 1};
	static const uint8_t d6[] = {0, 0, 0,  4,  1,  2,  3,  4,  5,  6, 7,
	                             8, 9, 10, 11, 12, 13, 14, 15, 16, 0, 1};
	static const uint8_t dn[] = {0, 0, 0, 3, 4, 'h', 'o', 's', 't', 0, 1};
	const uint8_t *ds[] = {d4, d6, dn};
	const size_t lens[] = {sizeof(d4), sizeof(d6), sizeof(dn)};

	for (int i = 0; i < 3; i++) {
		for (size_t len = 0; len < lens[i]; len++)
			decode_fails(ds[i], len, -EMSGSIZE);
		cr_assert_eq(socks5_udp_decode(ds[i], lens[i], NULL, NULL), 0);
	}
}

/* ---- round trips ---- */

static void round_trip(const struct socks5_addr *a, uint8_t frag, const uint8_t *data,
                       size_t data_len, int want_header)
{
	uint8_t dgram[SOCKS5_UDP_MAX_HEADER + 64];
	struct socks5_udp_header h;
	size_t hl = 0;
	int n;

	cr_assert_leq(data_len, 64);
	n = socks5_udp_encode_header(dgram, sizeof(dgram), frag, a);
	cr_assert_eq(n, want_header, "header %d, want %d", n, want_header);
	cr_assert_leq(n, SOCKS5_UDP_MAX_HEADER);
	if (data_len)
		memcpy(dgram + n, data, data_len);
	memset(&h, 0xA5, sizeof(h));
	cr_assert_eq(socks5_udp_decode(dgram, (size_t)n + data_len, &h, &hl), 0);
	cr_assert_eq(hl, (size_t)n);
	cr_assert_eq(h.frag, frag);
	assert_addr_eq(&h.addr, a);
	if (data_len)
		cr_assert_eq(memcmp(dgram + hl, data, data_len), 0);
}

Test(udp_round_trip, every_address_type_with_and_without_data)
{
	static const uint8_t payload[] = "payload\0with\xFFodd bytes";
	char big[255];
	struct socks5_addr addrs[6];
	const int lens[6] = {10, 10, 22, 22, 8, 262};

	memset(big, 'z', sizeof(big));
	addrs[0] = addr4(0, 0, 0, 0, 0);
	addrs[1] = addr4(255, 255, 255, 255, 65535);
	addrs[2] = addr6("::", 1);
	addrs[3] = addr6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65534);
	addrs[4] = addr_name_len("a", 1, 53);
	addrs[5] = addr_name_len(big, sizeof(big), 4242);
	for (int i = 0; i < 6; i++) {
		round_trip(&addrs[i], 0, NULL, 0, lens[i]);
		round_trip(&addrs[i], 0, payload, sizeof(payload), lens[i]);
		round_trip(&addrs[i], 0x81, payload, 1, lens[i]);
	}
}

Test(udp_round_trip, the_maximum_header_decodes_to_max_header_len)
{
	char big[255];
	uint8_t dgram[SOCKS5_UDP_MAX_HEADER];
	struct socks5_addr a;
	struct socks5_udp_header h;
	size_t hl = 0;

	memset(big, 'm', sizeof(big));
	a = addr_name_len(big, sizeof(big), 1);
	cr_assert_eq(socks5_udp_encode_header(dgram, sizeof(dgram), 0, &a), SOCKS5_UDP_MAX_HEADER);
	cr_assert_eq(socks5_udp_decode(dgram, sizeof(dgram), &h, &hl), 0);
	cr_assert_eq(hl, SOCKS5_UDP_MAX_HEADER);
	cr_assert_eq(strlen(h.addr.u.name), 255);
	assert_addr_eq(&h.addr, &a);
}

/* ---- the relay address after UDP ASSOCIATE ---- */

/* A client whose UDP ASSOCIATE was answered with reply (05 00 00 ATYP BND PORT). */
static void client_associated(struct socks5_client *c, const uint8_t *reply, size_t len)
{
	static const struct socks5_addr any = {.atyp = SOCKS5_ATYP_IPV4, .len = 4};
	size_t used = 0;

	cr_assert_eq(socks5_client_init(c, SOCKS5_CMD_UDP_ASSOCIATE, &any, NULL, NULL), 0);
	cr_assert_eq(socks5_client_start(c), SOCKS5_SEND);
	cr_assert_eq(socks5_client_feed(c, BYTES(5, 0), &used), SOCKS5_SEND);
	cr_assert_eq(socks5_client_feed(c, reply, len, &used), SOCKS5_REPLY);
	cr_assert_eq(used, len);
	cr_assert_eq(c->state, SOCKS5_CLI_DONE);
}

static struct sockaddr_in proxy4(const char *ip, uint16_t port)
{
	struct sockaddr_in sin;

	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons(port);
	cr_assert_eq(inet_pton(AF_INET, ip, &sin.sin_addr), 1);
	return sin;
}

static struct sockaddr_in6 proxy6(const char *ip, uint16_t port, uint32_t scope)
{
	struct sockaddr_in6 sin6;

	memset(&sin6, 0, sizeof(sin6));
	sin6.sin6_family = AF_INET6;
	sin6.sin6_port = htons(port);
	sin6.sin6_scope_id = scope;
	cr_assert_eq(inet_pton(AF_INET6, ip, &sin6.sin6_addr), 1);
	return sin6;
}

static void assert_sin(const struct sockaddr_storage *ss, socklen_t len, const char *ip,
                       uint16_t port)
{
	const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
	struct sockaddr_in want = proxy4(ip, port);

	cr_assert_eq(len, sizeof(struct sockaddr_in));
	cr_assert_eq(sin->sin_family, AF_INET);
	cr_assert_eq(ntohs(sin->sin_port), port);
	cr_assert_eq(memcmp(&sin->sin_addr, &want.sin_addr, 4), 0);
}

static void assert_sin6(const struct sockaddr_storage *ss, socklen_t len, const char *ip,
                        uint16_t port, uint32_t scope)
{
	const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
	struct sockaddr_in6 want = proxy6(ip, port, scope);

	cr_assert_eq(len, sizeof(struct sockaddr_in6));
	cr_assert_eq(sin6->sin6_family, AF_INET6);
	cr_assert_eq(ntohs(sin6->sin6_port), port);
	cr_assert_eq(memcmp(&sin6->sin6_addr, &want.sin6_addr, 16), 0);
	cr_assert_eq(sin6->sin6_scope_id, scope);
}

/* The helper must fail with err and leave *out and *len alone. */
static void relay_fails(const struct socks5_client *c, const struct sockaddr *proxy, int err)
{
	struct sockaddr_storage ss, before;
	socklen_t len = 99;

	memset(&ss, 0xA5, sizeof(ss));
	before = ss;
	cr_assert_eq(socks5_client_udp_relay(c, proxy, &ss, &len), err);
	cr_assert_eq(len, 99);
	cr_assert_eq(memcmp(&ss, &before, sizeof(ss)), 0);
}

Test(udp_relay, ipv4_bnd_is_used_as_is)
{
	struct socks5_client c;
	struct sockaddr_in p = proxy4("192.0.2.1", 1080);
	struct sockaddr_storage ss;
	socklen_t len = 0;

	client_associated(&c, BYTES(5, 0, 0, 1, 192, 0, 2, 99, 0x9C, 0x41));
	cr_assert_eq(socks5_client_udp_relay(&c, (struct sockaddr *)&p, &ss, &len), 0);
	assert_sin(&ss, len, "192.0.2.99", 40001);
	/* the proxy is not needed for a real BND */
	len = 0;
	cr_assert_eq(socks5_client_udp_relay(&c, NULL, &ss, &len), 0);
	assert_sin(&ss, len, "192.0.2.99", 40001);
	cr_assert_eq(socks5_client_udp_relay(&c, NULL, &ss, NULL), 0);
}

Test(udp_relay, ipv6_bnd_is_used_as_is)
{
	struct socks5_client c;
	struct sockaddr_storage ss;
	socklen_t len = 0;

	client_associated(&c, BYTES(5, 0, 0, 4, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0,
	                            0, 0, 7, 0x04, 0x38));
	cr_assert_eq(socks5_client_udp_relay(&c, NULL, &ss, &len), 0);
	assert_sin6(&ss, len, "2001:db8::7", 1080, 0);
}

Test(udp_relay, zero_ipv4_bnd_means_the_proxy_address_with_bnd_port)
{
	struct socks5_client c;
	struct sockaddr_in p = proxy4("203.0.113.5", 1080);
	struct sockaddr_storage ss;
	socklen_t len = 0;

	client_associated(&c, BYTES(5, 0, 0, 1, 0, 0, 0, 0, 0xC3, 0x50));
	cr_assert_eq(socks5_client_udp_relay(&c, (struct sockaddr *)&p, &ss, &len), 0);
	assert_sin(&ss, len, "203.0.113.5", 50000);
}

Test(udp_relay, zero_ipv6_bnd_means_the_proxy_address_with_bnd_port_and_scope)
{
	struct socks5_client c;
	struct sockaddr_in6 p = proxy6("fe80::1", 1080, 3);
	struct sockaddr_storage ss;
	socklen_t len = 0;

	client_associated(
	    &c, BYTES(5, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x13, 0x88));
	cr_assert_eq(socks5_client_udp_relay(&c, (struct sockaddr *)&p, &ss, &len), 0);
	assert_sin6(&ss, len, "fe80::1", 5000, 3);
}

Test(udp_relay, zero_bnd_keeps_the_proxy_family)
{
	struct socks5_client c;
	struct sockaddr_in6 p6 = proxy6("2001:db8::53", 1080, 0);
	struct sockaddr_in p4 = proxy4("127.0.0.1", 1080);
	struct sockaddr_storage ss;
	socklen_t len = 0;

	client_associated(&c, BYTES(5, 0, 0, 1, 0, 0, 0, 0, 0, 9));
	cr_assert_eq(socks5_client_udp_relay(&c, (struct sockaddr *)&p6, &ss, &len), 0);
	assert_sin6(&ss, len, "2001:db8::53", 9, 0);
	client_associated(&c,
	                  BYTES(5, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9));
	cr_assert_eq(socks5_client_udp_relay(&c, (struct sockaddr *)&p4, &ss, &len), 0);
	assert_sin(&ss, len, "127.0.0.1", 9);
}

Test(udp_relay, partly_zero_bnd_is_a_real_address)
{
	struct socks5_client c;
	struct sockaddr_in p = proxy4("192.0.2.1", 1080);
	struct sockaddr_storage ss;
	socklen_t len = 0;

	client_associated(&c, BYTES(5, 0, 0, 1, 0, 0, 0, 1, 0, 9));
	cr_assert_eq(socks5_client_udp_relay(&c, (struct sockaddr *)&p, &ss, &len), 0);
	assert_sin(&ss, len, "0.0.0.1", 9);
	client_associated(&c, BYTES(5, 0, 0, 1, 1, 0, 0, 0, 0, 9));
	cr_assert_eq(socks5_client_udp_relay(&c, (struct sockaddr *)&p, &ss, &len), 0);
	assert_sin(&ss, len, "1.0.0.0", 9);
	/* ::1 shares its first twelve bytes with :: */
	client_associated(&c,
	                  BYTES(5, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 9));
	cr_assert_eq(socks5_client_udp_relay(&c, (struct sockaddr *)&p, &ss, &len), 0);
	assert_sin6(&ss, len, "::1", 9, 0);
}

Test(udp_relay, port_zero_fails)
{
	struct socks5_client c;
	struct sockaddr_in p = proxy4("192.0.2.1", 1080);

	/* no datagram can reach port 0, with a real address or the proxy's */
	client_associated(&c, BYTES(5, 0, 0, 1, 192, 0, 2, 99, 0, 0));
	relay_fails(&c, (struct sockaddr *)&p, -EINVAL);
	client_associated(&c, BYTES(5, 0, 0, 1, 0, 0, 0, 0, 0, 0));
	relay_fails(&c, (struct sockaddr *)&p, -EINVAL);
	client_associated(&c,
	                  BYTES(5, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0));
	relay_fails(&c, NULL, -EINVAL);
}

Test(udp_relay, zero_bnd_without_a_usable_proxy_fails)
{
	struct socks5_client c;
	struct sockaddr_un un;

	memset(&un, 0, sizeof(un));
	un.sun_family = AF_UNIX;
	client_associated(&c, BYTES(5, 0, 0, 1, 0, 0, 0, 0, 0, 9));
	relay_fails(&c, NULL, -EINVAL);
	relay_fails(&c, (struct sockaddr *)&un, -EAFNOSUPPORT);
}

Test(udp_relay, domain_bnd_is_einval)
{
	struct socks5_client c;
	struct sockaddr_in p = proxy4("192.0.2.1", 1080);

	client_associated(&c, BYTES(5, 0, 0, 3, 5, 'r', 'e', 'l', 'a', 'y', 0, 9));
	relay_fails(&c, (struct sockaddr *)&p, -EINVAL);
	relay_fails(&c, NULL, -EINVAL);
}

Test(udp_relay, einval_before_the_reply_after_a_failure_or_for_other_commands)
{
	static const struct socks5_addr dst = {.atyp = SOCKS5_ATYP_IPV4, .len = 4, .port = 80};
	struct socks5_client c;
	struct sockaddr_in p = proxy4("192.0.2.1", 1080);
	struct sockaddr_storage ss;
	size_t used;

	relay_fails(NULL, (struct sockaddr *)&p, -EINVAL);
	cr_assert_eq(socks5_client_init(&c, SOCKS5_CMD_UDP_ASSOCIATE, &dst, NULL, NULL), 0);
	relay_fails(&c, (struct sockaddr *)&p, -EINVAL);
	cr_assert_eq(socks5_client_start(&c), SOCKS5_SEND);
	relay_fails(&c, (struct sockaddr *)&p, -EINVAL);
	cr_assert_eq(socks5_client_feed(&c, BYTES(5, 0), &used), SOCKS5_SEND);
	relay_fails(&c, (struct sockaddr *)&p, -EINVAL);
	cr_assert_eq(socks5_client_feed(&c, BYTES(5, 0, 0, 1, 1, 2, 3), &used), SOCKS5_NEED_MORE);
	relay_fails(&c, (struct sockaddr *)&p, -EINVAL);
	/* the server refuses: no relay */
	cr_assert_eq(socks5_client_init(&c, SOCKS5_CMD_UDP_ASSOCIATE, &dst, NULL, NULL), 0);
	cr_assert_eq(socks5_client_start(&c), SOCKS5_SEND);
	cr_assert_eq(socks5_client_feed(&c, BYTES(5, 0), &used), SOCKS5_SEND);
	cr_assert_eq(socks5_client_feed(&c, BYTES(5, 2, 0, 1, 1, 2, 3, 4, 0, 9), &used),
	             SOCKS5_ERROR);
	relay_fails(&c, (struct sockaddr *)&p, -EINVAL);
	/* a finished CONNECT has a BND too, but it is no relay */
	cr_assert_eq(socks5_client_init(&c, SOCKS5_CMD_CONNECT, &dst, NULL, NULL), 0);
	cr_assert_eq(socks5_client_start(&c), SOCKS5_SEND);
	cr_assert_eq(socks5_client_feed(&c, BYTES(5, 0), &used), SOCKS5_SEND);
	cr_assert_eq(socks5_client_feed(&c, BYTES(5, 0, 0, 1, 1, 2, 3, 4, 0, 9), &used),
	             SOCKS5_REPLY);
	relay_fails(&c, (struct sockaddr *)&p, -EINVAL);
	/* no place to put the answer */
	client_associated(&c, BYTES(5, 0, 0, 1, 1, 2, 3, 4, 0, 9));
	cr_assert_eq(socks5_client_udp_relay(&c, (struct sockaddr *)&p, NULL, NULL), -EINVAL);
	cr_assert_eq(socks5_client_udp_relay(&c, (struct sockaddr *)&p, &ss, NULL), 0);
}

/* ---- a whole UDP ASSOCIATE handshake, one byte at a time ---- */

/* Feeds in[] one byte per call; every call but the last must consume its byte and need more,
 * and the relay must stay unknown until the end. Returns the status of the last call. */
static enum socks5_status feed_bytewise(struct socks5_client *c, const uint8_t *in, size_t len)
{
	struct sockaddr_in p = proxy4("192.0.2.1", 1080);
	enum socks5_status st = SOCKS5_NEED_MORE;
	size_t used;

	for (size_t i = 0; i < len; i++) {
		relay_fails(c, (struct sockaddr *)&p, -EINVAL);
		used = 99;
		st = socks5_client_feed(c, in + i, 1, &used);
		cr_assert_eq(used, 1, "byte %zu not consumed", i);
		if (i + 1 < len)
			cr_assert_eq(st, SOCKS5_NEED_MORE, "byte %zu: status %d", i, st);
	}
	return st;
}

Test(udp_handshake, noauth_associate_fed_byte_by_byte)
{
	static const struct socks5_addr any = {.atyp = SOCKS5_ATYP_IPV4, .len = 4};
	struct socks5_client c;
	struct sockaddr_in p = proxy4("198.51.100.1", 1080);
	struct sockaddr_storage ss;
	socklen_t len = 0;

	cr_assert_eq(socks5_client_init(&c, SOCKS5_CMD_UDP_ASSOCIATE, &any, NULL, NULL), 0);
	cr_assert_eq(socks5_client_start(&c), SOCKS5_SEND);
	assert_encoded(c.out, c.out_len, BYTES(5, 1, 0));
	cr_assert_eq(feed_bytewise(&c, BYTES(5, 0)), SOCKS5_SEND);
	assert_encoded(c.out, c.out_len, BYTES(5, 3, 0, 1, 0, 0, 0, 0, 0, 0));
	cr_assert_eq(feed_bytewise(&c, BYTES(5, 0, 0, 1, 0, 0, 0, 0, 0x1F, 0x41)), SOCKS5_REPLY);
	cr_assert_eq(c.state, SOCKS5_CLI_DONE);
	cr_assert_eq(c.reply, SOCKS5_REP_SUCCEEDED);
	cr_assert_eq(c.nreplies, 1);
	cr_assert_eq(c.bnd.port, 8001);
	cr_assert_eq(socks5_client_udp_relay(&c, (struct sockaddr *)&p, &ss, &len), 0);
	assert_sin(&ss, len, "198.51.100.1", 8001);
}

Test(udp_handshake, userpass_associate_with_ipv6_bnd_fed_byte_by_byte)
{
	struct socks5_addr from = addr6("2001:db8::c", 5353);
	struct socks5_client c;
	struct sockaddr_storage ss;
	socklen_t len = 0;
	uint8_t dgram[64];
	struct socks5_udp_header h;
	size_t hl;
	int n;

	cr_assert_eq(socks5_client_init(&c, SOCKS5_CMD_UDP_ASSOCIATE, &from, "al", "pw"), 0);
	cr_assert_eq(socks5_client_start(&c), SOCKS5_SEND);
	assert_encoded(c.out, c.out_len, BYTES(5, 2, 0, 2));
	cr_assert_eq(feed_bytewise(&c, BYTES(5, 2)), SOCKS5_SEND);
	assert_encoded(c.out, c.out_len, BYTES(1, 2, 'a', 'l', 2, 'p', 'w'));
	cr_assert_eq(feed_bytewise(&c, BYTES(1, 0)), SOCKS5_SEND);
	assert_encoded(c.out, c.out_len,
	               BYTES(5, 3, 0, 4, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
	                     0x0c, 0x14, 0xE9));
	cr_assert_eq(feed_bytewise(&c, BYTES(5, 0, 0, 4, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0,
	                                     0, 0, 0, 0, 0, 0x0d, 0x27, 0x10)),
	             SOCKS5_REPLY);
	cr_assert_eq(c.state, SOCKS5_CLI_DONE);
	cr_assert_eq(socks5_client_udp_relay(&c, NULL, &ss, &len), 0);
	assert_sin6(&ss, len, "2001:db8::d", 10000, 0);

	/* the first datagram the client would send through that relay */
	n = socks5_udp_encode_header(
	    dgram, sizeof(dgram), 0,
	    &(struct socks5_addr){
	        .atyp = SOCKS5_ATYP_IPV4, .len = 4, .port = 53, .u.ipv4 = {9, 9, 9, 9}});
	assert_encoded(dgram, n, BYTES(0, 0, 0, 1, 9, 9, 9, 9, 0, 53));
	memcpy(dgram + n, "\x12\x34", 2);
	cr_assert_eq(socks5_udp_decode(dgram, (size_t)n + 2, &h, &hl), 0);
	cr_assert_eq(hl, 10);
	cr_assert_eq(h.addr.port, 53);
}
