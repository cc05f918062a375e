#!/usr/bin/env python3
"""Tests of check_layering.py: small trees with a cycle, with upward
includes and without either, and the repository itself."""

import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "check_layering.py")
REPO = os.path.dirname(HERE)

# A well-layered miniature of the repository.
CLEAN = {
    "runtime/include/moert/moert.h": "",
    "runtime/base/Status.h": '#include "moert/moert.h"\n',
    "runtime/comm/Communicator.h": '#include "base/Status.h"\n',
    "runtime/core/Context.h": ('#include "comm/Communicator.h"\n'
                               '#include "../base/Status.h"\n'),
    "runtime/core/Collectives.cpp": '#include "core/Context.h"\n',
    "runtime/cpu/CpuBackend.cpp": '#include "core/Context.h"\n',
    "runtime/support/Json.h": '#include "base/Status.h"\n#include <map>\n',
    "include/moe/Dialect/MoE/IR/MoE.h": '#include "mlir/IR/Dialect.h"\n',
    "include/moe/Conversion/Passes.h": '#include "moe/Dialect/MoE/IR/MoE.h"\n',
    "lib/Dialect/MoE/IR/MoEOps.cpp": ('#include "moe/Dialect/MoE/IR/MoE.h"\n'
                                      '#include "moe/Dialect/MoE/IR/'
                                      'MoEOps.cpp.inc"\n'),
    "lib/Conversion/MoEToRuntime/MoEToRuntime.cpp": (
        '#include "moe/Conversion/Passes.h"\n#include "moert/moert.h"\n'),
    "tools/moe-run/moe-run.cpp": ('#include "moert/moert.h"\n'
                                  '#include "support/Json.h"\n'),
    "tools/moe-opt/moe-opt.cpp": ('#include "moe/Conversion/Passes.h"\n'
                                  '#include "mlir/InitAllPasses.h"\n'),
}


def run_on(files):
    """Runs the script on a temporary tree made of `files`."""
    with tempfile.TemporaryDirectory() as root:
        for path, text in files.items():
            full = os.path.join(root, path)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "w") as f:
                f.write(text)
        p = subprocess.run([sys.executable, SCRIPT, "--root", root],
                           capture_output=True, text=True)
    return p.returncode, p.stdout + p.stderr


class CheckLayering(unittest.TestCase):
    def test_clean_tree_passes(self):
        rc, out = run_on(CLEAN)
        self.assertEqual(rc, 0, out)
        self.assertIn("check_layering: ok", out)

    def test_cycle_fails_naming_both_files(self):
        files = dict(CLEAN)
        files["runtime/comm/Communicator.h"] = (
            '#include "base/Status.h"\n#include "../core/Context.h"\n')
        rc, out = run_on(files)
        self.assertEqual(rc, 1, out)
        self.assertIn("include cycle between the runtime directories "
                      "comm, core", out)
        self.assertIn("runtime/comm/Communicator.h:2 includes "
                      "runtime/core/Context.h", out)
        self.assertIn("runtime/core/Context.h:1 includes "
                      "runtime/comm/Communicator.h", out)

    def test_runtime_including_mlir_fails(self):
        files = dict(CLEAN)
        files["runtime/base/Status.h"] += "#include <llvm/ADT/StringRef.h>\n"
        rc, out = run_on(files)
        self.assertEqual(rc, 1, out)
        self.assertIn("runtime/base/Status.h:2: includes an MLIR/LLVM header "
                      "(layer mlir), above its layer runtime", out)

    def test_runtime_including_the_compiler_fails(self):
        files = dict(CLEAN)
        files["runtime/core/Context.h"] += (
            '#include "moe/Dialect/MoE/IR/MoE.h"\n')
        rc, out = run_on(files)
        self.assertEqual(rc, 1, out)
        self.assertIn("runtime/core/Context.h:3: includes "
                      "include/moe/Dialect/MoE/IR/MoE.h (layer dialect)", out)

    def test_dialect_including_conversion_or_pipeline_fails(self):
        files = dict(CLEAN)
        files["include/moe/Pipeline/Pipeline.h"] = ""
        files["lib/Dialect/MoE/Transforms/Pipelines.cpp"] = (
            '#include "moe/Conversion/Passes.h"\n'
            '#include "moe/Pipeline/Pipeline.h"\n')
        rc, out = run_on(files)
        self.assertEqual(rc, 1, out)
        self.assertIn("lib/Dialect/MoE/Transforms/Pipelines.cpp:1: includes "
                      "include/moe/Conversion/Passes.h (layer conversion), "
                      "above its layer transforms", out)
        self.assertIn("lib/Dialect/MoE/Transforms/Pipelines.cpp:2: includes "
                      "include/moe/Pipeline/Pipeline.h (layer pipeline)", out)

    def test_analysis_sits_between_the_ir_and_the_transforms(self):
        files = dict(CLEAN)
        files["include/moe/Analysis/CostModel.h"] = (
            '#include "moe/Dialect/MoE/IR/MoE.h"\n')
        files["lib/Dialect/MoE/Transforms/Overlap.cpp"] = (
            '#include "moe/Analysis/CostModel.h"\n')
        rc, out = run_on(files)
        self.assertEqual(rc, 0, out)
        files["lib/Dialect/MoE/IR/MoEOps.cpp"] += (
            '#include "moe/Analysis/CostModel.h"\n')
        rc, out = run_on(files)
        self.assertEqual(rc, 1, out)
        self.assertIn("lib/Dialect/MoE/IR/MoEOps.cpp:3: includes "
                      "include/moe/Analysis/CostModel.h (layer analysis), "
                      "above its layer dialect", out)

    def test_lower_runtime_layer_including_a_higher_one_fails(self):
        files = dict(CLEAN)
        files["runtime/support/Json.h"] += '#include "core/Context.h"\n'
        rc, out = run_on(files)
        self.assertEqual(rc, 1, out)
        self.assertIn("runtime/support/Json.h:3: includes "
                      "runtime/core/Context.h: runtime/support may include "
                      "only base, include", out)

    def test_tool_including_runtime_internals_fails(self):
        files = dict(CLEAN)
        files["tools/moe-run/moe-run.cpp"] += '#include "core/Context.h"\n'
        rc, out = run_on(files)
        self.assertEqual(rc, 1, out)
        self.assertIn("tools/moe-run/moe-run.cpp:3: includes "
                      "runtime/core/Context.h: tools see only", out)

    def test_tool_including_mpi_fails(self):
        files = dict(CLEAN)
        files["tools/moe-run/moe-run.cpp"] += "#include <mpi.h>\n"
        rc, out = run_on(files)
        self.assertEqual(rc, 1, out)
        self.assertIn("tools/moe-run/moe-run.cpp:3: includes <mpi.h>: tools "
                      "reach MPI", out)

    def test_unknown_runtime_directory_fails(self):
        files = dict(CLEAN)
        files["runtime/extra/Thing.h"] = '#include "base/Status.h"\n'
        rc, out = run_on(files)
        self.assertEqual(rc, 1, out)
        self.assertIn("runtime/extra is not in the layer order", out)

    def test_repository_passes(self):
        p = subprocess.run([sys.executable, SCRIPT, "--root", REPO],
                           capture_output=True, text=True)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)


if __name__ == "__main__":
    unittest.main()
