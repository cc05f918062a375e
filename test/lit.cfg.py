# -*- Python -*-
"""lit configuration of moe-compiler's tests (lit provides `config`)."""
# ruff: noqa: F821
import os

import lit.formats
from lit.llvm import llvm_config

config.name = "MOE"
config.test_format = lit.formats.ShTest(not llvm_config.use_lit_shell)
config.suffixes = [".mlir", ".test"]
config.test_source_root = os.path.dirname(__file__)
config.test_exec_root = os.path.join(config.moe_obj_root, "test")
config.excludes = ["Inputs", "Unit", "CMakeLists.txt", "lit.cfg.py",
                   "lit.site.cfg.py", "README.md"]

llvm_config.use_default_substitutions()
llvm_config.with_environment("PATH", config.llvm_tools_dir, append_path=True)
llvm_config.with_environment("PATH", config.moe_tools_dir, append_path=True)
llvm_config.with_environment(
    "PYTHONPATH", os.path.join(config.moe_src_root, "python"), append_path=True)
llvm_config.with_environment("MOE_BUILD_DIR", config.moe_obj_root)
# OpenMPI refuses to start as root without these; oversubscribe lets 8 ranks
# share 2 cores. One BLAS/OpenMP thread per rank keeps oversubscribed runs sane.
for var in ["OMPI_ALLOW_RUN_AS_ROOT", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"]:
    config.environment[var] = "1"
config.environment["OMPI_MCA_rmaps_base_oversubscribe"] = "1"

tools = ["moe-opt", "moe-compile", "moe-run", "moe-plan"]
llvm_config.add_tool_substitutions(tools, [config.moe_tools_dir])
config.substitutions.append(("%python", config.python_executable))
config.substitutions.append(("%moe_src", config.moe_src_root))
config.substitutions.append(("%mpirun", config.mpiexec + " --oversubscribe"))

if config.have_mpi:
    config.available_features.add("mpi")
if config.have_cuda_gpu:
    config.available_features.add("cuda-gpu")
