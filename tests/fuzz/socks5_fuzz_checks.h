/* socks5_fuzz_checks.h - what must hold for any input to the codec, shared by the libFuzzer
 * harness (fuzz_socks5.c) and the Criterion test that replays the corpus in CI
 * (tests/unit/test_socks5_fuzz_corpus.c).
 *
 * One input drives: the message parser and the UDP header decoder on the whole input (whatever
 * they accept must encode back to the same bytes), then the server handshake with each offer
 * and the client handshake for each command, fed the input in chunks of 1..64 bytes that a
 * generator seeded from the input chooses, so any split is reachable. The includer defines
 * FUZZ_CHECK(cond) before including this file: it must fail loudly when cond is false. */
#ifndef RINGSOCKS_TESTS_SOCKS5_FUZZ_CHECKS_H
#define RINGSOCKS_TESTS_SOCKS5_FUZZ_CHECKS_H

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <ringsocks/socks5.h>

static inline size_t fuzz_next_chunk(uint32_t *st, size_t left)
{
	size_t n;

	*st = *st * 1103515245u + 12345u;
	n = 1 + (*st >> 16) % 64;
	return n < left ? n : left;
}

/* An address the codec handed out is well formed: it prints, converts, and a request carrying
 * it parses back to the same address. */
static inline void fuzz_check_addr(const struct socks5_addr *a)
{
	char text[300];
	struct sockaddr_storage ss;
	socklen_t sl;
	uint8_t enc[SOCKS5_MAX_REQUEST];
	uint8_t code = 0;
	struct socks5_addr back;
	int n, m;

	FUZZ_CHECK(a->atyp == SOCKS5_ATYP_IPV4 || a->atyp == SOCKS5_ATYP_IPV6 ||
	           a->atyp == SOCKS5_ATYP_DOMAIN);
	socks5_addr_str(a, text, sizeof(text));
	FUZZ_CHECK(memchr(text, '\0', sizeof(text)) != NULL);
	if (a->atyp == SOCKS5_ATYP_DOMAIN)
		FUZZ_CHECK(a->len >= 1 && a->u.name[a->len] == '\0');
	else
		FUZZ_CHECK(socks5_addr_to_sockaddr(a, &ss, &sl) == 0);
	n = socks5_encode_request(enc, sizeof(enc), SOCKS5_CMD_CONNECT, a);
	FUZZ_CHECK(n > 0);
	m = socks5_parse_message(enc, (size_t)n, &code, &back);
	FUZZ_CHECK(m == n && code == SOCKS5_CMD_CONNECT);
	FUZZ_CHECK(back.atyp == a->atyp && back.len == a->len && back.port == a->port);
}

static inline void fuzz_server(const uint8_t *d, size_t n, unsigned offer, int verdict)
{
	struct socks5_server s;
	uint32_t st = n ? d[0] : 0;
	size_t off = 0;

	socks5_server_init(&s, offer);
	while (off < n) {
		size_t chunk = fuzz_next_chunk(&st, n - off), used = 0;
		enum socks5_status r = socks5_server_feed(&s, d + off, chunk, &used);

		FUZZ_CHECK(used <= chunk);
		off += used;
		if (r == SOCKS5_SEND || r == SOCKS5_ERROR)
			FUZZ_CHECK(s.out_len <= sizeof(s.obuf));
		if (r == SOCKS5_CHECK_AUTH) {
			/* credentials are byte strings (a NUL inside is allowed), NUL-terminated */
			FUZZ_CHECK(s.user[s.user_len] == '\0' && s.pass[s.pass_len] == '\0');
			r = socks5_server_auth_verdict(&s, verdict);
			FUZZ_CHECK(r == (verdict ? SOCKS5_SEND : SOCKS5_ERROR));
		}
		if (r == SOCKS5_REQUEST) {
			uint8_t code = 0;
			struct socks5_addr a;

			FUZZ_CHECK(s.state == SOCKS5_SRV_DONE);
			FUZZ_CHECK(s.raw_len > 0 && s.raw_len <= SOCKS5_MAX_REQUEST);
			FUZZ_CHECK(socks5_parse_message(s.raw, s.raw_len, &code, &a) == s.raw_len);
			FUZZ_CHECK(code == s.req.cmd);
			fuzz_check_addr(&s.req.dst);
			return;
		}
		if (r == SOCKS5_ERROR) {
			FUZZ_CHECK(s.state == SOCKS5_SRV_FAILED && s.err < 0);
			return;
		}
		if (r == SOCKS5_NEED_MORE)
			FUZZ_CHECK(used == chunk);
		FUZZ_CHECK(used > 0 || r == SOCKS5_SEND); /* progress, or there would be a loop */
	}
}

static inline void fuzz_client(const uint8_t *d, size_t n, int with_auth, uint8_t cmd)
{
	struct socks5_client c;
	struct socks5_addr dst;
	uint32_t st = n ? d[n - 1] : 0;
	size_t off = 0;

	FUZZ_CHECK(socks5_addr_set_name(&dst, "example.test", 12, 80) == 0);
	FUZZ_CHECK(socks5_client_init(&c, cmd, &dst, with_auth ? "user" : NULL,
	                              with_auth ? "pass" : NULL) == 0);
	FUZZ_CHECK(socks5_client_start(&c) == SOCKS5_SEND);
	while (off < n) {
		size_t chunk = fuzz_next_chunk(&st, n - off), used = 0;
		enum socks5_status r = socks5_client_feed(&c, d + off, chunk, &used);

		FUZZ_CHECK(used <= chunk);
		off += used;
		if (r == SOCKS5_SEND)
			FUZZ_CHECK(c.out != NULL && c.out_len > 0);
		if (r == SOCKS5_REPLY) {
			struct sockaddr_storage ss;
			struct sockaddr_in proxy = {.sin_family = AF_INET};

			fuzz_check_addr(&c.bnd);
			(void)socks5_client_udp_relay(&c, (const struct sockaddr *)&proxy, &ss,
			                              NULL);
			if (cmd != SOCKS5_CMD_BIND || c.state == SOCKS5_CLI_DONE)
				return;
			continue;
		}
		if (r == SOCKS5_ERROR) {
			FUZZ_CHECK(c.state == SOCKS5_CLI_FAILED && c.err < 0);
			return;
		}
		FUZZ_CHECK(used > 0 || r == SOCKS5_SEND);
	}
}

/* Forwarder mode: an input the client accepts as a raw request is a whole, well-formed request,
 * and it is sent exactly as given once the server picks no-auth. */
static inline void fuzz_client_raw(const uint8_t *d, size_t n)
{
	static const uint8_t noauth[] = {0x05, 0x00};
	struct socks5_client c;
	size_t used = 0;

	if (socks5_client_init_raw(&c, d, n, NULL, NULL) != 0)
		return;
	FUZZ_CHECK(socks5_parse_message(d, n, NULL, NULL) == (int)n);
	FUZZ_CHECK(socks5_client_start(&c) == SOCKS5_SEND);
	FUZZ_CHECK(socks5_client_feed(&c, noauth, sizeof(noauth), &used) == SOCKS5_SEND);
	FUZZ_CHECK(used == sizeof(noauth) && c.out_len == n && memcmp(c.out, d, n) == 0);
}

static inline void fuzz_socks5_one(const uint8_t *d, size_t n)
{
	uint8_t code = 0;
	struct socks5_addr a;
	struct socks5_udp_header h;
	size_t hl = 0;
	int m = socks5_parse_message(d, n, &code, &a);

	FUZZ_CHECK(m <= (int)n);
	if (m > 0)
		fuzz_check_addr(&a);
	if (socks5_udp_decode(d, n, &h, &hl) == 0) {
		uint8_t enc[SOCKS5_UDP_MAX_HEADER];

		FUZZ_CHECK(hl <= n);
		fuzz_check_addr(&h.addr);
		FUZZ_CHECK(socks5_udp_encode_header(enc, sizeof(enc), h.frag, &h.addr) == (int)hl);
		FUZZ_CHECK(memcmp(enc, d, hl) == 0);
	}
	fuzz_client_raw(d, n);
	fuzz_server(d, n, SOCKS5_OFFER_NOAUTH, 1);
	fuzz_server(d, n, SOCKS5_OFFER_USERPASS, 1);
	fuzz_server(d, n, SOCKS5_OFFER_NOAUTH | SOCKS5_OFFER_USERPASS, 0);
	fuzz_client(d, n, 0, SOCKS5_CMD_CONNECT);
	fuzz_client(d, n, 1, SOCKS5_CMD_BIND);
	fuzz_client(d, n, 1, SOCKS5_CMD_UDP_ASSOCIATE);
}

#endif
