//===- MpiTestMain.cpp - GoogleTest under mpirun
//---------------------------===//
//
// Every rank runs every test; rank 0 prints the usual report, the others
// print only their failures (prefixed with the rank). The exit status is
// non-zero on any rank that failed, so mpirun fails too.
//
//===----------------------------------------------------------------------===//
#include "moert/moert.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>

namespace {

class FailurePrinter : public ::testing::EmptyTestEventListener {
public:
  explicit FailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult &r) override {
    if (r.failed())
      std::fprintf(stderr, "[rank %d] %s:%d: failure\n%s\n", rank_,
                   r.file_name() ? r.file_name() : "?", r.line_number(),
                   r.summary());
  }

private:
  int rank_;
};

int worldRank() {
  const char *v = std::getenv("OMPI_COMM_WORLD_RANK");
  if (!v)
    v = std::getenv("PMI_RANK");
  return v ? std::atoi(v) : 0;
}

} // namespace

int main(int argc, char **argv) {
  ::testing::InitGoogleTest(&argc, argv);
  if (moert_world_init(&argc, &argv, MOERT_COMM_MPI) != MOERT_OK) {
    std::fprintf(stderr, "moe-comm-tests: MPI initialization failed\n");
    return 1;
  }
  int rank = worldRank();
  if (rank != 0) {
    auto &listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new FailurePrinter(rank));
  }
  int rc = RUN_ALL_TESTS();
  moert_world_finalize();
  return rc;
}
