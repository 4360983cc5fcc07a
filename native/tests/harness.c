/* The runner behind harness.h: one forked process (and process group) per test. */
#define _GNU_SOURCE
#include "harness.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_TESTS 256
#define TEST_TIMEOUT_S 60 /* a test that runs longer hangs: its process group is killed */

static struct {
    const char *name;
    test_fn fn;
} tests[MAX_TESTS];
static int n_tests;

void harness_register(const char *name, test_fn fn) {
    if (n_tests == MAX_TESTS) {
        fprintf(stderr, "harness: more than %d tests, raise MAX_TESTS\n", MAX_TESTS);
        abort();
    }
    tests[n_tests].name = name;
    tests[n_tests].fn = fn;
    n_tests++;
}

void harness_fail(const char *file, int line, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "    %s:%d: [pid %d] %s\n", file, line, (int)getpid(), msg);
    fflush(stderr);
    _exit(1);
}

const char *status_name(shoal_status st) {
    switch (st) {
    case SHOAL_OK: return "SHOAL_OK";
    case SHOAL_AGAIN: return "SHOAL_AGAIN";
    case SHOAL_TIMEOUT: return "SHOAL_TIMEOUT";
    case SHOAL_INTR: return "SHOAL_INTR";
    case SHOAL_OWNER_DIED: return "SHOAL_OWNER_DIED";
    case SHOAL_NOT_OWNER: return "SHOAL_NOT_OWNER";
    case SHOAL_OVERFLOW: return "SHOAL_OVERFLOW";
    case SHOAL_BAD_LAYOUT: return "SHOAL_BAD_LAYOUT";
    }
    return "(not a shoal_status)";
}

void *shared_map(size_t size) {
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        harness_fail(__FILE__, __LINE__, "mmap: %s", strerror(errno));
    return p; /* anonymous mappings start zeroed */
}

double now_ms(void) { return (double)shoal_monotonic_ns() / 1e6; }

void sleep_ms(double ms) {
    struct timespec ts = {(time_t)(ms / 1000), (long)((ms - (time_t)(ms / 1000) * 1000.0) * 1e6)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

pid_t spawn(void (*fn)(void *), void *arg) {
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        harness_fail(__FILE__, __LINE__, "fork: %s", strerror(errno));
    if (pid == 0) {
        fn(arg);
        _exit(0);
    }
    return pid;
}

int join_status(pid_t pid, double timeout_ms) {
    double deadline = now_ms() + timeout_ms;
    for (;;) {
        int status;
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            return status;
        if (r < 0 && errno != EINTR)
            harness_fail(__FILE__, __LINE__, "waitpid(%d): %s", (int)pid, strerror(errno));
        if (now_ms() > deadline) {
            kill(pid, SIGKILL);
            harness_fail(__FILE__, __LINE__, "child %d still running after %.0f ms", (int)pid,
                         timeout_ms);
        }
        sleep_ms(1);
    }
}

void join(pid_t pid, double timeout_ms) {
    int status = join_status(pid, timeout_ms);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        harness_fail(__FILE__, __LINE__, "child %d failed (wait status 0x%x)", (int)pid, status);
}

void kill_leave_zombie(pid_t pid) {
    kill(pid, SIGKILL);
    /* WNOWAIT: learn that it died but leave it a zombie, as an un-joined
     * multiprocessing child is */
    siginfo_t info;
    while (waitid(P_PID, (id_t)pid, &info, WEXITED | WNOWAIT) != 0) {
        if (errno != EINTR)
            harness_fail(__FILE__, __LINE__, "waitid(%d): %s", (int)pid, strerror(errno));
    }
}

void kill_and_reap(pid_t pid) {
    kill(pid, SIGKILL);
    join_status(pid, 5000);
}

void await_at_least(const uint32_t *word, uint32_t value, double timeout_ms) {
    double deadline = now_ms() + timeout_ms;
    while (shoal_load32(word) < value) {
        if (now_ms() > deadline)
            harness_fail(__FILE__, __LINE__, "word stayed at %u, want >= %u after %.0f ms",
                         shoal_load32(word), value, timeout_ms);
        sleep_ms(0.2);
    }
}

uint64_t forged_token(pid_t pid) {
    /* the real tag is the start time; a process started at tick 0x5eed would be older
     * than this machine's boot by the time any test runs */
    uint64_t self = shoal_self_token();
    uint32_t tag = (self & 0x7FFFFFu) == 0x5eed ? 0x5eee : 0x5eed;
    /* in this process's own PID namespace (shoal_core.h: bits 54-61 and 24-31), without
     * SHOAL_TOKEN_LIVENESS */
    return (self & 0x3FC00000FF000000ull) | ((uint64_t)(uint32_t)pid << 32) | tag;
}

uint32_t rnd(uint64_t *state) {
    if (*state == 0)
        *state = ((uint64_t)getpid() << 32) ^ (uint64_t)shoal_monotonic_ns() ^ 0x9e3779b97f4a7c15ull;
    uint64_t x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    return (uint32_t)(x >> 16);
}

/* ---- the runner ----------------------------------------------------------------------- */

static int selected(const char *name, int argc, char **argv) {
    int any = 0;
    for (int i = 1; i < argc; i++) {
        if (argv[i][0] == '-')
            continue;
        any = 1;
        if (strstr(name, argv[i]))
            return 1;
    }
    return !any;
}

/* Runs one test in its own process group; returns 1 if it passed. */
static int run_one(int i, double *elapsed) {
    double t0 = now_ms();
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        exit(2);
    }
    if (pid == 0) {
        setpgid(0, 0);
        alarm(TEST_TIMEOUT_S); /* the runner kills the group too; this also covers a
                                  runner that died */
        tests[i].fn();
        fflush(NULL);
        _exit(0);
    }
    setpgid(pid, pid); /* both sides set it: no window where the child has none */
    int status = 0, passed = 0;
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid) {
            passed = WIFEXITED(status) && WEXITSTATUS(status) == 0;
            if (WIFSIGNALED(status))
                fprintf(stderr, "    killed by signal %d%s\n", WTERMSIG(status),
                        WTERMSIG(status) == SIGALRM ? " (timed out)" : "");
            else if (!passed && WEXITSTATUS(status) != 1)
                fprintf(stderr, "    exit status %d\n", WEXITSTATUS(status));
            break;
        }
        if (now_ms() - t0 > (TEST_TIMEOUT_S + 5) * 1000.0) {
            fprintf(stderr, "    timed out after %d s\n", TEST_TIMEOUT_S);
            kill(-pid, SIGKILL);
            waitpid(pid, &status, 0);
            break;
        }
        sleep_ms(1);
    }
    kill(-pid, SIGKILL); /* helpers a failed test left behind */
    /* reap any of them that were our children (they are the test's, normally) */
    while (waitpid(-pid, NULL, WNOHANG) > 0) {
    }
    *elapsed = now_ms() - t0;
    return passed;
}

/* Liveness files of this run (every test process makes one, and killed helpers leave
 * theirs) go to a directory of their own, not the machine's /dev/shm. */
static char liveness_dir[] = "/tmp/shoal-native-live.XXXXXX";

const char *harness_liveness_dir(void) { return liveness_dir; }

static void remove_liveness_dir(void) {
    DIR *d = opendir(liveness_dir);
    if (d) {
        struct dirent *e;
        char path[SHOAL_LIVENESS_PATH_MAX + 64];
        while ((e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            snprintf(path, sizeof path, "%s/%s", liveness_dir, e->d_name);
            unlink(path);
        }
        closedir(d);
    }
    rmdir(liveness_dir);
}

int main(int argc, char **argv) {
    int verbose = 0;
    if (!mkdtemp(liveness_dir)) {
        perror("mkdtemp");
        return 2;
    }
    shoal_liveness_set_dir(liveness_dir);
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "-v") == 0)
            verbose = 1;
    setvbuf(stdout, NULL, _IOLBF, 0);
    int ran = 0, failed = 0;
    double t0 = now_ms();
    for (int i = 0; i < n_tests; i++) {
        if (!selected(tests[i].name, argc, argv))
            continue;
        ran++;
        if (verbose) {
            printf("  %-44s ...\n", tests[i].name);
            fflush(stdout);
        }
        double ms;
        int ok = run_one(i, &ms);
        if (!ok)
            failed++;
        if (verbose || !ok)
            printf("%s %-44s %7.1f ms\n", ok ? "ok  " : "FAIL", tests[i].name, ms);
    }
    remove_liveness_dir();
    printf("%d tests, %d failed, %.2f s\n", ran, failed, (now_ms() - t0) / 1000);
    if (ran == 0) {
        fprintf(stderr, "no test matched\n");
        return 2;
    }
    return failed ? 1 : 0;
}
