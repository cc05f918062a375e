//===- Train.cpp - moe-run --train: the training loop ---------------------===//
#include "Train.h"
#include "Trainer.h"

#include "Checkpoint.h"
#include "Report.h"
#include "Routing.h"
#include "ShardedLoader.h"
#include "World.h"

#include "base/Dtype.h"
#include "support/Format.h"
#include "support/Json.h"
#include "support/Safetensors.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <tuple>

using namespace moert;

namespace moe_run {

/// forward_train, or with --replay-routing the same entry with the experts
/// given (moe-compile --routing).
static std::string forwardTrainEntry(const Options &o) {
  return o.replayRouting.empty() ? "forward_train" : "forward_train_replay";
}

std::vector<std::string> trainingEntries(const Options &o) {
  return {forwardTrainEntry(o), "backward", "step_" + o.t.optimizer};
}

Status Trainer::check() {
  bool targets = false;
  for (const TensorSpec &a : ft_.entry->args)
    targets = targets || (a.role == "input" && a.name == "targets");
  if (!targets)
    return supportError(MOERT_ERR_INVALID,
                        "entry 'forward_train' takes no input 'targets': the "
                        "module cannot compute the training loss");
  if (t_.biasRateGiven && !hasBias_)
    return supportError(MOERT_ERR_INVALID,
                        "--bias-update-rate: the module has no selection bias "
                        "(entry '%s' takes no load.* argument)",
                        step_.entry->name.c_str());
  MOERT_TRY(checkRoutingEntry(*ft_.entry, !s_.opt.dumpRouting.empty(),
                              !s_.opt.replayRouting.empty()));
  const std::string *outs[] = {&t_.grads, &t_.saveWeights,
                               &t_.saveOptimizerState, &s_.opt.dumpRouting};
  for (int a = 0; a < 4; ++a)
    for (int b = a + 1; b < 4; ++b)
      if (!outs[a]->empty() &&
          (*outs[a] == *outs[b] || sameFile(*outs[a], *outs[b])))
        return supportError(MOERT_ERR_INVALID,
                            "--grads, --save-weights, --save-optimizer-state "
                            "and --dump-routing must be different files");
  if (world().rank == 0)
    for (const std::string *p : outs)
      if (!p->empty())
        MOERT_TRY(probeWritable(*p));
  return Status::ok();
}

Status Trainer::allocate(const TensorSpec &spec, bool poison, void *&p) {
  int64_t bytes = std::max<int64_t>(spec.localBytes(), 1);
  MOERT_TRY(deviceBuffer(ctx_, spec, p));
  owned_.push_back(p);
  if (!poison)
    return Status::ok();
  // NaN bytes: a result the module fails to write fails the finite checks.
  std::vector<unsigned char> nan(static_cast<size_t>(bytes), 0xFF);
  if (moert_copy_to_device(ctx_, p, nan.data(), bytes) != MOERT_OK)
    return ctxError(ctx_, "poisoning the result buffers");
  return Status::ok();
}

/// The state argument `a` of `entry` as it is read and written: like its
/// weight (the weight's transpose flag; checkEntryGraph matched the rest).
const TensorSpec *Trainer::stateSpec(const Entry *entry, const TensorSpec &a) {
  TensorSpec st = a;
  std::string weight = a.name.substr(0, a.name.rfind('.'));
  for (const TensorSpec &w : entry->args)
    if (w.role == "weight" && w.name == weight)
      st.transpose = w.transpose;
  stateSpecs_.push_back(std::make_unique<TensorSpec>(std::move(st)));
  return stateSpecs_.back().get();
}

/// Gives every argument and result of the three entries its buffer: one
/// per name, results of one entry are the arguments of the next, and the
/// step's results are its arguments (updated in place).
Status Trainer::bind() {
  for (EntryRun *e : {&ft_, &bw_, &step_}) {
    e->args.assign(e->entry->args.size(), nullptr);
    for (const TensorSpec &a : e->entry->args) {
      void *&p = e->args[a.index];
      if (a.role == "saved" || a.role == "grad") {
        auto it = results_.find(a.name);
        if (it == results_.end())
          return supportError(MOERT_ERR_INVALID,
                              "entry '%s': argument '%s' is not a result of "
                              "forward_train or backward",
                              e->entry->name.c_str(), a.name.c_str());
        p = it->second;
        hasBias_ = hasBias_ || a.name.rfind("load.", 0) == 0;
        continue;
      }
      auto it = args_.find(a.name);
      if (it != args_.end()) {
        p = it->second;
        continue;
      }
      MOERT_TRY(allocate(a, false, p));
      args_[a.name] = p;
      if (a.role == "weight")
        weights_.push_back(&a);
      if (a.role == "state")
        states_.push_back(stateSpec(e->entry, a));
    }
    e->results.assign(e->entry->results.size(), nullptr);
    for (const TensorSpec &r : e->entry->results) {
      if (e == &step_) { // checkEntryGraph: an argument of the same name
        e->results[r.index] = args_.at(r.name);
        continue;
      }
      MOERT_TRY(allocate(r, true, e->results[r.index]));
      results_[r.name] = e->results[r.index];
    }
  }
  return Status::ok();
}

/// The targets: tensor 'hidden_states' of the targets file, of exactly the
/// shape of the argument `targets`, any float dtype.
Status Trainer::loadTargets(const TensorSpec &spec, char *host) {
  std::unique_ptr<SafetensorsFile> file;
  MOERT_TRY(SafetensorsFile::open(t_.targets, file));
  const TensorInfo *t;
  MOERT_TRY(file->lookup("hidden_states", t));
  if (!isFloatDtype(t->dtype))
    return supportError(MOERT_ERR_INVALID,
                        "%s: tensor 'hidden_states' is %s, expected a float "
                        "tensor (F32, F16 or BF16)",
                        t_.targets.c_str(), t->dtypeName.c_str());
  if (t->shape != spec.shape)
    return supportError(MOERT_ERR_INVALID,
                        "%s: tensor 'hidden_states' has shape %s, expected %s "
                        "(the shape of the output hidden_states)",
                        t_.targets.c_str(), shapeString(t->shape).c_str(),
                        shapeString(spec.shape).c_str());
  TensorSpec renamed = spec;
  renamed.name = "hidden_states";
  return loader_->readFrom(*file, renamed, host);
}

/// A plain state tensor must have its weight's file shape exactly (the
/// loader only compares element counts, for DBRX's fused tensors), so that
/// a state of another model or a transposed one is not read as this one.
/// Stacks over experts are checked per expert by the loader.
Status Trainer::checkStateShape(const SafetensorsFile &file,
                                const TensorSpec &spec) {
  std::string weight = spec.name.substr(0, spec.name.rfind('.'));
  auto want = fileShapes_.find(weight);
  const TensorInfo *t = file.find(spec.name);
  if (spec.isExpertStack() || want == fileShapes_.end() || !t ||
      t->shape == want->second)
    return Status::ok();
  return supportError(MOERT_ERR_INVALID,
                      "%s: tensor '%s' has shape %s but its weight '%s' has "
                      "shape %s",
                      file.path().c_str(), spec.name.c_str(),
                      shapeString(t->shape).c_str(), weight.c_str(),
                      shapeString(want->second).c_str());
}

Status Trainer::load() {
  std::unique_ptr<SafetensorsFile> state;
  if (!t_.optimizerState.empty()) {
    MOERT_TRY(SafetensorsFile::open(t_.optimizerState, state));
    MOERT_TRY(readOptimizerStep(*state, step0_));
  }
  loader_ = std::make_unique<ShardedLoader>(s_.manifest.mesh, s_.coords);
  MOERT_TRY(loader_->open(s_.opt.weights, s_.opt.inputs));
  std::unique_ptr<SafetensorsFile> replay;
  if (!s_.opt.replayRouting.empty())
    MOERT_TRY(SafetensorsFile::open(s_.opt.replayRouting, replay));
  std::set<std::string> loaded; // one buffer per name, loaded once
  for (EntryRun *e : {&ft_, &bw_, &step_})
    for (const TensorSpec &a : e->entry->args) {
      if (a.role == "saved" || a.role == "grad" || a.role == "hparams" ||
          !loaded.insert(a.name).second)
        continue;
      std::vector<char> host;
      MOERT_TRY(hostBuffer(a, host));
      if (a.role == "input" && a.name == "targets") {
        MOERT_TRY(loadTargets(a, host.data()));
      } else if (replay && a.role == "input" && isRoutingTensor(a)) {
        MOERT_TRY(loader_->readFrom(*replay, a, host.data()));
      } else if (a.role == "state" && state) {
        const TensorSpec *ls = &a;
        for (const TensorSpec *st : states_)
          ls = st->name == a.name ? st : ls;
        MOERT_TRY(checkStateShape(*state, *ls));
        MOERT_TRY(loader_->readFrom(*state, *ls, host.data()));
        int64_t bad =
            a.dtype == MOERT_F32
                ? firstNonFinite(reinterpret_cast<float *>(host.data()),
                                 numElements(a.localShape))
                : -1;
        if (bad >= 0)
          return supportError(
              MOERT_ERR_INVALID, "%s: tensor '%s' is not finite",
              t_.optimizerState.c_str(),
              expandExpertName(a.name, expertOf(a, bad)).c_str());
      } else if (a.role != "state") { // no state file: zeros
        MOERT_TRY(loader_->read(a, host.data()));
      }
      if (a.role == "weight")
        fileShapes_[a.name] = fileShapeOf(loader_->weightsFile(), a);
      double start = now();
      if (moert_copy_to_device(ctx_, e->args[a.index], host.data(),
                               a.localBytes()) != MOERT_OK ||
          moert_synchronize(ctx_) != MOERT_OK)
        return ctxError(ctx_, "copying arguments to the device");
      h2dSeconds_ += now() - start;
    }
  return Status::ok();
}

bool Trainer::loadAll() {
  double start = now();
  ft_.entry = &s_.entry(forwardTrainEntry(s_.opt));
  ft_.stats.name = ft_.entry->name;
  bw_.stats.name = "backward";
  step_.stats.name = "step_" + t_.optimizer;
  bw_.entry = &s_.entry("backward");
  step_.entry = &s_.entry("step_" + t_.optimizer);
  ft_.fn = s_.function(ft_.entry->name);
  bw_.fn = s_.function("backward");
  step_.fn = s_.function("step_" + t_.optimizer);
  Status s = bind();
  if (s.isOk())
    s = check();
  if (s.isOk())
    s = load();
  if (!s.isOk())
    report("error: %s", s.message().c_str());
  if (loader_)
    loader_->close();
  loadSeconds_ = now() - start;
  return s_.agree(s.isOk(), "loading weights, inputs, targets and state");
}

/// Runs one entry and moves the runtime's statistics into its own.
void Trainer::call(EntryRun &e) {
  double start = now();
  e.fn(ctx_, e.args.data(), e.results.data());
  moert_synchronize(ctx_);
  e.stats.seconds += now() - start;
  ++e.stats.runs;
  if (moert_status st = moert_ctx_status(ctx_); st != MOERT_OK) {
    Status s = ctxError(
        ctx_, format("running entry '%s'", e.entry->name.c_str()).c_str());
    if (st == MOERT_ERR_RECV_BOUND)
      fatalOnEveryRank(ctx_, s);
    fatal(s);
  }
  e.stats.absorb(moert_ctx_stats_json(ctx_));
  if (&e == &ft_)
    load_ = parseExpertLoad(moert_ctx_stats_json(ctx_));
  if (!s_.opt.trace.empty()) {
    std::string t = moert_ctx_trace_json(ctx_);
    if (!t.empty())
      trace_ += (trace_.empty() ? "" : ",\n") + t;
  }
  moert_ctx_reset_stats(ctx_);
}

float Trainer::readScalar(const std::string &name) {
  float v = 0;
  if (moert_copy_to_host(ctx_, &v, results_.at(name), sizeof v) != MOERT_OK)
    fatal(ctxError(ctx_, format("reading '%s'", name.c_str()).c_str()));
  return v;
}

/// The global expert of element `i` of this rank's buffer of the stack
/// `spec` (-1 when it is no stack).
int64_t Trainer::expertOf(const TensorSpec &spec, int64_t i) const {
  Slice slice;
  int64_t n = numElements(spec.localShape);
  if (!spec.isExpertStack() || n == 0 ||
      !computeSlice(s_.manifest.mesh, spec, s_.coords, slice).isOk())
    return -1;
  return slice.lo[0] + i / (n / spec.localShape[0]);
}

Problem Trainer::lossProblem() {
  float loss = readScalar("loss");
  Problem p;
  if (!std::isfinite(loss)) {
    p.what = -2;
    p.value = loss;
  }
  return p;
}

Problem Trainer::gradProblem() {
  Problem p;
  localSquares_ = 0;
  std::set<std::string> weights;
  for (const TensorSpec *w : weights_)
    weights.insert("grad." + w->name);
  std::vector<char> host;
  std::vector<float> f32;
  // On the CPU device the buffers are host memory: F32 gradients are read
  // where they are, without a copy.
  bool inPlace = s_.opt.device != "cuda";
  for (const TensorSpec &r : bw_.entry->results) {
    if (r.name.rfind("grad.", 0) != 0)
      continue;
    int64_t n = numElements(r.localShape);
    const float *data = static_cast<const float *>(bw_.results[r.index]);
    if (!inPlace || r.dtype != MOERT_F32) {
      host.resize(static_cast<size_t>(r.localBytes()));
      f32.resize(static_cast<size_t>(n));
      if (moert_copy_to_host(ctx_, host.data(), bw_.results[r.index],
                             r.localBytes()) != MOERT_OK)
        fatal(ctxError(ctx_, format("reading '%s'", r.name.c_str()).c_str()));
      Status s = convertElements(host.data(), r.dtype, f32.data(), MOERT_F32, n,
                                 r.name);
      if (!s.isOk())
        fatal(s);
      data = f32.data();
    }
    // One pass: the sum of squares (in double, where a finite f32 cannot
    // overflow) is finite exactly when every element is; it is also this
    // rank's share of the gradient norm (TrainNorm.cpp).
    double squares = sumOfSquares(data, n);
    if (std::isfinite(squares)) {
      if (weights.count(r.name) &&
          isFirstReplica(s_.manifest.mesh, r, s_.coords))
        localSquares_ += squares;
      continue;
    }
    int64_t bad = firstNonFinite(data, n);
    p.what = r.index;
    p.expert = expertOf(r, bad);
    return p;
  }
  return p;
}

/// All ranks learn every rank's problem; rank 0 reports the first. False
/// (on every rank) when there is one.
bool Trainer::agreeProblem(Problem mine, int64_t i) {
  std::vector<Problem> all(world().size);
  if (moert_world_allgather(ctx_, &mine, all.data(), sizeof(Problem)) !=
      MOERT_OK)
    fatal(ctxError(ctx_, "agreeing on the step"));
  for (int r = 0; r < world().size; ++r) {
    const Problem &p = all[r];
    if (p.what == -1)
      continue;
    if (world().rank != 0)
      return false;
    std::string where = format(
        "step %lld/%lld (optimizer step %lld)", static_cast<long long>(i),
        static_cast<long long>(t_.steps), static_cast<long long>(step0_ + i));
    std::string on = world().size > 1 ? format(" on rank %d", r) : "";
    if (p.what == -2) {
      report("error: %s: the loss is %s%s; nothing was written", where.c_str(),
             std::isnan(p.value) ? "nan" : format("%g", p.value).c_str(),
             on.c_str());
    } else {
      const TensorSpec &g = bw_.entry->results[p.what];
      std::string name = g.name.substr(5);
      if (p.expert >= 0)
        name = expandExpertName(name, p.expert);
      report("error: %s: the gradient of '%s' is not finite%s; nothing was "
             "written",
             where.c_str(), name.c_str(), on.c_str());
    }
    return false;
  }
  return true;
}

/// One step; false (on every rank) when the loss or a gradient is not
/// finite.
bool Trainer::step(int64_t i) {
  double start = now();
  moert_ctx_record_expert_load(ctx_, 1);
  call(ft_);
  moert_ctx_record_expert_load(ctx_, 0);
  Status loaded = sumExpertLoad(ctx_, tokensCounted(s_, *ft_.entry), load_);
  if (!loaded.isOk())
    fatal(loaded);
  if (i == 1)
    firstLoad_ = load_;
  if (!agreeProblem(lossProblem(), i))
    return false;
  call(bw_);
  if (!agreeProblem(gradProblem(), i))
    return false;
  if (i == 1 && !t_.grads.empty()) {
    Status s = gatherGrads();
    if (!s.isOk())
      fatal(s);
  }
  if (i == 1 && !s_.opt.dumpRouting.empty()) {
    Status s = gatherRouting();
    if (!s.isOk())
      fatal(s);
  }
  // The norm of the gradients as backward made them (--grads holds them
  // unclipped too), then clipping as torch.nn.utils.clip_grad_norm_.
  double norm = gradNorm(), coef = 1;
  if (t_.clipGradNorm > 0) {
    coef = static_cast<double>(t_.clipGradNorm) / (norm + 1e-6);
    if (coef < 1)
      scaleGrads(coef);
    else
      coef = 1;
  }
  float h[8] = {t_.lr,
                t_.beta1,
                t_.beta2,
                t_.eps,
                t_.weightDecay,
                t_.momentum,
                static_cast<float>(step0_ + i),
                t_.biasUpdateRate};
  if (moert_copy_to_device(ctx_, args_.at("optimizer.hparams"), h, sizeof h) !=
      MOERT_OK)
    fatal(ctxError(ctx_, "setting optimizer.hparams"));
  call(step_);
  double ms = (now() - start) * 1e3;
  runSeconds_ += ms / 1e3;
  if (world().rank != 0)
    return true;
  float loss = readScalar("loss");
  json::Value row = json::Value::object();
  row.set("step", i);
  row.set("optimizer_step", step0_ + i);
  row.set("loss", static_cast<double>(loss));
  std::string line =
      format("step %lld/%lld loss %.9e", static_cast<long long>(i),
             static_cast<long long>(t_.steps), loss);
  for (auto [result, key, label] :
       {std::tuple<const char *, const char *, const char *>{"mse_loss", "mse",
                                                             "mse"},
        {"aux_loss", "aux_loss", "aux"},
        {"z_loss", "z_loss", "z"}})
    if (results_.count(result)) {
      float v = readScalar(result);
      row.set(key, static_cast<double>(v));
      line += format(" %s %.9e", label, v);
    }
  row.set("grad_norm", norm);
  line += format(" grad_norm %.9e", norm);
  if (t_.clipGradNorm > 0) {
    row.set("clip_coef", coef);
    if (coef < 1)
      line += format(" clipped x%.6g", coef);
  }
  row.set("ms", ms);
  if (t_.json)
    rows_.push(row);
  row.set("expert_load", expertLoadJson(load_, epSize(s_.manifest.mesh)));
  stepStats_.push(std::move(row));
  if (t_.json)
    return true;
  std::printf("%s (%.3f ms)\n", line.c_str(), ms);
  std::fflush(stdout);
  return true;
}

int Trainer::run() {
  if (!loadAll())
    return 1;
  for (int64_t i = 1; i <= t_.steps; ++i)
    if (!step(i))
      return 1;
  return finish();
}

int runTraining(Session &session) {
  Trainer t(session);
  return t.run();
}

} // namespace moe_run
