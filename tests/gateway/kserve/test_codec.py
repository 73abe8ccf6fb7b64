"""The KServe V2 codec's bounds on BYTES inputs: a count from the shape alone, refused before any
element is converted, on the HTTP body and on gRPC's raw and typed contents alike."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from gateway.errors import InvalidRequest
from gateway.kserve.codec import check_elements, decode_request, decode_tensor

LIMIT = 4096


def framed(*items: bytes) -> bytes:
    """BYTES elements as the binary extension and gRPC's raw contents frame them."""
    return b"".join(struct.pack("<I", len(x)) + x for x in items)


def test_a_bytes_input_over_the_limit_is_refused_on_its_shape_alone() -> None:
    with pytest.raises(InvalidRequest) as refused:
        check_elements("audio", "BYTES", [100_000], limit=LIMIT)
    assert refused.value.status == 400
    assert refused.value.message == (
        "Input 'audio' has 100000 BYTES elements; the limit is 4096 per input."
    )
    assert check_elements("audio", "BYTES", [64, 64], limit=LIMIT) == LIMIT
    assert check_elements("x", "FP32", [100_000], limit=LIMIT) == 100_000  # numbers: any count


def test_grpc_contents_over_the_limit_are_refused() -> None:
    items = [b"x"] * 100_000
    refusal = "'audio' has 100000 BYTES elements; the limit is 64 per input"
    with pytest.raises(InvalidRequest, match=refusal):  # typed contents
        decode_tensor("audio", "BYTES", [100_000], data=items, max_bytes_elements=64)
    with pytest.raises(InvalidRequest, match=refusal):  # raw_input_contents
        decode_tensor("audio", "BYTES", [100_000], raw=framed(*items), max_bytes_elements=64)
    tensor = decode_tensor("audio", "BYTES", [2], data=[b"a", b"b"], max_bytes_elements=2)
    assert tensor.data.tolist() == [b"a", b"b"]


def test_more_elements_than_the_shape_declares_are_refused_unconverted() -> None:
    with pytest.raises(InvalidRequest, match="more than the shape's 1 elements"):
        decode_tensor("audio", "BYTES", [1], raw=framed(*[b"x"] * 100_000))
    # dicts cannot become bytes: the count is refused before any element is converted
    body = {"inputs": [{"name": "audio", "datatype": "BYTES", "shape": [1], "data": [{}] * 3}]}
    with pytest.raises(InvalidRequest, match="3 values do not fill shape \\[1\\]"):
        decode_request(json.dumps(body).encode(), version="", header_length=None)


def test_every_bytes_input_of_a_request_counts_against_the_limit() -> None:
    def body(*counts: int) -> bytes:
        inputs = [
            {"name": f"in{i}", "datatype": "BYTES", "shape": [n], "data": ["a"] * n}
            for i, n in enumerate(counts)
        ]
        return json.dumps({"inputs": inputs}).encode()

    decoded = decode_request(body(3, 3), version="", header_length=None, max_bytes_elements=3)
    assert [t.shape for t in decoded.tensors.inputs] == [(3,), (3,)]
    with pytest.raises(InvalidRequest, match="Input 'in1' has 4 BYTES elements; the limit is 3"):
        decode_request(body(3, 4), version="", header_length=None, max_bytes_elements=3)
    data = np.zeros((5, 5), np.float32).tolist()
    numbers = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [5, 5], "data": data}]}
    decoded = decode_request(
        json.dumps(numbers).encode(), version="", header_length=None, max_bytes_elements=3
    )
    assert decoded.tensors.inputs[0].shape == (5, 5)  # the limit counts BYTES elements only
