"""Time ``db[key]`` on a small value in a plain and in a signed store (the signed read's overhead).

Run: python benchmarks/sign_read.py
"""

from __future__ import annotations

import tempfile
import timeit

import objstore

VALUE = {"id": 1, "name": "x" * 40, "tags": [1, 2, 3]}  # a pickle of about 90 bytes
SECRET = b"benchmark secret, 32 bytes long!"


def best_reads(
    plain: objstore.Shelf, signed: objstore.Shelf, rounds: int = 41, number: int = 20_000
) -> tuple[float, float]:
    """Best seconds per ``db["k"]`` on each store, over `rounds` short runs taken in turn.

    Taken in turn, so that a busy machine slows both alike, and the best of
    many runs, the one least disturbed.
    """
    best = [float("inf"), float("inf")]
    for _ in range(rounds):
        for i, db in enumerate((plain, signed)):
            best[i] = min(best[i], timeit.timeit(lambda db=db: db["k"], number=number) / number)
    return best[0], best[1]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        with objstore.open(f"{tmp}/plain") as plain, objstore.open(f"{tmp}/signed", secret=SECRET) as signed:
            plain["k"] = signed["k"] = VALUE
            p, s = best_reads(plain, signed)
            print(f"plain {p * 1e6:.2f} us  signed {s * 1e6:.2f} us  ratio {s / p:.2f}")


if __name__ == "__main__":
    main()
