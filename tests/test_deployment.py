"""docker-compose.yml and the Dockerfile, checked without a Docker engine: services, order of
start, settings that exist, two workers, health checks, the `newsletter` command."""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

import pytest
import yaml

from app.config import ROOT, Settings

COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
SETTINGS = {name.upper() for name in Settings.model_fields}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def services_running(services: dict[str, dict[str, Any]], *words: str) -> dict[str, Any]:
    return {name: s for name, s in services.items() if command_of(s)[: len(words)] == list(words)}


def test_services_present(services: dict[str, dict[str, Any]]) -> None:
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["mailpit"]["image"].startswith("axllent/mailpit")
    assert "127.0.0.1:8025:8025" in services["mailpit"]["ports"]
    assert "1025" in [str(p) for p in services["mailpit"].get("expose", [])]
    assert services_running(services, "newsletter", "migrate")
    assert services_running(services, "newsletter", "serve")


def test_migrations_run_once_before_everything_else(services: dict[str, dict[str, Any]]) -> None:
    [(migrate_name, migrate)] = services_running(services, "newsletter", "migrate").items()
    assert migrate.get("restart", "no") == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    dependants = {
        **services_running(services, "newsletter", "serve"),
        **services_running(services, "newsletter", "worker"),
    }
    assert len(dependants) >= 2
    for name, service in dependants.items():
        assert service["depends_on"][migrate_name]["condition"] == (
            "service_completed_successfully"
        ), name


def test_api_serves_without_the_worker_and_is_health_checked(
    services: dict[str, dict[str, Any]],
) -> None:
    [api] = services_running(services, "newsletter", "serve").values()
    command = command_of(api)
    assert "--no-worker" in command
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert "/healthz" in " ".join(api["healthcheck"]["test"])
    port = command[command.index("--port") + 1]
    assert f"127.0.0.1:{port}:{port}" in api["ports"]


def test_two_workers(services: dict[str, dict[str, Any]]) -> None:
    workers = services_running(services, "newsletter", "worker")
    replicas = sum(int(s.get("deploy", {}).get("replicas", 1)) for s in workers.values())
    assert replicas == 2
    for service in workers.values():
        assert service["depends_on"]["mailpit"]["condition"] == "service_healthy"
        assert service["healthcheck"]["test"]


def test_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["mailpit"]["healthcheck"]["test"]


def test_environment_names_are_settings(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if not command_of(service)[:1] == ["newsletter"]:
            continue
        environment = service["environment"]
        names = (
            set(environment)
            if isinstance(environment, dict)
            else {entry.split("=", 1)[0] for entry in environment}
        )
        assert names <= SETTINGS, (name, names - SETTINGS)
        assert {
            "DATABASE_URL",
            "SMTP_HOST",
            "SMTP_PORT",
            "SECRET_KEY",
            "PUBLIC_URL",
            "APP_ENV",
        } <= names, name
        assert environment["APP_ENV"] == "production"
        # Mailpit unless .env names a relay (compose reads .env for ${...} too).
        assert environment["SMTP_HOST"] == "${SMTP_HOST:-mailpit}"
        assert environment["SMTP_PORT"] == "${SMTP_PORT:-1025}"
        assert environment["DATABASE_URL"].startswith("postgresql://")
        assert "@postgres:5432/" in environment["DATABASE_URL"]
        # No default secret: compose refuses to start without SECRET_KEY.
        assert re.fullmatch(r"\$\{SECRET_KEY:\?.+\}", environment["SECRET_KEY"])


def test_ports_are_published_on_loopback_only(services: dict[str, dict[str, Any]]) -> None:
    published = [str(p) for s in services.values() for p in s.get("ports", [])]
    assert published
    for port in published:
        assert port.startswith("127.0.0.1:"), port


def test_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        image = str(service["image"])
        repository, _, tag = image.rpartition(":")
        assert repository, (name, image)
        assert tag != "latest", (name, image)
        assert re.search(r"\d+\.\d+", tag), (name, image)  # a version, not a moving name


def test_settings_come_from_an_env_file_and_reach_the_containers(
    services: dict[str, dict[str, Any]],
) -> None:
    example = (ROOT / ".env.example").read_text()
    named = set(re.findall(r"^#? ?([A-Z_]+)=", example, flags=re.MULTILINE))
    compose_only = {"POSTGRES_PASSWORD"}
    assert named - compose_only <= SETTINGS, named - compose_only - SETTINGS
    passed_through = {
        "SMTP_USERNAME",
        "SMTP_PASSWORD",
        "DKIM_DOMAIN",
        "DKIM_SELECTOR",
        "DKIM_PRIVATE_KEY_PATH",
        "ORGANIZATION_ADDRESS",
        "FEED_URL",
        "SECRET_KEY",
    }
    assert passed_through <= named
    for name, service in services.items():
        if command_of(service)[:1] != ["newsletter"]:
            continue
        env_files = service["env_file"]
        assert ".env" in ([env_files] if isinstance(env_files, str) else env_files), name
        # env_file brings .env's values in; `environment` must not replace them with fixed ones.
        for setting in passed_through - {"SECRET_KEY"}:
            assert setting not in service["environment"], (name, setting)
        assert any(v.endswith(":/srv/newsletter/dkim:ro") for v in service["volumes"]), name
    assert ".env" in (ROOT / ".gitignore").read_text().split()


def test_readme_does_not_make_a_new_key_per_run() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "SECRET_KEY=$(" not in readme
    assert "cp .env.example .env" in readme


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def test_dockerfile_runs_newsletter_as_a_non_root_user() -> None:
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11.11-slim-bookworm")
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users
    assert users[-1] not in ("root", "0")
    [cmd] = [rest for keyword, rest in instructions if keyword == "CMD"]
    entrypoints = [rest for keyword, rest in instructions if keyword == "ENTRYPOINT"]
    command = json.loads(entrypoints[-1] if entrypoints else cmd)
    assert command[:2] == ["newsletter", "serve"]
    assert command[command.index("--host") + 1] == "0.0.0.0"
    copied = " ".join(rest for keyword, rest in instructions if keyword == "COPY")
    for needed in ("app", "alembic", "alembic.ini", "email_templates", "pyproject.toml"):
        assert needed in copied.split(), needed


def test_dockerignore_keeps_local_state_out() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".venv", ".git", "var", ".env"):
        assert entry in ignored


def test_settings_names_used_in_readme_table_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\| `([A-Z0-9_]+)` \|", readme, flags=re.MULTILINE))
    assert documented == SETTINGS, {
        "missing from README": sorted(SETTINGS - documented),
        "not a setting": sorted(documented - SETTINGS),
    }
