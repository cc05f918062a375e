"""PASS/FAIL lines, commands and the exit status shared by the moe-run e2e
scripts of this folder (train_e2e.py, grad_norm_e2e.py, expert_load_e2e.py,
reshard_e2e.py)."""
import subprocess
import sys

failures = 0


def check(ok, what):
    """Prints PASS or FAIL and what; a failure makes exit_status() 1."""
    global failures
    print(("PASS " if ok else "FAIL ") + what, flush=True)
    failures += not ok


def sh(cmd):
    """Runs cmd; exits with its output when it fails, else returns stdout."""
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"FAIL {' '.join(cmd)}: exit {p.returncode}\n{p.stdout}{p.stderr}")
    return p.stdout


def exit_status():
    return 1 if failures else 0
