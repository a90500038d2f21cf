/* lora.c — LoRA adapters for the UNet's attention projections: init, attach, combine, merge,
 * and the PEFT / kohya safetensors files. */
#include "diffusion/lora.h"
#include "diffusion/ldm.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct sd_proj *find_proj(const struct sd_unet *u, const char *name)
{
    for (int i = 0; i < u->n_projs; i++)
        if (!strcmp(u->projs[i]->name, name)) return u->projs[i];
    return NULL;
}

static int find_proj_index(const struct sd_unet *u, const char *name)
{
    for (int i = 0; i < u->n_projs; i++)
        if (!strcmp(u->projs[i]->name, name)) return i;
    return -1;
}

/* does `name` end in ".<suffix>" (or equal it) for one of the comma separated suffixes? */
static bool matches_targets(const char *name, const char *targets)
{
    size_t nl = strlen(name);
    for (const char *p = targets; *p;) {
        const char *e = strchr(p, ',');
        size_t sl = e ? (size_t)(e - p) : strlen(p);
        while (sl && *p == ' ') { p++; sl--; }
        while (sl && p[sl - 1] == ' ') sl--;
        if (sl && sl <= nl && !strncmp(name + nl - sl, p, sl) && (sl == nl || name[nl - sl - 1] == '.')) return true;
        if (!e) break;
        p = e + 1;
    }
    return false;
}

void sd_lora_free(struct sd_lora *l)
{
    if (!l) return;
    nn_params_free(&l->params);
    free(l->mods);
    memset(l, 0, sizeof *l);
}

/* create the A/B parameters of one module (zero) and record it */
static enum status add_module(struct sd_lora *l, const char *name, const char *kohya, int64_t in, int64_t out, int cap)
{
    if (!l->mods) {
        l->mods = calloc((size_t)(cap > 0 ? cap : 1), sizeof *l->mods);
        if (!l->mods) return tensor_fail(STATUS_OOM, "lora: out of host memory");
    }
    struct sd_lora_module *m = &l->mods[l->n];
    snprintf(m->name, sizeof m->name, "%s", name);
    snprintf(m->kohya, sizeof m->kohya, "%s", kohya ? kohya : "");
    m->in = in;
    m->out = out;
    m->A = nn_param_new(&l->params, name, "lora_A.weight", TENSOR_SHAPE(l->rank, in));
    m->B = nn_param_new(&l->params, name, "lora_B.weight", TENSOR_SHAPE(out, l->rank));
    if (!m->A || !m->B) return tensor_status();
    l->n++;
    return STATUS_OK;
}

static enum status check_dtype(const char *op, enum dtype dt)
{
    if (dt == DTYPE_F32 || dt == DTYPE_F64) return STATUS_OK;
    return tensor_fail(STATUS_DTYPE, "%s: adapter dtype must be f32 or f64, got %s", op, dtype_name(dt));
}

enum status sd_lora_init(struct sd_lora *l, const struct sd_unet *u, int rank, double alpha, const char *targets,
                         enum dtype dt, uint64_t seed)
{
    memset(l, 0, sizeof *l);
    if (rank <= 0) return tensor_fail(STATUS_VALUE, "lora_init: rank must be positive, got %d", rank);
    if (!isfinite(alpha) || alpha <= 0) return tensor_fail(STATUS_VALUE, "lora_init: alpha must be positive, got %g", alpha);
    if (check_dtype("lora_init", dt)) return tensor_status();
    if (!targets) targets = "to_q,to_k,to_v,to_out.0";
    l->rank = rank;
    l->alpha = alpha;
    nn_params_init(&l->params, dt, u->ps ? u->ps->device : DEVICE_CPU);
    uint64_t s0, o0;
    ag_rng_get(&s0, &o0);
    ag_rng_set(seed, 0);
    enum status st = STATUS_OK;
    for (int i = 0; i < u->n_projs && !st; i++) {
        const struct sd_proj *p = u->projs[i];
        if (!matches_targets(p->name, targets)) continue;
        char kohya[200];
        sd_lora_kohya_stem(kohya, sizeof kohya, u, p->name);
        if ((st = add_module(l, p->name, kohya, p->in_features, p->out_features, u->n_projs))) break;
        struct tensor *A = l->mods[l->n - 1].A;
        /* kaiming_uniform_(a=sqrt(5)): gain sqrt(2/(1+5)), bound = gain*sqrt(3/fan_in) = 1/sqrt(in);
         * drawn in f64 so f32 and f64 adapters start from the same numbers */
        const double b = 1.0 / sqrt((double)p->in_features);
        tensor_scope_begin();
        struct tensor *r = ag_rand(DTYPE_F64, A->ndim, A->shape, A->storage->device);
        st = r ? tensor_copy_(A, ag_affine(r, 2 * b, -b)) : tensor_status();
        tensor_scope_end();
    }
    ag_rng_set(s0, o0);
    if (!st && l->n == 0) st = tensor_fail(STATUS_VALUE, "lora_init: no projection of the UNet matches targets '%s'", targets);
    if (!st) nn_params_set_trainable(&l->params, true);
    if (st) sd_lora_free(l);
    return st;
}

enum status sd_lora_attach(const struct sd_lora *l, struct sd_unet *u, double scale)
{
    char a[64], b[64];
    /* check everything first, so a failed attach changes nothing */
    for (int i = 0; i < l->n; i++) {
        const struct sd_lora_module *m = &l->mods[i];
        const struct sd_proj *p = find_proj(u, m->name);
        if (!p) return tensor_fail(STATUS_VALUE, "lora_attach: the UNet has no projection '%s'", m->name);
        if (m->A->shape[1] != p->in_features || m->B->shape[0] != p->out_features)
            return tensor_fail(STATUS_SHAPE, "lora_attach: %s: adapter A %s, B %s do not fit a [%lld -> %lld] projection",
                               m->name, tensor_shape_str(m->A, a, sizeof a), tensor_shape_str(m->B, b, sizeof b),
                               (long long)p->in_features, (long long)p->out_features);
        enum dtype wd = p->base.weight->dtype;
        if ((wd == DTYPE_F32 || wd == DTYPE_F64) && wd != m->A->dtype)
            return tensor_fail(STATUS_DTYPE, "lora_attach: %s: adapter is %s but the base weight is %s", m->name,
                               dtype_name(m->A->dtype), dtype_name(wd));
    }
    const double s = scale * l->alpha / l->rank;
    for (int i = 0; i < l->n; i++) {
        struct sd_proj *p = (struct sd_proj *)find_proj(u, l->mods[i].name);
        p->lora_down = l->mods[i].A;
        p->lora_up = l->mods[i].B;
        p->lora_scale = s;
    }
    return STATUS_OK;
}

void sd_lora_detach(struct sd_unet *u)
{
    for (int i = 0; i < u->n_projs; i++) {
        u->projs[i]->lora_down = u->projs[i]->lora_up = NULL;
        u->projs[i]->lora_scale = 1.0;
    }
}

enum status sd_lora_combine(struct sd_lora *out, int n, const struct sd_lora *const *loras, const double *scales)
{
    memset(out, 0, sizeof *out);
    if (n <= 0) return tensor_fail(STATUS_VALUE, "lora_combine: need at least one adapter, got %d", n);
    const enum dtype dt = loras[0]->params.dtype;
    int total = 0, rank = 0;
    for (int k = 0; k < n; k++) {
        total += loras[k]->n;
        rank += loras[k]->rank;
        if (!isfinite(scales[k])) return tensor_fail(STATUS_VALUE, "lora_combine: scale %d is %g", k, scales[k]);
    }
    out->rank = rank;
    out->alpha = rank;   /* alpha / rank = 1: the scales live in A */
    nn_params_init(&out->params, dt, loras[0]->params.device);
    enum status st = STATUS_OK;
    /* the union of the modules, first-seen order */
    for (int k = 0; k < n && !st; k++)
        for (int i = 0; i < loras[k]->n && !st; i++) {
            const struct sd_lora_module *m = &loras[k]->mods[i];
            bool seen = false;
            for (int j = 0; j < out->n && !seen; j++) {
                if (strcmp(out->mods[j].name, m->name)) continue;
                seen = true;
                if (out->mods[j].in != m->in || out->mods[j].out != m->out)
                    st = tensor_fail(STATUS_SHAPE, "lora_combine: module %s is [%lld -> %lld] in adapter 0 but [%lld -> %lld] in adapter %d",
                                     m->name, (long long)out->mods[j].in, (long long)out->mods[j].out, (long long)m->in,
                                     (long long)m->out, k);
            }
            if (!seen && !st) st = add_module(out, m->name, m->kohya, m->in, m->out, total);
        }
    ag_no_grad_begin();
    for (int j = 0; j < out->n && !st; j++) {
        struct sd_lora_module *o = &out->mods[j];
        int64_t off = 0;
        for (int k = 0; k < n && !st; k++) {
            const struct sd_lora *l = loras[k];
            const struct sd_lora_module *m = NULL;
            for (int i = 0; i < l->n && !m; i++)
                if (!strcmp(l->mods[i].name, o->name)) m = &l->mods[i];
            if (m) {
                tensor_scope_begin();
                struct tensor *Ao = tensor_narrow(o->A, 0, off, l->rank), *Bo = tensor_narrow(o->B, 1, off, l->rank);
                struct tensor *As = ag_scale(ag_to_dtype(m->A, DTYPE_F64), scales[k] * l->alpha / l->rank);
                st = As && Ao && Bo ? tensor_copy_(Ao, As) : tensor_status();
                if (!st) st = tensor_copy_(Bo, m->B);
                tensor_scope_end();
            }
            off += l->rank;
        }
    }
    ag_no_grad_end();
    if (st) sd_lora_free(out);
    return st;
}

static enum status merge_signed(const struct sd_lora *l, struct sd_unet *u, double scale, const char *op)
{
    for (int i = 0; i < l->n; i++)
        if (!find_proj(u, l->mods[i].name)) return tensor_fail(STATUS_VALUE, "%s: the UNet has no projection '%s'", op, l->mods[i].name);
    enum status st = STATUS_OK;
    const double s = scale * l->alpha / l->rank;
    ag_no_grad_begin();
    for (int i = 0; i < l->n && !st; i++) {
        const struct sd_lora_module *m = &l->mods[i];
        struct tensor *W = find_proj(u, m->name)->base.weight;
        tensor_scope_begin();
        struct tensor *d = ag_scale(ag_matmul(ag_to_dtype(m->B, DTYPE_F64), ag_to_dtype(m->A, DTYPE_F64)), s);
        struct tensor *w = d ? ag_add(ag_to_dtype(W, DTYPE_F64), d) : NULL;
        char a[64], b[64];
        if (w && !tensor_same_shape(w, W))
            st = tensor_fail(STATUS_SHAPE, "%s: %s: B A is %s but the weight is %s", op, m->name, tensor_shape_str(d, a, sizeof a),
                             tensor_shape_str(W, b, sizeof b));
        else st = w ? tensor_copy_(W, w) : tensor_status();
        tensor_scope_end();
    }
    ag_no_grad_end();
    return st;
}

enum status sd_lora_merge(const struct sd_lora *l, struct sd_unet *u, double scale)
{
    return merge_signed(l, u, scale, "lora_merge");
}

enum status sd_lora_unmerge(const struct sd_lora *l, struct sd_unet *u, double scale)
{
    return merge_signed(l, u, -scale, "lora_unmerge");
}

/* ---------------------------------------------------------------- files */

const char *sd_lora_kohya_name(char *buf, size_t n, const char *module)
{
    snprintf(buf, n, "lora_unet_%s", module);
    for (char *p = buf; *p; p++)
        if (*p == '.') *p = '_';
    return buf;
}

/* the module's original (LDM/SGM) path, "lora_unet_"-prefixed with '_' for '.'; diffusers' when it has none */
static const char *kohya_original(char *buf, size_t n, const struct sd_unet *u, const char *module)
{
    char name[300], key[600];
    snprintf(name, sizeof name, "%s.weight", module);
    const size_t pl = strlen(SD_LDM_UNET_PREFIX), wl = strlen(".weight");
    if (!sd_ldm_unet_key((void *)u, name, key, sizeof key) || strlen(key) <= pl + wl)
        return sd_lora_kohya_name(buf, n, module);
    snprintf(buf, n, "lora_unet_%.*s", (int)(strlen(key) - pl - wl), key + pl);
    for (char *p = buf; *p; p++)
        if (*p == '.') *p = '_';
    return buf;
}

const char *sd_lora_kohya_stem(char *buf, size_t n, const struct sd_unet *u, const char *module)
{
    return u && u->add_time_dim ? kohya_original(buf, n, u, module) : sd_lora_kohya_name(buf, n, module);
}

enum status sd_lora_save(const struct sd_lora *l, const char *path, enum sd_lora_format fmt)
{
    if (fmt != SD_LORA_PEFT && fmt != SD_LORA_KOHYA) return tensor_fail(STATUS_VALUE, "lora_save: unknown format %d", (int)fmt);
    const int per = fmt == SD_LORA_KOHYA ? 3 : 2;
    const int nt = per * l->n;
    char **names = calloc((size_t)(nt ? nt : 1), sizeof *names);
    struct tensor **ts = calloc((size_t)(nt ? nt : 1), sizeof *ts);
    enum status st = names && ts ? STATUS_OK : tensor_fail(STATUS_OOM, "lora_save: out of host memory");
    struct tensor *alpha = NULL;
    if (!st && fmt == SD_LORA_KOHYA) {
        alpha = tensor_keep(tensor_scalar(DTYPE_F32, l->alpha));
        if (!alpha) st = tensor_status();
    }
    for (int i = 0; i < l->n && !st; i++) {
        const struct sd_lora_module *m = &l->mods[i];
        char base[256], key[320];
        if (fmt == SD_LORA_KOHYA && m->kohya[0]) snprintf(base, sizeof base, "%s", m->kohya);
        else if (fmt == SD_LORA_KOHYA) sd_lora_kohya_name(base, sizeof base, m->name);
        else snprintf(base, sizeof base, "unet.%s", m->name);
        const char *sfx[3] = {fmt == SD_LORA_KOHYA ? "lora_down.weight" : "lora_A.weight",
                              fmt == SD_LORA_KOHYA ? "lora_up.weight" : "lora_B.weight", "alpha"};
        struct tensor *tv[3] = {m->A, m->B, alpha};
        for (int k = 0; k < per; k++) {
            snprintf(key, sizeof key, "%s.%s", base, sfx[k]);
            names[per * i + k] = strdup(key);
            ts[per * i + k] = tv[k];
            if (!names[per * i + k]) st = tensor_fail(STATUS_OOM, "lora_save: out of host memory");
        }
    }
    if (!st) {
        char alpha_s[40], rank_s[24];
        snprintf(alpha_s, sizeof alpha_s, "%.17g", l->alpha);
        snprintf(rank_s, sizeof rank_s, "%d", l->rank);
        const char *mk[6] = {"format", "lora_format", "lora_alpha", "rank", "ss_network_dim", "ss_network_alpha"};
        const char *mv[6] = {"pt", fmt == SD_LORA_KOHYA ? "kohya" : "peft", alpha_s, rank_s, rank_s, alpha_s};
        st = safetensors_save(path, nt, (const char *const *)names, ts, 6, mk, mv);
    }
    if (names)
        for (int i = 0; i < nt; i++) free(names[i]);
    free(names);
    free(ts);
    tensor_free(alpha);
    return st;
}

static bool ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

static bool starts_with(const char *s, const char *pre) { return !strncmp(s, pre, strlen(pre)); }

/* what one file key is: the projection index, and which part (0 = A, 1 = B, 2 = alpha);
 * returns 0 = recognised, 1 = ignored (text encoder), -1 = error (message set) */
static int classify_key(const struct safetensors *st, const struct sd_unet *u, char (*const kohya)[2][200], const char *key,
                        int *proj, int *part)
{
    if (starts_with(key, "text_encoder") || starts_with(key, "lora_te")) return 1;
    char mod[400];
    const char *k = starts_with(key, "unet.") ? key + 5 : key;
    size_t kl = strlen(k);
    *proj = -1;
    if (starts_with(k, "lora_unet_")) {
        static const char *const sfx[3] = {".lora_down.weight", ".lora_up.weight", ".alpha"};
        for (int p = 0; p < 3 && *proj < 0; p++) {
            if (!ends_with(k, sfx[p])) continue;
            *part = p;
            snprintf(mod, sizeof mod, "%.*s", (int)(kl - strlen(sfx[p])), k);
            for (int i = 0; i < u->n_projs; i++)
                if (!strcmp(kohya[i][0], mod) || !strcmp(kohya[i][1], mod)) { *proj = i; break; }
            if (*proj < 0) {
                tensor_fail(STATUS_FORMAT, "%s: tensor '%s': the UNet has no module '%s' (kohya naming)", st->path, key, mod);
                return -1;
            }
        }
        if (*proj < 0) {   /* none of the three: LyCORIS (lora_mid, hada_*, lokr_*), DoRA (dora_scale), ... */
            tensor_fail(STATUS_FORMAT, "%s: tensor '%s' is not a plain LoRA tensor (a kohya file needs "
                        "'.lora_down.weight', '.lora_up.weight' and '.alpha' only; LyCORIS and DoRA files are not "
                        "supported)", st->path, key);
            return -1;
        }
    } else {
        /* PEFT "<module>.lora_A.weight"; older diffusers "<attn>.processor.to_q_lora.down.weight" */
        static const char *const sfx[3] = {".lora_A.weight", ".lora_B.weight", ".alpha"};
        for (int p = 0; p < 3; p++)
            if (ends_with(k, sfx[p])) {
                *part = p;
                snprintf(mod, sizeof mod, "%.*s", (int)(kl - strlen(sfx[p])), k);
                goto found;
            }
        static const char *const old[2] = {"_lora.down.weight", "_lora.up.weight"};
        for (int p = 0; p < 2; p++) {
            const char *proc = strstr(k, ".processor.");
            if (!ends_with(k, old[p]) || !proc) continue;
            *part = p;
            const char *leaf = proc + strlen(".processor.");
            int leaf_len = (int)(kl - (size_t)(leaf - k) - strlen(old[p]));
            const bool is_out = leaf_len == 6 && !strncmp(leaf, "to_out", 6);
            snprintf(mod, sizeof mod, "%.*s.%.*s%s", (int)(proc - k), k, leaf_len, leaf, is_out ? ".0" : "");
            goto found;
        }
        tensor_fail(STATUS_FORMAT, "%s: tensor '%s' is not a LoRA tensor of a known format (expected "
                    "'unet.<module>.lora_A.weight', 'lora_unet_<module>.lora_down.weight' or '.alpha')", st->path, key);
        return -1;
    found:
        *proj = find_proj_index(u, mod);
        if (*proj < 0) {
            tensor_fail(STATUS_FORMAT, "%s: tensor '%s': the UNet has no module '%s'", st->path, key, mod);
            return -1;
        }
    }
    return 0;
}

static bool entry_is_float(const struct safetensors_entry *e)
{
    return e->dtype == DTYPE_F32 || e->dtype == DTYPE_F64 || e->dtype == DTYPE_F16 || e->dtype == DTYPE_BF16;
}

static const char *shape_of(const struct safetensors_entry *e, char *buf, size_t n)
{
    struct tensor tmp = {.ndim = e->ndim};
    memcpy(tmp.shape, e->shape, sizeof tmp.shape);
    return tensor_shape_str(&tmp, buf, n);
}

enum status sd_lora_load(struct sd_lora *l, const struct sd_unet *u, const char *path)
{
    memset(l, 0, sizeof *l);
    struct safetensors *st = safetensors_open(path);
    if (!st) return tensor_status();
    const int np = u->n_projs;
    int *ia = malloc((size_t)(np ? np : 1) * sizeof *ia), *ib = malloc((size_t)(np ? np : 1) * sizeof *ib);
    double *alpha = malloc((size_t)(np ? np : 1) * sizeof *alpha);
    /* each projection's kohya stems: [0] the one sd-scripts gives this UNet, [1] the other naming */
    char (*kohya)[2][200] = malloc((size_t)(np ? np : 1) * sizeof *kohya);
    enum status s = ia && ib && alpha && kohya ? STATUS_OK : tensor_fail(STATUS_OOM, "lora_load: out of host memory");
    for (int i = 0; i < np && !s; i++) {
        sd_lora_kohya_stem(kohya[i][0], sizeof kohya[i][0], u, u->projs[i]->name);
        if (u->add_time_dim) sd_lora_kohya_name(kohya[i][1], sizeof kohya[i][1], u->projs[i]->name);
        else kohya_original(kohya[i][1], sizeof kohya[i][1], u, u->projs[i]->name);
    }
    for (int i = 0; i < np && !s; i++) { ia[i] = ib[i] = -1; alpha[i] = NAN; }
    const char *meta_alpha = safetensors_metadata(st, "lora_alpha");
    char a1[64], a2[64];
    for (int j = 0; j < st->n && !s; j++) {
        const struct safetensors_entry *e = &st->entries[j];
        int proj = -1, part = 0;
        int c = classify_key(st, u, kohya, e->name, &proj, &part);
        if (c < 0) { s = tensor_status(); break; }
        if (c > 0) continue;
        if (!entry_is_float(e)) {
            s = tensor_fail(STATUS_DTYPE, "%s: tensor '%s' has dtype %s, expected a float (F32, F64, F16, BF16)", path, e->name,
                            e->file_dtype);
            break;
        }
        const struct sd_proj *p = u->projs[proj];
        if (part == 2) {
            int64_t numel = 1;
            for (int d = 0; d < e->ndim; d++) numel *= e->shape[d];
            if (numel != 1) { s = tensor_fail(STATUS_SHAPE, "%s: tensor '%s': alpha must be a scalar, got shape %s", path, e->name, shape_of(e, a1, sizeof a1)); break; }
            tensor_scope_begin();
            struct tensor *t = safetensors_load(st, e->name, DTYPE_F64, DEVICE_CPU);
            if (!t) s = tensor_status();
            else alpha[proj] = tensor_get_flat(t, 0);
            tensor_scope_end();
            /* the f32 tensor rounds alpha; the metadata keeps it exactly when they agree */
            if (!s && meta_alpha && (float)strtod(meta_alpha, NULL) == (float)alpha[proj]) alpha[proj] = strtod(meta_alpha, NULL);
            if (!s && !(alpha[proj] > 0 && isfinite(alpha[proj])))
                s = tensor_fail(STATUS_VALUE, "%s: tensor '%s': alpha must be positive, got %g", path, e->name, alpha[proj]);
            continue;
        }
        int *slot = part == 0 ? &ia[proj] : &ib[proj];
        if (*slot >= 0) {
            s = tensor_fail(STATUS_FORMAT, "%s: tensors '%s' and '%s' are the same LoRA weight of %s", path, st->entries[*slot].name,
                            e->name, p->name);
            break;
        }
        *slot = j;
        /* A [r, in], B [out, r] */
        const int64_t want = part == 0 ? p->in_features : p->out_features;
        const int64_t got = e->ndim == 2 ? e->shape[part == 0 ? 1 : 0] : -1;
        if (e->ndim != 2 || got != want || e->shape[part == 0 ? 0 : 1] <= 0)
            s = tensor_fail(STATUS_SHAPE, "%s: tensor '%s': expected shape %s for %s [%lld -> %lld], got %s", path, e->name,
                            part == 0 ? "[r, in]" : "[out, r]", p->name, (long long)p->in_features, (long long)p->out_features,
                            shape_of(e, a2, sizeof a2));
    }
    /* pairs complete, ranks agree; the first module fixes rank and alpha */
    int n = 0, rank = 0;
    double alpha0 = 0;
    for (int i = 0; i < np && !s; i++) {
        if (ia[i] < 0 && ib[i] < 0) {
            if (!isnan(alpha[i])) s = tensor_fail(STATUS_FORMAT, "%s: module %s has an alpha but no LoRA weights", path, u->projs[i]->name);
            continue;
        }
        if (ia[i] < 0 || ib[i] < 0) {
            s = tensor_fail(STATUS_FORMAT, "%s: missing tensor: %s has '%s' but no %s weight", path, u->projs[i]->name,
                            st->entries[ia[i] >= 0 ? ia[i] : ib[i]].name, ia[i] < 0 ? "down (lora_A)" : "up (lora_B)");
            break;
        }
        const int64_t ra = st->entries[ia[i]].shape[0], rb = st->entries[ib[i]].shape[1];
        if (ra != rb) {
            s = tensor_fail(STATUS_SHAPE, "%s: tensor '%s' has rank %lld but '%s' has rank %lld", path, st->entries[ia[i]].name,
                            (long long)ra, st->entries[ib[i]].name, (long long)rb);
            break;
        }
        if (isnan(alpha[i])) alpha[i] = meta_alpha ? strtod(meta_alpha, NULL) : (double)ra;
        if (!(alpha[i] > 0 && isfinite(alpha[i]))) {
            s = tensor_fail(STATUS_FORMAT, "%s: metadata lora_alpha '%s' is not a positive number", path, meta_alpha);
            break;
        }
        if (n++ == 0) alpha0 = alpha[i] / (double)ra;
        if (ra > rank) rank = (int)ra;
    }
    if (!s && n == 0) s = tensor_fail(STATUS_FORMAT, "%s: no UNet LoRA tensors in the file", path);
    if (!s) {
        /* alpha0 is the first module's alpha/r; keep its alpha when every module agrees */
        l->rank = rank;
        l->alpha = alpha0 * rank;
        for (int i = 0; i < np; i++)
            if (ia[i] >= 0 && st->entries[ia[i]].shape[0] == rank && alpha[i] / rank == alpha0) { l->alpha = alpha[i]; break; }
        const enum dtype dt = u->ps && u->ps->dtype == DTYPE_F64 ? DTYPE_F64 : DTYPE_F32;
        nn_params_init(&l->params, dt, u->ps ? u->ps->device : DEVICE_CPU);
        ag_no_grad_begin();
        for (int i = 0; i < np && !s; i++) {
            if (ia[i] < 0) continue;
            const struct sd_proj *p = u->projs[i];
            if ((s = add_module(l, p->name, kohya[i][0], p->in_features, p->out_features, n))) break;
            struct sd_lora_module *m = &l->mods[l->n - 1];
            const int64_t r = st->entries[ia[i]].shape[0];
            const double fold = (alpha[i] / (double)r) / (l->alpha / rank);
            tensor_scope_begin();
            struct tensor *A = safetensors_load(st, st->entries[ia[i]].name, DTYPE_F64, m->A->storage->device);
            struct tensor *B = safetensors_load(st, st->entries[ib[i]].name, dt, m->B->storage->device);
            if (A && fold != 1.0) A = ag_scale(A, fold);
            if (!A || !B) s = tensor_status();
            if (!s) s = tensor_copy_(tensor_narrow(m->A, 0, 0, r), A);
            if (!s) s = tensor_copy_(tensor_narrow(m->B, 1, 0, r), B);
            tensor_scope_end();
        }
        ag_no_grad_end();
        if (!s) nn_params_set_trainable(&l->params, true);
    }
    free(ia);
    free(ib);
    free(alpha);
    free(kohya);
    safetensors_close(st);
    if (s) sd_lora_free(l);
    return s;
}

enum status sd_lora_load_combined(struct sd_lora *out, const struct sd_unet *u, int n, const char *const *paths,
                                  const double *scales)
{
    memset(out, 0, sizeof *out);
    if (n <= 0) return tensor_fail(STATUS_VALUE, "lora_load_combined: need at least one file, got %d", n);
    struct sd_lora *ls = calloc((size_t)n, sizeof *ls);
    const struct sd_lora **lp = calloc((size_t)n, sizeof *lp);
    enum status s = ls && lp ? STATUS_OK : tensor_fail(STATUS_OOM, "out of host memory");
    for (int i = 0; i < n && !s; i++) s = sd_lora_load(&ls[i], u, paths[i]), lp[i] = &ls[i];
    if (!s) s = sd_lora_combine(out, n, lp, scales);
    for (int i = 0; ls && i < n; i++) sd_lora_free(&ls[i]);
    free(ls);
    free(lp);
    return s;
}
