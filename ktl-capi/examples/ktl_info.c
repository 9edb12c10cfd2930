/*
 * A tour of libktl: the layout, the accessors, the inline fast path, a
 * per-CPU counter shared by threads, and random bytes.
 *
 *   cc -O2 ktl_info.c -o ktl_info $(pkg-config --cflags --libs ktl) -pthread
 *   ./ktl_info
 *   GLIBC_TUNABLES=glibc.pthread.rseq=0 ./ktl_info    # ktl owns the areas
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include <ktl.h>

static ptrdiff_t offset; /* the same in every thread: read it once */
static struct ktl_counter *hits;

static void *worker(void *arg)
{
    (void)arg;
    for (int i = 0; i < 100000; i++) {
        /* One thread-pointer-relative load per call, once registered. */
        if (ktl_cpu_id_fast(offset) < 0 || ktl_counter_add(hits, 1) != 0)
            return (void *)1;
    }
    return NULL;
}

static const char *owner_name(uint32_t owner)
{
    switch (owner) {
    case KTL_OWNER_LIBC:
        return "libc";
    case KTL_OWNER_KTL:
        return "ktl";
    case KTL_OWNER_UNAVAILABLE:
        return "unavailable";
    default:
        return "?";
    }
}

int main(void)
{
    struct ktl_layout l;
    int err = ktl_layout(&l, sizeof l);
    if (err != 0) {
        fprintf(stderr, "ktl_layout: %s\n", strerror(-err));
        return 1;
    }
    printf("owner      %s (reason %u, error %d)\n", owner_name(l.owner), l.reason, l.error);
    printf("offset     %td from the thread pointer\n", l.offset);
    printf("size       %u active bytes, registered %u, align %u\n", l.size, l.registered_len,
           l.align);
    printf("features  %s%s%s%s\n", l.features & KTL_FEATURE_CPU_ID ? " cpu_id" : "",
           l.features & KTL_FEATURE_NODE_ID ? " node_id" : "",
           l.features & KTL_FEATURE_MM_CID ? " mm_cid" : "",
           l.features & KTL_FEATURE_SLICE_CTRL ? " slice_ctrl" : "");

    if ((err = ktl_offset(&offset)) != 0) {
        fprintf(stderr, "ktl_offset: %s\n", strerror(-err));
        return 1;
    }
    printf("cpu        %d (fast path %d), node %d, mm_cid %d\n", ktl_cpu_id(),
           ktl_cpu_id_fast(offset), ktl_node_id(), ktl_mm_cid());

    if ((err = ktl_counter_create(&hits, 0)) != 0) {
        fprintf(stderr, "ktl_counter_create: %s\n", strerror(-err));
        return 1;
    }
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        if (pthread_create(&t[i], NULL, worker, NULL) != 0)
            return 1;
    int failed = 0;
    for (int i = 0; i < 4; i++) {
        void *r;
        pthread_join(t[i], &r);
        failed |= r != NULL;
    }
    int64_t sum = 0;
    if (failed || ktl_counter_sum(hits, &sum) != 0 || sum != 400000) {
        fprintf(stderr, "counter: %lld, expected 400000\n", (long long)sum);
        return 1;
    }
    printf("counter    %lld from 4 threads\n", (long long)sum);
    ktl_counter_destroy(hits);

    unsigned char key[16];
    if ((err = ktl_random(key, sizeof key)) != 0) {
        fprintf(stderr, "ktl_random: %s\n", strerror(-err));
        return 1;
    }
    printf("random     ");
    for (size_t i = 0; i < sizeof key; i++)
        printf("%02x", key[i]);
    printf("\n");
    return 0;
}
