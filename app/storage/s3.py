"""Object store on S3 or any S3-compatible server (SeaweedFS, MinIO, …) through boto3.

An S3 object becomes visible only when its PUT or multipart upload completes, so writes are
atomic; boto3's transfer manager streams large files in parts with flat memory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from app.storage import CHUNK


class S3Store:
    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url=None, access_key=None, secret_key=None,
                 region="us-east-1"):
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name=region,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                          retries={"max_attempts": 3, "mode": "standard"}),
        )
        from boto3.s3.transfer import TransferConfig

        self.transfer = TransferConfig(multipart_threshold=64 * 1024**2, multipart_chunksize=32 * 1024**2,
                                       max_concurrency=4)

    @staticmethod
    def error_types() -> tuple[type[BaseException], ...]:
        import boto3.exceptions
        from botocore.exceptions import BotoCoreError, ClientError

        return (BotoCoreError, ClientError, boto3.exceptions.Boto3Error)

    @staticmethod
    def unavailable(exc: BaseException) -> str | None:
        """Why the server cannot be reached (no connection, timeouts, 5xx answers), or None."""
        from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

        cause = exc.__cause__ or exc.__context__
        if isinstance(exc, ConnectionError | HTTPClientError) or (
                isinstance(cause, ConnectionError | HTTPClientError) and type(exc).__module__.startswith("boto3")):
            return f"the object store is unreachable ({type(exc).__name__})"
        if isinstance(exc, ClientError):
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            if status >= 500:
                return f"the object store answered {status} ({exc.response.get('Error', {}).get('Code', '')})"
        return None

    @classmethod
    def from_url(cls, url: str, settings=None) -> S3Store:
        u = urlparse(url)
        if not u.netloc:
            raise ValueError(f"S3 storage URL needs a bucket: {url!r}")
        kw = {}
        if settings is not None:
            kw = dict(endpoint_url=settings.s3_endpoint_url, access_key=settings.s3_access_key_id,
                      secret_key=settings.s3_secret_access_key, region=settings.s3_region)
        store = cls(u.netloc, u.path, **kw)
        store.ensure_bucket()
        return store

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def ensure_bucket(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket", "NotFound"):
                self.client.create_bucket(Bucket=self.bucket)
            else:
                raise

    def put_file(self, key: str, path: Path, *, move: bool = False) -> None:
        if not self.exists(key):
            self.client.upload_file(str(path), self.bucket, self._key(key), Config=self.transfer)
        if move:
            path.unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def size(self, key: str) -> int:
        return int(self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"])

    def iter_chunks(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        try:
            yield from body.iter_chunks(chunk_size)
        finally:
            body.close()

    def get_to_path(self, key: str, path: Path) -> None:
        self.client.download_file(self.bucket, self._key(key), str(path), Config=self.transfer)

    def copy(self, src_key: str, dst_key: str) -> None:
        if not self.exists(dst_key):  # managed copy: server-side, multipart past 5 GiB
            self.client.copy({"Bucket": self.bucket, "Key": self._key(src_key)}, self.bucket, self._key(dst_key),
                             Config=self.transfer)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def ping(self) -> None:
        self.client.head_bucket(Bucket=self.bucket)

    def presigned_url(self, key: str, expires_s: int = 3600, filename: str | None = None) -> str | None:
        params = {"Bucket": self.bucket, "Key": self._key(key)}
        if filename:
            from app.limits import content_disposition

            params["ResponseContentDisposition"] = content_disposition(filename)
        return self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_s)
