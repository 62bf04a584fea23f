"""S3 origins: ranged reads pinned to the listed version (``IfMatch`` with the ETag, and the
``VersionId`` where the listing or the URL carries one). moto's server checks both."""

from __future__ import annotations

from typing import Any

from rayfly.source_http import changed
from rayfly.version import Version


def _precondition_failed(exc: BaseException | None) -> bool:
    """True for an S3 412 (s3fs turns it into a plain OSError; the botocore error is its cause)."""
    while exc is not None:
        response = getattr(exc, "response", None)
        if isinstance(response, dict):
            code = response.get("Error", {}).get("Code")
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return code in ("PreconditionFailed", "412") or status == 412
        exc = exc.__cause__
    return False


async def read_range(fs: Any, path: str, shown: str, start: int, end: int, v: Version) -> bytes:
    """A ranged GET pinned to the listed ``ETag`` (``IfMatch``) and ``VersionId``."""
    bucket, key, path_version = fs.split_path(path)
    kw: dict[str, str] = {"Range": f"bytes={start}-{end - 1}"}
    if v.strong_etag:
        kw["IfMatch"] = v.strong_etag
    if v.version_id or path_version:
        kw["VersionId"] = v.version_id or path_version
    try:
        resp = await fs._call_s3("get_object", Bucket=bucket, Key=key, **kw)
    except Exception as exc:
        if _precondition_failed(exc):
            raise changed(shown, f"ETag was {v.etag}") from None
        raise
    try:
        return await resp["Body"].read()
    finally:
        resp["Body"].close()
