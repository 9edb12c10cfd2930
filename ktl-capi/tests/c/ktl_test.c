/*
 * The C test suite of libktl: every function, NULL and invalid arguments,
 * threads from pthread_create, and exact per-CPU counter and histogram totals.
 *
 * Environment:
 *   KTL_EXPECT_OWNER=libc|ktl|unavailable  the owner the run must find
 *   KTL_TEST_SECCOMP=1  block rseq with a seccomp filter (EPERM) before the
 *                       first ktl call; with GLIBC_TUNABLES=glibc.pthread.rseq=0
 *                       this gives the owner "unavailable"
 *
 * Prints "N passed, 0 failed" at the end; any failure exits non-zero at once.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <sched.h>
#include <stdalign.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "check.h"
#include "ktl.h"

static int passed;
static uint32_t owner;
static ptrdiff_t offset;

#define RUN(test)                                                                      \
    do {                                                                               \
        test();                                                                        \
        passed++;                                                                      \
        printf("ok %s\n", #test);                                                      \
        fflush(stdout);                                                                \
    } while (0)

/* A filter that makes rseq fail with EPERM, as a sandbox might. */
static void block_rseq(void)
{
#if defined(__x86_64__)
    const uint32_t arch = AUDIT_ARCH_X86_64;
#elif defined(__aarch64__)
    const uint32_t arch = AUDIT_ARCH_AARCH64;
#endif
    struct sock_filter code[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, arch, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_rseq, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {.len = sizeof code / sizeof code[0], .filter = code};
    CHECK(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0);
    CHECK(prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) == 0);
}

static void test_layout(void)
{
    struct ktl_layout l;
    memset(&l, 0xa5, sizeof l);
    CHECK_EQ(ktl_layout(&l, sizeof l), 0);
    owner = l.owner;
    uint32_t want = expected_owner();
    if (want != 0)
        CHECK_EQ(l.owner, want);
    CHECK(l.owner == KTL_OWNER_LIBC || l.owner == KTL_OWNER_KTL ||
          l.owner == KTL_OWNER_UNAVAILABLE);

    ptrdiff_t off = 1;
    CHECK_EQ(ktl_offset(&off), 0);
    CHECK_EQ(off, l.offset);
    offset = off;
    CHECK_EQ(ktl_size(), l.size);
    CHECK(l.kernel_feature_size >= 20);
    CHECK(l.align >= 32 && (l.align & (l.align - 1)) == 0);
    CHECK(l.offset % 32 == 0);

    switch (l.owner) {
    case KTL_OWNER_LIBC:
        CHECK_EQ(l.reason, KTL_REASON_NONE);
        CHECK_EQ(l.error, 0);
        CHECK(l.flags & KTL_LAYOUT_LIBC_RSEQ);
        break;
    case KTL_OWNER_KTL:
        CHECK(l.reason == KTL_REASON_LIBC_DISABLED || l.reason == KTL_REASON_LIBC_WITHOUT_RSEQ);
        CHECK_EQ(l.error, 0);
        CHECK(l.flags & KTL_LAYOUT_LEN_CONFIRMED);
        break;
    default:
        CHECK(l.reason == KTL_REASON_NO_SYSCALL || l.reason == KTL_REASON_BLOCKED ||
              l.reason == KTL_REASON_REGISTRATION_FAILED);
        if (getenv("KTL_TEST_SECCOMP") != NULL) {
            CHECK_EQ(l.reason, KTL_REASON_BLOCKED);
            CHECK_EQ(l.error, EPERM);
        }
        CHECK_EQ(l.size, 0);
        CHECK_EQ(l.registered_len, 0);
        CHECK_EQ(l.features, 0);
        break;
    }
    if (l.owner != KTL_OWNER_UNAVAILABLE) {
        CHECK(l.size >= 20);
        CHECK(l.registered_len >= 32);
        CHECK(l.features & KTL_FEATURE_CPU_ID);
        CHECK(!!(l.features & KTL_FEATURE_NODE_ID) == (l.size >= 24));
        CHECK(!!(l.features & KTL_FEATURE_MM_CID) == (l.size >= 28));
    }
}

static void test_layout_arguments(void)
{
    /* A larger struct than this library knows: the tail is zeroed. */
    alignas(16) unsigned char big[KTL_LAYOUT_SIZE_V1 + 40];
    memset(big, 0xa5, sizeof big);
    CHECK_EQ(ktl_layout((struct ktl_layout *)(void *)big, sizeof big), 0);
    for (size_t i = KTL_LAYOUT_SIZE_V1; i < sizeof big; i++)
        CHECK_EQ(big[i], 0);
    struct ktl_layout l;
    memcpy(&l, big, sizeof l);
    CHECK_EQ(l.owner, owner);

    CHECK_EQ(ktl_layout(NULL, sizeof l), -EINVAL);
    CHECK_EQ(ktl_layout(&l, 0), -EINVAL);
    CHECK_EQ(ktl_layout(&l, KTL_LAYOUT_SIZE_V1 - 1), -EINVAL);
    CHECK_EQ(ktl_layout(&l, SIZE_MAX), -EINVAL);
    CHECK_EQ(ktl_layout((struct ktl_layout *)(void *)(big + 1), sizeof l), -EINVAL);
    CHECK_EQ(ktl_offset(NULL), -EINVAL);
}

static int online_cpus(void)
{
    long n = sysconf(_SC_NPROCESSORS_CONF);
    return n > 0 ? (int)n : 1;
}

static int getcpu_node(void)
{
    unsigned cpu = 0, node = 0;
    CHECK(syscall(SYS_getcpu, &cpu, &node, NULL) == 0);
    return (int)node;
}

static void test_cpu_node_cid(void)
{
    int cpus = online_cpus();
    int cpu = ktl_cpu_id();
    CHECK(cpu >= 0 && cpu < cpus);
    CHECK(ktl_node_id() >= 0);
    int cid = ktl_mm_cid();
    CHECK(cid >= 0 && cid < cpus);
    int fast = ktl_cpu_id_fast(offset);
    CHECK(fast >= 0 && fast < cpus);

    /* Pinned to each allowed CPU in turn, every source agrees. */
    cpu_set_t saved, one;
    CHECK(sched_getaffinity(0, sizeof saved, &saved) == 0);
    int allowed = CPU_COUNT(&saved);
    for (int c = 0; c < CPU_SETSIZE; c++) {
        if (!CPU_ISSET(c, &saved))
            continue;
        CPU_ZERO(&one);
        CPU_SET(c, &one);
        CHECK(sched_setaffinity(0, sizeof one, &one) == 0);
        CHECK_EQ(ktl_cpu_id(), c);
        CHECK_EQ(ktl_cpu_id_fast(offset), c);
        CHECK_EQ(sched_getcpu(), c);
        CHECK_EQ(ktl_node_id(), getcpu_node());
        cid = ktl_mm_cid();
        CHECK(cid >= 0 && cid < cpus);
        struct ktl_layout l;
        CHECK_EQ(ktl_layout(&l, sizeof l), 0);
        if (l.features & KTL_FEATURE_MM_CID)
            CHECK(cid < allowed);
    }
    CHECK(sched_setaffinity(0, sizeof saved, &saved) == 0);
}

/* The fast path really reads the area: after a call in this thread, the
 * raw cpu_id at the offset is a CPU (or -1 when the areas are unavailable). */
static void test_fast_path_reads_the_area(void)
{
    CHECK(ktl_cpu_id() >= 0);
    int32_t raw = raw_cpu_id(offset);
    if (owner == KTL_OWNER_UNAVAILABLE)
        CHECK_EQ(raw, -1);
    else
        CHECK(raw >= 0 && raw < online_cpus());
}

static void test_counter(void)
{
    struct ktl_counter *c = NULL;
    int64_t sum = -1;
    CHECK_EQ(ktl_counter_create(&c, 0), 0);
    CHECK(c != NULL);
    CHECK_EQ(ktl_counter_sum(c, &sum), 0);
    CHECK_EQ(sum, 0);
    for (int i = 1; i <= 1000; i++)
        CHECK_EQ(ktl_counter_add(c, i), 0);
    CHECK_EQ(ktl_counter_add(c, -500500 - 7), 0);
    CHECK_EQ(ktl_counter_sum(c, &sum), 0);
    CHECK_EQ(sum, -7);
    /* Arithmetic wraps. */
    CHECK_EQ(ktl_counter_add(c, 7), 0);
    CHECK_EQ(ktl_counter_add(c, INT64_MAX), 0);
    CHECK_EQ(ktl_counter_add(c, 1), 0);
    CHECK_EQ(ktl_counter_sum(c, &sum), 0);
    CHECK(sum == INT64_MIN);
    CHECK_EQ(ktl_counter_destroy(c), 0);

    CHECK_EQ(ktl_counter_create(&c, KTL_COUNTER_MM_CID), 0);
    for (int i = 0; i < 1000; i++)
        CHECK_EQ(ktl_counter_add(c, 3), 0);
    CHECK_EQ(ktl_counter_sum(c, &sum), 0);
    CHECK_EQ(sum, 3000);
    CHECK_EQ(ktl_counter_destroy(c), 0);
}

static void test_counter_arguments(void)
{
    struct ktl_counter *c = (struct ktl_counter *)(uintptr_t)0x1;
    int64_t sum = 42;
    CHECK_EQ(ktl_counter_create(NULL, 0), -EINVAL);
    CHECK_EQ(ktl_counter_create(&c, 2), -EINVAL);
    CHECK_EQ(ktl_counter_create(&c, UINT32_MAX), -EINVAL);
    CHECK(c == (struct ktl_counter *)(uintptr_t)0x1); /* untouched on error */
    CHECK_EQ(ktl_counter_add(NULL, 1), -EINVAL);
    CHECK_EQ(ktl_counter_sum(NULL, &sum), -EINVAL);
    CHECK_EQ(ktl_counter_destroy(NULL), -EINVAL);
    CHECK_EQ(sum, 42);

    /* Memory that is not a counter: aligned but without the tag, and
     * misaligned. */
    alignas(256) static unsigned char not_counter[512];
    struct ktl_counter *fake = (struct ktl_counter *)(void *)not_counter;
    struct ktl_counter *odd = (struct ktl_counter *)(void *)(not_counter + 8);
    for (int i = 0; i < 2; i++) {
        CHECK_EQ(ktl_counter_add(fake, 1), -EINVAL);
        CHECK_EQ(ktl_counter_sum(fake, &sum), -EINVAL);
        CHECK_EQ(ktl_counter_destroy(fake), -EINVAL);
        CHECK_EQ(ktl_counter_add(odd, 1), -EINVAL);
        CHECK_EQ(ktl_counter_sum(odd, &sum), -EINVAL);
        CHECK_EQ(ktl_counter_destroy(odd), -EINVAL);
        memset(not_counter, 0xff, sizeof not_counter);
    }
    CHECK_EQ(sum, 42);

    CHECK_EQ(ktl_counter_create(&c, 0), 0);
    CHECK_EQ(ktl_counter_sum(c, NULL), -EINVAL);
    CHECK_EQ(ktl_counter_destroy(c), 0);
}

static void test_histogram(void)
{
    static const double bounds[] = {1.0, 2.0, 5.0};
    struct ktl_histogram *h = NULL;
    uint64_t buckets[4] = {9, 9, 9, 9}, count = 9;
    double sum = -1;
    CHECK_EQ(ktl_histogram_create(&h, bounds, 3, 0), 0);
    CHECK(h != NULL);
    CHECK_EQ(ktl_histogram_snapshot(h, buckets, 4, &count, &sum), 0);
    CHECK(buckets[0] == 0 && buckets[3] == 0 && count == 0 && sum == 0.0);
    static const double values[] = {0.5, 1.0, 1.5, 2.0, 4.0, 5.0, 6.0, -3.0};
    for (size_t i = 0; i < sizeof values / sizeof values[0]; i++)
        CHECK_EQ(ktl_histogram_observe(h, values[i]), 0);
    CHECK_EQ(ktl_histogram_snapshot(h, buckets, 4, &count, &sum), 0);
    /* <= 1: 0.5, 1, -3; <= 2: 1.5, 2; <= 5: 4, 5; +Inf: 6. */
    CHECK(buckets[0] == 3 && buckets[1] == 2 && buckets[2] == 2 && buckets[3] == 1);
    CHECK(count == 8);
    CHECK(sum == 17.0);
    /* Count and sum alone; a longer buffer is fine. */
    uint64_t longer[6] = {0};
    CHECK_EQ(ktl_histogram_snapshot(h, NULL, 0, &count, NULL), 0);
    CHECK(count == 8);
    CHECK_EQ(ktl_histogram_snapshot(h, longer, 6, NULL, NULL), 0);
    CHECK(longer[0] == 3 && longer[3] == 1);
    CHECK_EQ(ktl_histogram_destroy(h), 0);

    /* No bounds: one bucket, +Inf. */
    CHECK_EQ(ktl_histogram_create(&h, NULL, 0, KTL_HISTOGRAM_MM_CID), 0);
    CHECK_EQ(ktl_histogram_observe(h, 2.5), 0);
    CHECK_EQ(ktl_histogram_snapshot(h, buckets, 1, &count, &sum), 0);
    CHECK(buckets[0] == 1 && count == 1 && sum == 2.5);
    CHECK_EQ(ktl_histogram_destroy(h), 0);
}

static void test_histogram_arguments(void)
{
    static const double ok[] = {1.0, 2.0};
    static const double flat[] = {1.0, 1.0};
    double bad[] = {1.0, 0.0};
    bad[1] = bad[1] / bad[1]; /* NaN */
    struct ktl_histogram *h = (struct ktl_histogram *)(uintptr_t)0x1;
    CHECK_EQ(ktl_histogram_create(NULL, ok, 2, 0), -EINVAL);
    CHECK_EQ(ktl_histogram_create(&h, NULL, 2, 0), -EINVAL);
    CHECK_EQ(ktl_histogram_create(&h, ok, 2, 2), -EINVAL);
    CHECK_EQ(ktl_histogram_create(&h, flat, 2, 0), -EINVAL);
    CHECK_EQ(ktl_histogram_create(&h, bad, 2, 0), -EINVAL);
    CHECK_EQ(ktl_histogram_create(&h, ok, KTL_HISTOGRAM_MAX_BOUNDS + 1, 0), -EINVAL);
    CHECK(h == (struct ktl_histogram *)(uintptr_t)0x1); /* untouched on error */
    CHECK_EQ(ktl_histogram_observe(NULL, 1.0), -EINVAL);
    CHECK_EQ(ktl_histogram_snapshot(NULL, NULL, 0, NULL, NULL), -EINVAL);
    CHECK_EQ(ktl_histogram_destroy(NULL), -EINVAL);

    /* A counter is not a histogram, nor is memory without the tag. */
    struct ktl_counter *c = NULL;
    CHECK_EQ(ktl_counter_create(&c, 0), 0);
    CHECK_EQ(ktl_histogram_observe((struct ktl_histogram *)(void *)c, 1.0), -EINVAL);
    CHECK_EQ(ktl_histogram_destroy((struct ktl_histogram *)(void *)c), -EINVAL);
    CHECK_EQ(ktl_counter_destroy(c), 0);
    alignas(256) static unsigned char not_histogram[512];
    struct ktl_histogram *fake = (struct ktl_histogram *)(void *)not_histogram;
    CHECK_EQ(ktl_histogram_observe(fake, 1.0), -EINVAL);
    CHECK_EQ(ktl_histogram_destroy(fake), -EINVAL);

    uint64_t buckets[3] = {7, 7, 7};
    CHECK_EQ(ktl_histogram_create(&h, ok, 2, 0), 0);
    CHECK_EQ(ktl_histogram_observe(h, 1.5), 0);
    CHECK_EQ(ktl_histogram_snapshot(h, buckets, 2, NULL, NULL), -ERANGE);
    CHECK(buckets[0] == 7); /* nothing written */
    CHECK_EQ(ktl_histogram_snapshot(h, NULL, 3, NULL, NULL), -EINVAL);
    CHECK_EQ(ktl_histogram_destroy(h), 0);
}

static void test_random(void)
{
    unsigned char a[64], b[64];
    memset(a, 0, sizeof a);
    memset(b, 0, sizeof b);
    CHECK_EQ(ktl_random(a, sizeof a), 0);
    CHECK_EQ(ktl_random(b, sizeof b), 0);
    CHECK(memcmp(a, b, sizeof a) != 0);
    static const unsigned char zero[64];
    CHECK(memcmp(a, zero, sizeof a) != 0);

    /* A large buffer: about 1/256 of the bytes are zero, never most. */
    size_t n = 1 << 20, zeros = 0;
    unsigned char *big = malloc(n);
    CHECK(big != NULL);
    memset(big, 0, n);
    CHECK_EQ(ktl_random(big, n), 0);
    for (size_t i = 0; i < n; i++)
        zeros += big[i] == 0;
    CHECK(zeros < n / 64);
    free(big);

    CHECK_EQ(ktl_random(a, 0), 0);
    CHECK_EQ(ktl_random(NULL, 16), -EINVAL);
    CHECK_EQ(ktl_random(NULL, 0), -EINVAL);
    CHECK_EQ(ktl_random(a, SIZE_MAX), -EINVAL);
    CHECK_EQ(ktl_random(a, (size_t)PTRDIFF_MAX + 1), -EINVAL);
}

/* Errors never touch errno. */
static void test_errno_untouched(void)
{
    errno = 12345;
    struct ktl_layout l;
    (void)ktl_layout(NULL, sizeof l);
    (void)ktl_layout(&l, sizeof l);
    (void)ktl_offset(NULL);
    (void)ktl_cpu_id();
    (void)ktl_node_id();
    (void)ktl_mm_cid();
    (void)ktl_size();
    (void)ktl_counter_add(NULL, 1);
    (void)ktl_random(NULL, 1);
    CHECK_EQ(errno, 12345);
}

/* 8 threads x 1,250,000: 10^7 adds and 10^7 observations. */
enum { THREADS = 8, ADDS = 1250000 };

struct worker {
    pthread_t thread;
    struct ktl_counter *counter;
    struct ktl_histogram *histogram;
    int index;
    int64_t added;
    unsigned char random[32];
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    int cpus = online_cpus();

    /* The same offset, and working accessors, in every thread. */
    ptrdiff_t off = 0;
    CHECK_EQ(ktl_offset(&off), 0);
    CHECK_EQ(off, offset);
    int cpu = ktl_cpu_id_fast(off);
    CHECK(cpu >= 0 && cpu < cpus);
    if (owner != KTL_OWNER_UNAVAILABLE)
        CHECK(raw_cpu_id(off) >= 0);
    else
        CHECK_EQ(raw_cpu_id(off), -1);
    CHECK(ktl_node_id() >= 0);
    int cid = ktl_mm_cid();
    CHECK(cid >= 0 && cid < cpus);
    CHECK_EQ(ktl_random(w->random, sizeof w->random), 0);

    int64_t step = w->index % 5 + 1;
    for (int i = 0; i < ADDS; i++) {
        CHECK_EQ(ktl_counter_add(w->counter, step), 0);
        CHECK_EQ(ktl_histogram_observe(w->histogram, (double)step * 0.5), 0);
        w->added += step;
        if (i % 4096 == 0) {
            if (i % 8192 == 0)
                sched_yield();
            cpu = ktl_cpu_id_fast(off);
            CHECK(cpu >= 0 && cpu < cpus);
        }
    }
    CHECK_EQ(ktl_counter_add(w->counter, -1), 0);
    w->added -= 1;
    return NULL;
}

static void run_workers(uint32_t flags)
{
    struct ktl_counter *c = NULL;
    CHECK_EQ(ktl_counter_create(&c, flags), 0);
    /* Bounds 1 and 2: steps 1 and 2 (0.5, 1.0) in the first bucket, 3 and
     * 4 in the second, 5 (2.5) in +Inf. */
    static const double bounds[] = {1.0, 2.0};
    struct ktl_histogram *h = NULL;
    CHECK_EQ(ktl_histogram_create(&h, bounds, 2, flags), 0);
    struct worker w[THREADS];
    memset(w, 0, sizeof w);
    int64_t want = 0;
    for (int i = 0; i < THREADS; i++) {
        w[i].counter = c;
        w[i].histogram = h;
        w[i].index = i;
        CHECK(pthread_create(&w[i].thread, NULL, worker_main, &w[i]) == 0);
    }
    for (int i = 0; i < THREADS; i++) {
        CHECK(pthread_join(w[i].thread, NULL) == 0);
        want += w[i].added;
    }
    int64_t exact = 0;
    for (int i = 0; i < THREADS; i++)
        exact += (int64_t)ADDS * (i % 5 + 1) - 1;
    CHECK_EQ(want, exact);
    int64_t sum = 0;
    CHECK_EQ(ktl_counter_sum(c, &sum), 0);
    CHECK_EQ(sum, exact);
    /* The observations: ADDS per thread, each a multiple of 0.5, so the
     * sum is exact. */
    uint64_t buckets[3], count = 0, want_buckets[3] = {0, 0, 0};
    double hsum = 0, want_sum = 0;
    for (int i = 0; i < THREADS; i++) {
        int st = i % 5 + 1;
        want_buckets[st <= 2 ? 0 : st <= 4 ? 1 : 2] += ADDS;
        want_sum += (double)ADDS * st * 0.5;
    }
    CHECK_EQ(ktl_histogram_snapshot(h, buckets, 3, &count, &hsum), 0);
    for (int b = 0; b < 3; b++)
        CHECK(buckets[b] == want_buckets[b]);
    CHECK(count == (uint64_t)THREADS * ADDS);
    CHECK(hsum == want_sum);
    CHECK_EQ(ktl_histogram_destroy(h), 0);
    /* Every thread drew different random bytes. */
    for (int i = 0; i < THREADS; i++)
        for (int j = i + 1; j < THREADS; j++)
            CHECK(memcmp(w[i].random, w[j].random, sizeof w[i].random) != 0);
    CHECK_EQ(ktl_counter_destroy(c), 0);
}

static void test_threads_cpu_index(void) { run_workers(0); }

static void test_threads_mm_cid_index(void) { run_workers(KTL_COUNTER_MM_CID); }

struct churn {
    struct ktl_counter *counter;
};

static void *churn_main(void *arg)
{
    struct churn *ch = arg;
    CHECK(ktl_cpu_id_fast(offset) >= 0);
    CHECK_EQ(ktl_counter_add(ch->counter, 1), 0);
    return NULL;
}

/* Many short threads: each registers (when ktl owns the areas) and
 * unregisters at exit; counts stay exact. */
static void test_thread_churn(void)
{
    struct churn ch;
    CHECK_EQ(ktl_counter_create(&ch.counter, 0), 0);
    enum { ROUNDS = 50, WIDTH = 8 };
    for (int r = 0; r < ROUNDS; r++) {
        pthread_t t[WIDTH];
        for (int i = 0; i < WIDTH; i++)
            CHECK(pthread_create(&t[i], NULL, churn_main, &ch) == 0);
        for (int i = 0; i < WIDTH; i++)
            CHECK(pthread_join(t[i], NULL) == 0);
    }
    int64_t sum = 0;
    CHECK_EQ(ktl_counter_sum(ch.counter, &sum), 0);
    CHECK_EQ(sum, ROUNDS * WIDTH);
    CHECK_EQ(ktl_counter_destroy(ch.counter), 0);
}

int main(void)
{
    if (getenv("KTL_TEST_SECCOMP") != NULL)
        block_rseq();
    const char *name = getenv("KTL_TEST_NAME");

    RUN(test_layout);
    RUN(test_layout_arguments);
    RUN(test_cpu_node_cid);
    RUN(test_fast_path_reads_the_area);
    RUN(test_counter);
    RUN(test_counter_arguments);
    RUN(test_histogram);
    RUN(test_histogram_arguments);
    RUN(test_random);
    RUN(test_errno_untouched);
    RUN(test_threads_cpu_index);
    RUN(test_threads_mm_cid_index);
    RUN(test_thread_churn);

    printf("%s%s%d passed, 0 failed\n", name ? name : "", name ? ": " : "", passed);
    return 0;
}
