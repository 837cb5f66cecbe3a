"""A model's config.pbtxt decides its batcher (server/runner.py: batching_config)."""

from __future__ import annotations

from google.protobuf import text_format

from turnout.protos.model_config_pb2 import ModelConfig
from turnout.server.runner import batching_config
from turnout.server.settings import Settings


def config(text: str) -> ModelConfig:
    return text_format.Parse(text, ModelConfig())


def test_timeout_override_follows_the_queue_policy() -> None:
    settings = Settings()
    policy = "max_batch_size: 8 dynamic_batching { default_queue_policy { %s } }"
    refused = batching_config(config(policy % "default_timeout_microseconds: 5000"), settings)
    allowed = batching_config(
        config(policy % "default_timeout_microseconds: 5000 allow_timeout_override: true"), settings
    )
    no_default = batching_config(config("max_batch_size: 8 dynamic_batching { }"), settings)
    assert refused is not None and refused.allow_timeout_override is False
    assert refused.default_timeout_s == 0.005
    assert allowed is not None and allowed.allow_timeout_override is True
    # no default timeout: nothing to override, the request's own timeout applies (Triton's rule)
    assert no_default is not None and no_default.allow_timeout_override is True
    assert no_default.default_timeout_s is None
