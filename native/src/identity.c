/* Process identity: tokens that survive pid reuse, and a liveness test that treats a
 * zombie (killed but not yet reaped by its parent) as dead.  A multiprocessing child
 * killed with SIGKILL stays a zombie until join(), and its locks must be recoverable
 * before that.
 *
 * Across PID namespaces a pid means nothing, so each process also publishes a
 * liveness file (shoal_core.h): an empty file in /dev/shm on which it holds an open
 * file description lock (F_OFD_SETLK) for as long as it lives.  The kernel drops that
 * lock when the process dies, whichever namespace asks, and F_OFD_GETLK tells anyone
 * sharing /dev/shm whether it is still held (#10). */
#define _GNU_SOURCE
#include "shoal_core.h"
#include "atomic_internal.h"
#include <errno.h>
#include <fcntl.h>
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
#define START_BITS 0x7FFFFFu /* bit 23 is SHOAL_TOKEN_LIVENESS */

/* Liveness files are made and judged only where open file description locks exist
 * (Linux 3.15); elsewhere no token has SHOAL_TOKEN_LIVENESS and nothing changes. */
#if defined(__linux__) && defined(F_OFD_SETLK) && defined(F_OFD_GETLK)
#define HAVE_LIVENESS 1
#else
#define HAVE_LIVENESS 0
#endif

static uint64_t cached_token;
static uint32_t cached_namespace; /* the tag + 1 once known (0: not yet read) */
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
/* Serialises the first computation of the token (and so the making of the liveness
 * file) and keeps fork() out of the middle of it: a child then inherits either no
 * liveness file descriptor or the published one, which it closes. */
static pthread_mutex_t token_lock = PTHREAD_MUTEX_INITIALIZER;
static int live_fd = -1;  /* this process's liveness file, locked; -1: none */
static pid_t live_pid;    /* who made it (a child that skipped the atfork handlers is not) */
static char live_path[SHOAL_LIVENESS_PATH_MAX];
static const char *liveness_dir = SHOAL_LIVENESS_DIR;

static void before_fork(void) { pthread_mutex_lock(&token_lock); }
static void after_fork_in_parent(void) { pthread_mutex_unlock(&token_lock); }

/* A forked child keeps its parent's namespace (only unshare/clone change it, and then
 * before the child runs shoal), but its pid and start time are its own, and so is its
 * liveness file (made at its first token).  It closes its copy of the parent's
 * descriptor: an open file description lock lives while any descriptor of the
 * description does, so keeping it would keep the parent alive in others' eyes for as
 * long as the child lives.  (Closing releases no lock of the parent's: the lock
 * belongs to the description, which the parent's own descriptor still holds.) */
static void after_fork_in_child(void) {
    st64(&cached_token, 0);
    if (live_fd >= 0)
        close(live_fd);
    live_fd = -1;
    pthread_mutex_unlock(&token_lock);
}

static void register_atfork(void) {
    pthread_atfork(before_fork, after_fork_in_parent, after_fork_in_child);
}

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

void shoal_liveness_set_dir(const char *dir) { liveness_dir = dir; }

int shoal_liveness_name(uint64_t token, char *buf, size_t size) {
    int n = snprintf(buf, size, SHOAL_LIVENESS_PREFIX "%016llx", (unsigned long long)token);
    return n > 0 && (size_t)n < size ? n : -1;
}

#if HAVE_LIVENESS
static int liveness_path(uint64_t token, const char *suffix, char *buf, size_t size) {
    int n = snprintf(buf, size, "%s/" SHOAL_LIVENESS_PREFIX "%016llx%s", liveness_dir,
                     (unsigned long long)token, suffix);
    return n > 0 && (size_t)n < size ? 0 : -1;
}

/* The whole file, for F_OFD_SETLK and F_OFD_GETLK (l_pid must be 0 for both). */
static struct flock whole_file(void) {
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    return fl;
}

/* Whether st is a regular file of this user: the only kind that is judged or removed
 * (another user could plant anything under a liveness name). */
static int own_regular_file(const struct stat *st) {
    return S_ISREG(st->st_mode) && st->st_uid == geteuid();
}

/* Make this process's liveness file for `token` (its SHOAL_TOKEN_LIVENESS bit set),
 * locked before its final name appears: created under a temporary name with O_EXCL,
 * locked, then renamed into place, so that a reaper never sees the final name unlocked
 * while its process lives.  Returns 0, or -1 (nothing left behind) if it cannot. */
static int make_liveness_file(uint64_t token) {
    char tmp[SHOAL_LIVENESS_PATH_MAX], path[SHOAL_LIVENESS_PATH_MAX];
    if (liveness_path(token, SHOAL_LIVENESS_TEMP_SUFFIX, tmp, sizeof tmp) != 0 ||
        liveness_path(token, "", path, sizeof path) != 0)
        return -1;
    int flags = O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY;
    int fd = open(tmp, flags, 0600);
    if (fd < 0 && errno == EEXIST) {
        /* only a process with this very token makes this name, and while it lived that
         * was this one: what is there is a dead one's leftover, if it is this user's */
        struct stat st;
        if (lstat(tmp, &st) != 0 || !own_regular_file(&st) || unlink(tmp) != 0)
            return -1;
        fd = open(tmp, flags, 0600);
    }
    if (fd < 0)
        return -1;
    struct flock fl = whole_file();
    /* fchmod: whatever the umask, its owner's other processes must be able to open it */
    if (fchmod(fd, 0600) != 0 || fcntl(fd, F_OFD_SETLK, &fl) != 0 || rename(tmp, path) != 0) {
        unlink(tmp);
        close(fd);
        return -1;
    }
    live_fd = fd;
    live_pid = getpid();
    memcpy(live_path, path, sizeof path);
    return 0;
}
#endif

uint64_t shoal_self_token(void) {
    uint64_t token = ld64(&cached_token);
    if (token)
        return token;
    pthread_once(&atfork_once, register_atfork);
    pthread_mutex_lock(&token_lock);
    token = ld64(&cached_token);
    if (!token) {
        pid_t pid = getpid();
        char state;
        uint64_t starttime = 0;
        if (read_proc_stat(pid, &state, &starttime) != 1)
            starttime = 0;
        uint64_t ns = self_pid_namespace();
        token = ((ns >> 8) << 54) | ((uint64_t)((uint32_t)pid & PID_BITS) << 32) |
                ((ns & 0xFFu) << 24) | (starttime & START_BITS);
#if HAVE_LIVENESS
        /* the bit says "judge me by my liveness file": set only once the file is there */
        if (make_liveness_file(token | SHOAL_TOKEN_LIVENESS) == 0)
            token |= SHOAL_TOKEN_LIVENESS;
#endif
        st64(&cached_token, token);
    }
    pthread_mutex_unlock(&token_lock);
    return token;
}

void shoal_liveness_remove(void) {
    pthread_mutex_lock(&token_lock);
    if (live_fd >= 0 && live_pid == getpid()) {
        /* the name first: once the lock is gone the file would read as a dead
         * process's, which it is about to be */
        unlink(live_path);
        close(live_fd);
        live_fd = -1;
    }
    pthread_mutex_unlock(&token_lock);
}

int shoal_liveness_probe(const char *name) {
#if HAVE_LIVENESS
    char path[SHOAL_LIVENESS_PATH_MAX];
    int n = snprintf(path, sizeof path, "%s/%s", liveness_dir, name);
    if (n <= 0 || (size_t)n >= sizeof path || strchr(name, '/'))
        return SHOAL_LIVENESS_UNKNOWN;
    struct stat st;
    if (lstat(path, &st) != 0)
        return errno == ENOENT ? SHOAL_LIVENESS_ABSENT : SHOAL_LIVENESS_UNKNOWN;
    if (!own_regular_file(&st))
        return SHOAL_LIVENESS_UNKNOWN; /* not even opened */
    /* O_NONBLOCK: a FIFO swapped in meanwhile must not block the open */
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? SHOAL_LIVENESS_ABSENT : SHOAL_LIVENESS_UNKNOWN;
    int result = SHOAL_LIVENESS_UNKNOWN;
    struct flock fl = whole_file();
    if (fstat(fd, &st) == 0 && own_regular_file(&st) && fcntl(fd, F_OFD_GETLK, &fl) == 0)
        result = fl.l_type == F_UNLCK ? SHOAL_LIVENESS_FREE : SHOAL_LIVENESS_HELD;
    /* closing this description releases nothing: it holds no lock (and an open file
     * description lock of the owner's, even this process's own, is another's) */
    close(fd);
    return result;
#else
    (void)name;
    return SHOAL_LIVENESS_UNKNOWN;
#endif
}

/* A token of another PID namespace: alive unless its liveness file says it died. */
static int foreign_token_alive(uint64_t token) {
    if (!(token & SHOAL_TOKEN_LIVENESS))
        return 1; /* it published none: a pid from there cannot be judged here */
    char name[SHOAL_LIVENESS_PATH_MAX];
    if (shoal_liveness_name(token, name, sizeof name) < 0)
        return 1;
    int state = shoal_liveness_probe(name);
    /* absent: it is removed only by its process on its way out, or by a reaper once
     * its lock is free */
    return state != SHOAL_LIVENESS_FREE && state != SHOAL_LIVENESS_ABSENT;
}

int shoal_token_alive(uint64_t token) {
    pid_t pid = (pid_t)shoal_token_pid(token);
    uint32_t tag = (uint32_t)token & START_BITS;
    if (pid <= 0)
        return 0;
    if (shoal_token_pid_namespace(token) != self_pid_namespace())
        return foreign_token_alive(token); /* its pid names someone else here, if anyone */
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
