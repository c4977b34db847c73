/* test_conn.c - the connection table: slot reuse, generations, stale completions, deadlines. */
#include <criterion/criterion.h>

#include "conn.h"

static struct conn_table t;

static void setup(void)
{
	cr_assert_eq(conn_table_init(&t, 4), 0);
}
static void teardown(void)
{
	conn_table_free(&t);
}

TestSuite(conn, .init = setup, .fini = teardown);

Test(conn, hands_out_every_slot_then_null)
{
	struct conn *c[4];
	for (int i = 0; i < 4; i++) {
		c[i] = conn_alloc(&t);
		cr_assert_not_null(c[i]);
		cr_assert_eq(c[i]->state, CONN_HANDSHAKE);
		cr_assert_eq(c[i]->cfd, -1);
		cr_assert_eq(c[i]->dir[0].pipe, -1);
	}
	cr_assert_null(conn_alloc(&t));
	cr_assert_eq(t.live, 4);
	conn_release(&t, c[2]);
	cr_assert_eq(conn_alloc(&t), c[2], "a released slot is reused first (LIFO)");
}

Test(conn, stale_user_data_is_dropped_after_release)
{
	struct conn *c = conn_alloc(&t);
	uint32_t idx = conn_index(&t, c);
	uint64_t ud = conn_ud(OP_RECV, c->gen, idx);

	cr_assert_eq(conn_lookup(&t, ud), c);
	conn_release(&t, c);
	cr_assert_null(conn_lookup(&t, ud), "free slot");
	struct conn *again = conn_alloc(&t);
	cr_assert_eq(again, c);
	cr_assert_null(conn_lookup(&t, ud), "new tenant has a new generation");
	cr_assert_eq(conn_lookup(&t, conn_ud(OP_RECV, again->gen, idx)), again);
}

Test(conn, user_data_round_trips_fields)
{
	uint64_t ud = conn_ud(OP_POLLOUT_T, 0xABCDEF, 123456);
	cr_assert_eq(conn_ud_op(ud), OP_POLLOUT_T);
	cr_assert_eq(conn_ud_gen(ud), 0xABCDEF);
	cr_assert_eq(conn_ud_idx(ud), 123456);
	cr_assert_null(conn_lookup(&t, conn_ud(OP_RECV, 0, 99)), "index out of range");
}

Test(conn, generation_wraps_within_24_bits)
{
	struct conn *c = conn_alloc(&t);
	c->gen = 0xFFFFFF;
	conn_release(&t, c);
	cr_assert_eq(c->gen, 0);
}

/* A DNS watch (dns.c) keeps its generation as a slot does and compares it with the one its
 * poll's user_data brings back: past 2^24 a generation that did not wrap would never match
 * again, and every poll of that watch would be taken for a stale one. */
Test(conn, a_generation_wrapped_at_2_24_still_matches_its_user_data)
{
	uint32_t held = (1u << 24) - 2, prev;

	cr_assert_eq(conn_gen_next((1u << 24) - 1), 0, "2^24 - 1 is followed by 0");
	cr_assert_eq(conn_gen_next(0), 1);
	for (int i = 0; i < 4; i++) { /* to 2^24 - 1, 0, 1, 2 */
		uint64_t ud;

		prev = held;
		held = conn_gen_next(held);
		cr_assert_lt(held, 1u << 24, "generation %u has more than 24 bits", held);
		ud = conn_ud(OP_DNS_POLL, held, 63);
		cr_assert_eq(conn_ud_gen(ud), held, "the watch's own poll (generation %u)", held);
		cr_assert_eq(conn_ud_idx(ud), 63);
		cr_assert_eq(conn_ud_op(ud), OP_DNS_POLL);
		cr_assert_neq(conn_ud_gen(conn_ud(OP_DNS_POLL, prev, 63)), held,
		              "a poll of generation %u is stale at %u", prev, held);
	}
	cr_assert_eq(held, 2);
}

Test(conn, deadlines_expire_in_order_and_clear)
{
	t.timers[TIMER_HANDSHAKE].timeout_ms = 100;
	t.timers[TIMER_CONNECT].timeout_ms = 50;
	struct conn *a = conn_alloc(&t), *b = conn_alloc(&t), *c = conn_alloc(&t);

	conn_timer_set(&t, a, TIMER_HANDSHAKE, 1000); /* 1100 */
	conn_timer_set(&t, b, TIMER_HANDSHAKE, 1010); /* 1110 */
	conn_timer_set(&t, c, TIMER_CONNECT, 1040);   /* 1090 */
	cr_assert_eq(conn_timer_next(&t), 1090);
	cr_assert_null(conn_timer_expired(&t, 1089));
	cr_assert_eq(conn_timer_expired(&t, 1095), c);
	conn_timer_clear(&t, c);
	cr_assert_null(conn_timer_expired(&t, 1095));
	cr_assert_eq(conn_timer_expired(&t, 1105), a);
	/* moving a to another list keeps b's place */
	conn_timer_set(&t, a, TIMER_CONNECT, 1105);
	cr_assert_eq(conn_timer_expired(&t, 1112), b);
	conn_release(&t, b); /* release unlinks too */
	cr_assert_null(conn_timer_expired(&t, 1112));
	cr_assert_eq(conn_timer_next(&t), 1155);
	conn_timer_clear(&t, a);
	cr_assert_eq(conn_timer_next(&t), UINT64_MAX);
}

Test(conn, a_connect_step_runs_beside_the_connect_deadline)
{
	t.timers[TIMER_CONNECT].timeout_ms = 10000;
	t.step.timeout_ms = 2000;
	struct conn *a = conn_alloc(&t), *b = conn_alloc(&t);

	conn_timer_set(&t, a, TIMER_CONNECT, 1000); /* 11000 */
	conn_step_set(&t, a, 1000);                 /* 3000 */
	conn_timer_set(&t, b, TIMER_CONNECT, 1500); /* 11500 */
	conn_step_set(&t, b, 1500);                 /* 3500 */
	cr_assert_eq(conn_timer_next(&t), 3000);
	cr_assert_null(conn_step_expired(&t, 2999));
	cr_assert_eq(conn_step_expired(&t, 3000), a);
	/* the next address's step: a moves behind b, its connect deadline stays */
	conn_step_set(&t, a, 3000); /* 5000 */
	cr_assert_eq(conn_step_expired(&t, 4000), b);
	conn_step_clear(&t, b);
	cr_assert_null(conn_step_expired(&t, 4000));
	cr_assert_eq(conn_timer_next(&t), 5000);
	/* the last address: no step, the connect deadline is what is left */
	conn_step_clear(&t, a);
	cr_assert_eq(conn_timer_next(&t), 11000);
	cr_assert_eq(conn_timer_expired(&t, 11000), a);
	/* clearing the timer takes a connection off the step list too */
	conn_step_set(&t, b, 4000);
	conn_timer_clear(&t, b);
	cr_assert_null(conn_step_expired(&t, 1 << 30));
	conn_release(&t, a);
	conn_step_set(&t, b, 5000);
	conn_release(&t, b); /* release unlinks both */
	cr_assert_eq(conn_timer_next(&t), UINT64_MAX);
}
