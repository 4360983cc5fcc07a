/* Process identity: tokens that survive pid reuse, and a liveness test that treats a
 * zombie (killed but not yet reaped by its parent) as dead.  A multiprocessing child
 * killed with SIGKILL stays a zombie until join(), and its locks must be recoverable
 * before that. */
#define _GNU_SOURCE
#include "shoal_core.h"
#include "atomic_internal.h"
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

int64_t shoal_monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Reads state and start time of pid.  Returns 1 on success, 0 if there is no such
 * process, -1 if it cannot be told (no procfs). */
static int read_proc_stat(pid_t pid, char *state, uint64_t *starttime) {
#if defined(__linux__)
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return errno == ENOENT || errno == ESRCH ? 0 : -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* the command name (field 2) may hold spaces and parentheses: parse after the last ')' */
    char *p = strrchr(buf, ')');
    if (!p || p[1] != ' ')
        return -1;
    p += 2;
    *state = *p;
    /* field 3 is the state; the start time is field 22, i.e. 19 fields further on */
    for (int field = 3; field < 22; field++) {
        p = strchr(p, ' ');
        if (!p)
            return -1;
        p++;
    }
    unsigned long long st = 0;
    if (sscanf(p, "%llu", &st) != 1)
        return -1;
    *starttime = st;
    return 1;
#else
    (void)pid; (void)state; (void)starttime;
    return -1;
#endif
}

/* PROC_PID_INIT_INO: the inode of the initial PID namespace, fixed by the kernel */
#define INITIAL_PID_NAMESPACE_INODE 0xEFFFFFFCu
#define PID_BITS 0x3FFFFFu
#define START_BITS 0xFFFFFFu

static uint64_t cached_token;
static uint32_t cached_namespace; /* the tag + 1 once known (0: not yet read) */
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

/* A forked child keeps its parent's namespace (only unshare/clone change it, and then
 * before the child runs shoal), but its pid and start time are its own. */
static void forget_token(void) { st64(&cached_token, 0); }
static void register_atfork(void) { pthread_atfork(NULL, NULL, forget_token); }

static uint32_t self_pid_namespace(void) {
    uint32_t known = __atomic_load_n(&cached_namespace, __ATOMIC_RELAXED);
    if (known)
        return known - 1;
    uint32_t tag = 0;
#if defined(__linux__)
    struct stat st;
    if (stat("/proc/self/ns/pid", &st) == 0 && st.st_ino != INITIAL_PID_NAMESPACE_INODE) {
        uint64_t h = ((uint64_t)st.st_ino ^ ((uint64_t)st.st_dev << 32)) * 0x9E3779B97F4A7C15ull;
        tag = (uint32_t)(h >> 48); /* 16 bits */
        if (tag == 0)
            tag = 1;
    }
#endif
    __atomic_store_n(&cached_namespace, tag + 1, __ATOMIC_RELAXED);
    return tag;
}

uint32_t shoal_token_pid(uint64_t token) { return (uint32_t)(token >> 32) & PID_BITS; }

uint32_t shoal_token_pid_namespace(uint64_t token) {
    return (uint32_t)((token >> 24) & 0xFFu) | (uint32_t)(((token >> 54) & 0xFFu) << 8);
}

uint64_t shoal_self_token(void) {
    uint64_t token = ld64(&cached_token);
    if (token)
        return token;
    pthread_once(&atfork_once, register_atfork);
    pid_t pid = getpid();
    char state;
    uint64_t starttime = 0;
    if (read_proc_stat(pid, &state, &starttime) != 1)
        starttime = 0;
    uint64_t ns = self_pid_namespace();
    token = ((ns >> 8) << 54) | ((uint64_t)((uint32_t)pid & PID_BITS) << 32) |
            ((ns & 0xFFu) << 24) | (starttime & START_BITS);
    st64(&cached_token, token);
    return token;
}

int shoal_token_alive(uint64_t token) {
    pid_t pid = (pid_t)shoal_token_pid(token);
    uint32_t tag = (uint32_t)token & START_BITS;
    if (pid <= 0)
        return 0;
    if (shoal_token_pid_namespace(token) != self_pid_namespace())
        return 1; /* another PID namespace: its pid names someone else here, if anyone */
    if (kill(pid, 0) != 0 && errno == ESRCH)
        return 0;
    char state = '?';
    uint64_t starttime = 0;
    int r = read_proc_stat(pid, &state, &starttime);
    if (r == 0)
        return 0;
    if (r < 0)
        return 1; /* no procfs: kill() said it exists, trust it */
    if (state == 'Z' || state == 'X')
        return 0;
    if (tag != 0 && ((uint32_t)starttime & START_BITS) != tag)
        return 0; /* the pid was reused by a younger process */
    return 1;
}
