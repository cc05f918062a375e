//===- ExpertLoad.cpp - Tokens per expert, per MoE layer ------------------===//
#include "ExpertLoad.h"
#include "Session.h"
#include "ShardedLoader.h"
#include "World.h"

#include "support/Format.h"

#include <algorithm>
#include <cstdio>

using namespace moert;

namespace moe_run {

ExpertLoad parseExpertLoad(const char *statsJson) {
  ExpertLoad out;
  json::Value v;
  if (!json::parse(statsJson, "statistics", v).isOk() || !v.get("expert_load"))
    return out;
  auto ints = [](const json::Value *a) {
    std::vector<int64_t> r;
    if (a && a->isArray())
      for (const json::Value &x : a->elements())
        r.push_back(x.getInt());
    return r;
  };
  for (const json::Value &l : v.get("expert_load")->elements())
    out.push_back({ints(l.get("routed")), ints(l.get("kept"))});
  return out;
}

Status sumExpertLoad(moert_ctx *ctx, bool counts, ExpertLoad &load) {
  // The shape first: every rank ran the same program, so a difference is a
  // bug, reported rather than summed.
  std::vector<int64_t> mine;
  for (const LayerLoad &l : load)
    mine.push_back(static_cast<int64_t>(l.routed.size()));
  int64_t shape[2] = {static_cast<int64_t>(load.size()), 0};
  for (int64_t e : mine)
    shape[1] = shape[1] * 1000003 + e;
  std::vector<int64_t> shapes(2 * static_cast<size_t>(world().size));
  if (moert_world_allgather(ctx, shape, shapes.data(), sizeof shape) !=
      MOERT_OK)
    return ctxError(ctx, "gathering the expert load");
  for (int r = 0; r < world().size; ++r)
    if (shapes[2 * r] != shape[0] || shapes[2 * r + 1] != shape[1])
      return supportError(MOERT_ERR_INVALID,
                          "rank %d recorded another number of MoE layers or "
                          "experts than rank %d",
                          r, world().rank);
  std::vector<int64_t> flat;
  for (const LayerLoad &l : load)
    for (const std::vector<int64_t> *v : {&l.routed, &l.kept})
      for (int64_t x : *v)
        flat.push_back(counts ? x : 0);
  if (flat.empty())
    return Status::ok();
  std::vector<int64_t> all(flat.size() * static_cast<size_t>(world().size));
  if (moert_world_allgather(ctx, flat.data(), all.data(),
                            static_cast<int64_t>(flat.size() * 8)) != MOERT_OK)
    return ctxError(ctx, "gathering the expert load");
  for (size_t i = 0; i < flat.size(); ++i) {
    flat[i] = 0;
    for (int r = 0; r < world().size; ++r)
      flat[i] += all[static_cast<size_t>(r) * flat.size() + i];
  }
  size_t i = 0;
  for (LayerLoad &l : load)
    for (std::vector<int64_t> *v : {&l.routed, &l.kept})
      for (int64_t &x : *v)
        x = flat[i++];
  return Status::ok();
}

namespace {

struct Summary {
  int64_t assignments = 0, kept = 0, max = 0;
  double mean = 0, overload = 0;
  std::vector<int64_t> empty;
};

Summary summarize(const LayerLoad &l) {
  Summary s;
  for (size_t e = 0; e < l.routed.size(); ++e) {
    s.assignments += l.routed[e];
    s.max = std::max(s.max, l.routed[e]);
    if (l.routed[e] == 0)
      s.empty.push_back(static_cast<int64_t>(e));
  }
  for (int64_t k : l.kept)
    s.kept += k;
  if (!l.routed.empty())
    s.mean = static_cast<double>(s.assignments) / l.routed.size();
  s.overload = s.mean > 0 ? s.max / s.mean : 0;
  return s;
}

/// Assignments per ep rank (empty unless ep > 1 divides E).
std::vector<int64_t> perEpRank(const LayerLoad &l, int64_t ep) {
  std::vector<int64_t> out;
  int64_t e = static_cast<int64_t>(l.routed.size());
  if (ep <= 1 || e % ep != 0)
    return out;
  out.assign(static_cast<size_t>(ep), 0);
  for (int64_t i = 0; i < e; ++i)
    out[static_cast<size_t>(i / (e / ep))] += l.routed[static_cast<size_t>(i)];
  return out;
}

json::Value intArray(const std::vector<int64_t> &v) {
  json::Value a = json::Value::array();
  for (int64_t x : v)
    a.push(x);
  return a;
}

} // namespace

int64_t epSize(const Mesh &mesh) {
  int a = mesh.axisIndex("ep");
  return a < 0 ? 1 : mesh.shape[static_cast<size_t>(a)];
}

json::Value expertLoadJson(const ExpertLoad &load, int64_t ep) {
  json::Value out = json::Value::array();
  for (size_t i = 0; i < load.size(); ++i) {
    Summary s = summarize(load[i]);
    json::Value l = json::Value::object();
    l.set("layer", static_cast<int64_t>(i));
    l.set("tokens", intArray(load[i].routed));
    l.set("kept", intArray(load[i].kept));
    l.set("assignments", s.assignments);
    l.set("dropped", s.assignments - s.kept);
    l.set("max", s.max);
    l.set("mean", s.mean);
    l.set("overload", s.overload);
    l.set("empty", intArray(s.empty));
    std::vector<int64_t> ranks = perEpRank(load[i], ep);
    if (!ranks.empty())
      l.set("ep_ranks", intArray(ranks));
    out.push(std::move(l));
  }
  return out;
}

void printExpertLoad(const ExpertLoad &load, const std::string &title,
                     int64_t ep) {
  if (load.empty())
    return;
  std::printf("\nexpert load%s (assignments per expert before capacity, all "
              "ranks)\n",
              title.c_str());
  std::printf("  %-5s %11s %6s %8s %8s %8s  %s\n", "layer", "assignments",
              "max", "mean", "max/mean", "dropped", "experts with no token");
  for (size_t i = 0; i < load.size(); ++i) {
    Summary s = summarize(load[i]);
    std::string empty;
    for (int64_t e : s.empty)
      empty += (empty.empty() ? "" : ",") + std::to_string(e);
    std::printf("  %-5zu %11lld %6lld %8.2f %8.3f %8lld  %s\n", i,
                static_cast<long long>(s.assignments),
                static_cast<long long>(s.max), s.mean, s.overload,
                static_cast<long long>(s.assignments - s.kept),
                empty.empty() ? "-" : empty.c_str());
    if (load[i].routed.size() <= 32) {
      std::string per;
      for (int64_t x : load[i].routed)
        per += " " + std::to_string(x);
      std::printf("        tokens per expert:%s\n", per.c_str());
    }
    std::vector<int64_t> ranks = perEpRank(load[i], ep);
    if (!ranks.empty()) {
      std::string per;
      for (int64_t x : ranks)
        per += " " + std::to_string(x);
      std::printf("        tokens per ep rank:%s\n", per.c_str());
    }
  }
}

bool tokensCounted(const Session &s, const Entry &entry) {
  for (const TensorSpec &a : entry.args)
    if (a.role == "input")
      return isFirstReplica(s.manifest.mesh, a, s.coords);
  return world().rank == 0;
}

std::string withMember(const std::string &object, const std::string &key,
                       json::Value value) {
  json::Value v;
  if (!json::parse(object, "statistics", v).isOk())
    return object;
  v.set(key, std::move(value));
  return json::write(v);
}

} // namespace moe_run
