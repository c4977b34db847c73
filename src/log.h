/* log.h - one-line messages to stderr, safe from any thread. Errors always, info at -v. */
#ifndef RINGSOCKS_LOG_H
#define RINGSOCKS_LOG_H

extern int log_verbose;

void log_msg(const char *level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_err(...)  log_msg("error", __VA_ARGS__)
#define log_warn(...) log_msg("warn", __VA_ARGS__)
#define log_info(...)                                                                              \
	do {                                                                                       \
		if (log_verbose)                                                                   \
			log_msg("info", __VA_ARGS__);                                              \
	} while (0)

#endif
