"""Trust between tiers at the queen (issue 10): who may register a hive, who may touch jobs, and
that the queen presents each hive's token to that hive and its workers, never logging any token.

Each attack of the issue is played against a served queen that has a secret, as ``rbee-queen``
always has: a rogue hive without a token, with a wrong one, with another hive's join token and
with the keeper's; an id takeover; unbounded registration values; a worker URL elsewhere; jobs
listed, streamed and cancelled without the keeper's token.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import httpx
import pytest

from jobproto import JobFailed, Succeeded
from rbee_contracts import auth
from rbee_contracts.auth import hive_token, join_token, keeper_token, worker_token
from rbee_queen.registry import HiveRegistry, parse_registration

pytestmark = pytest.mark.anyio

SECRET = bytes(range(32))
KEEPER = {"Authorization": f"Bearer {keeper_token(SECRET)}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def beat(hive_id: str, url: str, worker_url: str | None = None, **over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"hive_id": hive_id, "url": url, "models": ["tiny"]}
    if worker_url is not None:
        body["workers"] = [
            {"worker_id": f"{hive_id}-w", "model": "tiny", "state": "ready", "url": worker_url}
        ]
    body.update(over)
    return body


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert response.headers["cache-control"] == "no-store"


async def test_a_rogue_hive_cannot_register_or_get_prompts(cluster: Any, fakes: Any) -> None:
    good = fakes.Hive("good", secret=SECRET)
    async with cluster([good], secret=SECRET) as c, httpx.AsyncClient(base_url=c.queen_url) as http:
        worker = await good.add_worker("gw")
        await good.register(c.queen_url)
        # the rogue listens at an address of its own and claims a ready worker there
        rogue = beat("rogue", "http://127.0.0.1:1", "http://127.0.0.1:2")
        attempts = {
            "no token": await http.put("/v1/hives/rogue", json=rogue),
            "wrong token": await http.put(
                "/v1/hives/rogue", json=rogue, headers=bearer("rbee_j_" + "A" * 43)
            ),
            "keeper's token": await http.put("/v1/hives/rogue", json=rogue, headers=KEEPER),
            "good's join token": await http.put(
                "/v1/hives/rogue", json=rogue, headers=bearer(good.token)
            ),
            "good's hive token": await http.put(
                "/v1/hives/rogue", json=rogue, headers=bearer(good.accepts)
            ),
        }
        listed = (await http.get("/v1/hives", headers=KEEPER)).json()["hives"]
        results = [await c.client.run("infer", model="tiny", prompt="hi") for _ in range(3)]
    assert_error(attempts["no token"], 401, "unauthorized")
    assert attempts["no token"].headers["www-authenticate"] == "Bearer"
    assert_error(attempts["wrong token"], 401, "unauthorized")
    assert_error(attempts["good's hive token"], 401, "unauthorized")  # the queen accepts none
    assert_error(attempts["keeper's token"], 403, "forbidden")
    assert_error(attempts["good's join token"], 403, "forbidden")
    assert [h["hive_id"] for h in listed] == ["good"]
    assert {r["engine"] for r in results} == {"fake:gw"}
    assert len(worker.jobs) == 3


async def test_a_hive_id_cannot_be_taken_over(cluster: Any, fakes: Any) -> None:
    good = fakes.Hive("good", secret=SECRET)
    rogue = fakes.Hive("rogue", secret=SECRET)
    async with (
        cluster([good, rogue], secret=SECRET) as c,
        httpx.AsyncClient(base_url=c.queen_url) as http,
    ):
        await good.register(c.queen_url)
        await rogue.register(c.queen_url)  # a hive of its own, with its own join token
        takeover = beat("good", "http://127.0.0.1:1", "http://127.0.0.1:2")
        refused = await http.put("/v1/hives/good", json=takeover, headers=bearer(rogue.token))
        held = (await http.get("/v1/hives/good", headers=KEEPER)).json()
    assert_error(refused, 403, "forbidden")
    assert held["url"] == good.url


def test_the_registry_binds_a_hive_id_to_its_first_credential() -> None:
    registry = HiveRegistry()
    first = parse_registration("h1", beat("h1", "http://127.0.0.1:9000"))
    assert registry.register(first, 0.0, owner="hive:h1") is True
    assert registry.register(first, 1.0, owner="hive:h1") is False
    taken = parse_registration("h1", beat("h1", "http://127.0.0.1:6666"))
    for other in ("hive:h2", "keeper", None):
        with pytest.raises(Exception) as info:
            registry.register(taken, 2.0, owner=other)
        assert (info.value.status, info.value.code) == (403, "hive_id_taken")  # type: ignore[attr-defined]
    assert registry.get("h1").url == "http://127.0.0.1:9000"
    assert registry.get("h1").last_seen == 1.0
    # without authentication there is no credential to bind to
    open_registry = HiveRegistry()
    open_registry.register(first, 0.0)
    assert open_registry.register(taken, 1.0) is False
    assert open_registry.get("h1").url == "http://127.0.0.1:6666"


@pytest.mark.parametrize(
    ("over", "worker_url", "field"),
    [
        ({"heartbeat_interval": 1e300}, None, "heartbeat_interval"),
        ({}, "http://10.1.2.3:40001", "workers[0].url"),
        ({}, "http://localhost:40001", "workers[0].url"),
    ],
)
async def test_unbounded_or_misplaced_registrations_are_422(
    cluster: Any, over: dict[str, Any], worker_url: str | None, field: str
) -> None:
    token = bearer(join_token(SECRET, "h1"))
    async with cluster(secret=SECRET) as c, httpx.AsyncClient(base_url=c.queen_url) as http:
        body = beat("h1", "http://127.0.0.1:9000", worker_url, **over)
        refused = await http.put("/v1/hives/h1", json=body, headers=token)
        listed = (await http.get("/v1/hives", headers=KEEPER)).json()["hives"]
    assert_error(refused, 422, "validation_error")
    assert refused.json()["error"]["field"] == field
    assert listed == []


async def test_jobs_need_the_keepers_token_and_never_say_whether_a_job_exists(
    cluster: Any, fakes: Any
) -> None:
    hive = fakes.Hive("h1", secret=SECRET)
    async with cluster([hive], secret=SECRET) as c, httpx.AsyncClient(base_url=c.queen_url) as http:
        await hive.register(c.queen_url)
        job_id = (await c.client.create("status")).job_id
        await fakes.collect(c.client, job_id)
        answers: dict[str, list[httpx.Response]] = {}
        for name, headers in {
            "none": {},
            "wrong": bearer("not-a-token"),
            "join": bearer(hive.token),
        }.items():
            answers[name] = [
                await http.get("/v1/jobs", headers=headers),
                await http.post("/v1/jobs", json={"operation": "status"}, headers=headers),
            ]
            for jid in (job_id, "job_does_not_exist"):
                answers[name] += [
                    await http.get(f"/v1/jobs/{jid}", headers=headers),
                    await http.get(f"/v1/jobs/{jid}/stream", headers=headers),
                    await http.delete(f"/v1/jobs/{jid}", headers=headers),
                ]
        hives_as_hive = await http.get("/v1/hives", headers=bearer(hive.token))
        jobs_as_keeper = await http.get("/v1/jobs", headers=KEEPER)
    for name, status, code in [
        ("none", 401, "unauthorized"),
        ("wrong", 401, "unauthorized"),
        ("join", 403, "forbidden"),
    ]:
        for response in answers[name]:
            assert_error(response, status, code)
        # an existing job and an unknown one get the very same answer
        existing, unknown = answers[name][2:5], answers[name][5:8]
        assert [r.json() for r in existing] == [r.json() for r in unknown]
    assert_error(hives_as_hive, 403, "forbidden")
    assert jobs_as_keeper.status_code == 200


async def test_hives_and_workers_get_their_own_hives_token(cluster: Any, fakes: Any) -> None:
    # each fake hive accepts only its own hive token, each worker only its own worker token
    # (FakeHive(secret=...)): the queen derives both
    h1 = fakes.Hive("h1", secret=SECRET, models=("tiny",))
    h2 = fakes.Hive("h2", secret=SECRET, models=("big",))
    async with cluster([h1, h2], secret=SECRET) as c:
        await h1.add_worker("w1", "tiny")
        for hive in (h1, h2):
            await hive.register(c.queen_url)
        tiny = await c.client.run("infer", model="tiny", prompt="hi")  # a ready worker on h1
        big = await c.client.run("infer", model="big", prompt="hi")  # spawned on h2
        models = await c.client.run("model_list", hive="h2")
    assert tiny["engine"] == "fake:w1"
    assert big["engine"].startswith("fake:h2-")
    assert [m["name"] for m in models["models"]] == ["big"]
    assert h2.calls["worker_spawn"] == 1


async def test_a_hive_that_expects_another_token_refuses_the_queen(
    cluster: Any, fakes: Any
) -> None:
    # the hive was given the token of another queen: the queen's calls are refused (401)
    hive = fakes.Hive("h1", secret=b"another queen's secret, 32 bytes")
    async with cluster([hive], secret=SECRET) as c:
        hive.token = join_token(SECRET, "h1")  # it may join; it does not accept this queen
        await hive.register(c.queen_url)
        with pytest.raises(JobFailed) as info:
            await c.client.run("model_list", hive="h1")
    assert hive.calls["model_list"] == 0
    assert info.value.code == "unauthorized"


async def test_no_token_is_ever_logged(
    cluster: Any, fakes: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    hive = fakes.Hive("h1", secret=SECRET)
    tokens = [keeper_token(SECRET), join_token(SECRET, "h1"), hive_token(SECRET, "h1")]
    async with cluster([hive], secret=SECRET) as c, httpx.AsyncClient(base_url=c.queen_url) as http:
        await hive.register(c.queen_url)
        job = await c.client.create("infer", {"model": "tiny", "prompt": "hi"})
        events = await fakes.collect(c.client, job.job_id)
        await http.put("/v1/hives/h2", json=beat("h2", "http://127.0.0.1:1"), headers=KEEPER)
        await http.get("/v1/jobs", headers=bearer(tokens[1]))
        await c.client.run("model_list", hive="h1")
    assert isinstance(events[-1].event, Succeeded)
    assert caplog.records  # the queen, jobproto and httpx did log
    text = caplog.text + "".join(repr(e) for e in events)
    for token in tokens:
        assert token not in text
    assert SECRET.hex() not in text
    assert "secret" not in repr(c.queen.settings)


def test_a_local_hive_gets_its_tokens_by_environment_and_tls_paths_by_flag(tmp_path: Any) -> None:
    from rbee_queen.hives import LocalHives
    from rbee_queen.settings import QueenSettings

    plain = LocalHives(QueenSettings(state_dir=tmp_path), HiveRegistry())
    # no tokens without a secret; the keeper's, which the queen may inherit, emptied
    keeper_emptied = {"RBEE_TOKEN": "", "RBEE_TOKEN_FILE": ""}
    assert plain.environment("h1") == keeper_emptied and plain.tls_flags() == {}
    settings = QueenSettings(
        state_dir=tmp_path, secret=SECRET, tls_cert=tmp_path / "c.pem", tls_key=tmp_path / "k.pem"
    )
    hives = LocalHives(settings, HiveRegistry())
    assert hives.environment("h1") == keeper_emptied | {
        "RBEE_JOIN_TOKEN": join_token(SECRET, "h1"),
        "RBEE_HIVE_TOKEN": hive_token(SECRET, "h1"),
    }
    # on loopback it serves plain HTTP, and pins the queen's own certificate to verify the queen
    assert hives.tls_flags() == {"tls_ca": str(tmp_path / "c.pem")}


def fake_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine is ``Box`` (FQDN ``box.lan``) at 192.168.1.10."""

    def getaddrinfo(host: str, port: object, *args: object, **kwargs: object) -> list[Any]:
        if host not in ("Box", "box.lan"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.168.1.10", 0))]

    monkeypatch.setattr(socket, "gethostname", lambda: "Box")
    monkeypatch.setattr(socket, "getfqdn", lambda name="": "box.lan")
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.mark.parametrize("bind", ["0.0.0.0", "::"])
def test_a_queen_bound_to_every_interface_answers_to_this_machines_names(
    monkeypatch: pytest.MonkeyPatch, bind: str
) -> None:
    # hives on other machines reach it by its name or its LAN address, never by "0.0.0.0"
    from rbee_queen.security import allowed_hosts
    from rbee_queen.settings import QueenSettings

    fake_machine(monkeypatch)
    names = allowed_hosts(QueenSettings(host=bind, allowed_hosts=()))
    assert names is not None
    assert {"box", "box.lan", "192.168.1.10", "localhost"} <= set(names)
    assert names == auth.allowed_host_names(bind, None)  # the one rule every tier uses


async def test_a_worker_gets_its_own_token_from_the_queen(cluster: Any, fakes: Any) -> None:
    # neither its hive's token nor another worker's opens a worker: each has its own
    hive = fakes.Hive("h1", secret=SECRET)
    async with cluster([hive], secret=SECRET) as c:
        w1 = await hive.add_worker("w1", "tiny")
        await hive.add_worker("w2", "other")
        await hive.register(c.queen_url)
        assert (await c.client.run("infer", model="tiny", prompt="hi"))["engine"] == "fake:w1"
        async with httpx.AsyncClient(base_url=w1.url) as http:
            own = worker_token(hive_token(SECRET, "h1"), "w1")
            for token in (hive_token(SECRET, "h1"), worker_token(hive_token(SECRET, "h1"), "w2")):
                assert_error(await http.get("/v1/jobs", headers=bearer(token)), 401, "unauthorized")
            assert (await http.get("/v1/jobs", headers=bearer(own))).status_code == 200
    assert len(w1.jobs) == 1


@pytest.mark.parametrize("pinned", ["own certificate", "tls_ca"])
async def test_a_queen_with_a_certificate_verifies_its_local_hive_over_https(
    tmp_path: Any, pinned: str
) -> None:
    # LocalHives gives a hive on this machine the queen's certificate; with no --tls-ca the
    # queen trusts that certificate (the hive trusts the queen's the same way)
    import trustme

    from jobproto.testing import serving
    from rbee_hive.app import create_app as create_hive_app
    from rbee_hive.settings import HiveSettings
    from rbee_queen.queen import Queen
    from rbee_queen.settings import QueenSettings

    cert, key = tmp_path / "queen.pem", tmp_path / "queen.key"
    issued = trustme.CA().issue_cert("127.0.0.1", "localhost")
    issued.cert_chain_pems[0].write_to_path(str(cert))  # the leaf alone, as `rbee cert` pins
    issued.private_key_pem.write_to_path(str(key))
    hive = create_hive_app(
        HiveSettings(
            hive_id="h1",
            models_dir=tmp_path / "models",
            state_dir=tmp_path / "hive",
            token=hive_token(SECRET, "h1"),
            tls_cert=cert,
            tls_key=key,
        )
    )
    queen = Queen(
        QueenSettings(
            state_dir=tmp_path / "queen",
            secret=SECRET,
            tls_cert=cert,
            tls_key=key,
            tls_ca=cert if pinned == "tls_ca" else None,
        )
    )
    async with serving(hive, ssl_certfile=cert, ssl_keyfile=key) as url, queen.running():
        assert url.startswith("https://")
        listed = await queen.remote.run(url, "worker_list", {}, hive="h1")
        assert listed["workers"] == []
        assert await queen.remote.health(url, 5) is None


async def test_a_queen_does_not_trust_another_certificate_for_its_hives(tmp_path: Any) -> None:
    import trustme

    from jobproto.testing import serving
    from rbee_hive.app import create_app as create_hive_app
    from rbee_hive.settings import HiveSettings
    from rbee_queen.queen import Queen
    from rbee_queen.settings import QueenSettings

    own, other, key = tmp_path / "queen.pem", tmp_path / "other.pem", tmp_path / "other.key"
    trustme.CA().issue_cert("127.0.0.1").cert_chain_pems[0].write_to_path(str(own))
    issued = trustme.CA().issue_cert("127.0.0.1")
    issued.cert_chain_pems[0].write_to_path(str(other))
    issued.private_key_pem.write_to_path(str(key))
    hive = create_hive_app(
        HiveSettings(hive_id="h1", models_dir=tmp_path / "m", state_dir=tmp_path / "h")
    )
    queen = Queen(QueenSettings(state_dir=tmp_path / "q", tls_cert=own, tls_key=tmp_path / "k"))
    async with serving(hive, ssl_certfile=other, ssl_keyfile=key) as url, queen.running():
        problem = await queen.remote.health(url, 5)
    assert problem is not None and "CERTIFICATE_VERIFY_FAILED" in problem


def test_without_a_ca_the_queen_verifies_against_the_systems_cas() -> None:
    import ssl

    from rbee_queen.remote import trust

    context = trust(None, None)
    assert isinstance(context, ssl.SSLContext)  # the system store, as the README says
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
