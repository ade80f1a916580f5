#!/usr/bin/env python3
"""Sign talkheadd requests with the real validator signing library (bittensor-wallet).

Owns: producing the headers of both auth schemes (docs/auth.md) exactly as a validator would, for the
interoperability tests and for operators who want to call talkheadd by hand. Prints one JSON object of
header name -> value on stdout.

Must not: verify anything (the daemon is the verifier under test), send requests, print or store
private keys, or re-implement sr25519 (the point is to exercise bittensor_wallet's own Keypair.sign).

    python3 bt_sign.py --uri //Alice legacy --path /update [--timestamp N]
    python3 bt_sign.py --uri //Alice strong --method POST --path /update [--query Q] \\
        [--timestamp N] [--nonce X] --body-file F        # F may be "-" for stdin
    python3 bt_sign.py --wallet-name validator --wallet-hotkey default legacy --path /metrics

Requires `pip install bittensor-wallet` (tests/setup.sh installs it into .venv).
"""

import argparse
import hashlib
import json
import re
import secrets
import sys
import time

SCHEME = "talkhead-v1"
NONCE_RE = re.compile(r"[A-Za-z0-9_-]{16,128}")


def load_keypair(args):
    """The signing hotkey: a dev URI (//Alice) or a bittensor wallet's hotkey on disk."""
    if args.wallet_name:
        from bittensor_wallet import Wallet

        kwargs = {"name": args.wallet_name, "hotkey": args.wallet_hotkey}
        if args.wallet_path:
            kwargs["path"] = args.wallet_path
        return Wallet(**kwargs).hotkey
    from bittensor_wallet import Keypair

    return Keypair.create_from_uri(args.uri)


def sign_hex(keypair, message: str) -> str:
    # Keypair.sign is sr25519 with the "substrate" signing context, the same call validators make
    # (`wallet.hotkey.sign(message.encode())`). It returns the 64 raw signature bytes.
    signature = keypair.sign(message.encode("utf-8"))
    if isinstance(signature, str):  # defensive: some keypair implementations return hex
        signature = bytes.fromhex(signature.removeprefix("0x"))
    return "0x" + bytes(signature).hex()


def legacy_headers(keypair, path: str, timestamp: str) -> dict:
    hotkey = keypair.ss58_address
    # The verifier signs over int(float(X-Timestamp)), exactly like the reference.
    message = f"<Bytes>{path}:{int(float(timestamp))}:{hotkey}</Bytes>"
    return {
        "X-Hotkey": hotkey,
        "X-Timestamp": timestamp,
        "X-Signature": sign_hex(keypair, message),
    }


def strong_headers(keypair, method, path, query, timestamp, nonce, body: bytes) -> dict:
    hotkey = keypair.ss58_address
    digest = hashlib.sha256(body).hexdigest()
    message = (
        f"<Bytes>{SCHEME}\n{method}\n{path}\n{query}\n{timestamp}\n{nonce}\n{digest}\n{hotkey}</Bytes>"
    )
    return {
        "X-Auth-Scheme": SCHEME,
        "X-Hotkey": hotkey,
        "X-Timestamp": timestamp,
        "X-Nonce": nonce,
        "X-Content-SHA256": digest,
        "X-Signature": sign_hex(keypair, message),
    }


def read_body(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    with open(path, "rb") as f:
        return f.read()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    key = parser.add_argument_group("signing key (a dev URI, or a wallet on disk)")
    key.add_argument("--uri", default="//Alice", help="dev secret URI, e.g. //Alice (default)")
    key.add_argument("--wallet-name", help="bittensor wallet name (uses its hotkey instead of --uri)")
    key.add_argument("--wallet-hotkey", default="default", help="hotkey name in the wallet")
    key.add_argument("--wallet-path", help="wallets directory (default ~/.bittensor/wallets)")
    sub = parser.add_subparsers(dest="scheme", required=True)

    legacy = sub.add_parser("legacy", help="reference-compatible X-Hotkey/X-Timestamp/X-Signature")
    legacy.add_argument("--path", required=True, help="bare URL path, e.g. /update")
    legacy.add_argument("--timestamp", help="unix seconds as sent (default: now, integer)")

    strong = sub.add_parser("strong", help="talkhead-v1: also binds method, query, nonce and body")
    strong.add_argument("--method", required=True, help="HTTP method, e.g. POST")
    strong.add_argument("--path", required=True, help="bare URL path, e.g. /update")
    strong.add_argument("--query", default="", help="raw query string without '?' (default empty)")
    strong.add_argument("--timestamp", type=int, help="integer unix seconds (default: now)")
    strong.add_argument("--nonce", help="16-128 chars of [A-Za-z0-9_-] (default: random)")
    strong.add_argument("--body-file", required=True, help="exact body bytes to send ('-' = stdin)")

    args = parser.parse_args(argv)
    keypair = load_keypair(args)
    if args.scheme == "legacy":
        timestamp = args.timestamp if args.timestamp is not None else str(int(time.time()))
        headers = legacy_headers(keypair, args.path, timestamp)
    else:
        nonce = args.nonce if args.nonce is not None else secrets.token_urlsafe(24)  # 32 chars
        if not NONCE_RE.fullmatch(nonce):
            parser.error("--nonce must be 16-128 characters of [A-Za-z0-9_-]")
        if "\n" in args.path or "\n" in args.query:
            parser.error("path and query must not contain newlines")
        timestamp = args.timestamp if args.timestamp is not None else int(time.time())
        if timestamp < 0:
            parser.error("--timestamp must be non-negative")
        headers = strong_headers(
            keypair,
            args.method,
            args.path,
            args.query,
            str(timestamp),
            nonce,
            read_body(args.body_file),
        )
    json.dump(headers, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
