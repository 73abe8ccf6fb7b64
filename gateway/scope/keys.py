"""API keys: who may call the gateway, which models they may use, and their limits.

Keys are stored only as the SHA-256 of the key, in ``auth.keys`` of bundle.yaml and in an
optional YAML file named by the environment variable ``auth.keys_file_env`` (a list of entries
like ``auth.keys``, e.g. from a Kubernetes secret). No keys anywhere: auth is off::

    ring = KeyRing.load(settings.auth)
    key = ring.authenticate(token_from_headers(request.headers))  # None when auth is off
    check_model(key, "demo-llm")                                  # PermissionDenied (403)

A presented key is hashed and compared with every stored digest in constant time, so neither
the answer's timing nor the code path depends on which key (if any) matched. Nothing here logs
or echoes a key. Make a key with the CLI, which prints it once with the entry to paste::

    python -m gateway.scope.keys new alice --rpm 60 --tpm 100000 --models 'demo-*'
    python -m gateway.scope.keys hash < key.txt          # the sha256 of an existing key

Only the standard library, pydantic and PyYAML: the gateway imports this on its request path.
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import hmac
import os
import secrets
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from starlette.datastructures import Headers

from gateway.errors import PermissionDenied, Unauthorized
from settings import AuthSettings, KeySettings

KEY_PREFIX = "sk-"
MISSING_KEY = (
    "You didn't provide an API key. Send it in an `Authorization: Bearer <key>` header "
    "or an `api-key` header."
)
WRONG_KEY = "Incorrect API key provided."


def digest(key: str) -> str:
    """The hex SHA-256 of a key, as stored in ``auth.keys[].sha256``."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    name: str
    sha256: str
    models: tuple[str, ...] = ()  # fnmatch globs; empty: every model
    rpm: int | None = None
    tpm: int | None = None
    max_parallel: int | None = None
    max_priority: str = "normal"  # the highest class its requests get (settings.Priority)
    weight: float = 1.0  # its share against other keys of a class in a full queue
    admin: bool = False  # may load and unload LoRA adapters (gateway/api/lora.py)

    @classmethod
    def from_settings(cls, entry: KeySettings) -> ApiKey:
        return cls(
            name=entry.name,
            sha256=entry.sha256,
            models=tuple(entry.models),
            rpm=entry.rpm,
            tpm=entry.tpm,
            max_parallel=entry.max_parallel,
            max_priority=entry.max_priority,
            weight=entry.weight,
            admin=entry.admin,
        )

    def allows(self, model: str) -> bool:
        return not self.models or any(fnmatchcase(model, glob) for glob in self.models)


class KeyRing:
    def __init__(self, keys: Sequence[ApiKey] = ()) -> None:
        names: dict[str, ApiKey] = {}
        hashes: dict[str, ApiKey] = {}
        for key in keys:
            if key.name in names:
                raise ValueError(f"auth: two API keys are named '{key.name}'")
            if key.sha256 in hashes:
                raise ValueError(
                    f"auth: API keys '{hashes[key.sha256].name}' and '{key.name}' are the same key"
                )
            names[key.name] = hashes[key.sha256] = key
        self.keys = tuple(keys)
        self._digests = [(bytes.fromhex(key.sha256), key) for key in self.keys]

    @classmethod
    def load(cls, auth: AuthSettings, environ: Mapping[str, str] = os.environ) -> KeyRing:
        """The keys of ``auth.keys`` and of the file ``environ[auth.keys_file_env]`` names."""
        entries = list(auth.keys)
        if path := environ.get(auth.keys_file_env):
            entries += read_keys_file(Path(path))
        return cls([ApiKey.from_settings(entry) for entry in entries])

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def authenticate(self, token: str | None) -> ApiKey | None:
        """The key `token` is, None when auth is off; raises Unauthorized (401) otherwise."""
        if not self._digests:
            return None
        if not token:
            raise Unauthorized(MISSING_KEY)
        presented = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        found: ApiKey | None = None
        for stored, key in self._digests:  # every digest, no early exit
            if hmac.compare_digest(stored, presented):
                found = key
        if found is None:
            raise Unauthorized(WRONG_KEY)
        return found


def read_keys_file(path: Path) -> list[KeySettings]:
    """The entries of a keys file: a YAML list of mappings with KeySettings' fields."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the API keys file: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: the API keys file is not valid YAML: {exc}") from None
    if data is None:
        return []
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of API key entries (name, sha256, ...)")
    entries = []
    for index, item in enumerate(data):
        try:
            entries.append(KeySettings.model_validate(item))
        except ValidationError as exc:
            label = f"entry {index}"
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                label += f" ('{item['name']}')"
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'entry'}: {err['msg']}"
                for err in exc.errors()  # messages only: never the values, which may be keys
            )
            raise ValueError(f"{path}: {label}: {problems}") from None
    return entries


def token_from_headers(headers: Mapping[str, str]) -> str | None:
    """The key from ``Authorization: Bearer <key>`` (any case of Bearer) or ``api-key: <key>``."""
    authorization = _header(headers, "authorization")
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    api_key = (_header(headers, "api-key") or "").strip()
    return api_key or None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)  # Starlette's Headers are case-insensitive; a dict may not be
    if value is None and not isinstance(headers, Headers):
        value = next((v for k, v in headers.items() if k.lower() == name), None)
    return value


def check_model(key: ApiKey | None, model: str) -> None:
    """Raises PermissionDenied (403) when the key's allow-list excludes the model."""
    if key is None or key.allows(model):
        return
    raise PermissionDenied(
        f"The API key '{key.name}' may not use the model '{model}' "
        f"(it may use: {', '.join(key.models)})."
    )


# --- the CLI --------------------------------------------------------------------------------


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.scope.keys", description="Make API keys for the gateway."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    new = commands.add_parser(
        "new", help="make a key: prints it once, then the entry to paste under `auth: keys:`"
    )
    new.add_argument("name", help="what logs, metrics and errors show for this key")
    new.add_argument("--rpm", type=positive_int, help="requests per minute")
    new.add_argument("--tpm", type=positive_int, help="tokens per minute, prompt + completion")
    new.add_argument("--max-parallel", type=positive_int, help="requests in flight")
    new.add_argument("--models", nargs="+", default=[], metavar="GLOB", help="allowed models")
    new.add_argument(
        "--max-priority", choices=["high", "normal", "low"], help="the highest class it may ask"
    )
    new.add_argument("--weight", type=float, help="its share against other keys of a class")
    commands.add_parser("hash", help="read a key from stdin and print its sha256")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "hash":
        text = getpass.getpass("API key: ") if sys.stdin.isatty() else sys.stdin.read()
        if not text.strip():
            print("keys: no key on stdin", file=sys.stderr)
            return 2
        print(digest(text.strip()))
        return 0

    key = new_key()
    fields: dict[str, Any] = {"name": args.name, "sha256": digest(key)}
    if args.models:
        fields["models"] = args.models
    for field in ("rpm", "tpm", "max_parallel", "max_priority", "weight"):
        if getattr(args, field) is not None:
            fields[field] = getattr(args, field)
    try:
        KeySettings.model_validate(fields)
    except ValidationError as exc:
        print(f"keys: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}", file=sys.stderr)
        return 2
    print(key)
    print(f"# {args.name}: the key above is shown only once; only its SHA-256 is stored.")
    print("# Paste this entry under `auth: keys:` in bundle.yaml (or into the BUNDLE_KEYS_FILE")
    print("# list) and restart the bundle: keys are read when it starts.")
    print(yaml.safe_dump([fields], sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
