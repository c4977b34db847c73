/* relay.c - the byte relay after the handshake. Each direction waits for its source to be
 * readable (a multishot poll on the ring), then calls splice(2) inline from the loop:
 * socket -> pipe -> socket, all non-blocking, so payload never enters user space and no
 * kernel thread is parked for an idle connection. A direction holds a pipe only while
 * bytes sit in it. */
#include "relay.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conn.h"
#include "log.h"
#include "worker.h"

int pipe_pool_init(struct pipe_pool *p, uint32_t cap)
{
	memset(p, 0, sizeof(*p));
	p->pipes = calloc(cap, sizeof(*p->pipes));
	p->free = calloc(cap, sizeof(*p->free));
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
			int err = pipe_create(p, &p->pipes[i]);
			if (err < 0)
				return err;
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
	rp->r = rp->w = -1;
	p->live--;
}

static void arm_pollin(struct worker *w, struct conn *c, int fd, enum conn_op op)
{
	struct io_uring_sqe *sqe = worker_sqe(w);
	io_uring_prep_poll_multishot(sqe, fd, POLLIN);
	sqe->user_data = worker_op(w, c, op);
}

static void arm_pollout(struct worker *w, struct conn *c, int fd, enum conn_op op)
{
	struct io_uring_sqe *sqe;

	if (c->pending & CONN_OP_BIT(op))
		return;
	sqe = worker_sqe(w);
	io_uring_prep_poll_add(sqe, fd, POLLOUT);
	sqe->user_data = worker_op(w, c, op);
}

static void stop_pollin(struct worker *w, struct conn *c, enum conn_op op)
{
	struct io_uring_sqe *sqe;

	if (!(c->pending & CONN_OP_BIT(op)))
		return;
	sqe = worker_sqe(w);
	io_uring_prep_poll_remove(sqe, conn_ud(op, c->gen, conn_index(&w->conns, c)));
	sqe->user_data = conn_ud(OP_IGNORE, 0, 0);
}

void relay_start(struct worker *w, struct conn *c)
{
	c->state = CONN_RELAY;
	arm_pollin(w, c, c->cfd, OP_POLLIN_C);
	arm_pollin(w, c, c->tfd, OP_POLLIN_T);
}

static void queue_dir(struct worker *w, struct conn *c, int d)
{
	if (c->dir[d].flags & DIR_QUEUED)
		return;
	if (w->runq_len == w->runq_cap)
		return; /* cannot happen: two entries per slot; the next poll event resumes it */
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

void relay_release(struct worker *w, struct conn *c)
{
	release_pipe(w, &c->dir[DIR_UP]);
	release_pipe(w, &c->dir[DIR_DOWN]);
}

static int hard_error(int err)
{
	return err != EAGAIN && err != EINTR;
}

/* Move what direction d can move now. Returns 0, or -1 when the connection was closed. */
static int pump(struct worker *w, struct conn *c, int d)
{
	struct relay_dir *rd = &c->dir[d];
	int src = d == DIR_UP ? c->cfd : c->tfd;
	int dst = d == DIR_UP ? c->tfd : c->cfd;
	enum conn_op in_op = d == DIR_UP ? OP_POLLIN_C : OP_POLLIN_T;
	enum conn_op out_op = d == DIR_UP ? OP_POLLOUT_T : OP_POLLOUT_C;
	ssize_t n;

	if (rd->flags & DIR_SHUT)
		return 0;
	for (int round = 0;; round++) {
		if (rd->inpipe) {
			n = splice(w->pipes.pipes[rd->pipe].r, NULL, dst, NULL, rd->inpipe,
			           SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
			if (n < 0 && hard_error(errno)) {
				worker_conn_close(w, c,
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
				rd->flags |= DIR_WAIT_OUT;
				arm_pollout(w, c, dst, out_op);
				return 0;
			}
			rd->flags &= (uint8_t)~DIR_WAIT_OUT;
		}
		if (rd->flags & DIR_EOF)
			break;
		if (round == RELAY_BUDGET) {
			queue_dir(w, c, d);
			break;
		}
		if (rd->pipe < 0) {
			int p = pipe_pool_get(&w->pipes);
			if (p < 0) {
				log_err("no pipe for relaying (%s): closing connection",
				        strerror(-p));
				worker_conn_close(w, c, "out of pipes");
				return -1;
			}
			rd->pipe = p;
		}
		n = splice(src, NULL, w->pipes.pipes[rd->pipe].w, NULL, w->pipes.size,
		           SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
		if (n > 0) {
			rd->inpipe = (uint32_t)n;
			continue;
		}
		if (n == 0) {
			rd->flags |= DIR_EOF;
			stop_pollin(w, c, in_op);
			break;
		}
		if (hard_error(errno)) {
			worker_conn_close(w, c,
			                  d == DIR_UP ? "client read error" : "target read error");
			return -1;
		}
		/* EAGAIN: nothing more to read; the pipe is empty, give it back */
		release_pipe(w, rd);
		return 0;
	}
	release_pipe(w, rd);
	if ((rd->flags & DIR_EOF) && !(rd->flags & DIR_SHUT)) {
		/* half-close: the other direction keeps flowing */
		shutdown(dst, SHUT_WR);
		rd->flags |= DIR_SHUT;
		if (c->dir[!d].flags & DIR_SHUT) {
			worker_conn_close(w, c, NULL);
			return -1;
		}
	}
	return 0;
}

void relay_event(struct worker *w, struct conn *c, int op, int res)
{
	int d;

	if (res < 0) {
		if (res == -ECANCELED)
			return;
		worker_conn_close(w, c, "poll error");
		return;
	}
	switch (op) {
	case OP_POLLIN_C:
	case OP_POLLOUT_T:
		d = DIR_UP;
		break;
	case OP_POLLIN_T:
	case OP_POLLOUT_C:
		d = DIR_DOWN;
		break;
	default:
		return;
	}
	pump(w, c, d);
}

void relay_resume(struct worker *w, struct conn *c, int d)
{
	c->dir[d].flags &= (uint8_t)~DIR_QUEUED;
	if (c->state == CONN_RELAY)
		pump(w, c, d);
}
