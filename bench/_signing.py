"""``python -m bench -w signing``: what signing an input costs its sender and checking it
costs the hub, with no broker involved (the nonce store's KV create is the broker's part:
see ``-w throughput --secure --signing``).

A start input of a realistic size (~250 bytes of msgpack) on its request subject, with
its ``Nats-Msg-Id``: "sign" is ``Signer.sign`` (base string, digest, Ed25519, headers);
"check" is what the hub's ``_signatures`` does on the CPU (parse the headers, rebuild the
base, verify with the cached key). "MAC" and "check a MAC" are the same under a signing
session (``immortal.security.sessions``: HMAC-SHA256 with the session's key), what inputs
by request cost once a signer's session is open. The raw Ed25519 figures of PyNaCl and of
cryptography sit beside them, the reason this scheme uses PyNaCl.

    python -m bench -w signing            # in the bench table
    python -m bench._signing --trials 3   # on its own
"""

from __future__ import annotations

import argparse
import hmac
import secrets
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nacl.signing import SigningKey as NaclKey
from nacl.signing import VerifyKey

from bench._harness import Metric, table
from immortal._codec import encode_args
from immortal._names import Names
from immortal._wire import StartWorkflow, encode
from immortal.security.sessions import Session
from immortal.security.signing import (
    Signer,
    SigningKey,
    mac_base,
    parse_signature,
    verify_signature,
)

MetricFactory = Callable[[str, str, str], Metric]
N = 2_000  # operations per trial


def measure(metric: MetricFactory, *, trials: int = 3) -> dict[str, Any]:
    key = SigningKey.generate("bench-1")
    signer = Signer([key])
    verify_key = VerifyKey(NaclKey(key.seed).verify_key.encode())
    subject = Names().rpc_subject("bench", "default", "start", "p" + "x" * 20)
    run_id = uuid.uuid4().hex
    body = encode(
        StartWorkflow(
            workflow_id=f"order-{run_id[:8]}",
            run_id=run_id,
            workflow_type="place_order",
            input=encode_args([{"id": "o1", "items": ["pen", "ink", "paper"], "cents": 1250}]),
            execution_timeout=3600.0,
        )
    )
    plain = {"Nats-Msg-Id": f"start:{run_id}"}
    headers = signer.sign(subject, body, plain)

    def check() -> None:
        found = parse_signature(headers)
        assert found is not None
        params, signature = found
        assert verify_signature(verify_key, subject, body, headers, params, signature)

    session = Session(secrets.token_urlsafe(16), secrets.token_bytes(32), key.key_id, 1e12)
    maced = signer.mac(session, subject, body, plain)

    def check_mac() -> None:
        found = parse_signature(maced)
        assert found is not None
        params, tag = found
        base = mac_base(subject, body, maced, params)
        assert hmac.compare_digest(hmac.digest(session.key, base, "sha256"), tag)

    base = b"x" * 400  # about a signature base's size
    nacl_sig = NaclKey(key.seed).sign(base).signature
    crypto_key = Ed25519PrivateKey.from_private_bytes(key.seed)
    crypto_pub, crypto_sig = crypto_key.public_key(), crypto_key.sign(base)
    timed: list[tuple[str, Callable[[], object]]] = [
        ("signing: sign an input", lambda: signer.sign(subject, body, plain)),
        ("signing: check an input (hub CPU)", check),
        ("signing: MAC an input (session)", lambda: signer.mac(session, subject, body, plain)),
        ("signing: check a MAC (hub CPU)", check_mac),
        ("signing: Ed25519 verify, PyNaCl", lambda: verify_key.verify(base, nacl_sig)),
        ("signing: Ed25519 verify, cryptography", lambda: crypto_pub.verify(crypto_sig, base)),
    ]
    for _ in range(trials):
        for name, op in timed:
            metric(name, "µs", "").values.append(_per_op_us(op))

    def size(h: dict[str, str]) -> int:
        return sum(len(k) + len(v) + 4 for k, v in h.items())

    return {
        "body_bytes": len(body),
        "header_bytes_added": size(headers) - size(plain),
        "mac_header_bytes_added": size(maced) - size(plain),
    }


def _per_op_us(op: Callable[[], object]) -> float:
    """The median of ten batches, in µs per operation."""
    batches = []
    for _ in range(10):
        t0 = time.perf_counter()
        for _ in range(N // 10):
            op()
        batches.append((time.perf_counter() - t0) / (N // 10) * 1e6)
    return statistics.median(batches)


def report(shape: dict[str, Any]) -> str:
    return (
        f"a {shape['body_bytes']}-byte start input; an Ed25519 signature adds "
        f"{shape['header_bytes_added']} bytes of headers, a session's MAC "
        f"{shape.get('mac_header_bytes_added', '?')}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trials", type=int, default=3)
    args = ap.parse_args()
    metrics: dict[str, Metric] = {}

    def metric(name: str, unit: str, target: str = "") -> Metric:
        return metrics.setdefault(name, Metric(name, unit, target=target))

    shape = measure(metric, trials=args.trials)
    print(table(list(metrics.values())))
    print(report(shape))


if __name__ == "__main__":
    main()
