// RUN: moe-opt %s -moe-drop-duplicate-tokens -verify-diagnostics

// expected-error @+1 {{moe-drop-duplicate-tokens needs a sharded module (run moe-shard first)}}
module {
  func.func @f() {
    return
  }
}
