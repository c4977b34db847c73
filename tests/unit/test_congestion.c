/* Which peers count as on this machine for the default congestion control (--congestion). */
#include <arpa/inet.h>
#include <netinet/tcp.h>
#include <unistd.h>
#include <criterion/criterion.h>
#include <string.h>

#include "config.h"
#include "worker.h"

static int loopback4(const char *ip)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(80)};
	cr_assert_eq(inet_pton(AF_INET, ip, &a.sin_addr), 1, "%s", ip);
	return addr_is_loopback((struct sockaddr *)&a);
}

static int loopback6(const char *ip)
{
	struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons(80)};
	cr_assert_eq(inet_pton(AF_INET6, ip, &a.sin6_addr), 1, "%s", ip);
	return addr_is_loopback((struct sockaddr *)&a);
}

Test(congestion, loopback_addresses)
{
	cr_assert(loopback4("127.0.0.1"));
	cr_assert(loopback4("127.255.255.254"));
	cr_assert(loopback4("127.3.2.1"));
	cr_assert_not(loopback4("126.255.255.255"));
	cr_assert_not(loopback4("128.0.0.1"));
	cr_assert_not(loopback4("10.0.0.127"));
	cr_assert_not(loopback4("0.0.0.0"), "the wildcard address is not a peer on loopback");
	cr_assert(loopback6("::1"));
	cr_assert(loopback6("::ffff:127.0.0.1"));
	cr_assert_not(loopback6("::ffff:10.1.2.3"));
	cr_assert_not(loopback6("::"));
	cr_assert_not(loopback6("::2"));
	cr_assert_not(loopback6("fe80::1"));
	cr_assert_not(loopback6("2001:db8::7f00:1"));
	struct sockaddr_un {
		sa_family_t f;
		char p[8];
	} u = {.f = AF_UNIX};
	cr_assert_not(addr_is_loopback((struct sockaddr *)&u));
}

/* A socket's congestion control as the kernel reports it. */
static void cc_of(int fd, char *out, size_t cap)
{
	socklen_t len = (socklen_t)cap;
	memset(out, 0, cap);
	cr_assert_eq(getsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, out, &len), 0);
}

Test(congestion, only_loopback_peers_get_the_loopback_choice)
{
	struct config cfg;
	struct sockaddr_in lo = {.sin_family = AF_INET}, far = {.sin_family = AF_INET};
	char before[16], after[16];
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	cr_assert_geq(fd, 0);
	inet_pton(AF_INET, "127.0.0.1", &lo.sin_addr);
	inet_pton(AF_INET, "192.0.2.1", &far.sin_addr);
	memset(&cfg, 0, sizeof(cfg));
	strcpy(cfg.loopback_cc, "reno"); /* always built in and allowed */
	cc_of(fd, before, sizeof(before));
	cr_assert_eq(worker_set_congestion(&cfg, fd, (struct sockaddr *)&far), 0);
	cc_of(fd, after, sizeof(after));
	cr_assert_str_eq(after, before, "a peer elsewhere keeps the system's");
	cr_assert_eq(worker_set_congestion(&cfg, fd, NULL), 0);
	cc_of(fd, after, sizeof(after));
	cr_assert_str_eq(after, before, "an unknown peer keeps the system's");
	cr_assert_eq(worker_set_congestion(&cfg, fd, (struct sockaddr *)&lo), 0);
	cc_of(fd, after, sizeof(after));
	cr_assert_str_eq(after, "reno");
	cfg.loopback_cc[0] = 0; /* --congestion system, or a system that does not pace */
	cr_assert_eq(worker_set_congestion(&cfg, fd, (struct sockaddr *)&lo), 0);
	cc_of(fd, after, sizeof(after));
	cr_assert_str_eq(after, "reno", "nothing set");
	close(fd);
}
