/* pickle.c — a restricted unpickler for torch.save files (see pickle.h).
 *
 * The pickle is run on a small stack machine whose values are plain data (none, bool, int,
 * float, str, tuple, list, dict) plus three inert records: a whitelisted global, a storage
 * (from BINPERSID) and a tensor view (from REDUCE of _rebuild_tensor*). Values live in one
 * allocation list freed at the end, so the memo and the stack share them without reference
 * counts. Each opcode creates O(1) values and every container slot comes from a stack push,
 * so memory stays linear in the input size; stack, mark and memo sizes are capped too.
 */
#include "nn/pickle.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zip.h>

#define PK_MAX_STACK (1 << 20)
#define PK_MAX_MARKS 256
#define PK_MAX_MEMO (1 << 22)
#define PK_MAX_DEPTH 64
#define PK_MAX_NAME 1024
#define PK_MAX_GLOBAL 256

enum pv_kind { PV_NONE, PV_BOOL, PV_INT, PV_FLOAT, PV_STR, PV_TUPLE, PV_LIST, PV_DICT, PV_GLOBAL, PV_STORAGE, PV_TENSOR };

enum pk_global {
    G_ORDERED_DICT,
    G_REBUILD_TENSOR_V2,
    G_REBUILD_TENSOR,
    G_REBUILD_PARAMETER,
    G_STORAGE,   /* one of the storage types below */
};

static const struct {
    const char *name;
    enum dtype dtype;
    size_t elem_size;
} storage_types[] = {
    {"FloatStorage", DTYPE_F32, 4},     {"DoubleStorage", DTYPE_F64, 8}, {"HalfStorage", DTYPE_F16, 2},
    {"BFloat16Storage", DTYPE_BF16, 2}, {"IntStorage", DTYPE_I32, 4},    {"LongStorage", DTYPE_I64, 8},
    {"ShortStorage", DTYPE_COUNT, 2},   {"CharStorage", DTYPE_COUNT, 1}, {"ByteStorage", DTYPE_COUNT, 1},
    {"BoolStorage", DTYPE_COUNT, 1},
};
#define N_STORAGE_TYPES (int)(sizeof storage_types / sizeof storage_types[0])

struct pv {
    enum pv_kind kind;
    struct pv *next_alloc;
    int64_t i;               /* bool, int; global id; storage type index */
    double f;
    char *s;                 /* str; storage key */
    size_t len;
    struct pv **items;       /* tuple, list: n items; dict: n keys and values interleaved */
    size_t n, cap;
    /* storage */
    int64_t numel;
    /* tensor */
    struct pv *storage;
    int64_t offset;
    int ndim;
    int64_t shape[TENSOR_MAX_DIMS], stride[TENSOR_MAX_DIMS];
};

struct pk {
    const uint8_t *b;
    size_t n, pos, op_off;
    uint8_t op;
    const char *label;
    struct pv *all;
    struct pv **stack;
    size_t sp, scap;
    size_t marks[PK_MAX_MARKS];
    int nmarks;
    struct pv **memo;
    size_t memo_cap, memo_len;
    bool failed;
};

static const char *op_name(uint8_t op)
{
    switch (op) {
    case 0x80: return "PROTO";
    case 0x95: return "FRAME";
    case '.': return "STOP";
    case '(': return "MARK";
    case '}': return "EMPTY_DICT";
    case ']': return "EMPTY_LIST";
    case ')': return "EMPTY_TUPLE";
    case 't': return "TUPLE";
    case 0x85: return "TUPLE1";
    case 0x86: return "TUPLE2";
    case 0x87: return "TUPLE3";
    case 'l': return "LIST";
    case 'N': return "NONE";
    case 0x88: return "NEWTRUE";
    case 0x89: return "NEWFALSE";
    case 'J': return "BININT";
    case 'K': return "BININT1";
    case 'M': return "BININT2";
    case 0x8a: return "LONG1";
    case 0x8b: return "LONG4";
    case 'G': return "BINFLOAT";
    case 'X': return "BINUNICODE";
    case 0x8c: return "SHORT_BINUNICODE";
    case 0x8d: return "BINUNICODE8";
    case 'q': return "BINPUT";
    case 'r': return "LONG_BINPUT";
    case 0x94: return "MEMOIZE";
    case 'h': return "BINGET";
    case 'j': return "LONG_BINGET";
    case '0': return "POP";
    case '1': return "POP_MARK";
    case '2': return "DUP";
    case 's': return "SETITEM";
    case 'u': return "SETITEMS";
    case 'a': return "APPEND";
    case 'e': return "APPENDS";
    case 'c': return "GLOBAL";
    case 0x93: return "STACK_GLOBAL";
    case 'R': return "REDUCE";
    case 'Q': return "BINPERSID";
    case 'b': return "BUILD";
    /* refused, named for the message */
    case 'P': return "PERSID";
    case 'i': return "INST";
    case 'o': return "OBJ";
    case 0x81: return "NEWOBJ";
    case 0x92: return "NEWOBJ_EX";
    case 0x82: return "EXT1";
    case 0x83: return "EXT2";
    case 0x84: return "EXT4";
    case 'I': return "INT";
    case 'L': return "LONG";
    case 'F': return "FLOAT";
    case 'S': return "STRING";
    case 'T': return "BINSTRING";
    case 'U': return "SHORT_BINSTRING";
    case 'V': return "UNICODE";
    case 'B': return "BINBYTES";
    case 'C': return "SHORT_BINBYTES";
    case 0x8e: return "BINBYTES8";
    case 0x8f: return "EMPTY_SET";
    case 0x90: return "ADDITEMS";
    case 0x91: return "FROZENSET";
    case 0x96: return "BYTEARRAY8";
    case 0x97: return "NEXT_BUFFER";
    case 0x98: return "READONLY_BUFFER";
    case 'p': return "PUT";
    case 'g': return "GET";
    case 'd': return "DICT";
    default: return "unknown";
    }
}

__attribute__((format(printf, 2, 3))) static struct pv *pk_fail(struct pk *p, const char *fmt, ...)
{
    if (p->failed) return NULL;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    tensor_fail(STATUS_FORMAT, "pickle %s: opcode %s (0x%02x) at offset %zu: %s", p->label, op_name(p->op), p->op,
                p->op_off, msg);
    p->failed = true;
    return NULL;
}

static struct pv *pv_new(struct pk *p, enum pv_kind kind)
{
    struct pv *v = calloc(1, sizeof *v);
    if (!v) {
        pk_fail(p, "out of memory");
        return NULL;
    }
    v->kind = kind;
    v->next_alloc = p->all;
    p->all = v;
    return v;
}

static bool pv_add(struct pk *p, struct pv *c, struct pv *item)
{
    if (c->n == c->cap) {
        size_t cap = c->cap ? 2 * c->cap : 4;
        struct pv **it = realloc(c->items, cap * sizeof *it);
        if (!it) {
            pk_fail(p, "out of memory");
            return false;
        }
        c->items = it;
        c->cap = cap;
    }
    c->items[c->n++] = item;
    return true;
}

/* ---- stack ---- */

static bool push(struct pk *p, struct pv *v)
{
    if (!v) return false;
    if (p->sp == PK_MAX_STACK) {
        pk_fail(p, "stack deeper than %d", PK_MAX_STACK);
        return false;
    }
    if (p->sp == p->scap) {
        size_t cap = p->scap ? 2 * p->scap : 64;
        struct pv **s = realloc(p->stack, cap * sizeof *s);
        if (!s) {
            pk_fail(p, "out of memory");
            return false;
        }
        p->stack = s;
        p->scap = cap;
    }
    p->stack[p->sp++] = v;
    return true;
}

static size_t fence(const struct pk *p) { return p->nmarks ? p->marks[p->nmarks - 1] : 0; }

static struct pv *pop(struct pk *p)
{
    if (p->sp <= fence(p)) return pk_fail(p, "stack underflow");
    return p->stack[--p->sp];
}

static struct pv *top(struct pk *p)
{
    if (p->sp <= fence(p)) return pk_fail(p, "stack underflow");
    return p->stack[p->sp - 1];
}

/* pop the last mark; returns its stack position or SIZE_MAX */
static size_t pop_mark(struct pk *p)
{
    if (!p->nmarks) {
        pk_fail(p, "no MARK on the stack");
        return SIZE_MAX;
    }
    return p->marks[--p->nmarks];
}

/* ---- reading ---- */

static bool need(struct pk *p, size_t k)
{
    if (k > p->n - p->pos) {
        pk_fail(p, "truncated: needs %zu bytes, %zu left", k, p->n - p->pos);
        return false;
    }
    return true;
}

static uint64_t read_le(struct pk *p, size_t k)
{
    uint64_t v = 0;
    for (size_t j = 0; j < k; j++) v |= (uint64_t)p->b[p->pos + j] << (8 * j);
    p->pos += k;
    return v;
}

static struct pv *make_int(struct pk *p, int64_t i)
{
    struct pv *v = pv_new(p, PV_INT);
    if (v) v->i = i;
    return v;
}

static struct pv *make_str(struct pk *p, const uint8_t *s, size_t len)
{
    if (memchr(s, 0, len)) return pk_fail(p, "string holds a NUL byte");
    struct pv *v = pv_new(p, PV_STR);
    if (!v) return NULL;
    v->s = malloc(len + 1);
    if (!v->s) return pk_fail(p, "out of memory");
    memcpy(v->s, s, len);
    v->s[len] = 0;
    v->len = len;
    return v;
}

static struct pv *read_str(struct pk *p, size_t len_bytes)
{
    if (!need(p, len_bytes)) return NULL;
    uint64_t len = read_le(p, len_bytes);
    if (!need(p, len)) return NULL;
    struct pv *v = make_str(p, p->b + p->pos, (size_t)len);
    p->pos += len;
    return v;
}

/* one line of a GLOBAL operand, without the newline */
static bool read_line(struct pk *p, char *out)
{
    const uint8_t *s = p->b + p->pos;
    size_t left = p->n - p->pos;
    const uint8_t *nl = memchr(s, '\n', left < PK_MAX_GLOBAL ? left : PK_MAX_GLOBAL);
    if (!nl) {
        pk_fail(p, "GLOBAL operand without a newline in %d bytes", PK_MAX_GLOBAL);
        return false;
    }
    size_t len = (size_t)(nl - s);
    memcpy(out, s, len);
    out[len] = 0;
    p->pos += len + 1;
    return true;
}

static struct pv *memo_get(struct pk *p, uint64_t idx)
{
    if (idx >= p->memo_cap || !p->memo[idx]) return pk_fail(p, "memo index %llu was never stored", (unsigned long long)idx);
    return p->memo[idx];
}

static bool memo_put(struct pk *p, uint64_t idx)
{
    struct pv *v = top(p);
    if (!v) return false;
    if (idx >= PK_MAX_MEMO) {
        pk_fail(p, "memo index %llu over the limit %d", (unsigned long long)idx, PK_MAX_MEMO);
        return false;
    }
    if (idx >= p->memo_cap) {
        size_t cap = p->memo_cap ? p->memo_cap : 64;
        while (cap <= idx) cap *= 2;
        struct pv **m = realloc(p->memo, cap * sizeof *m);
        if (!m) {
            pk_fail(p, "out of memory");
            return false;
        }
        memset(m + p->memo_cap, 0, (cap - p->memo_cap) * sizeof *m);
        p->memo = m;
        p->memo_cap = cap;
    }
    if (!p->memo[idx]) p->memo_len++;
    p->memo[idx] = v;
    return true;
}

/* ---- globals and callables ---- */

static struct pv *make_global(struct pk *p, const char *module, const char *name)
{
    int64_t id = -1, st = -1;
    if (!strcmp(module, "collections") && !strcmp(name, "OrderedDict")) id = G_ORDERED_DICT;
    else if (!strcmp(module, "torch._utils") && !strcmp(name, "_rebuild_tensor_v2")) id = G_REBUILD_TENSOR_V2;
    else if (!strcmp(module, "torch._utils") && !strcmp(name, "_rebuild_tensor")) id = G_REBUILD_TENSOR;
    else if (!strcmp(module, "torch._utils") && !strcmp(name, "_rebuild_parameter")) id = G_REBUILD_PARAMETER;
    else if (!strcmp(module, "torch"))
        for (int k = 0; k < N_STORAGE_TYPES; k++)
            if (!strcmp(name, storage_types[k].name)) id = G_STORAGE, st = k;
    if (id < 0) return pk_fail(p, "global %.100s.%.100s is not whitelisted", module, name);
    struct pv *v = pv_new(p, PV_GLOBAL);
    if (v) {
        v->i = id;
        v->numel = st;
    }
    return v;
}

static bool is_int(const struct pv *v) { return v && v->kind == PV_INT; }

/* a tuple of ndim >= 0 non-negative ints */
static bool int_tuple(struct pk *p, const struct pv *t, int64_t *out, int *ndim, const char *what)
{
    if (!t || t->kind != PV_TUPLE) {
        pk_fail(p, "tensor %s is not a tuple", what);
        return false;
    }
    if (t->n > TENSOR_MAX_DIMS) {
        pk_fail(p, "tensor %s has %zu dims (max %d)", what, t->n, TENSOR_MAX_DIMS);
        return false;
    }
    for (size_t k = 0; k < t->n; k++) {
        if (!is_int(t->items[k]) || t->items[k]->i < 0) {
            pk_fail(p, "tensor %s[%zu] is not a non-negative int", what, k);
            return false;
        }
        out[k] = t->items[k]->i;
    }
    *ndim = (int)t->n;
    return true;
}

/* _rebuild_tensor(storage, offset, size, stride, ...): the view must lie in the storage */
static struct pv *rebuild_tensor(struct pk *p, const struct pv *args, size_t nmin, size_t nmax)
{
    if (args->n < nmin || args->n > nmax) return pk_fail(p, "_rebuild_tensor takes %zu..%zu args, got %zu", nmin, nmax, args->n);
    struct pv *st = args->items[0];
    if (st->kind != PV_STORAGE) return pk_fail(p, "_rebuild_tensor: first argument is not a storage");
    if (!is_int(args->items[1]) || args->items[1]->i < 0) return pk_fail(p, "_rebuild_tensor: bad storage offset");
    struct pv *t = pv_new(p, PV_TENSOR);
    if (!t) return NULL;
    int nd_stride;
    if (!int_tuple(p, args->items[2], t->shape, &t->ndim, "size") ||
        !int_tuple(p, args->items[3], t->stride, &nd_stride, "stride"))
        return NULL;
    if (nd_stride != t->ndim) return pk_fail(p, "_rebuild_tensor: %d sizes but %d strides", t->ndim, nd_stride);
    t->storage = st;
    t->offset = args->items[1]->i;
    /* last element = offset + sum((size-1)*stride) must stay below the storage numel */
    int64_t numel = 1, last = t->offset;
    for (int d = 0; d < t->ndim; d++) {
        if (t->shape[d] == 0) numel = 0;
        else if (numel && t->shape[d] > INT64_MAX / numel) return pk_fail(p, "_rebuild_tensor: numel overflows");
        else numel *= t->shape[d];
    }
    if (numel) {
        for (int d = 0; d < t->ndim; d++) {
            int64_t span;
            if (t->stride[d] && t->shape[d] - 1 > INT64_MAX / t->stride[d]) return pk_fail(p, "_rebuild_tensor: stride overflows");
            span = (t->shape[d] - 1) * t->stride[d];
            if (span > INT64_MAX - last) return pk_fail(p, "_rebuild_tensor: extent overflows");
            last += span;
        }
        if (last >= st->numel)
            return pk_fail(p, "_rebuild_tensor: view (offset %lld, last element %lld) outside storage '%s' of %lld elements",
                           (long long)t->offset, (long long)last, st->s, (long long)st->numel);
    } else if (t->offset > st->numel) {
        return pk_fail(p, "_rebuild_tensor: offset %lld past storage '%s' of %lld elements", (long long)t->offset, st->s,
                       (long long)st->numel);
    }
    return t;
}

static struct pv *reduce(struct pk *p, struct pv *fn, struct pv *args)
{
    if (fn->kind != PV_GLOBAL) return pk_fail(p, "callable is not a whitelisted global");
    if (args->kind != PV_TUPLE) return pk_fail(p, "arguments are not a tuple");
    switch (fn->i) {
    case G_ORDERED_DICT:
        if (args->n) return pk_fail(p, "OrderedDict() with arguments");
        return pv_new(p, PV_DICT);
    case G_REBUILD_TENSOR_V2: return rebuild_tensor(p, args, 6, 7);
    case G_REBUILD_TENSOR: return rebuild_tensor(p, args, 4, 4);
    case G_REBUILD_PARAMETER:
        if (args->n != 3 || args->items[0]->kind != PV_TENSOR) return pk_fail(p, "_rebuild_parameter expects (tensor, requires_grad, hooks)");
        return args->items[0];
    default: return pk_fail(p, "%s is not callable here", storage_types[fn->numel].name);
    }
}

/* ('storage', StorageType, key, location, numel) */
static struct pv *persistent_load(struct pk *p, struct pv *pid)
{
    if (pid->kind != PV_TUPLE || pid->n != 5) return pk_fail(p, "persistent id is not a 5-tuple");
    struct pv **it = pid->items;
    if (it[0]->kind != PV_STR || strcmp(it[0]->s, "storage")) return pk_fail(p, "persistent id is not a 'storage'");
    if (it[1]->kind != PV_GLOBAL || it[1]->i != G_STORAGE) return pk_fail(p, "storage type is not a torch.*Storage");
    if (it[2]->kind != PV_STR || it[2]->len == 0 || it[2]->len > 64) return pk_fail(p, "storage key is not a short string");
    for (size_t k = 0; k < it[2]->len; k++) {
        char c = it[2]->s[k];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'))
            return pk_fail(p, "storage key '%s' has characters other than [A-Za-z0-9_]", it[2]->s);
    }
    if (it[3]->kind != PV_STR) return pk_fail(p, "storage location is not a string");
    if (!is_int(it[4]) || it[4]->i < 0 || it[4]->i > INT64_MAX / 8) return pk_fail(p, "storage numel is not a valid int");
    struct pv *s = pv_new(p, PV_STORAGE);
    if (!s) return NULL;
    s->i = it[1]->numel;
    s->s = malloc(it[2]->len + 1);
    if (!s->s) return pk_fail(p, "out of memory");
    memcpy(s->s, it[2]->s, it[2]->len + 1);
    s->len = it[2]->len;
    s->numel = it[4]->i;
    return s;
}

/* ---- the machine ---- */

static struct pv *tuple_from(struct pk *p, size_t from, enum pv_kind kind)
{
    struct pv *t = pv_new(p, kind);
    if (!t) return NULL;
    for (size_t k = from; k < p->sp; k++)
        if (!pv_add(p, t, p->stack[k])) return NULL;
    p->sp = from;
    return t;
}

static struct pv *run(struct pk *p)
{
    while (!p->failed) {
        p->op_off = p->pos;
        p->op = 0;
        if (p->pos >= p->n) return pk_fail(p, "end of data before STOP");
        uint8_t op = p->op = p->b[p->pos++];
        switch (op) {
        case 0x80: /* PROTO */
            if (!need(p, 1)) return NULL;
            if (p->b[p->pos] > 5) return pk_fail(p, "protocol %d unsupported", p->b[p->pos]);
            p->pos++;
            break;
        case 0x95: /* FRAME: a length hint only */
            if (!need(p, 8)) return NULL;
            if (read_le(p, 8) > p->n - p->pos) return pk_fail(p, "frame longer than the data");
            break;
        case '.': /* STOP */
            return pop(p);
        case '(':
            if (p->nmarks == PK_MAX_MARKS) return pk_fail(p, "more than %d nested MARKs", PK_MAX_MARKS);
            p->marks[p->nmarks++] = p->sp;
            break;
        case '}': push(p, pv_new(p, PV_DICT)); break;
        case ']': push(p, pv_new(p, PV_LIST)); break;
        case ')': push(p, pv_new(p, PV_TUPLE)); break;
        case 't':
        case 'l': {
            size_t m = pop_mark(p);
            if (m == SIZE_MAX) return NULL;
            push(p, tuple_from(p, m, op == 't' ? PV_TUPLE : PV_LIST));
            break;
        }
        case 0x85:
        case 0x86:
        case 0x87: {
            size_t k = (size_t)(op - 0x84);
            if (p->sp < fence(p) + k) return pk_fail(p, "stack underflow");
            push(p, tuple_from(p, p->sp - k, PV_TUPLE));
            break;
        }
        case 'N': push(p, pv_new(p, PV_NONE)); break;
        case 0x88:
        case 0x89: {
            struct pv *v = pv_new(p, PV_BOOL);
            if (v) v->i = op == 0x88;
            push(p, v);
            break;
        }
        case 'J':
            if (!need(p, 4)) return NULL;
            push(p, make_int(p, (int32_t)(uint32_t)read_le(p, 4)));
            break;
        case 'K':
            if (!need(p, 1)) return NULL;
            push(p, make_int(p, (int64_t)read_le(p, 1)));
            break;
        case 'M':
            if (!need(p, 2)) return NULL;
            push(p, make_int(p, (int64_t)read_le(p, 2)));
            break;
        case 0x8a: { /* LONG1: n bytes, little-endian two's complement */
            if (!need(p, 1)) return NULL;
            size_t k = (size_t)read_le(p, 1);
            if (k > 8) return pk_fail(p, "%zu-byte integer does not fit 64 bits", k);
            if (!need(p, k)) return NULL;
            uint64_t u = read_le(p, k);
            if (k && k < 8 && (u >> (8 * k - 1)) & 1) u |= ~(uint64_t)0 << (8 * k);   /* sign-extend */
            int64_t i;
            memcpy(&i, &u, sizeof i);
            push(p, make_int(p, i));
            break;
        }
        case 'G': { /* BINFLOAT: big-endian double */
            if (!need(p, 8)) return NULL;
            uint64_t u = 0;
            for (size_t k = 0; k < 8; k++) u = u << 8 | p->b[p->pos + k];
            p->pos += 8;
            struct pv *v = pv_new(p, PV_FLOAT);
            if (v) memcpy(&v->f, &u, sizeof v->f);
            push(p, v);
            break;
        }
        case 'X': push(p, read_str(p, 4)); break;
        case 0x8c: push(p, read_str(p, 1)); break;
        case 0x8d: push(p, read_str(p, 8)); break;
        case 'q':
            if (!need(p, 1)) return NULL;
            memo_put(p, read_le(p, 1));
            break;
        case 'r':
            if (!need(p, 4)) return NULL;
            memo_put(p, read_le(p, 4));
            break;
        case 0x94: memo_put(p, p->memo_len); break;
        case 'h':
            if (!need(p, 1)) return NULL;
            push(p, memo_get(p, read_le(p, 1)));
            break;
        case 'j':
            if (!need(p, 4)) return NULL;
            push(p, memo_get(p, read_le(p, 4)));
            break;
        case '0': pop(p); break;
        case '1': {
            size_t m = pop_mark(p);
            if (m != SIZE_MAX) p->sp = m;
            break;
        }
        case '2': push(p, top(p)); break;
        case 's': {
            struct pv *v = pop(p), *k = v ? pop(p) : NULL, *d = k ? top(p) : NULL;
            if (!d) return NULL;
            if (d->kind != PV_DICT) return pk_fail(p, "SETITEM on a non-dict");
            if (pv_add(p, d, k)) pv_add(p, d, v);
            break;
        }
        case 'u':
        case 'e': {
            size_t m = pop_mark(p);
            if (m == SIZE_MAX) return NULL;
            if (m == 0 || m <= fence(p)) return pk_fail(p, "no container below the MARK");
            struct pv *c = p->stack[m - 1];
            if (op == 'u' && (c->kind != PV_DICT || (p->sp - m) % 2)) return pk_fail(p, "SETITEMS needs a dict and key/value pairs");
            if (op == 'e' && c->kind != PV_LIST) return pk_fail(p, "APPENDS on a non-list");
            for (size_t k = m; k < p->sp && !p->failed; k++) pv_add(p, c, p->stack[k]);
            p->sp = m;
            break;
        }
        case 'a': {
            struct pv *v = pop(p), *l = v ? top(p) : NULL;
            if (!l) return NULL;
            if (l->kind != PV_LIST) return pk_fail(p, "APPEND on a non-list");
            pv_add(p, l, v);
            break;
        }
        case 'c': {
            char module[PK_MAX_GLOBAL], name[PK_MAX_GLOBAL];
            if (!read_line(p, module) || !read_line(p, name)) return NULL;
            push(p, make_global(p, module, name));
            break;
        }
        case 0x93: {
            struct pv *name = pop(p), *module = name ? pop(p) : NULL;
            if (!module) return NULL;
            if (name->kind != PV_STR || module->kind != PV_STR) return pk_fail(p, "STACK_GLOBAL operands are not strings");
            push(p, make_global(p, module->s, name->s));
            break;
        }
        case 'R': {
            struct pv *args = pop(p), *fn = args ? pop(p) : NULL;
            if (!fn) return NULL;
            push(p, reduce(p, fn, args));
            break;
        }
        case 'Q': {
            struct pv *pid = pop(p);
            if (!pid) return NULL;
            push(p, persistent_load(p, pid));
            break;
        }
        case 'b': { /* state of an OrderedDict (the _metadata attribute): ignored */
            struct pv *state = pop(p), *obj = state ? top(p) : NULL;
            if (!obj) return NULL;
            if (obj->kind != PV_DICT) return pk_fail(p, "BUILD on something other than an OrderedDict");
            if (state->kind != PV_DICT && state->kind != PV_NONE) return pk_fail(p, "BUILD state is not a dict");
            break;
        }
        default: return pk_fail(p, "opcode not allowed");
        }
    }
    return NULL;
}

/* ---- flattening nested dicts into names ---- */

struct flat {
    struct torch_entry *e;
    int n, cap;
    size_t visits, max_visits;
};

static bool flatten(struct pk *p, struct flat *f, const struct pv *d, const char *prefix, int depth)
{
    if (depth > PK_MAX_DEPTH) {
        pk_fail(p, "dicts nested deeper than %d", PK_MAX_DEPTH);
        return false;
    }
    for (size_t k = 0; k + 1 < d->n; k += 2) {
        const struct pv *key = d->items[k], *val = d->items[k + 1];
        if (++f->visits > f->max_visits) {
            pk_fail(p, "more than %zu dict entries reachable (shared sub-dicts?)", f->max_visits);
            return false;
        }
        if (val->kind != PV_TENSOR && val->kind != PV_DICT) continue;
        if (key->kind != PV_STR) {
            pk_fail(p, "a tensor or dict under a non-string key");
            return false;
        }
        char name[PK_MAX_NAME];
        int len = snprintf(name, sizeof name, "%s%s%s", prefix, *prefix ? "." : "", key->s);
        if (len < 0 || len >= PK_MAX_NAME) {
            pk_fail(p, "name longer than %d bytes under '%.60s'", PK_MAX_NAME, prefix);
            return false;
        }
        if (val->kind == PV_DICT) {
            if (!flatten(p, f, val, name, depth + 1)) return false;
            continue;
        }
        if (f->n == f->cap) {
            int cap = f->cap ? 2 * f->cap : 16;
            struct torch_entry *e = realloc(f->e, (size_t)cap * sizeof *e);
            if (!e) {
                pk_fail(p, "out of memory");
                return false;
            }
            f->e = e;
            f->cap = cap;
        }
        struct torch_entry *e = &f->e[f->n];
        memset(e, 0, sizeof *e);
        const struct pv *st = val->storage;
        e->name = strdup(name);
        e->key = strdup(st->s);
        f->n++;
        if (!e->name || !e->key) {
            pk_fail(p, "out of memory");
            return false;
        }
        e->dtype = storage_types[st->i].dtype;
        e->storage_type = storage_types[st->i].name;
        e->elem_size = storage_types[st->i].elem_size;
        e->storage_numel = st->numel;
        e->offset = val->offset;
        e->ndim = val->ndim;
        memcpy(e->shape, val->shape, sizeof e->shape);
        memcpy(e->stride, val->stride, sizeof e->stride);
    }
    return true;
}

static int cmp_entry_name(const void *a, const void *b)
{
    return strcmp((*(const struct torch_entry *const *)a)->name, (*(const struct torch_entry *const *)b)->name);
}

void torch_pickle_free(struct torch_pickle *tp)
{
    if (!tp) return;
    for (int i = 0; i < tp->n; i++) {
        free(tp->entries[i].name);
        free(tp->entries[i].key);
    }
    free(tp->entries);
    free(tp);
}

struct torch_pickle *torch_pickle_parse(const void *bytes, size_t size, const char *label)
{
    struct pk p = {.b = bytes, .n = size, .label = label ? label : "(memory)"};
    struct torch_pickle *tp = NULL;
    struct flat f = {.max_visits = size + 1024};
    struct pv *root = bytes || !size ? run(&p) : pk_fail(&p, "no data");
    if (root && !p.failed) {
        p.op = 0;
        p.op_off = p.pos;
        if (root->kind != PV_DICT) {
            pk_fail(&p, "the top-level object is not a dict");
        } else {
            /* Lightning / CompVis .ckpt: {"state_dict": {...}, "epoch": ..., ...} */
            for (size_t k = 0; k + 1 < root->n; k += 2)
                if (root->items[k]->kind == PV_STR && !strcmp(root->items[k]->s, "state_dict") &&
                    root->items[k + 1]->kind == PV_DICT) {
                    root = root->items[k + 1];
                    break;
                }
            flatten(&p, &f, root, "", 0);
        }
    }
    if (!p.failed && f.n > 1) {
        struct torch_entry **order = malloc((size_t)f.n * sizeof *order);
        if (!order) {
            pk_fail(&p, "out of memory");
        } else {
            for (int i = 0; i < f.n; i++) order[i] = &f.e[i];
            qsort(order, (size_t)f.n, sizeof *order, cmp_entry_name);
            for (int i = 1; i < f.n && !p.failed; i++)
                if (!strcmp(order[i - 1]->name, order[i]->name)) pk_fail(&p, "duplicate tensor name '%s'", order[i]->name);
            free(order);
        }
    }
    if (!p.failed) tp = malloc(sizeof *tp);
    if (tp) {
        tp->n = f.n;
        tp->entries = f.e;
    } else {
        if (!p.failed) pk_fail(&p, "out of memory");
        struct torch_pickle tmp = {.n = f.n, .entries = f.e};
        for (int i = 0; i < tmp.n; i++) {
            free(tmp.entries[i].name);
            free(tmp.entries[i].key);
        }
        free(tmp.entries);
    }
    for (struct pv *v = p.all, *next; v; v = next) {
        next = v->next_alloc;
        free(v->s);
        free(v->items);
        free(v);
    }
    free(p.stack);
    free(p.memo);
    return tp;
}

/* ---- the zip container ---- */

struct torch_file {
    char *path;
    zip_t *za;
    struct torch_pickle *pk;
    zip_uint64_t *index;   /* zip entry of each tensor's storage */
};

void torch_file_close(struct torch_file *f)
{
    if (!f) return;
    if (f->za) zip_discard(f->za);
    torch_pickle_free(f->pk);
    free(f->index);
    free(f->path);
    free(f);
}

/* read `n` bytes of entry `idx` starting at byte `from`; false with an error */
static bool zip_read_range(struct torch_file *f, zip_uint64_t idx, uint64_t from, void *out, size_t n)
{
    zip_file_t *zf = zip_fopen_index(f->za, idx, 0);
    if (!zf) {
        tensor_fail(STATUS_IO, "torch file %s: cannot open entry %llu: %s", f->path, (unsigned long long)idx, zip_strerror(f->za));
        return false;
    }
    bool ok = true;
    zip_stat_t zs;
    bool stored = zip_stat_index(f->za, idx, 0, &zs) == 0 && (zs.valid & ZIP_STAT_COMP_METHOD) && zs.comp_method == ZIP_CM_STORE;
    if (from && (!stored || zip_fseek(zf, (zip_int64_t)from, SEEK_SET) != 0)) {
        /* compressed entries cannot seek: read and drop */
        char junk[65536];
        for (uint64_t left = from; left && ok;) {
            size_t k = left < sizeof junk ? (size_t)left : sizeof junk;
            ok = zip_fread(zf, junk, k) == (zip_int64_t)k;
            left -= k;
        }
    }
    for (size_t got = 0; ok && got < n;) {
        zip_int64_t r = zip_fread(zf, (char *)out + got, n - got);
        if (r <= 0) ok = false;
        else got += (size_t)r;
    }
    if (!ok) tensor_fail(STATUS_IO, "torch file %s: reading entry %llu failed: %s", f->path, (unsigned long long)idx, zip_file_strerror(zf));
    zip_fclose(zf);
    return ok;
}

struct torch_file *torch_file_open(const char *path)
{
    if (!path) {
        tensor_fail(STATUS_VALUE, "torch_file_open: NULL path");
        return NULL;
    }
    struct torch_file *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(path))) {
        free(f);
        tensor_fail(STATUS_OOM, "torch_file_open: out of memory");
        return NULL;
    }
    int err = 0;
    f->za = zip_open(path, ZIP_RDONLY, &err);
    if (!f->za) {
        zip_error_t ze;
        zip_error_init_with_code(&ze, err);
        tensor_fail(STATUS_IO, "torch file %s: not a readable zip: %s", path, zip_error_strerror(&ze));
        zip_error_fini(&ze);
        torch_file_close(f);
        return NULL;
    }
    /* <dir>/data.pkl; the storages are at <dir>/data/<key> */
    zip_int64_t n_entries = zip_get_num_entries(f->za, 0), pkl = -1;
    const char *pkl_name = NULL;
    for (zip_int64_t i = 0; i < n_entries && pkl < 0; i++) {
        const char *nm = zip_get_name(f->za, (zip_uint64_t)i, 0);
        size_t len = nm ? strlen(nm) : 0;
        if (len >= 8 && !strcmp(nm + len - 8, "data.pkl") && (len == 8 || nm[len - 9] == '/')) pkl = i, pkl_name = nm;
    }
    if (pkl < 0) {
        tensor_fail(STATUS_FORMAT, "torch file %s: no data.pkl entry (not a torch.save zip)", path);
        torch_file_close(f);
        return NULL;
    }
    size_t dir_len = strlen(pkl_name) - 8;
    if (dir_len > 512) {
        tensor_fail(STATUS_FORMAT, "torch file %s: archive folder name too long", path);
        torch_file_close(f);
        return NULL;
    }
    char dir[520];
    memcpy(dir, pkl_name, dir_len);
    dir[dir_len] = 0;
    zip_stat_t zs;
    if (zip_stat_index(f->za, (zip_uint64_t)pkl, 0, &zs) != 0 || !(zs.valid & ZIP_STAT_SIZE) || zs.size > (1u << 30)) {
        tensor_fail(STATUS_FORMAT, "torch file %s: %sdata.pkl has no usable size", path, dir);
        torch_file_close(f);
        return NULL;
    }
    unsigned char *buf = malloc(zs.size ? (size_t)zs.size : 1);
    if (!buf || !zip_read_range(f, (zip_uint64_t)pkl, 0, buf, (size_t)zs.size)) {
        if (!buf) tensor_fail(STATUS_OOM, "torch file %s: out of memory", path);
        free(buf);
        torch_file_close(f);
        return NULL;
    }
    char label[600];
    snprintf(label, sizeof label, "%s:%sdata.pkl", path, dir);
    f->pk = torch_pickle_parse(buf, (size_t)zs.size, label);
    free(buf);
    if (!f->pk) {
        torch_file_close(f);
        return NULL;
    }
    f->index = calloc((size_t)f->pk->n + 1, sizeof *f->index);
    if (!f->index) {
        tensor_fail(STATUS_OOM, "torch file %s: out of memory", path);
        torch_file_close(f);
        return NULL;
    }
    for (int i = 0; i < f->pk->n; i++) {
        const struct torch_entry *e = &f->pk->entries[i];
        char nm[600];
        snprintf(nm, sizeof nm, "%sdata/%s", dir, e->key);
        zip_int64_t idx = zip_name_locate(f->za, nm, 0);
        uint64_t need_bytes = (uint64_t)e->storage_numel * e->elem_size;
        if (idx < 0 || zip_stat_index(f->za, (zip_uint64_t)idx, 0, &zs) != 0 || !(zs.valid & ZIP_STAT_SIZE) ||
            zs.size < need_bytes) {
            tensor_fail(STATUS_FORMAT, "torch file %s: tensor %s: storage entry %s is %s (needs %llu bytes for %lld x %s)", path,
                        e->name, nm, idx < 0 ? "missing" : "too small", (unsigned long long)need_bytes,
                        (long long)e->storage_numel, e->storage_type);
            torch_file_close(f);
            return NULL;
        }
        f->index[i] = (zip_uint64_t)idx;
    }
    return f;
}

int torch_file_count(const struct torch_file *f) { return f ? f->pk->n : 0; }

const struct torch_entry *torch_file_entry(const struct torch_file *f, int i)
{
    return f && i >= 0 && i < f->pk->n ? &f->pk->entries[i] : NULL;
}

const char *torch_file_name(const struct torch_file *f, int i)
{
    const struct torch_entry *e = torch_file_entry(f, i);
    return e ? e->name : NULL;
}

static int find_index(const struct torch_file *f, const char *name)
{
    if (!f || !name) return -1;
    for (int i = 0; i < f->pk->n; i++)
        if (!strcmp(f->pk->entries[i].name, name)) return i;
    return -1;
}

const struct torch_entry *torch_file_find(const struct torch_file *f, const char *name)
{
    return torch_file_entry(f, find_index(f, name));
}

struct tensor *torch_file_load(const struct torch_file *f, const char *name, enum dtype dt)
{
    int i = find_index(f, name);
    if (i < 0) {
        tensor_fail(STATUS_VALUE, "torch file %s: no tensor named '%s'", f ? f->path : "(null)", name ? name : "(null)");
        return NULL;
    }
    const struct torch_entry *e = &f->pk->entries[i];
    if (e->dtype == DTYPE_COUNT) {
        tensor_fail(STATUS_DTYPE, "torch file %s: tensor %s is a %s, which has no engine dtype", f->path, name, e->storage_type);
        return NULL;
    }
    if ((unsigned)dt >= DTYPE_COUNT) {
        tensor_fail(STATUS_DTYPE, "torch_file_load: bad dtype %d for %s", (int)dt, name);
        return NULL;
    }
    tensor_scope_begin();
    struct tensor *out = tensor_empty(dt, e->ndim, e->shape, DEVICE_CPU);
    int64_t numel = out ? tensor_numel(out) : 0;
    if (!out || numel == 0) return tensor_scope_return(out);
    /* read the elements [offset, last] (checked against storage_numel at parse time, and
     * storage_numel against the entry size at open) and view them with the file's strides */
    int64_t last = e->offset;
    for (int d = 0; d < e->ndim; d++) last += (e->shape[d] - 1) * e->stride[d];
    int64_t span = last - e->offset + 1;
    size_t bytes = (size_t)span * e->elem_size;
    void *buf = malloc(bytes);
    if (!buf) {
        tensor_fail(STATUS_OOM, "torch file %s: %zu bytes for %s", f->path, bytes, name);
        return tensor_scope_return(NULL);
    }
    struct torch_file *fm = (struct torch_file *)f;   /* libzip reads need a non-const archive */
    enum status s = STATUS_IO;
    if (zip_read_range(fm, f->index[i], (uint64_t)e->offset * e->elem_size, buf, bytes)) {
        /* storages are little-endian, like every host this engine runs on */
        struct tensor *flat = tensor_wrap(e->dtype, 1, &span, buf);
        struct tensor *view = flat ? tensor_alias(flat) : NULL;
        if (view) {
            view->ndim = e->ndim;
            memcpy(view->shape, e->shape, sizeof view->shape);
            memcpy(view->stride, e->stride, sizeof view->stride);
            view->offset = 0;
            s = tensor_copy_(out, view);
        }
    }
    /* ending the scope frees flat and view, so buf can go after it */
    struct tensor *res = tensor_scope_return(s == STATUS_OK ? out : NULL);
    free(buf);
    return res;
}

bool torch_ckpt_name_unused(const char *name)
{
    static const char *const buffers[] = {
        "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
        "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
        "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
        "cond_stage_model.transformer.text_model.embeddings.position_ids",
    };
    if (!name) return false;
    if (!strncmp(name, "model_ema.", 10)) return true;
    for (size_t k = 0; k < sizeof buffers / sizeof buffers[0]; k++)
        if (!strcmp(name, buffers[k])) return true;
    return false;
}
