"""policies/schema.json is generated from the policy model and must stay in sync."""

from __future__ import annotations

import json

from proxy.policy.load import json_schema
from tests.conftest import ROOT


def test_schema_json_is_current():
    on_disk = json.loads((ROOT / "policies" / "schema.json").read_text())
    regenerate = "regenerate: python -m proxy.policy.load > policies/schema.json"
    assert on_disk == json_schema(), regenerate
