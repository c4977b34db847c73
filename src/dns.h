/* dns.h - asynchronous name resolution on the worker's ring (c-ares), with a small
 * per-worker cache that honours TTLs. */
#ifndef RINGSOCKS_DNS_H
#define RINGSOCKS_DNS_H

#include <stdint.h>

struct worker;
struct dns;

/* Create the worker's resolver (uses w->cfg->resolver when set). Returns 0 or -errno. */
int dns_init(struct worker *w, struct dns **out);
void dns_destroy(struct dns *d);

/* Resolve name; the answer comes back through worker_resolved(w, ud, ...), possibly
 * before this returns (cache hit). */
void dns_resolve(struct dns *d, const char *name, uint16_t port, uint64_t ud);

/* A poll CQE for one of the resolver's sockets. */
void dns_poll_event(struct dns *d, uint32_t idx, uint32_t gen, int res);

/* Drive c-ares timeouts; returns the next deadline in ms (UINT64_MAX: none). */
uint64_t dns_tick(struct dns *d, uint64_t now_ms);

#endif
