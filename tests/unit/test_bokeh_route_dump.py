"""The scheduler skips bokeh's pretty-printed dump of the dashboard's routes (a debug line
that costs half of a warm scheduler's start) unless bokeh's debug logging is on."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from bokeh.server import tornado as bokeh_tornado

from billow.dashboard import skip_bokeh_route_dump

pytestmark = pytest.mark.unit

ROUTES = [("/status", object), ("/workers", object)]


@pytest.fixture
def original() -> Iterator[object]:
    kept = bokeh_tornado.pformat  # type: ignore[attr-defined]
    logger = logging.getLogger(bokeh_tornado.__name__)
    level = logger.level
    yield kept
    bokeh_tornado.pformat = kept  # type: ignore[attr-defined]
    logger.setLevel(level)


def test_the_routes_are_not_formatted_when_debug_is_off(original: object) -> None:
    logging.getLogger(bokeh_tornado.__name__).setLevel(logging.INFO)
    skip_bokeh_route_dump()
    assert bokeh_tornado.pformat(ROUTES, width=60) == ""  # type: ignore[attr-defined]


def test_the_routes_are_still_dumped_for_someone_debugging_bokeh(original: object) -> None:
    logging.getLogger(bokeh_tornado.__name__).setLevel(logging.DEBUG)
    skip_bokeh_route_dump()
    assert "/status" in bokeh_tornado.pformat(ROUTES, width=60)  # type: ignore[attr-defined]
