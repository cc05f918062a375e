/*===- moert.h - moe-compiler runtime C ABI -------------------------------===*\
 *
 * The one boundary between compiled MoE modules (and the `moe-run` driver) and
 * the runtime. Plain C: opaque handles, status codes and a message getter.
 *
 * Two audiences:
 *  - host API (moert_ctx_*, moert_buffer_*, moert_world_*): used by moe-run
 *    and the unit tests to create a context, move data and read statistics;
 *  - kernel ABI (moert_arena ... moert_wait, listed in moert_kernels.def):
 *    called by the code that `moe-compile` generates, one call per `moe` op.
 *    These never return a status: the first failure is recorded in the
 *    context (sticky), every later call on that context is a no-op, and the
 *    driver reads moert_ctx_status() / moert_ctx_error() after the entry
 *    point returns.
 *
 * All tensor pointers passed to kernels point into memory of the context's
 * device (host memory for MOERT_DEVICE_CPU, device memory for CUDA). Tensors
 * are dense and row-major. Shapes are passed as int64_t, enum-like values as
 * int32_t, scalars as float. The semantics of every kernel are those of the
 * `moe` op of the same name; docs/spec.md (section 3 for the layer, section
 * 4 for the collectives) and docs/dialect.md are the specification.
\*===----------------------------------------------------------------------===*/
#ifndef MOERT_MOERT_H
#define MOERT_MOERT_H

#include <stddef.h>
#include <stdint.h>

/* Version of the kernel ABI below. Every compiled module records the version
 * it was built against (the exported `const int32_t moe_abi_version`), and the
 * loader refuses a module of another version (docs/module-format.md). Bump it
 * with every change to moert_kernels.def (a kernel's name, parameters or
 * their order or types) or to the enumeration values. */
#define MOERT_ABI_VERSION 13
/* The name of that exported constant. */
#define MOERT_ABI_VERSION_SYMBOL "moe_abi_version"
/* Every compiled module also exports `const char moe_manifest[]`: the JSON
 * description of its mesh and entry points (manifest.json's "mesh" and
 * "entries"). The loader checks manifest.json against it before running
 * anything: the library, not the file, is the authority. */
#define MOERT_MANIFEST_SYMBOL "moe_manifest"

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
  MOERT_ERR_NOMEM = 7,       /* allocation failed                          */
  MOERT_ERR_RECV_BOUND = 8   /* a dropless exchange would receive more rows
                                than its bound (moe-compile --max-recv-tokens) */
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
  /* Network emulation: NULL or "" for none, else e.g.
   * "ep:alpha=50us,bw=1GB/s": every collective over a named mesh axis
   * completes no earlier than alpha + bytes/bw after it starts (link time
   * only; docs/runtime.md, "Network emulation"). */
  const char *net;
} moert_ctx_options;

/* Fills `o` with defaults: CPU, single communicator, no mesh. */
void moert_ctx_options_init(moert_ctx_options *o);
/* sizeof(moert_ctx_options) and MOERT_ABI_VERSION of this build of the
 * runtime, for bindings that cannot include this header (Python's ctypes
 * checks its mirror of the struct and the modules it loads against them). */
size_t moert_ctx_options_size(void);
int32_t moert_runtime_abi_version(void);

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
/* CPU threads per rank the context uses (num_threads, else OMP_NUM_THREADS,
 * else the node's cores divided by the ranks on the node) and the number of
 * ranks of the world that share this node. */
int32_t moert_ctx_num_threads(const moert_ctx *ctx);
int32_t moert_ctx_local_ranks(const moert_ctx *ctx);
/* Checks the syntax of a network emulation spec (moert_ctx_options.net);
 * on MOERT_ERR_INVALID moert_last_error() names the bad part. */
moert_status moert_net_check(const char *spec);

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
 * collective kind and mesh-axis set, calls, bytes sent to other ranks and
 * messages sent to peers (n - 1 a call of a group of n; 2(n - 1) for an
 * all-reduce). Returned as a JSON object owned by the context, valid until
 * the next call:
 *   {"rank": r, "device": "cpu", "phases": [{"name": "expert_ffn",
 *    "calls": n, "seconds": s}, ...], "collectives": [{"op": "all_to_all",
 *    "axis": "ep", "calls": n, "bytes_sent": b, "messages": m}, ...]}
 * Collectives run in the recompute phase (moert_stats_phase) are separate
 * records with "phase": "recompute".                                       */
const char *moert_ctx_stats_json(moert_ctx *ctx);
void moert_ctx_reset_stats(moert_ctx *ctx);
/* Expert load recording (off by default). While on, every moert_assign call
 * appends one record to the statistics, in call order: for this rank's
 * tokens, the assignments routed to each expert (the indices in [0, E),
 * before capacity) and those kept (the column sums of its counts):
 * "expert_load": [{"routed": [E counts], "kept": [E counts]}, ...] in
 * moert_ctx_stats_json. moert_ctx_reset_stats clears the records. */
void moert_ctx_record_expert_load(moert_ctx *ctx, int32_t on);
/* Chrome trace events of this rank (JSON array body, no brackets), or "". */
const char *moert_ctx_trace_json(moert_ctx *ctx);

/* World-level host helpers used by the driver (over the context's world
 * communicator; plain copies for a single rank). */
moert_status moert_world_init(int *argc, char ***argv, int32_t comm);
void moert_world_finalize(void);
/* 1 when the process was started by a launcher with more than 0 ranks. */
int32_t moert_world_launched(void);
/* Ranks of the job as the launcher's environment gives them (0: unknown or
 * not launched), readable before moert_world_init. */
int32_t moert_world_launcher_size(void);
/* This process's rank and the number of ranks of the world that
 * moert_world_init started (0 and 1 when it started none). */
int32_t moert_world_rank(void);
int32_t moert_world_size(void);
/* Ends every rank of the job with exit status `code`, for an error that only
 * this rank saw (the others would wait forever); without a started world it
 * ends this process. Never returns. */
void moert_world_abort(int32_t code);
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

/* One prototype per entry of moert_kernels.def, the single list of the
 * kernel functions (with their documentation): every kernel is
 *   RET NAME(moert_ctx *ctx, <the entry's parameters, in order>);
 * The compiler's lowering derives its calls from the same list. */
#define MOERT_KERNEL(ret, name) ret name(moert_ctx *ctx
#define MOERT_ARG(type, param) , type param
#define MOERT_END );
#include "moert_kernels.def"

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* MOERT_MOERT_H */
