"""Reading one uploaded file: a multipart form with a `file` part, or a raw request body."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from gateway.api.common import read_body
from gateway.errors import InvalidRequest, UnsupportedMediaType

GENERIC_TYPES = ("application/octet-stream", "")


@dataclass(frozen=True)
class Upload:
    data: bytes
    content_type: str
    fields: dict[str, str] = field(default_factory=dict)  # form fields, else query parameters


async def read_upload(request: Request, *, media: str, limit: int, allow_raw: bool) -> Upload:
    """The uploaded file of top-level type `media` ("image", "audio") and the other fields.

    Refuses bodies over `limit` bytes (413), other media types (415) and empty files (400).
    """
    ctype = _media_type(request.headers.get("content-type", ""))
    if ctype == "multipart/form-data":
        upload = await _read_form(request, limit=limit)
    elif allow_raw and _accepts(ctype, media):
        upload = Upload(await read_body(request, limit=limit), ctype, dict(request.query_params))
    else:
        raw = f", or the {media} itself as the body" if allow_raw else ""
        raise UnsupportedMediaType(
            f"Expected multipart/form-data with a 'file' part{raw}; got '{ctype or 'none'}'."
        )
    if not _accepts(upload.content_type, media):
        raise UnsupportedMediaType(
            f"The file has content type '{upload.content_type}'; expected {media}/*.", param="file"
        )
    if not upload.data:
        raise InvalidRequest("The uploaded file is empty.", param="file")
    return upload


async def _read_form(request: Request, *, limit: int) -> Upload:
    body = await read_body(request, limit=limit)
    parser = MultiPartParser(request.headers, _once(body), max_files=1, max_fields=64)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise InvalidRequest(f"Malformed multipart form: {exc.message}") from None
    try:
        file = form.get("file")
        if not isinstance(file, UploadFile):
            raise InvalidRequest("'file' is required: send the file as a form part.", param="file")
        fields = dict(request.query_params)
        fields.update((k, v) for k, v in form.multi_items() if isinstance(v, str))
        return Upload(await file.read(), _media_type(file.content_type or ""), fields)
    finally:
        await form.close()


async def _once(body: bytes) -> AsyncGenerator[bytes, None]:
    yield body


def _media_type(header: str) -> str:
    return header.split(";")[0].strip().lower()


def _accepts(ctype: str, media: str) -> bool:
    return ctype in GENERIC_TYPES or ctype.startswith(f"{media}/")
