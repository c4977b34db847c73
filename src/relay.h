/* relay.h - moving bytes between the two sockets of a connection after the handshake:
 * readiness-driven splice through pipes lent from a per-worker pool. */
#ifndef RINGSOCKS_RELAY_H
#define RINGSOCKS_RELAY_H

#include <liburing.h>
#include <stdint.h>

#define RELAY_PIPE_SIZE     (1u << 20) /* 1 MiB pipes halve splice's CPU per GB vs 64 KiB */
#define RELAY_PIPES_DEFAULT 512 /* --pipes: pipes a worker lends at most (two descriptors each) */
#define RELAY_BUDGET        4   /* pipe-fulls moved per event before yielding */

struct relay_pipe {
	int r, w;
};

struct pipe_pool {
	struct relay_pipe *pipes; /* cap entries; r == -1 when the entry is unused */
	uint32_t *free;           /* indices of idle pipes */
	uint32_t nfree, cap, live;
	uint32_t size; /* capacity we managed to set */
	int warned;
	int warned_full; /* logged once: the pool was lent out, directions were copied */
};

int pipe_pool_init(struct pipe_pool *p, uint32_t cap);
void pipe_pool_destroy(struct pipe_pool *p);
/* An empty pipe's index, or a negative errno. */
int pipe_pool_get(struct pipe_pool *p);
/* Give a pipe back; a pipe still holding bytes is closed instead of reused. */
void pipe_pool_put(struct pipe_pool *p, int idx, int empty);

/* The copy path's provided-buffer ring (one per worker, only in copy/hybrid mode). */
#define RELAY_BGID 7
/* hybrid copies through 64 KiB buffers and switches a direction to splice once a read fills
 * one: a multishot recv on loopback completes with what has arrived and rarely fills 256 KiB
 * even in a bulk transfer, and smaller buffers keep the ring's memory small (2 MiB a worker). */
#define RELAY_HYBRID_BUF_SIZE (64u << 10)
#define RELAY_HYBRID_LARGE    (16u << 10)  /* a "large" read for hybrid_is_bulk */
#define RELAY_BUF_SIZE        (256u << 10) /* 256 KiB: per-GB CPU close to splice with 1 MiB pipes */
#define RELAY_BUF_COUNT       32           /* hybrid's; copy's ring has twice as many */
#define RELAY_PAUSE_BYTES     (512u << 10) /* stop reading a direction with this much unsent */
#define RELAY_PAUSE_BUFS      4            /* ... or with this many of the ring's buffers */
#define RELAY_CHUNKS_KEPT     4            /* spare queue chunks a worker keeps for good */
#define RELAY_CHUNKS_SPARE    1024         /* ... and while it uses chunks (relay_tick) */
#define RELAY_SMALL_READ      (4u << 10)   /* a read copied onto the previous waiting one */

/* What a copying direction has read and not yet sent: a queue of the ring's buffers
 * themselves, as long as fewer than half the ring waits like this across the worker, and past
 * that of chunks of the direction's own, into which the read is copied (its buffer goes back
 * at once). So destinations that do not read hold at most half the shared ring, and a few
 * stalled clients cannot starve every other connection of the worker. Small reads are copied
 * onto the queue's last entry when it has room (a destination that does not read while small
 * writes trickle in would otherwise take a buffer per write).
 * A splicing direction that finds every pipe of the pool lent out (to destinations that do not
 * read, say) queues chunks the same way: it reads inline and sends from them until its queue
 * is out, and splices again after that, so no connection waits for another's pipe. */
struct relay_chunk {
	struct relay_chunk *next;
	uint8_t *data;
	uint32_t len; /* bytes held (the capacity is the ring's buffer size) */
	int32_t bid;  /* the ring's buffer it is, or -1 for a chunk of the direction's own */
	uint8_t mem[];
};

struct relay_bufs {
	struct io_uring_buf_ring *br;
	uint8_t *mem;
	uint32_t count, size, mask;
	uint32_t held;             /* buffers filled by the kernel and not yet given back */
	uint32_t queued;           /* of those, buffers waiting in directions' queues */
	struct relay_chunk *nodes; /* the queue entry of each buffer */
	uint32_t chunk_size; /* a chunk's capacity (the ring's buffer size when there is one) */
	struct relay_chunk *spare; /* chunks kept for reuse */
	uint32_t nspare;
	uint64_t chunk_used_ms; /* when a chunk was last taken (relay_tick) */
	size_t chunk_bytes;     /* capacity of the chunks in directions' queues */
	size_t chunk_peak;      /* the most chunk_bytes has been */
	size_t chunk_budget;    /* --relay-memory: past it a direction with bytes waiting pauses */
	uint32_t mshot_cap;     /* hybrid: bytes after which a multishot recv ends (0: no cap) */
	uint64_t *starved;      /* directions waiting for a buffer (user_data form), a ring */
	uint32_t starved_head, starved_len, starved_cap;
};

struct worker;
struct conn;

/* Set up the worker's relay resources for its mode. Returns 0 or -errno. */
int relay_init(struct worker *w, uint32_t slots);
void relay_destroy(struct worker *w);

/* Both sides are connected and the handshake bytes are sent: start relaying. */
void relay_start(struct worker *w, struct conn *c);
/* A relay CQE of c (POLLIN/POLLOUT on either side). */
void relay_event(struct worker *w, struct conn *c, int op, unsigned flags, int res);
/* Resume a direction that had used up its budget. */
void relay_resume(struct worker *w, struct conn *c, int dir);
/* Give back the provided buffer a relay recv CQE (flags) carries, for a connection gone. */
void relay_drop_buffer(struct worker *w, unsigned cqe_flags);
/* Once a second or more often: spare chunks not needed for a second are given back. */
void relay_tick(struct worker *w);
/* A relay half-closed for TIMER_HALF_CLOSED: watch its finished side for a reset. */
void relay_watch_finished(struct worker *w, struct conn *c);
/* Give back the pipes and buffers of a connection with nothing in flight any more. */
void relay_release(struct worker *w, struct conn *c);

#endif
