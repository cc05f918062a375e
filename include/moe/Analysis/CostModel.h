//===- CostModel.h - Time of collectives, GEMMs and ops on a cluster -*- C++
//-*-===//
//
// The one cost model of the compiler (docs/design.md, "The cost model"): a
// description of a cluster (nodes, devices per node, an alpha-beta link per
// link class and optionally per mesh axis, the device's GEMM and memory
// rates and memory size), read from a JSON cluster file (`moe-compile
// --cluster FILE.json`, written by `moe-run --calibrate`) or built in, and
// the queries the passes ask of it:
//
//   - the time of a collective of a kind on mesh axes for the bytes a rank
//     sends (alpha-beta; the bytes of CollectiveOpInterface when an op is
//     given), of a GEMM of given flops, of a copy of given bytes, of one op;
//   - the step time of a dispatch / expert / combine exchange pipelined at
//     degree d, and the best degree (moe-overlap's `degree=auto`);
//   - a two-resource list scheduler (compute, link) those predictions are
//     built on, for later simulations.
//
// Every time is a Cost: a part paid once per call (latencies) and a part
// proportional to the data (bytes / bandwidth, flops / rate), so that a
// caller can price the same work cut into d chunks (Cost::chunk).
//
//===----------------------------------------------------------------------===//
#ifndef MOE_ANALYSIS_COSTMODEL_H
#define MOE_ANALYSIS_COSTMODEL_H

#include "moe/Dialect/MoE/IR/Mesh.h"

#include "mlir/Support/LLVM.h"

#include "llvm/ADT/ArrayRef.h"
#include "llvm/ADT/SmallVector.h"
#include "llvm/ADT/StringRef.h"
#include "llvm/Support/Error.h"
#include "llvm/Support/JSON.h"

#include <cstdint>
#include <map>
#include <optional>
#include <string>

namespace mlir {
class Operation;

namespace moe {
class CollectiveOpInterface;

namespace cost {

//===----------------------------------------------------------------------===//
// The cluster
//===----------------------------------------------------------------------===//

/// One link class: a message of `b` bytes takes `alpha + b / bandwidth`.
struct LinkParams {
  /// Latency per message, seconds (>= 0).
  double alpha = 0;
  /// Bytes per second (> 0).
  double bandwidth = 1;

  bool operator==(const LinkParams &o) const {
    return alpha == o.alpha && bandwidth == o.bandwidth;
  }
};

/// One device (a GPU, or the share of a CPU node one rank gets).
struct DeviceParams {
  /// Sustained GEMM rate, flop/s (> 0).
  double gemmFlops = 1;
  /// Time of a GEMM call beyond its flops (launch, packing), seconds (>= 0).
  double gemmLatency = 0;
  /// Memory copy rate (bytes read + written count once: bytes copied), B/s.
  double copyBandwidth = 1;
  /// Memory of one device, bytes (> 0).
  double memoryBytes = 1;

  bool operator==(const DeviceParams &o) const {
    return gemmFlops == o.gemmFlops && gemmLatency == o.gemmLatency &&
           copyBandwidth == o.copyBandwidth && memoryBytes == o.memoryBytes;
  }
};

/// A cluster: `nodes` nodes of `devicesPerNode` devices. Ranks are placed on
/// nodes in order (rank r on node r / devicesPerNode), as mpirun places
/// them by default and as a mesh's row-major rank order assumes. A
/// collective over mesh axes listed in `axes` uses that link; otherwise each
/// message uses `intraNode` between ranks on one node and `interNode`
/// between nodes.
struct ClusterSpec {
  std::string name;
  int64_t nodes = 1;
  int64_t devicesPerNode = 1;
  DeviceParams device;
  LinkParams intraNode;
  /// Absent in a one-node file (calibrated here): then intraNode is used.
  std::optional<LinkParams> interNode;
  /// Per mesh axis (by name): the link a collective over that axis uses.
  std::map<std::string, LinkParams> axes;

  /// The built-in cluster: one node of this machine's class (a few CPU
  /// cores, ranks as MPI processes sharing memory), used without --cluster.
  static ClusterSpec getDefault();

  /// The link between nodes (intraNode in a one-node description).
  const LinkParams &getInterNode() const {
    return interNode ? *interNode : intraNode;
  }

  /// The JSON cluster file of this cluster (docs/user-guide.md, "Cluster
  /// files"); parseClusterSpec reads it back to an equal spec.
  llvm::json::Value toJSON() const;

  bool operator==(const ClusterSpec &o) const {
    return name == o.name && nodes == o.nodes &&
           devicesPerNode == o.devicesPerNode && device == o.device &&
           intraNode == o.intraNode && interNode == o.interNode &&
           axes == o.axes;
  }
};

/// Parses a cluster file's text. Every field is checked; an error names the
/// field by its path (`links.inter_node.bandwidth_bytes_per_s: must be a
/// number > 0 (got -1)`), including unknown fields.
llvm::Expected<ClusterSpec> parseClusterSpec(llvm::StringRef text);

/// Reads and parses a cluster file; errors start with the path. An empty
/// path gives ClusterSpec::getDefault().
llvm::Expected<ClusterSpec> loadClusterFile(llvm::StringRef path);

//===----------------------------------------------------------------------===//
// Costs
//===----------------------------------------------------------------------===//

/// A time in seconds, split into what a call pays once (`fixed`: message
/// latencies, GEMM call overhead) and what scales with its data
/// (`proportional`: bytes over a bandwidth, flops over a rate).
struct Cost {
  double fixed = 0;
  double proportional = 0;

  double seconds() const { return fixed + proportional; }
  /// The cost of one of `d` equal chunks of this work: each chunk pays the
  /// fixed part again and 1/d of the proportional part.
  Cost chunk(int64_t d) const {
    return {fixed, proportional / static_cast<double>(d)};
  }
  Cost operator+(const Cost &o) const {
    return {fixed + o.fixed, proportional + o.proportional};
  }
  Cost &operator+=(const Cost &o) { return *this = *this + o; }
};

/// The collective algorithms the runtime runs (and their cost formulas).
enum class CollectiveKind {
  AllToAll,
  AllGather,
  ReduceScatter,
  AllReduce,
  Slice
};

/// "all_to_all", ... (the op names without `moe.`; `_v` and `_start` forms
/// map to the same kind).
llvm::StringRef stringifyCollectiveKind(CollectiveKind kind);
std::optional<CollectiveKind> symbolizeCollectiveKind(llvm::StringRef name);

/// How the ranks of a group over some mesh axes reach each other: each rank
/// has `sameNodePeers` peers over `near` and `otherNodePeers` over `far`
/// (the worst group of the mesh: the fewest peers on its own node).
struct GroupLinks {
  int64_t groupSize = 1;
  int64_t sameNodePeers = 0;
  int64_t otherNodePeers = 0;
  LinkParams near, far;
};

/// The exchange around an expert FFN at degree 1: the dispatch collectives
/// (all-to-all, and under DTD the slice before it), the local work between
/// (the expert FFN, DTD's all-gathers over tp) and the combine collectives.
/// At degree d each of the three is cut into d chunks (Cost::chunk).
struct ExchangeStage {
  Cost dispatch, compute, combine;
  /// The least time of one chunk's compute, whatever its rows: the expert
  /// FFN reads all its weights on every call (their bytes at the copy
  /// rate), so small chunks become memory-bound.
  double computeFloor = 0;
};

/// The cost model: a cluster and the queries of the passes.
class CostModel {
public:
  explicit CostModel(ClusterSpec cluster) : cluster_(std::move(cluster)) {}

  const ClusterSpec &getCluster() const { return cluster_; }

  /// The links of the group of a collective over `axes` of `mesh`. Axes the
  /// mesh does not have count as size 1.
  GroupLinks getGroupLinks(const MeshSpec &mesh,
                           llvm::ArrayRef<std::string> axes) const;

  /// Time of a collective over `axes` of `mesh` in which each rank sends
  /// `bytesSent` bytes to the others (counted as CollectiveOpInterface and
  /// the runtime statistics count them), p ranks in the group:
  ///  - all_to_all (pairwise exchange): each of the p-1 peers costs one
  ///    message latency and its share bytesSent/(p-1) over its link;
  ///  - all_gather, reduce_scatter (ring): p-1 steps, all_reduce 2(p-1),
  ///    each step at the slowest link of the ring; bytes over that link;
  ///  - slice: a local copy of `bytesSent` bytes (pass the slice's size).
  /// A group of one rank costs nothing. Link time only: the arithmetic of
  /// the reductions is not counted.
  Cost collective(CollectiveKind kind, const MeshSpec &mesh,
                  llvm::ArrayRef<std::string> axes, double bytesSent) const;

  /// The same for an op: its kind, its mesh's spec, its axes and
  /// getBytesSentPerRank (the upper bound for all_to_all_v; a slice's output
  /// bytes). Fails when the mesh does not resolve or a shape is dynamic.
  FailureOr<Cost> collective(CollectiveOpInterface op) const;

  /// A GEMM (or a group of GEMMs issued as one call) of `flops`.
  Cost gemm(double flops) const;
  /// A copy (or any memory-bound kernel) moving `bytes`.
  Cost copy(double bytes) const;

  /// One op of the moe dialect: the expert FFN and the dense FFN by their
  /// flops (all rows of the buffer: the capacity layout computes padding
  /// slots, and a dropless buffer's rows are its upper bound), their
  /// gradients (recompute, dgrad, wgrad), the router's GEMM, collectives
  /// as above, `moe.wait` nothing, every other op as memory-bound (the bytes
  /// of its operands and results). Fails for a dynamically shaped tensor or
  /// an op of another dialect.
  FailureOr<Cost> op(Operation *op) const;

  /// The sum of op() over `ops`; fails when one op fails.
  FailureOr<Cost> ops(llvm::ArrayRef<Operation *> ops) const;

  /// The exchange around an expert FFN from its ops at degree 1: the
  /// dispatch collectives (the all-to-all; DTD's slice), the local work
  /// between (the expert FFN; DTD's all-gathers), the combine collectives.
  /// For moe-overlap's `degree=auto`: pass the result to
  /// chooseExchangeDegree.
  FailureOr<ExchangeStage>
  exchangeStage(llvm::ArrayRef<Operation *> dispatch,
                llvm::ArrayRef<Operation *> compute,
                llvm::ArrayRef<Operation *> combine) const;

private:
  ClusterSpec cluster_;
};

/// Flops of `moe.expert_ffn` over all rows of its buffer:
/// 2 * rows * D * F * (number of weight matrices: 2, or 3 when gated).
/// -1 when a shape is dynamic.
int64_t getExpertFFNFlops(Operation *expertFFN);

//===----------------------------------------------------------------------===//
// Pipelined exchanges (moe-overlap's degree)
//===----------------------------------------------------------------------===//

/// The predicted time line of one exchange at one degree.
struct PipelinePrediction {
  int64_t degree = 1;
  /// End of the last chunk's combine.
  double seconds = 0;
  /// Busy time of the compute resource and of the link.
  double computeSeconds = 0;
  double commSeconds = 0;
  /// seconds - computeSeconds: the communication not hidden.
  double exposedCommSeconds = 0;
};

/// The schedule moe-overlap emits at degree d, on two resources that run at
/// once (compute; one link on which collectives run in the order they are
/// started): dispatch chunk 0 and 1 start first; the expert FFN of chunk i
/// (no faster than stage.computeFloor) waits for its dispatch; after it the
/// combine of chunk i and the dispatch of chunk i+2 are started, so that the
/// link carries D0 D1 C0 D2 C1 ... while the FFN computes. Each chunk pays its
/// collectives' latency again, so the exposed communication first falls with d
/// and then grows.
PipelinePrediction predictPipelinedExchange(const ExchangeStage &stage,
                                            int64_t degree);

/// The degree among `candidates` (positive, at least one; a pass leaves out
/// the degrees its layout cannot split into) with the least predicted time;
/// a tie goes to the smaller degree. All predictions are returned in
/// `all` (in the order of `candidates`) when it is given.
PipelinePrediction
chooseExchangeDegree(const ExchangeStage &stage,
                     llvm::ArrayRef<int64_t> candidates,
                     llvm::SmallVectorImpl<PipelinePrediction> *all = nullptr);

/// The degrees moe-overlap tries for `auto`, as Tutel searches them.
inline constexpr int64_t kDefaultDegreeCandidates[] = {1, 2, 4, 8};

//===----------------------------------------------------------------------===//
// A list scheduler on two resources
//===----------------------------------------------------------------------===//

enum class Resource { Compute = 0, Link = 1 };

/// One unit of work on a resource, after the tasks `deps` (indices of
/// earlier tasks in the list).
struct Task {
  Resource resource = Resource::Compute;
  double seconds = 0;
  llvm::SmallVector<int64_t, 2> deps;
};

/// Start and end of every task when each resource runs its tasks in list
/// order, each as soon as its resource is free and its dependencies ended.
struct Schedule {
  llvm::SmallVector<double> start, end;
  double makespan = 0;
};
Schedule scheduleTasks(llvm::ArrayRef<Task> tasks);

} // namespace cost
} // namespace moe
} // namespace mlir

#endif // MOE_ANALYSIS_COSTMODEL_H
