"""Emit the model graph of a layer range as MLIR text in the ``moe`` dialect.

The graph is ``h = h + FFN_i(norm_i(h))`` over the layers, with ``FFN_i`` a
``moe.layer`` or a ``moe.mlp``; arguments carry the ``moe.input`` / ``moe.weight``
annotations of docs/module-format.md, so ``moe-run`` can load a slice of a real
checkpoint by its Hugging Face names. Text is generated directly (no MLIR Python
bindings) so the package keeps numpy as its only dependency.

With ``token_mask`` the graph takes a second input ``token_mask`` ([T] i32: 1 for
a real token, 0 for padding): every ``moe.layer`` gets it as its ``token_mask``
operand and every dense ``moe.mlp``'s output goes through ``moe.mask_rows``, so a
padding row leaves each sublayer as its residual alone (docs/user-guide.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .configs import ConfigError, MoEConfig
from .layout import MLP_ROLES, MOE_ROLES, Sublayer, WeightSpec, sublayers

__all__ = ["DTYPES", "emit_module", "format_f32", "tensor_type"]

DTYPES = {"f32": "f32", "f16": "f16", "bf16": "bf16"}


def format_f32(v: float) -> str:
    """An f32 literal that MLIR parses back to the same f32 (always has a '.')."""
    return f"{float(np.float32(v)):.9e} : f32"


def tensor_type(shape: Sequence[int], dtype: str) -> str:
    dims = "".join(f"{d}x" for d in shape)
    return f"tensor<{dims}{dtype}>"


def _moe_attrs(cfg: MoEConfig, sub: Sublayer) -> str:
    """The attr-dict of moe.layer: defaults are omitted, the order is the dialect's."""
    a = [f"num_experts = {sub.num_experts} : i64", f"top_k = {cfg.top_k} : i64"]
    if cfg.score_func != "softmax":
        a.append(f"score_func = #moe<score_func {cfg.score_func}>")
    if cfg.renormalize:
        a.append("renormalize")
    if float(np.float32(cfg.routed_scaling)) != 1.0:
        a.append(f"routed_scaling = {format_f32(cfg.routed_scaling)}")
    if cfg.num_groups > 1:
        a.append(f"num_groups = {cfg.num_groups} : i64")
        a.append(f"groups_kept = {cfg.groups_kept} : i64")
        a.append(f"group_score = #moe<group_score {cfg.group_score}>")
    if cfg.capacity_factor > 0:
        a.append(f"capacity_factor = {format_f32(cfg.capacity_factor)}")
    if cfg.capacity > 0:
        a.append(f"capacity = {cfg.capacity} : i64")
    if cfg.min_capacity > 0:
        a.append(f"min_capacity = {cfg.min_capacity} : i64")
    if cfg.token_groups != 1:
        a.append(f"token_groups = {cfg.token_groups} : i64")
    if cfg.drop_policy != "zero":
        a.append(f"drop_policy = #moe<drop_policy {cfg.drop_policy}>")
    a.append(f"activation = #moe<activation {cfg.activation}>")
    if cfg.num_shared_experts:
        a.append(f"num_shared_experts = {cfg.num_shared_experts} : i64")
        a.append(f"shared_intermediate = {cfg.shared_intermediate_size} : i64")
    if cfg.shared_gated:
        a.append("shared_gated")
    if cfg.aux_loss_coeff > 0:
        a.append(f"aux_loss_coeff = {format_f32(cfg.aux_loss_coeff)}")
    if cfg.z_loss_coeff > 0:
        a.append(f"z_loss_coeff = {format_f32(cfg.z_loss_coeff)}")
    return "{" + ", ".join(a) + "}"


class _Builder:
    """Accumulates function arguments and body lines with fresh SSA names."""

    def __init__(self, dtype: str) -> None:
        self.dtype = dtype
        self.args: list[str] = []
        self.arg_types: dict[str, str] = {}
        self.body: list[str] = []
        self.next = 0

    def arg(self, shape: Sequence[int], attrs: str, dtype: str | None = None) -> str:
        name = f"%arg{len(self.args)}"
        ty = tensor_type(shape, dtype or self.dtype)
        self.args.append(f"{name}: {ty} {{{attrs}}}")
        self.arg_types[name] = ty
        return name

    def weight(self, spec: WeightSpec) -> str:
        attrs = f'moe.weight = "{spec.name}"'
        if spec.transpose:
            attrs += ", moe.weight_transpose"
        # Selection biases stay f32 whatever the model dtype: they only order scores.
        return self.arg(spec.shape, attrs, "f32" if spec.role == "bias" else None)

    def op(self, text: str, results: int = 1) -> str:
        name = f"%{self.next}"
        self.next += 1
        self.body.append(f"    {name}{':' + str(results) if results > 1 else ''} = {text}")
        return name


def emit_module(cfg: MoEConfig, tokens: int, layers: range | None = None,
                dtype: str = "f32", source: str = "", token_mask: bool = False) -> str:
    """The MLIR module (text) of ``cfg``'s layers for ``tokens`` tokens (``token_mask``:
    with the padding mask input, see the module docstring)."""
    if dtype not in DTYPES:
        raise ConfigError(f"dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
    if tokens <= 0:
        raise ConfigError(f"tokens: must be positive (got {tokens})")
    cfg.validate()  # the verifier's rules on every layer attribute
    if tokens % cfg.token_groups:
        raise ConfigError(f"token_groups: {cfg.token_groups} does not divide tokens={tokens}")
    layers = layers if layers is not None else range(cfg.num_layers)
    subs = sublayers(cfg, layers)
    b = _Builder(DTYPES[dtype])
    d = cfg.hidden_size
    act_ty = tensor_type((tokens, d), b.dtype)
    loss_ty = "tensor<f32>"
    h = b.arg((tokens, d), 'moe.input = "hidden_states"')
    mask = b.arg((tokens,), 'moe.input = "token_mask"', "i32") if token_mask else None
    losses: dict[str, list[str]] = {"aux_loss": [], "z_loss": []}
    for sub in subs:
        n = _emit_norm(b, cfg, sub, h, act_ty)
        operands = [(s.role, b.weight(s)) for s in sub.weights]
        if sub.kind == "moe":
            if mask is not None:
                operands.append(("token_mask", mask))
            y = _emit_moe(b, cfg, sub, n, operands, act_ty, losses)
        else:
            y = _emit_mlp(b, cfg, n, operands, act_ty)
            if mask is not None:
                y = b.op(f"moe.mask_rows {y}, {mask} : ({act_ty}, {b.arg_types[mask]}) -> "
                         f"{act_ty}")
        h = b.op(f"moe.add {h}, {y} : ({act_ty}, {act_ty}) -> {act_ty}")
    results = [(h, act_ty, "hidden_states")]
    for name, parts in losses.items():
        if not parts:
            continue
        total = parts[0]
        for p in parts[1:]:
            total = b.op(f"moe.add {total}, {p} : ({loss_ty}, {loss_ty}) -> {loss_ty}")
        results.append((total, loss_ty, name))
    sig_results = ", ".join(f'{ty} {{moe.output = "{name}"}}' for _, ty, name in results)
    lines = [
        f"// Generated by moe_compiler emit: {cfg.name} ({cfg.family}), layers "
        f"[{layers.start}, {layers.stop}), {tokens} tokens, {dtype}"
        + (", token mask." if token_mask else "."),
    ]
    if source:
        lines.append(f"// Source: {source}")
    lines.append("module {")
    args = ",\n      ".join(b.args)
    lines.append(f"  func.func @forward({args})\n      -> ({sig_results}) {{")
    lines += b.body
    lines.append("    return " + ", ".join(v for v, _, _ in results) + " : "
                 + ", ".join(ty for _, ty, _ in results))
    lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _emit_norm(b: _Builder, cfg: MoEConfig, sub: Sublayer, h: str, act_ty: str) -> str:
    """``moe.rmsnorm``, or ``moe.layernorm`` (with ``bias`` where the config has one)."""
    w = b.weight(sub.norm)
    eps = f"{{eps = {format_f32(cfg.norm_eps)}}}"
    if cfg.norm == "rmsnorm":
        return b.op(f"moe.rmsnorm {h}, {w} {eps} : ({act_ty}, {b.arg_types[w]}) -> {act_ty}")
    if sub.norm_bias is None:
        return b.op(f"moe.layernorm {h}, {w} {eps} : ({act_ty}, {b.arg_types[w]}) -> "
                    f"{act_ty}")
    bias = b.weight(sub.norm_bias)
    return b.op(f"moe.layernorm {h}, {w} bias {bias} {eps} : ({act_ty}, {b.arg_types[w]}, "
                f"{b.arg_types[bias]}) -> {act_ty}")


def _operand_list(roles: Sequence[str],
                  operands: list[tuple[str, str]]) -> tuple[str, list[str]]:
    """``keyword %value`` pairs in the dialect's operand order, and the values."""
    by_role = dict(operands)
    unknown = set(by_role) - set(roles)
    assert not unknown, f"operands without a keyword: {unknown}"
    parts, names = [], []
    for role in roles:
        if role in by_role:
            parts.append(f"{role} {by_role[role]}")
            names.append(by_role[role])
    return " ".join(parts), names


def _emit_moe(b: _Builder, cfg: MoEConfig, sub: Sublayer, x: str,
              operands: list[tuple[str, str]], act_ty: str,
              losses: dict[str, list[str]]) -> str:
    text, names = _operand_list(MOE_ROLES + ("token_mask",), operands)
    loss_names = [n for n, c in (("aux_loss", cfg.aux_loss_coeff), ("z_loss", cfg.z_loss_coeff))
                  if c > 0]
    result_types = [act_ty] + ["tensor<f32>"] * len(loss_names)
    in_types = ", ".join([act_ty] + [b.arg_types[n] for n in names])
    res = (result_types[0] if len(result_types) == 1
           else "(" + ", ".join(result_types) + ")")
    v = b.op(f"moe.layer {x} {text} {_moe_attrs(cfg, sub)} : ({in_types}) -> {res}",
             results=len(result_types))
    if not loss_names:
        return v
    for i, name in enumerate(loss_names, start=1):
        losses[name].append(f"{v}#{i}")
    return f"{v}#0"


def _emit_mlp(b: _Builder, cfg: MoEConfig, x: str, operands: list[tuple[str, str]],
              act_ty: str) -> str:
    text, names = _operand_list(MLP_ROLES, operands)
    in_types = ", ".join([act_ty] + [b.arg_types[n] for n in names])
    # moe.mlp takes its activation in the custom syntax (`act = swiglu`), not attr-dict.
    return b.op(f"moe.mlp {x} {text} act = {cfg.dense_act} : ({in_types}) -> {act_ty}")
