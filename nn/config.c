/* config.c — config.json getters that remember the first problem. */
#include "nn/config.h"
#include "nn/file.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void remember(struct nn_config *c, enum status s, const char *fmt, const char *key, const char *what)
{
    if (c->err) return;
    c->err = s;
    char m[256];
    snprintf(m, sizeof m, fmt, key, what);
    snprintf(c->msg, sizeof c->msg, "%s: %s", c->path, m);
}

static void mark(struct nn_config *c, const char *key)
{
    for (int i = 0; i < c->n_seen; i++)
        if (!strcmp(c->seen[i], key)) return;
    if (c->n_seen == c->cap_seen) {
        int cap = c->cap_seen ? 2 * c->cap_seen : 32;
        char **v = realloc(c->seen, (size_t)cap * sizeof *v);
        if (!v) { remember(c, STATUS_OOM, "out of memory at '%s'%s", key, ""); return; }
        c->seen = v;
        c->cap_seen = cap;
    }
    c->seen[c->n_seen++] = strdup(key);
}

enum status nn_config_parse(struct nn_config *c, const char *json, size_t len, const char *label)
{
    memset(c, 0, sizeof *c);
    snprintf(c->path, sizeof c->path, "%s", label);
    cJSON *root = nn_json_object(json, len, label);
    if (!root) return tensor_status();
    c->root = root;
    return STATUS_OK;
}

enum status nn_config_load(struct nn_config *c, const char *path)
{
    memset(c, 0, sizeof *c);
    size_t n;
    char *buf = nn_file_read(path, (size_t)16 << 20, &n);   /* a config is small: 16 MiB is not one */
    if (!buf) return tensor_status();
    enum status s = nn_config_parse(c, buf, n, path);
    free(buf);
    return s;
}

void nn_config_free(struct nn_config *c)
{
    cJSON_Delete(c->root);
    for (int i = 0; i < c->n_seen; i++) free(c->seen[i]);
    free(c->seen);
    memset(c, 0, sizeof *c);
}

static cJSON *item(struct nn_config *c, const char *key)
{
    mark(c, key);
    cJSON *j = cJSON_GetObjectItemCaseSensitive(c->root, key);
    return cJSON_IsNull(j) ? NULL : j;
}

bool nn_config_has(struct nn_config *c, const char *key) { return cJSON_GetObjectItemCaseSensitive(c->root, key) != NULL; }

static bool as_int(const cJSON *j, long long *v)
{
    if (!cJSON_IsNumber(j) || j->valuedouble != floor(j->valuedouble) || fabs(j->valuedouble) > 9e15) return false;
    *v = (long long)j->valuedouble;
    return true;
}

long long nn_config_int(struct nn_config *c, const char *key, long long def)
{
    cJSON *j = item(c, key);
    long long v;
    if (!j) return def;
    if (!as_int(j, &v)) { remember(c, STATUS_FORMAT, "'%s' must be an integer%s", key, ""); return def; }
    return v;
}

double nn_config_double(struct nn_config *c, const char *key, double def)
{
    cJSON *j = item(c, key);
    if (!j) return def;
    if (!cJSON_IsNumber(j)) { remember(c, STATUS_FORMAT, "'%s' must be a number%s", key, ""); return def; }
    return j->valuedouble;
}

bool nn_config_bool(struct nn_config *c, const char *key, bool def)
{
    cJSON *j = item(c, key);
    if (!j) return def;
    if (!cJSON_IsBool(j)) { remember(c, STATUS_FORMAT, "'%s' must be true or false%s", key, ""); return def; }
    return cJSON_IsTrue(j);
}

const char *nn_config_string(struct nn_config *c, const char *key, const char *def, char *buf, size_t n)
{
    cJSON *j = item(c, key);
    const char *v = def;
    if (j && !cJSON_IsString(j)) remember(c, STATUS_FORMAT, "'%s' must be a string%s", key, "");
    else if (j) v = j->valuestring;
    if (!v) { if (n) buf[0] = 0; return NULL; }
    if (strlen(v) >= n) remember(c, STATUS_FORMAT, "'%s' is too long%s", key, "");
    snprintf(buf, n, "%s", v);
    return buf;
}

int nn_config_int_array(struct nn_config *c, const char *key, long long *out, int max, bool allow_scalar)
{
    cJSON *j = item(c, key);
    if (!j) return 0;
    long long v;
    if (allow_scalar && as_int(j, &v)) {
        out[0] = v;
        return 1;
    }
    if (!cJSON_IsArray(j)) { remember(c, STATUS_FORMAT, "'%s' must be a list of integers%s", key, ""); return -1; }
    int n = cJSON_GetArraySize(j);
    if (n > max) { remember(c, STATUS_FORMAT, "'%s' has more entries than supported%s", key, ""); return -1; }
    for (int i = 0; i < n; i++)
        if (!as_int(cJSON_GetArrayItem(j, i), &out[i])) { remember(c, STATUS_FORMAT, "'%s' must be a list of integers%s", key, ""); return -1; }
    return n;
}

int nn_config_string_array(struct nn_config *c, const char *key, char (*out)[64], int max)
{
    cJSON *j = item(c, key);
    if (!j) return 0;
    if (!cJSON_IsArray(j)) { remember(c, STATUS_FORMAT, "'%s' must be a list of strings%s", key, ""); return -1; }
    int n = cJSON_GetArraySize(j);
    if (n > max) { remember(c, STATUS_FORMAT, "'%s' has more entries than supported%s", key, ""); return -1; }
    for (int i = 0; i < n; i++) {
        cJSON *s = cJSON_GetArrayItem(j, i);
        if (!cJSON_IsString(s) || strlen(s->valuestring) >= 64) {
            remember(c, STATUS_FORMAT, "'%s' must be a list of (short) strings%s", key, "");
            return -1;
        }
        snprintf(out[i], 64, "%s", s->valuestring);
    }
    return n;
}

void nn_config_ignore(struct nn_config *c, const char *const *keys, int n)
{
    for (int i = 0; i < n; i++) mark(c, keys[i]);
}

enum status nn_config_finish(struct nn_config *c)
{
    if (c->err) return tensor_fail(c->err, "%s", c->msg);
    for (cJSON *e = ((cJSON *)c->root)->child; e; e = e->next) {
        if (!e->string || e->string[0] == '_') continue;
        bool known = false;
        for (int i = 0; i < c->n_seen && !known; i++) known = !strcmp(c->seen[i], e->string);
        if (!known) return tensor_fail(STATUS_FORMAT, "%s: unknown key '%s' (not a setting this model has)", c->path, e->string);
    }
    return STATUS_OK;
}
