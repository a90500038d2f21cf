/* graph.c — nodes, the backward engine, grad mode and checkpointing. */
#include "autograd/node.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- grad mode */

#define MAX_MODE_DEPTH 64
static _Thread_local bool mode_stack[MAX_MODE_DEPTH];
static _Thread_local int mode_depth;
/* set when an op sees an input requiring grad while grad mode is off inside a checkpoint's
 * forward: tells the checkpoint that its function uses trainable parameters */
static _Thread_local int checkpoint_probe;
static _Thread_local bool checkpoint_saw_grad;

bool ag_grad_enabled(void) { return mode_depth == 0 || mode_stack[mode_depth - 1]; }
bool ag_checkpoint_forward_active(void) { return checkpoint_probe > 0; }

void ag_grad_mode_push(bool enabled)
{
    assert(mode_depth < MAX_MODE_DEPTH && "grad mode nested too deep");
    mode_stack[mode_depth++] = enabled;
}

void ag_grad_mode_pop(void)
{
    assert(mode_depth > 0 && "ag_grad_mode_pop without push");
    mode_depth--;
}

void ag_no_grad_begin(void) { ag_grad_mode_push(false); }
void ag_no_grad_end(void) { ag_grad_mode_pop(); }

bool ag_needs_grad(int n, struct tensor *const *in)
{
    bool any = false;
    for (int i = 0; i < n; i++)
        if (in[i] && in[i]->requires_grad) any = true;
    if (any && !ag_grad_enabled() && checkpoint_probe) checkpoint_saw_grad = true;
    return any && ag_grad_enabled();
}

/* ---------------------------------------------------------------- nodes */

static void node_unref(struct ag_node *n);

static void node_release(struct ag_node *n)
{
    for (int i = 0; i < n->n_saved; i++) tensor_free(n->saved[i]);
    n->n_saved = 0;
    if (n->ctx_free) n->ctx_free(n->ctx);
    n->ctx = NULL;
    n->ctx_free = NULL;
    for (int i = 0; i < n->n_inputs; i++) {
        if (n->in_node[i]) node_unref(n->in_node[i]);
        n->in_node[i] = NULL;
    }
    n->released = true;
}

static void node_unref(struct ag_node *n)
{
    if (--n->refcount > 0) return;
    node_release(n);
    if (n->grads)
        for (int j = 0; j < n->n_outputs; j++) tensor_free(n->grads[j]);
    free(n);
}

static struct ag_node *node_new(const char *name, int n_in, int n_out)
{
    /* one allocation for the node and its per-input / per-output arrays */
    size_t sz = sizeof(struct ag_node) + (size_t)n_in * (sizeof(struct ag_node *) + sizeof(int) + sizeof(struct ag_meta) + sizeof(bool))
                + (size_t)n_out * (sizeof(struct ag_meta) + sizeof(struct tensor *)) + 64;
    struct ag_node *n = calloc(1, sz);
    if (!n) { tensor_fail(STATUS_OOM, "out of host memory for a graph node"); return NULL; }
    char *p = (char *)(n + 1);
#define CARVE(field, count) do { p = (char *)(((uintptr_t)p + 7) & ~(uintptr_t)7); n->field = (void *)p; p += (size_t)(count) * sizeof *n->field; } while (0)
    CARVE(in_node, n_in);
    CARVE(in_meta, n_in);
    CARVE(out_meta, n_out);
    CARVE(grads, n_out);
    CARVE(in_index, n_in);
    CARVE(needs, n_in);
#undef CARVE
    n->name = name;
    n->n_inputs = n_in;
    n->n_outputs = n_out;
    return n;
}

void ag_meta_of(struct ag_meta *m, const struct tensor *t)
{
    m->dtype = t->dtype;
    m->device = t->storage->device;
    m->ndim = t->ndim;
    memcpy(m->shape, t->shape, sizeof m->shape);
}

struct tensor *ag_zeros_meta(const struct ag_meta *m) { return tensor_zeros(m->dtype, m->ndim, m->shape, m->device); }

/* the accumulator node of a leaf: created on first use, owned by the leaf */
static struct ag_node *leaf_node(struct tensor *t)
{
    if (t->node) return t->node;
    struct ag_node *n = node_new("leaf", 0, 1);
    if (!n) return NULL;
    ag_meta_of(&n->out_meta[0], t);
    n->leaf = t;
    n->refcount = 1;
    t->node = n;
    t->out_index = 0;
    return n;
}

static struct ag_node *record_node(const char *name, ag_backward_fn fn, int n_in, struct tensor *const *in, int n_out,
                                   struct tensor *const *out, bool force)
{
    if (!force && !ag_needs_grad(n_in, in)) return NULL;
    struct ag_node *n = node_new(name, n_in, n_out);
    if (!n) return NULL;
    n->backward = fn;
    for (int i = 0; i < n_in; i++) {
        if (!in[i]) continue;
        ag_meta_of(&n->in_meta[i], in[i]);
        if (!in[i]->requires_grad) continue;
        struct ag_node *src = leaf_node(in[i]);
        if (!src) { free(n); return NULL; }
        src->refcount++;
        n->in_node[i] = src;
        n->in_index[i] = in[i]->out_index;
        n->needs[i] = true;
    }
    for (int j = 0; j < n_out; j++) {
        ag_meta_of(&n->out_meta[j], out[j]);
        assert(!out[j]->node && "an op output already belongs to a graph");
        out[j]->node = n;
        out[j]->out_index = j;
        out[j]->requires_grad = true;
        n->refcount++;
    }
    return n;
}

struct ag_node *ag_record(const char *name, ag_backward_fn fn, int n_in, struct tensor *const *in, int n_out,
                          struct tensor *const *out)
{
    return record_node(name, fn, n_in, in, n_out, out, false);
}

int ag_save(struct ag_node *n, struct tensor *t)
{
    assert(n->n_saved < AG_MAX_SAVED && "too many saved tensors for one node");
    /* An output of n itself (exp, tanh, softmax save y) is kept as a graph-free alias: a
     * reference to y would own n through y->node, a cycle that outlives every user
     * reference when backward never runs. */
    if (t && t->node == n) {
        struct tensor *a = tensor_keep(tensor_alias(t));
        n->saved[n->n_saved] = a ? a : tensor_ref(t);   /* out of host memory: leak rather than crash */
    } else {
        n->saved[n->n_saved] = tensor_ref(t);
    }
    return n->n_saved++;
}

/* tensor.c calls this when a tensor with graph state dies */
extern void (*tensor_autograd_release_hook)(struct tensor *t);
static void release_tensor_state(struct tensor *t)
{
    if (t->node) {
        if (t->node->leaf == t) t->node->leaf = NULL;
        node_unref(t->node);
        t->node = NULL;
    }
    tensor_free(t->grad);
    t->grad = NULL;
}

__attribute__((constructor)) static void install_hook(void) { tensor_autograd_release_hook = release_tensor_state; }

/* ---------------------------------------------------------------- leaves */

enum status ag_set_requires_grad(struct tensor *t, bool on)
{
    if (!t) return tensor_status() ? tensor_status() : tensor_fail(STATUS_VALUE, "requires_grad: NULL tensor");
    if (t->node && t->node->leaf != t)
        return tensor_fail(STATUS_GRAPH, "requires_grad: '%s' is the result of an op, not a leaf; use ag_detach first",
                           t->name[0] ? t->name : "tensor");
    if (on && !dtype_is_float(t->dtype))
        return tensor_fail(STATUS_DTYPE, "requires_grad: only float tensors can require gradients (got %s)",
                           dtype_name(t->dtype));
    t->requires_grad = on;
    return STATUS_OK;
}

struct tensor *ag_detach(struct tensor *t)
{
    if (!t) return NULL;
    struct tensor *d = tensor_alias(t);
    if (d) memcpy(d->name, t->name, sizeof d->name);
    return d;
}

void ag_zero_grad(struct tensor *t)
{
    if (!t) return;
    tensor_free(t->grad);
    t->grad = NULL;
}

/* ---------------------------------------------------------------- backward engine */

struct node_list {
    struct ag_node **v;
    int n, cap;
};

static bool list_push(struct node_list *l, struct ag_node *x)
{
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 64;
        struct ag_node **v = realloc(l->v, (size_t)cap * sizeof *v);
        if (!v) return false;
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = x;
    return true;
}

/* add g into the slot (taking ownership of g); out of place so no tensor is modified that
 * someone else may still hold */
static enum status accumulate(struct tensor **slot, struct tensor *g)
{
    if (!*slot) { *slot = g; return STATUS_OK; }
    struct tensor *sum = tensor_keep(ag_add(*slot, g));
    tensor_free(g);
    if (!sum) return tensor_status();
    tensor_free(*slot);
    *slot = sum;
    return STATUS_OK;
}

static enum status accumulate_leaf(struct tensor *leaf, struct tensor *g)
{
    char a[128], b[128];
    if (!tensor_same_shape(leaf, g)) {
        enum status s = tensor_fail(STATUS_INTERNAL, "backward: gradient of shape %s for leaf '%s' of shape %s",
                                    tensor_shape_str(g, a, sizeof a), leaf->name, tensor_shape_str(leaf, b, sizeof b));
        tensor_free(g);
        return s;
    }
    if (!leaf->grad && g->refcount == 1 && g->storage->refcount == 1 && !g->storage->external && !g->node &&
        g->dtype == leaf->dtype && g->offset == 0 && tensor_is_contiguous(g)) {
        leaf->grad = g;   /* nobody else sees this buffer: take it instead of copying */
        return STATUS_OK;
    }
    if (!leaf->grad) {
        /* the leaf's own contiguous copy: later accumulation may write into it */
        struct tensor *c = tensor_empty(leaf->dtype, leaf->ndim, leaf->shape, leaf->storage->device);
        c = tensor_keep(c);
        enum status s = c ? tensor_copy_(c, g) : tensor_status();
        tensor_free(g);
        if (s) { tensor_free(c); return s; }
        leaf->grad = c;
        return STATUS_OK;
    }
    struct tensor *ga = g;
    if (g->dtype != leaf->grad->dtype) {
        ga = tensor_keep(tensor_to_dtype(g, leaf->grad->dtype));
        tensor_free(g);
        if (!ga) return tensor_status();
    }
    enum status s = backend_of(leaf->grad)->binary(BINARY_ADD, leaf->grad, leaf->grad, ga);
    tensor_free(ga);
    return s;
}

static enum status run_node(struct ag_node *n, bool retain)
{
    enum status s = STATUS_OK;
    if (n->leaf || !n->backward) {   /* a leaf accumulator */
        struct tensor *g = n->grads[0];
        n->grads[0] = NULL;
        if (g && n->leaf) return accumulate_leaf(n->leaf, g);
        tensor_free(g);
        return STATUS_OK;
    }
    bool any = false;
    for (int j = 0; j < n->n_outputs; j++) any |= n->grads[j] != NULL;
    if (!any) return STATUS_OK;
    if (n->released)
        return tensor_fail(STATUS_GRAPH, "backward through '%s' whose graph was already released: pass "
                           "retain_graph=true to the first ag_backward to backpropagate twice", n->name);
    tensor_scope_begin();
    for (int j = 0; j < n->n_outputs; j++) {
        if (n->grads[j]) continue;
        n->grads[j] = tensor_keep(ag_zeros_meta(&n->out_meta[j]));
        if (!n->grads[j]) { tensor_scope_end(); return tensor_status(); }
    }
    struct tensor *gin_stack[8], **gin = n->n_inputs <= 8 ? gin_stack : calloc((size_t)n->n_inputs, sizeof *gin);
    if (!gin) { tensor_scope_end(); return tensor_fail(STATUS_OOM, "out of host memory in backward"); }
    memset(gin, 0, (size_t)n->n_inputs * sizeof *gin);
    s = n->backward(n, n->grads, gin);
    if (!s) {
        for (int i = 0; i < n->n_inputs; i++) {
            if (!gin[i] || !n->in_node[i]) continue;
            const struct ag_meta *m = &n->in_meta[i];
            bool ok = gin[i]->ndim == m->ndim;
            for (int d = 0; ok && d < m->ndim; d++) ok = gin[i]->shape[d] == m->shape[d];
            if (!ok) {
                char a[128];
                s = tensor_fail(STATUS_INTERNAL, "backward of '%s' returned a gradient of shape %s for input %d", n->name,
                                tensor_shape_str(gin[i], a, sizeof a), i);
                break;
            }
            tensor_keep(gin[i]);
            struct ag_node *src = n->in_node[i];
            /* leaves accumulate at once, in the order gradients arrive: the same order with
             * and without checkpointing, so both give bit-identical sums */
            if (src->leaf) s = accumulate_leaf(src->leaf, gin[i]);
            else if (!src->backward) tensor_free(gin[i]);   /* a leaf that died meanwhile */
            else s = accumulate(&src->grads[n->in_index[i]], gin[i]);
            gin[i] = NULL;
            if (s) break;
        }
    }
    if (gin != gin_stack) free(gin);
    tensor_scope_end();
    for (int j = 0; j < n->n_outputs; j++) { tensor_free(n->grads[j]); n->grads[j] = NULL; }
    if (!retain && !s) {
        /* keep the edges until the walk is over (the caller holds references); drop saved state now */
        for (int i = 0; i < n->n_saved; i++) tensor_free(n->saved[i]);
        n->n_saved = 0;
        n->released = true;
    }
    return s;
}

enum status ag_backward_many(int n_roots, struct tensor *const *roots, struct tensor *const *grads, bool retain)
{
    for (int r = 0; r < n_roots; r++) {
        if (!roots[r]) return tensor_status() ? tensor_status() : tensor_fail(STATUS_VALUE, "backward: NULL root");
        if (!roots[r]->requires_grad)
            return tensor_fail(STATUS_GRAPH, "backward: root %d does not require a gradient (no input of it has "
                               "requires_grad set, or it was computed under no-grad)", r);
        if (!grads || !grads[r]) {
            if (tensor_numel(roots[r]) != 1) {
                char a[128];
                return tensor_fail(STATUS_SHAPE, "backward: root of shape %s is not a scalar; pass its output gradient",
                                   tensor_shape_str(roots[r], a, sizeof a));
            }
        } else if (!tensor_same_shape(roots[r], grads[r])) {
            char a[128], b[128];
            return tensor_fail(STATUS_SHAPE, "backward: output gradient %s does not match root %s",
                               tensor_shape_str(grads[r], a, sizeof a), tensor_shape_str(roots[r], b, sizeof b));
        } else if (grads[r]->dtype != roots[r]->dtype || tensor_device(grads[r]) != tensor_device(roots[r])) {
            /* backward kernels read saved tensors with the gradient's dtype */
            return tensor_fail(grads[r]->dtype != roots[r]->dtype ? STATUS_DTYPE : STATUS_DEVICE,
                               "backward: output gradient (%s, %s) does not match root %d (%s, %s)",
                               dtype_name(grads[r]->dtype), device_name(tensor_device(grads[r])), r,
                               dtype_name(roots[r]->dtype), device_name(tensor_device(roots[r])));
        }
        if (roots[r]->node && roots[r]->node->released && !roots[r]->node->leaf)
            return tensor_fail(STATUS_GRAPH, "backward: the graph of this root ('%s') was already released; pass "
                               "retain_graph=true to the first ag_backward to backpropagate twice", roots[r]->node->name);
    }
    ag_grad_mode_push(false);
    enum status s = STATUS_OK;
    /* 1. collect every node reachable from the roots, counting consumers */
    struct node_list all = {0}, stack = {0}, ready = {0};
    for (int r = 0; r < n_roots; r++) {
        struct tensor *t = roots[r];
        struct ag_node *n = t->node ? t->node : leaf_node(t);
        if (!n) { s = tensor_status(); goto done; }
        if (n->mark) continue;
        n->mark = 1;
        n->refcount++;
        if (!list_push(&all, n) || !list_push(&stack, n)) { s = tensor_fail(STATUS_OOM, "out of host memory in backward"); goto done; }
    }
    while (stack.n) {
        struct ag_node *n = stack.v[--stack.n];
        for (int i = 0; i < n->n_inputs; i++) {
            struct ag_node *src = n->in_node[i];
            if (!src) continue;
            src->deps++;
            if (src->mark) continue;
            src->mark = 1;
            src->refcount++;
            if (!list_push(&all, src) || !list_push(&stack, src)) { s = tensor_fail(STATUS_OOM, "out of host memory in backward"); goto done; }
        }
    }
    /* 2. seed the roots' gradients */
    for (int r = 0; r < n_roots; r++) {
        struct tensor *t = roots[r], *g;
        if (grads && grads[r]) g = tensor_ref(grads[r]);
        else g = tensor_keep(tensor_full(t->dtype, t->ndim, t->shape, 1.0, t->storage->device));
        if (!g) { s = tensor_status(); goto done; }
        if ((s = accumulate(&t->node->grads[t->out_index], g))) goto done;
    }
    /* 3. Kahn's walk: a node runs once all its consumers have run */
    for (int i = 0; i < all.n; i++)
        if (all.v[i]->deps == 0 && !list_push(&ready, all.v[i])) { s = tensor_fail(STATUS_OOM, "out of host memory in backward"); goto done; }
    while (ready.n) {
        struct ag_node *n = ready.v[--ready.n];
        if ((s = run_node(n, retain))) goto done;
        for (int i = 0; i < n->n_inputs; i++) {
            struct ag_node *src = n->in_node[i];
            if (src && --src->deps == 0 && !list_push(&ready, src)) { s = tensor_fail(STATUS_OOM, "out of host memory in backward"); goto done; }
        }
    }
done:
    for (int i = 0; i < all.n; i++) {
        struct ag_node *n = all.v[i];
        n->mark = 0;
        n->deps = 0;
        for (int j = 0; j < n->n_outputs; j++) { tensor_free(n->grads[j]); n->grads[j] = NULL; }
        if (!retain && !n->leaf && n->backward) node_release(n);
    }
    for (int i = 0; i < all.n; i++) node_unref(all.v[i]);
    free(all.v);
    free(stack.v);
    free(ready.v);
    ag_grad_mode_pop();
    return s;
}

enum status ag_backward(struct tensor *root, struct tensor *grad, bool retain_graph)
{
    struct tensor *g[1] = {grad};
    return ag_backward_many(1, &root, g, retain_graph);
}

/* ---------------------------------------------------------------- checkpointing */

/* What a checkpoint keeps: the function, the random-number position at its forward, and its
 * inputs (detached aliases: storage only, no graph). Its activations are not kept. */
struct checkpoint_ctx {
    ag_checkpoint_fn fn;
    void *user;
    uint64_t rng_seed, rng_offset;
    int n_in;
    struct tensor *inputs[];
};

static void checkpoint_ctx_free(void *p)
{
    struct checkpoint_ctx *c = p;
    for (int i = 0; i < c->n_in; i++) tensor_free(c->inputs[i]);
    free(c);
}

static enum status checkpoint_backward(struct ag_node *n, struct tensor *const *gout, struct tensor **gin)
{
    struct checkpoint_ctx *c = n->ctx;
    const int n_in = n->n_inputs, n_out = n->n_outputs;
    struct tensor **in = calloc((size_t)(n_in + 3 * n_out), sizeof *in);
    if (!in) return tensor_fail(STATUS_OOM, "out of host memory in checkpoint backward");
    struct tensor **out = in + n_in, **roots = out + n_out, **rgrads = roots + n_out;
    /* replay the forward with the same random numbers, this time recording a graph */
    uint64_t seed, offset;
    ag_rng_get(&seed, &offset);
    ag_rng_set(c->rng_seed, c->rng_offset);
    ag_grad_mode_push(true);
    tensor_scope_begin();
    enum status s = STATUS_OK;
    for (int i = 0; i < n_in && !s; i++) {
        if (!c->inputs[i]) continue;
        in[i] = ag_detach(c->inputs[i]);
        if (!in[i]) s = tensor_status();
        else if (n->needs[i]) s = ag_set_requires_grad(in[i], true);
    }
    if (!s) s = c->fn(c->user, in, out);
    int nr = 0;
    for (int j = 0; j < n_out && !s; j++) {
        if (!out[j]) { s = tensor_status() ? tensor_status() : tensor_fail(STATUS_VALUE, "checkpoint: function returned NULL output %d", j); break; }
        if (!out[j]->requires_grad) continue;
        roots[nr] = out[j];
        rgrads[nr++] = gout[j];
    }
    if (!s && nr) s = ag_backward_many(nr, roots, rgrads, false);
    for (int i = 0; i < n_in; i++)
        gin[i] = (!s && in[i] && n->needs[i] && in[i]->grad) ? tensor_ref(in[i]->grad) : NULL;
    tensor_scope_end();
    /* hand the gradients to the engine's scope (the one open around this call) */
    for (int i = 0; i < n_in; i++) tensor_autorelease(gin[i]);
    ag_grad_mode_pop();
    ag_rng_set(seed, offset);
    free(in);
    return s;
}

enum status ag_checkpoint(ag_checkpoint_fn fn, void *ctx, int n_in, struct tensor *const *in, int n_out,
                          struct tensor **out)
{
    for (int j = 0; j < n_out; j++) out[j] = NULL;
    for (int i = 0; i < n_in; i++)
        if (!in[i] && tensor_status()) return tensor_status();   /* propagate an earlier error */
    struct checkpoint_ctx *c = calloc(1, sizeof *c + (size_t)n_in * sizeof(struct tensor *));
    struct tensor **tmp = calloc((size_t)(n_out ? n_out : 1), sizeof *tmp);
    if (!c || !tmp) { free(c); free(tmp); return tensor_fail(STATUS_OOM, "out of host memory for a checkpoint"); }
    c->fn = fn;
    c->user = ctx;
    c->n_in = n_in;
    ag_rng_get(&c->rng_seed, &c->rng_offset);
    /* run without a graph; the probe notices parameters inside fn that require grad */
    bool outer_saw = checkpoint_saw_grad;
    checkpoint_saw_grad = false;
    checkpoint_probe++;
    ag_grad_mode_push(false);
    tensor_scope_begin();
    enum status s = fn(ctx, in, tmp);
    for (int j = 0; j < n_out; j++) {
        if (!s && !tmp[j]) s = tensor_status() ? tensor_status() : tensor_fail(STATUS_VALUE, "checkpoint: function returned NULL output %d", j);
        /* fresh tensor structs: outputs must not share a header (or a graph) with anything */
        if (!s) out[j] = tensor_keep(tensor_alias(tmp[j]));
    }
    tensor_scope_end();
    ag_grad_mode_pop();
    checkpoint_probe--;
    bool used_grad = checkpoint_saw_grad;
    checkpoint_saw_grad = outer_saw || used_grad;
    free(tmp);
    for (int i = 0; i < n_in; i++) used_grad |= in[i] && in[i]->requires_grad;
    if (!s && ag_grad_enabled() && used_grad) {
        struct ag_node *n = record_node("checkpoint", checkpoint_backward, n_in, in, n_out, out, true);
        if (!n) s = tensor_status();
        else {
            for (int i = 0; i < n_in; i++) c->inputs[i] = in[i] ? tensor_keep(ag_detach(in[i])) : NULL;
            n->ctx = c;
            n->ctx_free = checkpoint_ctx_free;
            c = NULL;
        }
    } else if (!s && checkpoint_probe) {
        checkpoint_saw_grad |= used_grad;
    }
    free(c);
    if (s) {
        for (int j = 0; j < n_out; j++) { tensor_free(out[j]); out[j] = NULL; }
        return s;
    }
    for (int j = 0; j < n_out; j++) tensor_autorelease(out[j]);
    return STATUS_OK;
}
