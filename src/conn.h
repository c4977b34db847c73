/* conn.h - the per-worker connection table: fixed slots, a LIFO free list, generations,
 * the user_data encoding of every SQE, and FIFO deadline lists. No I/O here. */
#ifndef RINGSOCKS_CONN_H
#define RINGSOCKS_CONN_H

#include <netinet/in.h>
#include <stdint.h>

#include "ringsocks/socks5.h"

#define CONN_RBUF      512 /* handshake receive buffer; also holds early data */
#define CONN_TXBUF     288 /* handshake replies: method + auth status + reply (<= 266) */
#define CONN_MAX_ADDRS 8   /* resolved addresses tried in turn */

/* Operation kinds, encoded in the top byte of user_data. */
enum conn_op {
	OP_NONE = 0,
	OP_ACCEPT,    /* idx: listener number */
	OP_WAKE,      /* the worker's eventfd */
	OP_DNS_POLL,  /* idx: dns watch slot */
	OP_IGNORE,    /* cancel requests: their CQEs carry nothing we need */
	OP_RECV,      /* handshake / linger recv from the client */
	OP_SEND,      /* handshake send to the client */
	OP_CONNECT,   /* connect to the destination */
	OP_SEND_T,    /* early data to the destination */
	OP_POLLIN_C,  /* relay: client readable (multishot poll; multishot recv when copying) */
	OP_POLLIN_T,  /* relay: target readable (likewise) */
	OP_POLLOUT_C, /* relay: client writable (one-shot poll; the send when copying) */
	OP_POLLOUT_T, /* relay: target writable (likewise) */
	OP_RECV_T,    /* upstream handshake: recv from the upstream proxy */
	OP_SPLIN_C,   /* relay (splice-sqe): splice client -> pipe */
	OP_SPLIN_T,   /* relay (splice-sqe): splice target -> pipe */
	OP_SPLOUT_T,  /* relay (splice-sqe): splice pipe -> target */
	OP_SPLOUT_C,  /* relay (splice-sqe): splice pipe -> client */

	/* BIND (bind.c) and UDP ASSOCIATE (udp.c) */
	OP_BIND_ACCEPT, /* BIND: accept on the slot's listening socket */
	OP_WATCH_C,     /* BIND wait / UDP association: POLLRDHUP on the client (one-shot); relay:
	                 * a reset of the client after its EOF */
	OP_WATCH_T,     /* UDP association via an upstream: POLLRDHUP on its control connection;
	                 * relay: a reset of the target after its EOF */
	OP_UDP_RECV_C,  /* UDP: multishot recvmsg on the client-facing socket */
	OP_UDP_RECV_4,  /* UDP: multishot recvmsg on the IPv4 socket toward destinations */
	OP_UDP_RECV_6,  /* UDP: multishot recvmsg on the IPv6 socket toward destinations */
	OP_UDP_SEND,    /* UDP: a datagram send; idx: buffer id, not a slot (never pending) */
	OP_UDP_LOCAL,   /* tunnel -U: multishot recvmsg on a local port; idx: its number */
	OP__COUNT
};
#define CONN_OP_BIT(op) (1u << (op))
/* splice SQEs (--relay splice-sqe): io_uring runs them in io-wq, which looks their
 * descriptors up only when it runs them, after the SQEs behind them in the batch */
#define CONN_SPLICE_OPS                                                                            \
	(CONN_OP_BIT(OP_SPLIN_C) | CONN_OP_BIT(OP_SPLIN_T) | CONN_OP_BIT(OP_SPLOUT_T) |            \
	 CONN_OP_BIT(OP_SPLOUT_C))
_Static_assert(OP__COUNT <= 32, "pending is a 32-bit mask");

/* user_data keeps 24 bits of a generation: whatever a completion's generation is compared
 * with (a slot's, a DNS watch's) counts in those 24 bits, or it stops matching at 2^24 */
#define CONN_GEN_MASK 0xFFFFFFu

static inline uint64_t conn_ud(enum conn_op op, uint32_t gen, uint32_t idx)
{
	return ((uint64_t)op << 56) | ((uint64_t)(gen & CONN_GEN_MASK) << 32) | idx;
}
/* The generation after gen, wrapping as user_data does. */
static inline uint32_t conn_gen_next(uint32_t gen)
{
	return (gen + 1) & CONN_GEN_MASK;
}
static inline enum conn_op conn_ud_op(uint64_t ud)
{
	return (enum conn_op)(ud >> 56);
}
static inline uint32_t conn_ud_gen(uint64_t ud)
{
	return (uint32_t)(ud >> 32) & CONN_GEN_MASK;
}
static inline uint32_t conn_ud_idx(uint64_t ud)
{
	return (uint32_t)ud;
}

enum conn_state {
	CONN_FREE = 0,
	CONN_HANDSHAKE,    /* greeting, auth, request */
	CONN_RESOLVING,    /* waiting for the resolver */
	CONN_CONNECTING,   /* connect in flight (to the destination or an upstream proxy) */
	CONN_UP_HANDSHAKE, /* client handshake with an upstream proxy */
	CONN_UP_RETRY,     /* an upstream failed; waiting for its requests to end */
	CONN_REPLYING,     /* success reply (and early data) being sent */
	CONN_RELAY,        /* bytes flow both ways */
	CONN_LINGER,       /* error reply sent, write side shut; draining until the client closes */
	CONN_CLOSING,      /* sockets closed; waiting for in-flight operations to end */
	CONN_BIND_WAIT,    /* BIND: first reply sent, waiting for the peer to connect */
	CONN_UDP,          /* UDP ASSOCIATE: datagrams flow while the control connection lives */
	CONN_CONNECT_NEXT, /* an address took too long: its connect is cancelled, the next follows
	                    */
};

/* How the destination is reached. */
enum conn_via { VIA_DIRECT = 0, VIA_UPSTREAM, VIA_TUNNEL };

enum timer_kind {
	TIMER_NONE = 0,
	TIMER_HANDSHAKE,
	TIMER_CONNECT,
	TIMER_LINGER,
	TIMER_BIND,        /* --bind-timeout */
	TIMER_UDP_IDLE,    /* --udp-idle-timeout */
	TIMER_HALF_CLOSED, /* relay: one direction finished a while ago (relay_watch_finished) */
	/* --connect-timeout in two parts: the connect phase's first CONNECT_WATCH_MS, after
	 * which the client is watched for a reset (worker_connect_deadline), then the rest */
	TIMER_CONNECT_WATCH,
	TIMER_CONNECT_REST,
	TIMER__COUNT
};

/* The op byte of a dns_resolve user_data for a UDP datagram's name (never an SQE's). */
#define CONN_RESOLVE_UDP 0xF0
/* ... and for the name an upstream gave its UDP relay: this bit | the upstream attempt
 * (up_tries, at most CONFIG_MAX_UPSTREAMS), so a late answer for an earlier attempt is not
 * applied to a later one. */
#define CONN_RESOLVE_RELAY 0x80

/* One relay direction: client->target (DIR_UP) or target->client (DIR_DOWN). */
enum { DIR_UP = 0, DIR_DOWN = 1 };
#define DIR_EOF        0x1    /* source reached EOF */
#define DIR_SHUT       0x2    /* EOF propagated: shutdown(SHUT_WR) done on the destination */
#define DIR_SWITCHING  0x4    /* hybrid: leaving copy for splice; the recv has not ended yet */
#define DIR_QUEUED     0x8    /* on the worker's runnable list */
#define DIR_COPY       0x10   /* copying through buffers (not splicing) */
#define DIR_PAUSED     0x20   /* copy: reading stopped while too much waits to be sent */
#define DIR_STARVED    0x40   /* copy: reading stopped for want of buffers */
#define DIR_READABLE   0x80   /* splice-sqe: readiness seen while a splice was in flight */
#define DIR_POLLOUT    0x100  /* the out op in flight is a POLLOUT poll, not a send */
#define DIR_LARGE_READ 0x200  /* hybrid: the last read was large */
#define DIR_SEND_DUE   0x400  /* copy: a send starts after this batch of completions */
#define DIR_LISTED     0x800  /* copy: has an entry on the worker's starved ring */
#define DIR_SLOW       0x1000 /* hybrid: paused once; reads a buffer at a time from then on */
#define DIR_URGENT     0x2000 /* splicing: POLLPRI, TCP urgent data has come (at_urgent_mark) */

struct relay_chunk;

struct relay_dir {
	struct relay_chunk *qhead, *qtail; /* copy: what waits to be sent, NULL when nothing */
	uint64_t bytes;                    /* bytes delivered to the destination */
	int32_t pipe;    /* index in the worker's pipe pool, -1 when none is lent */
	uint32_t inpipe; /* bytes sitting in the pipe */
	uint32_t qoff;   /* copy: bytes of the head chunk already sent */
	uint32_t qbytes; /* copy: bytes queued */
	uint16_t flags;  /* DIR_* */
	uint16_t nring;  /* copy: ring buffers in the queue */
};

struct conn {
	uint32_t gen;
	uint8_t state;  /* enum conn_state */
	uint8_t timer;  /* enum timer_kind: the deadline list it is on */
	uint8_t result; /* reply code sent, or 0xFF when none was */
	uint8_t naddrs; /* resolved candidates */
	uint8_t addr_i; /* candidate being tried */
	uint8_t closing_after_send;
	uint8_t via;      /* enum conn_via */
	uint8_t listener; /* listen address index (tunnel destination) */
	uint8_t up_i;     /* upstream being tried */
	uint8_t up_tries; /* upstreams tried for this client */
	uint32_t pending; /* CONN_OP_BIT of every operation in flight */
	int cfd, tfd;     /* client and target sockets, -1 when closed */
	uint16_t rx_len;  /* bytes in rbuf */
	uint16_t tx_len, tx_off;
	const uint8_t *tx_base; /* what tx_len/tx_off index: txbuf, or the upstream's reply */
	uint16_t early_len;     /* early data (after the request) at the start of rbuf */
	int last_err;           /* errno of the last connect attempt */
	const char *fail_why;   /* why the request was refused (a string literal), or NULL */
	uint32_t tprev, tnext;  /* deadline list links (slot indices, UINT32_MAX: none) */
	uint32_t qnext;         /* runnable list link */
	uint64_t deadline_ms;
	/* the connect step: one of several addresses has a share of --connect-timeout (its own
	 * list, beside TIMER_CONNECT, which keeps the whole deadline) */
	uint64_t step_ms;
	uint32_t sprev, snext;
	uint8_t on_step;
	uint64_t start_ms;
	struct relay_dir dir[2];
	struct sockaddr_in6 addrs[CONN_MAX_ADDRS]; /* big enough for sockaddr_in too */
	struct sockaddr_in6 peer;                  /* the client, recorded at -v only */
	struct socks5_server hs;
	uint8_t rbuf[CONN_RBUF];
	uint8_t txbuf[CONN_TXBUF];
};

#define CONN_NIL UINT32_MAX

struct timer_list {
	uint32_t head, tail;
	uint64_t timeout_ms;
};

struct conn_table {
	struct conn *slots;
	uint32_t *free_stack; /* LIFO, so recently used (cache-warm) slots come back first */
	uint32_t nfree;
	uint32_t size;
	uint32_t live;
	struct timer_list timers[TIMER__COUNT];
	struct timer_list step; /* connect steps (conn_step_set), one timeout: appended in order */
};

/* Allocate a table of n slots (all memory up front). Returns 0 or -ENOMEM. */
int conn_table_init(struct conn_table *t, uint32_t n);
void conn_table_free(struct conn_table *t);

/* Take a free slot (state set to CONN_HANDSHAKE) or NULL when all are in use. */
struct conn *conn_alloc(struct conn_table *t);
/* Return a slot; bumps its generation so stale completions are recognised. */
void conn_release(struct conn_table *t, struct conn *c);

static inline uint32_t conn_index(const struct conn_table *t, const struct conn *c)
{
	return (uint32_t)(c - t->slots);
}

/* The live slot for a completion's user_data, or NULL when the CQE is stale. */
struct conn *conn_lookup(struct conn_table *t, uint64_t ud);

/* Deadline lists: every list has one timeout, so appending keeps it sorted. */
void conn_timer_set(struct conn_table *t, struct conn *c, enum timer_kind k, uint64_t now_ms);
/* Onto list k as conn_timer_set, but a connect step stays as it is. */
void conn_timer_move(struct conn_table *t, struct conn *c, enum timer_kind k, uint64_t now_ms);
/* Off its list, and off the step list. */
void conn_timer_clear(struct conn_table *t, struct conn *c);
/* A connect step: c is on the step list (now + step.timeout_ms) as well as on its timer's. */
void conn_step_set(struct conn_table *t, struct conn *c, uint64_t now_ms);
void conn_step_clear(struct conn_table *t, struct conn *c);
/* The first expired step at now_ms, or NULL. */
struct conn *conn_step_expired(struct conn_table *t, uint64_t now_ms);
/* The first expired slot of any timer list at now_ms (steps aside), or NULL. */
struct conn *conn_timer_expired(struct conn_table *t, uint64_t now_ms);
/* The earliest deadline of all lists, steps included, or UINT64_MAX. */
uint64_t conn_timer_next(const struct conn_table *t);

#endif
