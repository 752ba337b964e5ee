/* The churning-host workload's processes.
 *   churn short MS          burns MS ms of its own CPU in main -> outer -> middle -> leaf, exits
 *   churn long US PERIOD_MS burns US microseconds every PERIOD_MS ms until killed
 * Built twice, with and without frame pointers, so the agent needs unwind tables for half. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

static volatile unsigned long sink;

static double cpu_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

__attribute__((noinline)) void leaf(void) {
    for (unsigned long i = 0; i < 20000; i++) sink += i * i;
}

__attribute__((noinline)) void middle(void) {
    leaf();
    sink++;
}

__attribute__((noinline)) void outer(double us) {
    double end = cpu_us() + us;
    while (cpu_us() < end) middle();
    sink++;
}

int main(int argc, char **argv) {
    if (argc >= 3 && strcmp(argv[1], "short") == 0) {
        outer(atof(argv[2]) * 1e3);
        return 0;
    }
    if (argc >= 4 && strcmp(argv[1], "long") == 0) {
        double us = atof(argv[2]);
        long period_ms = atol(argv[3]);
        struct timespec pause = {period_ms / 1000, (period_ms % 1000) * 1000000L};
        for (;;) {
            outer(us);
            nanosleep(&pause, NULL);
        }
    }
    return 2;
}
