/* config.h - the daemon's settings, parsed and validated completely before anything starts. */
#ifndef RINGSOCKS_CONFIG_H
#define RINGSOCKS_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "ringsocks/socks5.h"

#define CONFIG_MAX_LISTEN 16
#define CONFIG_MAX_CPUS   1024
#define CONFIG_MAX_USERS  1024

struct config_user {
	uint8_t name_len, pass_len;
	char name[256];
	char pass[256];
};

/* An upstream SOCKS5 proxy: socks5://[USER:PASS@]HOST:PORT. */
struct config_upstream {
	struct socks5_addr addr; /* IPv4/IPv6 literal or a name to resolve */
	char user[256];
	char pass[256];
	uint8_t has_auth;
	char text[300]; /* HOST:PORT for logs, without credentials */
};

#define CONFIG_MAX_UPSTREAMS 16

enum config_mode { MODE_SERVER = 0, MODE_TUNNEL };

/* How the relay moves bytes (see relay.c). */
#define CONFIG_PIPES_DEFAULT        512 /* pipes a worker lends at most: two descriptors each */
#define CONFIG_RELAY_MEMORY_DEFAULT 64  /* MiB of queued chunks past which a worker reads less */
#define CONFIG_KEEPALIVE_DEFAULT    600 /* s of silence before a client is probed (TCP keepalive) */
enum relay_mode { RELAY_SPLICE = 0, RELAY_SPLICE_SQE, RELAY_COPY, RELAY_HYBRID };

struct config {
	int mode; /* enum config_mode */
	/* forwarder (server mode) or --via (tunnel mode) */
	struct config_upstream upstreams[CONFIG_MAX_UPSTREAMS];
	int nupstreams;
	/* tunnel mode: the fixed destination of each listen address */
	struct socks5_addr tunnel_dst[CONFIG_MAX_LISTEN];
	struct sockaddr_storage listen[CONFIG_MAX_LISTEN];
	socklen_t listen_len[CONFIG_MAX_LISTEN];
	int nlisten;
	int workers; /* 0: one per online CPU */
	int cpus[CONFIG_MAX_CPUS];
	int ncpus;
	struct config_user *users; /* malloc'd, nusers entries */
	int nusers;
	char resolver[128]; /* c-ares "host:port" csv form, empty: system resolver */
	double handshake_timeout;
	double connect_timeout;
	long max_conns; /* 0: limited only by descriptors */

	/* BIND and UDP ASSOCIATE */
	double bind_timeout;     /* how long BIND waits for the peer */
	double udp_idle_timeout; /* an association ends after this long without datagrams */
	uint16_t bind_port_lo, bind_port_hi; /* --bind-ports LOW-HIGH; 0-0: ephemeral */
	/* tunnel -U: local UDP ports and the fixed destination of each */
	struct sockaddr_storage udp_listen[CONFIG_MAX_LISTEN];
	socklen_t udp_listen_len[CONFIG_MAX_LISTEN];
	struct socks5_addr udp_dst[CONFIG_MAX_LISTEN];
	int nudp;
	int relay_mode;            /* enum relay_mode */
	uint32_t pipes;            /* --pipes: a worker's pipe pool (CONFIG_PIPES_DEFAULT) */
	uint32_t relay_memory_mib; /* --relay-memory (CONFIG_RELAY_MEMORY_DEFAULT) */
	int keepalive_s;           /* --keepalive: idle seconds before probes, 0: off */
	/* --congestion ALG: TCP_CONGESTION of the proxy's own TCP sockets; empty: see below */
	char congestion[16];
	/* --congestion system: never set it. Otherwise, with no ALG given, sockets whose peer is
	 * on this machine get loopback_cc (main picks it at start-up; empty: nothing to change) */
	int congestion_system;
	char loopback_cc[16];
	int verbose;
};

/* Parse argv into cfg. Returns 0 to run, 1 when --help/--version was printed (exit 0),
 * or -EINVAL with a one-line message in err (exit 2). */
int config_parse(struct config *cfg, int argc, char **argv, char *err, size_t errlen);
void config_free(struct config *cfg);

/* Parse "ADDR:PORT" / "[V6]:PORT" into ss. Returns 0 or -EINVAL. */
int config_parse_hostport(const char *s, struct sockaddr_storage *ss, socklen_t *len);

/* Parse "socks5://[USER:PASS@]HOST:PORT" (socks5h:// too; %XX escapes in USER and PASS). */
int config_parse_upstream(const char *url, struct config_upstream *u);

/* Parse a tunnel spec "[BIND_ADDR:]PORT:DEST_HOST:DEST_PORT" (IPv6 in brackets). */
int config_parse_tunnel(const char *spec, struct sockaddr_storage *ss, socklen_t *len,
                        struct socks5_addr *dst);

/* Check credentials against the configured users (constant time per user). */
int config_check_user(const struct config *cfg, const char *user, size_t ulen, const char *pass,
                      size_t plen);

#endif
