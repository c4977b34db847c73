/* main.c - parse the configuration, open one SO_REUSEPORT listener per worker and address,
 * start and pin the workers, and wait for SIGINT/SIGTERM to stop them. */
#include <ares.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <unistd.h>
#include <arpa/inet.h>

#include "config.h"
#include "log.h"
#include "worker.h"

#define LISTEN_BACKLOG 4096

static int open_listener(const struct config *cfg, const struct sockaddr_storage *ss, socklen_t len,
                         int cpu)
{
	int one = 1;
	int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -errno;
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0)
		goto fail;
	/* accepted sockets inherit TCP_NODELAY: one setsockopt here instead of one per client */
	if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0)
		goto fail;
	if (ss->ss_family == AF_INET6 &&
	    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) < 0)
		goto fail;
	/* a pinned worker's listener prefers connections whose packets its CPU handles
	 * (SO_REUSEPORT picks by SO_INCOMING_CPU since 6.1): the connection stays on one core */
	if (cpu >= 0 && setsockopt(fd, SOL_SOCKET, SO_INCOMING_CPU, &cpu, sizeof(cpu)) < 0)
		goto fail;
	/* accepted sockets inherit it; a listener on a loopback address has only local clients */
	if (worker_set_congestion(cfg, fd, (const struct sockaddr *)ss) < 0)
		goto fail;
	if (worker_set_keepalive(cfg, fd) < 0)
		goto fail;
	if (bind(fd, (const struct sockaddr *)ss, len) < 0 || listen(fd, LISTEN_BACKLOG) < 0)
		goto fail;
	return fd;
fail:;
	int err = -errno;
	close(fd);
	return err;
}

static const char *addr_text(const struct sockaddr_storage *ss, char *buf, size_t cap)
{
	char host[INET6_ADDRSTRLEN];
	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
		inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
		snprintf(buf, cap, "%s:%u", host, ntohs(a->sin_port));
	} else {
		const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
		inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
		snprintf(buf, cap, "[%s]:%u", host, ntohs(a->sin6_port));
	}
	return buf;
}

static uint16_t *port_of(struct sockaddr_storage *ss)
{
	if (ss->ss_family == AF_INET)
		return &((struct sockaddr_in *)ss)->sin_port;
	return &((struct sockaddr_in6 *)ss)->sin6_port;
}

/* A socket of type bound to ss (IPv6-only, as the workers' are; a stream one with
 * SO_REUSEADDR, so that TIME_WAIT leftovers do not count), with SO_REUSEPORT if asked.
 * Returns it, or -errno. */
static int bind_socket(const struct sockaddr_storage *ss, socklen_t len, int type, int reuseport)
{
	int one = 1, err, fd = socket(ss->ss_family, type | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -errno;
	if ((type == SOCK_STREAM &&
	     setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0) ||
	    (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0) ||
	    (ss->ss_family == AF_INET6 &&
	     setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) < 0) ||
	    bind(fd, (const struct sockaddr *)ss, len) < 0) {
		err = -errno;
		close(fd);
		return err;
	}
	return fd;
}

/* Every worker's socket joins one SO_REUSEPORT group per address, and the kernel lets any
 * process of the same user join such a group: a second ringsocks on our port would start
 * without a word and take its share of our clients. So each fixed address is first bound by
 * a socket without SO_REUSEPORT, which fails (EADDRINUSE) where anything listens or is bound
 * there already, and is closed again before the workers' sockets take the address. Two
 * instances started at the same instant could still both pass. */
static int check_not_in_use(const struct sockaddr_storage *ss, socklen_t len, int type)
{
	int fd;

	if (*port_of((struct sockaddr_storage *)ss) == 0)
		return 0; /* the kernel picks a free one */
	fd = bind_socket(ss, len, type, 0);
	if (fd < 0)
		return fd;
	close(fd);
	return 0;
}

/* Port 0 asks the kernel for a port: every worker's socket must then share the one the first
 * got, or each would listen on a port of its own and the log would say 0. */
static int take_bound_port(struct sockaddr_storage *want, int fd)
{
	struct sockaddr_storage got;
	socklen_t len = sizeof(got);

	if (getsockname(fd, (struct sockaddr *)&got, &len) < 0)
		return -errno;
	*port_of(want) = *port_of(&got);
	return 0;
}

/* tunnel -U on port 0: the workers bind their UDP sockets themselves, in their own threads, so
 * the port is taken here first by a socket of the same SO_REUSEPORT group, kept until they
 * have bound theirs. Returns the socket, -1 for a fixed port, or -errno. */
static int reserve_udp_port(struct sockaddr_storage *ss, socklen_t len)
{
	int fd, err;

	if (*port_of(ss) != 0)
		return -1;
	fd = bind_socket(ss, len, SOCK_DGRAM, 1);
	if (fd < 0)
		return fd;
	err = take_bound_port(ss, fd);
	if (err < 0) {
		close(fd);
		return err;
	}
	return fd;
}

/* An upstream (or a tunnel's --via) that is one of our own listen addresses sends every
 * request back to us: each client would open connections to ourselves until descriptors ran
 * out. Only literal addresses can be checked here; a name is not resolved at start. */
static int upstream_is_self(const struct config *cfg, const struct config_upstream *u)
{
	struct sockaddr_storage ss;
	socklen_t len;

	if (socks5_addr_to_sockaddr(&u->addr, &ss, &len) < 0)
		return 0;
	for (int l = 0; l < cfg->nlisten; l++) {
		const struct sockaddr_storage *a = &cfg->listen[l];
		const struct sockaddr *la = (const struct sockaddr *)a,
		                      *ua = (struct sockaddr *)&ss;
		int v4 = ss.ss_family == AF_INET;
		const void *lip = v4 ? (const void *)&((const struct sockaddr_in *)a)->sin_addr
		                     : (const void *)&((const struct sockaddr_in6 *)a)->sin6_addr;
		const void *uip = v4 ? (const void *)&((const struct sockaddr_in *)&ss)->sin_addr
		                     : (const void *)&((const struct sockaddr_in6 *)&ss)->sin6_addr;

		if (a->ss_family != ss.ss_family ||
		    *port_of((struct sockaddr_storage *)a) != *port_of(&ss))
			continue;
		/* a wildcard listener takes loopback too (::ffff:127.x is not ::'s: IPv6-only) */
		if (memcmp(lip, uip, v4 ? 4 : 16) == 0 ||
		    (addr_is_any(la) && (v4 ? addr_is_loopback(ua)
		                            : IN6_IS_ADDR_LOOPBACK((const struct in6_addr *)uip))))
			return 1;
	}
	return 0;
}

static void raise_nofile(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
			log_warn("cannot raise RLIMIT_NOFILE: %s", strerror(errno));
	}
}

/* With no --congestion, sockets whose peer is on this machine are not paced: when the
 * system's algorithm is bbr (which paces every socket, loopback included, with an hrtimer per
 * burst: there is no bottleneck to pace for, only CPU), they get cubic, or reno where cubic
 * cannot be had (reno is always built in and allowed). perf/RESULTS.md has the measurements. */
static void pick_loopback_congestion(struct config *cfg)
{
	static const char *const unpaced[] = {"cubic", "reno"};
	char sys[32] = "";
	FILE *f;
	int fd;

	if (cfg->congestion[0] || cfg->congestion_system)
		return;
	f = fopen("/proc/sys/net/ipv4/tcp_congestion_control", "r");
	if (f) {
		if (!fgets(sys, sizeof(sys), f))
			sys[0] = 0;
		fclose(f);
	}
	if (strncmp(sys, "bbr", 3) != 0)
		return; /* not a pacing one: nothing to change */
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return;
	for (size_t i = 0; i < sizeof(unpaced) / sizeof(unpaced[0]); i++) {
		if (setsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, unpaced[i], strlen(unpaced[i])) ==
		    0) {
			snprintf(cfg->loopback_cc, sizeof(cfg->loopback_cc), "%s", unpaced[i]);
			break;
		}
	}
	close(fd);
}

/* --congestion is checked once here, so that a name the kernel does not know or does not let
 * this user choose stops the start with a clear message instead of failing per connection. */
static int check_congestion(const struct config *cfg)
{
	char allowed[256] = "";
	int fd, ret;
	FILE *f;

	if (!cfg->congestion[0])
		return 0;
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return 0; /* the listeners will report it */
	ret = worker_set_congestion(cfg, fd, NULL);
	close(fd);
	if (ret == 0)
		return 0;
	f = fopen(ret == -EPERM ? "/proc/sys/net/ipv4/tcp_allowed_congestion_control"
	                        : "/proc/sys/net/ipv4/tcp_available_congestion_control",
	          "r");
	if (f) {
		if (!fgets(allowed, sizeof(allowed), f))
			allowed[0] = 0;
		allowed[strcspn(allowed, "\n")] = 0;
		fclose(f);
	}
	fprintf(stderr, "ringsocks: --congestion %s: %s (%s here: %s)\n", cfg->congestion,
	        ret == -EPERM    ? "not allowed for this user"
	        : ret == -ENOENT ? "no such algorithm"
	                         : strerror(-ret),
	        ret == -EPERM ? "allowed" : "available", allowed[0] ? allowed : "unknown");
	return -1;
}

int main(int argc, char **argv)
{
	struct config cfg;
	char err[256], text[INET6_ADDRSTRLEN + 16];
	struct worker *workers = NULL;
	pthread_barrier_t ready;
	sigset_t sigs;
	int ret, sig, status = 0, started = 0;
	unsigned long nofile;
	int udp_hold[CONFIG_MAX_LISTEN];

	for (int l = 0; l < CONFIG_MAX_LISTEN; l++)
		udp_hold[l] = -1;
	ret = config_parse(&cfg, argc, argv, err, sizeof(err));
	if (ret == 1)
		return 0;
	if (ret < 0) {
		fprintf(stderr, "ringsocks: %s\n", err);
		config_free(&cfg); /* users read before the error */
		return 2;
	}
	if (check_congestion(&cfg) < 0) {
		config_free(&cfg);
		return 2;
	}
	for (int i = 0; i < cfg.nupstreams; i++) {
		if (upstream_is_self(&cfg, &cfg.upstreams[i])) {
			fprintf(stderr, "ringsocks: %s %s is this proxy's own listen address\n",
			        cfg.mode == MODE_TUNNEL ? "--via" : "--upstream",
			        cfg.upstreams[i].text);
			config_free(&cfg);
			return 2;
		}
	}
	pick_loopback_congestion(&cfg);
	log_verbose = cfg.verbose;
	raise_nofile();
	nofile = worker_fd_limit();
	/* a splice into a socket the peer has closed raises SIGPIPE: take EPIPE instead */
	signal(SIGPIPE, SIG_IGN);
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGUSR1);               /* each worker logs its counters */
	sigaddset(&sigs, SIGHUP);                /* no configuration to reload: logged, ignored */
	pthread_sigmask(SIG_BLOCK, &sigs, NULL); /* inherited by the workers */

	if (ares_library_init(ARES_LIB_INIT_ALL) != ARES_SUCCESS) {
		log_err("c-ares initialisation failed");
		config_free(&cfg);
		return 1;
	}
	workers = calloc((size_t)cfg.workers, sizeof(*workers));
	if (!workers) {
		log_err("out of memory");
		status = 1;
		goto out;
	}
	for (int i = 0; i < cfg.workers; i++) {
		struct worker *w = &workers[i];
		w->id = i;
		w->cfg = &cfg;
		w->cpu = cfg.ncpus ? cfg.cpus[i] : -1;
		w->wake_fd = -1;
		for (int l = 0; l < cfg.nlisten; l++)
			w->listen_fd[l] = -1;
	}
	for (int l = 0; l < cfg.nlisten + cfg.nudp; l++) {
		int udp = l >= cfg.nlisten;
		const struct sockaddr_storage *ss =
		    udp ? &cfg.udp_listen[l - cfg.nlisten] : &cfg.listen[l];
		ret = check_not_in_use(
		    ss, udp ? cfg.udp_listen_len[l - cfg.nlisten] : cfg.listen_len[l],
		    udp ? SOCK_DGRAM : SOCK_STREAM);
		if (ret < 0) {
			log_err("cannot listen on %s%s: %s", addr_text(ss, text, sizeof(text)),
			        udp ? "/udp" : "", strerror(-ret));
			status = 1;
			goto out;
		}
	}
	for (int i = 0; i < cfg.workers; i++) {
		struct worker *w = &workers[i];
		w->wake_fd = eventfd(0, EFD_CLOEXEC);
		if (w->wake_fd < 0) {
			log_err("eventfd: %s", strerror(errno));
			status = 1;
			goto out;
		}
		for (int l = 0; l < cfg.nlisten; l++) {
			int fd = open_listener(&cfg, &cfg.listen[l], cfg.listen_len[l], w->cpu);
			if (fd < 0) {
				log_err("cannot listen on %s: %s",
				        addr_text(&cfg.listen[l], text, sizeof(text)),
				        strerror(-fd));
				status = 1;
				goto out;
			}
			w->listen_fd[l] = fd;
			if (*port_of(&cfg.listen[l]) == 0 &&
			    (ret = take_bound_port(&cfg.listen[l], fd)) < 0) {
				log_err("getsockname: %s", strerror(-ret));
				status = 1;
				goto out;
			}
		}
		w->nlisten = cfg.nlisten;
	}
	for (int l = 0; l < cfg.nudp; l++) {
		udp_hold[l] = reserve_udp_port(&cfg.udp_listen[l], cfg.udp_listen_len[l]);
		if (udp_hold[l] < -1) {
			log_err("tunnel -U: cannot bind %s/udp: %s",
			        addr_text(&cfg.udp_listen[l], text, sizeof(text)),
			        strerror(-udp_hold[l]));
			status = 1;
			goto out;
		}
	}

	pthread_barrier_init(&ready, NULL, (unsigned)cfg.workers + 1);
	for (int i = 0; i < cfg.workers; i++) {
		workers[i].ready = &ready;
		ret = pthread_create(&workers[i].thread, NULL, worker_main, &workers[i]);
		if (ret) {
			log_err("pthread_create: %s", strerror(ret));
			/* the barrier cannot complete without it: this is fatal */
			exit(1);
		}
		started++;
	}
	pthread_barrier_wait(&ready);
	for (int l = 0; l < cfg.nudp; l++) { /* the workers have bound theirs by now */
		if (udp_hold[l] >= 0)
			close(udp_hold[l]);
		udp_hold[l] = -1;
	}
	for (int i = 0; i < cfg.workers; i++)
		if (workers[i].start_err < 0)
			status = 1;
	if (status == 0) {
		for (int l = 0; l < cfg.nlisten; l++)
			log_msg("info", "listening on %s (%d worker%s%s%s)",
			        addr_text(&cfg.listen[l], text, sizeof(text)), cfg.workers,
			        cfg.workers == 1 ? "" : "s",
			        cfg.nusers ? ", username/password required" : "",
			        cfg.ncpus ? ", pinned" : "");
		for (int l = 0; l < cfg.nudp; l++)
			log_msg("info", "listening on %s/udp (%d worker%s%s)",
			        addr_text(&cfg.udp_listen[l], text, sizeof(text)), cfg.workers,
			        cfg.workers == 1 ? "" : "s", cfg.ncpus ? ", pinned" : "");
		log_msg("info",
		        "descriptor limit %lu: room for %ld connections, a UDP association "
		        "counting as two (it holds up to four descriptors)",
		        nofile, worker_fd_pairs_max);
		for (;;) {
			if (sigwait(&sigs, &sig) != 0)
				continue;
			if (sig == SIGHUP) {
				log_msg("info",
				        "SIGHUP ignored: there is no configuration to reload "
				        "(restart to change settings)");
				continue;
			}
			if (sig != SIGUSR1)
				break;
			for (int i = 0; i < cfg.workers; i++)
				worker_report(&workers[i]);
		}
		log_msg("info", "signal %d: stopping", sig);
	}
	for (int i = 0; i < started; i++)
		worker_wake(&workers[i]);
	for (int i = 0; i < started; i++) {
		pthread_join(workers[i].thread, NULL);
		if (workers[i].run_err < 0)
			status = 1;
	}
	pthread_barrier_destroy(&ready);
out:
	for (int l = 0; l < cfg.nudp; l++)
		if (udp_hold[l] >= 0)
			close(udp_hold[l]);
	for (int i = 0; workers && i < cfg.workers; i++) {
		for (int l = 0; l < cfg.nlisten; l++)
			if (workers[i].listen_fd[l] >= 0)
				close(workers[i].listen_fd[l]);
		if (workers[i].wake_fd >= 0)
			close(workers[i].wake_fd);
	}
	free(workers);
	ares_library_cleanup();
	config_free(&cfg);
	return status;
}
