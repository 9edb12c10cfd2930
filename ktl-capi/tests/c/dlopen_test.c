/*
 * dlopen / dlclose / dlopen cycles of libktl.so while threads use it.
 *
 *   dlopen_test /path/to/libktl.so
 *
 * This program does not link libktl: it loads it with dlopen. Worker
 * threads, created before the first dlopen, call the library through
 * function pointers the whole time; short-lived threads are created and exit
 * while the library is "closed" (their thread-exit handlers run inside it).
 * After each dlclose the library must still be mapped (it is linked with
 * -z nodelete): dladdr still finds it, /proc/self/maps still lists it, and
 * the next dlopen returns the same functions. When ktl owns the areas
 * (GLIBC_TUNABLES=glibc.pthread.rseq=0), the threads' registered areas live
 * in the library's thread-local block, which is why it must never be
 * unmapped.
 *
 * KTL_EXPECT_OWNER=libc|ktl|unavailable checks the owner.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check.h"
#include "ktl.h"

typedef int (*layout_fn)(struct ktl_layout *, size_t);
typedef int (*offset_fn)(ptrdiff_t *);
typedef int (*int_fn)(void);
typedef int (*counter_create_fn)(struct ktl_counter **, uint32_t);
typedef int (*counter_add_fn)(struct ktl_counter *, int64_t);
typedef int (*counter_sum_fn)(const struct ktl_counter *, int64_t *);
typedef int (*counter_destroy_fn)(struct ktl_counter *);
typedef int (*random_fn)(void *, size_t);

struct api {
    layout_fn layout;
    offset_fn offset;
    int_fn cpu_id, node_id, mm_cid;
    counter_create_fn counter_create;
    counter_add_fn counter_add;
    counter_sum_fn counter_sum;
    counter_destroy_fn counter_destroy;
    random_fn random;
};

static struct api api;
static struct ktl_counter *counter;
static ptrdiff_t offset;
static uint32_t owner;
static atomic_int go, stop;
static int passed;

static void *must_sym(void *handle, const char *name)
{
    dlerror();
    void *p = dlsym(handle, name);
    if (p == NULL) {
        fprintf(stderr, "dlsym(%s): %s\n", name, dlerror());
        exit(1);
    }
    return p;
}

static struct api resolve(void *h)
{
    struct api a;
    *(void **)&a.layout = must_sym(h, "ktl_layout");
    *(void **)&a.offset = must_sym(h, "ktl_offset");
    *(void **)&a.cpu_id = must_sym(h, "ktl_cpu_id");
    *(void **)&a.node_id = must_sym(h, "ktl_node_id");
    *(void **)&a.mm_cid = must_sym(h, "ktl_mm_cid");
    *(void **)&a.counter_create = must_sym(h, "ktl_counter_create");
    *(void **)&a.counter_add = must_sym(h, "ktl_counter_add");
    *(void **)&a.counter_sum = must_sym(h, "ktl_counter_sum");
    *(void **)&a.counter_destroy = must_sym(h, "ktl_counter_destroy");
    *(void **)&a.random = must_sym(h, "ktl_random");
    return a;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Whether the library that holds `fn` is still mapped, by dladdr and by
 * /proc/self/maps. */
static void check_mapped(void *fn, const char *path)
{
    Dl_info info;
    CHECK(dladdr(fn, &info) != 0);
    CHECK(info.dli_fname != NULL && strstr(info.dli_fname, "libktl") != NULL);
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    FILE *maps = fopen("/proc/self/maps", "r");
    CHECK(maps != NULL);
    char line[4096];
    int found = 0;
    while (fgets(line, sizeof line, maps) != NULL)
        found |= strstr(line, base) != NULL;
    fclose(maps);
    CHECK(found);
}

struct worker {
    pthread_t thread;
    int64_t added;
    long calls;
};

static void use_library(int64_t *added)
{
    int cpu = api.cpu_id();
    CHECK(cpu >= 0);
    CHECK(api.node_id() >= 0);
    CHECK(api.mm_cid() >= 0);
    /* After a call, this thread's area is live (unless there are none). */
    if (owner != KTL_OWNER_UNAVAILABLE)
        CHECK(raw_cpu_id(offset) >= 0);
    else
        CHECK_EQ(raw_cpu_id(offset), -1);
    CHECK_EQ(api.counter_add(counter, 1), 0);
    *added += 1;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    while (!atomic_load(&go))
        sched_yield();
    while (!atomic_load(&stop)) {
        use_library(&w->added);
        unsigned char r[16];
        CHECK_EQ(api.random(r, sizeof r), 0);
        w->calls++;
        if (w->calls % 64 == 0)
            sched_yield();
    }
    return NULL;
}

static atomic_llong churn_added;

static void *churn_main(void *arg)
{
    (void)arg;
    int64_t added = 0;
    use_library(&added);
    atomic_fetch_add(&churn_added, added);
    return NULL;
}

/* Short threads that register and exit while the library is closed. */
static void churn(int n)
{
    for (int i = 0; i < n; i++) {
        pthread_t t;
        CHECK(pthread_create(&t, NULL, churn_main, NULL) == 0);
        CHECK(pthread_join(t, NULL) == 0);
    }
}

enum { WORKERS = 4, CYCLES = 3 };

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s /path/to/libktl.so\n", argv[0]);
        return 2;
    }
    const char *path = argv[1];
    const char *name = getenv("KTL_TEST_NAME");

    /* Threads that exist before the library is loaded. */
    struct worker w[WORKERS];
    memset(w, 0, sizeof w);
    for (int i = 0; i < WORKERS; i++)
        CHECK(pthread_create(&w[i].thread, NULL, worker_main, &w[i]) == 0);

    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) {
        fprintf(stderr, "dlopen(%s): %s\n", path, dlerror());
        return 1;
    }
    api = resolve(h);
    struct ktl_layout l;
    CHECK_EQ(api.layout(&l, sizeof l), 0);
    owner = l.owner;
    if (expected_owner() != 0)
        CHECK_EQ(owner, expected_owner());
    CHECK_EQ(api.offset(&offset), 0);
    CHECK_EQ(offset, l.offset);
    CHECK_EQ(api.counter_create(&counter, 0), 0);
    passed++; /* loaded, layout as expected */

    atomic_store(&go, 1);
    sleep_ms(30);

    for (int cycle = 0; cycle < CYCLES; cycle++) {
        CHECK_EQ(dlclose(h), 0);
        /* Still mapped, and still working in every thread. */
        check_mapped((void *)api.cpu_id, path);
        sleep_ms(20);
        churn(16);
        check_mapped((void *)api.cpu_id, path);

        void *again = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        CHECK(again != NULL);
        CHECK(again == h);
        struct api b = resolve(again);
        CHECK(b.cpu_id == api.cpu_id);
        CHECK(b.counter_add == api.counter_add);
        struct ktl_layout l2;
        CHECK_EQ(b.layout(&l2, sizeof l2), 0);
        CHECK(memcmp(&l, &l2, sizeof l) == 0);
        h = again;
        sleep_ms(20);
        passed++; /* one cycle */
    }

    atomic_store(&stop, 1);
    int64_t want = atomic_load(&churn_added);
    long calls = 0;
    for (int i = 0; i < WORKERS; i++) {
        CHECK(pthread_join(w[i].thread, NULL) == 0);
        want += w[i].added;
        calls += w[i].calls;
    }
    CHECK(calls > 0);
    int64_t sum = 0;
    CHECK_EQ(api.counter_sum(counter, &sum), 0);
    CHECK_EQ(sum, want);
    CHECK_EQ(api.counter_destroy(counter), 0);
    CHECK_EQ(dlclose(h), 0);
    check_mapped((void *)api.cpu_id, path);
    passed++; /* exact totals after the cycles */

    printf("%s%s%d passed, 0 failed\n", name ? name : "", name ? ": " : "", passed);
    return 0;
}
