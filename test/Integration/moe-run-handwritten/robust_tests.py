#!/usr/bin/env python3
"""moe-run under faults, and run-to-run repeatability (issue 15).

Faults, with the hand-written module of run_tests.py on two ranks (mpirun -np 2,
``--repeat`` large enough that the ranks are inside the run loop):
  * a rank killed with SIGKILL: the job ends with a non-zero exit well within
    ``--timeout`` (the launcher notices the dead rank, names it and the signal, and
    ends the others), and no output file is left;
  * a rank stopped with SIGSTOP: the other rank's collective times out after
    ``--timeout`` seconds with an error naming the collective, every rank ends,
    and no output file is left.

Repeatability, with tiny-mixtral compiled by moe-compile (when --moe-compile is
given): the same module, weights and inputs give bitwise identical output files
run after run, on one rank and on two (ep=2), and with 1, 2 or 4 threads per rank
(measured: the thread count does not change the bits; docs/user-guide.md).
"""
import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from run_tests import build_module, make_data, weights_tensors, write_safetensors  # noqa: E402

failures = []


def fail(what, why, text=""):
    failures.append(f"{what}: {why}" + (f"\n--- output:\n{text}" if text else ""))


def rank_pids(launcher_pid):
    """{rank: pid} of the moe-run processes the launcher started."""
    ranks = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            comm = stat[stat.index("(") + 1:stat.rindex(")")]
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            if ppid != launcher_pid or comm != "moe-run":
                continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = dict(v.split(b"=", 1) for v in f.read().split(b"\0")
                           if b"=" in v)
            ranks[int(env.get(b"OMPI_COMM_WORLD_RANK", b"-1"))] = int(entry)
        except (OSError, ValueError):
            continue  # gone, or not ours
    return ranks


def leftovers(out):
    d, name = os.path.split(out)
    return [f for f in os.listdir(d) if f.startswith(name)]


def fault_case(a, w, dp2, files, sig, timeout, must_name, within):
    what = f"rank 1 gets {signal.Signals(sig).name}"
    out = os.path.join(w, f"fault_{sig}.safetensors")
    cmd = [a.mpiexec, "--allow-run-as-root", "--oversubscribe", "-np", "2",
           a.moe_run, dp2, "--weights", files["weights"], "--inputs",
           files["inputs"], "--output", out, "--repeat", "100000000",
           "--timeout", str(timeout)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
    victim = None
    try:
        deadline = time.time() + 120
        while time.time() < deadline and p.poll() is None:
            ranks = rank_pids(p.pid)
            if len(ranks) == 2 and 1 in ranks:
                victim = ranks[1]
                break
            time.sleep(0.2)
        if victim is None:
            p.kill()
            fail(what, "the two ranks never started", p.communicate()[0])
            return
        time.sleep(3)  # well inside the run loop (start-up takes ~0.1 s)
        start = time.time()
        os.kill(victim, sig)
        try:
            text = p.communicate(timeout=within + 60)[0]
        except subprocess.TimeoutExpired:
            p.kill()
            fail(what, f"the job did not end within {within + 60} s",
                 p.communicate()[0])
            return
        elapsed = time.time() - start
    finally:
        if victim is not None:  # a stopped rank the launcher left behind
            for s in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.kill(victim, s)
                except ProcessLookupError:
                    pass
    problems = []
    if p.returncode == 0:
        problems.append("exited 0")
    if elapsed > within:
        problems.append(f"ended {elapsed:.1f} s after the signal (limit {within} s)")
    for pattern in must_name:
        if not re.search(pattern, text):
            problems.append(f"output does not match {pattern!r}")
    if leftovers(out):
        problems.append(f"left {leftovers(out)} behind")
    if problems:
        fail(what, "; ".join(problems), text)
    else:
        print(f"ok   {what} (exit {p.returncode} after {elapsed:.1f} s)")


def fault_cases(a, w):
    dp2 = os.path.join(w, "dp2")
    build_module(dp2, a.cc, a.include, ["dp"], [2])
    x, norm, bias, proj = make_data()
    files = {k: os.path.join(w, k + ".safetensors") for k in ("weights", "inputs")}
    write_safetensors(files["weights"], weights_tensors(norm, bias, proj))
    write_safetensors(files["inputs"], {"hidden_states": ("F32", x)})
    # SIGKILL: the launcher sees the rank die; well within the 120 s timeout.
    fault_case(a, w, dp2, files, signal.SIGKILL, 120,
               [r"rank 1\b.*(signal 9|Killed)"], within=30)
    # SIGSTOP: the other rank waits in all_gather until --timeout (4 s); the
    # message gives the time it waited, a little more on a loaded machine.
    fault_case(a, w, dp2, files, signal.SIGSTOP, 4,
               [r"all_gather over \[dp\] timed out after [4-9]\.[0-9] s"],
               within=40)


def run_ok(cmd, what):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        fail(what, f"exit {p.returncode}", p.stdout + p.stderr)
        return False
    return True


def data_bytes(path):
    """The tensors of a safetensors file (header and data), as bytes."""
    with open(path, "rb") as f:
        return f.read()


def repeat_cases(a, w):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.join(a.source, "python") + os.pathsep + \
        env.get("PYTHONPATH", "")
    cfg = os.path.join(a.source, "examples", "configs", "tiny-mixtral.json")
    rep = os.path.join(w, "repeat")
    os.makedirs(rep)
    mlir, wt, x = (os.path.join(rep, f) for f in ("m.mlir", "w.st", "x.st"))
    fe = [sys.executable, "-m", "moe_compiler"]
    for args in (["emit", "--hf-config", cfg, "--tokens", "128", "-o", mlir],
                 ["init-weights", "--hf-config", cfg, "--seed", "1", "-o", wt],
                 ["init-inputs", "--hf-config", cfg, "--tokens", "128",
                  "--seed", "2", "-o", x]):
        p = subprocess.run(fe + args, capture_output=True, text=True, env=env)
        if p.returncode != 0:
            fail("repeatability", f"front end {args[0]} failed", p.stderr)
            return
    meshes = [("1 rank", [], 1)]
    if a.mpiexec:
        meshes.append(("ep=2", ["--mesh", "ep=2"], 2))
    for label, flags, ranks in meshes:
        mod = os.path.join(rep, f"mod{ranks}")
        if not run_ok([a.moe_compile, mlir, "-o", mod, *flags],
                      f"moe-compile {label}"):
            continue
        outputs = []
        for i, threads in enumerate((1, 1, 2, 4, 1)):
            out = os.path.join(rep, f"y{ranks}_{i}.st")
            cmd = [a.moe_run, mod, "--weights", wt, "--inputs", x, "--output",
                   out, "--threads", str(threads), "--quiet"]
            if ranks > 1:
                cmd = [a.mpiexec, "--allow-run-as-root", "--oversubscribe",
                       "-np", str(ranks)] + cmd
            if not run_ok(cmd, f"{label} run {i}"):
                break
            outputs.append((threads, data_bytes(out)))
        else:
            differ = [f"run {i} ({t} threads)"
                      for i, (t, b) in enumerate(outputs) if b != outputs[0][1]]
            if differ:
                fail(f"repeatability {label}",
                     f"{', '.join(differ)} differ from run 0 (1 thread)")
            else:
                print(f"ok   {label}: 5 runs (1, 1, 2, 4, 1 threads) "
                      "bitwise identical")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--moe-run", required=True)
    ap.add_argument("--moe-compile", default="")
    ap.add_argument("--source", required=True, help="the repository root")
    ap.add_argument("--cc", required=True)
    ap.add_argument("--include", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--mpiexec", default="")
    a = ap.parse_args()
    w = os.path.abspath(a.workdir)
    shutil.rmtree(w, ignore_errors=True)
    os.makedirs(w)
    if a.mpiexec:
        fault_cases(a, w)
    else:
        print("skip fault cases (no MPI)")
    if a.moe_compile:
        repeat_cases(a, w)
    else:
        print("skip repeatability (no moe-compile)")
    for f in failures:
        print("FAIL " + f)
    print(f"moe-run robustness: {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
