//===- Trainer.h - The training loop's state (internal) ---------*- C++ -*-===//
//
// The class behind runTraining (Train.h), shared by Train.cpp (buffers,
// loading, the steps) and TrainSave.cpp (the files and statistics written
// at the end). Not used elsewhere.
//
//===----------------------------------------------------------------------===//
#ifndef MOE_RUN_TRAINER_H
#define MOE_RUN_TRAINER_H

#include "Checkpoint.h"
#include "ExpertLoad.h"
#include "Options.h"
#include "Report.h"
#include "Session.h"
#include "ShardedLoader.h"

#include "support/Json.h"
#include "support/Manifest.h"

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace moe_run {

/// Sum of the squares of `n` floats in double, in a fixed order (eight
/// interleaved partial sums, then the rest, so that it vectorizes).
double sumOfSquares(const float *data, int64_t n);

/// One entry point of the step: its argument and result tables, and its
/// statistics summed over the steps.
struct EntryRun {
  const moert::Entry *entry = nullptr;
  EntryFn fn = nullptr;
  std::vector<void *> args, results;
  EntryStats stats;
};

/// What a rank found wrong in a step (agreed on by all ranks).
struct Problem {
  int64_t what = -1; // -1 none, -2 the loss, else a backward result index
  int64_t expert = -1;
  double value = 0;
};

/// The training run of one rank (docs/user-guide.md "Training").
class Trainer {
public:
  explicit Trainer(Session &s) : s_(s), t_(s.opt.t), ctx_(s.ctx) {}
  ~Trainer() {
    for (void *p : owned_)
      moert_free(ctx_, p);
  }
  int run();

private:
  moert::Status check();
  moert::Status allocate(const moert::TensorSpec &spec, bool poison, void *&p);
  const moert::TensorSpec *stateSpec(const moert::Entry *entry,
                                     const moert::TensorSpec &a);
  moert::Status bind();
  moert::Status checkStateShape(const moert::SafetensorsFile &file,
                                const moert::TensorSpec &spec);
  moert::Status load();
  moert::Status loadTargets(const moert::TensorSpec &spec, char *host);
  bool loadAll();
  void call(EntryRun &e);
  float readScalar(const std::string &name);
  int64_t expertOf(const moert::TensorSpec &spec, int64_t i) const;
  Problem lossProblem();
  Problem gradProblem();
  bool agreeProblem(Problem mine, int64_t i);
  bool step(int64_t i);
  std::vector<const moert::TensorSpec *> weightGrads() const;
  float *gradData(const moert::TensorSpec &r, std::vector<float> &host);
  /// The global L2 norm of the weights' gradients (TrainNorm.cpp) from
  /// this rank's localSquares_; the same value on every rank.
  double gradNorm();
  /// Multiplies every gradient of a weight by `coef` (rounded to f32).
  void scaleGrads(double coef);
  moert::Status gatherGrads();
  /// The first step's routing (--dump-routing): every rank gathers the
  /// routing.* results of the forward entry; rank 0 keeps them.
  moert::Status gatherRouting();
  moert::Status save();
  std::string rankStats() const;
  int finish();

  Session &s_;
  const TrainOptions &t_;
  moert_ctx *ctx_;
  EntryRun ft_, bw_, step_;
  /// Arguments loaded from files (weights, inputs, state) and the
  /// hyperparameters, by name; results of forward_train and backward.
  std::map<std::string, void *> args_, results_;
  std::vector<const moert::TensorSpec *> weights_, states_;
  std::vector<std::unique_ptr<moert::TensorSpec>> stateSpecs_;
  std::map<std::string, std::vector<int64_t>> fileShapes_;
  std::vector<void *> owned_;
  /// The first step's gradients as file tensors (rank 0, with --grads).
  std::vector<FileTensor> grads_;
  /// The first step's routing results (rank 0), indexed like ft_'s results.
  std::vector<std::vector<char>> routing_;
  moert::Status gradsStatus_ = moert::Status::ok();
  std::unique_ptr<ShardedLoader> loader_;
  int64_t step0_ = 0;
  /// Sum of the squares of the gradient elements this rank counts in the
  /// norm (gradProblem).
  double localSquares_ = 0;
  bool hasBias_ = false;
  double loadSeconds_ = 0, h2dSeconds_ = 0, runSeconds_ = 0;
  std::string trace_;
  /// --json: one object per step (rank 0).
  moert::json::Value rows_ = moert::json::Value::array();
  /// The global expert load of forward_train: this step's, step 1's.
  ExpertLoad load_, firstLoad_;
  /// The same objects for --stats ("step_stats" of rank 0's object), with
  /// the step's expert load.
  moert::json::Value stepStats_ = moert::json::Value::array();
};

} // namespace moe_run

#endif // MOE_RUN_TRAINER_H
