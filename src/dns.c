/* dns.c - c-ares on the ring: the channel's sockets are watched by POLL_ADD SQEs on the
 * worker's ring (ARES_OPT_SOCK_STATE_CB), ares_process_fd runs on their CQEs, and the
 * worker loop drives ares_timeout. No call here blocks. Answers are cached per worker. */
#include "dns.h"

#include <ares.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>

#include "conn.h"
#include "log.h"
#include "worker.h"

#define DNS_WATCH_MAX     64
#define DNS_CACHE_SIZE    256 /* direct-mapped entries */
#define DNS_CACHE_MAX_TTL 300

struct dns_watch {
	int fd; /* -1: entry unused */
	uint8_t read, write;
	uint8_t armed; /* the events of the poll in flight (POLLIN, POLLOUT), 0: none */
	uint8_t dead;  /* c-ares dropped the socket; free when the poll ends */
	uint32_t gen;
};

struct dns_cache_entry {
	uint64_t expires_ms; /* 0: empty */
	uint8_t n;
	uint8_t len;
	char name[SOCKS5_MAX_NAME + 1];
	struct sockaddr_in6 addrs[CONN_MAX_ADDRS];
};

struct dns {
	struct worker *w;
	ares_channel ch;
	struct dns_watch watch[DNS_WATCH_MAX];
	struct dns_cache_entry *cache;
};

struct dns_query {
	struct dns *d;
	uint64_t ud;
	uint16_t port;
	uint8_t len;
	char name[SOCKS5_MAX_NAME + 1];
};

static void watch_arm(struct dns *d, uint32_t i)
{
	struct dns_watch *wt = &d->watch[i];
	struct io_uring_sqe *sqe;
	unsigned mask = (wt->read ? POLLIN : 0) | (wt->write ? POLLOUT : 0);
	uint64_t ud = conn_ud(OP_DNS_POLL, wt->gen, i);

	if (wt->armed == mask || wt->dead || !mask)
		return;
	sqe = worker_sqe(d->w);
	if (wt->armed) {
		/* c-ares wants other events than the poll in flight waits for: a TCP socket
		 * (an answer with TC set is asked again over TCP) is watched for reading
		 * when it opens, and for writing too once the query waits to go out. The
		 * poll kept waiting for POLLIN alone, the query was never written, and the
		 * name failed at the timeout. Change its events in place; a poll that ended
		 * meanwhile is not found, and dns_poll_event arms a new one. */
		io_uring_prep_poll_update(sqe, ud, 0, mask, IORING_POLL_UPDATE_EVENTS);
		sqe->user_data = conn_ud(OP_IGNORE, 0, 0);
	} else {
		io_uring_prep_poll_add(sqe, wt->fd, mask);
		sqe->user_data = ud;
	}
	wt->armed = (uint8_t)mask;
}

static void sock_state_cb(void *data, ares_socket_t fd, int readable, int writable)
{
	struct dns *d = data;
	int free_i = -1;

	for (int i = 0; i < DNS_WATCH_MAX; i++) {
		struct dns_watch *wt = &d->watch[i];
		if (wt->fd == fd && !wt->dead) {
			wt->read = (uint8_t)readable;
			wt->write = (uint8_t)writable;
			if (!readable && !writable) {
				/* c-ares closes the socket next; the pending poll ends with it */
				if (wt->armed) {
					struct io_uring_sqe *sqe = worker_sqe(d->w);
					io_uring_prep_poll_remove(sqe,
					                          conn_ud(OP_DNS_POLL, wt->gen, i));
					sqe->user_data = conn_ud(OP_IGNORE, 0, 0);
					wt->dead = 1;
				} else {
					wt->fd = -1;
				}
				return;
			}
			watch_arm(d, (uint32_t)i);
			return;
		}
		if (wt->fd < 0 && free_i < 0)
			free_i = i;
	}
	if (!readable && !writable)
		return;
	if (free_i < 0) {
		log_err("resolver: more than %d sockets at once", DNS_WATCH_MAX);
		return;
	}
	struct dns_watch *wt = &d->watch[free_i];
	wt->fd = fd;
	wt->read = (uint8_t)readable;
	wt->write = (uint8_t)writable;
	wt->armed = wt->dead = 0;
	wt->gen = conn_gen_next(wt->gen); /* as conn_ud keeps it: 24 bits */
	watch_arm(d, (uint32_t)free_i);
}

int dns_init(struct worker *w, struct dns **out)
{
	struct ares_options opts;
	struct dns *d;
	int rc;

	d = calloc(1, sizeof(*d));
	if (!d)
		return -ENOMEM;
	d->cache = calloc(DNS_CACHE_SIZE, sizeof(*d->cache));
	if (!d->cache) {
		free(d);
		return -ENOMEM;
	}
	d->w = w;
	for (int i = 0; i < DNS_WATCH_MAX; i++)
		d->watch[i].fd = -1;
	memset(&opts, 0, sizeof(opts));
	opts.sock_state_cb = sock_state_cb;
	opts.sock_state_cb_data = d;
	opts.timeout = 2000; /* ms per try with ARES_OPT_TIMEOUTMS */
	opts.tries = 2;
	rc = ares_init_options(&d->ch, &opts,
	                       ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES);
	if (rc != ARES_SUCCESS) {
		log_err("resolver: ares_init_options: %s", ares_strerror(rc));
		free(d->cache);
		free(d);
		return -EIO;
	}
	if (w->cfg->resolver[0]) {
		rc = ares_set_servers_ports_csv(d->ch, w->cfg->resolver);
		if (rc != ARES_SUCCESS) {
			log_err("resolver: cannot use %s: %s", w->cfg->resolver, ares_strerror(rc));
			ares_destroy(d->ch);
			free(d->cache);
			free(d);
			return -EINVAL;
		}
	}
	*out = d;
	return 0;
}

void dns_destroy(struct dns *d)
{
	if (!d)
		return;
	ares_destroy(d->ch); /* pending queries end with ARES_EDESTRUCTION */
	free(d->cache);
	free(d);
}

static uint32_t name_hash(const char *s, size_t n)
{
	uint32_t h = 2166136261u;
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)s[i];
		if (ch >= 'A' && ch <= 'Z')
			ch = (unsigned char)(ch + 32);
		h = (h ^ ch) * 16777619u;
	}
	return h;
}

static struct dns_cache_entry *cache_slot(struct dns *d, const char *name, size_t len)
{
	return &d->cache[name_hash(name, len) % DNS_CACHE_SIZE];
}

static void set_port(struct sockaddr_in6 *a, int n, uint16_t port)
{
	for (int i = 0; i < n; i++)
		a[i].sin6_port = htons(port); /* sin_port sits at the same offset */
}

/* c-ares (1.18) ends a query as ARES_ECONNREFUSED, "Could not contact DNS servers", also when
 * every server answered, each with SERVFAIL or REFUSED: it moves on to the next server on such
 * an answer and keeps that status. Said as it is, an operator looked for a network fault. */
static const char *status_str(int status)
{
	if (status == ARES_ECONNREFUSED)
		return "no usable answer from the DNS servers (none reached, or each answered "
		       "SERVFAIL or REFUSED)";
	return ares_strerror(status);
}
static void query_done(void *arg, int status, int timeouts, struct ares_addrinfo *res)
{
	struct dns_query *q = arg;
	struct dns *d = q->d;
	struct sockaddr_in6 addrs[CONN_MAX_ADDRS];
	int n = 0, ttl = DNS_CACHE_MAX_TTL;

	(void)timeouts;
	if (status == ARES_SUCCESS && res) {
		for (struct ares_addrinfo_node *ai = res->nodes; ai && n < CONN_MAX_ADDRS;
		     ai = ai->ai_next) {
			if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
				continue;
			if (ai->ai_addrlen > sizeof(addrs[0]))
				continue;
			memset(&addrs[n], 0, sizeof(addrs[n]));
			memcpy(&addrs[n], ai->ai_addr, ai->ai_addrlen);
			if (ai->ai_ttl < ttl)
				ttl = ai->ai_ttl;
			n++;
		}
		/* an alias is good only as long as its own TTL: the chain's least counts */
		for (struct ares_addrinfo_cname *cn = res->cnames; cn; cn = cn->next)
			if (cn->ttl < ttl)
				ttl = cn->ttl;
	}
	if (res)
		ares_freeaddrinfo(res);
	if (status == ARES_EDESTRUCTION || atomic_load(&d->w->stop)) {
		free(q);
		return;
	}
	if (n > 0 && ttl > 0) {
		struct dns_cache_entry *e = cache_slot(d, q->name, q->len);
		e->expires_ms = d->w->now_ms + (uint64_t)ttl * 1000;
		e->len = q->len;
		memcpy(e->name, q->name, q->len);
		e->n = (uint8_t)n;
		memcpy(e->addrs, addrs, sizeof(addrs[0]) * (size_t)n);
	}
	set_port(addrs, n, q->port);
	if (n == 0 && status == ARES_SUCCESS)
		status = ARES_ENODATA;
	if (n == 0 && (status == ARES_ETIMEOUT || status == ARES_ECONNREFUSED ||
	               status == ARES_ESERVFAIL || status == ARES_EREFUSED))
		/* the resolver, not the name: every name fails, and -v may be off */
		log_warn_limited("resolver: no answer for %s: %s", q->name, status_str(status));
	else if (n == 0)
		log_info("resolve %s: %s", q->name, status_str(status));
	worker_resolved(d->w, q->ud, n > 0 ? 0 : -ENOENT, addrs, n);
	free(q);
}

void dns_resolve(struct dns *d, const char *name, uint16_t port, uint64_t ud)
{
	size_t len = strlen(name);
	struct dns_cache_entry *e = cache_slot(d, name, len);
	struct ares_addrinfo_hints hints;
	struct dns_query *q;

	if (e->expires_ms > d->w->now_ms && e->len == len && strncasecmp(e->name, name, len) == 0) {
		struct sockaddr_in6 addrs[CONN_MAX_ADDRS];
		memcpy(addrs, e->addrs, sizeof(addrs[0]) * e->n);
		set_port(addrs, e->n, port);
		worker_resolved(d->w, ud, 0, addrs, e->n);
		return;
	}
	/* one small allocation per query (not per connection): c-ares allocates per query too */
	q = malloc(sizeof(*q));
	if (!q) {
		worker_resolved(d->w, ud, -ENOMEM, NULL, 0);
		return;
	}
	q->d = d;
	q->ud = ud;
	q->port = port;
	q->len = (uint8_t)len;
	memcpy(q->name, name, len + 1);
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	ares_getaddrinfo(d->ch, name, NULL, &hints, query_done, q);
}

void dns_poll_event(struct dns *d, uint32_t idx, uint32_t gen, int res)
{
	struct dns_watch *wt;
	ares_socket_t rfd = ARES_SOCKET_BAD, wfd = ARES_SOCKET_BAD;

	if (idx >= DNS_WATCH_MAX)
		return;
	wt = &d->watch[idx];
	if (wt->gen != gen)
		return;
	wt->armed = 0;
	if (wt->dead) {
		wt->fd = -1;
		wt->dead = 0;
		return;
	}
	if (wt->fd < 0 || res == -ECANCELED)
		return;
	if (res < 0 || (res & (POLLIN | POLLERR | POLLHUP)))
		rfd = wt->fd;
	if (res > 0 && (res & POLLOUT))
		wfd = wt->fd;
	ares_process_fd(d->ch, rfd, wfd);
	/* the socket may have been dropped or re-armed by the state callback meanwhile */
	if (wt->gen == gen && wt->fd >= 0)
		watch_arm(d, idx);
}

uint64_t dns_tick(struct dns *d, uint64_t now_ms)
{
	struct timeval tv, *tvp;

	tvp = ares_timeout(d->ch, NULL, &tv);
	if (!tvp)
		return UINT64_MAX;
	if (tvp->tv_sec == 0 && tvp->tv_usec == 0) {
		ares_process_fd(d->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
		tvp = ares_timeout(d->ch, NULL, &tv);
		if (!tvp)
			return UINT64_MAX;
	}
	return now_ms + (uint64_t)tvp->tv_sec * 1000 + (uint64_t)(tvp->tv_usec + 999) / 1000;
}
