//===- EntryGraph.cpp - How the entry points of a module fit together -----===//
//
// A module compiled with --train has, besides `forward`, the entries
// forward_train, backward and step_<optimizer>; tensors flow between them by
// name (docs/module-format.md, "Training entry points"). Everything here is
// read from disk, so every link is checked before the driver relies on it.
//
//===----------------------------------------------------------------------===//
#include "support/Format.h"
#include "support/Manifest.h"
#include "support/Safetensors.h"

#include <map>
#include <set>

namespace moert {

bool isArgumentRole(const std::string &role) {
  return role == "input" || role == "weight" || role == "saved" ||
         role == "grad" || role == "state" || role == "hparams";
}

int trainingStage(const std::string &entryName) {
  if (entryName == "forward_train")
    return 0;
  if (entryName == "backward")
    return 1;
  if (entryName == "step_adamw" || entryName == "step_sgd")
    return 2;
  return -1;
}

std::vector<std::string> stateSlots(const std::string &entryName) {
  if (entryName == "step_adamw")
    return {"exp_avg", "exp_avg_sq"};
  if (entryName == "step_sgd")
    return {"momentum_buffer"};
  return {};
}

namespace {

/// Same buffer layout and file mapping: dtype, shapes, shard spec, transpose.
bool sameLayout(const TensorSpec &a, const TensorSpec &b) {
  return a.dtype == b.dtype && a.shape == b.shape &&
         a.localShape == b.localShape && a.shard == b.shard &&
         a.transpose == b.transpose;
}

/// Same buffer layout, ignoring the transpose flag (saved activations and
/// gradients are never read from a file).
bool sameBuffer(const TensorSpec &a, const TensorSpec &b) {
  return a.dtype == b.dtype && a.shape == b.shape &&
         a.localShape == b.localShape && a.shard == b.shard;
}

std::string describe(const TensorSpec &t) {
  std::string shard;
  for (size_t d = 0; d < t.shard.size(); ++d) {
    shard += d ? ", [" : "[";
    for (size_t i = 0; i < t.shard[d].size(); ++i)
      shard += (i ? ", " : "") + t.shard[d][i];
    shard += "]";
  }
  return format("%s %s (local %s, shard [%s]%s)", safetensorsDtypeName(t.dtype),
                shapeString(t.shape).c_str(), shapeString(t.localShape).c_str(),
                shard.c_str(), t.transpose ? ", transposed" : "");
}

class GraphChecker {
public:
  GraphChecker(const Manifest &m, const std::string &source)
      : m_(m), source_(source) {}
  Status run();

private:
  __attribute__((format(printf, 3, 4))) Status
  fail(const std::string &path, const char *fmt, ...) const {
    va_list ap;
    va_start(ap, fmt);
    std::string msg = vformat(fmt, ap);
    va_end(ap);
    return supportError(MOERT_ERR_INVALID, "%s: %s: %s", source_.c_str(),
                        path.c_str(), msg.c_str());
  }
  Status checkNames(size_t ei);
  Status checkArg(size_t ei, const TensorSpec &a);
  Status checkProvided(size_t ei, const TensorSpec &a, int providerStage,
                       const std::string &path);
  Status checkState(size_t ei, const TensorSpec &a, const std::string &path);
  Status checkStepResults(size_t ei);
  Status checkEntries();

  const Manifest &m_;
  const std::string &source_;
  std::map<std::string, const TensorSpec *> weights_;
};

Status GraphChecker::checkNames(size_t ei) {
  const Entry &e = m_.entries[ei];
  for (const auto *list : {&e.args, &e.results}) {
    std::set<std::string> seen;
    for (const TensorSpec &t : *list)
      if (!seen.insert(t.name).second)
        return fail(format("entries[%zu] ('%s')", ei, e.name.c_str()),
                    "two %s are named '%s'",
                    list == &e.args ? "arguments" : "results", t.name.c_str());
  }
  return Status::ok();
}

Status GraphChecker::checkProvided(size_t ei, const TensorSpec &a,
                                   int providerStage, const std::string &path) {
  // The provider: a result of the same name of an entry of an earlier stage
  // (saved: forward_train, or backward for the step; grad: backward).
  int stage = trainingStage(m_.entries[ei].name);
  for (const Entry &p : m_.entries) {
    int ps = trainingStage(p.name);
    if (ps < 0 || ps >= stage || (providerStage >= 0 && ps != providerStage))
      continue;
    for (const TensorSpec &r : p.results) {
      if (r.name != a.name)
        continue;
      if (!sameBuffer(a, r))
        return fail(path, "argument '%s' is %s but entry '%s' returns it as %s",
                    a.name.c_str(), describe(a).c_str(), p.name.c_str(),
                    describe(r).c_str());
      return Status::ok();
    }
  }
  return fail(path,
              "argument '%s' (role %s) is not a result of any earlier "
              "entry (%s): nothing provides it",
              a.name.c_str(), a.role.c_str(),
              a.role == "grad" ? "backward" : "forward_train, backward");
}

Status GraphChecker::checkState(size_t ei, const TensorSpec &a,
                                const std::string &path) {
  const Entry &e = m_.entries[ei];
  for (const std::string &slot : stateSlots(e.name)) {
    std::string suffix = "." + slot;
    if (a.name.size() <= suffix.size() ||
        a.name.compare(a.name.size() - suffix.size(), suffix.size(), suffix))
      continue;
    std::string weight = a.name.substr(0, a.name.size() - suffix.size());
    for (const TensorSpec &w : e.args) {
      if (w.role != "weight" || w.name != weight)
        continue;
      // The transpose flag is the weight's: a state tensor is read and
      // written like its weight (the driver uses the weight's flag). Its
      // shard spec is its own (ZeRO-1 shards state over dp, not weights).
      if (a.dtype != w.dtype || a.shape != w.shape)
        return fail(path, "state '%s' is %s but its weight '%s' is %s",
                    a.name.c_str(), describe(a).c_str(), weight.c_str(),
                    describe(w).c_str());
      return Status::ok();
    }
    return fail(path,
                "state '%s' belongs to no weight argument '%s' of entry '%s'",
                a.name.c_str(), weight.c_str(), e.name.c_str());
  }
  std::string slots;
  for (const std::string &s : stateSlots(e.name))
    slots += (slots.empty() ? "NAME." : ", NAME.") + s;
  return fail(path, "state '%s' of entry '%s' is not named %s", a.name.c_str(),
              e.name.c_str(), slots.c_str());
}

Status GraphChecker::checkArg(size_t ei, const TensorSpec &a) {
  const Entry &e = m_.entries[ei];
  std::string path =
      format("entries[%zu].args[%lld] ('%s' of entry '%s')", ei,
             static_cast<long long>(a.index), a.name.c_str(), e.name.c_str());
  int stage = trainingStage(e.name);
  bool allowed = a.role == "input" || a.role == "weight" ||
                 (a.role == "saved" && stage >= 1) ||
                 (a.role == "grad" && stage == 2) ||
                 ((a.role == "state" || a.role == "hparams") && stage == 2);
  if (!allowed)
    return fail(path, "entry '%s' cannot take an argument of role '%s'",
                e.name.c_str(), a.role.c_str());
  if (a.role == "weight" && stage >= 0) { // one buffer serves every entry
    auto [it, isNew] = weights_.emplace(a.name, &a);
    if (!isNew && !sameLayout(a, *it->second))
      return fail(path, "weight '%s' is %s here but %s in another entry",
                  a.name.c_str(), describe(a).c_str(),
                  describe(*it->second).c_str());
  }
  if (a.role == "saved")
    return checkProvided(ei, a, -1, path);
  if (a.role == "grad")
    return checkProvided(ei, a, 1, path);
  if (a.role == "state")
    return checkState(ei, a, path);
  if (a.role == "hparams") {
    bool replicated = true;
    for (const auto &axes : a.shard)
      replicated = replicated && axes.empty();
    if (a.name != "optimizer.hparams" || a.dtype != MOERT_F32 ||
        a.shape != std::vector<int64_t>{8} || !replicated)
      return fail(path,
                  "the hyperparameters must be 'optimizer.hparams', F32 [8], "
                  "replicated (got '%s', %s)",
                  a.name.c_str(), describe(a).c_str());
  }
  return Status::ok();
}

Status GraphChecker::checkStepResults(size_t ei) {
  const Entry &e = m_.entries[ei];
  for (const TensorSpec &r : e.results) {
    std::string path =
        format("entries[%zu].results[%lld] ('%s' of entry '%s')", ei,
               static_cast<long long>(r.index), r.name.c_str(), e.name.c_str());
    const TensorSpec *arg = nullptr;
    for (const TensorSpec &a : e.args)
      if (a.name == r.name && (a.role == "weight" || a.role == "state"))
        arg = &a;
    if (!arg)
      return fail(path,
                  "a step returns only the weights and state it updates, "
                  "but '%s' is no weight or state argument of it",
                  r.name.c_str());
    if (!sameBuffer(*arg, r))
      return fail(path, "result '%s' is %s but the argument it replaces is %s",
                  r.name.c_str(), describe(r).c_str(), describe(*arg).c_str());
  }
  return Status::ok();
}

Status GraphChecker::checkEntries() {
  bool any = false;
  for (const Entry &e : m_.entries)
    any = any || trainingStage(e.name) >= 0;
  if (!any)
    return Status::ok();
  const Entry *ft = m_.findEntry("forward_train");
  const char *missing =
      !ft                         ? "forward_train"
      : !m_.findEntry("backward") ? "backward"
      : !m_.findEntry("step_adamw") && !m_.findEntry("step_sgd")
          ? "step_adamw or step_sgd"
          : nullptr;
  if (missing)
    return fail("entries",
                "the module has training entry points but no entry '%s' "
                "(a training module has forward_train, backward and "
                "step_adamw and/or step_sgd)",
                missing);
  bool hasLoss = false;
  for (const TensorSpec &r : ft->results)
    if (r.name == "loss" || r.name == "mse_loss" || r.name == "aux_loss" ||
        r.name == "z_loss") {
      hasLoss = hasLoss || r.name == "loss";
      if (r.dtype != MOERT_F32 || numElements(r.localShape) != 1)
        return fail("entry 'forward_train'",
                    "result '%s' must be F32 with one element, got %s",
                    r.name.c_str(), describe(r).c_str());
    }
  if (!hasLoss)
    return fail("entry 'forward_train'", "no result named 'loss'");
  for (const Entry &e : m_.entries) {
    int hparams = 0;
    for (const TensorSpec &a : e.args)
      hparams += a.role == "hparams";
    if (trainingStage(e.name) == 2 && hparams != 1)
      return fail("entry '" + e.name + "'",
                  "a step takes one argument 'optimizer.hparams' of role "
                  "hparams (it has %d)",
                  hparams);
  }
  return Status::ok();
}

Status GraphChecker::run() {
  MOERT_TRY(checkEntries());
  for (size_t ei = 0; ei < m_.entries.size(); ++ei) {
    MOERT_TRY(checkNames(ei));
    for (const TensorSpec &a : m_.entries[ei].args)
      MOERT_TRY(checkArg(ei, a));
    if (trainingStage(m_.entries[ei].name) == 2)
      MOERT_TRY(checkStepResults(ei));
  }
  return Status::ok();
}

} // namespace

Status checkEntryGraph(const Manifest &m, const std::string &source) {
  return GraphChecker(m, source).run();
}

} // namespace moert
