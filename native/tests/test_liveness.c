/* Liveness files (shoal_core.h): the token's bit 23, the file each process holds locked,
 * and how shoal_token_alive() judges a token of another PID namespace by it (#10).
 *
 * A second PID namespace needs privileges, so tokens "of another namespace" are forged
 * here (this process's token with another namespace tag) and a helper process plays
 * their owner: it makes and locks the liveness file such a token names, as a process of
 * that namespace would.  The kernel's lock does not care which namespace holds it, which
 * is the point; tests/test_namespaces.py runs the real thing under unshare. */
#define _GNU_SOURCE
#include "harness.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void path_of(uint64_t token, char *buf, size_t size) {
    char name[SHOAL_LIVENESS_PATH_MAX];
    CHECK(shoal_liveness_name(token, name, sizeof name) > 0);
    snprintf(buf, size, "%s/%s", harness_liveness_dir(), name);
}

static int probe(uint64_t token) {
    char name[SHOAL_LIVENESS_PATH_MAX];
    CHECK(shoal_liveness_name(token, name, sizeof name) > 0);
    return shoal_liveness_probe(name);
}

/* This process's token, but of another PID namespace (another tag) and published. */
static uint64_t foreign_token(void) {
    uint64_t t = shoal_self_token() ^ ((uint64_t)0x5A << 24);
    CHECK(shoal_token_pid_namespace(t) != shoal_token_pid_namespace(shoal_self_token()));
    return t | SHOAL_TOKEN_LIVENESS;
}

struct owner {
    uint64_t token;    /* the token whose liveness file the helper holds */
    uint32_t ready;
    uint32_t pid;      /* a grandchild's pid, where a test needs one */
    uint32_t take_mutex; /* the helper also takes m as token */
    shoal_mutex m;
};

/* A process of "another namespace": holds token's liveness file locked until killed. */
static void hold_file_of(void *arg) {
    struct owner *o = arg;
    char path[SHOAL_LIVENESS_PATH_MAX + 64];
    path_of(o->token, path, sizeof path);
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    CHECK(fd >= 0);
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
    CHECK(fcntl(fd, F_OFD_SETLK, &fl) == 0);
    if (o->take_mutex)
        CHECK_ST(shoal_mutex_lock(&o->m, o->token, 0), SHOAL_OK); /* owns the mutex too */
    __atomic_store_n(&o->ready, 1, __ATOMIC_SEQ_CST);
    pause();
}

TEST(liveness_token_has_the_bit_and_a_locked_file) {
    uint64_t t = shoal_self_token();
    CHECK(t & SHOAL_TOKEN_LIVENESS);
    CHECK_EQ(t >> 32, (uint64_t)getpid());
    char path[SHOAL_LIVENESS_PATH_MAX + 64], tmp[SHOAL_LIVENESS_PATH_MAX + 80];
    path_of(t, path, sizeof path);
    struct stat st;
    CHECK(lstat(path, &st) == 0);
    CHECK(S_ISREG(st.st_mode));
    CHECK_EQ(st.st_mode & 0777, 0600);
    CHECK_EQ(st.st_uid, geteuid());
    snprintf(tmp, sizeof tmp, "%s%s", path, SHOAL_LIVENESS_TEMP_SUFFIX);
    CHECK(lstat(tmp, &st) != 0 && errno == ENOENT); /* renamed into place */
    /* an open file description lock conflicts with other descriptions, even this
     * process's own: the probe sees it held */
    CHECK_EQ(shoal_liveness_probe(strrchr(path, '/') + 1), SHOAL_LIVENESS_HELD);
    /* and opening and closing the file elsewhere in the process does not drop it (a
     * POSIX record lock would be gone now) */
    int fd = open(path, O_RDONLY);
    CHECK(fd >= 0);
    close(fd);
    CHECK_EQ(probe(t), SHOAL_LIVENESS_HELD);
    CHECK(shoal_token_alive(t));
    CHECK_EQ(shoal_self_token(), t);
}

TEST(liveness_a_foreign_token_is_judged_by_its_file) {
    struct owner *o = shared_map(4096);
    o->token = foreign_token();
    pid_t pid = spawn(hold_file_of, o);
    await_at_least(&o->ready, 1, 5000);
    CHECK_EQ(probe(o->token), SHOAL_LIVENESS_HELD);
    CHECK(shoal_token_alive(o->token)); /* its owner lives, wherever its pid points */
    kill_leave_zombie(pid); /* the kernel dropped the lock as the process died */
    CHECK_EQ(probe(o->token), SHOAL_LIVENESS_FREE);
    CHECK(!shoal_token_alive(o->token));
    join_status(pid, 5000);
    char path[SHOAL_LIVENESS_PATH_MAX + 64];
    path_of(o->token, path, sizeof path);
    CHECK(unlink(path) == 0); /* what a reaper does with a free one */
    CHECK_EQ(probe(o->token), SHOAL_LIVENESS_ABSENT);
    CHECK(!shoal_token_alive(o->token));
    /* without the bit it published nothing: never presumed dead, as before #10 */
    CHECK(shoal_token_alive(o->token & ~SHOAL_TOKEN_LIVENESS));
}

TEST(liveness_what_cannot_be_judged_is_alive) {
    uint64_t t = foreign_token();
    char path[SHOAL_LIVENESS_PATH_MAX + 64];
    path_of(t, path, sizeof path);
    /* a directory, a symlink (to an unlocked file) and a FIFO under its name: never
     * judged, never opened in a way that blocks */
    CHECK(mkdir(path, 0700) == 0);
    CHECK_EQ(probe(t), SHOAL_LIVENESS_UNKNOWN);
    CHECK(shoal_token_alive(t));
    CHECK(rmdir(path) == 0);
    char target[SHOAL_LIVENESS_PATH_MAX + 80];
    snprintf(target, sizeof target, "%s/target", harness_liveness_dir());
    int fd = open(target, O_RDWR | O_CREAT, 0600);
    CHECK(fd >= 0);
    close(fd);
    CHECK(symlink(target, path) == 0);
    CHECK_EQ(probe(t), SHOAL_LIVENESS_UNKNOWN);
    CHECK(shoal_token_alive(t));
    CHECK(unlink(path) == 0);
    CHECK(mkfifo(path, 0600) == 0);
    CHECK_EQ(probe(t), SHOAL_LIVENESS_UNKNOWN);
    CHECK(shoal_token_alive(t));
    CHECK(unlink(path) == 0);
    /* another user's file (root can make one): not this user's to judge */
    if (geteuid() == 0) {
        fd = open(path, O_RDWR | O_CREAT, 0600);
        CHECK(fd >= 0);
        CHECK(fchown(fd, 65534, 65534) == 0);
        close(fd);
        CHECK_EQ(probe(t), SHOAL_LIVENESS_UNKNOWN);
        CHECK(shoal_token_alive(t));
        CHECK(unlink(path) == 0);
    }
    CHECK(unlink(target) == 0);
    CHECK_EQ(shoal_liveness_probe("../escape"), SHOAL_LIVENESS_UNKNOWN);
}

TEST(liveness_a_mutex_of_a_dead_foreign_owner_is_recovered) {
    struct owner *o = shared_map(4096);
    o->token = foreign_token();
    o->take_mutex = 1;
    pid_t pid = spawn(hold_file_of, o);
    await_at_least(&o->ready, 1, 5000);
    CHECK_EQ(shoal_load64(&o->m.owner), o->token);
    uint64_t me = shoal_self_token();
    /* alive: ten checks of its file, never taken */
    CHECK_ST(shoal_mutex_lock(&o->m, me, 500 * MS), SHOAL_TIMEOUT);
    CHECK_ST(shoal_mutex_lock(&o->m, me, 0), SHOAL_AGAIN);
    kill_and_reap(pid);
    double t0 = now_ms();
    CHECK_ST(shoal_mutex_lock(&o->m, me, 5 * SEC), SHOAL_OWNER_DIED);
    CHECK_BETWEEN_MS(now_ms() - t0, 0, 1000);
    CHECK_EQ(shoal_load64(&o->m.dead_owner), o->token);
    CHECK_ST(shoal_mutex_unlock(&o->m), SHOAL_OK);
    char path[SHOAL_LIVENESS_PATH_MAX + 64];
    path_of(o->token, path, sizeof path);
    unlink(path);
}

/* Whether this process has a descriptor open on path. */
static int has_fd_on(const char *path) {
    DIR *d = opendir("/proc/self/fd");
    CHECK(d != NULL);
    struct dirent *e;
    int found = 0;
    while ((e = readdir(d)) != NULL) {
        char link[300], target[SHOAL_LIVENESS_PATH_MAX + 64];
        snprintf(link, sizeof link, "/proc/self/fd/%s", e->d_name);
        ssize_t n = readlink(link, target, sizeof target - 1);
        if (n > 0) {
            target[n] = '\0';
            if (strcmp(target, path) == 0)
                found = 1;
        }
    }
    closedir(d);
    return found;
}

static void child_makes_its_own(void *arg) {
    struct owner *o = arg;
    char parent[SHOAL_LIVENESS_PATH_MAX + 64];
    path_of(o->token, parent, sizeof parent);
    CHECK(!has_fd_on(parent)); /* its copy of the parent's descriptor was closed */
    uint64_t t = shoal_self_token();
    CHECK(t != o->token);
    CHECK(t & SHOAL_TOKEN_LIVENESS);
    CHECK_EQ(probe(t), SHOAL_LIVENESS_HELD);
    CHECK_EQ(probe(o->token), SHOAL_LIVENESS_HELD);
    shoal_store64(&o->m.dead_owner, t);
}

TEST(liveness_a_forked_child_has_its_own_and_leaves_the_parents_locked) {
    struct owner *o = shared_map(4096);
    o->token = shoal_self_token(); /* made before the fork */
    char path[SHOAL_LIVENESS_PATH_MAX + 64];
    path_of(o->token, path, sizeof path);
    CHECK(has_fd_on(path));
    pid_t pid = spawn(child_makes_its_own, o);
    join(pid, 5000);
    uint64_t child = shoal_load64(&o->m.dead_owner);
    CHECK(child != 0);
    /* the child closed its copy and exited: the parent's lock is untouched */
    CHECK_EQ(probe(o->token), SHOAL_LIVENESS_HELD);
    CHECK_EQ(probe(child), SHOAL_LIVENESS_FREE); /* it left with _exit: free, not removed */
    char child_path[SHOAL_LIVENESS_PATH_MAX + 64];
    path_of(child, child_path, sizeof child_path);
    CHECK(unlink(child_path) == 0);
}

static void fork_a_sleeper_then_wait(void *arg) {
    struct owner *o = arg;
    shoal_store64(&o->token, shoal_self_token());
    pid_t pid = fork();
    if (pid == 0) {
        /* fork() returned: the at-fork handler closed the inherited descriptor (the
         * parent must not say ready before that: under TSan the child runs late) */
        __atomic_add_fetch(&o->ready, 1, __ATOMIC_SEQ_CST);
        pause();
        _exit(0);
    }
    __atomic_store_n(&o->pid, (uint32_t)pid, __ATOMIC_SEQ_CST);
    __atomic_add_fetch(&o->ready, 1, __ATOMIC_SEQ_CST);
    pause();
}

TEST(liveness_a_parent_is_seen_dead_while_its_forked_child_lives) {
    struct owner *o = shared_map(4096);
    pid_t pid = spawn(fork_a_sleeper_then_wait, o);
    await_at_least(&o->ready, 2, 5000); /* the parent, and its child past the fork */
    uint64_t parent = shoal_load64(&o->token);
    CHECK_EQ(probe(parent), SHOAL_LIVENESS_HELD);
    kill_and_reap(pid);
    pid_t grandchild = (pid_t)shoal_load32(&o->pid);
    CHECK(kill(grandchild, 0) == 0); /* still running, and held no copy of the lock */
    CHECK_EQ(probe(parent), SHOAL_LIVENESS_FREE);
    kill(grandchild, SIGKILL);
    char path[SHOAL_LIVENESS_PATH_MAX + 64];
    path_of(parent, path, sizeof path);
    unlink(path);
}

static void remove_own(void *arg) {
    (void)arg;
    uint64_t t = shoal_self_token();
    CHECK(t & SHOAL_TOKEN_LIVENESS);
    CHECK_EQ(probe(t), SHOAL_LIVENESS_HELD);
    shoal_liveness_remove();
    CHECK_EQ(probe(t), SHOAL_LIVENESS_ABSENT);
    CHECK_EQ(shoal_self_token(), t); /* the token stays what owners recorded */
    shoal_liveness_remove();         /* again: nothing left to do */
}

TEST(liveness_remove_takes_the_own_file_away) {
    join(spawn(remove_own, NULL), 5000);
}

static void without_a_directory(void *arg) {
    (void)arg;
    /* a fresh child: its token is made at the next call, where no file can be */
    shoal_liveness_set_dir("/nonexistent/shoal-liveness");
    uint64_t t = shoal_self_token();
    CHECK(!(t & SHOAL_TOKEN_LIVENESS));
    CHECK_EQ(t >> 32, (uint64_t)getpid());
    CHECK(shoal_token_alive(t));
    shoal_liveness_remove(); /* nothing to remove */
}

TEST(liveness_no_file_means_no_bit) {
    shoal_self_token();
    join(spawn(without_a_directory, NULL), 5000);
}
