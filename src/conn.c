/* conn.c - slot allocation, generations and deadline lists for one worker's connections.
 * Everything is allocated once at start-up; nothing here allocates per connection. */
#include "conn.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int conn_table_init(struct conn_table *t, uint32_t n)
{
	memset(t, 0, sizeof(*t));
	/* calloc of a large block maps zero pages: untouched slots cost no memory */
	t->slots = calloc(n, sizeof(*t->slots));
	t->free_stack = malloc(sizeof(*t->free_stack) * n);
	if (!t->slots || !t->free_stack) {
		conn_table_free(t);
		return -ENOMEM;
	}
	t->size = n;
	/* push in reverse so slot 0 is handed out first */
	for (uint32_t i = 0; i < n; i++)
		t->free_stack[i] = n - 1 - i;
	t->nfree = n;
	for (int k = 0; k < TIMER__COUNT; k++)
		t->timers[k].head = t->timers[k].tail = CONN_NIL;
	return 0;
}

void conn_table_free(struct conn_table *t)
{
	free(t->slots);
	free(t->free_stack);
	t->slots = NULL;
	t->free_stack = NULL;
	t->size = t->nfree = 0;
}

struct conn *conn_alloc(struct conn_table *t)
{
	struct conn *c;
	uint32_t gen;

	if (t->nfree == 0)
		return NULL;
	c = &t->slots[t->free_stack[--t->nfree]];
	gen = c->gen;
	/* clear only the hot part: the buffers are written before they are read */
	memset(c, 0, offsetof(struct conn, hs));
	c->gen = gen;
	c->state = CONN_HANDSHAKE;
	c->cfd = c->tfd = -1;
	c->tprev = c->tnext = c->qnext = CONN_NIL;
	c->result = 0xFF;
	c->tx_base = c->txbuf;
	for (int d = 0; d < 2; d++)
		c->dir[d].pipe = -1;
	t->live++;
	return c;
}

void conn_release(struct conn_table *t, struct conn *c)
{
	conn_timer_clear(t, c);
	c->state = CONN_FREE;
	c->gen = (c->gen + 1) & 0xFFFFFFu;
	t->free_stack[t->nfree++] = conn_index(t, c);
	t->live--;
}

struct conn *conn_lookup(struct conn_table *t, uint64_t ud)
{
	uint32_t idx = conn_ud_idx(ud);
	struct conn *c;

	if (idx >= t->size)
		return NULL;
	c = &t->slots[idx];
	if (c->state == CONN_FREE || c->gen != conn_ud_gen(ud))
		return NULL;
	return c;
}

void conn_timer_clear(struct conn_table *t, struct conn *c)
{
	struct timer_list *l;

	if (c->timer == TIMER_NONE)
		return;
	l = &t->timers[c->timer];
	if (c->tprev != CONN_NIL)
		t->slots[c->tprev].tnext = c->tnext;
	else
		l->head = c->tnext;
	if (c->tnext != CONN_NIL)
		t->slots[c->tnext].tprev = c->tprev;
	else
		l->tail = c->tprev;
	c->tprev = c->tnext = CONN_NIL;
	c->timer = TIMER_NONE;
}

void conn_timer_set_at(struct conn_table *t, struct conn *c, enum timer_kind k,
                       uint64_t deadline_ms)
{
	struct timer_list *l = &t->timers[k];
	uint32_t idx = conn_index(t, c), after;

	conn_timer_clear(t, c);
	c->timer = (uint8_t)k;
	c->deadline_ms = deadline_ms;
	/* a list of one timeout stops at its tail at once */
	after = l->tail;
	while (after != CONN_NIL && t->slots[after].deadline_ms > deadline_ms)
		after = t->slots[after].tprev;
	c->tprev = after;
	c->tnext = after != CONN_NIL ? t->slots[after].tnext : l->head;
	if (c->tnext != CONN_NIL)
		t->slots[c->tnext].tprev = idx;
	else
		l->tail = idx;
	if (after != CONN_NIL)
		t->slots[after].tnext = idx;
	else
		l->head = idx;
}

void conn_timer_set(struct conn_table *t, struct conn *c, enum timer_kind k, uint64_t now_ms)
{
	conn_timer_set_at(t, c, k, now_ms + t->timers[k].timeout_ms);
}

struct conn *conn_timer_expired(struct conn_table *t, uint64_t now_ms)
{
	for (int k = 1; k < TIMER__COUNT; k++) {
		uint32_t h = t->timers[k].head;
		if (h != CONN_NIL && t->slots[h].deadline_ms <= now_ms)
			return &t->slots[h];
	}
	return NULL;
}

uint64_t conn_timer_next(const struct conn_table *t)
{
	uint64_t next = UINT64_MAX;
	for (int k = 1; k < TIMER__COUNT; k++) {
		uint32_t h = t->timers[k].head;
		if (h != CONN_NIL && t->slots[h].deadline_ms < next)
			next = t->slots[h].deadline_ms;
	}
	return next;
}
