/* test_config.c - command-line parsing: defaults, every flag, and exact rejections. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"

static int parse(struct config *cfg, char *err, int argc, char **argv)
{
	return config_parse(cfg, argc, argv, err, 256);
}

/* Parses argv[0..argc) (a copy: getopt permutes it) and expects a refusal naming want. */
static void assert_refused(int argc, char *const *argv, const char *want, size_t i)
{
	struct config cfg;
	char err[256] = "";
	char *copy[16] = {0};

	cr_assert_lt((size_t)argc, sizeof(copy) / sizeof(copy[0]));
	memcpy(copy, argv, sizeof(char *) * (size_t)argc);
	cr_assert_eq(parse(&cfg, err, argc, copy), -EINVAL, "case %zu", i);
	cr_assert_not_null(strstr(err, want), "case %zu: %s", i, err);
	config_free(&cfg);
}

#define ARGS(...)  ((char *[]){"ringsocks", __VA_ARGS__, NULL})
#define NARGS(...) ((int)(sizeof((char *[]){"ringsocks", __VA_ARGS__}) / sizeof(char *)))

/* --cpus takes only CPUs the process may run on: tests that pin to 0 and 1 need both. */
static void skip_unless_cpus_0_and_1(void)
{
	cpu_set_t set;
	if (sched_getaffinity(0, sizeof(set), &set) < 0 || !CPU_ISSET(0, &set) ||
	    !CPU_ISSET(1, &set))
		cr_skip_test("needs CPUs 0 and 1");
}

Test(config, defaults_listen_on_localhost_1080)
{
	struct config cfg;
	char err[256];
	char *argv[] = {"ringsocks", NULL};
	cr_assert_eq(parse(&cfg, err, 1, argv), 0);
	cr_assert_eq(cfg.nlisten, 1);
	struct sockaddr_in *a = (struct sockaddr_in *)&cfg.listen[0];
	cr_assert_eq(a->sin_family, AF_INET);
	cr_assert_eq(ntohs(a->sin_port), 1080);
	cr_assert_eq(a->sin_addr.s_addr, htonl(INADDR_LOOPBACK));
	cr_assert_geq(cfg.workers, 1);
	cr_assert_float_eq(cfg.handshake_timeout, 10.0, 1e-9);
	cr_assert_float_eq(cfg.connect_timeout, 10.0, 1e-9);
	cr_assert_eq(cfg.nusers, 0);
	cr_assert_eq(cfg.max_conns, 0);
	cr_assert_str_empty(cfg.resolver);
	cr_assert_eq(cfg.relay_mode, RELAY_HYBRID);
	config_free(&cfg);
}

Test(config, parses_every_flag)
{
	skip_unless_cpus_0_and_1();
	struct config cfg;
	char err[256];
	char **argv = ARGS("-l", "[::1]:1081", "--listen", "127.0.0.2:9", "-w", "2", "--cpus",
	                   "0-1", "--user", "alice:se:cret", "--user", "bob:", "--resolver",
	                   "127.0.0.1:5353", "--handshake-timeout", "0.5", "--connect-timeout", "3",
	                   "--max-conns", "100", "-v");
	cr_assert_eq(parse(&cfg, err,
	                   NARGS("-l", "[::1]:1081", "--listen", "127.0.0.2:9", "-w", "2", "--cpus",
	                         "0-1", "--user", "alice:se:cret", "--user", "bob:", "--resolver",
	                         "127.0.0.1:5353", "--handshake-timeout", "0.5",
	                         "--connect-timeout", "3", "--max-conns", "100", "-v"),
	                   argv),
	             0, "%s", err);
	cr_assert_eq(cfg.nlisten, 2);
	cr_assert_eq(cfg.listen[0].ss_family, AF_INET6);
	cr_assert_eq(ntohs(((struct sockaddr_in6 *)&cfg.listen[0])->sin6_port), 1081);
	cr_assert_eq(cfg.workers, 2);
	cr_assert_eq(cfg.ncpus, 2);
	cr_assert_eq(cfg.cpus[1], 1);
	cr_assert_eq(cfg.nusers, 2);
	cr_assert_str_eq(cfg.users[0].pass, "se:cret", "the first colon splits");
	cr_assert_eq(cfg.users[1].pass_len, 0);
	cr_assert_str_eq(cfg.resolver, "127.0.0.1:5353");
	cr_assert_float_eq(cfg.handshake_timeout, 0.5, 1e-9);
	cr_assert_eq(cfg.max_conns, 100);
	cr_assert_eq(cfg.verbose, 1);
	cr_assert(config_check_user(&cfg, "alice", 5, "se:cret", 7));
	cr_assert_not(config_check_user(&cfg, "alice", 5, "se:cre", 6));
	cr_assert_not(config_check_user(&cfg, "alicx", 5, "se:cret", 7));
	cr_assert(config_check_user(&cfg, "bob", 3, "", 0));
	config_free(&cfg);
}

Test(config, resolver_defaults_to_port_53_and_brackets_ipv6)
{
	struct config cfg;
	char err[256];
	cr_assert_eq(parse(&cfg, err, NARGS("--resolver", "::1"), ARGS("--resolver", "::1")), 0);
	cr_assert_str_eq(cfg.resolver, "[::1]:53");
	config_free(&cfg);
}

struct bad_case {
	const char *flag, *value, *msg;
};

Test(config, rejects_bad_values_with_one_line)
{
	static const struct bad_case cases[] = {
	    {"-w", "0", "--workers"},
	    {"-w", "x", "--workers"},
	    {"--listen", "nonsense", "--listen"},
	    {"--listen", "127.0.0.1:70000", "--listen"},
	    {"--listen", "::1:80", "--listen"},
	    {"--listen", "localhost:80", "--listen"},
	    {"--user", "nopass", "--user"},
	    {"--user", ":pw", "--user"},
	    {"--cpus", "1-0", "--cpus"},
	    {"--cpus", "a", "--cpus"},
	    {"--handshake-timeout", "0", "--handshake-timeout"},
	    {"--handshake-timeout", "-1", "--handshake-timeout"},
	    {"--connect-timeout", "nan", "--connect-timeout"},
	    {"--max-conns", "0", "--max-conns"},
	    {"--resolver", "example.com", "--resolver"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct config cfg;
		char err[256];
		char *argv[] = {"ringsocks", (char *)cases[i].flag, (char *)cases[i].value, NULL};
		cr_assert_eq(parse(&cfg, err, 3, argv), -EINVAL, "%s %s", cases[i].flag,
		             cases[i].value);
		cr_assert_not_null(strstr(err, cases[i].msg), "%s", err);
		cr_assert_null(strchr(err, '\n'));
		config_free(&cfg);
	}
}

Test(config, rejects_unknown_flag_missing_value_and_stray_argument)
{
	struct config cfg;
	char err[256];
	cr_assert_eq(parse(&cfg, err, 2, ARGS("--bogus")), -EINVAL);
	cr_assert_not_null(strstr(err, "unknown option '--bogus'"), "%s", err);
	config_free(&cfg);
	cr_assert_eq(parse(&cfg, err, 2, ARGS("--listen")), -EINVAL);
	cr_assert_not_null(strstr(err, "needs a value"), "%s", err);
	config_free(&cfg);
	cr_assert_eq(parse(&cfg, err, 2, ARGS("stray")), -EINVAL);
	cr_assert_not_null(strstr(err, "unexpected argument"), "%s", err);
	config_free(&cfg);
}

/* getopt does not move optind past a bundle of short options ("-xv") until its last one:
 * the error must name the option itself, not the argument before the bundle. */
Test(config, names_the_refused_option_inside_a_bundle)
{
	static const struct {
		int argc;
		char *argv[4];
		const char *want;
	} cases[] = {
	    {2, {"ringsocks", "-xv"}, "unknown option '-x'"},
	    {2, {"ringsocks", "-vx"}, "unknown option '-x'"},
	    {3, {"ringsocks", "tunnel", "-xv"}, "unknown option '-x'"},
	    {3, {"ringsocks", "--listen=127.0.0.1:1", "-vxv"}, "unknown option '-x'"},
	    {2, {"ringsocks", "-vl"}, "option '-l' needs a value"},
	    {3, {"ringsocks", "tunnel", "-vL"}, "option '-L' needs a value"},
	    {3, {"ringsocks", "-v", "--listen"}, "option '--listen' needs a value"},
	    {3, {"ringsocks", "-v", "--bogus=1"}, "unknown option '--bogus=1'"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		assert_refused(cases[i].argc, cases[i].argv, cases[i].want, i);
}

Test(config, cpus_fewer_than_workers_is_an_error)
{
	skip_unless_cpus_0_and_1();
	struct config cfg;
	char err[256];
	cr_assert_eq(parse(&cfg, err, 5, ARGS("-w", "3", "--cpus", "0,1")), -EINVAL);
	cr_assert_not_null(strstr(err, "--cpus lists 2 CPUs for 3 workers"), "%s", err);
	config_free(&cfg);
	cr_assert_eq(parse(&cfg, err, 3, ARGS("--cpus", "1")), 0);
	cr_assert_eq(cfg.workers, 1, "workers default to the pinned CPUs");
	config_free(&cfg);
}

Test(config, rejects_malformed_cpu_lists)
{
	static const char *bad[] = {"0,", ",0", "0,,1", "0-",  "-1",  "0-1-",
	                            " 0", "+0", "0 ",   "0x1", "1023"}; /* 1023: not a CPU this test
	                                                                   may run on, presumably */
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct config cfg;
		char err[256] = "";
		cr_assert_eq(parse(&cfg, err, 3, ARGS("--cpus", (char *)bad[i])), -EINVAL, "'%s'",
		             bad[i]);
		cr_assert_not_null(strstr(err, "--cpus"), "%s", err);
		config_free(&cfg);
	}
}

/* A CPU the process may not run on used to pass the parser and fail the start (exit 1). */
Test(config, rejects_cpus_outside_the_allowed_set)
{
	struct config cfg;
	char err[256] = "";
	cpu_set_t set;
	int first = -1, outside = -1;

	cr_assert_eq(sched_getaffinity(0, sizeof(set), &set), 0);
	for (int c = 0; c < CONFIG_MAX_CPUS && (first < 0 || outside < 0); c++) {
		if (CPU_ISSET(c, &set) && first < 0)
			first = c;
		if (!CPU_ISSET(c, &set) && outside < 0)
			outside = c;
	}
	cr_assert_geq(first, 0);
	cr_assert_geq(outside, 0, "every CPU up to %d allowed", CONFIG_MAX_CPUS - 1);
	char list[32];
	snprintf(list, sizeof(list), "%d,%d", first, outside);
	cr_assert_eq(parse(&cfg, err, 5, ARGS("--cpus", list, "-w", "1")), -EINVAL, "%s", list);
	char want[64];
	snprintf(want, sizeof(want), "--cpus: CPU %d is not one this process may run on", outside);
	cr_assert_not_null(strstr(err, want), "%s", err);
	config_free(&cfg);
	snprintf(list, sizeof(list), "%d", first);
	cr_assert_eq(parse(&cfg, err, 3, ARGS("--cpus", list)), 0, "%s", err);
	cr_assert_eq(cfg.cpus[0], first);
	config_free(&cfg);
}

/* Ports are decimal digits, 0-65535, nothing around them: strtol took " 7101" and "+7101". */
Test(config, ports_are_plain_decimal_digits)
{
	static const char *bad_ports[] = {" 7101", "+7101", "7101 ", "-0",
	                                  "0x50",  "",      "65536", "\t80"};
	struct sockaddr_storage ss;
	socklen_t len;
	struct socks5_addr dst;
	struct config_upstream u;
	char buf[96];

	for (size_t i = 0; i < sizeof(bad_ports) / sizeof(bad_ports[0]); i++) {
		const char *p = bad_ports[i];
		struct config cfg;
		char err[256] = "";

		snprintf(buf, sizeof(buf), "127.0.0.1:%s", p);
		cr_assert_lt(config_parse_hostport(buf, &ss, &len), 0, "'%s'", buf);
		snprintf(buf, sizeof(buf), "[::1]:%s", p);
		cr_assert_lt(config_parse_hostport(buf, &ss, &len), 0, "'%s'", buf);
		snprintf(buf, sizeof(buf), "127.0.0.1:%s:example.com:80", p);
		cr_assert_lt(config_parse_tunnel(buf, &ss, &len, &dst), 0, "'%s'", buf);
		snprintf(buf, sizeof(buf), "%s:example.com:80", p);
		cr_assert_lt(config_parse_tunnel(buf, &ss, &len, &dst), 0, "'%s'", buf);
		snprintf(buf, sizeof(buf), "8080:example.com:%s", p);
		cr_assert_lt(config_parse_tunnel(buf, &ss, &len, &dst), 0, "'%s'", buf);
		snprintf(buf, sizeof(buf), "socks5://127.0.0.1:%s", p);
		cr_assert_lt(config_parse_upstream(buf, &u), 0, "'%s'", buf);
		snprintf(buf, sizeof(buf), "127.0.0.1:%s", p);
		cr_assert_eq(parse(&cfg, err, 3, ARGS("--resolver", buf)), -EINVAL, "'%s'", buf);
		cr_assert_not_null(strstr(err, "--resolver"), "%s", err);
		config_free(&cfg);
		snprintf(buf, sizeof(buf), "%s-9000", p);
		cr_assert_eq(parse(&cfg, err, 3, ARGS("--bind-ports", buf)), -EINVAL, "'%s'", buf);
		cr_assert_not_null(strstr(err, "--bind-ports"), "%s", err);
		config_free(&cfg);
		snprintf(buf, sizeof(buf), "8000-%s", p);
		cr_assert_eq(parse(&cfg, err, 3, ARGS("--bind-ports", buf)), -EINVAL, "'%s'", buf);
		config_free(&cfg);
	}
	cr_assert_eq(config_parse_hostport("127.0.0.1:65535", &ss, &len), 0);
	cr_assert_eq(ntohs(((struct sockaddr_in *)&ss)->sin_port), 65535);
	cr_assert_eq(config_parse_hostport("[::1]:0", &ss, &len), 0, "port 0: the kernel picks");
	cr_assert_eq(config_parse_hostport("127.0.0.1:08080", &ss, &len), 0);
	cr_assert_eq(ntohs(((struct sockaddr_in *)&ss)->sin_port), 8080);
}

/* Listeners set IPV6_V6ONLY, so bind(2) refuses an IPv4-mapped address (EINVAL at start-up,
 * exit 1): the parser refuses it and names the IPv4 address to use instead. */
Test(config, rejects_ipv4_mapped_listen_addresses)
{
	static const struct {
		int argc;
		char *argv[8];
		const char *want;
	} cases[] = {
	    {3,
	     {"ringsocks", "-l", "[::ffff:127.0.0.1]:7101"},
	     "--listen: '[::ffff:127.0.0.1]:7101' is an IPv4-mapped address; use 127.0.0.1:7101"},
	    {3,
	     {"ringsocks", "-l", "[::FFFF:7f00:2]:0"},
	     "--listen: '[::FFFF:7f00:2]:0' is an IPv4-mapped address; use 127.0.0.2:0"},
	    {6,
	     {"ringsocks", "tunnel", "-L", "[::ffff:10.0.0.1]:8080:example.com:80", "--via",
	      "socks5://127.0.0.1:1080"},
	     "-L: '[::ffff:10.0.0.1]:8080:example.com:80' is an IPv4-mapped address; use "
	     "10.0.0.1:8080"},
	    {6,
	     {"ringsocks", "tunnel", "-U", "[::ffff:10.0.0.1]:5353:10.0.0.2:53", "--via",
	      "socks5://127.0.0.1:1080"},
	     "-U: '[::ffff:10.0.0.1]:5353:10.0.0.2:53' is an IPv4-mapped address; use "
	     "10.0.0.1:5353"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		assert_refused(cases[i].argc, cases[i].argv, cases[i].want, i);
	/* a mapped DEST_HOST is the proxy's business, and ::ffff alone is not mapped */
	struct config cfg;
	char err[256] = "";
	cr_assert_eq(parse(&cfg, err, 6,
	                   ARGS("tunnel", "-L", "8080:[::ffff:10.0.0.1]:80", "--via",
	                        "socks5://127.0.0.1:1080")),
	             0, "%s", err);
	config_free(&cfg);
	cr_assert_eq(parse(&cfg, err, 3, ARGS("-l", "[::ffff:0:0:1]:7101")), 0, "%s", err);
	config_free(&cfg);
}

/* SO_REUSEPORT lets the same address be bound twice without a word: the second listener
 * would only split the clients with the first. */
Test(config, rejects_duplicate_listen_addresses)
{
	static const struct {
		int argc;
		char *argv[10];
		const char *want;
	} cases[] = {
	    {5,
	     {"ringsocks", "-l", "127.0.0.1:1080", "-l", "127.0.0.1:1080"},
	     "--listen: '127.0.0.1:1080' is given twice"},
	    {7,
	     {"ringsocks", "-l", "[::1]:1080", "-l", "127.0.0.1:1080", "--listen", "[0::1]:01080"},
	     "--listen: '[0::1]:01080' is given twice"},
	    {8,
	     {"ringsocks", "tunnel", "-L", "8080:example.com:80", "-L",
	      "127.0.0.1:8080:10.0.0.1:22", "--via", "socks5://127.0.0.1:1080"},
	     "-L: '127.0.0.1:8080:10.0.0.1:22' listens where an earlier -L does"},
	    {8,
	     {"ringsocks", "tunnel", "-U", "[::1]:5353:10.0.0.1:53", "-U", "[::1]:5353:10.0.0.2:53",
	      "--via", "socks5://127.0.0.1:1080"},
	     "-U: '[::1]:5353:10.0.0.2:53' listens where an earlier -U does"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		assert_refused(cases[i].argc, cases[i].argv, cases[i].want, i);
	/* port 0 twice: two ports the kernel picks; other address or port, or TCP beside UDP */
	struct config cfg;
	char err[256] = "";
	cr_assert_eq(parse(&cfg, err, 9,
	                   ARGS("-l", "127.0.0.1:0", "-l", "127.0.0.1:0", "-l", "127.0.0.2:1080",
	                        "-l", "127.0.0.1:1081")),
	             0, "%s", err);
	cr_assert_eq(cfg.nlisten, 4);
	config_free(&cfg);
	cr_assert_eq(parse(&cfg, err, 12,
	                   ARGS("tunnel", "-L", "8080:10.0.0.1:80", "-U", "8080:10.0.0.1:53", "-L",
	                        "127.0.0.1:0:10.0.0.1:80", "-L", "127.0.0.1:0:10.0.0.1:81", "--via",
	                        "socks5://127.0.0.1:1080")),
	             0, "%s", err);
	config_free(&cfg);
}

Test(config, parses_tunnel_specs_and_upstream_urls)
{
	struct sockaddr_storage ss;
	socklen_t len;
	struct socks5_addr dst;
	struct config_upstream u;

	cr_assert_eq(config_parse_tunnel("8080:example.com:80", &ss, &len, &dst), 0);
	cr_assert_eq(ntohs(((struct sockaddr_in *)&ss)->sin_port), 8080);
	cr_assert_eq(((struct sockaddr_in *)&ss)->sin_addr.s_addr, htonl(INADDR_LOOPBACK));
	cr_assert_eq(dst.atyp, SOCKS5_ATYP_DOMAIN);
	cr_assert_str_eq(dst.u.name, "example.com");
	cr_assert_eq(dst.port, 80);
	cr_assert_eq(config_parse_tunnel("127.0.0.1:28573:[2001:db8::5]:443", &ss, &len, &dst), 0);
	cr_assert_eq(dst.atyp, SOCKS5_ATYP_IPV6);
	cr_assert_eq(dst.u.ipv6[0], 0x20);
	cr_assert_eq(dst.u.ipv6[15], 5);
	cr_assert_eq(dst.port, 443);
	cr_assert_eq(config_parse_tunnel("[::1]:9000:10.0.0.1:22", &ss, &len, &dst), 0);
	cr_assert_eq(ss.ss_family, AF_INET6);
	cr_assert_eq(dst.atyp, SOCKS5_ATYP_IPV4);
	cr_assert_eq(config_parse_tunnel("[::1]:9000:[::2]:22", &ss, &len, &dst), 0);
	cr_assert_eq(dst.atyp, SOCKS5_ATYP_IPV6);
	cr_assert_lt(config_parse_tunnel("9000:[::2:22", &ss, &len, &dst), 0);
	cr_assert_lt(config_parse_tunnel("example.com:80", &ss, &len, &dst), 0);
	cr_assert_lt(config_parse_tunnel("0:example.com:80", &ss, &len, &dst), 0);
	cr_assert_lt(config_parse_tunnel("80:bad host:80", &ss, &len, &dst), 0);

	cr_assert_eq(config_parse_upstream("socks5://127.0.0.1:1080", &u), 0);
	cr_assert_eq(u.has_auth, 0);
	cr_assert_eq(u.addr.atyp, SOCKS5_ATYP_IPV4);
	cr_assert_str_eq(u.text, "127.0.0.1:1080");
	cr_assert_eq(config_parse_upstream("socks5h://al%40ice:p%3Aw@[::1]:1081/", &u), 0);
	cr_assert_str_eq(u.user, "al@ice");
	cr_assert_str_eq(u.pass, "p:w");
	cr_assert_eq(u.addr.atyp, SOCKS5_ATYP_IPV6);
	cr_assert_eq(u.addr.port, 1081);
	cr_assert_str_eq(u.text, "[::1]:1081", "credentials are not in the log text");
	cr_assert_eq(config_parse_upstream("socks5://proxy.example:1080", &u), 0);
	cr_assert_eq(u.addr.atyp, SOCKS5_ATYP_DOMAIN);
	cr_assert_lt(config_parse_upstream("http://127.0.0.1:1080", &u), 0);
	cr_assert_lt(config_parse_upstream("socks5://127.0.0.1", &u), 0);
	cr_assert_lt(config_parse_upstream("socks5://u@127.0.0.1:1", &u), 0,
	             "no password separator");
	cr_assert_lt(config_parse_upstream("socks5://u:%zz@127.0.0.1:1", &u), 0);
	cr_assert_lt(config_parse_upstream("socks5://u:p%4@127.0.0.1:1", &u), 0);
}

Test(config, relay_modes)
{
	struct config cfg;
	char err[256];
	cr_assert_eq(parse(&cfg, err, 3, ARGS("--relay", "copy")), 0);
	cr_assert_eq(cfg.relay_mode, RELAY_COPY);
	config_free(&cfg);
	cr_assert_eq(parse(&cfg, err, 3, ARGS("--relay", "splice-sqe")), 0);
	cr_assert_eq(cfg.relay_mode, RELAY_SPLICE_SQE);
	config_free(&cfg);
	cr_assert_eq(parse(&cfg, err, 3, ARGS("--relay", "fast")), -EINVAL);
	cr_assert_not_null(strstr(err, "--relay"), "%s", err);
	config_free(&cfg);
}

Test(config, bind_and_udp_defaults)
{
	struct config cfg;
	char err[256];
	char *argv[] = {"ringsocks", NULL};
	cr_assert_eq(parse(&cfg, err, 1, argv), 0);
	cr_assert_float_eq(cfg.bind_timeout, 60.0, 1e-9);
	cr_assert_float_eq(cfg.udp_idle_timeout, 120.0, 1e-9);
	cr_assert_eq(cfg.bind_port_lo, 0, "ephemeral BIND ports by default");
	cr_assert_eq(cfg.bind_port_hi, 0);
	cr_assert_eq(cfg.nudp, 0);
	config_free(&cfg);
}

Test(config, bind_and_udp_flags)
{
	struct config cfg;
	char err[256];
	cr_assert_eq(parse(&cfg, err, 7,
	                   ARGS("--bind-timeout", "1.5", "--bind-ports", "40000-40009",
	                        "--udp-idle-timeout", "30")),
	             0, "%s", err);
	cr_assert_float_eq(cfg.bind_timeout, 1.5, 1e-9);
	cr_assert_float_eq(cfg.udp_idle_timeout, 30.0, 1e-9);
	cr_assert_eq(cfg.bind_port_lo, 40000);
	cr_assert_eq(cfg.bind_port_hi, 40009);
	config_free(&cfg);
	cr_assert_eq(parse(&cfg, err, 3, ARGS("--bind-ports", "5000-5000")), 0, "%s", err);
	cr_assert_eq(cfg.bind_port_lo, 5000);
	cr_assert_eq(cfg.bind_port_hi, 5000);
	config_free(&cfg);
}

Test(config, rejects_bad_bind_and_udp_values)
{
	static const char *bad[][2] = {
	    {"--bind-ports", "5000"},        {"--bind-ports", "5000-4999"},
	    {"--bind-ports", "0-10"},        {"--bind-ports", "1-65536"},
	    {"--bind-ports", "a-b"},         {"--bind-ports", "-5"},
	    {"--bind-ports", "123456789-9"}, {"--bind-timeout", "0"},
	    {"--bind-timeout", "x"},         {"--udp-idle-timeout", "-1"},
	    {"--udp-idle-timeout", ""},
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct config cfg;
		char err[256] = "";
		char *argv[] = {"ringsocks", (char *)bad[i][0], (char *)bad[i][1], NULL};
		cr_assert_eq(parse(&cfg, err, 3, argv), -EINVAL, "%s %s", bad[i][0], bad[i][1]);
		cr_assert_not_null(strstr(err, bad[i][0]), "%s", err);
		cr_assert_null(strchr(err, '\n'), "one line: %s", err);
		config_free(&cfg);
	}
}

/* The timers count whole milliseconds: a timeout under 1 ms (1e-9 rounds to 0) expired at
 * once, closing every client before its first byte. */
Test(config, timeouts_are_at_least_a_millisecond)
{
	static const char *opts[] = {"--handshake-timeout", "--connect-timeout", "--bind-timeout",
	                             "--udp-idle-timeout"};
	static const char *bad[] = {"1e-9", "0.0004", "0.0009", "0", "-0",    "-1",      "nan",
	                            "-nan", "inf",    "-inf",   "",  "1e400", "31536001"};
	for (size_t i = 0; i < sizeof(opts) / sizeof(opts[0]); i++) {
		struct config cfg;
		char err[256] = "";

		for (size_t j = 0; j < sizeof(bad) / sizeof(bad[0]); j++) {
			cr_assert_eq(parse(&cfg, err, 3, ARGS((char *)opts[i], (char *)bad[j])),
			             -EINVAL, "%s %s", opts[i], bad[j]);
			cr_assert_eq(strncmp(err, opts[i], strlen(opts[i])), 0, "%s", err);
			cr_assert_not_null(strstr(err, "is not a number of seconds from 0.001 to "
			                               "31536000"),
			                   "%s", err);
			config_free(&cfg);
		}
		cr_assert_eq(parse(&cfg, err, 3, ARGS((char *)opts[i], "0.001")), 0, "%s", err);
		config_free(&cfg);
		cr_assert_eq(parse(&cfg, err, 3, ARGS((char *)opts[i], "31536000")), 0, "%s", err);
		config_free(&cfg);
	}
}

Test(config, tunnel_udp_ports)
{
	struct config cfg;
	char err[256];
	cr_assert_eq(parse(&cfg, err, 8,
	                   ARGS("tunnel", "-U", "5353:resolver.example:53", "-U",
	                        "[::1]:5354:[2001:db8::1]:53", "--via", "socks5://127.0.0.1:1080")),
	             0, "%s", err);
	cr_assert_eq(cfg.mode, MODE_TUNNEL);
	cr_assert_eq(cfg.nlisten, 0, "no TCP port without -L");
	cr_assert_eq(cfg.nudp, 2);
	cr_assert_eq(ntohs(((struct sockaddr_in *)&cfg.udp_listen[0])->sin_port), 5353);
	cr_assert_eq(((struct sockaddr_in *)&cfg.udp_listen[0])->sin_addr.s_addr,
	             htonl(INADDR_LOOPBACK));
	cr_assert_eq(cfg.udp_dst[0].atyp, SOCKS5_ATYP_DOMAIN);
	cr_assert_str_eq(cfg.udp_dst[0].u.name, "resolver.example");
	cr_assert_eq(cfg.udp_dst[0].port, 53);
	cr_assert_eq(cfg.udp_listen[1].ss_family, AF_INET6);
	cr_assert_eq(cfg.udp_dst[1].atyp, SOCKS5_ATYP_IPV6);
	config_free(&cfg);
	/* -L and -U together */
	cr_assert_eq(parse(&cfg, err, 8,
	                   ARGS("tunnel", "-L", "8080:example.com:80", "-U", "5353:10.0.0.1:53",
	                        "--via", "socks5://127.0.0.1:1080")),
	             0, "%s", err);
	cr_assert_eq(cfg.nlisten, 1);
	cr_assert_eq(cfg.nudp, 1);
	config_free(&cfg);
	/* -U belongs to tunnel mode; a tunnel needs -L or -U */
	cr_assert_eq(parse(&cfg, err, 3, ARGS("-U", "5353:10.0.0.1:53")), -EINVAL);
	cr_assert_not_null(strstr(err, "-U"), "%s", err);
	config_free(&cfg);
	cr_assert_eq(parse(&cfg, err, 4, ARGS("tunnel", "--via", "socks5://127.0.0.1:1080")),
	             -EINVAL);
	cr_assert_not_null(strstr(err, "-L or -U"), "%s", err);
	config_free(&cfg);
	cr_assert_eq(
	    parse(&cfg, err, 6,
	          ARGS("tunnel", "-U", "5353:bad host:53", "--via", "socks5://127.0.0.1:1080")),
	    -EINVAL);
	cr_assert_not_null(strstr(err, "-U"), "%s", err);
	config_free(&cfg);
}

/* A tunnel's clients send no SOCKS5 handshake (the tunnel's own handshake with --via counts
 * against --connect-timeout) and ask for no BIND: these options would do nothing there. */
Test(config, tunnel_refuses_the_options_it_has_no_use_for)
{
	static const char *opts[][2] = {
	    {"--handshake-timeout", "5"},
	    {"--bind-timeout", "5"},
	    {"--bind-ports", "40000-40009"},
	};
	for (size_t i = 0; i < sizeof(opts) / sizeof(opts[0]); i++) {
		struct config cfg;
		char err[256] = "", want[64];
		cr_assert_eq(
		    parse(&cfg, err, 8,
		          ARGS("tunnel", "-L", "8080:example.com:80", "--via",
		               "socks5://127.0.0.1:1080", (char *)opts[i][0], (char *)opts[i][1])),
		    -EINVAL, "%s", opts[i][0]);
		snprintf(want, sizeof(want), "%s is for server mode: ", opts[i][0]);
		cr_assert_eq(strncmp(err, want, strlen(want)), 0, "%s", err);
		cr_assert_null(strchr(err, '\n'));
		config_free(&cfg);
		cr_assert_eq(parse(&cfg, err, 3, ARGS((char *)opts[i][0], (char *)opts[i][1])), 0,
		             "%s", err);
		config_free(&cfg);
	}
	/* the ones a tunnel uses */
	struct config cfg;
	char err[256] = "";
	cr_assert_eq(
	    parse(&cfg, err, 14,
	          ARGS("tunnel", "-U", "5353:10.0.0.1:53", "--via", "socks5://proxy.example:1080",
	               "--connect-timeout", "3", "--udp-idle-timeout", "4", "--resolver",
	               "127.0.0.1", "--max-conns", "10")),
	    0, "%s", err);
	cr_assert_float_eq(cfg.connect_timeout, 3.0, 1e-9);
	cr_assert_float_eq(cfg.udp_idle_timeout, 4.0, 1e-9);
	config_free(&cfg);
}

Test(config, congestion)
{
	struct config cfg;
	char err[256];
	char *argv[] = {"ringsocks", NULL};
	cr_assert_eq(parse(&cfg, err, 1, argv), 0);
	cr_assert_str_empty(cfg.congestion, "the system's algorithm unless asked");
	config_free(&cfg);
	cr_assert_eq(parse(&cfg, err, 3, ARGS("--congestion", "reno")), 0);
	cr_assert_str_eq(cfg.congestion, "reno");
	config_free(&cfg);
	cr_assert_eq(parse(&cfg, err, 3, ARGS("--congestion", "bbr; rm")), -EINVAL);
	cr_assert_not_null(strstr(err, "--congestion"), "%s", err);
	config_free(&cfg);
	cr_assert_eq(parse(&cfg, err, 3, ARGS("--congestion", "")), -EINVAL);
	config_free(&cfg);
	cr_assert_eq(parse(&cfg, err, 3, ARGS("--congestion", "abcdefghijklmnop")), -EINVAL,
	             "16 characters do not fit the kernel's name");
	config_free(&cfg);
	cr_assert_eq(parse(&cfg, err, 8,
	                   ARGS("tunnel", "-L", "1081:127.0.0.1:80", "--via",
	                        "socks5://127.0.0.1:1080", "--congestion", "cubic")),
	             0, "%s", err);
	cr_assert_str_eq(cfg.congestion, "cubic");
	config_free(&cfg);
	cr_assert_eq(parse(&cfg, err, 5, ARGS("--congestion", "cubic", "--congestion", "system")),
	             0);
	cr_assert_str_empty(cfg.congestion, "the last one counts");
	cr_assert_eq(cfg.congestion_system, 1);
	config_free(&cfg);
	cr_assert_eq(parse(&cfg, err, 5, ARGS("--congestion", "system", "--congestion", "auto")),
	             0);
	cr_assert_str_empty(cfg.congestion);
	cr_assert_eq(cfg.congestion_system, 0, "auto: the default");
	config_free(&cfg);
}

/* A numeric option: its default, both ends of its range, and values it refuses, each of
 * which names the option in the error. */
static void check_number_option(const char *opt, uint32_t (*get)(const struct config *),
                                uint32_t dflt, uint32_t lo, uint32_t hi, char **bad, size_t nbad)
{
	struct config cfg;
	char err[256], v[16];
	char *argv[] = {"ringsocks", NULL};
	cr_assert_eq(parse(&cfg, err, 1, argv), 0);
	cr_assert_eq(get(&cfg), dflt, "%s: default", opt);
	config_free(&cfg);
	for (int end = 0; end < 2; end++) {
		uint32_t want = end ? hi : lo;
		snprintf(v, sizeof(v), "%u", want);
		cr_assert_eq(parse(&cfg, err, 3, ARGS((char *)opt, v)), 0, "%s", err);
		cr_assert_eq(get(&cfg), want, "%s %s", opt, v);
		config_free(&cfg);
	}
	for (size_t i = 0; i < nbad; i++) {
		cr_assert_eq(parse(&cfg, err, 3, ARGS((char *)opt, bad[i])), -EINVAL, "%s %s", opt,
		             bad[i]);
		cr_assert_not_null(strstr(err, opt), "%s", err);
		config_free(&cfg);
	}
}

static uint32_t get_pipes(const struct config *c)
{
	return c->pipes;
}

static uint32_t get_relay_memory(const struct config *c)
{
	return c->relay_memory_mib;
}

Test(config, pipes)
{
	char *bad[] = {"-1", "65537", "8x", ""};
	/* 0: never splice */
	check_number_option("--pipes", get_pipes, CONFIG_PIPES_DEFAULT, 0, 65536, bad, 4);
}

Test(config, relay_memory)
{
	char *bad[] = {"0", "-1", "65537", "8x", "", "1M"};
	check_number_option("--relay-memory", get_relay_memory, CONFIG_RELAY_MEMORY_DEFAULT, 1,
	                    65536, bad, 6);
}

/* Credentials files. Each test writes its files into a directory of its own. */
struct cred_dir {
	char dir[64];
	char path[8][128];
	int n;
};

/* dir/name with these bytes and mode (set after writing, so the umask does not matter). */
static const char *cred_file(struct cred_dir *d, const char *name, const char *data, size_t len,
                             mode_t mode)
{
	char *path = d->path[d->n++];
	FILE *f;

	if (!d->dir[0]) {
		snprintf(d->dir, sizeof(d->dir), "/tmp/ringsocks-test-XXXXXX");
		cr_assert_not_null(mkdtemp(d->dir));
	}
	/* through tmp: gcc cannot tell that path and d->dir do not overlap */
	char tmp[sizeof(d->path[0])];
	snprintf(tmp, sizeof(tmp), "%s/%s", d->dir, name);
	memcpy(path, tmp, sizeof(tmp));
	f = fopen(path, "w");
	cr_assert_not_null(f);
	cr_assert_eq(fwrite(data, 1, len, f), len);
	cr_assert_eq(fclose(f), 0);
	cr_assert_eq(chmod(path, mode), 0);
	return path;
}

#define CRED_FILE(d, name, text, mode) cred_file(d, name, text, sizeof(text) - 1, mode)

static void cred_dir_remove(struct cred_dir *d)
{
	for (int i = 0; i < d->n; i++)
		unlink(d->path[i]);
	if (d->dir[0])
		rmdir(d->dir);
}

Test(config, users_file_reads_one_user_a_line)
{
	struct cred_dir d = {0};
	struct config cfg;
	char err[256] = "";
	const char *a = CRED_FILE(&d, "a",
	                          "# the proxy's users\n"
	                          "\n"
	                          "alice:se:cret\n"
	                          "   \t\n"
	                          "bob:\r\n"
	                          "#carol:x\n"
	                          "dave:p w#\r\n"
	                          "erin:last line, no newline",
	                          0600);
	const char *b = CRED_FILE(&d, "b", "frank:f\n", 0640);

	cr_assert_eq(
	    parse(&cfg, err, 7,
	          ARGS("--user", "zed:z", "--users-file", (char *)a, "--users-file", (char *)b)),
	    0, "%s", err);
	cr_assert_eq(cfg.nusers, 6);
	cr_assert_str_eq(cfg.users[0].name, "zed", "--user and --users-file add up, in order");
	cr_assert_str_eq(cfg.users[1].name, "alice");
	cr_assert_str_eq(cfg.users[1].pass, "se:cret", "the first colon splits, as in --user");
	cr_assert_str_eq(cfg.users[2].name, "bob");
	cr_assert_eq(cfg.users[2].pass_len, 0, "a trailing \\r is not part of the password");
	cr_assert_str_eq(cfg.users[3].pass, "p w#", "blanks and '#' inside a value are kept");
	cr_assert_eq(cfg.users[3].pass_len, 4);
	cr_assert_str_eq(cfg.users[4].pass, "last line, no newline");
	cr_assert_str_eq(cfg.users[5].name, "frank", "group-readable (0640) is allowed");
	cr_assert(config_check_user(&cfg, "alice", 5, "se:cret", 7));
	cr_assert(config_check_user(&cfg, "bob", 3, "", 0));
	cr_assert_not(config_check_user(&cfg, "carol", 5, "x", 1), "a comment is no user");
	config_free(&cfg);
	cred_dir_remove(&d);
}

/* The error names the file and the line, never what the line holds (a password). */
Test(config, users_file_bad_line_is_named_by_number)
{
	static const struct {
		const char *text, *msg;
	} cases[] = {
	    {"alice:pw\n# ok\nnocolon-hunter2\n", ":3: not NAME:PASS (name 1-255 bytes"},
	    {"\n:hunter2\n", ":2: not NAME:PASS"},
	    {"a:hunter2\r\n\r\nhunter2\r\n", ":3: not NAME:PASS (name 1-255 bytes, password "
	                                     "at most 255)"},
	    /* its text goes on past the NUL: see the length below */
	    {"a:hunter2\nb:hunter2\0\n", ":2: a NUL byte in the line"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct cred_dir d = {0};
		struct config cfg;
		char err[256] = "", want[256];
		const char *p =
		    cred_file(&d, "users", cases[i].text,
		              strlen(cases[i].text) + (strstr(cases[i].msg, "NUL") ? 2 : 0), 0600);
		cr_assert_eq(parse(&cfg, err, 3, ARGS("--users-file", (char *)p)), -EINVAL, "%zu",
		             i);
		snprintf(want, sizeof(want), "--users-file: %s%s", p, cases[i].msg);
		cr_assert_eq(strncmp(err, want, strlen(want)), 0, "%s\nwant %s", err, want);
		cr_assert_null(strstr(err, "hunter2"), "%s", err);
		cr_assert_null(strchr(err, '\n'));
		config_free(&cfg);
		cred_dir_remove(&d);
	}
}

Test(config, users_file_name_and_password_lengths_as_in_user)
{
	struct cred_dir d = {0};
	struct config cfg;
	char err[256] = "", text[1200], *o = text;

	/* name 255 and password 255: the longest; then a password of 256 */
	memset(o, 'n', 255), o += 255, *o++ = ':';
	memset(o, 'p', 255), o += 255, *o++ = '\n';
	memset(o, 'n', 1), o += 1, *o++ = ':';
	memset(o, 'p', 256), o += 256, *o++ = '\n';
	const char *p = cred_file(&d, "users", text, (size_t)(o - text), 0600);
	cr_assert_eq(parse(&cfg, err, 3, ARGS("--users-file", (char *)p)), -EINVAL);
	cr_assert_not_null(strstr(err, ":2: not NAME:PASS"), "%s", err);
	cr_assert_eq(cfg.nusers, 1);
	cr_assert_eq(cfg.users[0].name_len, 255);
	cr_assert_eq(cfg.users[0].pass_len, 255);
	config_free(&cfg);
	cred_dir_remove(&d);
}

Test(config, users_file_holds_at_most_config_max_users)
{
	struct cred_dir d = {0};
	struct config cfg;
	char err[256] = "";
	static char text[(CONFIG_MAX_USERS + 1) * 16];
	size_t n = 0;

	for (int i = 0; i <= CONFIG_MAX_USERS; i++)
		n += (size_t)snprintf(text + n, sizeof(text) - n, "u%d:p\n", i);
	const char *p = cred_file(&d, "users", text, n, 0600);
	cr_assert_eq(parse(&cfg, err, 3, ARGS("--users-file", (char *)p)), -EINVAL);
	cr_assert_not_null(strstr(err, ":1025: too many users (at most 1024)"), "%s", err);
	config_free(&cfg);
	cred_dir_remove(&d);
}

/* A file without a user would leave authentication off, which its author did not mean. */
Test(config, users_file_without_users_is_an_error)
{
	static const char *texts[] = {"", "\n\n", "# alice:secret\n\r\n  \n"};
	for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
		struct cred_dir d = {0};
		struct config cfg;
		char err[256] = "", want[256];
		const char *p = cred_file(&d, "users", texts[i], strlen(texts[i]), 0600);
		cr_assert_eq(parse(&cfg, err, 3, ARGS("--users-file", (char *)p)), -EINVAL);
		snprintf(want, sizeof(want), "--users-file: %s: no NAME:PASS line", p);
		cr_assert_str_eq(err, want);
		config_free(&cfg);
		cred_dir_remove(&d);
	}
}

Test(config, users_file_missing_or_unreadable)
{
	struct cred_dir d = {0};
	struct config cfg;
	char err[256] = "", want[256];

	char missing[128];

	CRED_FILE(&d, "x", "a:b\n", 0600);
	snprintf(missing, sizeof(missing), "%s/nonexistent", d.dir);
	cr_assert_eq(parse(&cfg, err, 3, ARGS("--users-file", missing)), -EINVAL);
	snprintf(want, sizeof(want), "--users-file: %s: No such file or directory", missing);
	cr_assert_str_eq(err, want);
	config_free(&cfg);
	/* a directory opens, then fails to read */
	cr_assert_eq(parse(&cfg, err, 3, ARGS("--users-file", d.dir)), -EINVAL);
	cr_assert_not_null(strstr(err, "Is a directory"), "%s", err);
	config_free(&cfg);
	cred_dir_remove(&d);
}

/* As ssh: a file owned by another user (not root) is refused, whatever its mode: its owner
 * could add a login. Needs root to give a file away. */
Test(config, users_file_owned_by_another_user_is_refused)
{
	struct cred_dir d = {0};
	struct config cfg;
	char err[256] = "", want[256];

	if (geteuid() != 0)
		cr_skip_test("needs root to chown a file to another user");
	const char *p = CRED_FILE(&d, "users", "alice:secret\n", 0600);
	cr_assert_eq(chown(p, 65534, (gid_t)-1), 0);
	cr_assert_eq(parse(&cfg, err, 3, ARGS("--users-file", (char *)p)), -EINVAL);
	snprintf(want, sizeof(want),
	         "--users-file: %s: owned by uid 65534, not by this user or root", p);
	cr_assert_str_eq(err, want);
	config_free(&cfg);
	cr_assert_eq(chown(p, 0, (gid_t)-1), 0);
	cr_assert_eq(parse(&cfg, err, 3, ARGS("--users-file", (char *)p)), 0, "%s", err);
	config_free(&cfg);
	cred_dir_remove(&d);
}

/* As ssh does with a private key: a file others may read (or change) is refused. */
Test(config, users_file_others_may_not_read_or_write)
{
	static const mode_t refused[] = {0644, 0604, 0601, 0602, 0620, 0660, 0666, 0777};
	for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
		struct cred_dir d = {0};
		struct config cfg;
		char err[256] = "", want[256];
		const char *p = CRED_FILE(&d, "users", "alice:secret\n", refused[i]);
		cr_assert_eq(parse(&cfg, err, 3, ARGS("--users-file", (char *)p)), -EINVAL, "%o",
		             (unsigned)refused[i]);
		snprintf(want, sizeof(want),
		         "--users-file: %s: other users may read or change it (mode %04o); chmod "
		         "600 it",
		         p, (unsigned)refused[i]);
		cr_assert_str_eq(err, want);
		cr_assert_eq(cfg.nusers, 0);
		config_free(&cfg);
		cred_dir_remove(&d);
	}
	static const mode_t allowed[] = {0600, 0400, 0640, 0440};
	for (size_t i = 0; i < sizeof(allowed) / sizeof(allowed[0]); i++) {
		struct cred_dir d = {0};
		struct config cfg;
		char err[256] = "";
		const char *p = CRED_FILE(&d, "users", "alice:secret\n", allowed[i]);
		cr_assert_eq(parse(&cfg, err, 3, ARGS("--users-file", (char *)p)), 0, "%o: %s",
		             (unsigned)allowed[i], err);
		cr_assert_eq(cfg.nusers, 1);
		config_free(&cfg);
		cred_dir_remove(&d);
	}
}

Test(config, tunnel_refuses_users_file)
{
	struct cred_dir d = {0};
	struct config cfg;
	char err[256] = "";
	const char *p = CRED_FILE(&d, "users", "alice:secret\n", 0600);

	cr_assert_eq(parse(&cfg, err, 8,
	                   ARGS("tunnel", "-L", "8080:example.com:80", "--via",
	                        "socks5://127.0.0.1:1080", "--users-file", (char *)p)),
	             -EINVAL);
	cr_assert_str_eq(err, "--users-file is for server mode; a tunnel's proxy credentials go in "
	                      "--via");
	config_free(&cfg);
	cred_dir_remove(&d);
}

Test(config, upstream_file_reads_one_url_a_line)
{
	struct cred_dir d = {0};
	struct config cfg;
	char err[256] = "";
	const char *p = CRED_FILE(&d, "upstreams",
	                          "# the upstreams, in order\r\n"
	                          "socks5://al%40ice:p:w@127.0.0.1:1080\r\n"
	                          "\n"
	                          "socks5h://bob:hunter2@[::1]:1081/\n",
	                          0600);

	cr_assert_eq(
	    parse(&cfg, err, 5,
	          ARGS("--upstream", "socks5://10.0.0.1:1080", "--upstream-file", (char *)p)),
	    0, "%s", err);
	cr_assert_eq(cfg.nupstreams, 3, "--upstream and --upstream-file add up, in order");
	cr_assert_str_eq(cfg.upstreams[0].text, "10.0.0.1:1080");
	cr_assert_eq(cfg.upstreams[1].has_auth, 1);
	cr_assert_str_eq(cfg.upstreams[1].user, "al@ice", "%XX escapes as in --upstream");
	cr_assert_str_eq(cfg.upstreams[1].pass, "p:w");
	cr_assert_str_eq(cfg.upstreams[1].text, "127.0.0.1:1080", "no \\r in the port");
	cr_assert_str_eq(cfg.upstreams[2].user, "bob");
	cr_assert_str_eq(cfg.upstreams[2].pass, "hunter2");
	cr_assert_eq(cfg.upstreams[2].addr.atyp, SOCKS5_ATYP_IPV6);
	cr_assert_eq(cfg.upstreams[2].addr.port, 1081);
	config_free(&cfg);
	cred_dir_remove(&d);
}

Test(config, upstream_file_errors_name_the_file_and_line)
{
	static const struct {
		const char *text, *msg;
	} cases[] = {
	    {"socks5://127.0.0.1:1\n#\nsocks5://u:hunter2@127.0.0.1\n",
	     ":3: not socks5://[USER:PASS@]HOST:PORT"},
	    {"http://u:hunter2@127.0.0.1:1\n", ":1: not socks5://[USER:PASS@]HOST:PORT"},
	    {"# socks5://u:hunter2@127.0.0.1:1\n\n", ": no socks5:// URL line"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct cred_dir d = {0};
		struct config cfg;
		char err[256] = "", want[256];
		const char *p = cred_file(&d, "up", cases[i].text, strlen(cases[i].text), 0600);
		cr_assert_eq(parse(&cfg, err, 3, ARGS("--upstream-file", (char *)p)), -EINVAL,
		             "%zu", i);
		snprintf(want, sizeof(want), "--upstream-file: %s%s", p, cases[i].msg);
		cr_assert_str_eq(err, want);
		config_free(&cfg);
		cred_dir_remove(&d);
	}

	/* at most CONFIG_MAX_UPSTREAMS, counting those of --upstream */
	struct cred_dir d = {0};
	struct config cfg;
	char err[256] = "", text[64 * (CONFIG_MAX_UPSTREAMS + 1)];
	size_t n = 0;
	for (int i = 0; i < CONFIG_MAX_UPSTREAMS; i++)
		n += (size_t)snprintf(text + n, sizeof(text) - n, "socks5://127.0.0.1:%d\n", i + 1);
	const char *p = cred_file(&d, "up", text, n, 0600);
	cr_assert_eq(
	    parse(&cfg, err, 5,
	          ARGS("--upstream", "socks5://10.0.0.1:1080", "--upstream-file", (char *)p)),
	    -EINVAL);
	cr_assert_not_null(strstr(err, ":16: too many upstream proxies (at most 16)"), "%s", err);
	config_free(&cfg);
	cred_dir_remove(&d);
}

Test(config, via_file_is_the_tunnels_proxy)
{
	struct cred_dir d = {0};
	struct config cfg;
	char err[256] = "", want[256];
	const char *one = CRED_FILE(
	    &d, "via", "\n# the proxy\nsocks5://alice:hunter2@proxy.example:1080\r\n", 0600);
	const char *two = CRED_FILE(&d, "two",
	                            "socks5://alice:hunter2@127.0.0.1:1080\n\n"
	                            "socks5://bob:hunter2@127.0.0.2:1080\n",
	                            0600);

	cr_assert_eq(parse(&cfg, err, 6,
	                   ARGS("tunnel", "-L", "8080:example.com:80", "--via-file", (char *)one)),
	             0, "%s", err);
	cr_assert_eq(cfg.nupstreams, 1, "no --via needed");
	cr_assert_str_eq(cfg.upstreams[0].user, "alice");
	cr_assert_str_eq(cfg.upstreams[0].pass, "hunter2");
	cr_assert_str_eq(cfg.upstreams[0].text, "proxy.example:1080");
	config_free(&cfg);

	/* one URL a file: a second is not dropped without a word */
	cr_assert_eq(parse(&cfg, err, 6,
	                   ARGS("tunnel", "-L", "8080:example.com:80", "--via-file", (char *)two)),
	             -EINVAL);
	snprintf(want, sizeof(want),
	         "--via-file: %s:3: a second URL; one a file (another --via-file for failover)",
	         two);
	cr_assert_str_eq(err, want);
	config_free(&cfg);

	/* repeatable, with --via: failover in the order given */
	cr_assert_eq(parse(&cfg, err, 10,
	                   ARGS("tunnel", "-L", "8080:example.com:80", "--via-file", (char *)one,
	                        "--via", "socks5://10.0.0.1:1080", "--via-file", (char *)one)),
	             0, "%s", err);
	cr_assert_eq(cfg.nupstreams, 3);
	cr_assert_str_eq(cfg.upstreams[1].text, "10.0.0.1:1080");
	config_free(&cfg);
	cred_dir_remove(&d);
}

Test(config, upstream_and_via_files_belong_to_their_modes_and_are_private)
{
	struct cred_dir d = {0};
	struct config cfg;
	char err[256] = "", want[256];
	const char *p = CRED_FILE(&d, "url", "socks5://alice:hunter2@127.0.0.1:1080\n", 0600);
	const char *shared = CRED_FILE(&d, "open", "socks5://alice:hunter2@127.0.0.1:1080\n", 0604);

	cr_assert_eq(parse(&cfg, err, 3, ARGS("--via-file", (char *)p)), -EINVAL);
	cr_assert_str_eq(err, "--via-file belongs to 'ringsocks tunnel' (see --help)");
	config_free(&cfg);
	cr_assert_eq(
	    parse(&cfg, err, 6,
	          ARGS("tunnel", "-L", "8080:example.com:80", "--upstream-file", (char *)p)),
	    -EINVAL);
	cr_assert_str_eq(err, "--upstream-file belongs to server mode (see --help)");
	config_free(&cfg);
	cr_assert_eq(parse(&cfg, err, 4, ARGS("tunnel", "-L", "8080:example.com:80")), -EINVAL);
	cr_assert_str_eq(err, "tunnel needs --via socks5://[USER:PASS@]HOST:PORT or --via-file "
	                      "PATH");
	config_free(&cfg);

	cr_assert_eq(parse(&cfg, err, 3, ARGS("--upstream-file", (char *)shared)), -EINVAL);
	snprintf(want, sizeof(want),
	         "--upstream-file: %s: other users may read or change it (mode 0604); chmod 600 it",
	         shared);
	cr_assert_str_eq(err, want);
	config_free(&cfg);
	cr_assert_eq(
	    parse(&cfg, err, 6,
	          ARGS("tunnel", "-L", "8080:example.com:80", "--via-file", (char *)shared)),
	    -EINVAL);
	cr_assert_not_null(strstr(err, "--via-file: "), "%s", err);
	cr_assert_not_null(strstr(err, ": other users may read or change it (mode 0604)"), "%s",
	                   err);
	config_free(&cfg);
	cred_dir_remove(&d);
}
