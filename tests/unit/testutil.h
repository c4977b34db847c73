/* testutil.h - helpers shared by the SOCKS5 codec unit tests (tests/unit/test_socks5_*.c):
 * BYTES(...) for inline byte strings, BOTH for the two-method offer, hex() dumps, byte-string
 * assertions (assert_bytes for a size_t length, assert_encoded for an int encoder result),
 * socks5_addr builders (addr4, addr6, addr_name, addr_name_len) and address comparisons
 * (assert_addr_fields_eq, assert_addr_eq). Everything is static inline or a macro, so each
 * test executable that includes it gets its own copy. */
#ifndef RINGSOCKS_TESTS_TESTUTIL_H
#define RINGSOCKS_TESTS_TESTUTIL_H

#include <criterion/criterion.h>

#include <arpa/inet.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <ringsocks/socks5.h>

/* A byte string written inline: expands to two arguments, the pointer and the length. */
#define BYTES(...) ((const uint8_t[]){__VA_ARGS__}), sizeof((const uint8_t[]){__VA_ARGS__})
#define BOTH       (SOCKS5_OFFER_NOAUTH | SOCKS5_OFFER_USERPASS)

/* p[0..n) as "xx xx ..." in buf (truncated to fit cap); returns buf. */
static inline const char *hex(const uint8_t *p, size_t n, char *buf, size_t cap)
{
	size_t off = 0;

	buf[0] = '\0';
	for (size_t i = 0; i < n && off + 4 < cap; i++)
		off += (size_t)snprintf(buf + off, cap - off, "%02x ", p[i]);
	return buf;
}

/* got[0..n) must equal want[0..want_len). */
static inline void assert_bytes(const uint8_t *got, size_t n, const uint8_t *want, size_t want_len)
{
	char g[2048], w[2048];

	cr_assert(n == want_len && (n == 0 || memcmp(got, want, want_len) == 0),
	          "bytes differ\n got  %s\n want %s", hex(got, n, g, sizeof(g)),
	          hex(want, want_len, w, sizeof(w)));
}

/* n is what an encoder returned: it must be the length of want, and the bytes must match. */
static inline void assert_encoded(const uint8_t *got, int n, const uint8_t *want, size_t want_len)
{
	char g[2048], w[2048];

	cr_assert(n >= 0, "encoder failed: %d", n);
	cr_assert((size_t)n == want_len && memcmp(got, want, want_len) == 0,
	          "bytes differ\n got  %s\n want %s", hex(got, (size_t)n, g, sizeof(g)),
	          hex(want, want_len, w, sizeof(w)));
}

/* a.b.c.d:port */
static inline struct socks5_addr addr4(uint8_t a, uint8_t b, uint8_t c, uint8_t d, uint16_t port)
{
	struct socks5_addr x = {.atyp = SOCKS5_ATYP_IPV4, .len = 4, .port = port};

	x.u.ipv4[0] = a;
	x.u.ipv4[1] = b;
	x.u.ipv4[2] = c;
	x.u.ipv4[3] = d;
	return x;
}

/* [text]:port, text in inet_pton() form. */
static inline struct socks5_addr addr6(const char *text, uint16_t port)
{
	struct socks5_addr x = {.atyp = SOCKS5_ATYP_IPV6, .len = 16, .port = port};

	cr_assert_eq(inet_pton(AF_INET6, text, x.u.ipv6), 1);
	return x;
}

/* A domain name of exactly len bytes (which need not be NUL-terminated). */
static inline struct socks5_addr addr_name_len(const char *name, size_t len, uint16_t port)
{
	struct socks5_addr x;

	cr_assert_eq(socks5_addr_set_name(&x, name, len, port), 0);
	return x;
}

/* A domain name given as a C string. */
static inline struct socks5_addr addr_name(const char *name, uint16_t port)
{
	return addr_name_len(name, strlen(name), port);
}

/* Same type, length, port and address bytes. */
static inline void assert_addr_fields_eq(const struct socks5_addr *got,
                                         const struct socks5_addr *want)
{
	cr_assert_eq(got->atyp, want->atyp);
	cr_assert_eq(got->len, want->len);
	cr_assert_eq(got->port, want->port);
	cr_assert_arr_eq(got->u.name, want->u.name, want->len);
}

/* As assert_addr_fields_eq, and a domain name in got must be NUL-terminated. */
static inline void assert_addr_eq(const struct socks5_addr *got, const struct socks5_addr *want)
{
	assert_addr_fields_eq(got, want);
	if (want->atyp == SOCKS5_ATYP_DOMAIN)
		cr_assert_eq(got->u.name[got->len], '\0', "name not NUL-terminated");
}

#endif /* RINGSOCKS_TESTS_TESTUTIL_H */
