/* config.h — reading a model's config.json (cJSON).
 *
 * Getters return the value (or the default when the key is absent) and remember the first
 * problem (wrong type, value out of range); nn_config_finish reports it, or the first key
 * the model neither read nor declared ignorable — so a config for a different model, or a
 * typo, is an error naming the file and the key instead of a silently wrong model.
 */
#ifndef NN_CONFIG_H
#define NN_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include "tensor/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

struct nn_config {
    void *root;        /* cJSON object */
    char path[512];
    char **seen;       /* keys read or declared */
    int n_seen, cap_seen;
    enum status err;
    char msg[1024];
};

enum status nn_config_load(struct nn_config *c, const char *path);
enum status nn_config_parse(struct nn_config *c, const char *json, size_t len, const char *label);
void nn_config_free(struct nn_config *c);
bool nn_config_has(struct nn_config *c, const char *key);
long long nn_config_int(struct nn_config *c, const char *key, long long def);
double nn_config_double(struct nn_config *c, const char *key, double def);
bool nn_config_bool(struct nn_config *c, const char *key, bool def);
/* copies into buf (truncation is an error) */
const char *nn_config_string(struct nn_config *c, const char *key, const char *def, char *buf, size_t n);
/* an array of integers (a single integer is accepted as a one-element array when
 * allow_scalar); returns the count, or -1 (error remembered) */
int nn_config_int_array(struct nn_config *c, const char *key, long long *out, int max, bool allow_scalar);
/* an array of strings into out[max][n]; returns the count or -1 */
int nn_config_string_array(struct nn_config *c, const char *key, char (*out)[64], int max);
/* declare keys the model accepts but does not use */
void nn_config_ignore(struct nn_config *c, const char *const *keys, int n);
/* the first remembered error, else an unknown key (keys starting with '_' are metadata) */
enum status nn_config_finish(struct nn_config *c);

#ifdef __cplusplus
}
#endif

#endif
