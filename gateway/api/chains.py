"""Chains on /v1/chat/completions: a chain's name as `model`, its inputs in OpenAI's own
multimodal message parts; gateway/routing/chains.py runs it.

    client.chat.completions.create(model="voice-chat", messages=[{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": b64_wav, "format": "wav"}}]}])
    client.chat.completions.create(model="describe-image", messages=[{"role": "user", "content": [
        {"type": "text", "text": "Is it a cat?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0..."}}]}])

The chain reads the last user message: its text parts (joined by newlines) are `{text}` and
`{prompt}`, its one `input_audio` part what transcribe steps read, its one `image_url` part (a
`data:` URL: the gateway fetches nothing) what classify steps read.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from starlette.requests import Request

from gateway.errors import InvalidRequest
from gateway.routing.chains import Chain, ChainInput, Chains

NO_CHAINS = Chains()
PART_KEYS = {"input_audio": "audio", "image_url": "image"}


def chains_of(request: Request) -> Chains:
    chains: Chains = getattr(request.app.state, "chains", NO_CHAINS)
    return chains


def listing(chain: Chain) -> dict[str, Any]:
    """What /v1/models says of a chain, beside the fields every model has."""
    return {
        "kind": "chain",
        "backend": "chain",
        "input": sorted(chain.media) or ["text"],
        "steps": [{"model": s.settings.model, "task": s.settings.task} for s in chain.steps],
    }


def chain_input(chain: Chain, body: dict[str, Any]) -> ChainInput:
    """The chain's inputs from the request's last user message, or a 400 saying what to send."""
    index, content = _last_user_content(body.get("messages"))
    found: dict[str, Any] = {"text": [], "audio": None, "image": None}
    for number, part in enumerate(content):
        param = f"messages[{index}].content[{number}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            found["text"].append(str(part.get("text") or ""))
            continue
        if kind not in PART_KEYS:
            raise InvalidRequest(
                f"Chain '{chain.name}' takes text, input_audio and image_url parts, not {kind!r}.",
                param=param,
            )
        media = PART_KEYS[kind]
        if found[media] is not None:
            raise InvalidRequest(f"Chain '{chain.name}' takes one {media} part.", param=param)
        found[media] = _audio(part, param) if media == "audio" else _image(part, param)
    _check_media(chain, found, f"messages[{index}].content")
    return ChainInput("\n".join(found["text"]), found["audio"], found["image"])


def _last_user_content(messages: object) -> tuple[int, list[Any]]:
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty list.", param="messages")
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return index, [{"type": "text", "text": content}]
            if isinstance(content, list):
                return index, content
            raise InvalidRequest(
                "A user message's content is a string or a list of parts.",
                param=f"messages[{index}].content",
            )
    raise InvalidRequest("A chain reads the last user message; there is none.", param="messages")


def _check_media(chain: Chain, found: dict[str, Any], param: str) -> None:
    for media, part in (("audio", "input_audio"), ("image", "image_url")):
        if media in chain.media and found[media] is None:
            raise InvalidRequest(
                f"Chain '{chain.name}' starts from {media}: send it as an '{part}' part of the "
                "last user message.",
                param=param,
            )
        if media not in chain.media and found[media] is not None:
            raise InvalidRequest(
                f"Chain '{chain.name}' reads no {media}; its steps are {', '.join(chain.models)}.",
                param=param,
            )


def _audio(part: dict[str, Any], param: str) -> bytes:
    """OpenAI's `{"type": "input_audio", "input_audio": {"data": base64, "format": "wav"}}`;
    the decoder reads the format from the bytes, so `format` is not needed to decode."""
    audio = part.get("input_audio")
    data = audio.get("data") if isinstance(audio, dict) else None
    if not isinstance(data, str) or not data:
        raise InvalidRequest(
            'An input_audio part is {"input_audio": {"data": <base64>, "format": "wav"}}.',
            param=f"{param}.input_audio.data",
        )
    return _base64(data, f"{param}.input_audio.data")


def _image(part: dict[str, Any], param: str) -> bytes:
    """OpenAI's `{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}`;
    a remote URL is refused: the gateway does not fetch what a client names."""
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    param = f"{param}.image_url.url"
    if not isinstance(url, str) or not url:
        raise InvalidRequest('An image_url part is {"image_url": {"url": ...}}.', param=param)
    if not url.startswith("data:"):
        scheme = url.split(":", 1)[0] if ":" in url else "none"
        raise InvalidRequest(
            f"Image URLs are not fetched (scheme '{scheme}'): send the image inline as a data: "
            "URL, data:image/png;base64,<the file's bytes in base64>.",
            param=param,
            code="remote_url_not_supported",
        )
    header, _, data = url[len("data:") :].partition(",")
    media_type, *params = header.split(";")
    if not media_type.startswith("image/") or "base64" not in params:
        raise InvalidRequest(
            f"The data: URL is '{header or 'empty'}'; expected data:image/<type>;base64,...",
            param=param,
        )
    return _base64(data, param)


def _base64(data: str, param: str) -> bytes:
    try:
        decoded = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("The data is not valid base64.", param=param) from None
    if not decoded:
        raise InvalidRequest("The data is empty.", param=param)
    return decoded
