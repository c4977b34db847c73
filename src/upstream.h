/* upstream.h - reaching destinations through upstream SOCKS5 proxies: forwarder mode (the
 * client's request sent unchanged) and tunnel mode (CONNECT to a fixed destination). */
#ifndef RINGSOCKS_UPSTREAM_H
#define RINGSOCKS_UPSTREAM_H

#include <stdint.h>

#include "conn.h"
#include "log.h"
#include "ringsocks/socks5.h"

#define UPSTREAM_BACKOFF_MIN_MS 5000
#define UPSTREAM_BACKOFF_MAX_MS 30000

/* Per-slot state of a client handshake with an upstream (touched only while one runs). */
struct upstream_hs {
	struct socks5_client cli;
	uint16_t out_off; /* bytes of cli.out already sent */
	uint16_t in_len;  /* unparsed bytes from the upstream at the start of in[] */
	uint16_t tried;   /* bit i: upstream i tried for this client (CONFIG_MAX_UPSTREAMS) */
	uint8_t in[CONN_RBUF];
	uint8_t tx[SOCKS5_MAX_REPLY + CONN_RBUF]; /* reply + what followed it, to the client */
};

/* Per-worker view of each upstream's health. */
struct upstream_health {
	uint64_t backoff_until_ms;
	uint32_t backoff_ms;
	struct log_limit warned; /* its failures: one line per LOG_LIMIT_MS */
};

struct worker;

/* Start reaching the destination of c through the upstreams (c->via already set). */
void upstream_start(struct worker *w, struct conn *c);
/* The TCP connection to the current upstream is up. */
void upstream_connected(struct worker *w, struct conn *c);
/* The current upstream failed (reason logged); try the next one or give up. */
void upstream_failed(struct worker *w, struct conn *c, const char *reason);
/* --connect-timeout ran out on an attempt (resolving, connecting or in the handshake). */
void upstream_timeout(struct worker *w, struct conn *c);
/* The failed upstream's requests have all ended: try the next one. */
void upstream_retry(struct worker *w, struct conn *c);
#define UPSTREAM_OPS (CONN_OP_BIT(OP_CONNECT) | CONN_OP_BIT(OP_RECV_T) | CONN_OP_BIT(OP_SEND_T))
void upstream_on_recv(struct worker *w, struct conn *c, int res);
void upstream_on_send(struct worker *w, struct conn *c, int res);

#endif
