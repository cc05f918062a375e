//===- RuntimeAbiTest.cpp - The kernel ABI as the lowering sees it --------===//
//
// Types derived from moert_kernels.def, the checks KernelCallBuilder makes
// on every argument (internal errors of the lowering, which lit cannot
// reach), and the enum and dtype maps to the MOERT_* constants. (Spelled
// moe::abi: gtest brings in <cxxabi.h>, whose global alias `abi` would
// make a bare abi:: ambiguous.)
//
//===----------------------------------------------------------------------===//
#include "moe/Conversion/RuntimeAbi.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/LLVMIR/LLVMDialect.h"
#include "mlir/IR/Diagnostics.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

using namespace mlir;
using namespace mlir::moe;

namespace {

std::string str(Type t) {
  std::string s;
  llvm::raw_string_ostream os(s);
  t.print(os);
  return s;
}

class RuntimeAbiTest : public ::testing::Test {
protected:
  RuntimeAbiTest() : builder(&context) {
    context.loadDialect<MoEDialect, func::FuncDialect, arith::ArithDialect,
                        LLVM::LLVMDialect>();
    handler = std::make_unique<ScopedDiagnosticHandler>(
        &context, [this](Diagnostic &d) {
          messages.push_back(d.str());
          return success();
        });
    module = ModuleOp::create(builder.getUnknownLoc());
    ptr = LLVM::LLVMPointerType::get(&context);
    // A function (ctx, a, b, y) to emit calls into.
    auto f =
        func::FuncOp::create(builder, builder.getUnknownLoc(), "f",
                             builder.getFunctionType({ptr, ptr, ptr, ptr}, {}));
    module->push_back(f);
    Block *b = f.addEntryBlock();
    builder.setInsertionPointToStart(b);
    args = b->getArguments();
  }

  Value i64(int64_t v) {
    return arith::ConstantOp::create(builder, loc(),
                                     builder.getI64IntegerAttr(v));
  }
  Value i32(int64_t v) {
    return arith::ConstantOp::create(builder, loc(),
                                     builder.getI32IntegerAttr(v));
  }
  Location loc() { return builder.getUnknownLoc(); }
  int countCalls() {
    int n = 0;
    module->walk([&](func::CallOp) { ++n; });
    return n;
  }

  MLIRContext context;
  OpBuilder builder;
  OwningOpRef<ModuleOp> module;
  Type ptr;
  ValueRange args;
  std::unique_ptr<ScopedDiagnosticHandler> handler;
  std::vector<std::string> messages;
};

TEST_F(RuntimeAbiTest, FunctionTypesComeFromTheCTypes) {
  EXPECT_EQ(str(moe::abi::functionType<moe::abi::moert_rmsnorm>(&context)),
            "(!llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, i64, i64, f32, i32) "
            "-> ()");
  EXPECT_EQ(str(moe::abi::functionType<moe::abi::moert_topk>(&context)),
            "(!llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, "
            "!llvm.ptr, i64, i64, i64, i32, i32, f32, i64, i64, i32) -> ()");
  EXPECT_EQ(str(moe::abi::functionType<moe::abi::moert_arena>(&context)),
            "(!llvm.ptr, i64) -> !llvm.ptr");
  EXPECT_EQ(
      str(moe::abi::functionType<moe::abi::moert_all_reduce_start>(&context)),
      "(!llvm.ptr, i64, !llvm.ptr, !llvm.ptr, i64, i32) -> !llvm.ptr");
  // Parameters keep their C spelling and name, in ABI order.
  auto params = moe::abi::argsOf(moe::abi::moert_add{});
  ASSERT_EQ(params.size(), 5u);
  EXPECT_STREQ(params[3].cType, "int64_t");
  EXPECT_STREQ(params[3].name, "n");
  EXPECT_STREQ(params[2].cType, "void *");
  EXPECT_STREQ(params[2].name, "y");
}

TEST_F(RuntimeAbiTest, CallDeclaresTheKernelOnce) {
  moe::abi::KernelCallBuilder calls(*module, builder, args[0]);
  auto add = [&] {
    return calls.call(loc(), moe::abi::moert_add{.a = args[1],
                                                 .b = args[2],
                                                 .y = args[3],
                                                 .n = i64(16),
                                                 .dtype = i32(MOERT_F32)});
  };
  ASSERT_TRUE(succeeded(add()));
  ASSERT_TRUE(succeeded(add()));
  auto decl = module->lookupSymbol<func::FuncOp>("moert_add");
  ASSERT_TRUE(decl);
  EXPECT_TRUE(decl.isPrivate());
  EXPECT_EQ(decl.getFunctionType(),
            moe::abi::functionType<moe::abi::moert_add>(&context));
  EXPECT_EQ(countCalls(), 2);
  FailureOr<Value> h =
      calls.callValue(loc(), moe::abi::moert_arena{.bytes = i64(256)});
  ASSERT_TRUE(succeeded(h));
  EXPECT_EQ(h->getType(), ptr);
  EXPECT_TRUE(messages.empty());
}

TEST_F(RuntimeAbiTest, AWronglyTypedArgumentIsAnInternalError) {
  moe::abi::KernelCallBuilder calls(*module, builder, args[0]);
  LogicalResult r =
      calls.call(loc(), moe::abi::moert_add{.a = args[1],
                                            .b = args[2],
                                            .y = args[3],
                                            .n = i32(16), // not i64
                                            .dtype = i32(MOERT_F32)});
  EXPECT_TRUE(failed(r));
  ASSERT_EQ(messages.size(), 1u);
  EXPECT_EQ(messages[0],
            "internal error in moe-to-runtime: parameter 'int64_t n' of "
            "moert_add is passed as 'i64', got a value of type 'i32'");
  EXPECT_EQ(countCalls(), 0);
}

TEST_F(RuntimeAbiTest, AMissingArgumentIsAnInternalError) {
  moe::abi::KernelCallBuilder calls(*module, builder, args[0]);
  moe::abi::moert_add add{.a = args[1],
                          .b = args[2],
                          .y = args[3],
                          .n = i64(16),
                          .dtype = i32(MOERT_F32)};
  add.b = Value();
  EXPECT_TRUE(failed(calls.call(loc(), add)));
  ASSERT_EQ(messages.size(), 1u);
  EXPECT_EQ(messages[0], "internal error in moe-to-runtime: no value for "
                         "parameter 'const void * b' of moert_add");
}

TEST_F(RuntimeAbiTest, AConflictingDeclarationIsRefused) {
  OpBuilder mb = OpBuilder::atBlockBegin(module->getBody());
  auto wrong = func::FuncOp::create(mb, loc(), "moert_wait",
                                    mb.getFunctionType({ptr, ptr, ptr}, {}));
  wrong.setPrivate();
  moe::abi::KernelCallBuilder calls(*module, builder, args[0]);
  EXPECT_TRUE(
      failed(calls.call(loc(), moe::abi::moert_wait{.handle = args[1]})));
  ASSERT_EQ(messages.size(), 1u);
  EXPECT_NE(messages[0].find("'moert_wait' is declared with type "
                             "'(!llvm.ptr, !llvm.ptr, !llvm.ptr) -> ()', but "
                             "the runtime ABI (moert_kernels.def) gives it "
                             "the type '(!llvm.ptr, !llvm.ptr) -> ()'"),
            std::string::npos)
      << messages[0];
}

TEST_F(RuntimeAbiTest, AbiVersionGlobal) {
  ASSERT_TRUE(succeeded(moe::abi::addAbiVersion(*module)));
  auto g = module->lookupSymbol<LLVM::GlobalOp>("moe_abi_version");
  ASSERT_TRUE(g);
  EXPECT_TRUE(g.getConstant());
  EXPECT_EQ(g.getLinkage(), LLVM::Linkage::External);
  EXPECT_EQ(cast<IntegerAttr>(*g.getValue()).getInt(), MOERT_ABI_VERSION);
  EXPECT_TRUE(g.getGlobalType().isInteger(32));
  // A second one would clash.
  EXPECT_TRUE(failed(moe::abi::addAbiVersion(*module)));
}

// Every case of each ODS enum maps to the MOERT_* constant of the same name.
TEST(RuntimeAbiEnums, MapByName) {
  const std::pair<const char *, moert_score_fn> scores[] = {
      {"softmax", MOERT_SCORE_SOFTMAX}, {"sigmoid", MOERT_SCORE_SIGMOID}};
  ASSERT_EQ(std::size(scores), getMaxEnumValForScoreFunc() + 1);
  for (auto [name, code] : scores)
    EXPECT_EQ(moe::abi::toMoert(*symbolizeScoreFunc(name)), code) << name;

  const std::pair<const char *, moert_group_score> groups[] = {
      {"max", MOERT_GROUP_SCORE_MAX}, {"top2_sum", MOERT_GROUP_SCORE_TOP2_SUM}};
  ASSERT_EQ(std::size(groups), getMaxEnumValForGroupScore() + 1);
  for (auto [name, code] : groups)
    EXPECT_EQ(moe::abi::toMoert(*symbolizeGroupScore(name)), code) << name;

  const std::pair<const char *, moert_activation> acts[] = {
      {"relu", MOERT_ACT_RELU},
      {"gelu", MOERT_ACT_GELU},
      {"swiglu", MOERT_ACT_SWIGLU},
      {"geglu", MOERT_ACT_GEGLU}};
  ASSERT_EQ(std::size(acts), getMaxEnumValForActivation() + 1);
  for (auto [name, code] : acts)
    EXPECT_EQ(moe::abi::toMoert(*symbolizeActivation(name)), code) << name;
}

TEST(RuntimeAbiEnums, Dtypes) {
  MLIRContext context;
  Builder b(&context);
  EXPECT_EQ(moe::abi::toMoertDtype(b.getF32Type()), MOERT_F32);
  EXPECT_EQ(moe::abi::toMoertDtype(b.getF16Type()), MOERT_F16);
  EXPECT_EQ(moe::abi::toMoertDtype(b.getBF16Type()), MOERT_BF16);
  EXPECT_EQ(moe::abi::toMoertDtype(b.getI32Type()), MOERT_I32);
  EXPECT_EQ(moe::abi::toMoertDtype(b.getI64Type()), MOERT_I64);
  EXPECT_EQ(moe::abi::toMoertDtype(b.getF64Type()), std::nullopt);
  EXPECT_EQ(moe::abi::toMoertDtype(b.getI8Type()), std::nullopt);
}

} // namespace
