/* log.c - formats a whole line and writes it with one write(2), so lines from
 * different workers never interleave. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

int log_verbose;

void log_msg(const char *level, const char *fmt, ...)
{
	static const char hex[] = "0123456789abcdef";
	char text[1024], line[1024];
	struct timespec ts;
	struct tm tm;
	va_list ap;
	int m;
	size_t n;

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	n = (size_t)snprintf(
	    line, sizeof(line),
	    "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ ringsocks %s: ", tm.tm_year + 1900, tm.tm_mon + 1,
	    tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000, level);
	va_start(ap, fmt);
	m = vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
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
	line[n++] = '\n';
	if (write(STDERR_FILENO, line, n) < 0) {
		/* nowhere left to report it */
	}
}
