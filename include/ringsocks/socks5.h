/* ringsocks/socks5.h - sans-I/O SOCKS5 codec (RFC 1928, RFC 1929 username/password).
 * Server and client handshakes as byte-driven state machines, plus message encoders and the
 * UDP relay datagram header.
 * Nothing here touches a socket, allocates memory or keeps global state. */
#ifndef RINGSOCKS_SOCKS5_H
#define RINGSOCKS_SOCKS5_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SOCKS5_VERSION      0x05
#define SOCKS5_AUTH_VERSION 0x01 /* RFC 1929 subnegotiation version */

/* Authentication methods (RFC 1928 section 3). GSSAPI (0x01) is never offered. */
#define SOCKS5_METHOD_NOAUTH   0x00
#define SOCKS5_METHOD_USERPASS 0x02
#define SOCKS5_METHOD_NONE     0xFF

/* Commands. */
#define SOCKS5_CMD_CONNECT       0x01
#define SOCKS5_CMD_BIND          0x02
#define SOCKS5_CMD_UDP_ASSOCIATE 0x03

/* Address types. */
#define SOCKS5_ATYP_IPV4   0x01
#define SOCKS5_ATYP_DOMAIN 0x03
#define SOCKS5_ATYP_IPV6   0x04

/* Reply codes (RFC 1928 section 6). */
#define SOCKS5_REP_SUCCEEDED          0x00
#define SOCKS5_REP_GENERAL_FAILURE    0x01
#define SOCKS5_REP_NOT_ALLOWED        0x02
#define SOCKS5_REP_NET_UNREACHABLE    0x03
#define SOCKS5_REP_HOST_UNREACHABLE   0x04
#define SOCKS5_REP_CONN_REFUSED       0x05
#define SOCKS5_REP_TTL_EXPIRED        0x06
#define SOCKS5_REP_CMD_NOT_SUPPORTED  0x07
#define SOCKS5_REP_ATYP_NOT_SUPPORTED 0x08

/* Largest messages on the wire. */
#define SOCKS5_MAX_GREETING 257 /* VER NMETHODS METHODS[255] */
#define SOCKS5_MAX_AUTH     513 /* VER ULEN UNAME[255] PLEN PASSWD[255] */
#define SOCKS5_MAX_REQUEST  262 /* VER CMD RSV ATYP LEN NAME[255] PORT[2] */
#define SOCKS5_MAX_REPLY    262 /* same layout as a request */
#define SOCKS5_MAX_NAME     255

/* Offered-method mask for socks5_server_init. */
#define SOCKS5_OFFER_NOAUTH   0x1u
#define SOCKS5_OFFER_USERPASS 0x2u

/* A SOCKS5 address: IPv4, IPv6 or domain name, with a port in host byte order.
 * For a domain, name[] holds len bytes followed by a NUL (names with an embedded
 * NUL are kept as received; len is authoritative). */
struct socks5_addr {
	uint8_t atyp; /* SOCKS5_ATYP_* */
	uint8_t len;  /* bytes in addr: 4, 16, or the domain length (1..255) */
	uint16_t port;
	union {
		uint8_t ipv4[4];
		uint8_t ipv6[16];
		char name[SOCKS5_MAX_NAME + 1];
	} u;
};

/* A parsed request (RFC 1928 section 4). */
struct socks5_request {
	uint8_t cmd; /* SOCKS5_CMD_* */
	struct socks5_addr dst;
};

/* What a feed call asks of its caller. */
enum socks5_status {
	SOCKS5_NEED_MORE = 0, /* all input consumed; feed more bytes when they arrive */
	SOCKS5_SEND,       /* send out[0..out_len), then keep feeding (the rest of the input too) */
	SOCKS5_CHECK_AUTH, /* server: check user/pass, then call socks5_server_auth_verdict */
	SOCKS5_REQUEST,    /* server: request complete in s->req, raw bytes in s->raw */
	SOCKS5_REPLY,      /* client: a reply arrived, see c->reply / c->bnd */
	SOCKS5_ERROR,      /* send out[0..out_len) if out_len > 0, then close; see err */
};

/* ---- server handshake (RFC 1928 steps 2-4) ---- */

enum socks5_server_state {
	SOCKS5_SRV_GREETING = 0,
	SOCKS5_SRV_AUTH,
	SOCKS5_SRV_AUTH_CHECK, /* waiting for socks5_server_auth_verdict */
	SOCKS5_SRV_REQUEST,
	SOCKS5_SRV_DONE,  /* request delivered; feed no more */
	SOCKS5_SRV_FAILED /* error delivered; feed no more */
};

struct socks5_server {
	uint8_t state;  /* enum socks5_server_state */
	uint8_t offer;  /* SOCKS5_OFFER_* mask */
	uint8_t method; /* chosen method */
	uint8_t reply;  /* on SOCKS5_ERROR: the reply code sent (or 0xFF / auth status) */
	int err;        /* on SOCKS5_ERROR: negative errno-style reason (-EPROTO, -EACCES, ...) */
	uint16_t have;  /* bytes of the current message buffered in buf */
	uint16_t out_len;
	const uint8_t *out; /* bytes to send after SOCKS5_SEND / SOCKS5_ERROR */
	/* on SOCKS5_CHECK_AUTH: NUL-terminated credentials (pointers into buf) */
	const char *user;
	const char *pass;
	uint8_t user_len, pass_len;
	/* on SOCKS5_REQUEST: */
	struct socks5_request req;
	const uint8_t *raw; /* the request exactly as received (points into buf) */
	uint16_t raw_len;
	uint8_t obuf[SOCKS5_MAX_REPLY];
	uint8_t buf[SOCKS5_MAX_AUTH + 2]; /* current message (+2 for NULs after user/pass) */
};

/* Prepare a server handshake offering the methods in `offer` (SOCKS5_OFFER_* mask).
 * When both are offered the client's preference does not matter: username/password wins
 * when the client lists it, else no-auth. */
void socks5_server_init(struct socks5_server *s, unsigned offer);

/* Feed `len` bytes received from the client. *consumed tells how many were used; the rest
 * belongs to the next call (or, after SOCKS5_REQUEST, is data the client pipelined after its
 * request). Returns what the caller must do next. Never reads past in[len). */
enum socks5_status socks5_server_feed(struct socks5_server *s, const uint8_t *in, size_t len,
                                      size_t *consumed);

/* After SOCKS5_CHECK_AUTH: ok != 0 accepts. Returns SOCKS5_SEND (01 00, then keep feeding)
 * or SOCKS5_ERROR (01 01, then close). */
enum socks5_status socks5_server_auth_verdict(struct socks5_server *s, int ok);

/* ---- client handshake (RFC 1928 steps 2-5) ---- */

enum socks5_client_state {
	SOCKS5_CLI_START = 0,
	SOCKS5_CLI_METHOD, /* greeting sent, awaiting method selection */
	SOCKS5_CLI_AUTH,   /* auth sent, awaiting status */
	SOCKS5_CLI_REPLY,  /* request sent, awaiting reply */
	SOCKS5_CLI_REPLY2, /* BIND: first reply delivered, awaiting the second */
	SOCKS5_CLI_DONE,
	SOCKS5_CLI_FAILED
};

struct socks5_client {
	uint8_t state; /* enum socks5_client_state */
	uint8_t cmd;   /* command of the request (from the raw bytes when raw) */
	uint8_t reply; /* on SOCKS5_REPLY: reply code; on SOCKS5_ERROR after a reply: that code */
	uint8_t nreplies; /* success replies received so far (BIND: 1, then 2) */
	int err; /* on SOCKS5_ERROR: -EPROTO garbage, -EACCES auth rejected, -ENOTSUP no method,
	            -ECONNREFUSED etc. never; a failure reply is SOCKS5_ERROR with err =
	            -ECONNABORTED and reply set */
	uint16_t have;
	uint16_t out_len;
	const uint8_t *out;
	struct socks5_addr bnd; /* on SOCKS5_REPLY: BND.ADDR / BND.PORT */
	const uint8_t *raw_req; /* request to send unchanged, or NULL to send req_buf */
	uint16_t raw_len;       /* length of the request to send (raw_req or req_buf) */
	uint8_t user_len, pass_len;
	char user[SOCKS5_MAX_NAME + 1];
	char pass[SOCKS5_MAX_NAME + 1];
	uint8_t req_buf[SOCKS5_MAX_REQUEST];
	uint8_t obuf[SOCKS5_MAX_AUTH];
	uint8_t ibuf[SOCKS5_MAX_REPLY]; /* the last server message, whole, until the next feed */
};

/* Prepare a client handshake for `cmd` to `dst`. user/pass may be NULL (no-auth only);
 * with them, both no-auth and username/password are offered. Returns 0 or -EINVAL
 * (bad command, address or credential length). */
int socks5_client_init(struct socks5_client *c, uint8_t cmd, const struct socks5_addr *dst,
                       const char *user, const char *pass);

/* Same, but the request is sent exactly as given (forwarder mode). The bytes must stay
 * valid until the request has been sent. Returns 0 or -EINVAL (not a well-formed request). */
int socks5_client_init_raw(struct socks5_client *c, const uint8_t *req, size_t len,
                           const char *user, const char *pass);

/* Returns SOCKS5_SEND with the greeting in c->out. */
enum socks5_status socks5_client_start(struct socks5_client *c);

/* Feed bytes from the server. Returns SOCKS5_NEED_MORE, SOCKS5_SEND (auth or request to send),
 * SOCKS5_REPLY (success reply: c->bnd; for BIND, feed again for the second reply), or
 * SOCKS5_ERROR (c->err; when the server sent a failure reply, err = -ECONNABORTED and
 * c->reply holds its code). Bytes after the final reply are not consumed. */
enum socks5_status socks5_client_feed(struct socks5_client *c, const uint8_t *in, size_t len,
                                      size_t *consumed);

/* ---- encoders and helpers ---- */

/* Encode a request into out (cap bytes). Returns its length or -EINVAL / -ENOSPC. */
int socks5_encode_request(uint8_t *out, size_t cap, uint8_t cmd, const struct socks5_addr *dst);

/* Encode a reply with code rep and bound address bnd (NULL: IPv4 0.0.0.0 port 0).
 * Returns its length or -EINVAL / -ENOSPC. */
int socks5_encode_reply(uint8_t *out, size_t cap, uint8_t rep, const struct socks5_addr *bnd);

/* Parse a complete request or reply message (same layout) at the start of in. Returns its
 * length, 0 when more bytes are needed, or a negative SOCKS5 reply code for a malformed
 * message: -SOCKS5_REP_ATYP_NOT_SUPPORTED, -SOCKS5_REP_GENERAL_FAILURE. Does not check the
 * command/reply byte; *code receives it. */
int socks5_parse_message(const uint8_t *in, size_t len, uint8_t *code, struct socks5_addr *addr);

/* Conversions between socks5_addr and socket addresses (IPv4, IPv6; a domain gives -EINVAL). */
int socks5_addr_from_sockaddr(struct socks5_addr *a, const struct sockaddr *sa);
int socks5_addr_to_sockaddr(const struct socks5_addr *a, struct sockaddr_storage *ss,
                            socklen_t *len);

/* Fill a domain address. Returns 0 or -EINVAL (empty or longer than 255). */
int socks5_addr_set_name(struct socks5_addr *a, const char *name, size_t len, uint16_t port);

/* Human-readable text for a reply code ("succeeded", "connection refused", ...). */
const char *socks5_reply_str(uint8_t rep);

/* Format an address as "1.2.3.4:80", "[::1]:80" or "name:80" into buf. Returns buf. */
char *socks5_addr_str(const struct socks5_addr *a, char *buf, size_t cap);

/* ---- UDP relay datagrams (RFC 1928 section 7) ---- */

/* Largest UDP request header: RSV[2] FRAG ATYP LEN NAME[255] PORT[2]. */
#define SOCKS5_UDP_MAX_HEADER 262

/* The header in front of every datagram exchanged with a UDP relay. */
struct socks5_udp_header {
	uint8_t frag;            /* fragment number; 0 = a whole datagram (high bit: last one) */
	struct socks5_addr addr; /* DST.ADDR / DST.PORT (port in host byte order) */
};

/* Encode the header RSV RSV FRAG ATYP DST.ADDR DST.PORT for a datagram to or from a (DATA goes
 * right after it). Returns its length (10 for IPv4, 22 for IPv6, 7 + len for a name) or -EINVAL
 * (a NULL or malformed address: unknown atyp, wrong len, empty name) / -ENOSPC (out NULL or cap
 * too small; nothing is written). frag is written as given. */
int socks5_udp_encode_header(uint8_t *out, size_t cap, uint8_t frag, const struct socks5_addr *a);

/* Decode the header of the whole datagram in[0..len). Returns 0 with *h filled (a name is
 * NUL-terminated, the port is in host byte order) and *header_len the offset of DATA (len when
 * DATA is empty, which is valid); h and header_len may be NULL and are written only on success.
 * Errors, checked in this order: -EMSGSIZE shorter than the 4 fixed bytes, -EPROTO RSV not zero,
 * -EAFNOSUPPORT unknown ATYP, -EMSGSIZE no name length byte, -EINVAL zero-length name,
 * -EMSGSIZE address or port cut short. FRAG is not judged: a relay that does not reassemble
 * drops datagrams with h->frag != 0 (RFC 1928 section 7). */
int socks5_udp_decode(const uint8_t *in, size_t len, struct socks5_udp_header *h,
                      size_t *header_len);

/* After the success reply to a UDP ASSOCIATE: the address to send datagrams to, into *out (and
 * its length into *len when len is not NULL). That is BND.ADDR:BND.PORT, except that an
 * all-zeros BND.ADDR (0.0.0.0 or ::) means the proxy's own address, taken from proxy (the
 * control connection's peer as getpeername gives it: a whole sockaddr_in or sockaddr_in6, whose
 * family and scope id are kept) with BND.PORT. proxy is read only in that case and may
 * otherwise be NULL. Returns 0, -EINVAL (no UDP ASSOCIATE success reply yet or ever, a
 * BND.PORT of 0, a domain BND the caller must resolve itself, a zero BND with no proxy) or
 * -EAFNOSUPPORT (a zero BND and proxy neither IPv4 nor IPv6). *out is written only on success. */
int socks5_client_udp_relay(const struct socks5_client *c, const struct sockaddr *proxy,
                            struct sockaddr_storage *out, socklen_t *len);

#ifdef __cplusplus
}
#endif
#endif
