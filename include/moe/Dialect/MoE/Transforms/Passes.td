//===- Passes.td - Transformations of the moe dialect ------*- tablegen -*-===//
#ifndef MOE_DIALECT_MOE_TRANSFORMS_PASSES_TD
#define MOE_DIALECT_MOE_TRANSFORMS_PASSES_TD

include "mlir/Pass/PassBase.td"

def MoEDecompose : Pass<"moe-decompose"> {
  let summary = "Expand moe.layer into routing, dispatch, expert and combine primitives";
  let description = [{
    Rewrites every `moe.layer` into the primitive ops that docs/spec.md
    section 3 specifies, in order: `moe.router`, `moe.topk`, `moe.assign`,
    `moe.dispatch`, `moe.expert_ffn`, `moe.combine`, the shared-expert
    `moe.mlp` and its `moe.add`, and the loss ops (`moe.expert_load` +
    `moe.load_balance_loss`, `moe.z_loss`). The capacity of capacity-bounded
    layers is resolved here (`C = max(min_capacity, ceil(cf * T/G * k / E))`).
  }];
  let dependentDialects = ["::mlir::moe::MoEDialect"];
}

def MoEShard : Pass<"moe-shard", "::mlir::ModuleOp"> {
  let summary = "Rewrite the decomposed graph into the per-rank program of a dp x ep x tp mesh";
  let description = [{
    Tokens are split over `dp x ep` and replicated over `tp`; experts are
    split over `ep` and replicated over `dp` (and, with `expert-tp`, each
    expert's FFN is split over `tp`: column-parallel gate/up, row-parallel
    down, then an all-reduce over `tp`). With `tp > 1` every `moe.mlp` (dense
    layers, shared experts) is split over `tp` the same way; a sigmoid gate
    stays replicated (it scales the partial sums, which commutes with their
    sum). Every grouped expert FFN gets the expert-parallel exchange around
    it:

    - capacity layout: `all_to_all` over `ep` (split experts, concatenate
      slots) before, and its inverse after;
    - dropless layout: an `all_to_all` of the per-expert counts, then an
      uneven `all_to_all_v` of the rows, and its inverse after.

    Load-balance statistics and the z-loss are summed over `dp x ep`.
    Function arguments and results get their per-rank shapes plus
    `moe.shard` / `moe.global_shape`, which moe-compile writes to the
    manifest. The mesh is `moe.mesh @mesh axes = ["dp", "ep", "tp"]`.
    Run on decomposed graphs (after moe-decompose).

    The pass is one walk per function; what each op becomes is the op's
    `ShardingRuleOpInterface` (`shardWeights`, then `shardToRank`), so every
    op of a decomposed graph carries its own rules.
  }];
  let options = [
    Option<"mesh", "mesh", "std::string", /*default=*/"\"\"",
           "mesh as axis=size pairs, e.g. dp=1,ep=2,tp=2 (axes left out are 1); without it, the module's moe.mesh">,
    Option<"expertTp", "expert-tp", "bool", /*default=*/"false",
           "split each expert's FFN over tp">,
    Option<"maxRecvTokens", "max-recv-tokens", "int64_t", /*default=*/"0",
           "rows a rank's dropless receive buffer holds (0: the provable "
           "worst case); a run that would receive more stops on every rank">
  ];
  let dependentDialects = ["::mlir::moe::MoEDialect"];
}

def MoEDropDuplicateTokens : Pass<"moe-drop-duplicate-tokens", "::mlir::ModuleOp"> {
  let summary = "DeepSpeed-TED duplicate token dropping over the tp axis";
  let description = [{
    With `tp > 1` every tensor-parallel rank holds the same tokens, so the
    expert-parallel all-to-alls send each token `tp` times. This pass makes
    each tp rank send only its `1/tp` share of every dispatched row (a
    `moe.slice` of the hidden dimension), all-gathers the shares over `tp`
    after the all-to-all, and does the mirror image on the way back (with
    expert tensor parallelism the all-reduce of the partial expert outputs
    becomes a reduce-scatter). Per-rank all-to-all bytes drop by exactly
    `tp`; the result is unchanged. Run after moe-shard.
  }];
  let dependentDialects = ["::mlir::moe::MoEDialect"];
}

def MoEDifferentiate : Pass<"moe-differentiate", "::mlir::ModuleOp"> {
  let summary = "Build the training entries: forward_train, backward, step_adamw, step_sgd";
  let description = [{
    From the public function `@forward` (decomposed: primitives only) builds

    - `@forward_train(hidden_states, targets, weights...) -> (loss,
      mse_loss, [aux_loss], [z_loss], saved.0, ..., load.<bias>...)`: the
      forward, `moe.mse_loss` against the targets (which also computes the
      seed `dy`), the total `loss = mse + aux + z` (each `tensor<1xf32>`),
      then every value the backward needs (`saved.N`), and, for every
      layer with a selection bias, the expert counts `load.<bias name>`;
    - `@backward(saved..., weights...) -> (grad.hidden_states,
      grad.<weight>...)`: the adjoint of every forward op in reverse order
      (docs/spec.md 7.2), one gradient op each (`moe.rmsnorm_grad`, ...);
      gradients reaching a value along several paths are summed with
      `moe.add`. The selection (indices, bias, group mask, capacity) carries
      no gradient: the selection bias has no `grad.` result;
    - `@step_adamw` and `@step_sgd`: one `moe.adamw` / `moe.sgd` per weight
      with a gradient, then one `moe.bias_update` per selection bias.

    Arguments and results carry their `moe.*` names and roles
    (docs/module-format.md), so the driver passes tensors between entries by
    name. The loss gradient of the aux losses is 1: the pass computes an
    exact 1.0 in forward_train as the gate weight of a top-1 softmax over a
    single logit (the loss itself) and saves it.

    Where it runs: after `moe-shard` (and DTD), on the per-rank program. The
    backward's collectives are the adjoints of the forward's (with gradients
    of replicated values held whole on every rank: all_reduce -> identity,
    all_gather -> slice, slice -> all_gather, reduce_scatter -> all_gather,
    all-to-alls -> their inverse), the tp partial sums of tp-split ops are
    summed over tp, and every weight gradient is summed over the axes of
    docs/spec.md 7.1 by bucketed all-reduces (`moe.pack`, one
    `moe.all_reduce` per bucket, `moe.unpack`). docs/design.md, "Training".

    With `zero1` (ZeRO-1), the optimizer state of every weight replicated
    over dp (whose dimension 0 divides by dp) is split over dp: the backward
    reduce-scatters its gradient over dp (dimension 0) instead of summing it,
    and the steps update this rank's chunk of the weight and all-gather it.
  }];
  let options = [
    Option<"zero1", "zero1", "bool", /*default=*/"false",
           "shard the optimizer state over dp (ZeRO-1)">
  ];
  let dependentDialects = ["::mlir::moe::MoEDialect", "::mlir::func::FuncDialect"];
}

def MoECheckpoint : Pass<"moe-checkpoint", "::mlir::ModuleOp"> {
  let summary = "Activation checkpointing of the training entries: keep or recompute each saved value";
  let description = [{
    Runs after `moe-differentiate` on `@forward_train` / `@backward` and
    decides, per value the backward reads, whether forward_train keeps it
    (a `saved.N` result) or the backward recomputes it from kept values and
    weights (clones of the forward ops, marked `moe.recompute`, placed before
    the value's first use). `policy`:

    - `none`: keep every value the backward reads, and the expert FFNs'
      hidden activations (`moe.expert_ffn_train`, read by
      `moe.expert_ffn_grad` through `saved_u` / `saved_a`);
    - `full`: keep only each layer's input (the residual stream); the
      backward replays the whole layer forward, collectives included;
    - `cac` (communication-aware): also keep the result of every collective
      (the all-to-alls, DTD's all-gathers), so the recomputation is local;
    - `auto`: fit the saved bytes into `budget` at the least recompute cost
      (moe/Analysis/CostModel.h, `cluster`): starting from `none`, drop the
      value with the most bytes per second of recompute, first among those
      whose recompute needs no collective, then among all. A budget below
      the `full` plan's bytes is an error that names that minimum.

    Always kept, whatever the policy: the routing (the top-k indices and
    gate weights of every `moe.topk`: never re-derived in the backward), the
    loss seeds, the layer inputs. Recomputation runs the same kernels on the
    same operands, so every policy gives bitwise the same gradients. The
    plan is recorded in the module attribute `moe.checkpoint` (policy,
    budget, saved bytes, recompute cost), which the manifest reports.
  }];
  let options = [
    Option<"policy", "policy", "std::string", /*default=*/"\"none\"",
           "none, full, cac or auto">,
    Option<"budget", "budget", "std::string", /*default=*/"\"\"",
           "with auto: saved bytes per rank at most (a non-negative integer)">,
    Option<"cluster", "cluster", "std::string", /*default=*/"\"\"",
           "cluster file of the cost model for auto (empty: built-in)">,
    Option<"ffnActivations", "ffn-activations", "bool", /*default=*/"true",
           "with none and auto: keep the expert FFNs' hidden activations "
           "(moe.expert_ffn_train); false leaves their recomputation in "
           "moe.expert_ffn_grad (moe-overlap pipelines only moe.expert_ffn)">
  ];
  let dependentDialects = ["::mlir::moe::MoEDialect", "::mlir::func::FuncDialect"];
}

def MoEOverlap : Pass<"moe-overlap", "::mlir::ModuleOp"> {
  let summary = "Pipeline the expert-parallel exchange with the expert FFN (Tutel-style overlap)";
  let description = [{
    Splits the exchange around every expert FFN of a sharded program (the
    all-to-all over ep and back, with DTD's slices and all-gathers over tp)
    into `degree` cyclic chunks of the capacity slots (`moe.chunk`) and
    pipelines them with started all-to-alls (`moe.all_to_all_start` /
    `moe.wait`): the all-to-all of chunk i+1 and the return of chunk i-1
    are in flight while the experts compute chunk i; `moe.interleave`
    joins the chunks. The result is bit for bit the one of degree 1 (no sum
    is split). The degree must divide each expert's slots on a rank.

    Where it runs: after moe-differentiate, on @forward and @forward_train
    (whose saved FFN input and output are rebuilt by `moe.interleave`), and
    on the backward's exchange around `moe.expert_ffn_grad`, chunks in
    reverse order: each chunk runs `moe.expert_ffn_grad_data` (dx and the
    rows' h, du, da) and one `moe.expert_ffn_grad_weight` over the joined
    rows computes the weight gradients (a sum over the rows that chunking
    would reorder) with the bits of expert_ffn_grad; a backward exchange
    that cannot be chunked (a weight gradient or a value of the exchange
    read before it ends, another chain, a capacity buffer with counts)
    stays at degree 1 (a remark says why). Dropless exchanges
    (`all_to_all_v`) are chunked by rows (`moe.chunk_rows`, counts per chunk
    from `moe.chunk_counts`, `moe.join_rows` back).
    With `degree=auto` each exchange gets the degree among 1, 2, 4, 8
    (dividing its slots) with the least time the cost model predicts for
    this schedule (`cluster`: its cluster file; empty: the built-in one).
  }];
  let options = [
    Option<"degree", "degree", "std::string", /*default=*/"\"1\"",
           "number of chunks (1: unchanged), or auto">,
    Option<"cluster", "cluster", "std::string", /*default=*/"\"\"",
           "cluster file of the cost model for degree=auto (empty: built-in)">
  ];
  let dependentDialects = ["::mlir::moe::MoEDialect"];
}

def MoEHierarchicalA2A : Pass<"moe-hierarchical-a2a", "::mlir::ModuleOp"> {
  let summary = "Split ep into node x local axes and exchange in two phases (2D hierarchical all-to-all)";
  let description = [{
    With `ranks-per-node=R` (tp ranks per tp group, `L = R / tp` expert
    ranks per node, `N = ep / L` nodes), replaces the mesh's `ep` axis by
    `ep_node` (size N) and `ep_local` (size L; `ep = node * L + local`, so
    rank order and every group are unchanged) in the mesh, every collective
    and every `moe.shard` annotation, and rewrites each all-to-all over the
    whole of `ep` (even and uneven, synchronous or started) into an
    exchange over `ep_local` followed by one over `ep_node` between the
    ranks of the same local index: each rank sends N - 1 messages between
    nodes instead of ep - L, with the same bytes. The result is bit for bit
    the flat exchange's.

    Even (`moe.all_to_all`): the split dimension is viewed as `[N, L*S/n]`
    (`moe.reshape`); the local phase splits the second, the node phase the
    first, both concatenate along the flat exchange's concat dimension,
    which gives the flat result's order (the re-layouts are the strided
    packing of the all-to-alls). Uneven (`moe.all_to_all_v`): the rows are
    regrouped by (local, node) destination (`moe.regroup`), exchanged over
    `ep_local` with counts from a small even exchange of the counts,
    regrouped by (node, local source), and exchanged over `ep_node` with
    the flat exchange's receive counts.

    `mode=auto` rewrites only the exchanges for which the cost model
    (`cluster`) predicts the two phases faster than the flat exchange; with
    `ranks-per-node=0`, `auto` takes R from the cluster's devices per node.
    Runs last among the rewrites of the per-rank program (after
    moe-differentiate and moe-overlap), so the backward's exchanges and the
    pipelined chunks are rewritten too.
  }];
  let options = [
    Option<"ranksPerNode", "ranks-per-node", "int64_t", /*default=*/"0",
           "ranks on one node (must divide the ranks and be a multiple of tp)">,
    Option<"mode", "mode", "std::string", /*default=*/"\"on\"",
           "on: every ep exchange; auto: where the cost model says it pays; "
           "mesh: split the axis only (flat exchanges over both parts, a "
           "baseline)">,
    Option<"cluster", "cluster", "std::string", /*default=*/"\"\"",
           "cluster file of the cost model for mode=auto (empty: built-in)">
  ];
  let dependentDialects = ["::mlir::moe::MoEDialect"];
}

def MoERoutingIO : Pass<"moe-routing-io", "::mlir::ModuleOp"> {
  let summary = "Routing you can see and replay: routing outputs and replay entries";
  let description = [{
    For every `moe.topk` of `@forward` whose logits come from a `moe.router`
    (one per MoE layer), in program order, with layer key `L`:

    - `@forward` also returns `routing.L.experts` (i32 `[T, k]`, the chosen
      experts, best first) and `routing.L.weights` (f32 `[T, k]`, the gate
      weights), after its other results;
    - `@forward_replay` is `@forward` whose `moe.topk` ops are
      `moe.topk_forced` ops: it takes, after its other arguments, the input
      `routing.L.experts` of every layer and returns what `@forward` returns
      (the given experts and their recomputed gate weights);
    - with training entries, `@forward_train` returns the same routing
      results (after its others), and `@forward_train_replay` is
      `@forward_train` with the same replacement and arguments (same
      results: `backward` takes its `saved.N`).

    `L` is the first all-digit component of the router weight's `moe.weight`
    name (`model.layers.3.mlp.gate.weight`: `3`); when a router has none, or
    two layers get the same one, every layer is keyed by its position among
    the function's layers (0, 1, ...). In a sharded program the routing
    tensors are token rows: `moe.shard` and `moe.global_shape` follow
    `hidden_states`' dimension 0. Run last before moe-attach-manifest.
  }];
  let dependentDialects = ["::mlir::moe::MoEDialect"];
}

def MoECheckKeptRouting : Pass<"moe-check-kept-routing", "::mlir::ModuleOp"> {
  let summary = "Refuse a training module whose backward selects experts again";
  let description = [{
    The backward of a training module must read the top-k indices its
    forward entry kept (`saved.N`), whatever is recomputed there: a
    `moe.topk` or `moe.topk_forced` in any function other than a forward
    entry (`forward`, `forward_replay`, `forward_train`,
    `forward_train_replay`) is an error naming the op and the function
    (docs/spec.md 7.2, 3.10). moe-compile runs it on every `--train` module,
    after every pass that writes the backward.
  }];
}

#endif // MOE_DIALECT_MOE_TRANSFORMS_PASSES_TD
