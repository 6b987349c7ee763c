"""The policy file: YAML with marks (``source``), the pydantic model (``model``), checks
across sections (``check``), errors in the policy's words (``wording``); ``load`` is the API.
"""
