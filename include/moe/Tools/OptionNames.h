//===- OptionNames.h - Exact option names for the tools ---------*- C++ -*-===//
//
// llvm::cl takes an unknown option that begins with a one-letter option's
// name for that option with the rest as its value: `--hx` and
// `--hierarchical-a2a` became `-h` (--help), printed the help and exited 0,
// so a script with a misspelt option believed it had run. moe-compile and
// moe-plan look every option up by its exact name first; an unknown one is
// an error.
//
//===----------------------------------------------------------------------===//
#ifndef MOE_TOOLS_OPTIONNAMES_H
#define MOE_TOOLS_OPTIONNAMES_H

#include "llvm/ADT/StringRef.h"
#include "llvm/Support/CommandLine.h"
#include "llvm/Support/raw_ostream.h"

namespace mlir::moe {

/// False (after a message naming `tool` and the option) when argv has an
/// option that is not registered under exactly that name.
inline bool checkOptionNames(int argc, char **argv, llvm::StringRef tool) {
  auto &options = llvm::cl::getRegisteredOptions();
  for (int i = 1; i < argc; ++i) {
    llvm::StringRef arg(argv[i]);
    if (arg == "--")
      break;
    if (!arg.starts_with("-") || arg == "-")
      continue;
    llvm::StringRef name = arg.ltrim('-').split('=').first;
    if (name == "h") // llvm::cl's alias of --help, added while parsing
      continue;
    auto it = options.find(name);
    if (it == options.end()) {
      llvm::errs() << tool << ": error: unknown option '" << arg << "' ("
                   << tool << " --help lists the options)\n";
      return false;
    }
    // `-o dir`: the value is the next argument, whatever it looks like.
    if (!arg.contains('=') &&
        it->second->getValueExpectedFlag() == llvm::cl::ValueRequired)
      ++i;
  }
  return true;
}

} // namespace mlir::moe

#endif // MOE_TOOLS_OPTIONNAMES_H
