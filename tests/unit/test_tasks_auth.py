"""Authentication of `/tasks/process`: Cloud Tasks' OIDC ID token, or the shared token header.

Tokens are signed in the test with an RSA key generated here; the verifier gets that key as its
certificate source, so nothing talks to Google.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import crypt, jwt

from pyloto_cli.adapters.queue.cloud_tasks import TOKEN_HEADER
from pyloto_cli.settings import Settings
from pyloto_cli.web.tasks_auth import (
    TASK_TOKEN_HEADER,
    GoogleCerts,
    OidcVerifier,
    TaskAuthConfigError,
    TaskAuthenticator,
    TaskForbidden,
    TaskUnauthenticated,
    build_pubsub_push_authenticator,
    build_task_authenticator,
    check_tasks_auth_settings,
)

AUDIENCE = "https://pyloto.example.run.app/tasks/process"
ACCOUNT = "pyloto-tasks@pyloto-test.iam.gserviceaccount.com"
SECRET = "s3cret-task-token-0123456789"
KID = "test-key-1"


def _keypair() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


@pytest.fixture(scope="module")
def keys() -> tuple[str, str]:
    return _keypair()


class StaticCerts:
    """A certificate source holding the test's public key; records the calling thread."""

    def __init__(self, certs: Mapping[str, str]) -> None:
        self._certs = certs
        self.threads: list[int] = []

    def certs(self) -> Mapping[str, str]:
        self.threads.append(threading.get_ident())
        return self._certs


@pytest.fixture
def certs(keys: tuple[str, str]) -> StaticCerts:
    return StaticCerts({KID: keys[1]})


@pytest.fixture
def sign(keys: tuple[str, str]) -> Callable[..., str]:
    """Sign an ID token like Google's for Cloud Tasks, with claims overridable."""

    def factory(private_pem: str | None = None, kid: str = KID, **overrides: Any) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": "https://accounts.google.com",
            "aud": AUDIENCE,
            "sub": "1234567890",
            "email": ACCOUNT,
            "email_verified": True,
            "iat": now,
            "exp": now + 3600,
        }
        claims.update(overrides)
        signer = crypt.RSASigner.from_string(  # type: ignore[no-untyped-call]
            private_pem or keys[0], key_id=kid
        )
        token: bytes = jwt.encode(signer, claims)  # type: ignore[no-untyped-call]
        return token.decode()

    return factory


@pytest.fixture
def oidc(certs: StaticCerts) -> TaskAuthenticator:
    return TaskAuthenticator(verifier=OidcVerifier(AUDIENCE, ACCOUNT, certs))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class TestOidcToken:
    """Cloud Tasks' ID token is verified: signature, expiry, issuer, audience, email."""

    async def test_a_valid_token_is_accepted_and_verified_off_the_event_loop(
        self, oidc: TaskAuthenticator, certs: StaticCerts, sign: Callable[..., str]
    ) -> None:
        """The real token shape passes, and certificates are read from a worker thread."""
        await oidc.authenticate(bearer(sign()))
        assert certs.threads
        assert threading.get_ident() not in certs.threads

    async def test_header_names_are_case_insensitive(
        self, oidc: TaskAuthenticator, sign: Callable[..., str]
    ) -> None:
        """A plain dict with lower-case names (as ASGI delivers them) works too."""
        await oidc.authenticate({"authorization": f"bearer {sign()}"})

    @pytest.mark.parametrize(
        ("overrides", "match"),
        [
            ({"aud": "https://evil.example/tasks/process"}, "audience"),
            ({"iat": int(time.time()) - 7200, "exp": int(time.time()) - 3600}, "expired"),
            ({"iss": "https://evil.example"}, "issuer"),
        ],
        ids=["wrong-audience", "expired", "wrong-issuer"],
    )
    async def test_a_token_not_for_us_is_401(
        self,
        oidc: TaskAuthenticator,
        sign: Callable[..., str],
        overrides: dict[str, Any],
        match: str,
    ) -> None:
        """Wrong audience, an expired token or another issuer: unauthenticated."""
        with pytest.raises(TaskUnauthenticated, match=match) as caught:
            await oidc.authenticate(bearer(sign(**overrides)))
        assert caught.value.status_code == 401

    @pytest.mark.parametrize(
        "overrides",
        [{"email": "someone-else@pyloto-test.iam.gserviceaccount.com"}, {"email_verified": False}],
        ids=["wrong-email", "unverified-email"],
    )
    async def test_a_valid_token_of_another_account_is_403(
        self, oidc: TaskAuthenticator, sign: Callable[..., str], overrides: dict[str, Any]
    ) -> None:
        """Google signed it for us, but not for the queue's service account: forbidden."""
        with pytest.raises(TaskForbidden) as caught:
            await oidc.authenticate(bearer(sign(**overrides)))
        assert caught.value.status_code == 403

    async def test_a_token_signed_with_another_key_is_401(
        self, oidc: TaskAuthenticator, sign: Callable[..., str]
    ) -> None:
        """Same key id, different private key: the signature does not verify."""
        other_private, _ = _keypair()
        with pytest.raises(TaskUnauthenticated, match="signature"):
            await oidc.authenticate(bearer(sign(private_pem=other_private)))
        with pytest.raises(TaskUnauthenticated, match="not found"):
            await oidc.authenticate(bearer(sign(kid="unknown-kid")))

    @pytest.mark.parametrize(
        "headers",
        [{}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer not.a.jwt"}],
        ids=["none", "basic", "garbage"],
    )
    async def test_missing_or_malformed_credentials_are_401(
        self, oidc: TaskAuthenticator, headers: dict[str, str]
    ) -> None:
        """No bearer token, another scheme, or a token that is not a JWT."""
        with pytest.raises(TaskUnauthenticated):
            await oidc.authenticate(headers)


class TestSharedToken:
    """The `X-Pyloto-Task-Token` header, compared in constant time."""

    async def test_the_right_token_is_accepted(self) -> None:
        """The header the sink sets is the one the authenticator reads."""
        assert TOKEN_HEADER == TASK_TOKEN_HEADER
        await TaskAuthenticator(token=SECRET).authenticate({TASK_TOKEN_HEADER: SECRET})

    @pytest.mark.parametrize(
        "headers",
        [{}, {TASK_TOKEN_HEADER: "wrong"}, {TASK_TOKEN_HEADER: SECRET + "x"}, bearer(SECRET)],
        ids=["missing", "wrong", "longer", "as-bearer"],
    )
    async def test_anything_else_is_401(self, headers: dict[str, str]) -> None:
        """A missing or different token, or the token in the wrong header, is refused."""
        with pytest.raises(TaskUnauthenticated):
            await TaskAuthenticator(token=SECRET).authenticate(headers)

    async def test_with_both_configured_either_is_enough(
        self, certs: StaticCerts, sign: Callable[..., str]
    ) -> None:
        """A bad token header does not spoil a good ID token, and vice versa."""
        both = TaskAuthenticator(token=SECRET, verifier=OidcVerifier(AUDIENCE, ACCOUNT, certs))
        await both.authenticate({TASK_TOKEN_HEADER: "wrong", **bearer(sign())})
        await both.authenticate({TASK_TOKEN_HEADER: SECRET, **bearer("garbage")})
        with pytest.raises(TaskForbidden):
            await both.authenticate({TASK_TOKEN_HEADER: "wrong", **bearer(sign(email="x@y.z"))})


class TestSettings:
    """pyloto refuses to start with an unauthenticated `/tasks/process`."""

    def test_neither_account_nor_token_is_refused(
        self, make_settings: Callable[..., Settings]
    ) -> None:
        """The error names both ways to fix it."""
        settings = make_settings(queue_backend="cloud_tasks")
        with pytest.raises(TaskAuthConfigError, match=r"CLOUDTASKS_SERVICE_ACCOUNT.*PYLOTO_TASKS"):
            check_tasks_auth_settings(settings)

    def test_an_account_needs_the_handler_url_as_audience(
        self, make_settings: Callable[..., Settings]
    ) -> None:
        """Without CLOUDTASKS_HANDLER_URL there is no audience to check."""
        with pytest.raises(TaskAuthConfigError, match="CLOUDTASKS_HANDLER_URL"):
            check_tasks_auth_settings(make_settings(cloudtasks_service_account=ACCOUNT))

    def test_a_short_token_is_refused(self, make_settings: Callable[..., Settings]) -> None:
        """A guessable shared secret is as bad as none."""
        with pytest.raises(TaskAuthConfigError, match="at least"):
            check_tasks_auth_settings(make_settings(tasks_token="short"))

    async def test_settings_build_the_configured_methods(
        self,
        make_settings: Callable[..., Settings],
        certs: StaticCerts,
        sign: Callable[..., str],
    ) -> None:
        """Account + URL give OIDC with that audience; the token gives the header check."""
        settings = make_settings(
            cloudtasks_service_account=ACCOUNT, cloudtasks_handler_url=AUDIENCE, tasks_token=SECRET
        )
        auth = build_task_authenticator(settings, certs=certs)
        await auth.authenticate(bearer(sign()))
        await auth.authenticate({TASK_TOKEN_HEADER: SECRET})
        only_token = build_task_authenticator(make_settings(tasks_token=SECRET))
        with pytest.raises(TaskUnauthenticated):
            await only_token.authenticate(bearer(sign()))


class TestGoogleCerts:
    """Google's certificates are fetched once and kept for their Cache-Control max-age."""

    def test_certificates_are_cached_until_max_age(self) -> None:
        """Two reads within max-age fetch once; after it, once more."""
        now = [1000.0]
        fetches: list[str] = []

        def http_get(url: str) -> tuple[int, Mapping[str, str], bytes]:
            fetches.append(url)
            body = b'{"k%d": "PEM"}' % len(fetches)
            return 200, {"Cache-Control": "public, max-age=300, must-revalidate"}, body

        source = GoogleCerts(http_get=http_get, clock=lambda: now[0])
        assert source.certs() == {"k1": "PEM"}
        now[0] += 299
        assert source.certs() == {"k1": "PEM"}
        now[0] += 2
        assert source.certs() == {"k2": "PEM"}
        assert fetches == [GoogleCerts().url] * 2

    def test_a_failed_fetch_rejects_the_request(self) -> None:
        """Without certificates no token verifies: the request is unauthenticated."""
        source = GoogleCerts(http_get=lambda url: (503, {}, b""))
        with pytest.raises(TaskUnauthenticated, match="503"):
            source.certs()


class TestPubSubPush:
    """`/pubsub/push` takes the push subscription's token, for its own audience only."""

    PUSH_AUDIENCE = "https://pyloto.example.run.app/pubsub/push"
    PUSH_ACCOUNT = "pyloto-push@pyloto-test.iam.gserviceaccount.com"

    def authenticator(
        self, make_settings: Callable[..., Settings], certs: StaticCerts
    ) -> TaskAuthenticator:
        settings = make_settings(
            pubsub_push_audience=self.PUSH_AUDIENCE,
            pubsub_push_service_account=self.PUSH_ACCOUNT,
            cloudtasks_service_account=ACCOUNT,  # Cloud Tasks' account is not the push one
            cloudtasks_handler_url=AUDIENCE,
        )
        built = build_pubsub_push_authenticator(settings, certs=certs)
        assert built is not None
        return built

    async def test_the_push_accounts_token_for_the_push_audience_passes(
        self,
        make_settings: Callable[..., Settings],
        certs: StaticCerts,
        sign: Callable[..., str],
    ) -> None:
        auth = self.authenticator(make_settings, certs)
        token = sign(aud=self.PUSH_AUDIENCE, email=self.PUSH_ACCOUNT)
        await auth.authenticate(bearer(token))

    async def test_a_cloud_tasks_token_is_refused(
        self,
        make_settings: Callable[..., Settings],
        certs: StaticCerts,
        sign: Callable[..., str],
    ) -> None:
        auth = self.authenticator(make_settings, certs)
        with pytest.raises(TaskUnauthenticated):  # Cloud Tasks' audience
            await auth.authenticate(bearer(sign()))
        with pytest.raises(TaskForbidden):  # the right audience, another account
            await auth.authenticate(bearer(sign(aud=self.PUSH_AUDIENCE)))
