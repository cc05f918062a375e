//===- ContextTest.cpp - Context creation, memory, sticky errors, stats ---===//
#include "core/Context.h"
#include "RuntimeTestUtil.h"

#include <cblas.h>

#include <cstring>
#include <functional>

using namespace moert_test;

namespace {

moert_status createWithMesh(std::vector<int64_t> shape,
                            std::vector<const char *> names, moert_ctx **ctx) {
  moert_ctx_options o;
  moert_ctx_options_init(&o);
  o.mesh_rank = static_cast<int32_t>(shape.size());
  o.mesh_shape = shape.data();
  o.mesh_axes = names.data();
  return moert_ctx_create(&o, ctx);
}

TEST(ContextCreate, RejectsNullOptions) {
  moert_ctx *ctx = reinterpret_cast<moert_ctx *>(1);
  EXPECT_EQ(moert_ctx_create(nullptr, &ctx), MOERT_ERR_INVALID);
  EXPECT_NE(std::string(moert_last_error()).find("options is null"),
            std::string::npos)
      << moert_last_error();
}

TEST(ContextCreate, MeshMustCoverTheWorld) {
  moert_ctx *ctx = nullptr;
  EXPECT_EQ(createWithMesh({2, 2}, {"ep", "tp"}, &ctx), MOERT_ERR_INVALID);
  EXPECT_EQ(ctx, nullptr);
  EXPECT_STREQ(moert_last_error(), "moert_ctx_create: the mesh [2x2] has 4 "
                                   "ranks but the world has 1");
}

TEST(ContextCreate, RejectsUnknownEnumsAndBadAxes) {
  moert_ctx_options o;
  moert_ctx *ctx = nullptr;
  moert_ctx_options_init(&o);
  o.device = 7;
  EXPECT_EQ(moert_ctx_create(&o, &ctx), MOERT_ERR_INVALID);
  EXPECT_NE(std::string(moert_last_error()).find("unknown device 7"),
            std::string::npos);
  moert_ctx_options_init(&o);
  o.comm = MOERT_COMM_NCCL; // needs the CUDA device
  EXPECT_EQ(moert_ctx_create(&o, &ctx), MOERT_ERR_INVALID);
  EXPECT_NE(std::string(moert_last_error()).find("nccl"), std::string::npos);
  EXPECT_EQ(createWithMesh({1, 0}, {"ep", "tp"}, &ctx), MOERT_ERR_INVALID);
  EXPECT_NE(std::string(moert_last_error()).find("mesh axis 1 has size 0"),
            std::string::npos);
}

TEST(ContextCreate, MeshOfOnesPlacesRankAtOrigin) {
  moert_ctx *ctx = nullptr;
  ASSERT_EQ(createWithMesh({1, 1, 1}, {"dp", "ep", "tp"}, &ctx), MOERT_OK)
      << moert_last_error();
  EXPECT_EQ(moert_ctx_rank(ctx), 0);
  EXPECT_EQ(moert_ctx_world_size(ctx), 1);
  for (int32_t axis = 0; axis < 3; ++axis)
    EXPECT_EQ(moert_ctx_coord(ctx, axis), 0);
  EXPECT_EQ(moert_ctx_coord(ctx, 3), -1);
  moert_ctx_destroy(ctx);
}

TEST(ContextCreate, NumThreadsSetsTheBlasPoolAndKeepsResults) {
  int saved = openblas_get_num_threads();
  int64_t T = 64, D = 512;
  std::vector<float> x = randomVec(T * D, 30), w = randomVec(D, 31);
  std::vector<float> one(T * D), many(T * D);
  moert_ctx_options o;
  moert_ctx_options_init(&o);
  o.num_threads = 1;
  moert_ctx *ctx = nullptr;
  ASSERT_EQ(moert_ctx_create(&o, &ctx), MOERT_OK);
  EXPECT_EQ(openblas_get_num_threads(), 1);
  moert_rmsnorm(ctx, x.data(), w.data(), one.data(), T, D, 1e-6f, MOERT_F32);
  moert_ctx_destroy(ctx);
  o.num_threads = 2;
  ASSERT_EQ(moert_ctx_create(&o, &ctx), MOERT_OK);
  moert_rmsnorm(ctx, x.data(), w.data(), many.data(), T, D, 1e-6f, MOERT_F32);
  EXPECT_EQ(moert_ctx_status(ctx), MOERT_OK);
  moert_ctx_destroy(ctx);
  EXPECT_EQ(one, many) << "rows do not depend on the thread count";
  openblas_set_num_threads(saved);
}

using Context = CpuRuntimeTest;

TEST_F(Context, AllocAndCopiesRoundTrip) {
  std::vector<float> host = randomVec(100, 1), back(100, 0.0f);
  void *dev = nullptr;
  ASSERT_EQ(moert_alloc(ctx, 400, &dev), MOERT_OK);
  ASSERT_NE(dev, nullptr);
  EXPECT_EQ(moert_copy_to_device(ctx, dev, host.data(), 400), MOERT_OK);
  EXPECT_EQ(moert_copy_to_host(ctx, back.data(), dev, 400), MOERT_OK);
  EXPECT_EQ(back, host);
  EXPECT_EQ(moert_synchronize(ctx), MOERT_OK);
  moert_free(ctx, dev);
  EXPECT_TRUE(ok());
}

TEST_F(Context, AllocRejectsNegativeSize) {
  void *dev = nullptr;
  EXPECT_EQ(moert_alloc(ctx, -1, &dev), MOERT_ERR_INVALID);
  EXPECT_EQ(err(), "moert_alloc: bytes (-1) must not be negative");
  EXPECT_STREQ(moert_last_error(), err().c_str());
  moert_ctx_clear_error(ctx);
}

TEST_F(Context, ArenaGrowsOnlyForLargerRequests) {
  void *small = moert_arena(ctx, 1000);
  ASSERT_NE(small, nullptr);
  EXPECT_EQ(moert_arena(ctx, 500), small);
  EXPECT_EQ(moert_arena(ctx, 1000), small);
  auto *big = static_cast<char *>(moert_arena(ctx, 1 << 20));
  ASSERT_NE(big, nullptr);
  std::memset(big, 1, 1 << 20); // the whole request is usable
  EXPECT_EQ(moert_arena(ctx, 10), big);
  EXPECT_TRUE(ok());
}

TEST_F(Context, CopyKernelCopies) {
  std::vector<float> a = randomVec(33, 2), b(33, 0.0f);
  moert_copy(ctx, a.data(), b.data(), 33 * sizeof(float));
  EXPECT_TRUE(ok());
  EXPECT_EQ(a, b);
}

TEST_F(Context, RegroupTransposesRowBlocks) {
  // counts [A = 2, G = 3 x K = 2]: blocks (a, g, k) of rows, packed; the
  // result holds them in the order (g, a, k), the rest zero.
  const int32_t counts[12] = {1, 0, 2, 1, 0, 3, /* a = 1 */ 2, 1, 0, 0, 1, 1};
  const int64_t rows = 16, width = 3, total = 12;
  std::vector<float> in(rows * width), out(rows * width, -1.0f);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < width; ++c)
      in[r * width + c] = r < total ? float(r * 10 + c) : 0.0f;
  int32_t newCounts[12] = {};
  moert_regroup(ctx, in.data(), counts, out.data(), newCounts, 2, 3, 2,
                width * int64_t(sizeof(float)), rows);
  ASSERT_TRUE(ok()) << err();
  // Input blocks (row ranges): a0g0 [0,1) a0g1 [1,4) a0g2 [4,7)
  // a1g0 [7,10) a1g1 [10,10) a1g2 [10,12). Output order: a0g0 a1g0 a0g1 a1g1
  // a0g2 a1g2.
  const int64_t order[12] = {0, 7, 8, 9, 1, 2, 3, 4, 5, 6, 10, 11};
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < width; ++c)
      EXPECT_EQ(out[r * width + c], r < total ? in[order[r] * width + c] : 0.0f)
          << "row " << r;
  const int32_t want[12] = {1, 0, 2, 1, 2, 1, 0, 0, 0, 3, 1, 1};
  for (int i = 0; i < 12; ++i)
    EXPECT_EQ(newCounts[i], want[i]) << i;

  moert_regroup(ctx, in.data(), counts, out.data(), newCounts, 2, 3, 2,
                width * int64_t(sizeof(float)), 11);
  EXPECT_EQ(moert_ctx_status(ctx), MOERT_ERR_INVALID);
  EXPECT_EQ(err(), "moert_regroup: counts total 12 rows, more than rows (11)");
  moert_ctx_clear_error(ctx);
  int32_t negative[2] = {1, -1};
  moert_regroup(ctx, in.data(), negative, out.data(), newCounts, 1, 2, 1,
                width * int64_t(sizeof(float)), rows);
  EXPECT_EQ(err(), "moert_regroup: counts[0, 1] is -1");
  moert_ctx_clear_error(ctx);
}

TEST_F(Context, StickyErrorMakesLaterCallsNoOpsUntilCleared) {
  std::vector<float> logits(4 * 8, 0.0f), w(4 * 9), s(4 * 8);
  std::vector<int32_t> idx(4 * 9);
  moert_topk(ctx, logits.data(), nullptr, w.data(), idx.data(), s.data(), 4, 8,
             9, MOERT_SCORE_SOFTMAX, 0, 1.0f, 0, 0, 0);
  EXPECT_EQ(moert_ctx_status(ctx), MOERT_ERR_INVALID);
  EXPECT_EQ(err(), "moert_topk: k (9) exceeds the number of experts (8)");

  std::vector<float> a{1, 2}, b{3, 4}, y{0, 0};
  moert_add(ctx, a.data(), b.data(), y.data(), 2, MOERT_F32);
  EXPECT_EQ(y, (std::vector<float>{0, 0})) << "a call under an error ran";
  moert_rmsnorm(ctx, a.data(), b.data(), y.data(), 0, 2, 0.0f, MOERT_F32);
  EXPECT_EQ(err(), "moert_topk: k (9) exceeds the number of experts (8)")
      << "the first error must stick";

  moert_ctx_clear_error(ctx);
  EXPECT_EQ(moert_ctx_status(ctx), MOERT_OK);
  EXPECT_EQ(err(), "");
  moert_add(ctx, a.data(), b.data(), y.data(), 2, MOERT_F32);
  EXPECT_TRUE(ok());
  EXPECT_EQ(y, (std::vector<float>{4, 6}));
}

TEST_F(Context, NullContextReportsThroughLastError) {
  float a = 1, y = 0;
  moert_add(nullptr, &a, &a, &y, 1, MOERT_F32);
  EXPECT_STREQ(moert_last_error(), "moert_add: null context");
  EXPECT_EQ(y, 0.0f);
  EXPECT_EQ(moert_ctx_status(nullptr), MOERT_ERR_INVALID);
}

TEST_F(Context, StatsJsonCountsPhasesAndSkipsFailedCalls) {
  std::vector<float> x = randomVec(8, 3), w(4, 1.0f), y(8);
  moert_rmsnorm(ctx, x.data(), w.data(), y.data(), 2, 4, 1e-6f, MOERT_F32);
  moert_rmsnorm(ctx, x.data(), w.data(), y.data(), 2, 4, 1e-6f, MOERT_F32);
  moert_add(ctx, x.data(), x.data(), y.data(), 8, MOERT_F32);
  ASSERT_TRUE(ok());
  moert_add(ctx, x.data(), x.data(), y.data(), 8, 42); // fails: not a phase
  moert_ctx_clear_error(ctx);

  std::string json = moert_ctx_stats_json(ctx);
  EXPECT_EQ(json.rfind("{\"rank\": 0, \"device\": \"cpu\", \"phases\": [", 0),
            0u)
      << json;
  EXPECT_NE(json.find("{\"name\": \"rmsnorm\", \"calls\": 2, \"seconds\": "),
            std::string::npos)
      << json;
  EXPECT_NE(json.find("{\"name\": \"add\", \"calls\": 1, \"seconds\": "),
            std::string::npos)
      << json;
  EXPECT_NE(json.find("\"collectives\": []}"), std::string::npos) << json;

  moert_ctx_reset_stats(ctx);
  EXPECT_EQ(std::string(moert_ctx_stats_json(ctx)),
            "{\"rank\": 0, \"device\": \"cpu\", \"phases\": [], "
            "\"overlap\": {\"started\": 0, \"done_before_wait\": 0}, "
            "\"collectives\": []}");
}

TEST_F(Context, ExpertLoadIsRecordedOnlyWhenAsked) {
  // 4 tokens, k = 2, 4 experts, capacity 1 per expert and group, 2 groups:
  // group 0 routes (0, 1), (0, 1): expert 0 and 1 keep one each; group 1
  // routes (3, 0), (3, 0): expert 3 and 0 keep one each.
  std::vector<int32_t> idx = {0, 1, 0, 1, 3, 0, 3, 0}, pos(8), counts(8);
  moert_assign(ctx, idx.data(), pos.data(), counts.data(), 4, 2, 4, 1, 2);
  ASSERT_TRUE(ok());
  EXPECT_EQ(std::string(moert_ctx_stats_json(ctx)).find("expert_load"),
            std::string::npos);
  moert_ctx_record_expert_load(ctx, 1);
  moert_assign(ctx, idx.data(), pos.data(), counts.data(), 4, 2, 4, 1, 2);
  std::vector<int32_t> dropless = {2, 3, 2, 2};
  moert_assign(ctx, dropless.data(), pos.data(), counts.data(), 2, 2, 4, 0, 0);
  ASSERT_TRUE(ok());
  std::string json = moert_ctx_stats_json(ctx);
  EXPECT_NE(json.find("\"expert_load\": [{\"routed\": [4, 2, 0, 2], "
                      "\"kept\": [2, 1, 0, 1]}, {\"routed\": [0, 0, 3, 1], "
                      "\"kept\": [0, 0, 3, 1]}]}"),
            std::string::npos)
      << json;
  moert_ctx_reset_stats(ctx);
  moert_ctx_record_expert_load(ctx, 0);
  moert_assign(ctx, idx.data(), pos.data(), counts.data(), 4, 2, 4, 1, 2);
  EXPECT_EQ(std::string(moert_ctx_stats_json(ctx)).find("expert_load"),
            std::string::npos);
}

TEST(ContextStats, CollectivesAreKeyedByOpAndAxisNames) {
  // Collectives.cpp reports through these helpers; check what JSON they make.
  moert_ctx *ctx = nullptr;
  ASSERT_EQ(createWithMesh({1, 1}, {"ep", "tp"}, &ctx), MOERT_OK);
  EXPECT_EQ(moert::axisNames(ctx, 1), "ep");
  EXPECT_EQ(moert::axisNames(ctx, 3), "ep,tp");
  moert::recordCollective(ctx, "all_to_all", 1, 512);
  moert::recordCollective(ctx, "all_to_all", 1, 256);
  moert::recordCollective(ctx, "all_gather", 3, 0);
  std::string json = moert_ctx_stats_json(ctx);
  EXPECT_NE(json.find("\"collectives\": [{\"op\": \"all_gather\", \"axis\": "
                      "\"ep,tp\", \"calls\": 1, \"bytes_sent\": 0, "
                      "\"messages\": 0}, "
                      "{\"op\": \"all_to_all\", \"axis\": \"ep\", "
                      "\"calls\": 2, \"bytes_sent\": 768, \"messages\": 0}]}"),
            std::string::npos)
      << json;
  moert_ctx_destroy(ctx);
}

TEST(ContextStats, RecomputePhaseIsCountedApart) {
  // moe-checkpoint's recomputed collectives: moert_stats_phase(1) before
  // them, (0) after; the same op and axis in phase 1 is another record.
  moert_ctx *ctx = nullptr;
  ASSERT_EQ(createWithMesh({1, 1}, {"ep", "tp"}, &ctx), MOERT_OK);
  moert::recordCollective(ctx, "all_to_all_v", 1, 100);
  moert_stats_phase(ctx, 1);
  moert::recordCollective(ctx, "all_to_all_v", 1, 40);
  moert::recordCollective(ctx, "all_to_all_v", 1, 60);
  moert_stats_phase(ctx, 0);
  moert::recordCollective(ctx, "all_to_all_v", 1, 100);
  ASSERT_EQ(moert_ctx_status(ctx), MOERT_OK);
  std::string json = moert_ctx_stats_json(ctx);
  // (One rank: an all-to-all sends no message to another rank.)
  EXPECT_NE(json.find("{\"op\": \"all_to_all_v\", \"axis\": \"ep\", "
                      "\"calls\": 2, \"bytes_sent\": 200, \"messages\": 0}, "
                      "{\"op\": \"all_to_all_v\", \"axis\": \"ep\", "
                      "\"phase\": \"recompute\", \"calls\": 2, "
                      "\"bytes_sent\": 100, \"messages\": 0}"),
            std::string::npos)
      << json;
  // Reset returns to phase 0; a phase other than 0 or 1 is an error.
  moert_stats_phase(ctx, 1);
  moert_ctx_reset_stats(ctx);
  moert::recordCollective(ctx, "all_gather", 2, 8);
  EXPECT_EQ(std::string(moert_ctx_stats_json(ctx)).find("recompute"),
            std::string::npos);
  moert_stats_phase(ctx, 7);
  EXPECT_EQ(moert_ctx_status(ctx), MOERT_ERR_INVALID);
  EXPECT_NE(std::string(moert_ctx_error(ctx))
                .find("moert_stats_phase: phase 7 is not 0 or 1"),
            std::string::npos);
  moert_ctx_destroy(ctx);
}

TEST(ContextTrace, RecordsOneEventPerCallWhenAskedFor) {
  moert_ctx_options o;
  moert_ctx_options_init(&o);
  o.record_trace = 1;
  moert_ctx *ctx = nullptr;
  ASSERT_EQ(moert_ctx_create(&o, &ctx), MOERT_OK);
  float a[4] = {1, 2, 3, 4}, y[4];
  moert_add(ctx, a, a, y, 4, MOERT_F32);
  moert_copy(ctx, a, y, sizeof a);
  std::string trace = moert_ctx_trace_json(ctx);
  EXPECT_NE(trace.find("{\"name\": \"add\", \"ph\": \"X\", \"ts\": "),
            std::string::npos)
      << trace;
  EXPECT_NE(trace.find("{\"name\": \"copy\", \"ph\": \"X\""), std::string::npos)
      << trace;
  EXPECT_NE(trace.find("},\n{"), std::string::npos) << "events are separated";
  moert_ctx_destroy(ctx);

  moert_ctx_options_init(&o);
  ASSERT_EQ(moert_ctx_create(&o, &ctx), MOERT_OK);
  moert_add(ctx, a, a, y, 4, MOERT_F32);
  EXPECT_STREQ(moert_ctx_trace_json(ctx), "");
  moert_ctx_destroy(ctx);
}

//===--- Argument validation: one bad call per row ------------------------===//

struct BadCall {
  const char *name;
  std::function<void(moert_ctx *)> call;
  moert_status code;
  const char *message;
};

class Validation : public CpuRuntimeTest,
                   public ::testing::WithParamInterface<BadCall> {};

TEST_P(Validation, NamesTheKernelAndTheValue) {
  GetParam().call(ctx);
  EXPECT_EQ(moert_ctx_status(ctx), GetParam().code);
  EXPECT_NE(err().find(GetParam().message), std::string::npos)
      << "got: " << err();
  moert_ctx_clear_error(ctx);
}

// Host buffers big enough for every call below.
float F[256];
int32_t I[256];

const BadCall badCalls[] = {
    {"RmsnormZeroD",
     [](moert_ctx *c) { moert_rmsnorm(c, F, F, F, 2, 0, 1e-6f, MOERT_F32); },
     MOERT_ERR_INVALID, "moert_rmsnorm: D (0) must be positive"},
    {"RmsnormNullX",
     [](moert_ctx *c) {
       moert_rmsnorm(c, nullptr, F, F, 2, 4, 1e-6f, MOERT_F32);
     },
     MOERT_ERR_INVALID, "moert_rmsnorm: x is null"},
    {"RmsnormBf16",
     [](moert_ctx *c) { moert_rmsnorm(c, F, F, F, 2, 4, 1e-6f, MOERT_BF16); },
     MOERT_ERR_UNSUPPORTED,
     "moert_rmsnorm: dtype bf16 is not supported on the cpu backend"},
    {"LayernormNullW",
     [](moert_ctx *c) {
       moert_layernorm(c, F, nullptr, F, F, 2, 4, 1e-6f, MOERT_F32);
     },
     MOERT_ERR_INVALID, "moert_layernorm: w is null"},
    {"LayernormNegativeEps",
     [](moert_ctx *c) {
       moert_layernorm(c, F, F, nullptr, F, 2, 4, -1.0f, MOERT_F32);
     },
     MOERT_ERR_INVALID, "moert_layernorm: eps (-1) must not be negative"},
    {"LayernormBf16",
     [](moert_ctx *c) {
       moert_layernorm(c, F, F, F, F, 2, 4, 1e-6f, MOERT_BF16);
     },
     MOERT_ERR_UNSUPPORTED,
     "moert_layernorm: dtype bf16 is not supported on the cpu backend"},
    {"AddUnknownDtype", [](moert_ctx *c) { moert_add(c, F, F, F, 4, 9); },
     MOERT_ERR_INVALID, "moert_add: unknown dtype 9"},
    {"RouterNegativeE",
     [](moert_ctx *c) { moert_router(c, F, F, F, 2, 4, -3, MOERT_F32); },
     MOERT_ERR_INVALID, "moert_router: E (-3) must be positive"},
    {"TopkUnknownScoreFn",
     [](moert_ctx *c) {
       moert_topk(c, F, 0, F, I, F, 2, 8, 2, 7, 0, 1, 0, 0, 0);
     },
     MOERT_ERR_INVALID, "moert_topk: unknown score function 7"},
    {"TopkGroupsDoNotDivideE",
     [](moert_ctx *c) {
       moert_topk(c, F, 0, F, I, F, 2, 8, 2, 0, 0, 1, 3, 1, 0);
     },
     MOERT_ERR_INVALID,
     "moert_topk: num_groups (3) does not divide the number of experts (8)"},
    {"TopkTooManyKeptGroups",
     [](moert_ctx *c) {
       moert_topk(c, F, 0, F, I, F, 2, 8, 2, 0, 0, 1, 4, 5, 0);
     },
     MOERT_ERR_INVALID,
     "moert_topk: groups_kept (5) must be in [1, "
     "num_groups = 4]"},
    {"TopkKBeyondKeptExperts",
     [](moert_ctx *c) {
       moert_topk(c, F, 0, F, I, F, 2, 8, 5, 0, 0, 1, 4, 2, 0);
     },
     MOERT_ERR_INVALID,
     "moert_topk: k (5) exceeds the 4 experts of the 2 kept groups"},
    {"TopkUnknownGroupScore",
     [](moert_ctx *c) {
       moert_topk(c, F, 0, F, I, F, 2, 8, 2, 0, 0, 1, 4, 2, 3);
     },
     MOERT_ERR_INVALID, "moert_topk: unknown group score 3"},
    {"TopkNullScores",
     [](moert_ctx *c) {
       moert_topk(c, F, 0, F, I, nullptr, 2, 8, 2, 0, 0, 1, 0, 0, 0);
     },
     MOERT_ERR_INVALID, "moert_topk: scores is null"},
    {"AssignGroupsDoNotDivideT",
     [](moert_ctx *c) { moert_assign(c, I, I, I, 8, 1, 4, 2, 3); },
     MOERT_ERR_INVALID, "moert_assign: groups (3) does not divide T (8)"},
    {"AssignIndexOutOfRange",
     [](moert_ctx *c) {
       int32_t idx[4] = {0, 1, 8, 2}, pos[4], counts[8];
       moert_assign(c, idx, pos, counts, 2, 2, 8, 0, 1);
     },
     MOERT_ERR_INVALID,
     "moert_assign: indices[1,0] = 8 is not an expert in [0, 8)"},
    {"DispatchPositionPastOutput",
     [](moert_ctx *c) {
       int32_t pos[2] = {0, 9};
       moert_dispatch(c, F, pos, F, 1, 2, 4, 4, MOERT_F32);
     },
     MOERT_ERR_INVALID,
     "moert_dispatch: positions[0,1] = 9 is past the 4 output rows"},
    {"ExpertFfnPrepareWithoutUp",
     [](moert_ctx *c) {
       moert_expert_ffn_prepare(c, nullptr, nullptr, F, 2, 4, 4, MOERT_ACT_RELU,
                                MOERT_F32);
     },
     MOERT_ERR_INVALID, "moert_expert_ffn_prepare: up is null"},
    {"HoldWeightsNotABool", [](moert_ctx *c) { moert_hold_weights(c, 2); },
     MOERT_ERR_INVALID, "moert_hold_weights: hold 2 is not 0 or 1"},
    {"ExpertFfnGatedWithoutGate",
     [](moert_ctx *c) {
       moert_expert_ffn(c, F, I, nullptr, F, F, F, 2, 1, 0, 4, 4, 4,
                        MOERT_ACT_SWIGLU, MOERT_F32);
     },
     MOERT_ERR_INVALID,
     "moert_expert_ffn: gate is null but activation 2 is gated"},
    {"ExpertFfnUnknownActivation",
     [](moert_ctx *c) {
       moert_expert_ffn(c, F, I, F, F, F, F, 2, 1, 0, 4, 4, 4, 9, MOERT_F32);
     },
     MOERT_ERR_INVALID, "moert_expert_ffn: unknown activation 9"},
    {"ExpertFfnCountPastCapacity",
     [](moert_ctx *c) {
       int32_t counts[2] = {1, 5};
       moert_expert_ffn(c, F, counts, nullptr, F, F, F, 2, 1, 4, 8, 2, 2,
                        MOERT_ACT_RELU, MOERT_F32);
     },
     MOERT_ERR_INVALID, "moert_expert_ffn: counts[0,1] = 5 is outside [0, 4]"},
    {"ExpertFfnCountsPastRows",
     [](moert_ctx *c) {
       int32_t counts[2] = {3, 3};
       moert_expert_ffn(c, F, counts, nullptr, F, F, F, 2, 1, 0, 5, 2, 2,
                        MOERT_ACT_RELU, MOERT_F32);
     },
     MOERT_ERR_INVALID,
     "moert_expert_ffn: the counts sum to 6 rows but x has 5"},
    {"ExpertFfnCapacityTotalRows",
     [](moert_ctx *c) {
       moert_expert_ffn(c, F, nullptr, nullptr, F, F, F, 2, 1, 4, 7, 2, 2,
                        MOERT_ACT_RELU, MOERT_F32);
     },
     MOERT_ERR_INVALID,
     "moert_expert_ffn: total_rows (7) must be "
     "E*rows_per_expert = 8"},
    {"ExpertFfnF16",
     [](moert_ctx *c) {
       int32_t counts[2] = {1, 1};
       moert_expert_ffn(c, F, counts, nullptr, F, F, F, 2, 1, 0, 2, 2, 2,
                        MOERT_ACT_RELU, MOERT_F16);
     },
     MOERT_ERR_UNSUPPORTED, "moert_expert_ffn: dtype f16 is not supported"},
    {"MlpGateForUngatedActivation",
     [](moert_ctx *c) {
       moert_mlp(c, F, F, F, F, nullptr, F, 2, 2, 2, MOERT_ACT_GELU, MOERT_F32);
     },
     MOERT_ERR_INVALID,
     "moert_mlp: gate must be null for the ungated activation 1"},
    {"CombineNullWeights",
     [](moert_ctx *c) {
       moert_combine(c, F, I, nullptr, nullptr, F, 2, 1, 2, MOERT_F32);
     },
     MOERT_ERR_INVALID, "moert_combine: weights is null"},
    {"ExpertLoadIndexOutOfRange",
     [](moert_ctx *c) {
       int32_t idx[2] = {0, -2};
       moert_expert_load(c, F, idx, F, 2, 1, 4);
     },
     MOERT_ERR_INVALID,
     "moert_expert_load: indices[1,0] = -2 is not an expert in [0, 4)"},
    {"ZLossZeroTokens",
     [](moert_ctx *c) {
       moert_z_loss(c, F, nullptr, nullptr, F, 2, 4, 0, 1.0f);
     },
     MOERT_ERR_INVALID, "moert_z_loss: total_tokens (0) must be positive"},
    {"CopyNullSource", [](moert_ctx *c) { moert_copy(c, nullptr, F, 4); },
     MOERT_ERR_INVALID, "moert_copy: src is null"},
    // The context is the only layer that checks these (the backends trust
    // their arguments), so each rejection is proven here, once.
    {"RmsnormNegativeEps",
     [](moert_ctx *c) { moert_rmsnorm(c, F, F, F, 2, 4, -1.0f, MOERT_F32); },
     MOERT_ERR_INVALID, "moert_rmsnorm: eps (-1) must not be negative"},
    {"AddNegativeN", [](moert_ctx *c) { moert_add(c, F, F, F, -2, MOERT_F32); },
     MOERT_ERR_INVALID, "moert_add: n (-2) must not be negative"},
    {"AddNullY",
     [](moert_ctx *c) { moert_add(c, F, F, nullptr, 4, MOERT_F32); },
     MOERT_ERR_INVALID, "moert_add: y is null"},
    {"TopkKBeyondExperts",
     [](moert_ctx *c) {
       moert_topk(c, F, 0, F, I, F, 2, 8, 9, 0, 0, 1, 0, 0, 0);
     },
     MOERT_ERR_INVALID, "moert_topk: k (9) exceeds the number of experts (8)"},
    {"TopkNegativeGroups",
     [](moert_ctx *c) {
       moert_topk(c, F, 0, F, I, F, 2, 8, 2, 0, 0, 1, -1, 1, 0);
     },
     MOERT_ERR_INVALID, "moert_topk: num_groups (-1) must not be negative"},
    {"TopkTop2SumOfSingletonGroups",
     [](moert_ctx *c) {
       moert_topk(c, F, 0, F, I, F, 2, 8, 2, 0, 0, 1, 8, 4,
                  MOERT_GROUP_SCORE_TOP2_SUM);
     },
     MOERT_ERR_INVALID,
     "moert_topk: the top2_sum group score needs 2 experts per group, not 1"},
    {"AssignNegativeCapacity",
     [](moert_ctx *c) { moert_assign(c, I, I, I, 8, 1, 4, -1, 1); },
     MOERT_ERR_INVALID, "moert_assign: capacity (-1) must not be negative"},
    {"AssignCapacityWithoutGroups",
     [](moert_ctx *c) { moert_assign(c, I, I, I, 8, 1, 4, 2, 0); },
     MOERT_ERR_INVALID, "moert_assign: groups (0) must be positive"},
    {"AssignPositionsOverflowInt32",
     [](moert_ctx *c) {
       moert_assign(c, I, I, I, int64_t(1) << 30, 2, 4, 0, 1);
     },
     MOERT_ERR_INVALID, "moert_assign: T*k (2147483648) overflows int32"},
    {"AssignCapacityLayoutOverflowsInt32",
     [](moert_ctx *c) {
       moert_assign(c, I, I, I, 8, 1, int64_t(1) << 16, int64_t(1) << 16, 1);
     },
     MOERT_ERR_INVALID,
     "moert_assign: E*groups*capacity (4294967296) overflows int32"},
    {"DispatchNullOut",
     [](moert_ctx *c) {
       moert_dispatch(c, F, I, nullptr, 1, 2, 4, 4, MOERT_F32);
     },
     MOERT_ERR_INVALID, "moert_dispatch: out is null"},
    {"DispatchNegativeOutRows",
     [](moert_ctx *c) { moert_dispatch(c, F, I, F, 1, 2, 4, -1, MOERT_F32); },
     MOERT_ERR_INVALID, "moert_dispatch: out_rows (-1) must not be negative"},
    {"ExpertFfnPackedWithoutCounts",
     [](moert_ctx *c) {
       moert_expert_ffn(c, F, nullptr, nullptr, F, F, F, 2, 1, 0, 4, 4, 4,
                        MOERT_ACT_RELU, MOERT_F32);
     },
     MOERT_ERR_INVALID, "moert_expert_ffn: counts is null"},
    {"ExpertFfnRowsNotMultipleOfSegments",
     [](moert_ctx *c) {
       moert_expert_ffn(c, F, nullptr, nullptr, F, F, F, 2, 2, 3, 6, 2, 2,
                        MOERT_ACT_RELU, MOERT_F32);
     },
     MOERT_ERR_INVALID,
     "moert_expert_ffn: rows_per_expert (3) is not a multiple of segments "
     "(2)"},
    {"ExpertFfnNullDown",
     [](moert_ctx *c) {
       moert_expert_ffn(c, F, I, nullptr, F, nullptr, F, 2, 1, 0, 4, 4, 4,
                        MOERT_ACT_RELU, MOERT_F32);
     },
     MOERT_ERR_INVALID, "moert_expert_ffn: down is null"},
    {"MlpZeroF",
     [](moert_ctx *c) {
       moert_mlp(c, F, nullptr, F, F, nullptr, F, 2, 2, 0, MOERT_ACT_RELU,
                 MOERT_F32);
     },
     MOERT_ERR_INVALID, "moert_mlp: F (0) must be positive"},
    {"LoadBalanceLossZeroExperts",
     [](moert_ctx *c) {
       moert_load_balance_loss(c, F, nullptr, F, 0, 4, 1, 1.0f);
     },
     MOERT_ERR_INVALID, "moert_load_balance_loss: E (0) must be positive"},
    // The training kernels (f32 only; docs/spec.md section 7).
    {"RmsnormGradBf16",
     [](moert_ctx *c) {
       moert_rmsnorm_grad(c, F, F, F, F, F, 2, 4, 1e-6f, MOERT_BF16);
     },
     MOERT_ERR_UNSUPPORTED,
     "moert_rmsnorm_grad: dtype bf16 is not supported by the training "
     "kernels (only f32)"},
    {"RmsnormGradUnknownDtype",
     [](moert_ctx *c) { moert_rmsnorm_grad(c, F, F, F, F, F, 2, 4, 0, 9); },
     MOERT_ERR_INVALID, "moert_rmsnorm_grad: unknown dtype 9"},
    {"RmsnormGradNullDw",
     [](moert_ctx *c) {
       moert_rmsnorm_grad(c, F, F, F, F, nullptr, 2, 4, 0, MOERT_F32);
     },
     MOERT_ERR_INVALID, "moert_rmsnorm_grad: dw is null"},
    {"LayernormGradBf16",
     [](moert_ctx *c) {
       moert_layernorm_grad(c, F, F, F, F, F, F, 2, 4, 1e-6f, MOERT_BF16);
     },
     MOERT_ERR_UNSUPPORTED,
     "moert_layernorm_grad: dtype bf16 is not supported by the training "
     "kernels (only f32)"},
    {"LayernormGradNullDx",
     [](moert_ctx *c) {
       moert_layernorm_grad(c, F, F, F, nullptr, F, nullptr, 2, 4, 0,
                            MOERT_F32);
     },
     MOERT_ERR_INVALID, "moert_layernorm_grad: dx is null"},
    {"RouterGradZeroT",
     [](moert_ctx *c) { moert_router_grad(c, F, F, F, F, F, 0, 4, 2, 0); },
     MOERT_ERR_INVALID, "moert_router_grad: T (0) must be positive"},
    {"RouterGradF16",
     [](moert_ctx *c) {
       moert_router_grad(c, F, F, F, F, F, 2, 4, 2, MOERT_F16);
     },
     MOERT_ERR_UNSUPPORTED, "moert_router_grad: dtype f16 is not supported"},
    {"TopkGradKBeyondE",
     [](moert_ctx *c) {
       moert_topk_grad(c, F, I, F, nullptr, F, 2, 4, 5, 0, 0, 1.0f);
     },
     MOERT_ERR_INVALID,
     "moert_topk_grad: k (5) exceeds the number of experts (4)"},
    {"TopkGradUnknownScoreFn",
     [](moert_ctx *c) {
       moert_topk_grad(c, F, I, F, nullptr, F, 2, 4, 2, 3, 0, 1.0f);
     },
     MOERT_ERR_INVALID, "moert_topk_grad: unknown score function 3"},
    {"TopkGradRenormalizeFlag",
     [](moert_ctx *c) {
       moert_topk_grad(c, F, I, F, nullptr, F, 2, 4, 2, 0, 2, 1.0f);
     },
     MOERT_ERR_INVALID, "moert_topk_grad: renormalize (2) must be 0 or 1"},
    {"TopkGradNullIndices",
     [](moert_ctx *c) {
       moert_topk_grad(c, F, nullptr, F, nullptr, F, 2, 4, 2, 0, 0, 1.0f);
     },
     MOERT_ERR_INVALID, "moert_topk_grad: indices is null"},
    {"TopkGradBadIndex",
     [](moert_ctx *c) {
       int32_t idx[4] = {0, 1, 2, 4};
       moert_topk_grad(c, F, idx, F, nullptr, F, 2, 4, 2, 0, 0, 1.0f);
     },
     MOERT_ERR_INVALID,
     "moert_topk_grad: indices[1,1] = 4 is not an expert in [0, 4)"},
    {"DispatchGradNegativeOutRows",
     [](moert_ctx *c) {
       moert_dispatch_grad(c, F, I, F, 2, 1, 4, -1, MOERT_F32);
     },
     MOERT_ERR_INVALID,
     "moert_dispatch_grad: out_rows (-1) must not be "
     "negative"},
    {"DispatchGradPositionPastRows",
     [](moert_ctx *c) {
       int32_t pos[2] = {0, 3};
       moert_dispatch_grad(c, F, pos, F, 2, 1, 4, 3, MOERT_F32);
     },
     MOERT_ERR_INVALID,
     "moert_dispatch_grad: positions[1,0] = 3 is not -1 or a row of the "
     "3-row buffer"},
    {"CombineGradPassthroughWithoutItsGradient",
     [](moert_ctx *c) {
       moert_combine_grad(c, F, I, F, F, F, F, F, nullptr, 2, 1, 4, 2,
                          MOERT_F32);
     },
     MOERT_ERR_INVALID,
     "moert_combine_grad: dpassthrough is null but passthrough is given"},
    {"CombineGradGradientWithoutPassthrough",
     [](moert_ctx *c) {
       moert_combine_grad(c, F, I, F, nullptr, F, F, F, F, 2, 1, 4, 2,
                          MOERT_F32);
     },
     MOERT_ERR_INVALID,
     "moert_combine_grad: dpassthrough must be null when passthrough is"},
    {"CombineGradNullDweights",
     [](moert_ctx *c) {
       moert_combine_grad(c, F, I, F, nullptr, F, F, nullptr, nullptr, 2, 1, 4,
                          2, MOERT_F32);
     },
     MOERT_ERR_INVALID, "moert_combine_grad: dweights is null"},
    {"ExpertFfnGradNullDy",
     [](moert_ctx *c) {
       moert_expert_ffn_grad(c, F, I, nullptr, F, F, nullptr, nullptr, nullptr,
                             F, nullptr, F, F, 2, 1, 0, 4, 4, 4, MOERT_ACT_RELU,
                             MOERT_F32);
     },
     MOERT_ERR_INVALID, "moert_expert_ffn_grad: dy is null"},
    {"ExpertFfnGradDgateWhenUngated",
     [](moert_ctx *c) {
       moert_expert_ffn_grad(c, F, I, nullptr, F, F, F, nullptr, nullptr, F, F,
                             F, F, 2, 1, 0, 4, 4, 4, MOERT_ACT_GELU, MOERT_F32);
     },
     MOERT_ERR_INVALID,
     "moert_expert_ffn_grad: dgate must be null when gate is"},
    {"ExpertFfnGradLayout",
     [](moert_ctx *c) {
       moert_expert_ffn_grad(c, F, I, F, F, F, F, nullptr, nullptr, F, F, F, F,
                             2, 2, 3, 6, 4, 4, MOERT_ACT_SWIGLU, MOERT_F32);
     },
     MOERT_ERR_INVALID,
     "moert_expert_ffn_grad: rows_per_expert (3) is not a multiple of "
     "segments (2)"},
    {"ExpertFfnGradBadCount",
     [](moert_ctx *c) {
       int32_t counts[2] = {1, 5};
       moert_expert_ffn_grad(c, F, counts, nullptr, F, F, F, nullptr, nullptr,
                             F, nullptr, F, F, 2, 1, 4, 8, 2, 2, MOERT_ACT_RELU,
                             MOERT_F32);
     },
     MOERT_ERR_INVALID,
     "moert_expert_ffn_grad: counts[0,1] = 5 is outside [0, 4]"},
    {"ExpertFfnGradSavedAWithoutSavedU",
     [](moert_ctx *c) {
       moert_expert_ffn_grad(c, F, I, F, F, F, F, F, nullptr, F, F, F, F, 2, 1,
                             0, 4, 4, 4, MOERT_ACT_SWIGLU, MOERT_F32);
     },
     MOERT_ERR_INVALID,
     "moert_expert_ffn_grad: saved_a is given but saved_u is null"},
    {"ExpertFfnGradSavedANullWhenGated",
     [](moert_ctx *c) {
       moert_expert_ffn_grad(c, F, I, F, F, F, F, nullptr, F, F, F, F, F, 2, 1,
                             0, 4, 4, 4, MOERT_ACT_SWIGLU, MOERT_F32);
     },
     MOERT_ERR_INVALID,
     "moert_expert_ffn_grad: saved_a is null but gate is given"},
    {"ExpertFfnTrainNoSaveU",
     [](moert_ctx *c) {
       moert_expert_ffn_train(c, F, I, nullptr, F, F, F, nullptr, nullptr, 2, 1,
                              0, 4, 4, 4, MOERT_ACT_GELU, MOERT_F32);
     },
     MOERT_ERR_INVALID, "moert_expert_ffn_train: save_u is null"},
    {"ExpertFfnTrainSaveAWhenUngated",
     [](moert_ctx *c) {
       moert_expert_ffn_train(c, F, I, nullptr, F, F, F, F, F, 2, 1, 0, 4, 4, 4,
                              MOERT_ACT_RELU, MOERT_F32);
     },
     MOERT_ERR_INVALID,
     "moert_expert_ffn_train: save_a must be null when gate is"},
    {"ExpertFfnTrainBf16",
     [](moert_ctx *c) {
       moert_expert_ffn_train(c, F, I, nullptr, F, F, F, nullptr, F, 2, 1, 0, 4,
                              4, 4, MOERT_ACT_RELU, MOERT_BF16);
     },
     MOERT_ERR_UNSUPPORTED,
     "moert_expert_ffn_train: dtype bf16 is not "
     "supported by the training kernels"},
    {"ExpertFfnGradI32",
     [](moert_ctx *c) {
       moert_expert_ffn_grad(c, F, I, nullptr, F, F, F, nullptr, nullptr, F,
                             nullptr, F, F, 2, 1, 0, 4, 4, 4, MOERT_ACT_RELU,
                             MOERT_I32);
     },
     MOERT_ERR_UNSUPPORTED,
     "moert_expert_ffn_grad: dtype i32 is not "
     "supported by the training kernels"},
    {"MlpGradSigmoidGateWithoutItsGradient",
     [](moert_ctx *c) {
       moert_mlp_grad(c, F, nullptr, F, F, F, F, F, nullptr, F, F, nullptr, 2,
                      2, 2, MOERT_ACT_RELU, MOERT_F32);
     },
     MOERT_ERR_INVALID,
     "moert_mlp_grad: dsigmoid_gate is null but sigmoid_gate is given"},
    {"MlpGradGatedWithoutGate",
     [](moert_ctx *c) {
       moert_mlp_grad(c, F, nullptr, F, F, nullptr, F, F, nullptr, F, F,
                      nullptr, 2, 2, 2, MOERT_ACT_GEGLU, MOERT_F32);
     },
     MOERT_ERR_INVALID,
     "moert_mlp_grad: gate is null but activation 3 is "
     "gated"},
    {"MlpGradUnknownActivation",
     [](moert_ctx *c) {
       moert_mlp_grad(c, F, nullptr, F, F, nullptr, F, F, nullptr, F, F,
                      nullptr, 2, 2, 2, 7, MOERT_F32);
     },
     MOERT_ERR_INVALID, "moert_mlp_grad: unknown activation 7"},
    {"ExpertLoadGradZeroE",
     [](moert_ctx *c) { moert_expert_load_grad(c, F, F, 2, 0); },
     MOERT_ERR_INVALID, "moert_expert_load_grad: E (0) must be positive"},
    {"LoadBalanceLossGradNullDloss",
     [](moert_ctx *c) {
       moert_load_balance_loss_grad(c, F, nullptr, nullptr, F, 4, 8, 2, 0.01f);
     },
     MOERT_ERR_INVALID, "moert_load_balance_loss_grad: dloss is null"},
    {"ZLossMaskWithoutCount",
     [](moert_ctx *c) {
       int32_t m[2] = {1, 1};
       moert_z_loss(c, F, m, nullptr, F, 2, 4, 2, 1.0f);
     },
     MOERT_ERR_INVALID, "moert_z_loss: mask and count must be given together"},
    {"MaskRowsBadFill",
     [](moert_ctx *c) { moert_mask_rows(c, F, nullptr, F, 2, 4, 7); },
     MOERT_ERR_INVALID, "moert_mask_rows: fill (7) is neither 0 nor 255"},
    {"TokenCountNullMask",
     [](moert_ctx *c) { moert_token_count(c, nullptr, F, 2); },
     MOERT_ERR_INVALID, "moert_token_count: mask is null"},
    {"ZLossGradZeroTotalTokens",
     [](moert_ctx *c) {
       moert_z_loss_grad(c, F, F, nullptr, nullptr, F, 2, 4, 0, 0.01f);
     },
     MOERT_ERR_INVALID, "moert_z_loss_grad: total_tokens (0) must be positive"},
    {"MseLossMoreThanTotal",
     [](moert_ctx *c) {
       moert_mse_loss(c, F, F, nullptr, nullptr, F, F, 1, 8, 4, MOERT_F32);
     },
     MOERT_ERR_INVALID, "moert_mse_loss: n (8) exceeds total_n (4)"},
    {"MseLossBf16",
     [](moert_ctx *c) {
       moert_mse_loss(c, F, F, nullptr, nullptr, F, F, 1, 4, 4, MOERT_BF16);
     },
     MOERT_ERR_UNSUPPORTED, "moert_mse_loss: dtype bf16 is not supported"},
    {"AdamwNullHparams",
     [](moert_ctx *c) { moert_adamw(c, F, F, F, F, nullptr, F, F, F, 4); },
     MOERT_ERR_INVALID, "moert_adamw: hparams is null"},
    {"AdamwNegativeN",
     [](moert_ctx *c) { moert_adamw(c, F, F, F, F, F, F, F, F, -1); },
     MOERT_ERR_INVALID, "moert_adamw: n (-1) must not be negative"},
    {"AdamwPartialOverlap",
     [](moert_ctx *c) {
       moert_adamw(c, F, F, F + 64, F, F + 128, F, F + 65, F + 136, 8);
     },
     MOERT_ERR_INVALID, "moert_adamw: m_out overlaps m in part"},
    {"SgdNullBuf",
     [](moert_ctx *c) { moert_sgd(c, F, F, nullptr, F, F, F, 4); },
     MOERT_ERR_INVALID, "moert_sgd: buf is null"},
    {"BiasUpdateZeroTokens",
     [](moert_ctx *c) { moert_bias_update(c, F, F, F, F + 8, 4, 0, 2); },
     MOERT_ERR_INVALID, "moert_bias_update: tokens (0) must be positive"},
    {"CopyToHostNegativeBytes",
     [](moert_ctx *c) { (void)moert_copy_to_host(c, F, F, -4); },
     MOERT_ERR_INVALID, "moert_copy_to_host: bytes (-4) must not be negative"},
};

INSTANTIATE_TEST_SUITE_P(Kernels, Validation, ::testing::ValuesIn(badCalls),
                         [](const auto &info) {
                           return std::string(info.param.name);
                         });

} // namespace
