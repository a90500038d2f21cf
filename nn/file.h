/* file.h — whole-file reads and atomic writes, the two ways this project touches files that
 * are not tensors' mmap'd bytes. Errors name the path and say what went wrong. */
#ifndef NN_FILE_H
#define NN_FILE_H

#include "tensor/tensor.h"

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The whole file, NUL-terminated (text readers rely on it; *len excludes the NUL), malloc'd.
 * NULL with a message when it cannot be opened or read, or is larger than max_bytes. */
char *nn_file_read(const char *path, size_t max_bytes, size_t *len);

/* Write the concatenation of n_parts buffers to a temporary file beside `path`, then rename it
 * over `path`: a reader never sees half a file, and a crash leaves the old one. */
enum status nn_file_write_atomic(const char *path, int n_parts, const void *const *parts, const size_t *lens);

/* `len` bytes of JSON text that must hold one object (whitespace around it allowed, nothing else),
 * parsed with cJSON; free it with cJSON_Delete. NULL with a message naming `label` and where it
 * went wrong: "config.json:12:5: invalid JSON (after '\"eps\": 1e-5,')" for a syntax error, or
 * "config.json: a JSON array, not an object". A key that appears twice in the object is refused
 * (cJSON would keep both, and a lookup see only the first). */
struct cJSON *nn_json_object(const char *text, size_t len, const char *label);
/* the same for a whole file of at most max_bytes (nn_file_read's messages when it cannot be read) */
struct cJSON *nn_json_file(const char *path, size_t max_bytes);

/* a regular file is there (and can be stat'ed) */
bool nn_file_exists(const char *path);

/* create a folder and its missing parents (mkdir -p); an existing non-folder is an error */
enum status nn_mkdir_p(const char *path);
/* whether nn_mkdir_p(path) would succeed and files could then be written in the folder, creating
 * nothing: each existing part of the path is a folder, and the deepest existing one is writable */
enum status nn_mkdir_p_check(const char *path);
/* whether a file could be written at path (nn_file_write_atomic), writing nothing: its folder
 * exists and is writable, and path is not a folder */
enum status nn_file_check_writable(const char *path);

#ifdef __cplusplus
}
#endif

#endif
