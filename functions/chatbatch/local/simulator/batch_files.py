"""OpenAI's Files API as the batch APIs need it, held in memory (``FileStore``): an upload
is ``multipart/form-data`` with ``purpose`` and ``file`` (parsed with the standard
library's ``email`` parser), a file of purpose ``batch`` must be ``.jsonl`` and at most
200 MB, a batch's output and error files are stored with purpose ``batch_output``; an
unknown id is OpenAI's 404 (``No such File object``)."""

from __future__ import annotations

import email.policy
import uuid
from dataclasses import dataclass
from email.parser import BytesParser
from typing import Any

from chatbatch.local.simulator.api import ApiError, invalid

PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
MAX_BATCH_FILE_BYTES = 200 * 1024 * 1024


@dataclass(frozen=True)
class StoredFile:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def body(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "expires_at": None,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
        }


def parse_form(content_type: str, raw: bytes) -> dict[str, tuple[str | None, bytes]]:
    """A ``multipart/form-data`` body: field name -> (file name or None, bytes)."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise invalid("The request must be multipart/form-data with a file and a purpose.", None)
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
    if not message.is_multipart():
        raise invalid("Could not parse the multipart/form-data body.", None)
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            fields[name] = (part.get_filename(), payload)
    return fields


class FileStore:
    """The files uploaded and the batches' output, by id."""

    def __init__(self) -> None:
        self._files: dict[str, StoredFile] = {}

    def upload(self, content_type: str, raw: bytes, now_unix: int) -> StoredFile:
        fields = parse_form(content_type, raw)
        if "purpose" not in fields:
            raise invalid("Missing required parameter: 'purpose'.", "purpose")
        if "file" not in fields or fields["file"][0] is None:
            raise invalid("Missing required parameter: 'file'.", "file")
        purpose = fields["purpose"][1].decode("utf-8", "replace").strip()
        filename, data = fields["file"]
        if purpose not in PURPOSES:
            raise invalid(
                f"Invalid value for 'purpose': '{purpose}'. Supported values are: "
                + ", ".join(f"'{p}'" for p in PURPOSES)
                + ".",
                "purpose",
                "invalid_value",
            )
        if purpose == "batch" and not str(filename).endswith(".jsonl"):
            raise invalid("Invalid file format for Batch API. Must be .jsonl", "file")
        if purpose == "batch" and len(data) > MAX_BATCH_FILE_BYTES:
            raise invalid(
                f"File is too large for the Batch API: {len(data)} bytes, at most "
                f"{MAX_BATCH_FILE_BYTES} bytes.",
                "file",
            )
        return self.add(str(filename), purpose, data, now_unix)

    def add(self, filename: str, purpose: str, data: bytes, now_unix: int) -> StoredFile:
        stored = StoredFile("file-" + uuid.uuid4().hex[:24], filename, purpose, data, now_unix)
        self._files[stored.id] = stored
        return stored

    def get(self, file_id: str) -> StoredFile:
        found = self._files.get(file_id)
        if found is None:
            raise ApiError(404, f"No such File object: {file_id}", param="id")
        return found

    def delete(self, file_id: str) -> dict[str, Any]:
        self.get(file_id)
        del self._files[file_id]
        return {"id": file_id, "object": "file", "deleted": True}
