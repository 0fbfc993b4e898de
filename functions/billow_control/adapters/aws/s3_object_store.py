"""S3 object store: the AWS runtime's ``ObjectStore``, the deployment's environment bucket.

Objects (wheels of users' local code, the agent wheel, the uv binary instances bootstrap
with) are keys ``<prefix><sha256>``. Their bytes never pass through the control plane:
clients ``PUT`` and instances ``GET`` them through URLs this store pre-signs.

**An object's bytes always match its name.** A plain pre-signed ``PUT`` lets S3 store any
bytes, so the store makes S3 check them:

* ``upload_url`` signs ``Content-Length`` (the declared size) and
  ``x-amz-checksum-sha256`` (base64 of the digest the key names) into the URL. The
  uploader must send both headers with those values (``upload_headers`` lists them; the
  API hands them out with the URL), or the signature does not match; S3 verifies the
  checksum against the body it receives and refuses other bytes (``BadDigest``), and
  records it on the object.
* ``exists`` counts an object only when S3's recorded SHA-256 checksum of it is its name
  (``HeadObject`` with ``ChecksumMode=ENABLED``). An object that got in any other way
  (a ``PUT`` without the checksum, a copy) reads as absent, so a client uploads it again
  through a checked URL, overwriting it.

moto (the tests' S3) verifies neither signatures nor checksums: it records the claimed
checksum. The checks above are S3's; ``tests/integration/test_aws_adapters.py`` asserts
that the URLs carry them and that unchecked objects read as absent.

**Uploads expire, the instance kit does not.** Objects uploaded through ``upload_url``
are tagged ``UPLOAD_TAG`` (signed too); the bucket's lifecycle rule expires objects with
that tag after 30 days (``infra/aws/platform.yml``), and a client whose wheel expired
simply uploads it again (``exists`` is false). The agent wheel and uv that
``scripts/upload-instance-kit.sh`` puts in the same bucket carry no tag and stay.
"""

from __future__ import annotations

import base64
import re
from typing import Any

from botocore.exceptions import ClientError

from .errors import error_code

SHA256 = re.compile(r"^[0-9a-f]{64}$")
URL_LIFETIME = 900  # seconds a pre-signed URL stays valid
UPLOAD_TAG = "billow-upload=client"  # object tag of client uploads (x-amz-tagging form)
NOT_FOUND = {"404", "NoSuchKey", "NotFound"}


def checksum_of(sha256: str) -> str:
    """S3's form of a SHA-256 checksum: base64 of the digest (hex ``sha256``)."""
    return base64.b64encode(bytes.fromhex(sha256)).decode()


class S3ObjectStore:
    """Implements ``billow_control.core.ports.ObjectStore`` on an S3 bucket.

    Parameters
    ----------
    s3
        A boto3 S3 client configured with ``signature_version="s3v4"`` (botocore
        pre-signs with SigV2 otherwise, which signs neither the size nor the checksum).
    bucket
        The deployment's environment bucket (``BILLOW_ENV_BUCKET``).
    prefix
        Key prefix of objects; an object is ``<prefix><sha256>``.
    lifetime
        Seconds a pre-signed URL stays valid.
    """

    def __init__(
        self, s3: Any, bucket: str, prefix: str = "objects/", lifetime: int = URL_LIFETIME
    ) -> None:
        if not bucket:
            raise ValueError("bucket is required (BILLOW_ENV_BUCKET)")
        probe = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "x"})
        if "X-Amz-Signature=" not in probe:  # made locally: no request is sent
            raise ValueError("the S3 client must sign with signature_version='s3v4'")
        self.s3 = s3
        self.bucket = bucket
        self.prefix = prefix
        self.lifetime = lifetime

    # -- the port ----------------------------------------------------------------------

    def upload_url(self, sha256: str, size: int) -> str:
        """A ``PUT`` URL for exactly ``size`` bytes whose SHA-256 is ``sha256``; the
        request must carry ``upload_headers(sha256, size)``."""
        if size < 1:
            raise ValueError(f"size must be positive, not {size}")
        params = {
            "Bucket": self.bucket,
            "Key": self.key(sha256),
            "ContentLength": size,
            "ChecksumSHA256": checksum_of(sha256),
            "ChecksumAlgorithm": "SHA256",
            "Tagging": UPLOAD_TAG,
        }
        return str(
            self.s3.generate_presigned_url("put_object", Params=params, ExpiresIn=self.lifetime)
        )

    def upload_headers(self, sha256: str, size: int) -> dict[str, str]:
        """Headers signed into ``upload_url`` besides ``Content-Length`` (which every HTTP
        client sends): the checksum S3 verifies the body against, and the tag that lets
        the object expire."""
        return {
            "x-amz-checksum-sha256": checksum_of(self._checked(sha256)),
            "x-amz-sdk-checksum-algorithm": "SHA256",
            "x-amz-tagging": UPLOAD_TAG,
        }

    def download_url(self, sha256: str) -> str:
        params = {"Bucket": self.bucket, "Key": self.key(sha256)}
        return str(
            self.s3.generate_presigned_url("get_object", Params=params, ExpiresIn=self.lifetime)
        )

    def exists(self, sha256: str) -> bool:
        """Whether the object is there with S3's checksum equal to its name. Raises
        ``ClientError`` for anything but "not found" (no permission, throttled)."""
        if not SHA256.match(sha256):
            return False
        try:
            head = self.s3.head_object(
                Bucket=self.bucket, Key=self.key(sha256), ChecksumMode="ENABLED"
            )
        except ClientError as e:
            if error_code(e) in NOT_FOUND:
                return False
            raise
        return head.get("ChecksumSHA256") == checksum_of(sha256)

    # -- helpers -----------------------------------------------------------------------

    def key(self, sha256: str) -> str:
        return f"{self.prefix}{self._checked(sha256)}"

    @staticmethod
    def _checked(sha256: str) -> str:
        if not SHA256.match(sha256):
            raise ValueError(f"{sha256!r} is not a sha256 (64 lower-case hex digits)")
        return sha256
