/* log.c - formats a whole line and writes it with one write(2), so lines from
 * different workers never interleave. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

int log_verbose;

static _Thread_local struct log_limit *limits_listed; /* with a count to flush */

/* One line: level, the message (text, or fmt and ap), the count of those left out. A limit
 * (keep) gets a copy of the message, for a flushed count to repeat. */
static void log_line(const char *level, unsigned skipped, struct log_limit *keep,
                     const char *text_in, const char *fmt, va_list ap)
{
	static const char hex[] = "0123456789abcdef";
	/* line: room for a message whose client-sent part (a name of up to 255 bytes) is all
	 * escaped, four characters a byte: at 1100 a session line lost its result, bytes and
	 * duration to such a name. At most PIPE_BUF, so that one write to a pipe stays whole. */
	char text[1024], line[4096];
	struct timespec ts;
	struct tm tm;
	int m;
	size_t n;

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	n = (size_t)snprintf(
	    line, sizeof(line),
	    "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ ringsocks %s: ", tm.tm_year + 1900, tm.tm_mon + 1,
	    tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000, level);
	if (text_in) {
		snprintf(text, sizeof(text), "%s", text_in);
	} else {
		m = vsnprintf(text, sizeof(text), fmt, ap);
		if (m < 0)
			text[0] = 0;
	}
	if (keep)
		snprintf(keep->text, sizeof(keep->text), "%s", text);
	/* Messages carry what clients sent (a domain name may hold any byte): a newline or an
	 * escape sequence in one must not forge a line or reach a terminal. Such bytes, and the
	 * backslash that introduces the escapes, are written as \xNN. */
	for (const unsigned char *p = (const unsigned char *)text; *p && n < sizeof(line) - 5;
	     p++) {
		if (*p >= 0x20 && *p < 0x7f && *p != '\\') {
			line[n++] = (char)*p;
		} else {
			line[n++] = '\\';
			line[n++] = 'x';
			line[n++] = hex[*p >> 4];
			line[n++] = hex[*p & 15];
		}
	}
	if (skipped)
		n += (size_t)snprintf(line + n, sizeof(line) - n, " (and %u more like it since)",
		                      skipped);
	if (n > sizeof(line) - 1)
		n = sizeof(line) - 1;
	line[n++] = '\n';
	if (write(STDERR_FILENO, line, n) < 0) {
		/* nowhere left to report it */
	}
}

static uint64_t coarse_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* log_line with text instead of a format (no va_list to pass) */
static void log_text(const char *level, unsigned skipped, const char *text, ...)
{
	va_list ap;

	va_start(ap, text);
	log_line(level, skipped, NULL, text, NULL, ap);
	va_end(ap);
}

void log_msg(const char *level, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_line(level, 0, NULL, NULL, fmt, ap);
	va_end(ap);
}

void log_limited(struct log_limit *l, const char *level, const char *fmt, ...)
{
	uint64_t now = coarse_ms();
	va_list ap;

	if (l->next_ms && now < l->next_ms) {
		if (l->skipped++ == 0 && !l->listed) {
			l->listed = 1;
			l->next_listed = limits_listed;
			limits_listed = l;
		}
		return;
	}
	l->next_ms = now + LOG_LIMIT_MS;
	l->level = level;
	va_start(ap, fmt);
	log_line(level, l->skipped, l, NULL, fmt, ap);
	va_end(ap);
	l->skipped = 0;
}

void log_limited_flush(int all)
{
	struct log_limit **p = &limits_listed;
	uint64_t now;

	if (!*p)
		return;
	now = coarse_ms();
	while (*p) {
		struct log_limit *l = *p;
		if (l->skipped && now < l->next_ms && !all) {
			p = &l->next_listed; /* its period is not over */
			continue;
		}
		if (l->skipped) {
			/* said as if it were the line the next one would have been: the period
			 * starts again, so a place still says one line per LOG_LIMIT_MS at most */
			log_text(l->level, l->skipped, l->text);
			l->skipped = 0;
			l->next_ms = now + LOG_LIMIT_MS;
		}
		*p = l->next_listed; /* off the list until something is left out again */
		l->listed = 0;
		l->next_listed = NULL;
	}
}
