/* CPU-bound benchmark workload with a fixed amount of work and a known call chain.
 * Usage: workload ITERATIONS   -> prints the wall-clock seconds the work took. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static volatile unsigned long sink;

__attribute__((noinline)) void leaf(void) {
    for (unsigned long i = 0; i < 100000; i++) sink += i * i;
}
__attribute__((noinline)) void middle(void) { leaf(); }
__attribute__((noinline)) void outer(long n) {
    for (long i = 0; i < n; i++) middle();
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 1000;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    outer(n);
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.6f\n", (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9);
    return 0;
}
