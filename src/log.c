/* log.c - formats a whole line and writes it with one write(2), so lines from
 * different workers never interleave. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

int log_verbose;

static void log_vmsg(const char *level, unsigned skipped, const char *fmt, va_list ap)
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
	m = vsnprintf(text, sizeof(text), fmt, ap);
	if (m < 0)
		text[0] = 0;
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

void log_msg(const char *level, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vmsg(level, 0, fmt, ap);
	va_end(ap);
}

void log_limited(struct log_limit *l, const char *level, const char *fmt, ...)
{
	struct timespec ts;
	uint64_t now;
	va_list ap;

	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	now = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
	if (l->next_ms && now < l->next_ms) {
		l->skipped++;
		return;
	}
	l->next_ms = now + LOG_LIMIT_MS;
	va_start(ap, fmt);
	log_vmsg(level, l->skipped, fmt, ap);
	va_end(ap);
	l->skipped = 0;
}
