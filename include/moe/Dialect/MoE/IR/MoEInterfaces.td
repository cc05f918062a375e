//===- MoEInterfaces.td - Interfaces of the moe dialect ----*- tablegen -*-===//
#ifndef MOE_DIALECT_MOE_IR_MOEINTERFACES_TD
#define MOE_DIALECT_MOE_IR_MOEINTERFACES_TD

include "mlir/IR/OpBase.td"

def MoE_CollectiveOpInterface : OpInterface<"CollectiveOpInterface"> {
  let cppNamespace = "::mlir::moe";
  let description = [{
    An op that moves (or selects) data among the ranks of a group drawn from
    a `moe.mesh`: every collective, its `_start` form and `moe.slice`. The
    group is the set of ranks that differ only in the coordinates of
    `axes`; its size is the product of those axes' sizes.

    Passes, the lowering and the statistics ask the interface rather than
    switching over ops: which mesh and axes, how many ranks, how many bytes
    a rank sends to the others per call (counted as the runtime statistics
    count them), and which collective undoes this one.
  }];
  let methods = [
    InterfaceMethod<"The `moe.mesh` symbol the group is drawn from.",
      "::mlir::FlatSymbolRefAttr", "getMeshAttr">,
    InterfaceMethod<"The names of the mesh axes the group spans.",
      "::mlir::ArrayAttr", "getAxes">,
    InterfaceMethod<"The tensor this rank contributes.",
      "::mlir::Value", "getInput">,
    InterfaceMethod<[{
        The result: a tensor, or a `!moe.future` of one for a `_start` form.
      }], "::mlir::Value", "getResult">,
    InterfaceMethod<[{
        Bytes this rank sends to other ranks per call, as the runtime
        statistics count them (runtime/comm/Collectives.cpp): all_to_all
        `(n-1)/n` of the input, all_gather `n-1` copies of the input,
        reduce_scatter `(n-1)/n` of the input, all_reduce `2(n-1)/n` of the
        input (ring), slice nothing. all_to_all_v sends a data-dependent
        count: this is then the upper bound (every input row to another rank)
        and `isBytesSentUpperBound` is true. -1 when the mesh cannot be
        resolved or the input is not statically shaped.
      }], "int64_t", "getBytesSentPerRank">,
    InterfaceMethod<[{
        True when `getBytesSentPerRank` is an upper bound rather than the
        exact count (the data-dependent all_to_all_v).
      }], "bool", "isBytesSentUpperBound", (ins), [{}], [{ return false; }]>,
    InterfaceMethod<[{
        Builds, at `builder`, the collective that undoes this one on `input`
        (a tensor of this op's result tensor type) and returns its result,
        whose tensor type is this op's input type; a `_start` form builds a
        `_start` form. For the data permutations it is the inverse:
        all_to_all with split and concat swapped, all_to_all_v with send and
        recv counts swapped, slice -> all_gather. For the reductions it is
        the transpose (the form a backward pass needs): all_gather <->
        reduce_scatter, all_reduce -> all_reduce.
      }], "::mlir::Value", "buildInverse",
      (ins "::mlir::OpBuilder &":$builder, "::mlir::Location":$loc,
           "::mlir::Value":$input)>,
  ];
  let extraClassDeclaration = [{
    /// The mesh op `getMeshAttr` names, or null when it does not resolve.
    ::mlir::moe::MeshOp getMeshOp();
  }];
  let extraSharedClassDeclaration = [{
    /// Ranks in the group (product of the axes' sizes), or -1 when the mesh
    /// or one of the axes cannot be resolved.
    int64_t getGroupSize() {
      return ::mlir::moe::detail::getCollectiveGroupSize($_op);
    }
    /// True for the `_start` forms, whose result is a `!moe.future`.
    bool isStart() {
      return ::mlir::moe::detail::isCollectiveStart($_op);
    }
  }];
}

#endif // MOE_DIALECT_MOE_IR_MOEINTERFACES_TD
