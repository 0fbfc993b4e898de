"""Cloud Storage object store: the GCP runtime's ``ObjectStore``, the deployment's bucket.

Objects (wheels of users' local code, the agent wheel, the uv binary instances bootstrap
with) are objects ``<prefix><sha256>``. Their bytes never pass through the control plane:
clients ``PUT`` and instances ``GET`` them through V4 signed URLs (XML API) this store
issues.

**An object's bytes always match its name.** ``upload_url`` signs three headers into the
URL; the uploader must send each with the signed value (``upload_headers`` lists them,
the API hands them out with the URL) or the signature does not match:

* ``x-goog-content-sha256``: the payload hash of the signed request, which Cloud Storage
  checks the body against (V4 signing), so other bytes are refused;
* ``x-goog-content-length-range: <size>,<size>``: Cloud Storage refuses a body of another
  size;
* ``x-goog-meta-billow-sha256``: custom metadata recording the checked hash.

``exists`` counts an object only when that metadata is its name. An object that got in
any other way (an upload without the signed headers, a copy) reads as absent, so a client
uploads it again through a checked URL, overwriting it. The instance kit uploaded by an
admin (README, "Deploying to GCP") carries the same metadata; instances check the sha256
of what they download in any case.

**Signing.** With credentials that hold a private key (a service-account key file,
``BILLOW_GCS_SIGNING_KEY_FILE``) URLs are signed locally. Otherwise (Cloud Functions'
own identity, which has no key) the library signs through IAM ``signBlob`` as the
function's service account, which needs ``roles/iam.serviceAccountTokenCreator`` on
itself (``infra/gcp/deploy.py`` grants it).

``tests/support/gcp_fakes/gcs.py`` verifies the signatures and the three headers.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

SHA256 = re.compile(r"^[0-9a-f]{64}$")
URL_LIFETIME = 900  # seconds a signed URL stays valid
METADATA_KEY = "billow-sha256"  # custom metadata recording the checked sha256


class GcsObjectStore:
    """Implements ``billow_control.core.ports.ObjectStore`` on a Cloud Storage bucket.

    Parameters
    ----------
    client
        A ``google.cloud.storage.Client`` (metadata reads: ``storage.objects.get``).
    bucket
        The deployment's bucket (``BILLOW_GCS_BUCKET``).
    signer
        Credentials with a private key to sign URLs with; ``None``: the client's own
        credentials, through IAM ``signBlob`` when they cannot sign themselves.
    endpoint
        Base URL of signed URLs (default the client's ``api_endpoint``).
    prefix, lifetime
        Object name prefix; seconds a signed URL stays valid.
    """

    def __init__(
        self,
        client: Any,
        bucket: str,
        *,
        signer: Any = None,
        endpoint: str | None = None,
        prefix: str = "objects/",
        lifetime: int = URL_LIFETIME,
    ) -> None:
        if not bucket:
            raise ValueError("bucket is required (BILLOW_GCS_BUCKET)")
        self.client = client
        self.bucket = client.bucket(bucket)
        self.signer = signer
        self.endpoint = (endpoint or client.api_endpoint).rstrip("/")
        self.prefix = prefix
        self.lifetime = lifetime
        self._lock = threading.Lock()

    # -- the port ----------------------------------------------------------------------

    def upload_url(self, sha256: str, size: int) -> str:
        """A ``PUT`` URL for exactly ``size`` bytes whose SHA-256 is ``sha256``; the
        request must carry ``upload_headers(sha256, size)``."""
        if size < 1:
            raise ValueError(f"size must be positive, not {size}")
        return self._sign("PUT", sha256, self.upload_headers(sha256, size))

    def upload_headers(self, sha256: str, size: int) -> dict[str, str]:
        """The headers signed into ``upload_url`` (see the module docstring)."""
        return {
            "x-goog-content-sha256": self._checked(sha256),
            "x-goog-content-length-range": f"{size},{size}",
            f"x-goog-meta-{METADATA_KEY}": sha256,
        }

    def download_url(self, sha256: str) -> str:
        return self._sign("GET", sha256, None)

    def exists(self, sha256: str) -> bool:
        """Whether the object is there with its checked sha256 recorded as its name.
        Raises ``GoogleAPICallError`` for anything but "not found"."""
        if not SHA256.match(sha256):
            return False
        blob = self.bucket.get_blob(self.key(sha256))
        if blob is None:
            return False
        return (blob.metadata or {}).get(METADATA_KEY) == sha256

    # -- helpers -----------------------------------------------------------------------

    def key(self, sha256: str) -> str:
        return f"{self.prefix}{self._checked(sha256)}"

    def _sign(self, method: str, sha256: str, headers: dict[str, str] | None) -> str:
        blob = self.bucket.blob(self.key(sha256))
        kwargs: dict[str, Any] = {}
        if self.signer is not None:
            kwargs["credentials"] = self.signer
        elif not _can_sign(self.client._credentials):
            kwargs.update(self._sign_blob_identity())
        return str(
            blob.generate_signed_url(
                version="v4",
                expiration=timedelta(seconds=self.lifetime),
                method=method,
                headers=headers,
                api_access_endpoint=self.endpoint,
                **kwargs,
            )
        )

    def _sign_blob_identity(self) -> dict[str, str]:
        """The service account and a fresh token, for signing through IAM ``signBlob``."""
        from google.auth.transport.requests import Request

        with self._lock:
            credentials = self.client._credentials
            if not credentials.valid:
                credentials.refresh(Request())
            return {
                "service_account_email": credentials.service_account_email,
                "access_token": credentials.token,
            }

    @staticmethod
    def _checked(sha256: str) -> str:
        if not SHA256.match(sha256):
            raise ValueError(f"{sha256!r} is not a sha256 (64 lower-case hex digits)")
        return sha256


def _can_sign(credentials: Any) -> bool:
    from google.auth.credentials import Signing

    return isinstance(credentials, Signing) and getattr(credentials, "signer", None) is not None


def gcs_object_store_from_env(
    project: str, env: Mapping[str, str] | None = None
) -> GcsObjectStore | None:
    """The deployment's store, or ``None`` when ``BILLOW_GCS_BUCKET`` is unset (package
    sync of local code is then refused, and bare instances get no kit).

    Variables: ``BILLOW_GCS_BUCKET``; ``BILLOW_GCS_ENDPOINT`` (tests: a loopback fake,
    reached with anonymous credentials; signed URLs point at it too);
    ``BILLOW_GCS_SIGNING_KEY_FILE`` (a service-account key file to sign URLs with;
    default: the function's identity through IAM ``signBlob``). Makes no Google call;
    raises ``ValueError`` for an unreadable key file."""
    from google.cloud.storage import Client as StorageClient

    from .clients import client_options

    env = os.environ if env is None else env
    bucket = env.get("BILLOW_GCS_BUCKET", "").strip()
    if not bucket:
        return None
    endpoint = env.get("BILLOW_GCS_ENDPOINT", "").strip() or None
    signer = None
    key_file = env.get("BILLOW_GCS_SIGNING_KEY_FILE", "").strip()
    if key_file:
        from google.oauth2 import service_account

        try:
            signer = service_account.Credentials.from_service_account_file(key_file)
        except (OSError, ValueError) as e:
            raise ValueError(f"BILLOW_GCS_SIGNING_KEY_FILE: cannot load {key_file}: {e}") from None
    kwargs, options = client_options(endpoint)
    client = StorageClient(project=project, client_options=options or None, **kwargs)
    return GcsObjectStore(client, bucket, signer=signer, endpoint=endpoint)
