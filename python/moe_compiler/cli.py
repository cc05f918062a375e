"""Command line: ``python3 -m moe_compiler <subcommand> ...`` (``--help`` everywhere).

Every user error (bad config field, unknown preset, mesh that does not divide the
model, bad weights file) is one line on stderr naming the field or file, and a
non-zero exit: 1 for those, 2 for command-line usage errors (argparse's code).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

import numpy as np

from . import __version__
from .checkpoint import Checkpoint
from .configs import ConfigError, MoEConfig, load_hf_config, parse_layers, parse_mesh
from .presets import PRESETS, get_preset
from .routing import load_routing
from .safetensors import SafetensorsError, SafetensorsFile, save
from .token_mask import read_token_mask

PROG = "python3 -m moe_compiler"


# -- shared options ---------------------------------------------------------------------

def _add_model(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--hf-config", metavar="CONFIG.json",
                   help="a Hugging Face config.json (or a directory holding one), or a "
                   "preset name as in `info`")
    g.add_argument("--preset", metavar="NAME", help=f"a preset: {', '.join(PRESETS)}")


def _add_layers(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layers", metavar="A:B",
                   help="the layer range [A, B) of the graph (default: all layers)")


def _add_routing(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("routing overrides (emit and reference must get the same ones)")
    g.add_argument("--capacity-factor", type=float, metavar="CF",
                   help="C = ceil(CF * T_group * k / E); 0 = dropless (default: the config's)")
    g.add_argument("--capacity", type=int, metavar="N",
                   help="absolute capacity per expert and token group (overrides CF)")
    g.add_argument("--min-capacity", type=int, metavar="N", help="lower bound on C")
    g.add_argument("--token-groups", type=int, metavar="G",
                   help="split the T tokens into G equal groups for capacity")
    g.add_argument("--drop-policy", choices=("zero", "passthrough"),
                   help="what a dropped assignment contributes (0, or weight * x)")
    g.add_argument("--aux-loss-coeff", type=float, metavar="A",
                   help="emit the load-balance loss with this coefficient")
    g.add_argument("--z-loss-coeff", type=float, metavar="B",
                   help="emit the router z-loss with this coefficient")
    g.add_argument("--losses", action="store_true",
                   help="emit both losses with the model's published coefficients")
    g.add_argument("--norm", choices=("rmsnorm", "layernorm"),
                   help="override the norm (rmsnorm also drops a LayerNorm's bias)")


def _load_model(args: argparse.Namespace) -> MoEConfig:
    return get_preset(args.preset) if args.preset else _config_or_preset(args.hf_config)


def _is_preset(text: str) -> bool:
    """True when ``text`` names a preset and no file or directory of that name exists
    (an existing path always wins, so a local ``mixtral-8x7b/`` is read as a config)."""
    return not os.path.exists(text) and text in PRESETS


def _config_or_preset(text: str) -> MoEConfig:
    if os.path.exists(text):
        return load_hf_config(text)
    if _is_preset(text):
        return get_preset(text)
    raise ConfigError(f"{text}: neither a config.json path nor a preset "
                      f"({', '.join(PRESETS)})")


def _model_source(args: argparse.Namespace) -> str:
    """Where the model came from, for the header of emitted MLIR."""
    if args.preset:
        return f"preset {args.preset}"
    return f"preset {args.hf_config}" if _is_preset(args.hf_config) else args.hf_config


def _routed(args: argparse.Namespace, cfg: MoEConfig | None = None) -> MoEConfig:
    cfg = cfg or _load_model(args)
    aux, z = args.aux_loss_coeff, args.z_loss_coeff
    if args.losses:
        aux = cfg.published_aux_loss_coeff if aux is None else aux
        z = cfg.published_z_loss_coeff if z is None else z
    return cfg.with_overrides(
        capacity_factor=args.capacity_factor, capacity=args.capacity,
        min_capacity=args.min_capacity, token_groups=args.token_groups,
        drop_policy=args.drop_policy, aux_loss_coeff=aux, z_loss_coeff=z, norm=args.norm)


# -- subcommands ------------------------------------------------------------------------

def cmd_info(args: argparse.Namespace) -> int:
    from .info import model_info

    cfg = _config_or_preset(args.model)
    mesh = parse_mesh(args.mesh)
    mesh.check(cfg, tokens=args.tokens)
    info = model_info(cfg, mesh, tokens=args.tokens, dtype=args.dtype, dtd=args.dtd,
                      expert_tp=args.expert_tp)
    if args.json:
        print(json.dumps(info.as_dict(), indent=2, sort_keys=True))
        return 0
    g = 1e9
    print(f"model            {cfg.name} ({cfg.family}), {cfg.num_layers} layers, "
          f"{info.moe_layers} MoE layers")
    print(f"experts          {cfg.num_experts} routed, top-{cfg.top_k}"
          + (f", {cfg.num_shared_experts} shared" if cfg.num_shared_experts else ""))
    print(f"params total     {info.params_total:,} ({info.params_total / g:.2f}B)")
    print(f"params active    {info.params_active:,} ({info.params_active / g:.2f}B)")
    print(f"FLOPs/token      {info.flops_per_token:,} ({info.flops_per_token / g:.2f} GFLOP, "
          "2 per MAC, attention projections + FFN + router + LM head)")
    print(f"all-to-all/token {info.a2a_bytes_per_token_per_layer:,.0f} bytes per MoE layer "
          f"(dispatch + combine, {args.dtype}, (ep-1)/ep leave the rank)")
    print(f"memory/rank      {info.memory_per_rank_bytes:,} bytes "
          f"({info.memory_per_rank_bytes / 2**30:.2f} GiB: weights "
          f"{info.weights_per_rank_bytes / 2**30:.2f} GiB + activations of "
          f"{args.tokens} tokens {info.activations_per_rank_bytes / 2**30:.3f} GiB)")
    print(f"mesh             {info.mesh}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    cfg = _config_or_preset(args.model)
    print(json.dumps(cfg.summary(), indent=2))
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from .info import count_params

    rows = []
    for p in PRESETS.values():
        c = count_params(p.build())
        rows.append({"name": p.name, "row": p.row, "params_total": c.total,
                     "params_active": c.active, "seed_total": p.seed_total,
                     "seed_active": p.seed_active, "note": p.note})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        print(f"{r['name']:24s} {r['params_total'] / 1e9:9.2f}B total "
              f"{r['params_active'] / 1e9:8.2f}B active   {r['row']}")
    return 0


def cmd_emit(args: argparse.Namespace) -> int:
    from .emit import emit_module

    cfg = _routed(args)
    layers = parse_layers(args.layers, cfg.num_layers)
    text = emit_module(cfg, args.tokens, layers, args.dtype, source=_model_source(args),
                       token_mask=args.token_mask)
    _write_text(args.output, text)
    return 0


def _write_text(path: str, text: str) -> None:
    if path == "-":
        sys.stdout.write(text)
        return
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def cmd_init_weights(args: argparse.Namespace) -> int:
    from .weights import init_weights

    cfg = _load_model(args)
    layers = parse_layers(args.layers, cfg.num_layers)
    if args.shards is not None and args.shards < 1:
        raise ConfigError(f"shards: must be at least 1 (got {args.shards})")
    n = init_weights(cfg, args.output, args.seed, layers, args.scale, args.dtype,
                     args.shards)
    print(f"wrote {n} tensors to {args.output}", file=sys.stderr)
    return 0


def cmd_init_inputs(args: argparse.Namespace) -> int:
    from .weights import init_inputs

    cfg = _load_model(args)
    if args.tokens <= 0:
        raise ConfigError(f"tokens: must be positive (got {args.tokens})")
    init_inputs(cfg, args.output, args.tokens, args.seed, args.dtype)
    return 0


def cmd_reference(args: argparse.Namespace) -> int:
    from .reference import model_forward

    cfg = _routed(args)
    layers = parse_layers(args.layers, cfg.num_layers)
    with SafetensorsFile(args.inputs) as xf:
        x = xf.get("hidden_states")
    mask = read_token_mask(args.inputs, x.shape[0])
    with Checkpoint(args.weights) as wf:
        forced = (load_routing(args.replay_routing, cfg, layers, x.shape[0])
                  if args.replay_routing else None)
        out = model_forward(cfg, x, wf.get, layers, forced, mask)
    save(args.output, {k: np.asarray(v, dtype=np.float32) for k, v in out.items()},
         metadata={"generator": "moe_compiler reference (float64, written as f32)"})
    return 0


def _float_tensor(path: str, what: str) -> np.ndarray:
    """The float tensor ``hidden_states`` of a safetensors file, finite, as float64."""
    with SafetensorsFile(path) as f:
        if "hidden_states" not in f:
            raise ConfigError(f"{what} {path}: no tensor 'hidden_states'")
        dtype = f.dtype("hidden_states")
        if dtype not in ("F64", "F32", "F16", "BF16"):
            raise ConfigError(f"{what} {path}: tensor 'hidden_states' is {dtype}, expected "
                              "a float tensor (F32, F16, BF16 or F64)")
        a = f.get("hidden_states").astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise ConfigError(f"{what} {path}: tensor 'hidden_states' is not finite")
    return a


def _pair(text: str | None, what: str) -> tuple[float, float] | None:
    if text is None:
        return None
    parts = text.split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        return float(parts[0]), float(parts[1])
    except ValueError:
        raise ConfigError(f"{what}: expected two numbers B1,B2 (got {text!r})") from None


def cmd_train_reference(args: argparse.Namespace) -> int:
    import math

    from .layout import sublayers
    from .train_reference import (
        DEFAULT_BIAS_UPDATE_RATE,
        Optimizer,
        OptimizerConfig,
        load_training_weights,
        train,
    )

    cfg = _routed(args)
    layers = parse_layers(args.layers, cfg.num_layers)
    opt_cfg = OptimizerConfig.make(args.optimizer, args.lr, _pair(args.betas, "betas"),
                                   args.eps, args.momentum, args.weight_decay)
    if args.steps < 1:
        raise ConfigError(f"steps: must be at least 1 (got {args.steps})")
    biased = [s.get("bias") for s in sublayers(cfg, layers)
              if s.kind == "moe" and s.get("bias") is not None]
    rate = args.bias_update_rate
    if rate is not None:
        if not biased:
            raise ConfigError(f"bias-update-rate: {cfg.name} has no selection bias in "
                              "these layers")
        if not (math.isfinite(rate) and rate >= 0):
            raise ConfigError(f"bias-update-rate: must be a finite number >= 0 (got {rate})")
    outputs = [p for p in (args.grads, args.save_weights, args.save_optimizer_state) if p]
    for p in outputs:
        d = os.path.dirname(os.path.abspath(p))
        if not os.path.isdir(d):
            raise ConfigError(f"{p}: directory {d} does not exist")
    if len(set(map(os.path.abspath, outputs))) != len(outputs):
        raise ConfigError("--grads, --save-weights and --save-optimizer-state must be "
                          "different files")

    x = _float_tensor(args.inputs, "inputs")
    t = _float_tensor(args.targets, "targets")
    if t.shape != x.shape:
        raise ConfigError(f"targets {args.targets}: tensor 'hidden_states' has shape "
                          f"{list(t.shape)}, expected {list(x.shape)} (the inputs' shape)")
    with Checkpoint(args.weights) as wf:
        weights = load_training_weights(cfg, wf.get, layers)
    bias_names = {b.name for b in biased}
    shapes = {n: a.shape for n, a in weights.items() if n not in bias_names}
    state = None
    if args.optimizer_state:
        with SafetensorsFile(args.optimizer_state) as sf:
            state = {n: sf.get(n) for n in sf.keys()}
    try:
        opt = Optimizer(opt_cfg, shapes, state)
    except ConfigError as e:
        raise ConfigError(f"{args.optimizer_state}: {e}") from None

    rows: list[dict[str, object]] = []

    def report(i: int, res) -> None:  # type: ignore[no-untyped-def]
        row: dict[str, object] = {"step": i, "optimizer_step": opt.step_count + 1,
                                  "loss": res.loss, "mse": res.mse}
        if res.aux_loss is not None:
            row["aux_loss"] = res.aux_loss
        if res.z_loss is not None:
            row["z_loss"] = res.z_loss
        row["grad_norm"] = res.grad_norm
        if args.clip_grad_norm is not None:
            row["clip_coef"] = res.clip_coef
        rows.append(row)
        if not args.json:
            print(f"step {i:4d}  " + "  ".join(f"{k} {v:.12e}" for k, v in row.items()
                                               if k not in ("step", "optimizer_step")),
                  flush=True)

    forced = (load_routing(args.replay_routing, cfg, layers, x.shape[0])
              if args.replay_routing else None)
    mask = read_token_mask(args.inputs, x.shape[0])
    if mask is not None and biased:
        raise ConfigError(f"inputs {args.inputs}: a token mask with a selection-bias "
                          "update is not supported (as moe-compile --train)")
    results = train(cfg, x, t, weights, opt, args.steps, layers,
                    DEFAULT_BIAS_UPDATE_RATE if rate is None else rate, report,
                    args.clip_grad_norm, forced, mask)
    # Everything is computed: only now are files written (each one atomically).
    meta = {"generator": "moe_compiler train-reference (float64)", "model": cfg.name}
    if args.grads:
        first = results[0]
        g = {"hidden_states": first.dx, **first.grads}
        save(args.grads, {k: np.asarray(v, dtype=np.float32) for k, v in g.items()},
             metadata=dict(meta, content="gradients of the first step, written as f32"))
    if args.save_weights:
        save(args.save_weights, {k: np.asarray(v, dtype=np.float32)
                                 for k, v in weights.items()},
             metadata=dict(meta, step=str(opt.step_count)))
    if args.save_optimizer_state:
        save(args.save_optimizer_state, opt.state_tensors(),
             metadata=dict(meta, **opt_cfg.metadata()))
    if args.json:
        print(json.dumps({"optimizer": opt_cfg.name, "steps": rows}, indent=2))
    return 0


def cmd_init_targets(args: argparse.Namespace) -> int:
    from .train_reference import init_targets

    cfg = _load_model(args)
    if args.tokens <= 0:
        raise ConfigError(f"tokens: must be positive (got {args.tokens})")
    init_targets(cfg, args.output, args.tokens, args.seed, args.dtype)
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    from .driver import compile_module

    if args.mesh:
        parse_mesh(args.mesh)  # one-line error before the tool runs
    return compile_module(args.model, args.output, args.mesh, args.dtd, args.extra)


def cmd_run(args: argparse.Namespace) -> int:
    from .driver import run_module

    # --check and its tolerances are moe-run's own options: one implementation of
    # the comparison, the same one the lit integration tests use.
    extra = []
    for flag, value in (("--check", args.check), ("--rtol", args.rtol),
                        ("--atol", args.atol)):
        if value is not None:
            extra += [flag, str(value)]
    return run_module(args.module, args.weights, args.inputs, args.output,
                      args.mesh_ranks, extra + args.extra)


def cmd_plan(args: argparse.Namespace) -> int:
    import subprocess
    import tempfile

    from .driver import find_tool
    from .emit import emit_module

    tool = find_tool("moe-plan")
    if args.model_mlir:
        model, tmpdir = args.model_mlir, None
    else:
        if args.tokens is None:
            raise ConfigError("tokens: --tokens T is required with a config or preset")
        cfg = _routed(args)
        layers = parse_layers(args.layers, cfg.num_layers)
        text = emit_module(cfg, args.tokens, layers, args.dtype, source=_model_source(args))
        tmpdir = None
        if args.model_out:
            model = args.model_out
        else:
            tmpdir = tempfile.TemporaryDirectory(prefix="moe-plan-")
            model = os.path.join(tmpdir.name, "model.mlir")
        _write_text(model, text)
    cmd = [tool, model] + (["--tokens", str(args.tokens)] if args.tokens else []) + args.extra
    try:
        rc = subprocess.call(cmd)
    finally:
        if tmpdir is not None:
            tmpdir.cleanup()
    if tmpdir is not None and rc == 0:
        print(f"{PROG} plan: the model was emitted to a temporary file; pass --model-out "
              "PATH to keep it for the moe-compile commands above", file=sys.stderr)
    return rc


def cmd_verify(args: argparse.Namespace) -> int:
    from .verify import run_verify

    return run_verify(args, _routed(args, _config_or_preset(args.model)))


# -- parser -----------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="moe-compiler front end: Hugging Face MoE configs and presets "
        "to MLIR, a float64 reference, and drivers for moe-compile / moe-run.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)

    s = sub.add_parser("info", help="parameters, FLOPs, all-to-all bytes and memory",
                       description="Parameters (total/active), FLOPs per token, all-to-all "
                       "bytes per token per MoE layer and memory per rank for a mesh.")
    s.add_argument("model", metavar="CONFIG_OR_PRESET", help="config.json path or preset name")
    s.add_argument("--mesh", metavar="dp=..,ep=..,tp=..", help="device mesh (default: 1 rank)")
    s.add_argument("--tokens", type=int, default=4096, metavar="T",
                   help="tokens per step, for activation memory (default 4096)")
    s.add_argument("--dtype", choices=("bf16", "f16", "f32"), default="bf16",
                   help="bytes of weights and activations (default bf16)")
    s.add_argument("--dtd", action="store_true",
                   help="duplicate token dropping: tp ranks do not resend the same tokens")
    s.add_argument("--expert-tp", action="store_true",
                   help="routed experts split over tp too (moe-compile --expert-tp)")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("config", help="print the normalized config",
                       description="Print the normalized MoE config of a config.json or preset.")
    s.add_argument("model", metavar="CONFIG_OR_PRESET", help="config.json path or preset name")
    s.set_defaults(func=cmd_config)

    s = sub.add_parser("presets", help="list the presets (seed table rows)",
                       description="List the presets with their parameter counts.")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_presets)

    s = sub.add_parser("emit", help="write the model graph as MLIR",
                       description="Write the FFN stack of a layer range as MLIR in the moe "
                       "dialect, arguments annotated per docs/module-format.md.")
    _add_model(s)
    s.add_argument("--tokens", type=int, required=True, metavar="T", help="tokens T")
    _add_layers(s)
    s.add_argument("--dtype", choices=("f32", "bf16", "f16"), default="f32",
                   help="tensor element type (default f32)")
    _add_routing(s)
    s.add_argument("--token-mask", action="store_true",
                   help="add the input token_mask ([T] i32: 1 = real token, 0 = padding): "
                   "padding is not routed, not counted, and its output is the residual")
    s.add_argument("-o", "--output", required=True, metavar="MODEL.mlir", help="'-' = stdout")
    s.set_defaults(func=cmd_emit)

    s = sub.add_parser("init-weights", help="seeded random weights under HF names",
                       description="Write seeded random weights for a layer range, under the "
                       "family's Hugging Face names and shapes.")
    _add_model(s)
    _add_layers(s)
    s.add_argument("--seed", type=int, required=True, help="random seed")
    s.add_argument("--scale", type=float, default=None,
                   help="standard deviation of every matrix (default 1/sqrt(fan_in), which "
                   "keeps activations O(1); 0.02 = HF initializer_range)")
    s.add_argument("--dtype", choices=("f32", "bf16", "f16"), default="f32",
                   help="file dtype (default f32)")
    s.add_argument("--shards", type=int, default=None, metavar="N",
                   help="write a checkpoint folder OUTPUT of N shards and "
                   "model.safetensors.index.json, as Hugging Face publishes models")
    s.add_argument("-o", "--output", required=True, metavar="W.safetensors")
    s.set_defaults(func=cmd_init_weights)

    s = sub.add_parser("init-inputs", help="seeded random hidden_states [T, D]",
                       description="Write a tensor 'hidden_states' [T, D] drawn from N(0, 1).")
    _add_model(s)
    s.add_argument("--tokens", type=int, required=True, metavar="T")
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--dtype", choices=("f32", "bf16", "f16"), default="f32")
    s.add_argument("-o", "--output", required=True, metavar="X.safetensors")
    s.set_defaults(func=cmd_init_inputs)

    s = sub.add_parser("reference", help="float64 reference forward",
                       description="Run the float64 numpy reference of the model graph and "
                       "write its outputs as f32.")
    _add_model(s)
    _add_layers(s)
    s.add_argument("--weights", required=True, metavar="W",
                   help="safetensors file or checkpoint folder (model.safetensors.index.json "
                   "and its shards; F8_E4M3 with block scales is dequantized)")
    s.add_argument("--inputs", required=True, metavar="X.safetensors",
                   help="hidden_states, and token_mask for a masked model")
    _add_routing(s)
    s.add_argument("--replay-routing", metavar="R.safetensors",
                   help="force every MoE layer's experts (routing.<layer>.experts, as "
                   "moe-run --dump-routing writes them); gate weights from the scores")
    s.add_argument("-o", "--output", required=True, metavar="REF.safetensors")
    s.set_defaults(func=cmd_reference)

    s = sub.add_parser("init-targets", help="seeded random targets hidden_states [T, D]",
                       description="Write training targets: a tensor 'hidden_states' [T, D] "
                       "drawn from N(0, 1) (another stream than init-inputs').")
    _add_model(s)
    s.add_argument("--tokens", type=int, required=True, metavar="T")
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--dtype", choices=("f32", "bf16", "f16"), default="f32")
    s.add_argument("-o", "--output", required=True, metavar="T.safetensors")
    s.set_defaults(func=cmd_init_targets)

    s = sub.add_parser("train-reference", help="float64 reference training steps",
                       description="Run N training steps of the float64 reference (loss "
                       "mean((y - t)^2) + the enabled aux losses; backward by hand; AdamW "
                       "or SGD as torch.optim; docs/spec.md section 7) on one batch, "
                       "print the losses of every step and write the first step's "
                       "gradients, the updated weights and the optimizer state. Nothing is "
                       "written unless every step succeeds.")
    _add_model(s)
    _add_layers(s)
    s.add_argument("--weights", required=True, metavar="W",
                   help="safetensors file or checkpoint folder")
    s.add_argument("--inputs", required=True, metavar="X.safetensors")
    s.add_argument("--targets", required=True, metavar="T.safetensors",
                   help="tensor 'hidden_states' of the inputs' shape (e.g. from "
                   "init-targets, or another model's `reference` output)")
    s.add_argument("--steps", type=int, required=True, metavar="N")
    g = s.add_argument_group("optimizer (hyperparameters are rounded to f32)")
    g.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    g.add_argument("--lr", type=float, default=1e-3, metavar="X",
                   help="learning rate, finite and > 0 (default 1e-3)")
    g.add_argument("--betas", metavar="B1,B2", help="adamw (default 0.9,0.999)")
    g.add_argument("--eps", type=float, metavar="E", help="adamw (default 1e-8)")
    g.add_argument("--momentum", type=float, metavar="M", help="sgd (default 0)")
    g.add_argument("--weight-decay", type=float, metavar="W",
                   help="decoupled for adamw (default 0.01), added to the gradient for "
                   "sgd (default 0)")
    g.add_argument("--bias-update-rate", type=float, metavar="R",
                   help="DeepSeek-V3's selection-bias update speed (default 0.001)")
    g.add_argument("--clip-grad-norm", type=float, metavar="X",
                   help="scale the gradients by X / (norm + 1e-6) when that is < 1, "
                   "before the optimizer step (norm: the global L2 norm of every "
                   "weight's gradient; torch.nn.utils.clip_grad_norm_)")
    g.add_argument("--optimizer-state", metavar="S.safetensors",
                   help="resume from this state (written by --save-optimizer-state)")
    _add_routing(s)
    s.add_argument("--grads", metavar="G.safetensors",
                   help="write the first step's gradients: 'hidden_states' (dX) and every "
                   "weight under its name (f32)")
    s.add_argument("--save-weights", metavar="W2.safetensors",
                   help="write the weights of the layer range after the last step (f32)")
    s.add_argument("--save-optimizer-state", metavar="S2.safetensors",
                   help="write NAME.exp_avg / NAME.exp_avg_sq (adamw) or "
                   "NAME.momentum_buffer (sgd) and optimizer.step")
    s.add_argument("--replay-routing", metavar="R.safetensors",
                   help="force every MoE layer's experts at every step (as "
                   "moe-run --train --replay-routing)")
    s.add_argument("--json", action="store_true", help="print the losses as one JSON object")
    s.set_defaults(func=cmd_train_reference)

    s = sub.add_parser("plan", help="rank the parallel layouts on a cluster (moe-plan)",
                       description="Emit the model (a config, a preset, or --model "
                       "MODEL.mlir) and run moe-plan on it; arguments after the known "
                       "ones (--cluster, --devices, --train, --json, --simulate, --time, "
                       "...) go to moe-plan. Exit code is moe-plan's.")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--hf-config", metavar="CONFIG.json",
                   help="a Hugging Face config.json (or a directory holding one), or a "
                   "preset name")
    g.add_argument("--preset", metavar="NAME", help="a preset")
    g.add_argument("--model", dest="model_mlir", metavar="MODEL.mlir",
                   help="an emitted model graph")
    s.add_argument("--tokens", type=int, metavar="T",
                   help="global batch in tokens (required with a config or preset)")
    _add_layers(s)
    s.add_argument("--dtype", choices=("f32", "bf16", "f16"), default="f32",
                   help="tensor element type (default f32; training needs f32)")
    _add_routing(s)
    s.add_argument("--model-out", metavar="MODEL.mlir",
                   help="keep the emitted model here (the plans' commands name it)")
    s.set_defaults(func=cmd_plan)

    s = sub.add_parser("compile", help="run moe-compile",
                       description="Run moe-compile MODEL.mlir -o OUT_DIR; arguments after "
                       "the known ones are passed through. Exit code is moe-compile's.")
    s.add_argument("model", metavar="MODEL.mlir")
    s.add_argument("-o", "--output", required=True, metavar="OUT_DIR")
    s.add_argument("--mesh", metavar="dp=..,ep=..,tp=..")
    s.add_argument("--dtd", action="store_true", help="duplicate token dropping")
    s.set_defaults(func=cmd_compile)

    s = sub.add_parser("run", help="run moe-run (under mpirun for several ranks)",
                       description="Run a compiled module; with N > 1 ranks in its manifest "
                       "(or --mesh-ranks N) under mpirun. Unknown arguments (--stats, "
                       "--trace, --repeat, ...) go to moe-run; its exit code is returned.")
    s.add_argument("module", metavar="OUT_DIR")
    s.add_argument("--weights", required=True, metavar="W",
                   help="safetensors file or checkpoint folder")
    s.add_argument("--inputs", required=True, metavar="X.safetensors")
    s.add_argument("--output", required=True, metavar="Y.safetensors")
    s.add_argument("--check", metavar="REF.safetensors",
                   help="moe-run compares every output with REF (exit 1 on a mismatch)")
    s.add_argument("--mesh-ranks", type=int, metavar="N", help="override the rank count")
    s.add_argument("--rtol", type=float, help="relative tolerance of --check (moe-run's)")
    s.add_argument("--atol", type=float, help="absolute tolerance of --check (moe-run's)")
    s.set_defaults(func=cmd_run)

    from .verify import add_arguments as add_verify_arguments

    s = sub.add_parser("verify", help="run a model on two layouts and compare",
                       description="Compile and run the same model, weights and inputs on "
                       "two layouts (--mesh twice), or on one against the float64 reference "
                       "(--mesh once); report the largest difference of every output (with "
                       "--train: the losses, every gradient, the weight updates over --steps). "
                       "Exit 1 when one is beyond --tol (docs/equivalence.md).")
    s.add_argument("model", metavar="CONFIG_OR_PRESET", help="config.json path or preset name")
    _add_layers(s)
    _add_routing(s)
    add_verify_arguments(s)
    s.set_defaults(func=cmd_verify)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in ("compile", "run", "plan"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = [a for a in extra if a != "--"]
    try:
        return int(args.func(args) or 0)
    except (ConfigError, SafetensorsError) as e:
        print(f"{PROG} {args.command}: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        where = f" {e.filename}" if e.filename else ""
        print(f"{PROG} {args.command}: error:{where}: {e.strerror}", file=sys.stderr)
        return 1
