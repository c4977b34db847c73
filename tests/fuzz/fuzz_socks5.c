/* fuzz_socks5.c - libFuzzer entry for the codec's invariants (socks5_fuzz_checks.h).
 *
 *   cmake -B build-fuzz -DCMAKE_C_COMPILER=clang -DRINGSOCKS_LIBFUZZER=ON && \
 *     cmake --build build-fuzz --target fuzz_socks5 && \
 *     build-fuzz/tests/fuzz_socks5 -max_total_time=300 tests/fuzz/corpus
 *
 * New inputs go to tests/fuzz/corpus (minimize with -merge=1 first); CI replays that corpus
 * through unit.test_socks5_fuzz_corpus. */
#include <stdio.h>
#include <stdlib.h>

#define FUZZ_CHECK(cond)                                                                           \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "%s:%d: FUZZ_CHECK(%s) failed\n", __FILE__, __LINE__,      \
			        #cond);                                                            \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

#include "socks5_fuzz_checks.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	fuzz_socks5_one(data, size);
	return 0;
}
