//===- LinkEmulator.cpp - A slower link around any communicator -----------===//
//
// emulateLink wraps a communicator so that each collective completes no
// earlier than alpha + bytes / bandwidth after it started: the transfer
// itself runs at the inner communicator's speed, and wait() then sleeps
// until the modelled time has passed. Only link time is modelled: no
// contention between collectives, no congestion, no topology, no CPU cost of
// the protocol. The data are the inner communicator's, unchanged.
//
//===----------------------------------------------------------------------===//
#include "base/Dtype.h"
#include "comm/Communicator.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <iterator>
#include <thread>

namespace moert {

namespace {

//===----------------------------------------------------------------------===//
// The spec
//===----------------------------------------------------------------------===//

struct Unit {
  const char *name;
  double factor;
};

/// "<number><unit>" with one of `units`; the number finite and >= 0.
Status parseQuantity(const std::string &part, const std::string &text,
                     const Unit *units, size_t numUnits, const char *expect,
                     double &out) {
  const char *begin = text.c_str();
  char *end = nullptr;
  errno = 0;
  double v = std::strtod(begin, &end);
  if (end == begin || errno || !std::isfinite(v) || v < 0)
    return error(MOERT_ERR_INVALID,
                 "--net: '%s': expected a non-negative number followed by a "
                 "unit (%s)",
                 part.c_str(), expect);
  std::string unit(end);
  for (size_t i = 0; i < numUnits; ++i)
    if (unit == units[i].name) {
      out = v * units[i].factor;
      return Status::ok();
    }
  return error(MOERT_ERR_INVALID, "--net: '%s': %s unit '%s' (expected %s)",
               part.c_str(), unit.empty() ? "missing" : "unknown", unit.c_str(),
               expect);
}

const Unit kTimeUnits[] = {{"s", 1}, {"ms", 1e-3}, {"us", 1e-6}, {"ns", 1e-9}};
const Unit kRateUnits[] = {
    {"B/s", 1},        {"kB/s", 1e3},        {"KB/s", 1e3},
    {"MB/s", 1e6},     {"GB/s", 1e9},        {"TB/s", 1e12},
    {"KiB/s", 1024.0}, {"MiB/s", 1048576.0}, {"GiB/s", 1073741824.0},
    {"bit/s", 0.125},  {"kbit/s", 125.0},    {"Mbit/s", 125e3},
    {"Gbit/s", 125e6}, {"Tbit/s", 125e9}};

Status setParameter(const std::string &part, const std::string &kv,
                    AxisLink &link, bool &haveAlpha, bool &haveBw) {
  size_t eq = kv.find('=');
  if (eq == std::string::npos)
    return error(MOERT_ERR_INVALID,
                 "--net: '%s': expected KEY=VALUE (alpha=50us or bw=1GB/s)",
                 part.c_str());
  std::string key = kv.substr(0, eq), value = kv.substr(eq + 1);
  if (key == "alpha") {
    if (haveAlpha)
      return error(MOERT_ERR_INVALID,
                   "--net: '%s': alpha of axis '%s' given "
                   "twice",
                   part.c_str(), link.axis.c_str());
    haveAlpha = true;
    return parseQuantity(part, value, kTimeUnits, std::size(kTimeUnits),
                         "s, ms, us or ns", link.model.alphaSeconds);
  }
  if (key == "bw") {
    if (haveBw)
      return error(MOERT_ERR_INVALID,
                   "--net: '%s': bw of axis '%s' given "
                   "twice",
                   part.c_str(), link.axis.c_str());
    haveBw = true;
    MOERT_TRY(parseQuantity(part, value, kRateUnits, std::size(kRateUnits),
                            "B/s, KB/s, MB/s, GB/s, TB/s, KiB/s, MiB/s, GiB/s "
                            "or bit/s, Mbit/s, Gbit/s, ...",
                            link.model.bytesPerSecond));
    if (link.model.bytesPerSecond <= 0)
      return error(MOERT_ERR_INVALID,
                   "--net: '%s': the bandwidth must be "
                   "positive",
                   part.c_str());
    return Status::ok();
  }
  return error(MOERT_ERR_INVALID,
               "--net: '%s': unknown parameter '%s' (expected alpha or bw)",
               part.c_str(), key.c_str());
}

bool validAxisName(const std::string &a) {
  if (a.empty())
    return false;
  for (char c : a)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_'))
      return false;
  return true;
}

//===----------------------------------------------------------------------===//
// The wrapper
//===----------------------------------------------------------------------===//

class EmulatedRequest final : public Request {
public:
  EmulatedRequest(std::unique_ptr<Request> inner, double deadline)
      : inner_(std::move(inner)), deadline_(deadline) {}

  Status wait() override {
    if (inner_)
      MOERT_TRY(inner_->wait());
    sleepUntil(deadline_);
    if (at_ < 0)
      at_ = std::max(deadline_, steadySeconds());
    return Status::ok();
  }
  bool done() const override {
    return (!inner_ || inner_->done()) && steadySeconds() >= deadline_;
  }
  double completedAt() const override {
    if (at_ >= 0)
      return at_;
    if (!done())
      return -1;
    return std::max(deadline_, inner_ ? inner_->completedAt() : deadline_);
  }

  static void sleepUntil(double deadline) {
    // Sleeping is the cheapest wait: it leaves the cores to computing ranks.
    double left = deadline - steadySeconds();
    if (left > 0)
      std::this_thread::sleep_for(std::chrono::duration<double>(left));
    while (steadySeconds() < deadline)
      std::this_thread::yield();
  }

private:
  std::unique_ptr<Request> inner_;
  double deadline_;
  double at_ = -1;
};

class EmulatedCommunicator final : public Communicator {
public:
  EmulatedCommunicator(std::unique_ptr<Communicator> inner, LinkModel model,
                       std::vector<LinkModel> peers)
      : inner_(std::move(inner)), model_(model), peers_(std::move(peers)) {}

  const char *name() const override { return inner_->name(); }
  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  bool deviceBuffers() const override { return inner_->deviceBuffers(); }
  int localRanks() const override { return inner_->localRanks(); }

  Status split(int color, int key,
               std::unique_ptr<Communicator> &out) override {
    std::unique_ptr<Communicator> child;
    MOERT_TRY(inner_->split(color, key, child));
    out = emulateLink(std::move(child), model_);
    return Status::ok();
  }

  Status allToAllV(const void *send, const int64_t *sendBytes,
                   const int64_t *sendDispls, void *recv,
                   const int64_t *recvBytes, const int64_t *recvDispls,
                   const char *what, std::unique_ptr<Request> *req) override {
    // A pairwise exchange: one message to (and from) each peer, each over
    // its own link, one after the other (the cost model's all-to-all); a
    // group of one still pays one latency, as every emulated collective.
    double seconds = size() > 1 ? 0 : model_.seconds(0);
    for (int p = 0; p < size(); ++p)
      if (p != rank()) {
        const LinkModel &link =
            peers_.size() == size_t(size()) ? peers_[p] : model_;
        seconds += link.seconds(std::max(sendBytes[p], recvBytes[p]));
      }
    double start = steadySeconds();
    std::unique_ptr<Request> r;
    MOERT_TRY(inner_->allToAllV(send, sendBytes, sendDispls, recv, recvBytes,
                                recvDispls, what, &r));
    return finishAt(std::move(r), start + seconds, req);
  }
  Status allGather(const void *send, void *recv, int64_t bytes,
                   const char *what, std::unique_ptr<Request> *req) override {
    double start = steadySeconds();
    std::unique_ptr<Request> r;
    MOERT_TRY(inner_->allGather(send, recv, bytes, what, &r));
    return finish(std::move(r), start, (size() - 1) * bytes, req);
  }
  Status allReduce(const void *send, void *recv, int64_t n, int32_t dtype,
                   const char *what, std::unique_ptr<Request> *req) override {
    double start = steadySeconds();
    std::unique_ptr<Request> r;
    MOERT_TRY(inner_->allReduce(send, recv, n, dtype, what, &r));
    int64_t bytes = n * static_cast<int64_t>(dtypeSize(dtype));
    return finish(std::move(r), start, 2 * (size() - 1) * bytes / size(), req);
  }
  Status reduceScatter(const void *send, void *recv, int64_t n, int32_t dtype,
                       const char *what,
                       std::unique_ptr<Request> *req) override {
    double start = steadySeconds();
    std::unique_ptr<Request> r;
    MOERT_TRY(inner_->reduceScatter(send, recv, n, dtype, what, &r));
    int64_t bytes = n * static_cast<int64_t>(dtypeSize(dtype));
    return finish(std::move(r), start, (size() - 1) * bytes, req);
  }

  Status barrier(const char *what) override { return inner_->barrier(what); }
  Status broadcastHost(void *buf, int64_t bytes, int root,
                       const char *what) override {
    return inner_->broadcastHost(buf, bytes, root, what);
  }
  Status gatherHost(const void *send, void *recv, int64_t bytes, int root,
                    const char *what) override {
    return inner_->gatherHost(send, recv, bytes, root, what);
  }
  Status allGatherHost(const void *send, void *recv, int64_t bytes,
                       const char *what) override {
    return inner_->allGatherHost(send, recv, bytes, what);
  }

private:
  Status finish(std::unique_ptr<Request> inner, double start, int64_t bytes,
                std::unique_ptr<Request> *req) {
    return finishAt(std::move(inner), start + model_.seconds(bytes), req);
  }
  Status finishAt(std::unique_ptr<Request> inner, double deadline,
                  std::unique_ptr<Request> *req) {
    auto r = std::make_unique<EmulatedRequest>(std::move(inner), deadline);
    if (req) {
      *req = std::move(r);
      return Status::ok();
    }
    return r->wait();
  }

  std::unique_ptr<Communicator> inner_;
  LinkModel model_;
  std::vector<LinkModel> peers_;
};

} // namespace

Status parseLinkSpec(const std::string &spec, std::vector<AxisLink> &out) {
  out.clear();
  if (spec.empty())
    return error(MOERT_ERR_INVALID,
                 "--net: empty; expected AXIS:alpha=TIME,bw=RATE (e.g. "
                 "ep:alpha=50us,bw=1GB/s)");
  std::vector<std::string> parts;
  size_t from = 0;
  for (size_t i = 0; i <= spec.size(); ++i)
    if (i == spec.size() || spec[i] == ',' || spec[i] == ';') {
      parts.push_back(spec.substr(from, i - from));
      from = i + 1;
    }
  bool haveAlpha = false, haveBw = false;
  auto closeAxis = [&]() -> Status {
    if (!out.empty() && !haveAlpha && !haveBw)
      return error(MOERT_ERR_INVALID,
                   "--net: axis '%s' has neither alpha nor bw",
                   out.back().axis.c_str());
    return Status::ok();
  };
  for (const std::string &part : parts) {
    if (part.empty())
      return error(MOERT_ERR_INVALID, "--net: empty entry in '%s'",
                   spec.c_str());
    size_t colon = part.find(':');
    std::string kv = part;
    if (colon != std::string::npos) {
      MOERT_TRY(closeAxis());
      AxisLink link;
      link.axis = part.substr(0, colon);
      if (!validAxisName(link.axis))
        return error(MOERT_ERR_INVALID, "--net: '%s': '%s' is not an axis name",
                     part.c_str(), link.axis.c_str());
      for (const AxisLink &l : out)
        if (l.axis == link.axis)
          return error(MOERT_ERR_INVALID, "--net: axis '%s' given twice",
                       link.axis.c_str());
      out.push_back(link);
      haveAlpha = haveBw = false;
      kv = part.substr(colon + 1);
    } else if (out.empty()) {
      return error(MOERT_ERR_INVALID,
                   "--net: '%s': expected AXIS:KEY=VALUE first (e.g. "
                   "ep:alpha=50us)",
                   part.c_str());
    }
    MOERT_TRY(setParameter(part, kv, out.back(), haveAlpha, haveBw));
  }
  return closeAxis();
}

std::unique_ptr<Communicator> emulateLink(std::unique_ptr<Communicator> inner,
                                          const LinkModel &model,
                                          std::vector<LinkModel> peers) {
  return std::make_unique<EmulatedCommunicator>(std::move(inner), model,
                                                std::move(peers));
}

} // namespace moert
