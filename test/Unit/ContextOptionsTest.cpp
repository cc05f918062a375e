//===- ContextOptionsTest.cpp - Defaults of the runtime's host API --------===//
#include "moert/moert.h"

#include <gtest/gtest.h>

TEST(ContextOptions, DefaultsAreCpuSingleRankWithoutMesh) {
  moert_ctx_options o;
  moert_ctx_options_init(&o);
  EXPECT_EQ(o.device, MOERT_DEVICE_CPU);
  EXPECT_EQ(o.comm, MOERT_COMM_SINGLE);
  EXPECT_EQ(o.mesh_rank, 0);
  EXPECT_EQ(o.record_trace, 0);
}

TEST(ContextOptions, SingleRankContextReportsWorldOfOne) {
  moert_ctx_options o;
  moert_ctx_options_init(&o);
  moert_ctx *ctx = nullptr;
  ASSERT_EQ(moert_ctx_create(&o, &ctx), MOERT_OK) << moert_last_error();
  EXPECT_EQ(moert_ctx_rank(ctx), 0);
  EXPECT_EQ(moert_ctx_world_size(ctx), 1);
  EXPECT_EQ(moert_ctx_status(ctx), MOERT_OK);
  moert_ctx_destroy(ctx);
}
