//===- Routing.cpp - moe-run --dump-routing / --replay-routing ------------===//
#include "Routing.h"

#include "support/Format.h"
#include "support/Safetensors.h"

using namespace moert;

namespace moe_run {

bool isRoutingTensor(const TensorSpec &spec) {
  return spec.name.rfind("routing.", 0) == 0;
}

Status checkRoutingEntry(const Entry &entry, bool dump, bool replay) {
  bool results = false, inputs = false;
  for (const TensorSpec &r : entry.results)
    results = results || isRoutingTensor(r);
  for (const TensorSpec &a : entry.args)
    inputs = inputs || (a.role == "input" && isRoutingTensor(a));
  if (dump && !results)
    return supportError(MOERT_ERR_INVALID,
                        "--dump-routing: entry '%s' returns no routing.* "
                        "tensors: compile the model with moe-compile --routing",
                        entry.name.c_str());
  if (replay && !inputs)
    return supportError(MOERT_ERR_INVALID,
                        "--replay-routing: entry '%s' takes no routing.* "
                        "input: compile the model with moe-compile --routing",
                        entry.name.c_str());
  return Status::ok();
}

Status writeRouting(const std::string &path, const Entry &entry,
                    const std::vector<std::vector<char>> &globals) {
  std::vector<TensorData> tensors;
  std::string layers;
  for (const TensorSpec &r : entry.results) {
    if (!isRoutingTensor(r))
      continue;
    tensors.push_back({r.name, r.dtype, r.shape, globals[r.index].data()});
    const std::string suffix = ".experts";
    if (r.name.size() > suffix.size() &&
        r.name.compare(r.name.size() - suffix.size(), suffix.size(), suffix) ==
            0) {
      std::string layer = r.name.substr(8, r.name.size() - 8 - suffix.size());
      layers += (layers.empty() ? "" : ",") + layer;
    }
  }
  return writeSafetensors(path, tensors,
                          {{"format", "moe-routing"},
                           {"version", "1"},
                           {"layers", layers},
                           {"entry", entry.name}});
}

} // namespace moe_run
