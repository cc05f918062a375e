//===- EntryGraphTest.cpp - The training entry points of a manifest -------===//
//
// checkEntryGraph (runtime/support/EntryGraph.cpp): the roles each entry may
// take and the links by name between forward_train, backward and the steps.
// moe-run's end-to-end tests (test/Integration/moe-run-handwritten) run such
// a module; these cases pin each rejection.
//
//===----------------------------------------------------------------------===//
#include "support/Json.h"
#include "support/Manifest.h"

#include <gtest/gtest.h>

#include <functional>

using namespace moert;

namespace {

/// A training module on a 2-rank dp mesh: y = x . W^T.
const char *kTrain = R"({
  "format": "moe-compiler-module", "version": 1,
  "module_hash": "0123456789abcdef", "library": "module.so",
  "mesh": {"axes": ["dp"], "shape": [2]},
  "entries": [
   {"name": "forward_train", "symbol": "moe_entry_forward_train",
    "args": [
     {"index": 0, "role": "input", "name": "hidden_states", "dtype": "f32",
      "shape": [8, 4], "local_shape": [4, 4], "shard": [["dp"], []]},
     {"index": 1, "role": "input", "name": "targets", "dtype": "f32",
      "shape": [8, 4], "local_shape": [4, 4], "shard": [["dp"], []]},
     {"index": 2, "role": "weight", "name": "experts.{e}.w", "dtype": "f32",
      "transpose": true, "shape": [2, 4, 4], "local_shape": [1, 4, 4],
      "shard": [["dp"], [], []]}],
    "results": [
     {"index": 0, "name": "loss", "dtype": "f32", "shape": [1],
      "local_shape": [1], "shard": [[]]},
     {"index": 1, "name": "saved.0", "dtype": "f32", "shape": [8, 4],
      "local_shape": [4, 4], "shard": [["dp"], []]}]},
   {"name": "backward", "symbol": "moe_entry_backward",
    "args": [
     {"index": 0, "role": "saved", "name": "saved.0", "dtype": "f32",
      "shape": [8, 4], "local_shape": [4, 4], "shard": [["dp"], []]},
     {"index": 1, "role": "weight", "name": "experts.{e}.w", "dtype": "f32",
      "transpose": true, "shape": [2, 4, 4], "local_shape": [1, 4, 4],
      "shard": [["dp"], [], []]}],
    "results": [
     {"index": 0, "name": "grad.experts.{e}.w", "dtype": "f32",
      "shape": [2, 4, 4], "local_shape": [1, 4, 4],
      "shard": [["dp"], [], []]},
     {"index": 1, "name": "grad.hidden_states", "dtype": "f32",
      "shape": [8, 4], "local_shape": [4, 4], "shard": [["dp"], []]}]},
   {"name": "step_sgd", "symbol": "moe_entry_step_sgd",
    "args": [
     {"index": 0, "role": "weight", "name": "experts.{e}.w", "dtype": "f32",
      "transpose": true, "shape": [2, 4, 4], "local_shape": [1, 4, 4],
      "shard": [["dp"], [], []]},
     {"index": 1, "role": "grad", "name": "grad.experts.{e}.w",
      "dtype": "f32", "shape": [2, 4, 4], "local_shape": [1, 4, 4],
      "shard": [["dp"], [], []]},
     {"index": 2, "role": "state", "name": "experts.{e}.w.momentum_buffer",
      "dtype": "f32", "shape": [2, 4, 4], "local_shape": [1, 4, 4],
      "shard": [["dp"], [], []]},
     {"index": 3, "role": "hparams", "name": "optimizer.hparams",
      "dtype": "f32", "shape": [8], "local_shape": [8], "shard": [[]]}],
    "results": [
     {"index": 0, "name": "experts.{e}.w", "dtype": "f32",
      "shape": [2, 4, 4], "local_shape": [1, 4, 4],
      "shard": [["dp"], [], []]},
     {"index": 1, "name": "experts.{e}.w.momentum_buffer", "dtype": "f32",
      "shape": [2, 4, 4], "local_shape": [1, 4, 4],
      "shard": [["dp"], [], []]}]}]
})";

json::Value &member(json::Value &v, const std::string &key) {
  return const_cast<json::Value &>(*v.get(key));
}

json::Value &entry(json::Value &root, int i) {
  return member(root, "entries").elements()[i];
}

json::Value &tensor(json::Value &root, int e, const char *list, int i) {
  return member(entry(root, e), list).elements()[i];
}

std::string errorAfter(const std::function<void(json::Value &)> &edit) {
  json::Value root;
  EXPECT_TRUE(json::parse(kTrain, "x", root).isOk());
  edit(root);
  Manifest m;
  Status s = parseManifest(json::write(root), "manifest.json", m);
  EXPECT_FALSE(s.isOk());
  return s.message();
}

void expectHas(const std::string &msg, const std::string &part) {
  EXPECT_NE(msg.find(part), std::string::npos)
      << "'" << part << "' not in: " << msg;
}

TEST(EntryGraph, AcceptsATrainingModule) {
  Manifest m;
  Status s = parseManifest(kTrain, "manifest.json", m);
  ASSERT_TRUE(s.isOk()) << s.message();
  const Entry *step = m.findEntry("step_sgd");
  ASSERT_NE(step, nullptr);
  EXPECT_EQ(step->args[1].role, "grad");
  EXPECT_EQ(step->args[2].role, "state");
  EXPECT_TRUE(step->results[1].isExpertStack());
  EXPECT_EQ(trainingStage("backward"), 1);
  EXPECT_EQ(trainingStage("forward"), -1);
  EXPECT_EQ(stateSlots("step_adamw"),
            (std::vector<std::string>{"exp_avg", "exp_avg_sq"}));
  // grad.hidden_states is consumed by no later entry: fine. A state may be
  // sharded otherwise than its weight (ZeRO-1), and need not repeat its
  // transpose flag.
  json::Value root;
  ASSERT_TRUE(json::parse(kTrain, "x", root).isOk());
  json::Value &state = tensor(root, 2, "args", 2);
  member(state, "shard").elements()[0] = json::Value::array();
  member(state, "shard").elements()[1].push("dp");
  member(state, "local_shape").elements()[0] = json::Value(2);
  member(state, "local_shape").elements()[1] = json::Value(2);
  json::Value &out = tensor(root, 2, "results", 1);
  out.set("shard", *state.get("shard"));
  out.set("local_shape", *state.get("local_shape"));
  s = parseManifest(json::write(root), "manifest.json", m);
  EXPECT_TRUE(s.isOk()) << s.message();
}

TEST(EntryGraph, RejectsBrokenLinks) {
  expectHas(errorAfter([](json::Value &r) {
              tensor(r, 1, "args", 0).set("name", "saved.3");
            }),
            "entries[1].args[0] ('saved.3' of entry 'backward'): argument "
            "'saved.3' (role saved) is not a result of any earlier entry");
  expectHas(errorAfter([](json::Value &r) {
              tensor(r, 2, "args", 1).set("name", "grad.other");
            }),
            "'grad.other' (role grad) is not a result");
  expectHas(errorAfter([](json::Value &r) {
              member(tensor(r, 1, "args", 0), "local_shape").elements()[0] =
                  json::Value(8);
              member(tensor(r, 1, "args", 0), "shard").elements()[0] =
                  json::Value::array();
            }),
            "entry 'forward_train' returns it as F32 [8, 4] (local [4, 4]");
  expectHas(errorAfter([](json::Value &r) {
              member(r, "entries")
                  .elements()
                  .erase(member(r, "entries").elements().begin() + 1);
            }),
            "no entry 'backward'");
  expectHas(errorAfter([](json::Value &r) {
              member(r, "entries").elements().pop_back();
            }),
            "no entry 'step_adamw or step_sgd'");
  expectHas(errorAfter([](json::Value &r) {
              tensor(r, 0, "results", 0).set("name", "total");
            }),
            "no result named 'loss'");
}

TEST(EntryGraph, RejectsBadRolesAndStepTensors) {
  expectHas(errorAfter([](json::Value &r) {
              tensor(r, 0, "args", 0).set("role", "saved");
            }),
            "entry 'forward_train' cannot take an argument of role 'saved'");
  expectHas(errorAfter([](json::Value &r) {
              tensor(r, 1, "args", 0).set("role", "gradient");
            }),
            "role 'gradient' is not one of input, weight, saved, grad, "
            "state, hparams");
  expectHas(errorAfter([](json::Value &r) {
              tensor(r, 2, "args", 2).set("name", "experts.{e}.w.exp_avg");
            }),
            "is not named NAME.momentum_buffer");
  expectHas(errorAfter([](json::Value &r) {
              tensor(r, 2, "args", 2).set("name", "other.momentum_buffer");
            }),
            "belongs to no weight argument 'other'");
  expectHas(errorAfter([](json::Value &r) {
              tensor(r, 2, "args", 2).set("dtype", "bf16");
            }),
            "state 'experts.{e}.w.momentum_buffer' is BF16 [2, 4, 4]");
  expectHas(errorAfter([](json::Value &r) {
              member(tensor(r, 2, "args", 3), "shape").elements()[0] =
                  json::Value(7);
              member(tensor(r, 2, "args", 3), "local_shape").elements()[0] =
                  json::Value(7);
            }),
            "'optimizer.hparams', F32 [8], replicated");
  expectHas(errorAfter([](json::Value &r) {
              tensor(r, 2, "results", 1).set("name", "experts.{e}.w.other");
            }),
            "is no weight or state argument of it");
  expectHas(errorAfter([](json::Value &r) {
              tensor(r, 2, "args", 0).set("transpose", false);
            }),
            "weight 'experts.{e}.w' is F32 [2, 4, 4]");
  expectHas(errorAfter([](json::Value &r) {
              tensor(r, 0, "args", 1).set("name", "hidden_states");
            }),
            "two arguments are named 'hidden_states'");
  expectHas(errorAfter([](json::Value &r) {
              tensor(r, 1, "args", 0).set("name", "saved.{e}");
            }),
            "'{e}' names are for weights");
}

} // namespace
