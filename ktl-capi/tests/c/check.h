/* Shared helpers of the C tests: CHECK and the expected owner. */
#ifndef KTL_TEST_CHECK_H
#define KTL_TEST_CHECK_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ktl.h"

/* Exits with a message when `cond` is false. */
#define CHECK(cond)                                                                    \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);   \
            exit(1);                                                                   \
        }                                                                              \
    } while (0)

/* Exits with a message when `a != b` (both converted to long long). */
#define CHECK_EQ(a, b)                                                                 \
    do {                                                                               \
        long long check_a_ = (long long)(a), check_b_ = (long long)(b);                \
        if (check_a_ != check_b_) {                                                    \
            fprintf(stderr, "%s:%d: CHECK failed: %s == %s (%lld != %lld)\n", __FILE__, \
                    __LINE__, #a, #b, check_a_, check_b_);                             \
            exit(1);                                                                   \
        }                                                                              \
    } while (0)

/* The owner the environment promises (KTL_EXPECT_OWNER=libc|ktl|unavailable),
 * or 0 when it promises nothing. */
static inline uint32_t expected_owner(void)
{
    const char *e = getenv("KTL_EXPECT_OWNER");
    if (e == NULL || *e == '\0')
        return 0;
    if (strcmp(e, "libc") == 0)
        return KTL_OWNER_LIBC;
    if (strcmp(e, "ktl") == 0)
        return KTL_OWNER_KTL;
    if (strcmp(e, "unavailable") == 0)
        return KTL_OWNER_UNAVAILABLE;
    fprintf(stderr, "KTL_EXPECT_OWNER=%s: expected libc, ktl or unavailable\n", e);
    exit(2);
}

/* The raw cpu_id field at `offset` from the thread pointer, without the
 * fallback of ktl_cpu_id_fast(). */
static inline int32_t raw_cpu_id(ptrdiff_t offset)
{
    const char *tp = (const char *)__builtin_thread_pointer();
    return (int32_t) * (const volatile uint32_t *)(tp + offset + KTL_RSEQ_CPU_ID_OFFSET);
}

#endif
