/* log.h - one-line messages to stderr, safe from any thread. Errors always, info at -v. */
#ifndef RINGSOCKS_LOG_H
#define RINGSOCKS_LOG_H

#include <stdarg.h>
#include <stdint.h>

extern int log_verbose;

void log_msg(const char *level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A message that clients can cause at any rate (an upstream down, a resolver that does not
 * answer, a full --max-conns): one line per LOG_LIMIT_MS for each place and thread, the
 * next line counting those left out; log_limited_flush writes that count once the period is
 * over, should no next line come. A log_limit is used by one thread only, and lives as long
 * as that thread calls log_limited_flush. */
#define LOG_LIMIT_MS   10000
#define LOG_LIMIT_TEXT 512 /* what a flushed count repeats of the last line */
struct log_limit {
	uint64_t next_ms;
	unsigned skipped;
	uint8_t listed;                /* on its thread's list of counts to flush */
	struct log_limit *next_listed; /* that list */
	const char *level;
	char text[LOG_LIMIT_TEXT]; /* the message of the last line written */
};
void log_limited(struct log_limit *l, const char *level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Write the counts of this thread's limits whose period is over (all of them: every count
 * left, as the thread ends): "<the last line's message> (and N more like it since)", so that
 * a burst that stopped is counted too. Cheap when there is nothing to write (the workers call
 * it every loop turn). */
void log_limited_flush(int all);

#define log_err(...)  log_msg("error", __VA_ARGS__)
#define log_warn(...) log_msg("warn", __VA_ARGS__)
#define log_info(...)                                                                              \
	do {                                                                                       \
		if (log_verbose)                                                                   \
			log_msg("info", __VA_ARGS__);                                              \
	} while (0)
/* log_limited with a limit of the call site's own (per thread) */
#define log_at_limited(level, ...)                                                                 \
	do {                                                                                       \
		static _Thread_local struct log_limit log_limit_;                                  \
		log_limited(&log_limit_, level, __VA_ARGS__);                                      \
	} while (0)
#define log_warn_limited(...) log_at_limited("warn", __VA_ARGS__)
#define log_err_limited(...)  log_at_limited("error", __VA_ARGS__)

#endif
