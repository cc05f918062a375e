"""``python3 -m moe_compiler verify``: the same model on two layouts, compared.

Compiles one model graph for two layouts (``--mesh A --mesh B``), runs both on the
same weights and inputs, and reports the largest difference of every output; with
``--train`` of the losses of every step, every gradient of the first step
(``hidden_states`` = dX and each weight under its Hugging Face name) and, with
``--steps N > 1``, the update of every weight over the N steps (the weights after
them minus the weights before: the weights themselves would hide it). With one ``--mesh`` the second
side is the float64 numpy reference (``reference`` / ``train-reference``), kept in
float64. The exit status is 1 when any difference is beyond the tolerance.

The measure of a tensor ``a`` against ``b`` (``b``: the second layout or the
reference) is ``max|a - b| / max|b|``, the largest difference relative to the
tensor's largest element (a scalar loss: ``|a - b| / |b|``). Elementwise relative
errors are meaningless for elements near zero, where summing in another order
changes the last bits of a small number; ``--tol`` bounds this measure for every
tensor. Measured values and what changes them: docs/equivalence.md.

A layout is a mesh with optional flags: ``ep=2,tp=2+dtd``, ``dp=2,ep=2+zero1``,
``tp=2+expert-tp``; ``1`` is one device; ``+cuda`` / ``+cpu`` choose moe-run's
``--device`` (``1+cuda`` against ``1`` compares the two backends). A mesh of N
ranks runs under ``mpirun -np N`` (``$MOE_BUILD_DIR/bin`` or ``build/bin`` has the
tools, see driver.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field

import numpy as np

from .configs import ConfigError, MoEConfig, parse_layers, parse_mesh
from .driver import find_tool
from .safetensors import SafetensorsFile

__all__ = ["Layout", "add_arguments", "compare", "parse_layout", "run_verify"]

FLAGS = ("dtd", "expert-tp", "zero1")  # moe-compile's --dtd, --expert-tp, --zero1
DEVICES = ("cpu", "cuda")  # moe-run's --device
DEFAULT_TOL = 1e-5
# Weights are f32: one step rounds w - lr * g to the nearest f32, so two sides
# whose gradients differ in the last bits may round an update 1 ulp of w apart,
# which is about 1e-4 of an lr = 1e-3 SGD update (docs/equivalence.md).
DEFAULT_UPDATE_TOL = 1e-2


@dataclass
class Layout:
    """A mesh (``dp=..,ep=..,tp=..``, empty for one device), compile flags and the
    device moe-run runs on (empty: its default)."""

    text: str
    mesh: str = ""
    flags: list[str] = field(default_factory=list)
    device: str = ""

    @property
    def ranks(self) -> int:
        return parse_mesh(self.mesh).size if self.mesh else 1


def parse_layout(text: str, train: bool) -> Layout:
    """``MESH[+FLAG...]``; ``1`` is one device. Errors name the bad part."""
    mesh, *flags = text.split("+")
    mesh = mesh.strip()
    if mesh in ("1", "one"):
        mesh, text = "", "one device" + "".join("+" + f for f in flags)
    else:
        parse_mesh(mesh)
    for f in flags:
        if f not in FLAGS + DEVICES:
            raise ConfigError(f"mesh {text!r}: unknown flag {f!r} (flags are "
                              f"{', '.join(FLAGS + DEVICES)})")
    if "zero1" in flags and not train:
        raise ConfigError(f"mesh {text!r}: zero1 shards optimizer state: it needs --train")
    devices = [f for f in flags if f in DEVICES]
    if len(devices) > 1:
        raise ConfigError(f"mesh {text!r}: more than one device ({', '.join(devices)})")
    return Layout(text, mesh, [f for f in flags if f in FLAGS],
                  devices[0] if devices else "")


def compare(name: str, kind: str, a: np.ndarray, b: np.ndarray,
            tol: float) -> dict[str, object]:
    """The row of one tensor: max|a - b|, max|b|, their ratio, elements that differ."""
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a64.shape != b64.shape:
        raise ConfigError(f"{name}: shape {list(a64.shape)} against {list(b64.shape)}")
    d = np.abs(a64 - b64)
    diff = float(d.max()) if d.size else 0.0
    scale = float(np.abs(b64).max()) if b64.size else 0.0
    rel = diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)
    return {"name": name, "kind": kind, "shape": list(a64.shape), "max_abs_diff": diff,
            "max_abs_ref": scale, "rel": rel,
            "differing": int(np.count_nonzero(a64 != b64)), "elements": int(a64.size),
            "ok": bool(rel <= tol)}


def _tensors(path: str) -> dict[str, np.ndarray]:
    with SafetensorsFile(path) as f:
        return {n: f.get(n) for n in f.keys()}


class _Runner:
    """Files, compiles and runs in one work directory."""

    def __init__(self, args: argparse.Namespace, cfg: MoEConfig, work: str) -> None:
        self.args, self.cfg, self.work = args, cfg, work
        self.layers = parse_layers(args.layers, cfg.num_layers)

    def path(self, name: str) -> str:
        return os.path.join(self.work, name)

    def tool(self, cmd: list[str], what: str) -> str:
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            raise ConfigError(f"{what} failed (exit {p.returncode}): {' '.join(cmd)}\n"
                              f"{(p.stdout + p.stderr).strip()}")
        return p.stdout

    def prepare(self) -> None:
        """The graph, and the weights, inputs and targets not given."""
        from .emit import emit_module
        from .train_reference import init_targets
        from .weights import init_inputs, init_weights

        a, cfg = self.args, self.cfg
        with open(self.path("model.mlir"), "w", encoding="utf-8") as fh:
            fh.write(emit_module(cfg, a.tokens, self.layers, "f32",
                                 source=f"verify {a.model}"))
        if not a.weights:
            a.weights = self.path("W.safetensors")
            init_weights(cfg, a.weights, a.seed, self.layers)
        if not a.inputs:
            a.inputs = self.path("X.safetensors")
            init_inputs(cfg, a.inputs, a.tokens, a.seed + 1)
        if a.train and not a.targets:
            a.targets = self.path("T.safetensors")
            init_targets(cfg, a.targets, a.tokens, a.seed + 2)

    def compile(self, layout: Layout, tag: str) -> str:
        out = self.path(f"mod-{tag}")
        cmd = [find_tool("moe-compile"), self.path("model.mlir"), "-o", out]
        cmd += ["--train"] if self.args.train else []
        cmd += ["--mesh", layout.mesh] if layout.mesh else []
        cmd += ["--" + f for f in layout.flags]
        self.tool(cmd, f"moe-compile for {layout.text}")
        return out

    def launch(self, layout: Layout) -> list[str]:
        if layout.ranks == 1:
            return []
        mpirun = shutil.which("mpirun")
        if mpirun is None:
            raise ConfigError(f"mpirun: not found on PATH (needed for {layout.ranks} ranks)")
        return [mpirun, "--allow-run-as-root", "--oversubscribe", "-np", str(layout.ranks)]

    def run_layout(self, layout: Layout, tag: str, weights: str) -> dict[str, object]:
        """Outputs (forward), or losses, gradients and final weights (--train)."""
        mod = self.compile(layout, tag)
        a = self.args
        run = self.launch(layout) + [find_tool("moe-run"), mod, "--weights", weights,
                                     "--inputs", a.inputs, "--quiet"]
        run += ["--device", layout.device] if layout.device else []
        if not a.train:
            y = self.path(f"Y-{tag}.safetensors")
            self.tool(run + ["--output", y], f"moe-run on {layout.text}")
            return {"outputs": _tensors(y)}
        g, w = self.path(f"G-{tag}.safetensors"), self.path(f"W-{tag}.safetensors")
        out = self.tool(run + ["--train", "--steps", str(a.steps), "--targets", a.targets,
                               "--optimizer", a.optimizer, "--lr", repr(a.lr), "--json",
                               "--grads", g, "--save-weights", w],
                        f"moe-run --train on {layout.text}")
        steps = json.loads(out[out.index("{"):])["steps"]
        return {"steps": steps, "grads": _tensors(g), "weights": _tensors(w)}

    def reference(self, weights: str) -> dict[str, object]:
        """The float64 reference of the same run."""
        from .checkpoint import Checkpoint

        a, cfg = self.args, self.cfg
        with SafetensorsFile(a.inputs) as f:
            x = f.get("hidden_states").astype(np.float64)
        if not a.train:
            from .reference import model_forward

            with Checkpoint(weights) as wf:
                return {"outputs": model_forward(cfg, x, wf.get, self.layers)}
        from .layout import sublayers
        from .train_reference import Optimizer, OptimizerConfig, load_training_weights, train

        with SafetensorsFile(a.targets) as f:
            t = f.get("hidden_states").astype(np.float64)
        with Checkpoint(weights) as wf:
            w = load_training_weights(cfg, wf.get, self.layers)
        bias = {s.get("bias").name for s in sublayers(cfg, self.layers)
                if s.kind == "moe" and s.get("bias") is not None}
        opt = Optimizer(OptimizerConfig.make(a.optimizer, a.lr),
                        {n: v.shape for n, v in w.items() if n not in bias})
        results = train(cfg, x, t, w, opt, a.steps, self.layers)
        steps = []
        for r in results:
            row = {"loss": r.loss, "mse": r.mse, "grad_norm": r.grad_norm}
            row.update({k: v for k, v in (("aux_loss", r.aux_loss), ("z_loss", r.z_loss))
                        if v is not None})
            steps.append(row)
        return {"steps": steps, "grads": {"hidden_states": results[0].dx, **results[0].grads},
                "weights": w}


def _rows(mine: dict[str, object], ref: dict[str, object], train: bool, steps: int,
          tol: float, update_tol: float,
          initial: tuple[dict, dict]) -> list[dict[str, object]]:  # type: ignore[type-arg]
    rows = []

    def pairs(kind: str, a: dict, b: dict) -> None:  # type: ignore[type-arg]
        if a.keys() != b.keys():
            raise ConfigError(f"{kind}: the two sides have different tensors: "
                              f"{sorted(set(a) ^ set(b))[:4]}")
        rows.extend(compare(n, kind, a[n], b[n], tol) for n in sorted(a))

    if not train:
        pairs("output", mine["outputs"], ref["outputs"])  # type: ignore[arg-type]
        return rows
    for i, (x, y) in enumerate(zip(mine["steps"], ref["steps"]), 1):  # type: ignore
        for key in ("loss", "mse", "aux_loss", "z_loss", "grad_norm"):
            if key in x and key in y:
                rows.append(compare(f"step {i} {key}", "loss", np.array(x[key]),
                                    np.array(y[key]), tol))
    pairs("grad", mine["grads"], ref["grads"])  # type: ignore[arg-type]
    if steps > 1:  # the updates: the weights themselves would hide them
        for n in sorted(mine["weights"]):  # type: ignore[call-overload]
            rows.append(compare(f"update of {n}", f"update after {steps} steps",
                                mine["weights"][n] - initial[0][n],  # type: ignore[index]
                                ref["weights"][n] - initial[1][n],  # type: ignore
                                update_tol))
    return rows


def run_verify(args: argparse.Namespace, cfg: MoEConfig) -> int:
    """The verify subcommand (after the model and its routing overrides are read)."""
    if not 1 <= len(args.mesh) <= 2:
        raise ConfigError("give one --mesh (against the float64 reference) or two "
                          f"(against each other), not {len(args.mesh)}")
    if args.tokens is None:  # the inputs' token count, else 32
        args.tokens = 32
        if args.inputs:
            with SafetensorsFile(args.inputs) as f:
                if "hidden_states" not in f:
                    raise ConfigError(f"inputs {args.inputs}: no tensor 'hidden_states'")
                args.tokens = int(f.get("hidden_states").shape[0])
    for what, v in (("tokens", args.tokens), ("steps", args.steps)):
        if v < 1:
            raise ConfigError(f"{what}: must be at least 1 (got {v})")
    for what, v in (("tol", args.tol), ("update-tol", args.update_tol)):
        if not (math.isfinite(v) and v >= 0):
            raise ConfigError(f"{what}: must be a finite number >= 0 (got {v})")
    if args.steps > 1 and not args.train:
        raise ConfigError("steps: applies to --train only")
    layouts = [parse_layout(m, args.train) for m in args.mesh]
    layers = parse_layers(args.layers, cfg.num_layers)
    for lay in layouts:
        if lay.mesh:
            parse_mesh(lay.mesh).check(cfg, layers, tokens=args.tokens)
    work = args.workdir or tempfile.mkdtemp(prefix="moe-verify-")
    os.makedirs(work, exist_ok=True)
    try:
        r = _Runner(args, cfg, work)
        r.prepare()
        mine = r.run_layout(layouts[0], "a", args.weights)
        wb = args.weights_b or args.weights
        if len(layouts) == 2:
            other = r.run_layout(layouts[1], "b", wb)
            against = layouts[1].text
        else:
            other = r.reference(wb)
            against = "the float64 reference"
        initial = ({}, {})
        if args.train and args.steps > 1:
            from .checkpoint import Checkpoint

            def load(path: str) -> dict[str, np.ndarray]:
                with Checkpoint(path) as wf:
                    return {n: wf.get(n).astype(np.float64)
                            for n in mine["weights"]}  # type: ignore[attr-defined]

            initial = (load(args.weights), load(wb))
        rows = _rows(mine, other, args.train, args.steps, args.tol, args.update_tol,
                     initial)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    ok = all(row["ok"] for row in rows)
    worst = max(rows, key=lambda row: row["rel"])
    if args.json:
        print(json.dumps({"a": layouts[0].text, "b": against, "train": args.train,
                          "steps": args.steps, "tol": args.tol,
                          "update_tol": args.update_tol, "ok": ok,
                          "worst": worst["name"], "rows": rows}, indent=2))
        return 0 if ok else 1
    what = f"{args.steps} training step(s)" if args.train else "forward"
    print(f"verify {cfg.name}: {layouts[0].text} against {against} ({args.tokens} tokens, "
          f"{what}); rel = max|a-b| / max|b| per tensor")
    width = max(len(str(row["name"])) for row in rows)
    print(f"{'tensor':{width}s}  {'max|a-b|':>9s}  {'max|b|':>9s}  {'rel':>9s}  differing")
    for row in rows:
        print(f"{row['name']:{width}s}  {row['max_abs_diff']:9.2e}  {row['max_abs_ref']:9.2e}  "
              f"{row['rel']:9.2e}  {row['differing']}/{row['elements']}"
              + ("" if row["ok"] else "  BEYOND TOLERANCE"))
    verdict = "PASS" if ok else "FAIL"
    tols = f"tolerance {args.tol:g}" + (f" (updates {args.update_tol:g})"
                                          if args.train and args.steps > 1 else "")
    print(f"{verdict}: largest rel {worst['rel']:.2e} ({worst['name']}), {tols}; "
          f"{sum(not row['ok'] for row in rows)} of {len(rows)} beyond it")
    return 0 if ok else 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    """verify's own options (the model, layers and routing overrides are cli.py's)."""
    p.add_argument("--mesh", action="append", default=[], metavar="LAYOUT",
                   help="a layout, MESH[+dtd][+expert-tp][+zero1][+cpu|+cuda], e.g. "
                   "ep=2,tp=2+dtd; '1' is one device; +cuda runs moe-run --device cuda. "
                   "Twice: the two are compared; once: against the float64 reference")
    p.add_argument("--train", action="store_true",
                   help="compile with --train and compare the losses, the first step's "
                   "gradients and (--steps > 1) the update of every weight over the steps")
    p.add_argument("--steps", type=int, default=1, metavar="N",
                   help="training steps (default 1)")
    p.add_argument("--optimizer", choices=("adamw", "sgd"), default="sgd",
                   help="optimizer of --train (default sgd: the weights after N steps "
                   "follow the gradients linearly; AdamW magnifies noise in near-zero "
                   "gradients)")
    p.add_argument("--lr", type=float, default=1e-3, metavar="X",
                   help="learning rate of --train (default 1e-3)")
    p.add_argument("--tokens", type=int, metavar="T",
                   help="tokens (default: those of --inputs, else 32)")
    p.add_argument("--seed", type=int, default=1,
                   help="seed of the weights (inputs: seed + 1, targets: seed + 2)")
    p.add_argument("--weights", metavar="W",
                   help="weights (safetensors or checkpoint folder; default: seeded)")
    p.add_argument("--weights-b", metavar="W",
                   help="other weights for the second side (default: --weights): "
                   "compares two checkpoints, or shows what a real difference looks like")
    p.add_argument("--inputs", metavar="X.safetensors", help="default: seeded")
    p.add_argument("--targets", metavar="T.safetensors", help="--train; default: seeded")
    p.add_argument("--tol", type=float, default=DEFAULT_TOL,
                   help=f"largest max|a-b|/max|b| allowed per tensor (default {DEFAULT_TOL:g})")
    p.add_argument("--update-tol", type=float, default=DEFAULT_UPDATE_TOL,
                   help="the same bound for the weight updates of --steps > 1 (default "
                   f"{DEFAULT_UPDATE_TOL:g}: f32 weights round each update)")
    p.add_argument("--workdir", metavar="DIR",
                   help="keep the graph, modules and files here (default: a temporary "
                   "directory, removed)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")

