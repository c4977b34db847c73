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
	t->step.head = t->step.tail = CONN_NIL;
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
	c->tprev = c->tnext = c->qnext = c->sprev = c->snext = CONN_NIL;
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
	c->gen = conn_gen_next(c->gen);
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

/* Off its timer list; the step list is left as it is. */
static void timer_unlink(struct conn_table *t, struct conn *c)
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

void conn_timer_clear(struct conn_table *t, struct conn *c)
{
	conn_step_clear(t, c); /* the step is part of the connect deadline */
	timer_unlink(t, c);
}

void conn_timer_move(struct conn_table *t, struct conn *c, enum timer_kind k, uint64_t now_ms)
{
	struct timer_list *l = &t->timers[k];
	uint32_t idx = conn_index(t, c);

	timer_unlink(t, c);
	c->timer = (uint8_t)k;
	c->deadline_ms = now_ms + l->timeout_ms;
	c->tnext = CONN_NIL;
	c->tprev = l->tail;
	if (l->tail != CONN_NIL)
		t->slots[l->tail].tnext = idx;
	else
		l->head = idx;
	l->tail = idx;
}

void conn_timer_set(struct conn_table *t, struct conn *c, enum timer_kind k, uint64_t now_ms)
{
	conn_step_clear(t, c);
	conn_timer_move(t, c, k, now_ms);
}

void conn_step_clear(struct conn_table *t, struct conn *c)
{
	if (!c->on_step)
		return;
	if (c->sprev != CONN_NIL)
		t->slots[c->sprev].snext = c->snext;
	else
		t->step.head = c->snext;
	if (c->snext != CONN_NIL)
		t->slots[c->snext].sprev = c->sprev;
	else
		t->step.tail = c->sprev;
	c->sprev = c->snext = CONN_NIL;
	c->on_step = 0;
}

void conn_step_set(struct conn_table *t, struct conn *c, uint64_t now_ms)
{
	uint32_t idx = conn_index(t, c);

	conn_step_clear(t, c);
	c->on_step = 1;
	c->step_ms = now_ms + t->step.timeout_ms;
	c->snext = CONN_NIL;
	c->sprev = t->step.tail;
	if (t->step.tail != CONN_NIL)
		t->slots[t->step.tail].snext = idx;
	else
		t->step.head = idx;
	t->step.tail = idx;
}

struct conn *conn_step_expired(struct conn_table *t, uint64_t now_ms)
{
	uint32_t h = t->step.head;
	return h != CONN_NIL && t->slots[h].step_ms <= now_ms ? &t->slots[h] : NULL;
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
	if (t->step.head != CONN_NIL && t->slots[t->step.head].step_ms < next)
		next = t->slots[t->step.head].step_ms;
	return next;
}
