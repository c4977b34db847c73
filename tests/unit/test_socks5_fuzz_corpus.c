/* test_socks5_fuzz_corpus.c - replays every input of tests/fuzz/corpus (found by the libFuzzer
 * harness tests/fuzz/fuzz_socks5.c, minimized) through the same invariants: parser and UDP
 * decoder round trips, and the server and client handshakes fed each input in input-chosen
 * chunks. It runs under the ASan+UBSan build in CI like every unit test. */
#include <criterion/criterion.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_CHECK(cond) cr_assert((cond), "%s: FUZZ_CHECK(%s) failed", current_input, #cond)

static const char *current_input = "";

#include "../fuzz/socks5_fuzz_checks.h"

#ifndef FUZZ_CORPUS_DIR
#error "FUZZ_CORPUS_DIR must name tests/fuzz/corpus"
#endif

Test(fuzz_corpus, every_input_keeps_the_invariants)
{
	DIR *dir = opendir(FUZZ_CORPUS_DIR);
	struct dirent *e;
	int inputs = 0;

	cr_assert_not_null(dir, "cannot open %s", FUZZ_CORPUS_DIR);
	while ((e = readdir(dir)) != NULL) {
		char path[4096], name[512];
		uint8_t buf[1 << 16];
		size_t n;
		FILE *f;

		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s", FUZZ_CORPUS_DIR, e->d_name);
		snprintf(name, sizeof(name), "%s", e->d_name);
		f = fopen(path, "rb");
		cr_assert_not_null(f, "cannot open %s", path);
		n = fread(buf, 1, sizeof(buf), f);
		cr_assert(feof(f), "%s is larger than %zu bytes", path, sizeof(buf));
		fclose(f);
		current_input = name;
		fuzz_socks5_one(buf, n);
		inputs++;
	}
	closedir(dir);
	cr_assert_gt(inputs, 100, "the corpus should hold the minimized inputs (found %d)", inputs);
}
