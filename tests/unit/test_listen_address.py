"""Where `pyloto serve` binds (Cloud Run's PORT contract) and what Cloud Run refuses."""

from __future__ import annotations

import pytest

from pyloto_cli.settings import (
    ListenAddress,
    QueueBackend,
    Settings,
    cloud_run_problems,
    listen_address,
)


def _loopback(port: int) -> ListenAddress:
    return ListenAddress("127.0.0.1", port, from_platform=False)


def _everywhere(port: int) -> ListenAddress:
    return ListenAddress("0.0.0.0", port, from_platform=True)


def _settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings(_env_file=None)


@pytest.mark.parametrize(
    ("env", "host", "port", "expected"),
    [
        ({}, None, None, _loopback(8000)),
        ({"PORT": "8080"}, None, None, _everywhere(8080)),
        ({"PYLOTO_PORT": "9000"}, None, None, _loopback(9000)),
        ({}, None, 9001, _loopback(9001)),
        # PORT wins over PYLOTO_PORT: on Cloud Run, a stray PYLOTO_PORT must not hide the port
        (
            {"PORT": "8080", "PYLOTO_PORT": "9000"},
            None,
            None,
            _everywhere(8080),
        ),
        (
            {"PORT": "8080", "PYLOTO_HOST": "127.0.0.1"},
            None,
            None,
            _loopback(8080),
        ),
        ({"PORT": "8080"}, "127.0.0.1", None, _loopback(8080)),
        ({"PORT": "8080"}, None, 9002, _everywhere(9002)),
        ({"PYLOTO_HOST": "::1"}, None, None, ListenAddress("::1", 8000, from_platform=False)),
    ],
)
def test_port_alone_binds_every_interface_and_pyloto_port_keeps_loopback(
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    host: str | None,
    port: int | None,
    expected: ListenAddress,
) -> None:
    assert listen_address(_settings(monkeypatch, **env), host, port) == expected


@pytest.mark.parametrize("value", ["0", "70000", "http"])
def test_a_port_out_of_range_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    with pytest.raises(ValueError, match="PORT"):
        _settings(monkeypatch, PORT=value)


@pytest.mark.parametrize("queue", ["sqlite", "memory"])
def test_cloud_run_refuses_a_queue_on_the_instance(
    monkeypatch: pytest.MonkeyPatch, queue: str
) -> None:
    settings = _settings(monkeypatch, K_SERVICE="pyloto", QUEUE_BACKEND=queue)
    (problem,) = cloud_run_problems(settings)
    assert f"QUEUE_BACKEND={queue}" in problem
    assert "K_SERVICE" in problem
    assert "cloud_tasks" in problem


@pytest.mark.parametrize("queue", ["cloud_tasks", "redis"])
def test_cloud_run_accepts_a_queue_off_the_instance(
    monkeypatch: pytest.MonkeyPatch, queue: str
) -> None:
    assert cloud_run_problems(_settings(monkeypatch, K_SERVICE="pyloto", QUEUE_BACKEND=queue)) == []


def test_outside_cloud_run_the_local_queues_are_fine(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(monkeypatch)
    assert settings.queue_backend is QueueBackend.SQLITE
    assert cloud_run_problems(settings) == []
