"""Fixtures for the packaging tests: renderings of the Helm chart (see ``chart.py``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from .chart import CASES, CHART, Rendered, render_chart


@pytest.fixture(scope="session")
def render() -> Callable[[dict[str, Any]], Rendered]:
    def _render(values: dict[str, Any], case: str = "custom") -> Rendered:
        return Rendered(case, values, render_chart(CHART, values))

    return _render


@pytest.fixture(scope="session", params=sorted(CASES))
def rendered(request: pytest.FixtureRequest) -> Rendered:
    """The chart rendered with the default values and with each ci/*.yaml file."""
    case: str = request.param
    return Rendered(case, CASES[case], render_chart(CHART, CASES[case]))
