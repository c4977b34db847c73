/* bind.h - the BIND command in direct mode: listen, first reply, accept one peer from DST.ADDR,
 * second reply, then the relay. (Forwarder mode sends BIND upstream unchanged: upstream.c.) */
#ifndef RINGSOCKS_BIND_H
#define RINGSOCKS_BIND_H

#define BIND_BACKLOG    8  /* peers from the wrong address queue here until closed */
#define BIND_PORT_TRIES 64 /* ports of --bind-ports one BIND tries at most */

struct worker;
struct conn;

/* The request is a BIND (direct mode): resolve DST.ADDR if it is a name, then bind_listen. */
void bind_start(struct worker *w, struct conn *c);
/* c->addrs[0..naddrs) hold DST.ADDR: open the listening socket and send the first reply. */
void bind_listen(struct worker *w, struct conn *c);
/* The first reply is out: start accepting. */
void bind_sent(struct worker *w, struct conn *c);
/* The accept CQE, in any state (an unwanted socket is closed). */
void bind_on_accept(struct worker *w, struct conn *c, int res);
/* --bind-timeout passed without a peer: reply 6. */
void bind_timeout(struct worker *w, struct conn *c);

#endif
