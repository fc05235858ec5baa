/* Append-only JSON-lines files: the file sink of write() actions and the dead-letter file
 * (src/files.c). Each line goes out in one write(2) on an O_APPEND descriptor, so a line is
 * never interleaved or half-buffered in the process; descriptors stay open between writes and
 * are reopened after hr_files_reopen() (SIGHUP, for logrotate). The dead-letter line itself
 * (its shape, format and parse) is hr/deadletter.h's. */
#ifndef HR_FILES_H
#define HR_FILES_H

#include "hr/action.h"
#include "hr/common.h"
#include "hr/config.h"

typedef struct hr_files hr_files_t;

hr_files_t *hr_files_create(void);
/* Append line plus '\n' to path, opening it (O_APPEND; a missing file is created with mode
 * 0600, or the one set by hr_files_set_modes, and missing parent directories with 0700) on
 * first use. An existing file's mode is never changed. A file that does not end in '\n' when
 * opened (a torn tail) gets a '\n' before the line, in the same write. Short writes are
 * continued. Returns 0, or a negative errno with a message in err. */
int hr_files_append(hr_files_t *f, const char *path, const char *line, size_t len, char *err,
                    size_t errlen);
/* Set the creation mode of the configured files (files.<name>.mode); the others, and the dead
 * letters, are created 0600. Can't fail. */
void hr_files_set_modes(hr_files_t *f, const hr_file_conf_t *v, size_t n);
/* Close every descriptor; each is opened again on its next append. */
void hr_files_reopen(hr_files_t *f);
void hr_files_destroy(hr_files_t *f);

#endif
