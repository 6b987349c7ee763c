"""The policy's backend models (memory, Redis, Memcached, tiered) and the field types
every policy model shares: durations and sizes as written in YAML, and the strict base
model. ``proxy.policy.model`` builds the rest of the schema on these.
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, field_validator

from proxy.units import parse_duration, parse_size

Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema({"anyOf": [{"type": "number", "minimum": 0}, {"type": "string"}]}),
]

Size = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string"}]}),
]


class Model(BaseModel):
    """Every policy model: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- backends


class Breaker(Model):
    failures: int = Field(5, ge=1, description="consecutive failures that open the breaker")
    cooldown: Duration = Field(5.0, gt=0, description="time open before a probe")


class MemoryBackend(Model):
    type: Literal["memory"]
    max_size: Size = Field(256 * 1024**2, gt=0, description="bound on keys+values+overhead")


class RedisBackend(Model):
    type: Literal["redis"]
    url: str = "redis://127.0.0.1:6379/0"
    cluster: bool = False
    nodes: list[str] = Field(default_factory=list, description="host:port of cluster nodes")
    pool_size: int = Field(64, ge=1)
    connect_timeout: Duration = Field(0.5, gt=0)
    timeout: Duration = Field(0.05, gt=0, description="deadline of one store operation")
    key_prefix: str = ""
    breaker: Breaker = Breaker()

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value


class MemcachedBackend(Model):
    type: Literal["memcached"]
    servers: list[str] = Field(min_length=1, description='["host:port", ...]')
    pool_size: int = Field(8, ge=1)
    connect_timeout: Duration = Field(0.5, gt=0)
    timeout: Duration = Field(0.05, gt=0, description="deadline of one store operation")
    item_size_max: Size = Field(1024**2, ge=1024)
    key_prefix: str = ""
    breaker: Breaker = Breaker()

    @field_validator("servers")
    @classmethod
    def _check_servers(cls, value: list[str]) -> list[str]:
        for server in value:
            host, _, port = server.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"{server!r} is not host:port")
        return value


class TieredBackend(Model):
    type: Literal["tiered"]
    l1: str = Field(description="name of a memory backend")
    l2: str = Field(description="name of a redis or memcached backend")
    l1_ttl: Duration = Field(5.0, gt=0, description="longest time an entry lives in L1")


Backend = Annotated[
    MemoryBackend | RedisBackend | MemcachedBackend | TieredBackend,
    Field(discriminator="type"),
]
