/* file.c — see file.h */
#include "nn/file.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

char *nn_file_read(const char *path, size_t max_bytes, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        tensor_fail(STATUS_IO, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n == cap) {
            if (cap >= max_bytes) {
                tensor_fail(STATUS_FORMAT, "%s: larger than %zu bytes", path, max_bytes);
                break;
            }
            cap = cap ? 2 * cap : 1 << 14;
            if (cap > max_bytes) cap = max_bytes;
            char *b = realloc(buf, cap + 1);
            if (!b) {
                tensor_fail(STATUS_OOM, "%s: out of memory at %zu bytes", path, n);
                break;
            }
            buf = b;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0) {
            if (ferror(f)) {
                tensor_fail(STATUS_IO, "%s: read error", path);
                break;
            }
            fclose(f);
            buf[n] = 0;
            *len = n;
            return buf;
        }
    }
    fclose(f);
    free(buf);
    return NULL;
}

enum status nn_file_write_atomic(const char *path, int n_parts, const void *const *parts, const size_t *lens)
{
    static atomic_uint counter;   /* two writers in one process never share a temporary name */
    char tmp[4096];
    int l = snprintf(tmp, sizeof tmp, "%s.tmp%ld.%u", path, (long)getpid(), atomic_fetch_add(&counter, 1));
    if (l < 0 || (size_t)l >= sizeof tmp) return tensor_fail(STATUS_IO, "cannot write %s: path too long", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0) return tensor_fail(STATUS_IO, "cannot write %s: creating %s: %s", path, tmp, strerror(errno));
    int err = 0;
    for (int i = 0; i < n_parts && !err; i++) {
        const unsigned char *p = parts[i];
        size_t done = 0;
        while (done < lens[i]) {
            ssize_t w = write(fd, p + done, lens[i] - done);
            if (w < 0) {
                if (errno == EINTR) continue;
                err = errno;
                break;
            }
            done += (size_t)w;
        }
    }
    if (close(fd) != 0 && !err) err = errno;
    if (!err && rename(tmp, path) != 0) err = errno;
    if (err) {
        unlink(tmp);
        return tensor_fail(STATUS_IO, "cannot write %s: %s", path, strerror(err));
    }
    return STATUS_OK;
}

bool nn_file_exists(const char *path)
{
    struct stat sb;
    return !stat(path, &sb) && S_ISREG(sb.st_mode);
}

enum status nn_mkdir_p(const char *path)
{
    char buf[4096];
    if (!path[0]) return tensor_fail(STATUS_IO, "an empty folder name");
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) return tensor_fail(STATUS_IO, "%s: path too long", path);
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || !*p) {
            const char c = *p;
            *p = 0;
            if (mkdir(buf, 0777) && errno != EEXIST)
                return tensor_fail(STATUS_IO, "cannot create folder %s: %s", buf, strerror(errno));
            struct stat sb;
            if (stat(buf, &sb) || !S_ISDIR(sb.st_mode)) return tensor_fail(STATUS_IO, "%s exists and is not a folder", buf);
            *p = c;
            if (!c) break;
        }
    }
    return STATUS_OK;
}

enum status nn_mkdir_p_check(const char *path)
{
    char buf[4096];
    if (!path[0]) return tensor_fail(STATUS_IO, "an empty folder name");
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) return tensor_fail(STATUS_IO, "%s: path too long", path);
    char last[4096] = ".";   /* the deepest folder of the path that exists: where the first mkdir would write */
    if (buf[0] == '/') snprintf(last, sizeof last, "/");
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || !*p) {
            const char c = *p;
            *p = 0;
            struct stat sb;
            if (stat(buf, &sb)) {
                if (errno != ENOENT) return tensor_fail(STATUS_IO, "cannot create folder %s: %s", buf, strerror(errno));
                break;   /* it and everything below it would be created */
            }
            if (!S_ISDIR(sb.st_mode)) return tensor_fail(STATUS_IO, "%s exists and is not a folder", buf);
            snprintf(last, sizeof last, "%s", buf);
            *p = c;
            if (!c) break;
        }
    }
    if (access(last, W_OK | X_OK)) {
        if (!strcmp(last, path)) return tensor_fail(STATUS_IO, "cannot write in folder %s: %s", path, strerror(errno));
        return tensor_fail(STATUS_IO, "cannot create folder %s: %s: %s", path, last, strerror(errno));
    }
    return STATUS_OK;
}

enum status nn_file_check_writable(const char *path)
{
    char dir[4096];
    if (!path[0]) return tensor_fail(STATUS_IO, "an empty file name");
    if (snprintf(dir, sizeof dir, "%s", path) >= (int)sizeof dir) return tensor_fail(STATUS_IO, "%s: path too long", path);
    char *slash = strrchr(dir, '/');
    if (!slash) snprintf(dir, sizeof dir, ".");
    else if (slash == dir) dir[1] = 0;   /* "/name": the root */
    else *slash = 0;
    struct stat sb;
    if (stat(dir, &sb)) return tensor_fail(STATUS_IO, "cannot write %s: %s: %s", path, dir, strerror(errno));
    if (!S_ISDIR(sb.st_mode)) return tensor_fail(STATUS_IO, "cannot write %s: %s is not a folder", path, dir);
    if (access(dir, W_OK | X_OK)) return tensor_fail(STATUS_IO, "cannot write %s: %s: %s", path, dir, strerror(errno));
    if (!stat(path, &sb) && S_ISDIR(sb.st_mode)) return tensor_fail(STATUS_IO, "cannot write %s: it is a folder", path);
    return STATUS_OK;
}

static const char *json_kind(const cJSON *v)
{
    if (cJSON_IsArray(v)) return "a JSON array";
    if (cJSON_IsString(v)) return "a JSON string";
    if (cJSON_IsNumber(v)) return "a JSON number";
    if (cJSON_IsBool(v)) return "a JSON boolean";
    return "JSON null";
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

cJSON *nn_json_object(const char *text, size_t len, const char *label)
{
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, false);
    if (root && end >= text && end <= text + len) {   /* only whitespace may follow */
        while (end < text + len && (*end == ' ' || *end == '\t' || *end == '\n' || *end == '\r')) end++;
        if (end < text + len) {
            cJSON_Delete(root);
            root = NULL;
        }
    }
    if (!root) {
        /* cJSON points at where it stopped; the line and column there, and the text just before */
        if (!end || end < text || end > text + len) end = text;
        int line = 1, col = 1;
        const char *bol = text;
        for (const char *p = text; p < end; p++) {
            if (*p == '\n') { line++; col = 1; bol = p + 1; } else col++;
        }
        const char *from = end - bol > 40 ? end - 40 : bol;
        char ctx[48];
        int n = 0;
        for (const char *p = from; p < end && n < 40; p++) ctx[n++] = (*p >= 32 && *p < 127) ? *p : '?';
        ctx[n] = 0;
        if (len == 0) tensor_fail(STATUS_FORMAT, "%s: empty, not a JSON object", label);
        else if (n) tensor_fail(STATUS_FORMAT, "%s:%d:%d: invalid JSON (after '%s')", label, line, col, ctx);
        else tensor_fail(STATUS_FORMAT, "%s:%d:%d: invalid JSON", label, line, col);
        return NULL;
    }
    if (!cJSON_IsObject(root)) {
        tensor_fail(STATUS_FORMAT, "%s: %s, not an object", label, json_kind(root));
        cJSON_Delete(root);
        return NULL;
    }
    /* cJSON keeps both of a repeated key and a lookup finds the first: a hand edit that adds a key
     * already there would silently not count. Sorted, so a file of many keys stays fast. */
    const int n = cJSON_GetArraySize(root);
    const char **keys = n > 1 ? malloc((size_t)n * sizeof *keys) : NULL;
    if (n > 1 && !keys) {
        tensor_fail(STATUS_OOM, "%s: out of memory", label);
        cJSON_Delete(root);
        return NULL;
    }
    int k = 0;
    for (const cJSON *e = keys ? root->child : NULL; e && k < n; e = e->next) keys[k++] = e->string;
    if (k > 1) qsort(keys, (size_t)k, sizeof *keys, cmp_str);
    for (int i = 1; i < k; i++)
        if (!strcmp(keys[i - 1], keys[i])) {
            tensor_fail(STATUS_FORMAT, "%s: key \"%.80s\" appears twice", label, keys[i]);
            free(keys);
            cJSON_Delete(root);
            return NULL;
        }
    free(keys);
    return root;
}

struct cJSON *nn_json_file(const char *path, size_t max_bytes)
{
    size_t len;
    char *text = nn_file_read(path, max_bytes, &len);
    if (!text) return NULL;
    cJSON *root = nn_json_object(text, len, path);
    free(text);
    return root;
}
