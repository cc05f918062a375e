//===- Report.cpp - Statistics, traces and --check of moe-run -------------===//
#include "Report.h"

#include "World.h"
#include "base/Dtype.h"
#include "support/Format.h"
#include "support/Json.h"
#include "support/Safetensors.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <unistd.h>

using namespace moert;

namespace moe_run {

namespace {

std::string humanBytes(double b) {
  const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  return u == 0 ? format("%.0f B", b) : format("%.2f %s", b, units[u]);
}

} // namespace

void printPhaseTable(const json::Value &rank0, const std::string &title,
                     int64_t runs, double runSeconds) {
  struct Row {
    std::string name;
    int64_t calls;
    double seconds;
  };
  std::vector<Row> rows;
  if (const json::Value *phases = rank0.get("phases"))
    for (const json::Value &p : phases->elements())
      if (p.get("name") && p.get("calls") && p.get("seconds"))
        rows.push_back({p.get("name")->getString(), p.get("calls")->getInt(),
                        p.get("seconds")->getNumber()});
  std::sort(rows.begin(), rows.end(),
            [](const Row &a, const Row &b) { return a.seconds > b.seconds; });
  std::printf("\nphases (rank 0%s, %lld run%s, %.3f ms per run)\n",
              title.c_str(), static_cast<long long>(runs), runs == 1 ? "" : "s",
              runSeconds * 1e3 / runs);
  std::printf("  %-28s %8s %12s %12s %7s\n", "phase", "calls", "total ms",
              "ms/run", "share");
  for (const Row &r : rows)
    std::printf("  %-28s %8lld %12.3f %12.3f %6.1f%%\n", r.name.c_str(),
                static_cast<long long>(r.calls), r.seconds * 1e3,
                r.seconds * 1e3 / runs,
                runSeconds > 0 ? 100.0 * r.seconds / runSeconds : 0.0);
}

void printCollectiveTable(const std::vector<json::Value> &ranks,
                          const std::string &title) {
  using Key = std::pair<std::string, std::string>;
  std::map<Key, std::pair<int64_t, int64_t>> total;
  std::map<Key, int64_t> messages;
  std::string perRank;
  for (const json::Value &r : ranks) {
    const json::Value *list = r.get("collectives");
    const json::Value *rank = r.get("rank");
    for (size_t i = 0; list && i < list->elements().size(); ++i) {
      const json::Value &c = list->elements()[i];
      if (!c.get("op") || !c.get("axis") || !c.get("calls") ||
          !c.get("bytes_sent"))
        continue;
      Key k{c.get("op")->getString(), c.get("axis")->getString()};
      total[k].first += c.get("calls")->getInt();
      total[k].second += c.get("bytes_sent")->getInt();
      if (const json::Value *m = c.get("messages"))
        messages[k] += m->getInt();
      const json::Value *m = c.get("messages");
      perRank += format(
          "  %-6lld %-16s %-10s %8lld %9lld %14lld  %s\n",
          rank ? static_cast<long long>(rank->getInt()) : -1LL, k.first.c_str(),
          k.second.c_str(), static_cast<long long>(c.get("calls")->getInt()),
          m ? static_cast<long long>(m->getInt()) : 0LL,
          static_cast<long long>(c.get("bytes_sent")->getInt()),
          humanBytes(double(c.get("bytes_sent")->getInt())).c_str());
    }
  }
  std::printf("\ncollectives (all ranks%s)\n  %-16s %-10s %8s %9s %14s\n",
              title.c_str(), "op", "axis", "calls", "messages", "bytes sent");
  for (const auto &kv : total)
    std::printf("  %-16s %-10s %8lld %9lld %14lld  %s\n",
                kv.first.first.c_str(), kv.first.second.c_str(),
                static_cast<long long>(kv.second.first),
                static_cast<long long>(messages[kv.first]),
                static_cast<long long>(kv.second.second),
                humanBytes(double(kv.second.second)).c_str());
  std::printf("\ncollectives per rank%s\n  %-6s %-16s %-10s %8s %9s %14s\n%s",
              title.c_str(), "rank", "op", "axis", "calls", "messages",
              "bytes sent", perRank.c_str());
}

namespace {

/// Elements of a tensor as doubles (for --check).
std::vector<double> toDoubles(const char *data, int32_t dtype, int64_t n) {
  std::vector<double> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    if (dtype == MOERT_I32)
      out[i] = reinterpret_cast<const int32_t *>(data)[i];
    else if (dtype == MOERT_I64)
      out[i] = static_cast<double>(reinterpret_cast<const int64_t *>(data)[i]);
    else if (dtype == MOERT_F32)
      out[i] = reinterpret_cast<const float *>(data)[i];
    else if (dtype == MOERT_F16)
      out[i] = halfToFloat(reinterpret_cast<const uint16_t *>(data)[i]);
    else
      out[i] = bf16ToFloat(reinterpret_cast<const uint16_t *>(data)[i]);
  }
  return out;
}

/// Compares one output with its reference; prints one line.
bool checkTensor(const SafetensorsFile &ref, const TensorSpec &spec,
                 const std::vector<char> &global, double rtol, double atol) {
  const TensorInfo *t;
  Status s = ref.lookup(spec.name, t);
  if (s.isOk() && t->shape != spec.shape)
    s = supportError(MOERT_ERR_INVALID,
                     "%s: tensor '%s' has shape %s but the "
                     "output is %s",
                     ref.path().c_str(), spec.name.c_str(),
                     shapeString(t->shape).c_str(),
                     shapeString(spec.shape).c_str());
  int64_t n = numElements(spec.shape);
  int32_t refType = isIntDtype(spec.dtype) ? MOERT_I64 : MOERT_F32;
  std::vector<char> expect(static_cast<size_t>(n) * dtypeSize(refType));
  if (s.isOk())
    s = ref.readAll(spec.name, refType, expect.data());
  if (!s.isOk()) {
    report("check: error: %s", s.message().c_str());
    return false;
  }
  std::vector<double> a = toDoubles(global.data(), spec.dtype, n);
  std::vector<double> b = toDoubles(expect.data(), refType, n);
  double maxAbs = 0, maxRel = 0;
  int64_t bad = 0, worst = -1;
  for (int64_t i = 0; i < n; ++i) {
    double err = std::fabs(a[i] - b[i]);
    bool nanOk = std::isnan(a[i]) && std::isnan(b[i]);
    if (nanOk)
      continue;
    if (!(err <= atol + rtol * std::fabs(b[i]))) {
      if (bad++ == 0 || err > std::fabs(a[worst] - b[worst]))
        worst = i;
    }
    maxAbs = std::max(maxAbs, std::isnan(err) ? INFINITY : err);
    // Relative error only where rtol, not atol, sets the tolerance: near-zero
    // reference values make |err/ref| meaningless.
    if (std::fabs(b[i]) >= atol / rtol)
      maxRel =
          std::max(maxRel, std::isnan(err) ? INFINITY : err / std::fabs(b[i]));
  }
  std::printf("check %-40s max abs err %.3e  max rel err %.3e (|ref| >= "
              "%g)  %s\n",
              spec.name.c_str(), maxAbs, maxRel, atol / rtol,
              bad ? "MISMATCH" : "ok");
  if (bad)
    std::printf("  %lld of %lld elements outside atol %g + rtol %g * |ref|; "
                "worst at flat index %lld: got %.9g, expected %.9g\n",
                static_cast<long long>(bad), static_cast<long long>(n), atol,
                rtol, static_cast<long long>(worst), a[worst], b[worst]);
  return bad == 0;
}

} // namespace

std::string rankStats(moert_ctx *ctx, double load, double h2d, double run) {

  json::Value v;
  Status s = json::parse(moert_ctx_stats_json(ctx), "runtime statistics", v);
  if (!s.isOk() || !v.isObject()) {
    v = json::Value::object();
    v.set("rank", static_cast<int64_t>(moert_ctx_rank(ctx)));
  }
  v.set("load_seconds", load);
  v.set("h2d_seconds", h2d);
  v.set("run_seconds", run);
  return json::write(v);
}

Status writeTextFile(const std::string &path, const std::string &text) {
  std::string tmp = format("%s.tmp.%d", path.c_str(), (int)::getpid());
  FILE *f = std::fopen(tmp.c_str(), "wb");
  if (!f)
    return supportError(MOERT_ERR_IO, "%s: cannot write: %s", path.c_str(),
                        std::strerror(errno));
  bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size();
  ok = (std::fclose(f) == 0) && ok;
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    return supportError(MOERT_ERR_IO, "%s: cannot write: %s", path.c_str(),
                        std::strerror(err));
  }
  return Status::ok();
}

Status writeStats(const std::string &path,
                  const std::vector<std::string> &stats) {
  std::string text = "[\n";
  for (size_t r = 0; r < stats.size(); ++r)
    text += "  " + stats[r] + (r + 1 < stats.size() ? ",\n" : "\n");
  return writeTextFile(path, text + "]\n");
}

Status writeTrace(const std::string &path,
                  const std::vector<std::string> &traces) {
  std::string body;
  for (const std::string &t : traces)
    if (!t.empty())
      body += (body.empty() ? "" : ",\n") + t;
  return writeTextFile(path, "[\n" + body + "\n]\n");
}

void printTables(const std::vector<std::string> &stats, const Timings &t) {
  std::vector<json::Value> ranks(stats.size());
  for (size_t r = 0; r < stats.size(); ++r)
    if (!json::parse(stats[r], "statistics", ranks[r]).isOk())
      ranks[r] = json::Value::object();
  std::printf("\nload (rank 0): %.3f s, of which host-to-device %.3f s\n",
              t.loadSeconds, t.h2dSeconds);
  printPhaseTable(ranks[0], "", t.runs, t.runSeconds);
  if (ranks.size() > 1)
    printCollectiveTable(ranks, "");
  std::fflush(stdout);
}

bool checkOutputs(const std::string &refPath, const Entry &entry,
                  const std::vector<std::vector<char>> &globals, double rtol,
                  double atol) {
  std::unique_ptr<SafetensorsFile> ref;
  Status s = SafetensorsFile::open(refPath, ref);
  if (!s.isOk()) {
    report("check: error: %s", s.message().c_str());
    return false;
  }
  bool ok = true;
  for (const TensorSpec &spec : entry.results)
    ok = checkTensor(*ref, spec, globals[spec.index], rtol, atol) && ok;
  std::fflush(stdout);
  return ok;
}

void EntryStats::absorb(const char *statsJson) {
  json::Value v;
  if (!json::parse(statsJson, "statistics", v).isOk())
    return;
  if (const json::Value *ps = v.get("phases"))
    for (const json::Value &p : ps->elements())
      if (p.get("name") && p.get("calls") && p.get("seconds")) {
        auto &acc = phases[p.get("name")->getString()];
        acc.first += p.get("calls")->getInt();
        acc.second += p.get("seconds")->getNumber();
      }
  if (const json::Value *cs = v.get("collectives"))
    for (const json::Value &c : cs->elements())
      if (c.get("op") && c.get("axis") && c.get("calls") &&
          c.get("bytes_sent")) {
        std::pair<std::string, std::string> key{c.get("op")->getString(),
                                                c.get("axis")->getString()};
        auto &acc = collectives[key];
        acc.first += c.get("calls")->getInt();
        acc.second += c.get("bytes_sent")->getInt();
        if (const json::Value *m = c.get("messages"))
          messages[key] += m->getInt();
      }
}

json::Value EntryStats::toJson() const {
  json::Value v = json::Value::object();
  v.set("name", name);
  v.set("runs", runs);
  v.set("seconds", seconds);
  json::Value ps = json::Value::array();
  for (const auto &[n, acc] : phases) {
    json::Value p = json::Value::object();
    p.set("name", n);
    p.set("calls", acc.first);
    p.set("seconds", acc.second);
    ps.push(std::move(p));
  }
  v.set("phases", std::move(ps));
  json::Value cs = json::Value::array();
  for (const auto &[key, acc] : collectives) {
    json::Value c = json::Value::object();
    c.set("op", key.first);
    c.set("axis", key.second);
    c.set("calls", acc.first);
    c.set("bytes_sent", acc.second);
    auto m = messages.find(key);
    c.set("messages", m == messages.end() ? int64_t(0) : m->second);
    cs.push(std::move(c));
  }
  v.set("collectives", std::move(cs));
  return v;
}

void printTrainingTables(const std::vector<std::string> &stats,
                         double loadSeconds, double h2dSeconds) {
  std::vector<json::Value> ranks(stats.size());
  for (size_t r = 0; r < stats.size(); ++r)
    if (!json::parse(stats[r], "statistics", ranks[r]).isOk())
      ranks[r] = json::Value::object();
  std::printf("\nload (rank 0): %.3f s, of which host-to-device %.3f s\n",
              loadSeconds, h2dSeconds);
  const json::Value *mine = ranks.empty() ? nullptr : ranks[0].get("entries");
  for (size_t i = 0; mine && i < mine->elements().size(); ++i) {
    const json::Value &e = mine->elements()[i];
    const json::Value *name = e.get("name"), *runs = e.get("runs"),
                      *secs = e.get("seconds");
    std::string title =
        ", entry " + (name ? name->getString() : std::string("?"));
    printPhaseTable(e, title, runs ? std::max<int64_t>(runs->getInt(), 1) : 1,
                    secs ? secs->getNumber() : 0);
    if (ranks.size() < 2)
      continue;
    std::vector<json::Value> perRank;
    for (const json::Value &r : ranks) {
      const json::Value *es = r.get("entries");
      json::Value entry = es && i < es->elements().size()
                              ? es->elements()[i]
                              : json::Value::object();
      // The per-entry statistics carry no rank: the rank's own record does.
      if (const json::Value *rank = r.get("rank"))
        entry.set("rank", rank->getInt());
      perRank.push_back(std::move(entry));
    }
    printCollectiveTable(perRank, title);
  }
  std::fflush(stdout);
}

} // namespace moe_run
