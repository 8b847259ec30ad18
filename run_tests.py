"""Runs the whole test suite once per Keras backend (jax, tensorflow, torch).

Keras picks its backend at import, so each backend gets its own pytest
process. Extra arguments go to pytest. Exits non-zero if any backend fails or
runs no test at all (pytest's exit code 5).
"""

import os
import subprocess
import sys
import time

BACKENDS = ("jax", "tensorflow", "torch")


def main(pytest_args):
    backends = os.environ.get("DIFFLR_BACKENDS", ",".join(BACKENDS)).split(",")
    results = {}
    for backend in backends:
        print(f"\n=== KERAS_BACKEND={backend} ===", flush=True)
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        start = time.time()
        code = subprocess.call([sys.executable, "-m", "pytest", "-q", *pytest_args], env=env)
        results[backend] = (code, time.time() - start)
    print("\n=== summary ===")
    for backend, (code, seconds) in results.items():
        verdict = {0: "passed", 5: "FAILED: no tests ran"}.get(code, f"FAILED (exit {code})")
        print(f"{backend:<11} {verdict:<24} {seconds:6.0f} s")
    return 0 if all(code == 0 for code, _ in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
