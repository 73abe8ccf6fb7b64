"""API keys: loading, constant-time authentication, model allow-lists and the CLI."""

from __future__ import annotations

import contextlib
import io
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from starlette.datastructures import Headers

from gateway.errors import PermissionDenied, Unauthorized
from gateway.scope import keys as keys_module
from gateway.scope.keys import ApiKey, KeyRing, check_model, digest, main, token_from_headers
from settings import AuthSettings, KeySettings

ROOT = Path(__file__).resolve().parents[3]
ALICE, BOB = "sk-alice-secret", "sk-bob-secret"


def auth(*entries: dict[str, object], **fields: object) -> AuthSettings:
    return AuthSettings.model_validate({"keys": list(entries), **fields})


def entry(name: str, key: str, **fields: object) -> dict[str, object]:
    return {"name": name, "sha256": digest(key), **fields}


@pytest.fixture
def ring() -> KeyRing:
    return KeyRing.load(auth(entry("alice", ALICE, models=["demo-*"]), entry("bob", BOB)), {})


def test_digest_is_the_hex_sha256_of_the_key() -> None:
    assert digest("sk-abc") == "1460db1b6902f8b1fc2a40d9381a24d0fd22c3bc1b2c6f999c521da73776fbe0"


def test_a_key_allows_the_models_its_globs_match() -> None:
    key = ApiKey("k", "0" * 64, models=("demo-*", "gpt-4o"))
    assert key.allows("demo-llm")
    assert key.allows("gpt-4o")
    assert not key.allows("gpt-4o-mini")
    assert not key.allows("Demo-llm")  # case-sensitive, whatever the OS
    assert ApiKey("all", "0" * 64).allows("anything")


def test_auth_is_off_without_keys() -> None:
    ring = KeyRing.load(AuthSettings(), {})
    assert not ring.enabled
    assert ring.authenticate(None) is None
    assert ring.authenticate("sk-whatever") is None


def test_the_right_key_authenticates_as_its_entry(ring: KeyRing) -> None:
    assert ring.enabled
    alice = ring.authenticate(ALICE)
    assert alice is not None
    assert (alice.name, alice.models) == ("alice", ("demo-*",))
    bob = ring.authenticate(BOB)
    assert bob is not None and bob.name == "bob"


def test_a_missing_key_says_how_to_send_one(ring: KeyRing) -> None:
    for token in (None, ""):
        with pytest.raises(Unauthorized) as caught:
            ring.authenticate(token)
        assert caught.value.status == 401
        assert "Authorization: Bearer <key>" in caught.value.message
        assert "api-key" in caught.value.message
        assert caught.value.headers == {"WWW-Authenticate": "Bearer"}


def test_a_wrong_key_is_refused_without_echoing_it(
    ring: KeyRing, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "sk-not-a-key-of-ours"
    with pytest.raises(Unauthorized) as caught:
        ring.authenticate(wrong)
    assert caught.value.message == "Incorrect API key provided."
    assert wrong not in str(caught.value) and wrong not in caplog.text
    with pytest.raises(Unauthorized):
        ring.authenticate(digest(ALICE))  # the stored hash is not a key


def test_every_stored_digest_is_compared_whichever_key_matches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tokens = [f"sk-key-{i}" for i in range(5)]
    ring = KeyRing.load(auth(*(entry(f"k{i}", t) for i, t in enumerate(tokens))), {})
    calls: list[bytes] = []

    def compare_digest(a: bytes, b: bytes) -> bool:
        calls.append(a)
        return a == b

    monkeypatch.setattr(keys_module.hmac, "compare_digest", compare_digest)
    for token in (tokens[0], tokens[-1], "sk-wrong"):
        calls.clear()
        with contextlib.suppress(Unauthorized):
            ring.authenticate(token)
        assert len(calls) == len(tokens), token


def test_keys_file_adds_keys(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump([entry("bob", BOB, rpm=10, tpm=1000, max_parallel=2)]))
    ring = KeyRing.load(auth(entry("alice", ALICE)), {"BUNDLE_KEYS_FILE": str(path)})
    assert [k.name for k in ring.keys] == ["alice", "bob"]
    bob = ring.authenticate(BOB)
    assert bob == ApiKey("bob", digest(BOB), (), rpm=10, tpm=1000, max_parallel=2)


def test_keys_file_env_var_name_is_configurable(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump([entry("bob", BOB)]))
    settings = auth(keys_file_env="MY_KEYS")
    assert KeyRing.load(settings, {"MY_KEYS": str(path)}).enabled
    assert not KeyRing.load(settings, {"BUNDLE_KEYS_FILE": str(path)}).enabled


def test_an_empty_keys_file_adds_nothing(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text("")
    assert not KeyRing.load(AuthSettings(), {"BUNDLE_KEYS_FILE": str(path)}).enabled


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("[not: yaml", "not valid YAML"),
        ("name: alice", "expected a list"),
        ("- {name: ok, sha256: " + "a" * 64 + "}\n- {name: bob, sha256: sk-pasted-the-key}",
         "entry 1 ('bob'): sha256: String should match pattern"),
        ("- {name: bob, sha256: " + "a" * 64 + ", rpm: 0}", "entry 0 ('bob'): rpm:"),
        ("- {name: bob, sha256: " + "a" * 64 + ", colour: red}", "entry 0 ('bob'): colour:"),
        ("- just-a-string", "entry 0: entry:"),
    ],
)  # fmt: skip
def test_a_bad_keys_file_names_the_file_and_the_entry(
    tmp_path: Path, content: str, problem: str
) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(content)
    with pytest.raises(ValueError) as caught:
        KeyRing.load(AuthSettings(), {"BUNDLE_KEYS_FILE": str(path)})
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert problem in message
    assert "sk-pasted-the-key" not in message  # values are never echoed: they may be keys


def test_a_missing_keys_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ValueError, match=f"{path}: cannot read the API keys file"):
        KeyRing.load(AuthSettings(), {"BUNDLE_KEYS_FILE": str(path)})


def test_duplicate_names_are_refused_across_config_and_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump([entry("alice", BOB)]))
    with pytest.raises(ValueError, match="two API keys are named 'alice'"):
        KeyRing.load(auth(entry("alice", ALICE)), {"BUNDLE_KEYS_FILE": str(path)})


def test_duplicate_hashes_are_refused_naming_both_keys() -> None:
    with pytest.raises(ValueError, match="'alice' and 'alias' are the same key"):
        KeyRing.load(auth(entry("alice", ALICE), entry("alias", ALICE)), {})


@pytest.mark.parametrize(
    ("headers", "token"),
    [
        ({"authorization": "Bearer sk-1"}, "sk-1"),
        ({"Authorization": "bearer  sk-1 "}, "sk-1"),
        ({"AUTHORIZATION": "BEARER sk-1"}, "sk-1"),
        ({"api-key": "sk-2"}, "sk-2"),
        ({"Api-Key": " sk-2 "}, "sk-2"),
        ({"authorization": "Bearer sk-1", "api-key": "sk-2"}, "sk-1"),
        ({"authorization": "Basic dXNlcjpwYXNz", "api-key": "sk-2"}, "sk-2"),
        ({"authorization": "Basic dXNlcjpwYXNz"}, None),
        ({"authorization": "Bearer "}, None),
        ({"api-key": ""}, None),
        ({"x-other": "sk-1"}, None),
    ],
)
def test_token_from_headers(headers: dict[str, str], token: str | None) -> None:
    assert token_from_headers(headers) == token
    assert token_from_headers(Headers(headers=headers)) == token


def test_check_model_names_the_key_not_the_secret(ring: KeyRing) -> None:
    alice = ring.authenticate(ALICE)
    check_model(alice, "demo-llm")
    check_model(None, "anything")  # auth off
    with pytest.raises(PermissionDenied) as caught:
        check_model(alice, "gpt-4o")
    assert caught.value.status == 403
    assert "'alice'" in caught.value.message and "'gpt-4o'" in caught.value.message
    assert ALICE not in caught.value.message and digest(ALICE) not in caught.value.message


def test_cli_new_prints_a_key_and_its_entry(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["new", "alice", "--rpm", "60", "--tpm", "1000", "--max-parallel", "2",
            "--models", "demo-*", "gpt-4o"]  # fmt: skip
    assert main(argv) == 0
    key, _, rest = capsys.readouterr().out.partition("\n")
    assert key.startswith("sk-") and len(key) >= 40
    entries = yaml.safe_load(rest)
    assert entries == [{"name": "alice", "sha256": digest(key), "models": ["demo-*", "gpt-4o"],
                        "rpm": 60, "tpm": 1000, "max_parallel": 2}]  # fmt: skip
    ring = KeyRing.load(AuthSettings(keys=[KeySettings.model_validate(entries[0])]), {})
    authenticated = ring.authenticate(key)
    assert authenticated is not None and authenticated.name == "alice"

    assert main(["new", "bob"]) == 0
    other, _, rest = capsys.readouterr().out.partition("\n")
    assert other != key
    assert yaml.safe_load(rest) == [{"name": "bob", "sha256": digest(other)}]


@pytest.mark.parametrize("argv", [["new", "has space"], ["new", "x" * 65]])
def test_cli_new_refuses_a_bad_name(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "name" in captured.err


def test_cli_hash_reads_the_key_from_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("sk-abc\n"))
    assert main(["hash"]) == 0
    assert capsys.readouterr().out == digest("sk-abc") + "\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n"))
    assert main(["hash"]) == 2


def test_the_module_runs_with_python_m_and_imports_nothing_heavy() -> None:
    heavy = ("bentoml", "torch", "httpx", "numpy", "vllm", "transformers", "redis", "limits")
    script = (
        f"import sys, gateway.scope.keys; print(','.join(m for m in {heavy!r} if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == ""
    done = subprocess.run(
        [sys.executable, "-m", "gateway.scope.keys", "hash"],
        cwd=ROOT, input="sk-abc", capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert done.stdout.strip() == digest("sk-abc")
