/*===- moert.h - moe-compiler runtime C ABI -------------------------------===*\
 *
 * The one boundary between compiled MoE modules (and the `moe-run` driver) and
 * the runtime. Plain C: opaque handles, status codes and a message getter.
 *
 * Two audiences:
 *  - host API (moert_ctx_*, moert_buffer_*, moert_world_*): used by moe-run
 *    and the unit tests to create a context, move data and read statistics;
 *  - kernel ABI (moert_rmsnorm ... moert_wait): called by the code that
 *    `moe-compile` generates, one call per `moe` op. These never return a
 *    status: the first failure is recorded in the context (sticky), every later
 *    call on that context is a no-op, and the driver reads
 *    moert_ctx_status() / moert_ctx_error() after the entry point returns.
 *
 * All tensor pointers passed to kernels point into memory of the context's
 * device (host memory for MOERT_DEVICE_CPU, device memory for CUDA). Tensors
 * are dense and row-major. Shapes are passed as int64_t, enum-like values as
 * int32_t, scalars as float. The semantics of every kernel are those of the
 * `moe` op of the same name; docs/dialect.md and ARCHITECTURE.md section 3
 * are the specification.
\*===----------------------------------------------------------------------===*/
#ifndef MOERT_MOERT_H
#define MOERT_MOERT_H

#include <stddef.h>
#include <stdint.h>

/* Version of the kernel ABI below. Every compiled module records the version
 * it was built against (the exported `const int32_t moe_abi_version`), and the
 * loader refuses a module of another version. Bump it with every change to a
 * kernel's name, parameters or enumeration values. */
#define MOERT_ABI_VERSION 1

#ifdef __cplusplus
extern "C" {
#endif

/*===--- Enumerations (values are ABI: compiled modules embed them) -------===*/

typedef enum moert_status {
  MOERT_OK = 0,
  MOERT_ERR_INVALID = 1,     /* bad argument, shape or configuration      */
  MOERT_ERR_IO = 2,          /* file could not be read or written          */
  MOERT_ERR_DEVICE = 3,      /* CUDA / cuBLAS failure                      */
  MOERT_ERR_COMM = 4,        /* communicator failure                       */
  MOERT_ERR_TIMEOUT = 5,     /* a collective did not complete in time      */
  MOERT_ERR_UNSUPPORTED = 6, /* feature not built in or not on this device */
  MOERT_ERR_NOMEM = 7        /* allocation failed                          */
} moert_status;

typedef enum moert_dtype {
  MOERT_F32 = 0,
  MOERT_F16 = 1,
  MOERT_BF16 = 2,
  MOERT_I32 = 3,
  MOERT_I64 = 4
} moert_dtype;

typedef enum moert_device_kind {
  MOERT_DEVICE_CPU = 0,
  MOERT_DEVICE_CUDA = 1
} moert_device_kind;

typedef enum moert_comm_kind {
  MOERT_COMM_SINGLE = 0, /* world size 1                                 */
  MOERT_COMM_MPI = 1,    /* OpenMPI, host buffers                         */
  MOERT_COMM_NCCL = 2    /* NCCL, device buffers, bootstrapped over MPI   */
} moert_comm_kind;

typedef enum moert_score_fn {
  MOERT_SCORE_SOFTMAX = 0,
  MOERT_SCORE_SIGMOID = 1
} moert_score_fn;

typedef enum moert_group_score {
  MOERT_GROUP_SCORE_MAX = 0,     /* group score = max score in the group     */
  MOERT_GROUP_SCORE_TOP2_SUM = 1 /* = sum of the two best (DeepSeek-V3)      */
} moert_group_score;

typedef enum moert_activation {
  MOERT_ACT_RELU = 0,   /* relu(x W1^T) W2^T                              */
  MOERT_ACT_GELU = 1,   /* gelu_erf(x W1^T) W2^T                          */
  MOERT_ACT_SWIGLU = 2, /* (silu(x Wg^T) * x Wu^T) Wd^T                   */
  MOERT_ACT_GEGLU = 3   /* (gelu_erf(x Wg^T) * x Wu^T) Wd^T               */
} moert_activation;

/*===--- Host API ---------------------------------------------------------===*/

typedef struct moert_ctx moert_ctx;

typedef struct moert_ctx_options {
  int32_t device;       /* moert_device_kind                                */
  int32_t device_index; /* CUDA device ordinal; -1 = local rank % devices   */
  int32_t comm;         /* moert_comm_kind                                  */
  int32_t num_threads;  /* CPU threads per rank; 0 = runtime default        */
  int32_t mesh_rank;    /* number of mesh axes (0 = no mesh: world of 1)    */
  const int64_t *mesh_shape;    /* [mesh_rank]                            */
  const char *const *mesh_axes; /* [mesh_rank] axis names                 */
  double timeout_s;     /* a collective not done after this fails (<=0: 300)*/
  int32_t record_trace; /* keep per-call events for a Chrome trace          */
} moert_ctx_options;

/* Fills `o` with defaults: CPU, single communicator, no mesh. */
void moert_ctx_options_init(moert_ctx_options *o);

/* Creates a context. On failure returns non-OK, *out is NULL and
 * moert_last_error() says why. For MOERT_COMM_MPI / NCCL the caller must have
 * called moert_world_init() first. */
moert_status moert_ctx_create(const moert_ctx_options *o, moert_ctx **out);
void moert_ctx_destroy(moert_ctx *ctx);

/* Message of the last failed call on this thread that had no context. */
const char *moert_last_error(void);

/* Sticky status of the context and its message ("" when OK). */
moert_status moert_ctx_status(const moert_ctx *ctx);
const char *moert_ctx_error(const moert_ctx *ctx);
/* Clears the sticky status (the driver does this between runs). */
void moert_ctx_clear_error(moert_ctx *ctx);

/* Position of this rank: world rank and size, and its coordinate on each
 * mesh axis (row-major: the last axis varies fastest). */
int32_t moert_ctx_rank(const moert_ctx *ctx);
int32_t moert_ctx_world_size(const moert_ctx *ctx);
int64_t moert_ctx_coord(const moert_ctx *ctx, int32_t axis);

/* Device memory of the context (host memory on CPU). */
moert_status moert_alloc(moert_ctx *ctx, int64_t bytes, void **out);
void moert_free(moert_ctx *ctx, void *p);
moert_status moert_copy_to_device(moert_ctx *ctx, void *dst, const void *src,
                                  int64_t bytes);
moert_status moert_copy_to_host(moert_ctx *ctx, void *dst, const void *src,
                                int64_t bytes);
/* Waits for all work queued on the context (no-op on CPU). */
moert_status moert_synchronize(moert_ctx *ctx);

/* Statistics: per-phase time (seconds, summed over calls) and, per
 * collective kind and mesh-axis set, calls and bytes sent to other ranks.
 * Returned as a JSON object owned by the context, valid until the next call:
 *   {"rank": r, "device": "cpu", "phases": [{"name": "expert_ffn",
 *    "calls": n, "seconds": s}, ...], "collectives": [{"op": "all_to_all",
 *    "axis": "ep", "calls": n, "bytes_sent": b}, ...]}                     */
const char *moert_ctx_stats_json(moert_ctx *ctx);
void moert_ctx_reset_stats(moert_ctx *ctx);
/* Chrome trace events of this rank (JSON array body, no brackets), or "". */
const char *moert_ctx_trace_json(moert_ctx *ctx);

/* World-level host helpers used by the driver (over the context's world
 * communicator; plain copies for a single rank). */
moert_status moert_world_init(int *argc, char ***argv, int32_t comm);
void moert_world_finalize(void);
/* 1 when the process was started by a launcher with more than 0 ranks. */
int32_t moert_world_launched(void);
moert_status moert_world_barrier(moert_ctx *ctx);
/* Every rank sends `bytes` host bytes; rank 0 receives world*bytes in rank
 * order (recv may be NULL on other ranks). */
moert_status moert_world_gather(moert_ctx *ctx, const void *send, void *recv,
                                int64_t bytes);
/* Every rank receives world*bytes in rank order. */
moert_status moert_world_allgather(moert_ctx *ctx, const void *send, void *recv,
                                   int64_t bytes);
/* Rank 0's `bytes` host bytes are copied to every rank. */
moert_status moert_world_broadcast(moert_ctx *ctx, void *buf, int64_t bytes);

/*===--- Kernel ABI (called by compiled modules) --------------------------===*/

/* Scratch memory for one run of an entry point: `bytes` from a per-context
 * arena that is grown only when a larger request comes (no allocation in
 * steady state). The pointer is valid until the next moert_arena call. */
void *moert_arena(moert_ctx *ctx, int64_t bytes);
void moert_copy(moert_ctx *ctx, const void *src, void *dst, int64_t bytes);

/* y[t] = x[t] / sqrt(mean(x[t]^2) + eps) * w     (stats in f32)            */
void moert_rmsnorm(moert_ctx *ctx, const void *x, const void *w, void *y,
                   int64_t T, int64_t D, float eps, int32_t dtype);
/* y = a + b, n elements                                                    */
void moert_add(moert_ctx *ctx, const void *a, const void *b, void *y, int64_t n,
               int32_t dtype);
/* logits[T,E] (f32) = x[T,D] . w[E,D]^T, accumulated in f32                */
void moert_router(moert_ctx *ctx, const void *x, const void *w, float *logits,
                  int64_t T, int64_t D, int64_t E, int32_t dtype);
/* scores = softmax|sigmoid(logits); selection = scores + bias; optional
 * group-limited masking; indices[T,k] = top-k of selection (ties to lower
 * index, ordered by decreasing selection score); weights[T,k] = scores at
 * indices, renormalized if asked, times `scaling`. bias may be NULL.        */
void moert_topk(moert_ctx *ctx, const float *logits, const float *bias,
                float *weights, int32_t *indices, float *scores, int64_t T,
                int64_t E, int64_t k, int32_t score_fn, int32_t renormalize,
                float scaling, int64_t num_groups, int64_t groups_kept,
                int32_t group_score);
/* Places every (token, choice) assignment in the expert-contiguous buffer.
 * capacity == 0 (dropless): positions[t,j] = row in the packed [T*k] buffer,
 *   rows ordered by expert, then token, then choice; counts[1,E].
 * capacity == C > 0: tokens split into `groups` contiguous groups; in each
 *   group assignments are served slot-major (all first choices, in token
 *   order, then all second choices, ...); position = e*(groups*C) + g*C +
 *   slot, or -1 when the expert's C slots in that group are full;
 *   counts[groups,E] = kept assignments.                                   */
void moert_assign(moert_ctx *ctx, const int32_t *indices, int32_t *positions,
                  int32_t *counts, int64_t T, int64_t k, int64_t E,
                  int64_t capacity, int64_t groups);
/* out[out_rows,D] = 0; out[positions[t,j]] = x[t] for positions >= 0.      */
void moert_dispatch(moert_ctx *ctx, const void *x, const int32_t *positions,
                    void *out, int64_t T, int64_t k, int64_t D,
                    int64_t out_rows, int32_t dtype);
/* Grouped expert FFN. Weights: gate/up [E,F,D] (gate NULL for relu/gelu),
 * down [E,D,F]. counts[S,E] (S = segments) say which rows are live:
 *  - rows_per_expert == 0 (packed layout, x is [total_rows, D]): rows are
 *    packed in (s, e) row-major order of counts, expert e applies to its
 *    segments; rows past the sum of counts are set to 0 in y;
 *  - rows_per_expert == R > 0 (capacity layout, x is [E, R, D], R = S*C):
 *    rows e*R + s*C + [0, counts[s,e]) are live; other rows of y are 0.
 *    counts may be NULL here: then every row is live.                      */
void moert_expert_ffn(moert_ctx *ctx, const void *x, const int32_t *counts,
                      const void *gate, const void *up, const void *down,
                      void *y, int64_t E, int64_t segments,
                      int64_t rows_per_expert, int64_t total_rows, int64_t D,
                      int64_t F, int32_t activation, int32_t dtype);
/* out[t] = sum_j weights[t,j] * y[positions[t,j]] over positions >= 0; when
 * passthrough != NULL a dropped assignment contributes
 * weights[t,j] * passthrough[t] instead of 0 (Switch Transformers).       */
void moert_combine(moert_ctx *ctx, const void *y, const int32_t *positions,
                   const float *weights, const void *passthrough, void *out,
                   int64_t T, int64_t k, int64_t D, int32_t dtype);
/* Dense FFN (shared experts, dense layers): weights gate/up [F,D] (gate
 * NULL for relu/gelu), down [D,F]. If sigmoid_gate ([1,D]) is not NULL the
 * output row t is scaled by sigmoid(x[t] . sigmoid_gate).                  */
void moert_mlp(moert_ctx *ctx, const void *x, const void *gate, const void *up,
               const void *down, const void *sigmoid_gate, void *y, int64_t T,
               int64_t D, int64_t F, int32_t activation, int32_t dtype);
/* stats[2,E]: row 0 = number of assignments to e, row 1 = sum of scores of
 * e over tokens (both f32, partial over this rank's tokens).               */
void moert_expert_load(moert_ctx *ctx, const float *scores,
                       const int32_t *indices, float *stats, int64_t T,
                       int64_t k, int64_t E);
/* out[0] = coeff * E * sum_e (stats[0,e]/(tokens*k)) * (stats[1,e]/tokens) */
void moert_load_balance_loss(moert_ctx *ctx, const float *stats, float *out,
                             int64_t E, int64_t tokens, int64_t k, float coeff);
/* out[0] = coeff * sum_t logsumexp(logits[t])^2 / total_tokens            */
void moert_z_loss(moert_ctx *ctx, const float *logits, float *out, int64_t T,
                  int64_t E, int64_t total_tokens, float coeff);

/* Collectives. `axis_mask` bit i selects mesh axis i; the group is the ranks
 * that differ from this one only on those axes, ordered row-major by their
 * coordinates on them. Shapes of rank < 4 are padded with trailing 1s.
 * Bytes counted in statistics are those sent to other ranks.              */

/* Even all-to-all: input dims d0..d3; dimension split_dim is cut into n
 * equal chunks, chunk p goes to peer p; received chunks are concatenated
 * along concat_dim in peer order.                                          */
void moert_all_to_all(moert_ctx *ctx, int64_t axis_mask, const void *in,
                      void *out, int64_t elem_bytes, int64_t d0, int64_t d1,
                      int64_t d2, int64_t d3, int64_t split_dim,
                      int64_t concat_dim);
/* Uneven all-to-all of rows. send_counts has num_send_counts entries (host
 * order = row-major), cut into n equal consecutive chunks: the sum of chunk
 * p is the number of rows (packed, in order) sent to peer p. recv_counts
 * likewise gives what arrives from each peer; received rows are packed in
 * peer order; rows of `out` past the total are zeroed. Errors if a total
 * exceeds in_rows / out_rows.                                               */
void moert_all_to_all_v(moert_ctx *ctx, int64_t axis_mask, const void *in,
                        const int32_t *send_counts, const int32_t *recv_counts,
                        void *out, int64_t num_send_counts,
                        int64_t num_recv_counts, int64_t row_bytes,
                        int64_t in_rows, int64_t out_rows);
/* Concatenate the group's inputs along `dim` in group order.              */
void moert_all_gather(moert_ctx *ctx, int64_t axis_mask, const void *in,
                      void *out, int64_t elem_bytes, int64_t d0, int64_t d1,
                      int64_t d2, int64_t d3, int64_t dim);
/* Sum over the group, then keep this rank's chunk of `dim` (input dims).   */
void moert_reduce_scatter(moert_ctx *ctx, int64_t axis_mask, const void *in,
                          void *out, int64_t d0, int64_t d1, int64_t d2,
                          int64_t d3, int64_t dim, int32_t dtype);
/* Sum over the group, n elements.                                          */
void moert_all_reduce(moert_ctx *ctx, int64_t axis_mask, const void *in,
                      void *out, int64_t n, int32_t dtype);

/* Keep this rank's chunk of `dim`: the dimension is cut into n equal
 * chunks and chunk p (p = this rank's position in the group) is copied to
 * `out`. No communication; counted as a phase, not a collective.          */
void moert_slice(moert_ctx *ctx, int64_t axis_mask, const void *in, void *out,
                 int64_t elem_bytes, int64_t d0, int64_t d1, int64_t d2,
                 int64_t d3, int64_t dim);

/* Async forms: same arguments, return a handle; moert_wait completes it.
 * Input and output must stay untouched until the wait.                     */
void *moert_all_to_all_start(moert_ctx *ctx, int64_t axis_mask, const void *in,
                             void *out, int64_t elem_bytes, int64_t d0,
                             int64_t d1, int64_t d2, int64_t d3,
                             int64_t split_dim, int64_t concat_dim);
void *moert_all_to_all_v_start(moert_ctx *ctx, int64_t axis_mask,
                               const void *in, const int32_t *send_counts,
                               const int32_t *recv_counts, void *out,
                               int64_t num_send_counts, int64_t num_recv_counts,
                               int64_t row_bytes, int64_t in_rows,
                               int64_t out_rows);
void *moert_all_gather_start(moert_ctx *ctx, int64_t axis_mask, const void *in,
                             void *out, int64_t elem_bytes, int64_t d0,
                             int64_t d1, int64_t d2, int64_t d3, int64_t dim);
void *moert_reduce_scatter_start(moert_ctx *ctx, int64_t axis_mask,
                                 const void *in, void *out, int64_t d0,
                                 int64_t d1, int64_t d2, int64_t d3,
                                 int64_t dim, int32_t dtype);
void *moert_all_reduce_start(moert_ctx *ctx, int64_t axis_mask, const void *in,
                             void *out, int64_t n, int32_t dtype);
void moert_wait(moert_ctx *ctx, void *handle);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* MOERT_MOERT_H */
