/* Append-only JSON-lines files (see include/hr/files.h).
 *
 * Descriptors are kept in a small table keyed by path (a linear array: a process writes to a
 * handful of files). Each line goes out with one writev(2) of the line and its '\n' on an
 * O_APPEND descriptor, so concurrent writers never interleave inside a line. A file found not
 * ending in '\n' when it is opened (a crash, or a full disk, cut the last line short) gets a
 * '\n' in front of the next line, in the same writev: the cut line stays as it was (one
 * malformed line a reader can see and skip) and the new one starts on its own line. We append
 * rather than truncate back to the last newline because the file is not only ours: another
 * process, or our own earlier life, may have written the fragment, and cutting it would
 * delete bytes nobody can vouch are garbage. */
#include "hr/files.h"
#include "hr/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

/* One open file. */
typedef struct {
    char *path;  /* as given to hr_files_append, owned */
    int fd;      /* O_WRONLY|O_APPEND descriptor, or -1 after hr_files_reopen */
    mode_t mode; /* permissions if this process creates the file (default 0600) */
    bool torn;   /* the file did not end in '\n' when opened: the next line starts with one */
} hr_file_t;

struct hr_files {
    hr_file_t *files; /* the table, searched linearly */
    size_t n;         /* entries used */
    size_t cap;       /* entries allocated */
};

/* Create an empty table. Never NULL (allocation aborts). */
hr_files_t *hr_files_create(void)
{
    return hr_xcalloc(1, sizeof(hr_files_t));
}

/* Create every missing parent directory of path (mkdir -p of its dirname), mode 0700.
 * Returns 0, or a negative errno. */
static int mkdir_parents(const char *path)
{
    char *dir = hr_xstrdup(path);
    char *slash = strrchr(dir, '/');
    int rc = 0;
    if (slash && slash != dir) { /* else a relative file in cwd, or a file under / */
        *slash = '\0';
        rc = hr_mkdir_p(dir);
    }
    free(dir);
    return rc;
}

/* Open path for appending, creating it (with exactly mode: fchmod undoes the umask) and its
 * parent directories. An existing file keeps its mode. Returns the descriptor, or a negative
 * errno. */
static int open_append(const char *path, mode_t mode)
{
    const int flags = O_WRONLY | O_APPEND | O_CLOEXEC;
    int fd = open(path, flags);
    if (fd >= 0 || errno != ENOENT) return fd >= 0 ? fd : -errno;
    fd = open(path, flags | O_CREAT | O_EXCL, mode);
    if (fd < 0 && errno == ENOENT) {
        int rc = mkdir_parents(path);
        if (rc < 0) return rc;
        fd = open(path, flags | O_CREAT | O_EXCL, mode);
    }
    if (fd < 0 && errno == EEXIST)
        fd = open(path, flags); /* another writer created it */
    else if (fd >= 0)
        (void)fchmod(fd, mode);
    return fd >= 0 ? fd : -errno;
}

/* Whether the file open as fd has a torn tail: it is not empty and its last byte is not '\n'
 * (a crash or a full disk cut a line short). Read through a separate descriptor, since fd is
 * write-only; a file that cannot be read is taken as whole. */
static bool has_torn_tail(const char *path, int fd)
{
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size == 0) return false;
    int rfd = open(path, O_RDONLY | O_CLOEXEC);
    if (rfd < 0) return false;
    char c = '\n';
    bool torn = pread(rfd, &c, 1, st.st_size - 1) == 1 && c != '\n';
    close(rfd);
    return torn;
}

/* Find the table entry for path, adding a closed one if there is none. Never NULL. */
static hr_file_t *file_slot(hr_files_t *f, const char *path)
{
    for (size_t i = 0; i < f->n; i++) {
        if (strcmp(f->files[i].path, path) == 0) return &f->files[i];
    }
    if (f->n == f->cap) {
        f->cap = f->cap ? f->cap * 2 : 8;
        f->files = hr_xrealloc(f->files, f->cap * sizeof *f->files);
    }
    hr_file_t *e = &f->files[f->n++];
    e->path = hr_xstrdup(path);
    e->fd = -1;
    e->mode = HR_DEF_FILE_MODE;
    return e;
}

/* Set the mode of each configured file the router creates from now on (HR_FILE_MODE_SET
 * entries; others get HR_DEF_FILE_MODE). Existing files keep theirs. Can't fail. */
void hr_files_set_modes(hr_files_t *f, const hr_file_conf_t *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        hr_file_t *e = file_slot(f, v[i].path);
        e->mode = (v[i].mode & HR_FILE_MODE_SET) ? (mode_t)(v[i].mode & 0777) : HR_DEF_FILE_MODE;
    }
}

/* Append line + '\n' to path in one writev (looping on short writes, which only happen when
 * the disk fills or a signal interrupts). Returns 0, or a negative errno with a message in
 * err. After a write error the descriptor is closed, so the next append reopens the file. */
int hr_files_append(hr_files_t *f, const char *path, const char *line, size_t len, char *err,
                    size_t errlen)
{
    hr_file_t *e = file_slot(f, path);
    if (e->fd < 0) {
        int fd = open_append(path, e->mode);
        if (fd < 0) {
            snprintf(err, errlen, "open %s: %s", path, strerror(-fd));
            return fd;
        }
        e->fd = fd;
        e->torn = has_torn_tail(path, fd);
        if (e->torn)
            hr_log_warn("%s did not end with a newline (a line cut short): ending it", path);
    }
    struct iovec iov[3] = {
        {.iov_base = (void *)"\n", .iov_len = 1},
        {.iov_base = (void *)line, .iov_len = len},
        {.iov_base = (void *)"\n", .iov_len = 1},
    };
    struct iovec *v = e->torn ? iov : iov + 1;
    int iovcnt = e->torn ? 3 : 2;
    while (iovcnt > 0) {
        ssize_t n = writev(e->fd, v, iovcnt);
        if (n < 0) {
            if (errno == EINTR) continue;
            int rc = -errno;
            snprintf(err, errlen, "write %s: %s", path, strerror(errno));
            close(e->fd);
            e->fd = -1;
            return rc;
        }
        e->torn = false; /* a short write leaves the fd open and finishes the line */
        hr_iov_advance(&v, &iovcnt, (size_t)n);
    }
    return 0;
}

/* Close every descriptor; paths stay in the table and are reopened on their next append.
 * Can't fail. */
void hr_files_reopen(hr_files_t *f)
{
    for (size_t i = 0; i < f->n; i++) {
        if (f->files[i].fd >= 0) close(f->files[i].fd);
        f->files[i].fd = -1;
    }
}

/* Close every descriptor and free the table. Accepts NULL. */
void hr_files_destroy(hr_files_t *f)
{
    if (!f) return;
    hr_files_reopen(f);
    for (size_t i = 0; i < f->n; i++)
        free(f->files[i].path);
    free(f->files);
    free(f);
}
