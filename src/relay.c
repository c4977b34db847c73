/* relay.c - the byte relay after the handshake, in four interchangeable ways (--relay):
 *  splice      readiness (multishot poll) then splice(2) socket -> pipe -> socket called inline
 *              from the loop, non-blocking: no payload copy, no io-wq hand-off;
 *  splice-sqe  readiness, then IORING_OP_SPLICE SQEs (io_uring runs them in io-wq threads, one
 *              a worker: see ring_setup);
 *  copy        multishot recv into a provided-buffer ring of 256 KiB buffers, then send SQEs,
 *              one send in flight per direction (so a parked send cannot be overtaken);
 *  hybrid      copy, and switch a direction to splice once a read fills a whole buffer (the
 *              default).
 * An idle connection holds no pipe, no buffer and no kernel thread in every mode. */
#include "relay.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conn.h"
#include "log.h"
#include "worker.h"

int pipe_pool_init(struct pipe_pool *p, uint32_t cap)
{
	memset(p, 0, sizeof(*p));
	p->pipes = calloc(cap ? cap : 1, sizeof(*p->pipes)); /* --pipes 0: never splice */
	p->free = calloc(cap ? cap : 1, sizeof(*p->free));
	if (!p->pipes || !p->free) {
		pipe_pool_destroy(p);
		return -ENOMEM;
	}
	for (uint32_t i = 0; i < cap; i++)
		p->pipes[i].r = p->pipes[i].w = -1;
	p->cap = cap;
	p->size = RELAY_PIPE_SIZE;
	return 0;
}

void pipe_pool_destroy(struct pipe_pool *p)
{
	for (uint32_t i = 0; p->pipes && i < p->cap; i++) {
		if (p->pipes[i].r >= 0) {
			close(p->pipes[i].r);
			close(p->pipes[i].w);
			worker_put_fd_pair();
		}
	}
	free(p->pipes);
	free(p->free);
	memset(p, 0, sizeof(*p));
}

static int pipe_create(struct pipe_pool *p, struct relay_pipe *rp)
{
	int fds[2];

	if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0)
		return -errno;
	if (fcntl(fds[1], F_SETPIPE_SZ, (int)RELAY_PIPE_SIZE) < 0) {
		/* fs.pipe-max-size or fs.pipe-user-pages-soft bites: keep the smaller pipe */
		int got = fcntl(fds[1], F_GETPIPE_SZ);
		if (!p->warned) {
			log_warn("cannot grow pipes to %u bytes (%s); relaying with %d-byte pipes: "
			         "raise fs.pipe-max-size / fs.pipe-user-pages-soft",
			         RELAY_PIPE_SIZE, strerror(errno), got);
			p->warned = 1;
		}
	}
	rp->r = fds[0];
	rp->w = fds[1];
	return 0;
}

int pipe_pool_get(struct pipe_pool *p)
{
	if (p->nfree)
		return (int)p->free[--p->nfree];
	for (uint32_t i = 0; i < p->cap; i++) {
		if (p->pipes[i].r < 0) {
			int err;
			/* a pipe's two descriptors count as a pair, as a connection's do: made
			 * only while the descriptor limit has room (else the direction copies) */
			if (worker_take_fd_pair() < 0)
				return -ENOSPC; /* said as such by take_pipe */
			if ((err = pipe_create(p, &p->pipes[i])) < 0) {
				worker_put_fd_pair();
				return err;
			}
			p->live++;
			return (int)i;
		}
	}
	return -ENOBUFS;
}

void pipe_pool_put(struct pipe_pool *p, int idx, int empty)
{
	struct relay_pipe *rp = &p->pipes[idx];

	if (empty) {
		p->free[p->nfree++] = (uint32_t)idx;
		return;
	}
	close(rp->r);
	close(rp->w);
	worker_put_fd_pair();
	rp->r = rp->w = -1;
	p->live--;
}

/* ---- the provided-buffer ring of the copy path ---- */

/* Empty the mapped ring br of entries buffers and register it as group RELAY_BGID of ring
 * (liburing 2.3 has no io_uring_setup_buf_ring). Returns 0 or -errno. */
static int register_buf_ring(struct io_uring *ring, struct io_uring_buf_ring *br, uint32_t entries)
{
	struct io_uring_buf_reg reg;

	io_uring_buf_ring_init(br);
	memset(&reg, 0, sizeof(reg));
	reg.ring_addr = (uint64_t)(uintptr_t)br;
	reg.ring_entries = entries;
	reg.bgid = RELAY_BGID;
	return io_uring_register_buf_ring(ring, &reg, 0);
}

static int mshot_cap_ok; /* 1: the kernel has the cap; 0: it has not; -1: RINGSOCKS_MSHOT_CAP=off */
static pthread_once_t mshot_cap_once = PTHREAD_ONCE_INIT;

/* Whether the kernel ends a multishot recv once it has received a given number of bytes
 * (sqe->optlen, Linux 6.16; older kernels fail the request with -EINVAL). Asked once, on a
 * ring, buffer ring and socket pair of its own: 2 bytes wait, the cap is 1, so a kernel that
 * knows the cap completes the recv with data and without IORING_CQE_F_MORE (6.18 reads both
 * bytes: the cap is checked after each read, which it does not cut short).
 * RINGSOCKS_MSHOT_CAP=off in the environment skips the probe: hybrid then runs as it does on
 * kernels before 6.16, which is how the tests reach that path on a newer kernel. */
static void probe_mshot_cap(void)
{
	struct io_uring ring;
	struct io_uring_buf_ring *br;
	struct io_uring_sqe *sqe;
	struct io_uring_cqe *cqe;
	const char *env = getenv("RINGSOCKS_MSHOT_CAP");
	uint8_t *mem;
	int sv[2];

	if (env && strcmp(env, "off") == 0) {
		mshot_cap_ok = -1; /* as on a kernel without the cap: the tests' way to that path */
		return;
	}
	if (io_uring_queue_init(4, &ring, 0) < 0)
		return;
	br = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
	if (br == MAP_FAILED)
		goto out;
	mem = (uint8_t *)br + 2048; /* the one buffer shares the page with the ring's entries */
	if (register_buf_ring(&ring, br, 1) < 0)
		goto out;
	io_uring_buf_ring_add(br, mem, 64, 0, io_uring_buf_ring_mask(1), 0);
	io_uring_buf_ring_advance(br, 1);
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		goto out;
	if (write(sv[1], "rs", 2) == 2) {
		sqe = io_uring_get_sqe(&ring);
		io_uring_prep_recv_multishot(sqe, sv[0], NULL, 0, 0);
		sqe->flags |= IOSQE_BUFFER_SELECT;
		sqe->buf_group = RELAY_BGID;
		sqe->file_index = 1; /* the union's optlen */
		if (io_uring_submit_and_wait(&ring, 1) == 1 && io_uring_peek_cqe(&ring, &cqe) == 0)
			mshot_cap_ok = cqe->res > 0 && !(cqe->flags & IORING_CQE_F_MORE);
	}
	close(sv[0]);
	close(sv[1]);
out:
	io_uring_queue_exit(&ring); /* before the buffer ring's memory goes */
	if (br != MAP_FAILED)
		munmap(br, 4096);
}

int relay_init(struct worker *w, uint32_t slots)
{
	struct relay_bufs *b = &w->bufs;
	size_t ring_bytes;
	int ret;

	memset(b, 0, sizeof(*b));
	ret = pipe_pool_init(&w->pipes, w->cfg->pipes);
	if (ret < 0)
		return ret;
	b->chunk_size = w->cfg->relay_mode == RELAY_COPY ? RELAY_BUF_SIZE : RELAY_HYBRID_BUF_SIZE;
	b->chunk_budget = (size_t)w->cfg->relay_memory_mib << 20;
	if (w->cfg->relay_mode != RELAY_COPY && w->cfg->relay_mode != RELAY_HYBRID)
		return 0;
	b->count = w->cfg->relay_mode == RELAY_HYBRID ? RELAY_BUF_COUNT : 2 * RELAY_BUF_COUNT;
	b->size = w->cfg->relay_mode == RELAY_HYBRID ? RELAY_HYBRID_BUF_SIZE : RELAY_BUF_SIZE;
	b->mask = (uint32_t)io_uring_buf_ring_mask(b->count);
	ring_bytes = sizeof(struct io_uring_buf) * b->count;
	/* mapped here and registered by register_buf_ring */
	b->br = mmap(NULL, ring_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
	if (b->br == MAP_FAILED) {
		b->br = NULL;
		return -errno;
	}
	b->mem = mmap(NULL, (size_t)b->count * b->size, PROT_READ | PROT_WRITE,
	              MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
	if (b->mem == MAP_FAILED) {
		b->mem = NULL;
		return -errno;
	}
	b->nodes = calloc(b->count, sizeof(*b->nodes));
	b->starved_cap = slots * 2;
	b->starved = calloc(b->starved_cap, sizeof(*b->starved));
	if (!b->nodes || !b->starved)
		return -ENOMEM;
	for (uint32_t i = 0; i < b->count; i++) {
		b->nodes[i].data = b->mem + (size_t)i * b->size;
		b->nodes[i].bid = (int32_t)i;
	}
	ret = register_buf_ring(&w->ring, b->br, b->count);
	if (ret < 0) {
		log_err("--relay %s needs provided-buffer rings (kernel 5.19+): %s",
		        w->cfg->relay_mode == RELAY_COPY ? "copy" : "hybrid", strerror(-ret));
		return ret;
	}
	for (uint32_t i = 0; i < b->count; i++)
		io_uring_buf_ring_add(b->br, b->mem + (size_t)i * b->size, b->size, (uint16_t)i,
		                      (int)b->mask, (int)i);
	io_uring_buf_ring_advance(b->br, (int)b->count);
	if (w->cfg->relay_mode == RELAY_HYBRID) {
		pthread_once(&mshot_cap_once, probe_mshot_cap);
		b->mshot_cap = mshot_cap_ok > 0 ? b->size : 0;
		log_info("worker %d: multishot recv %s", w->id,
		         mshot_cap_ok > 0   ? "ends after a buffer's worth (Linux 6.16+)"
		         : mshot_cap_ok < 0 ? "has no byte cap (RINGSOCKS_MSHOT_CAP=off)"
		                            : "has no byte cap on this kernel (needs 6.16)");
	}
	return 0;
}

/* Unmap spare chunks until `keep` are left. */
static void drop_spares(struct relay_bufs *b, uint32_t keep)
{
	while (b->nspare > keep) {
		struct relay_chunk *ch = b->spare;
		b->spare = ch->next;
		b->nspare--;
		munmap(ch, sizeof(*ch) + b->chunk_size);
	}
}

void relay_destroy(struct worker *w)
{
	struct relay_bufs *b = &w->bufs;

	pipe_pool_destroy(&w->pipes);
	if (b->br)
		munmap(b->br, sizeof(struct io_uring_buf) * b->count);
	if (b->mem)
		munmap(b->mem, (size_t)b->count * b->size);
	drop_spares(b, 0);
	free(b->nodes);
	free(b->starved);
	memset(b, 0, sizeof(*b));
}

static void feed_starved(struct worker *w);

/* A buffer goes back to the ring: directions starved of one may read again. */
static void buf_return(struct worker *w, int32_t bid)
{
	struct relay_bufs *b = &w->bufs;
	io_uring_buf_ring_add(b->br, b->mem + (size_t)bid * b->size, b->size, (uint16_t)bid,
	                      (int)b->mask, 0);
	io_uring_buf_ring_advance(b->br, 1);
	b->held--;
	feed_starved(w);
}

/* A bulk copy takes and gives back chunks all the time: with 4 spares a worker, most were
 * new mappings, whose first touch faults (--relay copy spent 15% of its CPU in page faults).
 * So the spares are kept while chunks are in use (as many as were in use at once, which
 * --relay-memory bounds; RELAY_CHUNKS_SPARE at most), and all but RELAY_CHUNKS_KEPT go back a
 * second after the last one was taken. */
void relay_tick(struct worker *w)
{
	struct relay_bufs *b = &w->bufs;

	if (w->now_ms - b->chunk_used_ms >= 1000)
		drop_spares(b, RELAY_CHUNKS_KEPT);
}

void relay_drop_buffer(struct worker *w, unsigned cqe_flags)
{
	if (w->bufs.br) {
		w->bufs.held++;
		buf_return(w, (int32_t)(cqe_flags >> IORING_CQE_BUFFER_SHIFT));
	}
}

/* ---- helpers shared by the modes ---- */

static int src_fd(const struct conn *c, int d)
{
	return d == DIR_UP ? c->cfd : c->tfd;
}
static int dst_fd(const struct conn *c, int d)
{
	return d == DIR_UP ? c->tfd : c->cfd;
}
static enum conn_op in_op(int d)
{
	return d == DIR_UP ? OP_POLLIN_C : OP_POLLIN_T;
}
static enum conn_op out_op(int d)
{
	return d == DIR_UP ? OP_POLLOUT_T : OP_POLLOUT_C;
}
static enum conn_op splin_op(int d)
{
	return d == DIR_UP ? OP_SPLIN_C : OP_SPLIN_T;
}
static enum conn_op splout_op(int d)
{
	return d == DIR_UP ? OP_SPLOUT_T : OP_SPLOUT_C;
}

static void arm_pollin(struct worker *w, struct conn *c, int d)
{
	struct io_uring_sqe *sqe = worker_sqe(w);
	/* POLLPRI: urgent data, which splice cannot read past (at_urgent_mark) */
	io_uring_prep_poll_multishot(sqe, src_fd(c, d), POLLIN | POLLPRI);
	sqe->user_data = worker_op(w, c, in_op(d));
}

static void arm_pollout(struct worker *w, struct conn *c, int d)
{
	struct io_uring_sqe *sqe;

	if (c->pending & CONN_OP_BIT(out_op(d)))
		return;
	sqe = worker_sqe(w);
	io_uring_prep_poll_add(sqe, dst_fd(c, d), POLLOUT);
	sqe->user_data = worker_op(w, c, out_op(d));
	/* its result is a poll mask, not a count of bytes sent (relay_event) */
	c->dir[d].flags |= DIR_POLLOUT;
}

/* End the multishot read (poll or recv) of direction d, if it is still armed. */
static void stop_reading(struct worker *w, struct conn *c, int d)
{
	if (c->pending & CONN_OP_BIT(in_op(d)))
		worker_cancel_ops(w, c, CONN_OP_BIT(in_op(d)));
}

/* Drop the entries of closed connections from a ring of directions (the run queue, the starved
 * ring) and return how many are left. A direction has one entry at most, but a closed
 * connection's entries stay until popped, and its slot may meanwhile hold a new connection
 * with entries of its own; what is left fits, at two entries per slot. */
static uint32_t drop_closed(struct worker *w, uint64_t *q, uint32_t head, uint32_t len,
                            uint32_t cap)
{
	uint32_t kept = 0;

	for (uint32_t i = 0; i < len; i++) {
		uint64_t ud = q[(head + i) % cap];

		if (conn_lookup(&w->conns, ud))
			q[(head + kept++) % cap] = ud;
	}
	return kept;
}

static void queue_dir(struct worker *w, struct conn *c, int d)
{
	if (c->dir[d].flags & DIR_QUEUED)
		return;
	if (w->runq_len == w->runq_cap)
		w->runq_len = drop_closed(w, w->runq, w->runq_head, w->runq_len, w->runq_cap);
	if (w->runq_len == w->runq_cap)
		return; /* cannot happen: what is left is live, two entries per slot at most */
	c->dir[d].flags |= DIR_QUEUED;
	w->runq[(w->runq_head + w->runq_len++) % w->runq_cap] =
	    conn_ud((enum conn_op)d, c->gen, conn_index(&w->conns, c));
}

static void release_pipe(struct worker *w, struct relay_dir *rd)
{
	if (rd->pipe >= 0) {
		pipe_pool_put(&w->pipes, rd->pipe, rd->inpipe == 0);
		rd->pipe = -1;
		rd->inpipe = 0;
	}
}

/* Lend the direction a pipe. Returns 0, or -1 when none can be had: every pipe of the pool
 * is in use (--pipes; each costs two descriptors) or no new one can be made. The caller then
 * copies (chunk_pump) rather than wait: a pipe can stay lent for as long as its destination
 * does not read, so waiting for one would let such clients stall everyone else. */
static int take_pipe(struct worker *w, struct relay_dir *rd)
{
	int p;

	if (rd->pipe >= 0)
		return 0;
	p = pipe_pool_get(&w->pipes);
	if (p >= 0) {
		rd->pipe = p;
		return 0;
	}
	if (!w->pipes.warned_full) {
		log_warn("no pipe to splice through (%u of --pipes %u in use: %s); copying instead "
		         "until one is free",
		         w->pipes.live, w->pipes.cap,
		         p == -ENOSPC ? "the descriptor limit has no room for another"
		                      : strerror(-p));
		w->pipes.warned_full = 1;
	}
	return -1;
}

/* Append ch to the direction's queue of what waits to be sent. */
static void queue_push(struct relay_dir *rd, struct relay_chunk *ch)
{
	ch->next = NULL;
	if (rd->qtail)
		rd->qtail->next = ch;
	else
		rd->qhead = ch;
	rd->qtail = ch;
}

/* A chunk for a direction's queue: a spare one, or a new one (NULL when out of memory). */
static struct relay_chunk *chunk_get(struct worker *w)
{
	struct relay_bufs *b = &w->bufs;
	struct relay_chunk *ch = b->spare;

	if (ch) {
		b->spare = ch->next;
		b->nspare--;
	} else {
		/* mapped, not malloc'd: one given back past the few spares leaves no heap behind */
		ch = mmap(NULL, sizeof(*ch) + b->chunk_size, PROT_READ | PROT_WRITE,
		          MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
		if (ch == MAP_FAILED)
			return NULL;
		ch->data = ch->mem;
		ch->bid = -1;
	}
	ch->next = NULL;
	ch->len = 0;
	b->chunk_bytes += b->chunk_size;
	if (b->chunk_bytes > b->chunk_peak)
		b->chunk_peak = b->chunk_bytes;
	b->chunk_used_ms = w->now_ms;
	return ch;
}

/* Past --relay-memory, a direction with bytes waiting reads no more until they are out (the
 * pause that RELAY_PAUSE_BYTES makes, sooner): so the chunks of directions whose destinations
 * do not read stay near the budget, one chunk each past it, not RELAY_PAUSE_BYTES each. */
static int past_budget(const struct worker *w)
{
	return w->bufs.chunk_bytes >= w->bufs.chunk_budget;
}

static int over_budget(const struct worker *w, const struct relay_dir *rd)
{
	return rd->qhead && past_budget(w);
}

/* Done with a queue entry: a ring buffer goes back to the ring, a chunk to the spares. */
static void chunk_put(struct worker *w, struct relay_dir *rd, struct relay_chunk *ch)
{
	struct relay_bufs *b = &w->bufs;

	if (ch->bid >= 0) {
		b->queued--;
		rd->nring--;
		buf_return(w, ch->bid);
		return;
	}
	b->chunk_bytes -= b->chunk_size;
	if (b->nspare >= RELAY_CHUNKS_SPARE) {
		munmap(ch, sizeof(*ch) + b->chunk_size);
		return;
	}
	ch->next = b->spare;
	b->spare = ch;
	b->nspare++;
}

void relay_release(struct worker *w, struct conn *c)
{
	for (int d = 0; d < 2; d++) {
		struct relay_dir *rd = &c->dir[d];
		int n = 0;

		/* a splice SQE that completed after the close was not counted in inpipe: ask the
		 * pipe itself, so that one with bytes left is closed, not lent to a new connection
		 */
		if (rd->pipe >= 0 && !rd->inpipe &&
		    (ioctl(w->pipes.pipes[rd->pipe].r, FIONREAD, &n) < 0 || n > 0))
			rd->inpipe = 1;
		release_pipe(w, rd);
		while (rd->qhead) {
			struct relay_chunk *ch = rd->qhead;
			rd->qhead = ch->next;
			chunk_put(w, rd, ch);
		}
		rd->qtail = NULL;
		rd->qbytes = 0;
	}
}

static int hard_error(int err)
{
	return err != EAGAIN && err != EINTR;
}

/* Direction d's source has said EOF and is read no more: watch it for a reset (handle_cqe
 * aborts the relay). Nothing else would see one while the other direction has nothing to
 * send to it: the relay and its sockets stayed for as long as that direction stayed silent,
 * and its other end never learnt that the connection was gone. */
static void watch_src(struct worker *w, struct conn *c, int d)
{
	enum conn_op op = d == DIR_UP ? OP_WATCH_C : OP_WATCH_T;

	/* BIND's watch of the client, or the connect phase's (worker.c, connect_watch),
	 * cancelled as the relay began, may not have ended yet */
	if (c->pending & CONN_OP_BIT(op))
		return;
	/* after the peer's FIN only a reset (or an error) makes POLLERR or POLLHUP true */
	worker_watch_reset(w, c, src_fd(c, d), op);
}

/* Source reached EOF and everything read was delivered: propagate the half-close.
 * Returns -1 when that finished the connection. */
static int finish_dir(struct worker *w, struct conn *c, int d)
{
	struct relay_dir *rd = &c->dir[d];

	release_pipe(w, rd);
	if (rd->flags & DIR_SHUT)
		return 0;
	rd->flags |= DIR_SHUT;
	if (c->dir[!d].flags & DIR_SHUT) {
		/* both directions are done: close() sends the FIN a shutdown would */
		worker_conn_close(w, c, NULL);
		return -1;
	}
	shutdown(dst_fd(c, d), SHUT_WR); /* the other direction keeps flowing */
	/* Most half-closed relays end within a round trip (a request, then its answer and
	 * the other EOF): the watch starts only if this one lasts (relay_watch_finished) */
	conn_timer_set(&w->conns, c, TIMER_HALF_CLOSED, w->now_ms);
	return 0;
}

void relay_watch_finished(struct worker *w, struct conn *c)
{
	for (int d = 0; d < 2; d++)
		if (c->dir[d].flags & DIR_SHUT)
			watch_src(w, c, d);
}

/* ---- a splicing direction without a pipe: copied through chunks ---- */

static void copy_send_head(struct worker *w, struct conn *c, int d);

/* Direction d is ready to read but no pipe can be had, or what it read that way is not all
 * sent yet (the order of the bytes): read inline into chunks of its own, at most
 * RELAY_PAUSE_BYTES unsent, and send them with send SQEs, one in flight. Each completed send
 * resumes it (copy_send_done); once its queue is out it splices again. Returns 0, or -1 when
 * the connection was closed. */
static int chunk_pump(struct worker *w, struct conn *c, int d)
{
	struct relay_dir *rd = &c->dir[d];
	struct relay_bufs *b = &w->bufs;

	for (int round = 0; rd->qbytes < RELAY_PAUSE_BYTES && !over_budget(w, rd); round++) {
		struct relay_chunk *ch = rd->qtail;
		int fresh = !ch || ch->len == b->chunk_size;
		ssize_t n;
		int err;

		if (round == RELAY_BUDGET) {
			queue_dir(w, c, d);
			return 0;
		}
		if (fresh && !(ch = chunk_get(w))) {
			worker_conn_abort(w, c, "out of memory");
			return -1;
		}
		n = recv(src_fd(c, d), ch->data + ch->len, b->chunk_size - ch->len, MSG_DONTWAIT);
		err = errno;
		if (n > 0) {
			if (fresh)
				queue_push(rd, ch);
			/* a send in flight from it covers only the bytes it had */
			ch->len += (uint32_t)n;
			rd->qbytes += (uint32_t)n;
			if (!(c->pending & CONN_OP_BIT(out_op(d))))
				copy_send_head(w, c, d);
			continue;
		}
		if (fresh)
			chunk_put(w, rd, ch);
		if (n == 0) {
			rd->flags |= DIR_EOF;
			stop_reading(w, c, d);
			return rd->qhead ? 0 : finish_dir(w, c, d); /* else after the last send */
		}
		if (hard_error(err)) {
			worker_conn_abort(w, c,
			                  d == DIR_UP ? "client read error" : "target read error");
			return -1;
		}
		return 0; /* EAGAIN: the next readiness event resumes it */
	}
	return 0; /* enough waits: copy_send_done resumes it */
}

/* ---- splice: splice(2) inline on readiness ---- */

/* TCP urgent data (a byte sent with MSG_OOB: telnet's and FTP's interrupts): splice(2) reads
 * nothing at its mark, however much follows. It says EAGAIN, and no readiness event comes
 * again for what is there (the direction stopped for good), or, once the FIN is in, 0 (the
 * bytes after the mark were taken for EOF and lost). recv(2) steps over the mark (leaving the
 * urgent byte out of the stream, as the copy path reads it), so a direction at the mark reads
 * through chunks (chunk_pump) until it is past. An EAGAIN asks only after POLLPRI said urgent
 * data came (its readiness event comes after, if not before: EAGAIN is every drain's end);
 * an EOF always asks (the POLLPRI event may still be on its way; it is once a direction). */
static int at_urgent_mark(struct relay_dir *rd, int fd, int eof)
{
	if (!eof && !(rd->flags & DIR_URGENT))
		return 0;
	if (sockatmark(fd) == 1)
		return 1;
	rd->flags &= (uint16_t)~DIR_URGENT; /* past it */
	return 0;
}

/* Move what direction d can move now. Returns 0, or -1 when the connection was closed. */
static int splice_pump(struct worker *w, struct conn *c, int d)
{
	struct relay_dir *rd = &c->dir[d];
	int src = src_fd(c, d), dst = dst_fd(c, d);
	ssize_t n;

	if (rd->flags & DIR_SHUT)
		return 0;
	for (int round = 0;; round++) {
		if (rd->inpipe) {
			n = splice(w->pipes.pipes[rd->pipe].r, NULL, dst, NULL, rd->inpipe,
			           SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
			if (n < 0 && hard_error(errno)) {
				worker_conn_abort(w, c,
				                  d == DIR_UP ? "target write error"
				                              : "client write error");
				return -1;
			}
			if (n > 0) {
				rd->inpipe -= (uint32_t)n;
				rd->bytes += (uint64_t)n;
			}
			if (rd->inpipe) {
				/* the destination is full: resume on POLLOUT */
				arm_pollout(w, c, d);
				return 0;
			}
		}
		if (rd->flags & DIR_EOF) /* after what it copied for want of a pipe, if any */
			return rd->qhead ? 0 : finish_dir(w, c, d);
		if (round == RELAY_BUDGET) {
			queue_dir(w, c, d);
			return 0;
		}
		if (rd->qhead || take_pipe(w, rd) < 0)
			return chunk_pump(w, c, d);
		n = splice(src, NULL, w->pipes.pipes[rd->pipe].w, NULL, w->pipes.size,
		           SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
		if (n > 0) {
			rd->inpipe = (uint32_t)n;
			continue;
		}
		if (n == 0 && at_urgent_mark(rd, src, 1)) {
			/* with the FIN in, splice says EOF at the mark, though bytes follow it */
			release_pipe(w, rd);
			return chunk_pump(w, c, d);
		}
		if (n == 0) {
			rd->flags |= DIR_EOF;
			stop_reading(w, c, d);
			return finish_dir(w, c, d);
		}
		if (hard_error(errno)) {
			worker_conn_abort(w, c,
			                  d == DIR_UP ? "client read error" : "target read error");
			return -1;
		}
		/* EAGAIN: nothing more to read (or the urgent mark); the pipe is empty, give it
		 * back */
		release_pipe(w, rd);
		return at_urgent_mark(rd, src, 0) ? chunk_pump(w, c, d) : 0;
	}
}

/* ---- splice-sqe: IORING_OP_SPLICE on readiness ---- */

static void sqe_splice_in(struct worker *w, struct conn *c, int d)
{
	struct relay_dir *rd = &c->dir[d];
	struct io_uring_sqe *sqe;

	rd->flags &= (uint16_t)~DIR_READABLE;
	if (rd->qhead || take_pipe(w, rd) < 0) {
		chunk_pump(w, c, d);
		return;
	}
	sqe = worker_sqe(w);
	io_uring_prep_splice(sqe, src_fd(c, d), -1, w->pipes.pipes[rd->pipe].w, -1, w->pipes.size,
	                     SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
	sqe->user_data = worker_op(w, c, splin_op(d));
}

static void sqe_splice_out(struct worker *w, struct conn *c, int d)
{
	struct relay_dir *rd = &c->dir[d];
	struct io_uring_sqe *sqe = worker_sqe(w);

	io_uring_prep_splice(sqe, w->pipes.pipes[rd->pipe].r, -1, dst_fd(c, d), -1, rd->inpipe,
	                     SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
	sqe->user_data = worker_op(w, c, splout_op(d));
}

static int sqe_busy(const struct conn *c, int d)
{
	return (c->pending &
	        (CONN_OP_BIT(splin_op(d)) | CONN_OP_BIT(splout_op(d)) | CONN_OP_BIT(out_op(d)))) ||
	       c->dir[d].inpipe;
}

static void sqe_readable(struct worker *w, struct conn *c, int d)
{
	if (c->dir[d].flags & (DIR_EOF | DIR_SHUT))
		return;
	if (sqe_busy(c, d)) {
		c->dir[d].flags |= DIR_READABLE; /* retried when the pipe is empty again */
		return;
	}
	sqe_splice_in(w, c, d);
}

static void sqe_in_done(struct worker *w, struct conn *c, int d, int res)
{
	struct relay_dir *rd = &c->dir[d];

	if (res > 0) {
		rd->inpipe = (uint32_t)res;
		sqe_splice_out(w, c, d);
		return;
	}
	if (res == 0 && at_urgent_mark(rd, src_fd(c, d), 1)) {
		release_pipe(w, rd); /* EOF at the mark, though bytes may follow it */
		chunk_pump(w, c, d);
		return;
	}
	if (res == 0) {
		rd->flags |= DIR_EOF;
		stop_reading(w, c, d);
		finish_dir(w, c, d);
		return;
	}
	if (res == -EAGAIN || res == -EINTR) {
		if (rd->flags & DIR_READABLE) {
			sqe_splice_in(w, c, d); /* readiness came while this one ran */
			return;
		}
		release_pipe(w, rd);
		if (at_urgent_mark(rd, src_fd(c, d), 0))
			chunk_pump(w, c, d);
		return;
	}
	worker_conn_abort(w, c, d == DIR_UP ? "client read error" : "target read error");
}

static void sqe_out_done(struct worker *w, struct conn *c, int d, int res)
{
	struct relay_dir *rd = &c->dir[d];

	if (res > 0) {
		rd->inpipe -= (uint32_t)res;
		rd->bytes += (uint64_t)res;
	} else if (res != -EAGAIN && res != -EINTR) {
		worker_conn_abort(w, c, d == DIR_UP ? "target write error" : "client write error");
		return;
	}
	if (rd->inpipe) {
		arm_pollout(w, c, d); /* the destination is full */
		return;
	}
	/* drained: more is likely waiting (a full pipe), so read again at once */
	sqe_splice_in(w, c, d);
}

/* ---- copy: recv into the buffer ring, then send ---- */

/* A multishot recv cannot be held back: once armed, the kernel receives into free buffers of
 * the shared ring for as long as the socket has data (up to 32 reads in a row), and the flow
 * control below sees them only as their completions arrive, after the pause. With 256 KiB
 * buffers that put several MiB behind each destination that did not read (32 such clients:
 * 130-180 MiB, past --relay-memory and RELAY_PAUSE_BYTES). So --relay copy reads a buffer at
 * a time, and decides after each read whether to read on; hybrid keeps the multishot recv
 * for its small messages (its 64 KiB buffers end in splice when bulk), and reads a buffer at
 * a time once a direction has paused (DIR_SLOW) or the worker is past --relay-memory. Where
 * the kernel can (6.16+), hybrid's multishot recv also ends itself once it has read a
 * buffer's worth (mshot_cap): what it reads past a pause or a switch to splice is then less
 * than two buffers a direction, where without the cap it is up to the ring's free buffers
 * for each direction that decides in its own batch of completions. A small-message
 * direction re-arms once per 64 KiB it reads. */
static void copy_arm_recv(struct worker *w, struct conn *c, int d)
{
	struct io_uring_sqe *sqe = worker_sqe(w);

	c->dir[d].flags &= (uint16_t) ~(DIR_PAUSED | DIR_STARVED);
	if (w->cfg->relay_mode == RELAY_COPY || (c->dir[d].flags & DIR_SLOW) || past_budget(w))
		io_uring_prep_recv(sqe, src_fd(c, d), NULL, 0, 0);
	else {
		io_uring_prep_recv_multishot(sqe, src_fd(c, d), NULL, 0, 0);
		sqe->file_index = w->bufs.mshot_cap; /* the union's optlen */
	}
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = RELAY_BGID;
	sqe->user_data = worker_op(w, c, in_op(d));
}

static void copy_send_head(struct worker *w, struct conn *c, int d)
{
	struct relay_dir *rd = &c->dir[d];
	struct io_uring_sqe *sqe = worker_sqe(w);

	/* after the source's EOF a shutdown or close follows as soon as this is out: MSG_MORE
	 * holds a short tail back so that the FIN leaves in the same segment */
	io_uring_prep_send(sqe, dst_fd(c, d), rd->qhead->data + rd->qoff, rd->qhead->len - rd->qoff,
	                   MSG_NOSIGNAL | ((rd->flags & DIR_EOF) ? MSG_MORE : 0));
	sqe->user_data = worker_op(w, c, out_op(d));
}

/* Direction d found no buffer: it reads again when feed_starved reaches its entry. A direction
 * has one entry at most; one that is re-armed by its own send completion (a paused direction)
 * keeps its entry, which feed_starved then passes over. */
static void starve(struct worker *w, struct conn *c, int d)
{
	struct relay_bufs *b = &w->bufs;

	c->dir[d].flags |= DIR_STARVED;
	if (c->dir[d].flags & DIR_LISTED)
		return;
	if (b->starved_len == b->starved_cap)
		b->starved_len =
		    drop_closed(w, b->starved, b->starved_head, b->starved_len, b->starved_cap);
	if (b->starved_len == b->starved_cap)
		return; /* cannot happen: what is left is live (DIR_LISTED: one a direction) */
	b->starved[(b->starved_head + b->starved_len++) % b->starved_cap] =
	    conn_ud((enum conn_op)d, c->gen, conn_index(&w->conns, c));
	c->dir[d].flags |= DIR_LISTED;
}

/* Buffers are free: let starved directions read again, as many as there are free buffers
 * (each takes at least one, or sees its EOF and takes none). A direction left starved while
 * buffers are free is never woken again, so this runs wherever buffers come back, after every
 * EOF (a direction woken only for its EOF gives no buffer back) and after a starving read
 * (the buffers may have come back before it completed). */
static void feed_starved(struct worker *w)
{
	struct relay_bufs *b = &w->bufs;
	uint32_t avail = b->count - b->held;

	while (b->starved_len && avail) {
		uint64_t ud = b->starved[b->starved_head];
		struct conn *c;
		int d = (int)conn_ud_op(ud);

		b->starved_head = (b->starved_head + 1) % b->starved_cap;
		b->starved_len--;
		c = conn_lookup(&w->conns, ud);
		if (c)
			c->dir[d].flags &= (uint16_t)~DIR_LISTED;
		if (c && c->state == CONN_RELAY &&
		    (c->dir[d].flags & (DIR_STARVED | DIR_COPY)) == (DIR_STARVED | DIR_COPY) &&
		    !(c->pending & CONN_OP_BIT(in_op(d)))) {
			copy_arm_recv(w, c, d);
			avail--;
		}
	}
}

static void hybrid_to_splice(struct worker *w, struct conn *c, int d);

/* Hybrid: a read that fills its buffer, or two large reads in a row, mean a bulk transfer.
 * (A multishot recv completes with what has arrived, so even bulk reads often fall short of
 * a whole buffer; one large read alone may be a single big message.) */
static int hybrid_is_bulk(struct relay_dir *rd, uint32_t n, uint32_t bufsize)
{
	if (n == bufsize)
		return 1;
	if (n < RELAY_HYBRID_LARGE) {
		rd->flags &= (uint16_t)~DIR_LARGE_READ;
		return 0;
	}
	if (rd->flags & DIR_LARGE_READ)
		return 1;
	rd->flags |= DIR_LARGE_READ;
	return 0;
}

/* Hybrid: the copy phase of d is over (recv ended, queue sent): readiness and splice now. */
static void start_splicing(struct worker *w, struct conn *c, int d)
{
	c->dir[d].flags &= (uint16_t)~DIR_SWITCHING;
	arm_pollin(w, c, d);
}

static void copy_recv_done(struct worker *w, struct conn *c, int d, int res, unsigned flags)
{
	struct relay_dir *rd = &c->dir[d];
	struct relay_bufs *b = &w->bufs;
	int more = flags & IORING_CQE_F_MORE;

	if (res > 0) {
		int32_t bid = (int32_t)(flags >> IORING_CQE_BUFFER_SHIFT);
		struct relay_chunk *ch = rd->qtail;

		b->held++;
		if (more && (rd->flags & (DIR_PAUSED | DIR_SWITCHING)))
			stop_reading(w, c, d); /* still delivering after its cancel: again */
		if (ch && (uint32_t)res <= b->size - ch->len &&
		    (ch->bid < 0 || (uint32_t)res <= RELAY_SMALL_READ)) {
			/* onto the queue's last entry (a send in flight from it covers only the
			 * bytes it had); the ring's buffer goes back at once */
			memcpy(ch->data + ch->len, b->mem + (size_t)bid * b->size, (size_t)res);
			ch->len += (uint32_t)res;
			buf_return(w, bid);
		} else {
			if (b->queued < b->count / 2) {
				ch = &b->nodes[bid]; /* waits in the ring's buffer itself */
				ch->len = (uint32_t)res;
				b->queued++;
				rd->nring++;
			} else {
				/* half the ring waits already: copied into a chunk of its own */
				ch = chunk_get(w);
				if (!ch) {
					buf_return(w, bid);
					worker_conn_abort(w, c, "out of memory");
					return;
				}
				memcpy(ch->data, b->mem + (size_t)bid * b->size, (size_t)res);
				ch->len = (uint32_t)res;
				buf_return(w, bid);
			}
			queue_push(rd, ch);
		}
		rd->qbytes += (uint32_t)res;
		if (!(c->pending & CONN_OP_BIT(out_op(d))) && !(rd->flags & DIR_SEND_DUE)) {
			/* sent once this batch of completions is handled: an EOF in the same batch
			 * then rides with the data (see copy_send_head) */
			rd->flags |= DIR_SEND_DUE;
			queue_dir(w, c, d);
		}
		if (w->cfg->relay_mode == RELAY_HYBRID && (rd->flags & DIR_COPY) &&
		    hybrid_is_bulk(rd, (uint32_t)res, b->size)) {
			/* bulk: splice the rest */
			hybrid_to_splice(w, c, d);
			return;
		}
		if ((rd->qbytes >= RELAY_PAUSE_BYTES || rd->nring >= RELAY_PAUSE_BUFS ||
		     over_budget(w, rd)) &&
		    !(rd->flags & DIR_PAUSED)) {
			/* flow control: the destination is slower; stop reading for now */
			rd->flags |= DIR_PAUSED | DIR_SLOW;
			if (more)
				stop_reading(w, c, d);
			return;
		}
		if (!more && !(rd->flags & DIR_PAUSED) && (rd->flags & DIR_COPY))
			copy_arm_recv(w, c, d);
		return;
	}
	if (res == 0) {
		rd->flags |= DIR_EOF;
		/* an EOF takes no buffer: a direction woken from starvation that only had its EOF
		 * to read gives none back, so the next starved one is woken here */
		feed_starved(w);
		if (!rd->qhead)
			finish_dir(w, c, d);
		return;
	}
	if (res != -ENOBUFS && res != -ECANCELED) {
		worker_conn_abort(w, c, d == DIR_UP ? "client read error" : "target read error");
		return;
	}
	if (!more && (rd->flags & DIR_SWITCHING)) {
		/* hybrid: the recv has ended; splice once the queued buffers are out */
		if (!rd->qhead)
			start_splicing(w, c, d);
		return;
	}
	if (res == -ENOBUFS && !(rd->flags & DIR_PAUSED)) {
		starve(w, c, d);
		feed_starved(w);
		return;
	}
	/* -ECANCELED, or -ENOBUFS after a pause, which must not make it a starved direction:
	 * feed_starved would wake it to read on past the pause. copy_send_done reads again once
	 * the queue is out; if it has already run dry, it found this recv still in flight and
	 * left it to us. */
	if ((rd->flags & DIR_PAUSED) && !rd->qhead && !(rd->flags & DIR_EOF))
		copy_arm_recv(w, c, d);
}

static void copy_send_done(struct worker *w, struct conn *c, int d, int res)
{
	struct relay_dir *rd = &c->dir[d];

	if (res < 0) {
		worker_conn_abort(w, c, d == DIR_UP ? "target write error" : "client write error");
		return;
	}
	rd->qoff += (uint32_t)res;
	rd->qbytes -= (uint32_t)res;
	rd->bytes += (uint64_t)res;
	if (rd->qoff == rd->qhead->len) {
		struct relay_chunk *ch = rd->qhead;
		rd->qhead = ch->next;
		if (!rd->qhead)
			rd->qtail = NULL;
		rd->qoff = 0;
		chunk_put(w, rd, ch);
	}
	if (rd->qhead) {
		copy_send_head(w, c, d); /* one send in flight per direction keeps the order */
		/* a splicing direction that copies for want of a pipe reads on meanwhile */
		if (!(rd->flags & (DIR_COPY | DIR_SWITCHING | DIR_EOF)))
			queue_dir(w, c, d);
		return;
	}
	/* the queue is out */
	if (rd->flags & DIR_EOF) {
		finish_dir(w, c, d);
		return;
	}
	if (!(rd->flags & (DIR_COPY | DIR_SWITCHING))) {
		queue_dir(w, c, d); /* it copied for want of a pipe: read on, splicing if it can */
		return;
	}
	if (rd->flags & DIR_SWITCHING) {
		/* hybrid: start splicing once the recv has ended too */
		if (!(c->pending & CONN_OP_BIT(in_op(d))))
			start_splicing(w, c, d);
		return;
	}
	if ((rd->flags & DIR_PAUSED) && !(c->pending & CONN_OP_BIT(in_op(d))))
		copy_arm_recv(w, c, d);
}

/* Hybrid: stop the multishot recv of d; once it has ended and the queued buffers are sent,
 * the direction is driven by readiness and splice like --relay splice. */
static void hybrid_to_splice(struct worker *w, struct conn *c, int d)
{
	c->dir[d].flags = (uint16_t)((c->dir[d].flags & ~DIR_COPY) | DIR_SWITCHING);
	stop_reading(w, c, d);
}

/* ---- entry points ---- */

void relay_start(struct worker *w, struct conn *c)
{
	c->state = CONN_RELAY;
	for (int d = 0; d < 2; d++) {
		if (w->cfg->relay_mode == RELAY_COPY || w->cfg->relay_mode == RELAY_HYBRID) {
			c->dir[d].flags |= DIR_COPY;
			copy_arm_recv(w, c, d);
		} else {
			arm_pollin(w, c, d);
		}
	}
}

void relay_event(struct worker *w, struct conn *c, int op, unsigned flags, int res)
{
	int d = (op == OP_POLLIN_C || op == OP_POLLOUT_T || op == OP_SPLIN_C || op == OP_SPLOUT_T)
	            ? DIR_UP
	            : DIR_DOWN;
	struct relay_dir *rd = &c->dir[d];
	int is_in = op == OP_POLLIN_C || op == OP_POLLIN_T;
	int is_out = op == OP_POLLOUT_C || op == OP_POLLOUT_T;

	if (is_out && (rd->flags & DIR_POLLOUT)) {
		/* A splice's wait for room. Its pipe may have drained meanwhile (the destination
		 * took it on a later read event) and, with no pipe to be had, bytes have been
		 * queued in chunks whose first send waited for this op: send them now. Its result
		 * is a poll mask (POLLOUT is 4), which copy_send_done would count as bytes sent. */
		rd->flags &= (uint16_t)~DIR_POLLOUT;
		if (rd->qhead && res >= 0) {
			copy_send_head(w, c, d);
			return;
		}
	}
	if (rd->flags & (DIR_COPY | DIR_SWITCHING) || (is_out && rd->qhead)) {
		/* copying, or a hybrid direction still finishing its copy phase */
		if (is_in)
			copy_recv_done(w, c, d, res, flags);
		else if (is_out)
			copy_send_done(w, c, d, res);
		return;
	}
	if (op == OP_SPLIN_C || op == OP_SPLIN_T) {
		sqe_in_done(w, c, d, res);
		return;
	}
	if (op == OP_SPLOUT_C || op == OP_SPLOUT_T) {
		sqe_out_done(w, c, d, res);
		return;
	}
	if (res < 0) {
		if (res == -ECANCELED)
			return;
		worker_conn_abort(w, c, "poll error");
		return;
	}
	if (is_in && (res & POLLPRI))
		rd->flags |= DIR_URGENT;
	if (w->cfg->relay_mode == RELAY_SPLICE_SQE) {
		if (is_in)
			sqe_readable(w, c, d);
		else if (rd->inpipe)
			sqe_splice_out(w, c, d);
	} else {
		splice_pump(w, c, d);
	}
	/* A splicing direction's multishot poll stays armed until its EOF, but the kernel ends
	 * one that cannot post its event (a full completion queue): that event came here, and
	 * the poll is armed again, or the direction would never be read again. */
	if (is_in && !(flags & IORING_CQE_F_MORE) && c->state == CONN_RELAY &&
	    !(rd->flags & (DIR_EOF | DIR_COPY | DIR_SWITCHING)) &&
	    !(c->pending & CONN_OP_BIT(in_op(d))))
		arm_pollin(w, c, d);
}

void relay_resume(struct worker *w, struct conn *c, int d)
{
	struct relay_dir *rd = &c->dir[d];

	rd->flags &= (uint16_t)~DIR_QUEUED;
	if (c->state != CONN_RELAY)
		return;
	if (rd->flags & DIR_SEND_DUE) {
		rd->flags &= (uint16_t)~DIR_SEND_DUE;
		if (rd->qhead && !(c->pending & CONN_OP_BIT(out_op(d))))
			copy_send_head(w, c, d);
	}
	if (rd->flags & (DIR_COPY | DIR_SWITCHING))
		return; /* copying: driven by its recv and send completions */
	if (w->cfg->relay_mode == RELAY_SPLICE_SQE)
		sqe_readable(w, c, d);
	else
		splice_pump(w, c, d);
}
