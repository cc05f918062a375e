//===- MeshSpecTest.cpp - parseMeshSpec, MeshSpec and MeshOp --------------===//
//
// The one parser of mesh specs: what it accepts, the canonical form it
// returns, and a message per kind of mistake (configs.py mirrors them).
//
//===----------------------------------------------------------------------===//
#include "moe/Dialect/MoE/IR/MoE.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinOps.h"

#include <gtest/gtest.h>

using namespace mlir;
using namespace mlir::moe;

namespace {

/// The spec parsed and printed back, or "error: <message>".
std::string roundTrip(StringRef text) {
  llvm::Expected<MeshSpec> spec = parseMeshSpec(text);
  if (!spec)
    return "error: " + llvm::toString(spec.takeError());
  return spec->str();
}

TEST(MeshSpecTest, KnownAxesAreDefinedOnceInCanonicalOrder) {
  ASSERT_EQ(getKnownMeshAxes().size(), 3u);
  EXPECT_EQ(getKnownMeshAxes()[0], kAxisDP);
  EXPECT_EQ(getKnownMeshAxes()[1], kAxisEP);
  EXPECT_EQ(getKnownMeshAxes()[2], kAxisTP);
  EXPECT_EQ(getKnownMeshAxesString(), "dp, ep, tp");
}

TEST(MeshSpecTest, ParsesIntoCanonicalOrderWithDefaults) {
  llvm::Expected<MeshSpec> spec = parseMeshSpec("dp=1,ep=2,tp=2");
  ASSERT_TRUE(bool(spec)) << llvm::toString(spec.takeError());
  ASSERT_EQ(spec->axes.size(), 3u);
  EXPECT_EQ(spec->axes[1].name, "ep");
  EXPECT_EQ(spec->axes[1].size, 2);
  EXPECT_EQ(spec->getNumRanks(), 4);
  EXPECT_EQ(roundTrip("tp=4"), "dp=1,ep=1,tp=4");
  EXPECT_EQ(roundTrip("tp=2,dp=3"), "dp=3,ep=1,tp=2");
  EXPECT_EQ(roundTrip(" ep = 8 , tp=2 "), "dp=1,ep=8,tp=2");
  EXPECT_EQ(roundTrip("ep=08"), "dp=1,ep=8,tp=1");
}

TEST(MeshSpecTest, SizeOfAnAbsentAxisIsOne) {
  MeshSpec spec;
  spec.axes.push_back({"ep", 4});
  EXPECT_EQ(spec.getSize("ep"), 4);
  EXPECT_EQ(spec.getSize("tp"), 1);
  EXPECT_TRUE(spec.hasAxis("ep"));
  EXPECT_FALSE(spec.hasAxis("tp"));
  EXPECT_EQ(spec.str(), "ep=4");
}

TEST(MeshSpecTest, ErrorsNameTheBadPart) {
  EXPECT_EQ(roundTrip(""), "error: empty mesh spec (expected axis=size "
                           "pairs, e.g. dp=1,ep=2,tp=2)");
  EXPECT_EQ(roundTrip("  "), roundTrip(""));
  EXPECT_EQ(roundTrip("ep=2,,tp=2"),
            "error: empty entry in 'ep=2,,tp=2' (expected axis=size pairs "
            "separated by commas)");
  EXPECT_EQ(roundTrip("ep=2,"), "error: empty entry in 'ep=2,' (expected "
                                "axis=size pairs separated by commas)");
  EXPECT_EQ(roundTrip("ep"), "error: 'ep' is not axis=size (e.g. ep=2)");
  EXPECT_EQ(roundTrip("=2"), "error: '=2' is not axis=size (e.g. ep=2)");
  EXPECT_EQ(roundTrip("ep=2,xp=2"),
            "error: unknown axis 'xp' (axes are dp, ep, tp)");
  EXPECT_EQ(roundTrip("ep=2,ep=4"),
            "error: axis 'ep' is given twice ('ep=2' and 'ep=4')");
  EXPECT_EQ(roundTrip("ep=2, tp=1 ,ep=2"),
            "error: axis 'ep' is given twice ('ep=2' and 'ep=2')");
  EXPECT_EQ(roundTrip("ep=0"), "error: 'ep=0': size 0 is not a positive "
                               "integer");
  EXPECT_EQ(roundTrip("ep=-2"), "error: 'ep=-2': size '-2' is not a "
                                "positive integer");
  EXPECT_EQ(roundTrip("ep=two"), "error: 'ep=two': size 'two' is not a "
                                 "positive integer");
  EXPECT_EQ(roundTrip("ep="), "error: 'ep=': size '' is not a positive "
                              "integer");
  EXPECT_EQ(roundTrip("ep=2.5"), "error: 'ep=2.5': size '2.5' is not a "
                                 "positive integer");
  EXPECT_EQ(roundTrip("ep=99999999999999999999"),
            "error: 'ep=99999999999999999999': size 99999999999999999999 is "
            "too large");
  EXPECT_EQ(roundTrip("dp=65536,ep=65536"),
            "error: 'dp=65536,ep=65536' has more than 2147483647 ranks");
  EXPECT_EQ(roundTrip("dp=9223372036854775807,ep=2"),
            "error: 'dp=9223372036854775807,ep=2' has more than 2147483647 "
            "ranks");
  EXPECT_EQ(roundTrip("dp=46341,ep=46340"), "dp=46341,ep=46340,tp=1");
}

TEST(MeshSpecTest, MeshOpIsBuiltFromAndReadBackAsASpec) {
  MLIRContext context;
  context.loadDialect<MoEDialect>();
  OpBuilder b(&context);
  OwningOpRef<ModuleOp> module = ModuleOp::create(b.getUnknownLoc());
  b.setInsertionPointToEnd(module->getBody());
  llvm::Expected<MeshSpec> spec = parseMeshSpec("dp=2,ep=4");
  ASSERT_TRUE(bool(spec));
  auto mesh = MeshOp::create(b, b.getUnknownLoc(), "mesh", *spec);
  EXPECT_EQ(mesh.getSpec(), *spec);
  EXPECT_EQ(mesh.getAxisSize(kAxisEP), 4);
  EXPECT_EQ(mesh.getAxisSize(kAxisTP), 1);
  EXPECT_EQ(mesh.getAxisSize("pp"), 1);
  EXPECT_EQ(mesh.getNumRanks(), 8);
  EXPECT_EQ(mesh.getAxisIndex(kAxisTP), 2);
}

} // namespace
