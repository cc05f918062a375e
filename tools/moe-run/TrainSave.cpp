//===- TrainSave.cpp - What moe-run --train writes at the end -------------===//
//
// The first step's gradients (--grads), the weights (--save-weights) and the
// optimizer state (--save-optimizer-state), gathered to rank 0 and written
// only after every step succeeded; the statistics per entry point.
//
//===----------------------------------------------------------------------===//
#include "Routing.h"
#include "Trainer.h"
#include "World.h"

#include "support/Format.h"
#include "support/Json.h"

#include <cstring>

using namespace moert;

namespace moe_run {

/// The first step's gradients, under the names train-reference --grads
/// writes: 'hidden_states' (dX) and every weight's file name(s). Every rank
/// gathers; rank 0 keeps the tensors and its first error.
Status Trainer::gatherGrads() {
  std::map<std::string, const TensorSpec *> weights;
  for (const TensorSpec *w : weights_)
    weights[w->name] = w;
  for (const TensorSpec &r : bw_.entry->results) {
    if (r.name.rfind("grad.", 0) != 0)
      continue;
    std::vector<char> global;
    MOERT_TRY(s_.gatherTensor(r, bw_.results[r.index], global));
    if (world().rank != 0 || !gradsStatus_.isOk())
      continue;
    TensorSpec named = r;
    named.name = r.name.substr(5);
    auto w = weights.find(named.name);
    if (w != weights.end())
      named.transpose = w->second->transpose;
    gradsStatus_ =
        toFileTensors(named, global, fileShapes_[named.name], grads_);
  }
  return Status::ok();
}

Status Trainer::gatherRouting() {
  routing_.assign(ft_.entry->results.size(), {});
  for (const TensorSpec &r : ft_.entry->results)
    if (isRoutingTensor(r))
      MOERT_TRY(s_.gatherTensor(r, ft_.results[r.index], routing_[r.index]));
  return Status::ok();
}

/// Gathers the weights and the state to rank 0 and writes the files asked
/// for. Every rank takes part in every gather; rank 0 alone converts and
/// writes, and keeps its first error until all gathers are done.
Status Trainer::save() {
  Status first = Status::ok();
  auto collect = [&](const std::vector<const TensorSpec *> &specs,
                     std::vector<FileTensor> &out) {
    for (const TensorSpec *spec : specs) {
      std::vector<char> global;
      MOERT_TRY(s_.gatherTensor(*spec, args_.at(spec->name), global));
      if (world().rank != 0 || !first.isOk())
        continue;
      std::string weight = spec->role == "state"
                               ? spec->name.substr(0, spec->name.rfind('.'))
                               : spec->name;
      first = toFileTensors(*spec, global, fileShapes_[weight], out);
    }
    return Status::ok();
  };
  std::vector<FileTensor> weights, state;
  if (!t_.saveWeights.empty())
    MOERT_TRY(collect(weights_, weights));
  if (!t_.saveOptimizerState.empty())
    MOERT_TRY(collect(states_, state));
  if (world().rank != 0 || !first.isOk())
    return first;
  MOERT_TRY(gradsStatus_);
  int64_t steps = step0_ + t_.steps;
  std::map<std::string, std::string> meta = {{"generator", "moe-run --train"}};
  if (!s_.opt.dumpRouting.empty())
    MOERT_TRY(writeRouting(s_.opt.dumpRouting, *ft_.entry, routing_));
  if (!t_.grads.empty()) {
    meta["content"] = "gradients of the first step, written as f32";
    MOERT_TRY(writeFileTensors(t_.grads, grads_, meta));
    meta.erase("content");
  }
  meta["step"] = std::to_string(steps);
  if (!t_.saveWeights.empty())
    MOERT_TRY(writeFileTensors(t_.saveWeights, weights, meta));
  if (t_.saveOptimizerState.empty())
    return Status::ok();
  FileTensor count;
  count.name = "optimizer.step";
  count.dtype = MOERT_I64;
  count.shape = {1};
  count.data.resize(sizeof steps);
  std::memcpy(count.data.data(), &steps, sizeof steps);
  state.push_back(std::move(count));
  auto real = [](float v) { return format("%.17g", static_cast<double>(v)); };
  meta["optimizer"] = t_.optimizer;
  meta["lr"] = real(t_.lr);
  meta["weight_decay"] = real(t_.weightDecay);
  if (t_.optimizer == "adamw") {
    meta["betas"] = real(t_.beta1) + "," + real(t_.beta2);
    meta["eps"] = real(t_.eps);
  } else {
    meta["momentum"] = real(t_.momentum);
  }
  return writeFileTensors(t_.saveOptimizerState, state, meta);
}

/// Writes the files, the statistics and the trace, prints the tables.
int Trainer::finish() {
  Status s = save();
  std::vector<std::string> stats, traces;
  if (s.isOk())
    s = s_.gatherStrings(rankStats(), stats);
  if (s.isOk() && !s_.opt.trace.empty())
    s = s_.gatherStrings(trace_, traces);
  if (s.isOk() && world().rank == 0 && !s_.opt.stats.empty())
    s = writeStats(s_.opt.stats, stats);
  if (s.isOk() && world().rank == 0 && !s_.opt.trace.empty())
    s = writeTrace(s_.opt.trace, traces);
  if (!s.isOk()) {
    report("error: %s", s.message().c_str());
    return 1;
  }
  if (world().rank == 0 && t_.json) {
    json::Value out = json::Value::object();
    out.set("optimizer", t_.optimizer);
    out.set("steps", rows_);
    std::printf("%s\n", json::write(out, 2).c_str());
    std::fflush(stdout);
    return 0;
  }
  if (world().rank != 0 || s_.opt.quiet)
    return 0;
  printTrainingTables(stats, loadSeconds_, h2dSeconds_);
  int64_t ep = epSize(s_.manifest.mesh);
  printExpertLoad(firstLoad_, ", forward_train of step 1", ep);
  if (t_.steps > 1)
    printExpertLoad(load_,
                    format(", forward_train of step %lld",
                           static_cast<long long>(t_.steps)),
                    ep);
  return 0;
}

std::string Trainer::rankStats() const {
  json::Value v = json::Value::object();
  v.set("rank", static_cast<int64_t>(world().rank));
  json::Value runtime;
  if (json::parse(moert_ctx_stats_json(ctx_), "statistics", runtime).isOk() &&
      runtime.get("device"))
    v.set("device", *runtime.get("device"));
  v.set("load_seconds", loadSeconds_);
  v.set("h2d_seconds", h2dSeconds_);
  v.set("run_seconds", runSeconds_);
  v.set("steps", t_.steps);
  json::Value entries = json::Value::array();
  for (const EntryRun *e : {&ft_, &bw_, &step_})
    entries.push(e->stats.toJson());
  v.set("entries", std::move(entries));
  if (world().rank == 0)
    v.set("step_stats", stepStats_);
  return json::write(v);
}

} // namespace moe_run
