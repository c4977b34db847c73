/* udp.h - UDP ASSOCIATE on the worker's ring: direct mode (decapsulate, send, encapsulate the
 * answers), forwarder mode (datagrams as-is to and from the upstream's relay) and tunnel -U
 * (a local UDP port whose datagrams go through the proxy to one destination). */
#ifndef RINGSOCKS_UDP_H
#define RINGSOCKS_UDP_H

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>

#define UDP_BGID          9           /* buffer group of the datagram ring (the relay's is 7) */
#define UDP_BUF_COUNT     256         /* datagram buffers per worker (a power of two) */
#define UDP_BUF_SIZE      (68u << 10) /* header, sender address, headroom and 64 KiB of data */
#define UDP_HEADROOM      264         /* room in front of the data for a SOCKS5 UDP header */
#define UDP_MAX_WAITING   4           /* datagrams per association waiting for a name */
#define UDP_MAX_HELD      (UDP_BUF_COUNT / 4) /* ... and per worker, all associations */
#define UDP_MAX_CONTACTED 16 /* destinations per association whose answers come back */

struct worker;
struct conn;
struct upstream_hs;

/* Set up the worker's datagram buffer ring, per-slot association state and tunnel -U ports.
 * Returns 0 or -errno; a kernel without provided-buffer rings only disables UDP ASSOCIATE. */
int udp_init(struct worker *w, uint32_t slots);
void udp_destroy(struct worker *w);
/* Can this worker serve UDP ASSOCIATE? */
int udp_supported(const struct worker *w);
/* Datagram buffers out of the ring (being sent or waiting), for the stats line: 0 when idle. */
uint32_t udp_bufs_lent(const struct worker *w);

/* Direct mode: open the association for c's UDP ASSOCIATE and send the reply. */
void udp_start(struct worker *w, struct conn *c);
/* Forwarder and tunnel -U: the upstream answered our UDP ASSOCIATE with success (u->cli). */
void udp_upstream_ready(struct worker *w, struct conn *c, struct upstream_hs *u);
/* The resolver's answer for the name the upstream gave its UDP relay (udp_upstream_ready). */
void udp_relay_resolved(struct worker *w, struct conn *c, int status,
                        const struct sockaddr_in6 *addrs, int n);
/* Is c a tunnel -U session? */
int udp_is_tunnel(const struct worker *w, const struct conn *c);

/* CQEs: a recvmsg of an association (any state: the buffer goes back), a datagram send, a
 * recvmsg on a tunnel -U port (idx: its number). */
void udp_on_recv(struct worker *w, struct conn *c, int op, int res, unsigned flags);
void udp_send_done(struct worker *w, uint64_t ud, int res);
void udp_local_event(struct worker *w, uint32_t idx, int res, unsigned flags);

/* The resolver's answer for the name of a waiting datagram. */
void udp_resolved(struct worker *w, uint64_t ud, int status, const struct sockaddr_in6 *addrs,
                  int n);

/* c is closing: close the association's sockets, give back its waiting datagrams. */
void udp_release(struct worker *w, struct conn *c);
/* " udp_in=N udp_out=N udp_dropped=N" for the session log line of an association, else "". */
void udp_log_counters(const struct worker *w, const struct conn *c, char *buf, size_t cap);

#endif
