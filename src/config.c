/* config.c - command-line parsing and validation (getopt_long). No sockets opened here. */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DEFAULT_LISTEN "127.0.0.1:1080"

static const char usage[] =
    "usage: ringsocks [options]\n"
    "A SOCKS5 proxy on io_uring (RFC 1928 CONNECT, BIND and UDP ASSOCIATE; RFC 1929\n"
    "username/password).\n"
    "\n"
    "  -l, --listen ADDR:PORT      listen address, repeatable; IPv6 as [::1]:1080\n"
    "                              (default " DEFAULT_LISTEN ")\n"
    "  -w, --workers N             worker threads, one io_uring each (default: online CPUs)\n"
    "      --cpus LIST             pin worker i to the i-th CPU of LIST, e.g. 0,1 or 0-3\n"
    "      --user NAME:PASS        require RFC 1929 username/password; repeatable\n"
    "      --users-file PATH       the same from a file, one NAME:PASS a line ('#' starts\n"
    "                              a comment); repeatable. Unlike --user, the passwords\n"
    "                              are not in the command line, which every local user\n"
    "                              can read (ps); the file must not be accessible to\n"
    "                              others (chmod 600)\n"
    "      --resolver IP:PORT      DNS server for domain names (default: /etc/resolv.conf)\n"
    "      --handshake-timeout S   close clients that have not finished the handshake\n"
    "                              after S seconds (default 10)\n"
    "      --connect-timeout S     give up connecting to a destination after S seconds;\n"
    "                              the client gets reply 6 (default 10)\n"
    "      --max-conns N           at most N live client connections per process; more\n"
    "                              are closed at once (default: limited by descriptors)\n"
    "      --keepalive S           TCP keepalive on clients' connections: probe one that\n"
    "                              has been silent for S seconds, drop it when 5 probes\n"
    "                              S/10 apart go unanswered (default 600; 0: off)\n"
    "      --bind-timeout S        BIND: wait S seconds for the peer to connect, then\n"
    "                              reply 6 (default 60)\n"
    "      --bind-ports LOW-HIGH   BIND: listen on a port from this range (default: an\n"
    "                              ephemeral port)\n"
    "      --udp-idle-timeout S    UDP ASSOCIATE: end an association after S seconds\n"
    "                              without datagrams (default 120)\n"
    "      --upstream URL          forwarder mode: send every request unchanged through\n"
    "                              the SOCKS5 proxy socks5://[USER:PASS@]HOST:PORT;\n"
    "                              repeatable (round-robin with failover); socks5h:// is\n"
    "                              the same (names in requests always go to the proxy)\n"
    "      --upstream-file PATH    the same from a file, one URL a line ('#' starts a\n"
    "                              comment); repeatable. Keeps the upstream's password out\n"
    "                              of the command line (ps); the file must not be\n"
    "                              accessible to others (chmod 600)\n"
    "      --relay MODE            how bytes move after the handshake: splice (splice(2)\n"
    "                              from the loop on readiness), splice-sqe (splice SQEs),\n"
    "                              copy (recv into a buffer ring, then send),\n"
    "                              hybrid (copy, then splice once a read fills a buffer)\n"
    "                              (default hybrid)\n"
    "      --pipes N               splice through at most N pipes per worker (1 MiB each,\n"
    "                              two descriptors); while all are in use a direction is\n"
    "                              copied instead (default 512; 0: never splice)\n"
    "      --relay-memory MIB      at most MIB MiB a worker reads ahead of destinations\n"
    "                              slower than their sources (past the sockets' buffers);\n"
    "                              beyond it a direction with bytes waiting reads on only\n"
    "                              once they are out (default 64; 512 KiB a direction)\n"
    "      --congestion ALG        TCP congestion control of the proxy's own sockets\n"
    "                              (client and outbound side), e.g. cubic or reno;\n"
    "                              'system': the system's (net.ipv4.tcp_congestion_control)\n"
    "                              everywhere; default 'auto': the system's, except that\n"
    "                              sockets to this machine are not paced (cubic instead of\n"
    "                              bbr, for clients and destinations on a loopback address)\n"
    "  -v, --verbose               log one line per session\n"
    "                              (SIGUSR1: each worker logs a line of counters)\n"
    "  -h, --help                  show this help\n"
    "      --version               show the version\n"
    "\n"
    "usage: ringsocks tunnel -L|-U [BIND_ADDR:]PORT:DEST_HOST:DEST_PORT...\n"
    "                        --via URL|--via-file PATH [options]\n"
    "Forward every TCP connection (-L) or UDP datagram (-U) to a local port through a SOCKS5\n"
    "proxy to one destination.\n"
    "\n"
    "  -L SPEC                     local port and fixed destination, repeatable; BIND_ADDR\n"
    "                              defaults to 127.0.0.1; IPv6 in brackets; a DEST_HOST name\n"
    "                              is sent to the proxy to resolve\n"
    "  -U SPEC                     local UDP port and fixed destination, repeatable: each\n"
    "                              sender gets its own UDP ASSOCIATE through the proxy and\n"
    "                              the answers back; same SPEC syntax as -L\n"
    "      --via URL               the proxy, socks5://[USER:PASS@]HOST:PORT; repeatable\n"
    "                              (failover); socks5h:// is the same (a DEST_HOST name\n"
    "                              always goes to the proxy)\n"
    "      --via-file PATH         the same from a file: its one URL (the first line that\n"
    "                              is not blank or a '#' comment); repeatable. Keeps the\n"
    "                              proxy's password out of the command line (ps); the file\n"
    "                              must not be accessible to others (chmod 600)\n"
    "  -w, --cpus, --resolver, --connect-timeout, --max-conns, --keepalive,\n"
    "  --udp-idle-timeout, --relay, --pipes, --relay-memory, --congestion, -v\n"
    "                              as above\n";

enum {
	OPT_CPUS = 256,
	OPT_USER,
	OPT_RESOLVER,
	OPT_HS_TIMEOUT,
	OPT_CONN_TIMEOUT,
	OPT_MAX_CONNS,
	OPT_VERSION,
	OPT_UPSTREAM,
	OPT_VIA,
	OPT_RELAY,
	OPT_BIND_TIMEOUT,
	OPT_BIND_PORTS,
	OPT_UDP_IDLE,
	OPT_CONGESTION,
	OPT_PIPES,
	OPT_RELAY_MEMORY,
	OPT_KEEPALIVE,
	OPT_USERS_FILE,
	OPT_UPSTREAM_FILE,
	OPT_VIA_FILE,
};

static const struct option long_opts[] = {
    {"listen", required_argument, NULL, 'l'},
    {"workers", required_argument, NULL, 'w'},
    {"cpus", required_argument, NULL, OPT_CPUS},
    {"user", required_argument, NULL, OPT_USER},
    {"users-file", required_argument, NULL, OPT_USERS_FILE},
    {"resolver", required_argument, NULL, OPT_RESOLVER},
    {"handshake-timeout", required_argument, NULL, OPT_HS_TIMEOUT},
    {"connect-timeout", required_argument, NULL, OPT_CONN_TIMEOUT},
    {"max-conns", required_argument, NULL, OPT_MAX_CONNS},
    {"verbose", no_argument, NULL, 'v'},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, OPT_VERSION},
    {"upstream", required_argument, NULL, OPT_UPSTREAM},
    {"via", required_argument, NULL, OPT_VIA},
    {"upstream-file", required_argument, NULL, OPT_UPSTREAM_FILE},
    {"via-file", required_argument, NULL, OPT_VIA_FILE},
    {"bind-timeout", required_argument, NULL, OPT_BIND_TIMEOUT},
    {"bind-ports", required_argument, NULL, OPT_BIND_PORTS},
    {"udp-idle-timeout", required_argument, NULL, OPT_UDP_IDLE},
    {"relay", required_argument, NULL, OPT_RELAY},
    {"congestion", required_argument, NULL, OPT_CONGESTION},
    {"pipes", required_argument, NULL, OPT_PIPES},
    {"relay-memory", required_argument, NULL, OPT_RELAY_MEMORY},
    {"keepalive", required_argument, NULL, OPT_KEEPALIVE},
    {NULL, 0, NULL, 0},
};

/* A port: 1-5 decimal digits, nothing else (no sign, no blanks), up to 65535. */
static int parse_port(const char *s, size_t n, int allow_zero, uint16_t *port)
{
	long v = 0;

	if (n == 0 || n > 5)
		return -EINVAL;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -EINVAL;
		v = v * 10 + (s[i] - '0');
	}
	if (v > 65535 || (v == 0 && !allow_zero))
		return -EINVAL;
	*port = (uint16_t)v;
	return 0;
}

int config_parse_hostport(const char *s, struct sockaddr_storage *ss, socklen_t *len)
{
	char host[INET6_ADDRSTRLEN + 2];
	const char *colon, *h;
	size_t hlen;
	uint16_t port;

	memset(ss, 0, sizeof(*ss));
	if (s[0] == '[') {
		const char *rb = strchr(s, ']');
		if (!rb || rb[1] != ':')
			return -EINVAL;
		h = s + 1;
		hlen = (size_t)(rb - h);
		colon = rb + 1;
	} else {
		colon = strrchr(s, ':');
		if (!colon)
			return -EINVAL;
		h = s;
		hlen = (size_t)(colon - s);
	}
	if (hlen == 0 || hlen >= sizeof(host))
		return -EINVAL;
	memcpy(host, h, hlen);
	host[hlen] = '\0';
	if (parse_port(colon + 1, strlen(colon + 1), 1, &port) < 0)
		return -EINVAL;

	struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
	if (s[0] != '[' && inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
		in4->sin_family = AF_INET;
		in4->sin_port = htons(port);
		*len = sizeof(*in4);
		return 0;
	}
	if (s[0] == '[' && inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons(port);
		*len = sizeof(*in6);
		return 0;
	}
	return -EINVAL;
}

static int parse_long(const char *s, long lo, long hi, long *out)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < lo || v > hi)
		return -EINVAL;
	*out = v;
	return 0;
}

/* A timeout in seconds. The workers' timers count whole milliseconds (rounded to the nearest),
 * so less than one would round to 0 and expire at once: 1e-9 closed every client. */
#define TIMEOUT_MIN_S   0.001
#define TIMEOUT_MAX_S   (86400.0 * 365)
#define TIMEOUT_BAD_MSG "is not a number of seconds from 0.001 to 31536000"

static int parse_seconds(const char *s, double *out)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (errno || end == s || *end || !isfinite(v) || v < TIMEOUT_MIN_S || v > TIMEOUT_MAX_S)
		return -EINVAL;
	*out = v;
	return 0;
}

/* "LOW-HIGH" (1..65535, LOW <= HIGH) -> the --bind-ports range. */
static int parse_port_range(const char *s, struct config *cfg)
{
	const char *dash = strchr(s, '-');
	uint16_t a, b;

	if (!dash || parse_port(s, (size_t)(dash - s), 0, &a) < 0 ||
	    parse_port(dash + 1, strlen(dash + 1), 0, &b) < 0 || b < a)
		return -EINVAL;
	cfg->bind_port_lo = a;
	cfg->bind_port_hi = b;
	return 0;
}

/* A CPU number: decimal digits only (strtol would take " 1", "+1" and "0x1"). */
static int parse_cpu_number(const char **p, long *out)
{
	long v = 0;
	int n = 0;

	for (; **p >= '0' && **p <= '9'; (*p)++, n++) {
		v = v * 10 + (**p - '0');
		if (v >= CONFIG_MAX_CPUS)
			return -EINVAL;
	}
	if (n == 0)
		return -EINVAL;
	*out = v;
	return 0;
}

/* "0,2,4-7" -> cpus[]: CPU numbers and ranges, each comma followed by another. */
static int parse_cpus(const char *s, struct config *cfg)
{
	const char *p = s;

	cfg->ncpus = 0;
	for (;;) {
		long a, b;

		if (parse_cpu_number(&p, &a) < 0)
			return -EINVAL;
		b = a;
		if (*p == '-') {
			p++;
			if (parse_cpu_number(&p, &b) < 0 || b < a)
				return -EINVAL;
		}
		for (long c = a; c <= b; c++) {
			if (cfg->ncpus == CONFIG_MAX_CPUS)
				return -EINVAL;
			cfg->cpus[cfg->ncpus++] = (int)c;
		}
		if (*p == '\0')
			return 0;
		if (*p++ != ',')
			return -EINVAL;
	}
}

/* The first CPU of cfg->cpus the process may not run on (a worker pinned there would fail at
 * start-up), or -1; allowed gets the allowed set as a list ("0-1"). A machine with more CPUs
 * than a cpu_set_t holds makes sched_getaffinity fail: the start-up then tells instead. */
static int cpus_not_allowed(const struct config *cfg, char *allowed, size_t cap)
{
	cpu_set_t set;
	size_t o = 0;

	allowed[0] = '\0';
	if (sched_getaffinity(0, sizeof(set), &set) < 0)
		return -1;
	for (int c = 0; c < CPU_SETSIZE && o < cap; c++) {
		int last = c;
		if (!CPU_ISSET(c, &set))
			continue;
		while (last + 1 < CPU_SETSIZE && CPU_ISSET(last + 1, &set))
			last++;
		o += (size_t)snprintf(allowed + o, cap - o, last > c ? "%s%d-%d" : "%s%d",
		                      o ? "," : "", c, last);
		c = last;
	}
	for (int i = 0; i < cfg->ncpus; i++)
		if (!CPU_ISSET(cfg->cpus[i], &set))
			return cfg->cpus[i];
	return -1;
}

static int add_user(struct config *cfg, const char *s)
{
	const char *colon = strchr(s, ':');
	struct config_user *u;
	size_t nlen, plen;

	if (!colon)
		return -EINVAL;
	nlen = (size_t)(colon - s);
	plen = strlen(colon + 1);
	if (nlen < 1 || nlen > 255 || plen > 255 || cfg->nusers == CONFIG_MAX_USERS)
		return -EINVAL;
	u = realloc(cfg->users, sizeof(*u) * (size_t)(cfg->nusers + 1));
	if (!u)
		return -ENOMEM;
	cfg->users = u;
	u = &cfg->users[cfg->nusers++];
	memset(u, 0, sizeof(*u));
	memcpy(u->name, s, nlen);
	memcpy(u->pass, colon + 1, plen);
	u->name_len = (uint8_t)nlen;
	u->pass_len = (uint8_t)plen;
	return 0;
}

static int set_resolver(struct config *cfg, const char *s)
{
	struct sockaddr_storage ss;
	socklen_t len;
	char host[INET6_ADDRSTRLEN];
	int port;

	/* accept a bare IP (port 53) too */
	if (config_parse_hostport(s, &ss, &len) < 0) {
		char tmp[INET6_ADDRSTRLEN + 8];
		if (strlen(s) >= INET6_ADDRSTRLEN)
			return -EINVAL;
		if (strchr(s, ':'))
			snprintf(tmp, sizeof(tmp), "[%s]:53", s);
		else
			snprintf(tmp, sizeof(tmp), "%s:53", s);
		if (config_parse_hostport(tmp, &ss, &len) < 0)
			return -EINVAL;
	}
	if (ss.ss_family == AF_INET) {
		struct sockaddr_in *a = (struct sockaddr_in *)&ss;
		inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
		port = ntohs(a->sin_port);
		snprintf(cfg->resolver, sizeof(cfg->resolver), "%s:%d", host, port);
	} else {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
		inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
		port = ntohs(a->sin6_port);
		snprintf(cfg->resolver, sizeof(cfg->resolver), "[%s]:%d", host, port);
	}
	return port ? 0 : -EINVAL;
}

/* A host of n bytes: "[v6]", an IPv4 literal, or a DNS name. */
static int parse_host(const char *s, size_t n, uint16_t port, struct socks5_addr *a)
{
	char tmp[SOCKS5_MAX_NAME + 1];

	memset(a, 0, sizeof(*a));
	a->port = port;
	if (n >= 2 && s[0] == '[' && s[n - 1] == ']') {
		if (n - 2 >= sizeof(tmp) || n - 2 == 0)
			return -EINVAL;
		memcpy(tmp, s + 1, n - 2);
		tmp[n - 2] = '\0';
		if (inet_pton(AF_INET6, tmp, a->u.ipv6) != 1)
			return -EINVAL;
		a->atyp = SOCKS5_ATYP_IPV6;
		a->len = 16;
		return 0;
	}
	if (n == 0 || n > SOCKS5_MAX_NAME)
		return -EINVAL;
	memcpy(tmp, s, n);
	tmp[n] = '\0';
	if (inet_pton(AF_INET, tmp, a->u.ipv4) == 1) {
		a->atyp = SOCKS5_ATYP_IPV4;
		a->len = 4;
		return 0;
	}
	for (size_t i = 0; i < n; i++) {
		char ch = tmp[i];
		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
		      (ch >= '0' && ch <= '9') || ch == '-' || ch == '.' || ch == '_'))
			return -EINVAL;
	}
	a->atyp = SOCKS5_ATYP_DOMAIN;
	a->len = (uint8_t)n;
	memcpy(a->u.name, tmp, n + 1);
	return 0;
}

/* Where the ":PORT" of "HOST:PORT" starts (HOST may be bracketed), or NULL. */
static const char *port_colon(const char *s, size_t n)
{
	for (size_t i = n; i-- > 0;) {
		if (s[i] == ':')
			return s + i;
		if (s[i] == ']')
			return NULL;
	}
	return NULL;
}

static int hexval(char ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	if (ch >= 'a' && ch <= 'f')
		return ch - 'a' + 10;
	if (ch >= 'A' && ch <= 'F')
		return ch - 'A' + 10;
	return -1;
}

/* Copy s[0..n) to out, decoding %XX; fails on a bad escape or when it does not fit. */
static int unescape(const char *s, size_t n, char *out, size_t cap, size_t *outlen)
{
	size_t o = 0;

	for (size_t i = 0; i < n; i++) {
		int ch = (unsigned char)s[i];
		if (ch == '%') {
			if (i + 2 > n - 1 || hexval(s[i + 1]) < 0 || hexval(s[i + 2]) < 0)
				return -EINVAL;
			ch = hexval(s[i + 1]) * 16 + hexval(s[i + 2]);
			i += 2;
		}
		if (o + 1 >= cap)
			return -EINVAL;
		out[o++] = (char)ch;
	}
	out[o] = '\0';
	*outlen = o;
	return 0;
}

int config_parse_upstream(const char *url, struct config_upstream *u)
{
	const char *p, *at, *colon, *end;
	size_t ulen = 0, plen = 0;
	uint16_t port;

	memset(u, 0, sizeof(*u));
	if (strncmp(url, "socks5://", 9) == 0)
		p = url + 9;
	else if (strncmp(url, "socks5h://", 10) == 0)
		p = url + 10;
	else
		return -EINVAL;
	end = p + strlen(p);
	if (end > p && end[-1] == '/')
		end--;
	at = memrchr(p, '@', (size_t)(end - p));
	if (at) {
		const char *sep = memchr(p, ':', (size_t)(at - p));
		if (!sep)
			return -EINVAL;
		if (unescape(p, (size_t)(sep - p), u->user, sizeof(u->user), &ulen) < 0 ||
		    unescape(sep + 1, (size_t)(at - sep - 1), u->pass, sizeof(u->pass), &plen) <
		        0 ||
		    ulen == 0)
			return -EINVAL;
		u->has_auth = 1;
		p = at + 1;
	}
	colon = port_colon(p, (size_t)(end - p));
	if (!colon || parse_port(colon + 1, (size_t)(end - colon - 1), 0, &port) < 0 ||
	    parse_host(p, (size_t)(colon - p), port, &u->addr) < 0)
		return -EINVAL;
	snprintf(u->text, sizeof(u->text), "%.*s", (int)(end - p), p);
	return 0;
}

int config_parse_tunnel(const char *spec, struct sockaddr_storage *ss, socklen_t *len,
                        struct socks5_addr *dst)
{
	size_t n = strlen(spec);
	const char *c1, *c2;
	uint16_t dport, lport;
	char bind[INET6_ADDRSTRLEN + 16];

	c1 = port_colon(spec, n); /* before DEST_PORT */
	if (!c1 || parse_port(c1 + 1, n - (size_t)(c1 - spec) - 1, 0, &dport) < 0)
		return -EINVAL;
	if (c1 > spec && c1[-1] == ']') {
		/* a bracketed IPv6 DEST_HOST: the colon before it precedes its '[' */
		const char *lb = memrchr(spec, '[', (size_t)(c1 - spec));
		c2 = lb && lb > spec && lb[-1] == ':' ? lb - 1 : NULL;
	} else {
		c2 = port_colon(spec, (size_t)(c1 - spec)); /* before DEST_HOST */
	}
	if (!c2 || parse_host(c2 + 1, (size_t)(c1 - c2 - 1), dport, dst) < 0)
		return -EINVAL;
	/* what is left: "PORT" or "BIND_ADDR:PORT" */
	const char *c3 = port_colon(spec, (size_t)(c2 - spec));
	if (!c3) {
		if (parse_port(spec, (size_t)(c2 - spec), 0, &lport) < 0)
			return -EINVAL;
		snprintf(bind, sizeof(bind), "127.0.0.1:%u", lport);
	} else {
		if ((size_t)(c2 - spec) >= sizeof(bind))
			return -EINVAL;
		snprintf(bind, sizeof(bind), "%.*s", (int)(c2 - spec), spec);
	}
	return config_parse_hostport(bind, ss, len);
}

/* Credentials files (--users-file, --upstream-file, --via-file): the values of --user,
 * --upstream and --via kept out of the command line, which every local user can read (ps,
 * /proc/PID/cmdline). One value a line; blank lines and lines
 * starting with '#' are skipped, and a trailing '\r' (a file saved on Windows) is not part of
 * the value. Errors name the file and line but never quote it: the line holds a password. */

/* Like ssh with a private key: a file others may read has leaked its passwords already, and
 * one they may write lets them add a user. Group read stays allowed for a root:ringsocks
 * 0640 file read by a daemon in that group. */
#define CRED_FILE_MODE_REFUSED (S_IWGRP | S_IRWXO)

/* Adds one value (a NUL-terminated line; nth values of the file came before it) to cfg; on
 * failure writes why, without the value. */
typedef int (*cred_line_fn)(struct config *cfg, const char *line, int nth, char *why, size_t cap);

static int read_cred_file(struct config *cfg, const char *opt, const char *path, const char *what,
                          cred_line_fn add, char *err, size_t errlen)
{
	struct stat st;
	char *line = NULL, why[128];
	size_t cap = 0;
	ssize_t n;
	int lineno = 0, nvalues = 0, ret = 0, saved;
	FILE *f = fopen(path, "re");

	if (!f) {
		snprintf(err, errlen, "%s: %s: %s", opt, path, strerror(errno));
		return -EINVAL;
	}
	/* fstat, not stat: the file checked is the one read */
	if (fstat(fileno(f), &st) < 0) {
		snprintf(err, errlen, "%s: %s: %s", opt, path, strerror(errno));
		fclose(f);
		return -EINVAL;
	}
	/* as ssh: owned by us or by root, or its owner can change it to let anyone in */
	if (st.st_uid != geteuid() && st.st_uid != 0) {
		snprintf(err, errlen, "%s: %s: owned by uid %u, not by this user or root", opt,
		         path, (unsigned)st.st_uid);
		fclose(f);
		return -EINVAL;
	}
	if (st.st_mode & CRED_FILE_MODE_REFUSED) {
		snprintf(err, errlen,
		         "%s: %s: other users may read or change it (mode %04o); chmod 600 it", opt,
		         path, (unsigned)(st.st_mode & 07777));
		fclose(f);
		return -EINVAL;
	}
	while ((n = getline(&line, &cap, f)) >= 0) {
		lineno++;
		if (n > 0 && line[n - 1] == '\n')
			line[--n] = '\0';
		if (n > 0 && line[n - 1] == '\r')
			line[--n] = '\0';
		if (strlen(line) != (size_t)n) {
			snprintf(err, errlen, "%s: %s:%d: a NUL byte in the line", opt, path,
			         lineno);
			ret = -EINVAL;
			break;
		}
		if (line[0] == '#' || line[strspn(line, " \t")] == '\0')
			continue;
		if (add(cfg, line, nvalues, why, sizeof(why)) < 0) {
			snprintf(err, errlen, "%s: %s:%d: %s", opt, path, lineno, why);
			ret = -EINVAL;
			break;
		}
		nvalues++;
	}
	saved = errno;
	if (ret == 0 && ferror(f)) {
		snprintf(err, errlen, "%s: %s: %s", opt, path, strerror(saved));
		ret = -EINVAL;
	} else if (ret == 0 && nvalues == 0) {
		/* an empty users file would quietly turn authentication off, an empty upstream
		 * file forwarding */
		snprintf(err, errlen, "%s: %s: no %s line", opt, path, what);
		ret = -EINVAL;
	}
	free(line);
	fclose(f);
	return ret;
}

static int users_file_line(struct config *cfg, const char *line, int nth, char *why, size_t cap)
{
	(void)nth;
	if (cfg->nusers == CONFIG_MAX_USERS)
		snprintf(why, cap, "too many users (at most %d)", CONFIG_MAX_USERS);
	else if (add_user(cfg, line) < 0)
		snprintf(why, cap, "not NAME:PASS (name 1-255 bytes, password at most 255)");
	else
		return 0;
	return -EINVAL;
}

static int upstream_file_line(struct config *cfg, const char *line, int nth, char *why, size_t cap)
{
	(void)nth;
	if (cfg->nupstreams == CONFIG_MAX_UPSTREAMS)
		snprintf(why, cap, "too many upstream proxies (at most %d)", CONFIG_MAX_UPSTREAMS);
	else if (config_parse_upstream(line, &cfg->upstreams[cfg->nupstreams]) < 0)
		snprintf(why, cap, "not socks5://[USER:PASS@]HOST:PORT");
	else {
		cfg->nupstreams++;
		return 0;
	}
	return -EINVAL;
}

/* --via-file: the proxy is the file's one URL. A second one is refused rather than skipped
 * quietly: whoever wrote it meant it to be used. */
static int via_file_line(struct config *cfg, const char *line, int nth, char *why, size_t cap)
{
	if (nth > 0) {
		snprintf(why, cap, "a second URL; one a file (another --via-file for failover)");
		return -EINVAL;
	}
	return upstream_file_line(cfg, line, nth, why, cap);
}

/* An IPv4-mapped IPv6 address ([::ffff:A.B.C.D]) to listen on: every listening socket is
 * IPv6-only (so [::] and 0.0.0.0 can both be given), and bind(2) refuses a mapped address on
 * one with a bare EINVAL at start-up. Returns 1 and writes "A.B.C.D:PORT" to use instead. */
static int v4mapped(const struct sockaddr_storage *ss, char *buf, size_t cap)
{
	const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
	char host[INET_ADDRSTRLEN];

	if (ss->ss_family != AF_INET6 || !IN6_IS_ADDR_V4MAPPED(&a->sin6_addr))
		return 0;
	inet_ntop(AF_INET, &a->sin6_addr.s6_addr[12], host, sizeof(host));
	snprintf(buf, cap, "%s:%u", host, ntohs(a->sin6_port));
	return 1;
}

/* Whether ss is already in list[0..n): same family, address and port. SO_REUSEPORT lets the
 * same address be bound twice without an error, and the second socket would only split the
 * clients with the first. Port 0 is never a duplicate: each asks the kernel for a port. */
static int listed_before(const struct sockaddr_storage *list, int n,
                         const struct sockaddr_storage *ss)
{
	for (int i = 0; i < n; i++) {
		const struct sockaddr_storage *o = &list[i];
		if (o->ss_family != ss->ss_family)
			continue;
		if (ss->ss_family == AF_INET) {
			const struct sockaddr_in *a = (const struct sockaddr_in *)o;
			const struct sockaddr_in *b = (const struct sockaddr_in *)ss;
			if (b->sin_port && a->sin_port == b->sin_port &&
			    a->sin_addr.s_addr == b->sin_addr.s_addr)
				return 1;
		} else {
			const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)o;
			const struct sockaddr_in6 *b = (const struct sockaddr_in6 *)ss;
			if (b->sin6_port && a->sin6_port == b->sin6_port &&
			    IN6_ARE_ADDR_EQUAL(&a->sin6_addr, &b->sin6_addr))
				return 1;
		}
	}
	return 0;
}

/* The option getopt_long just refused, as written. Inside a bundle of short options ("-xv")
 * getopt has not moved optind past the bundle, so argv[optind - 1] may be the argument before
 * it: a short option is named by optopt. A long option ("--NAME", never bundled) is the whole
 * argument the call stepped past. */
static void refused_option(char **argv, int optind_before, char *buf, size_t cap)
{
	if (optind > optind_before && strncmp(argv[optind - 1], "--", 2) == 0)
		snprintf(buf, cap, "%s", argv[optind - 1]);
	else if (optopt > ' ' && optopt < 127)
		snprintf(buf, cap, "-%c", optopt);
	else
		snprintf(buf, cap, "-\\x%02x", (unsigned)optopt & 0xff);
}

int config_parse(struct config *cfg, int argc, char **argv, char *err, size_t errlen)
{
	int opt, optind_before;
	char optname[64], cpulist[64], addr[INET6_ADDRSTRLEN + 8];
	long v;

	memset(cfg, 0, sizeof(*cfg));
	cfg->handshake_timeout = 10;
	cfg->relay_mode = RELAY_HYBRID; /* the measured winner: see perf/RESULTS.md */
	cfg->pipes = CONFIG_PIPES_DEFAULT;
	cfg->relay_memory_mib = CONFIG_RELAY_MEMORY_DEFAULT;
	cfg->keepalive_s = CONFIG_KEEPALIVE_DEFAULT;
	cfg->connect_timeout = 10;
	cfg->bind_timeout = 60;
	cfg->udp_idle_timeout = 120;
	opterr = 0;
	/* 0, not 1: glibc then also forgets where it was inside a bundle of short options, which
	 * an earlier call (a test's) that failed mid-bundle would otherwise resume from */
	optind = 0;
	if (argc > 1 && strcmp(argv[1], "tunnel") == 0) {
		cfg->mode = MODE_TUNNEL;
		argv++;
		argc--;
	}

#define FAIL(...)                                                                                  \
	do {                                                                                       \
		snprintf(err, errlen, __VA_ARGS__);                                                \
		return -EINVAL;                                                                    \
	} while (0)

	while ((optind_before = optind),
	       (opt = getopt_long(argc, argv, ":l:L:U:w:vh", long_opts, NULL)) != -1) {
		switch (opt) {
		case 'L':
			if (cfg->mode != MODE_TUNNEL)
				FAIL("-L belongs to 'ringsocks tunnel' (see --help)");
			if (cfg->nlisten == CONFIG_MAX_LISTEN)
				FAIL("too many -L tunnels (at most %d)", CONFIG_MAX_LISTEN);
			if (config_parse_tunnel(optarg, &cfg->listen[cfg->nlisten],
			                        &cfg->listen_len[cfg->nlisten],
			                        &cfg->tunnel_dst[cfg->nlisten]) < 0)
				FAIL("-L: '%s' is not [BIND_ADDR:]PORT:DEST_HOST:DEST_PORT",
				     optarg);
			if (v4mapped(&cfg->listen[cfg->nlisten], addr, sizeof(addr)))
				FAIL("-L: '%s' is an IPv4-mapped address; use %s", optarg, addr);
			if (listed_before(cfg->listen, cfg->nlisten, &cfg->listen[cfg->nlisten]))
				FAIL("-L: '%s' listens where an earlier -L does", optarg);
			cfg->nlisten++;
			break;
		case 'U':
			if (cfg->mode != MODE_TUNNEL)
				FAIL("-U belongs to 'ringsocks tunnel' (see --help)");
			if (cfg->nudp == CONFIG_MAX_LISTEN)
				FAIL("too many -U tunnels (at most %d)", CONFIG_MAX_LISTEN);
			if (config_parse_tunnel(optarg, &cfg->udp_listen[cfg->nudp],
			                        &cfg->udp_listen_len[cfg->nudp],
			                        &cfg->udp_dst[cfg->nudp]) < 0)
				FAIL("-U: '%s' is not [BIND_ADDR:]PORT:DEST_HOST:DEST_PORT",
				     optarg);
			if (v4mapped(&cfg->udp_listen[cfg->nudp], addr, sizeof(addr)))
				FAIL("-U: '%s' is an IPv4-mapped address; use %s", optarg, addr);
			if (listed_before(cfg->udp_listen, cfg->nudp, &cfg->udp_listen[cfg->nudp]))
				FAIL("-U: '%s' listens where an earlier -U does", optarg);
			cfg->nudp++;
			break;
		case OPT_UPSTREAM:
		case OPT_VIA:
			if ((opt == OPT_VIA) != (cfg->mode == MODE_TUNNEL))
				FAIL("%s belongs to %s (see --help)",
				     opt == OPT_VIA ? "--via" : "--upstream",
				     opt == OPT_VIA ? "'ringsocks tunnel'" : "server mode");
			if (cfg->nupstreams == CONFIG_MAX_UPSTREAMS)
				FAIL("too many upstream proxies (at most %d)",
				     CONFIG_MAX_UPSTREAMS);
			if (config_parse_upstream(optarg, &cfg->upstreams[cfg->nupstreams]) < 0)
				FAIL("%s: '%s' is not socks5://[USER:PASS@]HOST:PORT",
				     opt == OPT_VIA ? "--via" : "--upstream", optarg);
			cfg->nupstreams++;
			break;
		case OPT_UPSTREAM_FILE:
		case OPT_VIA_FILE:
			if ((opt == OPT_VIA_FILE) != (cfg->mode == MODE_TUNNEL))
				FAIL("%s belongs to %s (see --help)",
				     opt == OPT_VIA_FILE ? "--via-file" : "--upstream-file",
				     opt == OPT_VIA_FILE ? "'ringsocks tunnel'" : "server mode");
			if (read_cred_file(cfg,
			                   opt == OPT_VIA_FILE ? "--via-file" : "--upstream-file",
			                   optarg, "socks5:// URL",
			                   opt == OPT_VIA_FILE ? via_file_line : upstream_file_line,
			                   err, errlen) < 0)
				return -EINVAL;
			break;
		case 'l':
			if (cfg->mode == MODE_TUNNEL)
				FAIL("a tunnel listens where -L says; -l is for server mode");
			if (cfg->nlisten == CONFIG_MAX_LISTEN)
				FAIL("too many --listen addresses (at most %d)", CONFIG_MAX_LISTEN);
			if (config_parse_hostport(optarg, &cfg->listen[cfg->nlisten],
			                          &cfg->listen_len[cfg->nlisten]) < 0)
				FAIL("--listen: '%s' is not ADDR:PORT (IPv6 as [ADDR]:PORT)",
				     optarg);
			if (v4mapped(&cfg->listen[cfg->nlisten], addr, sizeof(addr)))
				FAIL("--listen: '%s' is an IPv4-mapped address; use %s", optarg,
				     addr);
			if (listed_before(cfg->listen, cfg->nlisten, &cfg->listen[cfg->nlisten]))
				FAIL("--listen: '%s' is given twice", optarg);
			cfg->nlisten++;
			break;
		case 'w':
			if (parse_long(optarg, 1, 1024, &v) < 0)
				FAIL("--workers: '%s' is not a number from 1 to 1024", optarg);
			cfg->workers = (int)v;
			break;
		case OPT_CPUS:
			if (parse_cpus(optarg, cfg) < 0)
				FAIL("--cpus: '%s' is not a CPU list like 0,1 or 0-3", optarg);
			if ((v = cpus_not_allowed(cfg, cpulist, sizeof(cpulist))) >= 0)
				FAIL("--cpus: CPU %ld is not one this process may run on (allowed: "
				     "%s)",
				     v, cpulist);
			break;
		case OPT_USER:
			if (cfg->mode == MODE_TUNNEL)
				FAIL("--user is for server mode; a tunnel's proxy credentials go "
				     "in --via");
			if (add_user(cfg, optarg) < 0)
				FAIL("--user: '%s' is not NAME:PASS (name 1-255 bytes, password at "
				     "most 255)",
				     optarg);
			break;
		case OPT_USERS_FILE:
			if (cfg->mode == MODE_TUNNEL)
				FAIL(
				    "--users-file is for server mode; a tunnel's proxy credentials "
				    "go in --via");
			if (read_cred_file(cfg, "--users-file", optarg, "NAME:PASS",
			                   users_file_line, err, errlen) < 0)
				return -EINVAL;
			break;
		case OPT_RESOLVER:
			if (set_resolver(cfg, optarg) < 0)
				FAIL("--resolver: '%s' is not IP:PORT", optarg);
			break;
		case OPT_HS_TIMEOUT:
			/* a tunnel's own handshake with --via counts against --connect-timeout */
			if (cfg->mode == MODE_TUNNEL)
				FAIL("--handshake-timeout is for server mode: a tunnel's clients "
				     "send no SOCKS5 handshake (see --help)");
			if (parse_seconds(optarg, &cfg->handshake_timeout) < 0)
				FAIL("--handshake-timeout: '%s' " TIMEOUT_BAD_MSG, optarg);
			break;
		case OPT_CONN_TIMEOUT:
			if (parse_seconds(optarg, &cfg->connect_timeout) < 0)
				FAIL("--connect-timeout: '%s' " TIMEOUT_BAD_MSG, optarg);
			break;
		case OPT_BIND_TIMEOUT:
			if (cfg->mode == MODE_TUNNEL)
				FAIL("--bind-timeout is for server mode: a tunnel serves no BIND "
				     "(see --help)");
			if (parse_seconds(optarg, &cfg->bind_timeout) < 0)
				FAIL("--bind-timeout: '%s' " TIMEOUT_BAD_MSG, optarg);
			break;
		case OPT_UDP_IDLE:
			if (parse_seconds(optarg, &cfg->udp_idle_timeout) < 0)
				FAIL("--udp-idle-timeout: '%s' " TIMEOUT_BAD_MSG, optarg);
			break;
		case OPT_BIND_PORTS:
			if (cfg->mode == MODE_TUNNEL)
				FAIL("--bind-ports is for server mode: a tunnel serves no BIND "
				     "(see --help)");
			if (parse_port_range(optarg, cfg) < 0)
				FAIL("--bind-ports: '%s' is not LOW-HIGH (ports 1-65535)", optarg);
			break;
		case OPT_KEEPALIVE:
			/* TCP_KEEPIDLE takes at most 32767 */
			if (parse_long(optarg, 0, 32767, &v) < 0)
				FAIL("--keepalive: '%s' is not a number of seconds from 0 to 32767",
				     optarg);
			cfg->keepalive_s = (int)v;
			break;
		case OPT_MAX_CONNS:
			if (parse_long(optarg, 1, 100000000, &v) < 0)
				FAIL("--max-conns: '%s' is not a positive number", optarg);
			cfg->max_conns = v;
			break;
		case OPT_RELAY:
			if (strcmp(optarg, "splice") == 0)
				cfg->relay_mode = RELAY_SPLICE;
			else if (strcmp(optarg, "splice-sqe") == 0)
				cfg->relay_mode = RELAY_SPLICE_SQE;
			else if (strcmp(optarg, "copy") == 0)
				cfg->relay_mode = RELAY_COPY;
			else if (strcmp(optarg, "hybrid") == 0)
				cfg->relay_mode = RELAY_HYBRID;
			else
				FAIL("--relay: '%s' is not splice, splice-sqe, copy or hybrid",
				     optarg);
			break;
		case OPT_PIPES:
			if (parse_long(optarg, 0, 65536, &v) < 0)
				FAIL("--pipes: '%s' is not a number from 0 to 65536", optarg);
			cfg->pipes = (uint32_t)v;
			break;
		case OPT_RELAY_MEMORY:
			if (parse_long(optarg, 1, 65536, &v) < 0)
				FAIL("--relay-memory: '%s' is not a number of MiB from 1 to 65536",
				     optarg);
			cfg->relay_memory_mib = (uint32_t)v;
			break;
		case OPT_CONGESTION: {
			size_t n = strlen(optarg);
			cfg->congestion_system = strcmp(optarg, "system") == 0;
			cfg->congestion[0] = 0;
			if (cfg->congestion_system || strcmp(optarg, "auto") == 0)
				break;
			if (n == 0 || n >= sizeof(cfg->congestion) ||
			    strspn(optarg, "abcdefghijklmnopqrstuvwxyz0123456789_-") != n)
				FAIL("--congestion: '%s' is not an algorithm name (such as cubic)",
				     optarg);
			memcpy(cfg->congestion, optarg, n + 1);
			break;
		}
		case 'v':
			cfg->verbose = 1;
			break;
		case 'h':
			fputs(usage, stdout);
			return 1;
		case OPT_VERSION:
			printf("ringsocks %s\n", RINGSOCKS_VERSION);
			return 1;
		case ':':
			refused_option(argv, optind_before, optname, sizeof(optname));
			FAIL("option '%s' needs a value (see --help)", optname);
		default:
			refused_option(argv, optind_before, optname, sizeof(optname));
			FAIL("unknown option '%s' (see --help)", optname);
		}
	}
	if (optind < argc)
		FAIL("unexpected argument '%s' (see --help)", argv[optind]);
	if (cfg->mode == MODE_TUNNEL && cfg->nlisten == 0 && cfg->nudp == 0)
		FAIL("tunnel needs at least one -L or -U [BIND_ADDR:]PORT:DEST_HOST:DEST_PORT");
	if (cfg->mode == MODE_TUNNEL && cfg->nupstreams == 0)
		FAIL("tunnel needs --via socks5://[USER:PASS@]HOST:PORT or --via-file PATH");
	if (cfg->nlisten == 0 && cfg->mode != MODE_TUNNEL)
		config_parse_hostport(DEFAULT_LISTEN, &cfg->listen[0], &cfg->listen_len[0]),
		    cfg->nlisten = 1;
	if (cfg->workers == 0)
		cfg->workers = cfg->ncpus ? cfg->ncpus : (int)sysconf(_SC_NPROCESSORS_ONLN);
	if (cfg->workers < 1)
		cfg->workers = 1;
	if (cfg->ncpus && cfg->ncpus < cfg->workers)
		FAIL("--cpus lists %d CPUs for %d workers", cfg->ncpus, cfg->workers);
#undef FAIL
	return 0;
}

void config_free(struct config *cfg)
{
	free(cfg->users);
	cfg->users = NULL;
	cfg->nusers = 0;
}

/* Compare without an early exit so the time does not tell how much of a secret matched. */
static int ct_equal(const char *a, size_t alen, const char *b, size_t blen)
{
	unsigned diff = (unsigned)(alen ^ blen);
	for (size_t i = 0; i < alen && i < blen; i++)
		diff |= (unsigned char)a[i] ^ (unsigned char)b[i];
	return diff == 0;
}

int config_check_user(const struct config *cfg, const char *user, size_t ulen, const char *pass,
                      size_t plen)
{
	int ok = 0;
	for (int i = 0; i < cfg->nusers; i++) {
		const struct config_user *u = &cfg->users[i];
		ok |= ct_equal(u->name, u->name_len, user, ulen) &
		      ct_equal(u->pass, u->pass_len, pass, plen);
	}
	return ok;
}
