"""A role's services on its Celery app: typed, and a missing one is a clear error naming it and the role."""

from __future__ import annotations

import pytest
from celery import Celery

from heurist.celery_app import create_app, services
from heurist.errors import HeuristError
from heurist.services import MissingServiceError, Services
from heurist.settings import Settings


class Book:
    def record(self, signed: object) -> None:
        return None


def _settings() -> Settings:
    return Settings(_env_file=None, broker_url="memory://")  # type: ignore[call-arg]


def test_a_task_reaches_the_service_its_role_was_built_with() -> None:
    book = Book()
    app = create_app(_settings(), Services("ledger", uptime=book))
    assert services(app).uptime is book and services(app).role == "ledger"


@pytest.mark.parametrize("name", ["ledger", "uptime", "miner_runtime", "auditor", "heartbeats"])
def test_a_missing_service_names_itself_and_the_role(name: str) -> None:
    app = create_app(_settings())
    with pytest.raises(MissingServiceError, match=f"the client app has no {name.replace('_', ' ')} service"):
        getattr(services(app), name)


def test_an_app_not_built_by_create_app_has_no_services() -> None:
    with pytest.raises(HeuristError, match=r"not built by heurist\.celery_app\.create_app"):
        services(Celery("other", set_as_current=False))
