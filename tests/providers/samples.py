"""Callbacks as the providers' documentation shows them, shared by the mapper and the HTTP tests.

fal: https://docs.fal.ai/model-apis/model-endpoints/webhooks
"""

from __future__ import annotations

from typing import Any

FAL_OK: dict[str, Any] = {
    "request_id": "123e4567-e89b-12d3-a456-426614174000",
    "gateway_request_id": "123e4567-e89b-12d3-a456-426614174000",
    "status": "OK",
    "payload": {
        "images": [
            {
                "url": "https://url.to/image.png",
                "content_type": "image/png",
                "file_name": "image.png",
                "file_size": 1824075,
                "width": 1024,
                "height": 1024,
            }
        ],
        "seed": 196619188014358660,
    },
}
FAL_ERROR: dict[str, Any] = {
    "request_id": "123e4567-e89b-12d3-a456-426614174000",
    "gateway_request_id": "123e4567-e89b-12d3-a456-426614174000",
    "status": "ERROR",
    "error": "Invalid status code: 422",
    "payload": {"detail": [{"loc": ["body", "prompt"], "msg": "field required", "type": "value_error.missing"}]},
}
FAL_PAYLOAD_ERROR: dict[str, Any] = {
    "request_id": "123e4567-e89b-12d3-a456-426614174000",
    "gateway_request_id": "123e4567-e89b-12d3-a456-426614174000",
    "status": "ERROR",
    "error": "Error while serializing the payload",
    "payload": None,
    "payload_error": "Response payload is not JSON serializable.",
}
