/* closetrap: an LD_PRELOAD library that catches I/O on a descriptor after close(2).
 *
 * The workers share one descriptor table, and io_uring resolves an SQE's descriptor only when
 * the batch is submitted. A socket closed with close(2) while an SQE prepared for it waits in
 * the submission queue frees its number at once; another worker's accept or socket() can take
 * the number first, and the SQE then runs on that worker's connection (the cross-connection
 * leak fixed in 8f43e62). That needs two threads to meet in a window of microseconds, so a
 * test sees it rarely.
 *
 * Here every close(2) of a socket or a pipe puts a trap in the number's place, atomically
 * (dup3 replaces the open file): one end of a socketpair for a socket, a pipe end of the same
 * direction for a pipe. Whatever is sent or spliced to the number afterwards lands in the trap
 * instead of in a stranger's connection, every time, and is counted; a trap that can be read
 * holds a canary, and a read from the number takes some of it. A second close(2) of a trapped
 * number is a double close (the process cannot have been given the number again). Traps are
 * checked when they are recycled (the oldest of TRAP_MAX) and when the process exits; every
 * finding is a "closetrap: " line on stderr, and at exit a summary line is always written:
 *   closetrap: <n> descriptors trapped, <bytes> bytes sent to or read from them after
 *   close(2), <n> closed twice
 * The harness (RINGSOCKS_CLOSETRAP) preloads this library into ringsocks and fails a test
 * whose proxy reports a finding, or writes no summary. Test-only code, not part of ringsocks.
 * Descriptors closed by io_uring (IORING_OP_CLOSE) do not pass through here. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define TRAP_MAX 512 /* traps held at once; each holds the number and one more descriptor */

/* Put in a trap's receiving side: a read from the closed number takes some of it */
static const char canary[] = "closetrap-canary";
#define CANARY_LEN ((int)sizeof(canary) - 1)

struct trap {
	int num;   /* the closed number, now the trap */
	int check; /* the trap's other end: what was sent to num arrives here (sockets, pipe
	            * write ends), or num's canary is counted from here (pipe read ends) */
	int kind;
};

enum { TRAP_SOCKET, TRAP_PIPE_WRITE, TRAP_PIPE_READ };

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct trap traps[TRAP_MAX];
static unsigned head, len;
static unsigned long long trapped, leaked, twice;

static int sys_close(int fd)
{
	return (int)syscall(SYS_close, fd);
}

__attribute__((format(printf, 1, 2))) static void say(const char *fmt, ...)
{
	char msg[200];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (n > 0)
		(void)!write(2, msg, (size_t)n < sizeof(msg) ? (size_t)n : sizeof(msg) - 1);
}

static int queued(int fd)
{
	int n = 0;
	return ioctl(fd, FIONREAD, &n) == 0 ? n : 0;
}

/* What the trap caught; called with the lock held. */
static void check(const struct trap *t, const char *when)
{
	int sent = t->kind == TRAP_PIPE_READ ? 0 : queued(t->check);
	int read = 0;

	if (t->kind == TRAP_SOCKET)
		read = CANARY_LEN - queued(t->num);
	else if (t->kind == TRAP_PIPE_READ)
		read = CANARY_LEN - queued(t->check);
	if (sent > 0) {
		say("closetrap: %d bytes were sent to descriptor %d after it was closed with "
		    "close(2) (found %s)\n",
		    sent, t->num, when);
		leaked += (unsigned long long)sent;
	}
	if (read > 0) {
		say("closetrap: %d bytes were read from descriptor %d after it was closed with "
		    "close(2) (found %s)\n",
		    read, t->num, when);
		leaked += (unsigned long long)read;
	}
}

static void release(struct trap *t, const char *when)
{
	check(t, when);
	sys_close(t->num);
	sys_close(t->check);
}

/* A trap in fd's place: *plant goes to the number, *keep stays with us. */
static int make_trap(int fd, const struct stat *st, int *plant, int *keep, int *kind)
{
	int fds[2];

	if (S_ISSOCK(st->st_mode)) {
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) < 0)
			return -1;
		if (write(fds[1], canary, CANARY_LEN) != CANARY_LEN) {
			sys_close(fds[0]);
			sys_close(fds[1]);
			return -1;
		}
		*plant = fds[0];
		*keep = fds[1];
		*kind = TRAP_SOCKET;
		return 0;
	}
	if (!S_ISFIFO(st->st_mode))
		return -1;
	if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0)
		return -1;
	if ((fcntl(fd, F_GETFL) & O_ACCMODE) == O_WRONLY) {
		*plant = fds[1];
		*keep = fds[0];
		*kind = TRAP_PIPE_WRITE;
		return 0;
	}
	if (write(fds[1], canary, CANARY_LEN) != CANARY_LEN) {
		sys_close(fds[0]);
		sys_close(fds[1]);
		return -1;
	}
	*plant = fds[0];
	*keep = fds[1];
	*kind = TRAP_PIPE_READ;
	return 0;
}

int close(int fd)
{
	struct stat st;
	int plant, keep, kind;

	if (fd <= 2 || fstat(fd, &st) < 0)
		return sys_close(fd);
	pthread_mutex_lock(&lock);
	for (unsigned i = 0; i < len; i++) {
		if (traps[(head + i) % TRAP_MAX].num == fd) {
			/* the process cannot have been given this number again: closed twice */
			say("closetrap: descriptor %d was closed twice\n", fd);
			twice++;
			pthread_mutex_unlock(&lock);
			errno = EBADF;
			return -1;
		}
	}
	pthread_mutex_unlock(&lock);
	if (make_trap(fd, &st, &plant, &keep, &kind) < 0)
		return sys_close(fd);
	/* dup3 closes the old file and puts the trap in its place in one step: no other thread
	 * can take the number in between */
	if (dup3(plant, fd, O_CLOEXEC) < 0) {
		sys_close(plant);
		sys_close(keep);
		return sys_close(fd);
	}
	sys_close(plant);
	pthread_mutex_lock(&lock);
	if (len == TRAP_MAX) {
		release(&traps[head], "when the trap was recycled");
		head = (head + 1) % TRAP_MAX;
		len--;
	}
	traps[(head + len++) % TRAP_MAX] = (struct trap){.num = fd, .check = keep, .kind = kind};
	trapped++;
	pthread_mutex_unlock(&lock);
	return 0;
}

__attribute__((destructor)) static void closetrap_report(void)
{
	pthread_mutex_lock(&lock);
	for (unsigned i = 0; i < len; i++)
		check(&traps[(head + i) % TRAP_MAX], "at exit");
	say("closetrap: %llu descriptors trapped, %llu bytes sent to or read from them after "
	    "close(2), %llu closed twice\n",
	    trapped, leaked, twice);
	pthread_mutex_unlock(&lock);
}
